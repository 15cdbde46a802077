"""Fine-tuning data sets: OpenAI chat `messages` records and ShareGPT `conversations` records.

Both are a JSON array or JSON Lines of records, one conversation each, whose speakers are roles: the user and
the assistant, with the names the instruction formats use (`User`, `Assistant`), so that a persona trained on
any of them answers as `Assistant`, the default target speaker of these formats. A system message (a system
prompt) is read as a `System` message where it stands, so that it is shown as context before the turns it
governs; it is never the default target, so it is never a training response. Tool calls and tool results are
not anyone's words: they are counted as skipped. Each record is its own thread, keyed by file and position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, ClassVar

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from pathlib import Path

from training.formats.base import (ImportOptions, Importer, ParseResult, Source, Thread, json_at, json_field,
                                   loads_json)
from training.formats.instructions import ASSISTANT, SYSTEM, USER, _add

# Skip reasons this module adds to the shared `Skip` ones.
TOOL_CALL = "tool-call"          # an assistant's call of a tool or function: arguments, not words
TOOL_RESULT = "tool-result"      # what a tool or function returned
NON_TEXT_PART = "non-text-part"  # an image, audio or file part of a message's content

# What a role or `from` value means: a speaker, or None for tool traffic (skipped, counted).
_OPENAI_ROLES: dict[str, str | None] = {"system": SYSTEM, "developer": SYSTEM, "user": USER,
                                        "assistant": ASSISTANT, "tool": None, "function": None}
_SHAREGPT_FROM: dict[str, str | None] = {"system": SYSTEM, "human": USER, "user": USER, "gpt": ASSISTANT,
                                         "assistant": ASSISTANT, "chatgpt": ASSISTANT,
                                         # function-calling variants (glaive, LLaMA-Factory):
                                         "function_call": None, "observation": None, "tool": None}
# ShareGPT's tool entries: which are the assistant's calls (the rest are results).
_SHAREGPT_CALLS = frozenset({"function_call"})

# A first record larger than the 64 KiB head cannot be decoded whole for sniffing; these anchored patterns
# recognise its opening as the data sets write it (linear: no nested repetition).
_MESSAGES_OPENING = re.compile(r'\s*\[?\s*\{\s*"messages"\s*:\s*\[\s*\{\s*"role"\s*:\s*"(?:'
                               + "|".join(_OPENAI_ROLES) + ')"')
_SHAREGPT_OPENING = re.compile(r'\s*\[?\s*\{\s*(?:"id"\s*:\s*(?:"(?:[^"\\]|\\.)*"|-?\d+)\s*,\s*)?'
                               r'"conversations"\s*:\s*\[\s*\{\s*"from"\s*:\s*"(?:'
                               + "|".join(_SHAREGPT_FROM) + ')"')


def _first_record(source: Source) -> tuple[Any, bool]:
    """The first record of a JSON array or JSON Lines head (None when it is not JSON), and whether the head
    is cut off (then a record may be incomplete)."""
    head = source.head_text().lstrip()
    cut = len(source.head()) >= Source.HEAD_BYTES
    if head.startswith("["):
        head = head[1:].lstrip()
    if not head.startswith("{"):
        return None, cut
    try:
        first, _ = json.JSONDecoder().raw_decode(head)
    except (ValueError, RecursionError):  # not JSON, cut off, or nested deeper than the parser goes
        return None, cut
    return first, cut


class _RecordsImporter(Importer):
    """A JSON array or JSON Lines file of conversation records (the shared reading; subclasses read one
    record's turns)."""

    # With no --speaker, training learns the assistant's voice.
    default_speaker: ClassVar[str] = ASSISTANT
    # The record's list of turns, and the shape of a record for hints.
    turns_field: ClassVar[str]
    shape: ClassVar[str]

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        file_key = f"{self.name}:{source.path.resolve()}"  # resolved once: a syscall per record adds up
        for index, where, record in self._records(source):
            try:
                record = json_at(record, dict, source.path, where, "an object")
                turns = json_field(record, self.turns_field, list, source.path, where)
                items = self._read(record, turns, source.path, index, where, options, result)
                thread = self._thread(source, file_key, record, index, where)
            except DataError as e:  # the place is right; the hint should show the shape of a record
                raise DataError(source.path, e.message, where=e.where, hint=self.shape) from None
            if items:
                thread.items = items
                result.threads.append(thread)
        return result

    def _records(self, source: Source) -> Iterator[tuple[int, str, Any]]:
        """(position, JSON path, record) for every record; JSON Lines are read a line at a time."""
        head = source.head_text().lstrip()
        if not head:
            raise DataError(source.path, "the file is empty", hint="download the data set file again")
        if head.startswith("["):
            records = json_at(source.read_json(), list, source.path, "$", "an array of records")
            for index, record in enumerate(records):
                yield index, f"$[{index}]", record
            return
        index = 0
        for number, line in enumerate(source.text_lines(), start=1):
            if not line.strip():
                continue  # blank lines hold no record
            try:
                # Without its line ending, a record cut off inside a string is reported as that.
                record = loads_json(line.rstrip("\r\n"), source.path, first_line=number, what="JSON Lines",
                                    hint="each line must be one complete JSON object; the file may be cut off")
            except DataError:
                if index == 0 and (whole := _one_document(source)) is not None:
                    yield 0, "$", whole  # one pretty-printed record, not JSON Lines
                    return
                raise
            yield index, f"line {number}: $", record
            index += 1
        if index == 0:
            raise DataError(source.path, "the file holds only blank lines",
                            hint="download the data set file again")

    def _thread(self, source: Source, file_key: str, record: dict[str, Any], index: int, where: str) -> Thread:
        """The thread of the record at position `index`, keyed by `file_key` (format and file) and position."""
        return Thread(f"{file_key}:{index}", f"{source.path.stem} #{index}")

    def _read(self, record: dict[str, Any], turns: list[Any], label: Path, index: int, where: str,
              options: ImportOptions, result: ParseResult) -> list[Message | SceneBreak]:
        """The messages of one record (at JSON path `where`) whose list of turns is `turns`."""
        raise NotImplementedError


def _one_document(source: Source) -> dict[str, Any] | None:
    """The file as one JSON object (a single record written over several lines), or None if it is not one."""
    try:
        document = json.loads(source.read_text())
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _unknown(value: str, known: dict[str, str | None], what: str, where: str) -> DataError:
    return DataError(None, f"unknown {what} {value!r} (known: {', '.join(known)})", where=where)


# --- chat-messages -----------------------------------------------------------------------------------------
@register
class ChatMessagesImporter(_RecordsImporter):
    """OpenAI chat fine-tuning data: {"messages": [{"role", "content"}]} records, JSON Lines or a JSON array."""

    name = "chat-messages"
    description = ('Chat fine-tuning data: JSON Lines (or a JSON array) of {"messages": [{"role", '
                   '"content"}]} (OpenAI format)')
    turns_field = "messages"
    shape = ('each record must be {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]} '
             "(the OpenAI chat fine-tuning format); check the data set file or convert it")

    def sniff(self, source: Source) -> float:
        first, cut = _first_record(source)
        if isinstance(first, dict) and isinstance(first.get("messages"), list) and first["messages"]:
            message = first["messages"][0]
            if isinstance(message, dict) and message.get("role") in _OPENAI_ROLES and "content" in message:
                return 0.95
            return 0.0
        if first is None and cut and _MESSAGES_OPENING.match(source.head_text()):
            return 0.9
        return 0.0

    def _read(self, record: dict[str, Any], turns: list[Any], label: Path, index: int, where: str,
              options: ImportOptions, result: ParseResult) -> list[Message | SceneBreak]:
        items: list[Message | SceneBreak] = []
        for number, raw in enumerate(turns):
            at = f"{where}.messages[{number}]"
            message = json_at(raw, dict, label, at, "an object")
            role = json_field(message, "role", str, label, at)
            if role not in _OPENAI_ROLES:
                raise _unknown(role, _OPENAI_ROLES, "role", f"{at}.role")
            speaker = _OPENAI_ROLES[role]
            calls = _tool_calls(message, label, at)
            if speaker is None:
                result.skip(TOOL_RESULT)
                continue
            result.skip(TOOL_CALL, calls)
            text = _content_text(message.get("content"), label, f"{at}.content", result)
            if calls and not text:
                continue  # the message is only a call, counted above; it is not an empty message
            # An optional `weight` (0 or 1) says whether OpenAI trains on the turn: the text is the same.
            _add(result, items, options, speaker, text, f"{index}.{number}")
        return items


def _tool_calls(message: dict[str, Any], label: Path, at: str) -> int:
    """How many tool or function calls an assistant message carries (`tool_calls`, legacy `function_call`)."""
    calls = json_field(message, "tool_calls", list, label, at, required=False, default=[])
    legacy = json_field(message, "function_call", dict, label, at, required=False)
    return len(calls) + (legacy is not None)


def _content_text(content: Any, label: Path, at: str, result: ParseResult) -> str:
    """The text of a message's content: a string, null, or a list of parts of which the text ones are read
    (images, audio and files are counted as skipped parts)."""
    if content is None or isinstance(content, str):
        return (content or "").strip()
    parts = json_at(content, list, label, at, "a string, an array of content parts or null")
    texts = []
    for number, raw in enumerate(parts):
        part = json_at(raw, dict, label, f"{at}[{number}]", "a content part object")
        kind = json_field(part, "type", str, label, f"{at}[{number}]")
        if kind == "text":
            texts.append(json_field(part, "text", str, label, f"{at}[{number}]").strip())
        else:
            result.skip(NON_TEXT_PART)
    return "\n".join(t for t in texts if t)


# --- sharegpt ----------------------------------------------------------------------------------------------
@register
class ShareGPTImporter(_RecordsImporter):
    """ShareGPT conversations: {"id", "conversations": [{"from", "value"}]} records, a JSON array or JSON Lines."""

    name = "sharegpt"
    description = ('ShareGPT data: a JSON array (or JSON Lines) of {"conversations": [{"from": "human"|"gpt", '
                   '"value"}]}')
    turns_field = "conversations"
    shape = ('each record must be {"id": "...", "conversations": [{"from": "system"|"human"|"gpt", '
             '"value": "..."}]} (the ShareGPT format); check the data set file or convert it')

    def sniff(self, source: Source) -> float:
        first, cut = _first_record(source)
        if isinstance(first, dict) and isinstance(first.get("conversations"), list) and first["conversations"]:
            turn = first["conversations"][0]
            if isinstance(turn, dict) and str(turn.get("from")).lower() in _SHAREGPT_FROM and "value" in turn:
                return 0.95
            return 0.0
        if first is None and cut and _SHAREGPT_OPENING.match(source.head_text()):
            return 0.9
        return 0.0

    def _thread(self, source: Source, file_key: str, record: dict[str, Any], index: int, where: str) -> Thread:
        # The record's own id names the conversation; the position keeps two records with one id apart
        # (split and duplicated conversations share ids in the published sets).
        record_id = json_field(record, "id", (str, int), source.path, where, required=False)
        title = f"{source.path.stem} {record_id}" if record_id is not None else f"{source.path.stem} #{index}"
        key = f"{file_key}:{index}"
        return Thread(key if record_id is None else f"{key}:{record_id}", title)

    def _read(self, record: dict[str, Any], turns: list[Any], label: Path, index: int, where: str,
              options: ImportOptions, result: ParseResult) -> list[Message | SceneBreak]:
        items: list[Message | SceneBreak] = []
        # LLaMA-Factory's ShareGPT layout puts the system prompt in the record, before the turns.
        system = json_field(record, "system", str, label, where, required=False)
        if system is not None:
            _add(result, items, options, SYSTEM, system.strip(), f"{index}.system")
        for number, raw in enumerate(turns):
            at = f"{where}.conversations[{number}]"
            turn = json_at(raw, dict, label, at, "an object")
            sender = json_field(turn, "from", str, label, at)
            value = json_field(turn, "value", (str, type(None)), label, at) or ""
            if sender.lower() not in _SHAREGPT_FROM:
                raise _unknown(sender, _SHAREGPT_FROM, '"from" value', f"{at}.from")
            speaker = _SHAREGPT_FROM[sender.lower()]
            if speaker is None:
                result.skip(TOOL_CALL if sender.lower() in _SHAREGPT_CALLS else TOOL_RESULT)
                continue
            _add(result, items, options, speaker, value.strip(), f"{index}.{number}")
        return items


def read_turn_list(turns: list[Any], label: Path | str, where: str, options: ImportOptions,
                   result: ParseResult) -> list[Message | SceneBreak]:
    """The messages of one conversation given as a list of turns in either shape, `{role, content}` or
    `{from, value}` (a `messages` or `conversations` column of a table or data set), read by the rules of
    the format whose shape it has."""
    first = turns[0] if turns else None
    reader = ChatMessagesImporter if isinstance(first, dict) and "role" in first else ShareGPTImporter
    try:
        return reader()._read({}, turns, Path(label), 0, where, options, result)
    except DataError as e:    # some of the readers' errors leave the file to their caller to name
        raise DataError(label, e.message, where=e.where, hint=reader.shape) from None
