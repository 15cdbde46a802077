"""Instruction data: Alpaca records and `<|USER|> ... <|ASSISTANT|> ...` token lines.

Each record or line is a conversation of its own between "User" and "Assistant" (and "System"); there are
no timestamps, so every record is its own thread, keyed by file and position. A table or data set with
Alpaca's columns is read by the same rule (`alpaca_conversation`, from `training.formats.tables`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from training.formats.base import (ImportOptions, Importer, ParseResult, Skip, Source, Thread, json_at,
                                   json_field, keep_message, loads_json, parse_json, split_lines)

USER = "User"
ASSISTANT = "Assistant"
SYSTEM = "System"

# Skip reasons this module adds to the shared `Skip` ones.


def _add(result: ParseResult, items: list[Message | SceneBreak], options: ImportOptions, speaker: str,
         text: str, msg_id: str) -> None:
    keep_message(result, items, options, Message(speaker=speaker, text=text, id=msg_id))


# --- alpaca ------------------------------------------------------------------------------------------------
_ALPACA_HINT = ('each record must be {"instruction": "...", "input": "...", "output": "..."}; '
                "download the data set file again")


def alpaca_conversation(instruction: str, extra: str, output: str, msg_id: str, options: ImportOptions,
                        result: ParseResult, timestamp: datetime | None = None) -> list[Message | SceneBreak]:
    """The conversation of one Alpaca record, whether a JSON record or a table's row: the instruction, with
    the input after a blank line, is the User's prompt; the output is the Assistant's response. An empty
    prompt or response is counted as skipped (`keep_message`). Message ids are `{msg_id}.instruction` and
    `{msg_id}.output`."""
    prompt = instruction.strip()
    if extra.strip():
        prompt = f"{prompt}\n\n{extra.strip()}" if prompt else extra.strip()
    items: list[Message | SceneBreak] = []
    keep_message(result, items, options, Message(USER, prompt, timestamp, id=f"{msg_id}.instruction"))
    keep_message(result, items, options, Message(ASSISTANT, output.strip(), timestamp, id=f"{msg_id}.output"))
    return items


@register
class AlpacaImporter(Importer):
    """Alpaca instruction data: a JSON array (or JSON Lines) of {instruction, input, output} records."""

    name = "alpaca"
    description = "Alpaca instruction data: JSON array or JSON Lines of {instruction, input, output}"

    def sniff(self, source: Source) -> float:
        head = source.head_text().lstrip()
        if head.startswith("["):
            head = head[1:].lstrip()
        elif not head.startswith("{"):
            return 0.0
        try:
            first, _ = json.JSONDecoder().raw_decode(head)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: not Alpaca
            return 0.0
        if isinstance(first, dict) and isinstance(first.get("instruction"), str) and "output" in first:
            return 0.95
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="download the data set file again")
        result = ParseResult()
        if text.lstrip().startswith("["):
            records = json_at(parse_json(text, source.path), list, source.path, "$",
                              "an array of instruction records")
            for index, record in enumerate(records):
                self._record(source, record, index, f"$[{index}]", options, result)
        else:
            # JSON Lines: one record per line; blank lines hold no record.
            index = 0
            for number, line in enumerate(split_lines(text), start=1):
                if not line.strip():
                    continue
                record = loads_json(line, source.path, first_line=number, what="JSON Lines",
                                    hint="each line must be one complete JSON object; the file may be cut "
                                         "off or be a different format")
                self._record(source, record, index, f"line {number}: $", options, result)
                index += 1
        return result

    def _record(self, source: Source, record: Any, index: int, where: str, options: ImportOptions,
                result: ParseResult) -> None:
        label = source.path
        record = json_at(record, dict, label, where, "an object")
        try:
            instruction = json_field(record, "instruction", (str, type(None)), label, where) or ""
            extra = json_field(record, "input", (str, type(None)), label, where, required=False) or ""
            output = json_field(record, "output", (str, type(None)), label, where) or ""
        except DataError as e:
            raise DataError(label, e.message, where=e.where, hint=_ALPACA_HINT) from None
        # `text` (the Alpaca prompt template plus the output) repeats the other fields: not read.
        items = alpaca_conversation(instruction, extra, output, str(index), options, result)
        if items:
            result.threads.append(Thread(f"{self.name}:{source.path.resolve()}:{index}",
                                         f"{source.path.stem} #{index}", items))


# --- chat-tokens -------------------------------------------------------------------------------------------
_ROLE_MARKERS = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM}
_ROLE = re.compile(r"<\|(user|assistant|system)\|>", re.IGNORECASE)
# <|End|> (and GPT-2's <|endoftext|>) only close a turn: dropped from the text with the spaces around them.
# Runs of spaces and markers are matched whole (see `_without_end_markers`): `\s*<\|end\|>` searched through a
# long run of spaces would rescan the rest of the run at every position (quadratic time).
_END_OR_SPACES = re.compile(r"(?:\s|<\|(?:end|endoftext)\|>)+", re.IGNORECASE)
_LINE_START = re.compile(r"\s*<\|(user|assistant|system)\|>", re.IGNORECASE)


def chat_token_turns(text: str) -> list[tuple[str, str]]:
    """(speaker, text) of each `<|USER|>` / `<|ASSISTANT|>` / `<|SYSTEM|>` turn in `text` (one conversation,
    as a line of this format or a table cell holds it); text before the first marker is not a turn."""
    return _turns(text, list(_ROLE.finditer(text)))


def _turns(line: str, roles: list[re.Match[str]]) -> list[tuple[str, str]]:
    turns = []
    for marker, following in zip(roles, roles[1:] + [None]):
        end = following.start() if following is not None else len(line)
        turns.append((_ROLE_MARKERS[marker.group(1).lower()], _without_end_markers(line[marker.end():end]).strip()))
    return turns


def _without_end_markers(text: str) -> str:
    """`text` with each <|End|> / <|endoftext|> and the spaces around it replaced by one space."""
    return _END_OR_SPACES.sub(lambda m: " " if "|" in m.group() else m.group(), text)


@register
class ChatTokensImporter(Importer):
    """One conversation per line, turns marked `<|USER|>`, `<|ASSISTANT|>`, `<|SYSTEM|>`, ended by `<|End|>`
    (the token convention of Locutusque/ColumnedChatCombined and the GPT-2 model trained on it)."""

    name = "chat-tokens"
    description = "One conversation per line with <|USER|> / <|ASSISTANT|> / <|SYSTEM|> turn markers"

    def sniff(self, source: Source) -> float:
        lines = [line for line in split_lines(source.head_text()) if line.strip()]
        if len(source.head()) >= Source.HEAD_BYTES:
            lines = lines[:-1]  # the last line may be cut off
        if not lines:
            return 0.0
        share = sum(1 for line in lines if _LINE_START.match(line)) / len(lines)
        if share >= 0.8:
            return 0.9
        return 0.6 if share >= 0.5 else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="download the data set file again")
        result = ParseResult()
        first_unmarked: int | None = None
        marked = 0
        for number, line in enumerate(split_lines(text), start=1):
            if not line.strip():
                continue
            roles = list(_ROLE.finditer(line))
            if not roles:
                # One stray line (a header, a note) should not sink a million-line file: it is counted.
                # A file where no line has a marker is not this format: an error below.
                result.skip(Skip.NO_MARKER)
                first_unmarked = first_unmarked or number
                continue
            marked += 1
            if _without_end_markers(line[:roles[0].start()]).strip():
                result.skip(Skip.NO_SPEAKER)
            items: list[Message | SceneBreak] = []
            for turn, (speaker, piece) in enumerate(_turns(line, roles), start=1):
                _add(result, items, options, speaker, piece, f"{number}.{turn}")
            if items:
                result.threads.append(Thread(f"{self.name}:{source.path.resolve()}:{number}",
                                             f"{source.path.stem} line {number}", items))
        if marked == 0:
            raise DataError(source.path, "no line has a <|USER|>, <|ASSISTANT|> or <|SYSTEM|> marker",
                            where=f"line {first_unmarked}",
                            hint="each line must be one conversation like "
                                 "'<|USER|> question <|ASSISTANT|> answer <|End|>'")
        return result
