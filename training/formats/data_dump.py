"""personabot's own data dump: JSON Lines of normalised messages, written and read here.

One JSON object a line: `conversation` (an id; the lines of one conversation share it), `speaker`, `text`,
`timestamp` (ISO 8601, or null) and, when the export knew it, `speaker_id` (the account id, so that leaving
a person out by id works on a dump too). `personabot data dump` writes it from any export; the bot writes the
channel messages it stored in it when a retrain learns from them; the `personabot-jsonl` importer reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TextIO

from training.conversation import Message, iso
from training.errors import DataError
from training.formats import register
from training.formats.base import (ImportOptions, Importer, ParseResult, Source, Thread, json_at, json_field,
                                   keep_message, loads_json)

NAME = "personabot-jsonl"
_SHAPE = ('each line is one object: {"conversation": "...", "speaker": "...", "text": "...", '
          '"timestamp": "2024-01-01T12:00:00+00:00" or null, "speaker_id": "..." (optional)}')
# The opening of a line as `DumpRow.to_json_line` writes it, for a first line longer than the sniffed head.
_OPENING = re.compile(r'\s*\{\s*"conversation"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"speaker"\s*:\s*"')


class DumpRow(NamedTuple):
    """One message of a dump. A timestamp given as text is written as it is (it must be ISO 8601)."""

    conversation: str
    speaker: str
    speaker_id: str | None
    text: str
    timestamp: datetime | str | None

    def to_json_line(self) -> str:
        row: dict[str, Any] = {"conversation": self.conversation, "speaker": self.speaker}
        if self.speaker_id is not None:
            row["speaker_id"] = str(self.speaker_id)
        stamp = iso(self.timestamp) if isinstance(self.timestamp, datetime) else self.timestamp
        row.update(text=self.text, timestamp=stamp)
        return json.dumps(row, ensure_ascii=False) + "\n"


def write_dump(rows: Iterable[DumpRow | tuple], out: TextIO) -> int:
    """Write `rows` ((conversation, speaker, speaker id, text, timestamp) each) as dump lines; their count."""
    count = 0
    for row in rows:
        out.write(DumpRow(*row).to_json_line())
        count += 1
    return count


def _first_line(source: Source) -> tuple[Any, bool]:
    """The first non-blank line of the head as JSON (None when it is not JSON), and whether the head is cut
    off inside it."""
    head = source.head_text().lstrip()
    end = head.find("\n")
    if end < 0 and len(source.head()) >= Source.HEAD_BYTES:
        return None, True
    try:
        return json.loads(head if end < 0 else head[:end]), False
    except (ValueError, RecursionError):
        return None, False


@register
class DataDumpImporter(Importer):
    name: ClassVar[str] = NAME
    description: ClassVar[str] = "personabot's own JSON Lines (`personabot data dump`, the bot's stored messages)"

    def sniff(self, source: Source) -> float:
        first, cut = _first_line(source)
        if isinstance(first, dict):
            shaped = isinstance(first.get("conversation"), str) and isinstance(first.get("speaker"), str)
            return 0.95 if shaped and "text" in first and "timestamp" in first else 0.0
        return 0.9 if cut and _OPENING.match(source.head_text()) else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        threads: dict[str, Thread] = {}
        for number, line in enumerate(source.text_lines(), start=1):
            if not line.strip():
                continue  # blank lines hold no message
            where = f"line {number}"
            try:
                row = json_at(loads_json(line.rstrip("\r\n"), source.path, first_line=number, what="JSON Lines",
                                         hint=_SHAPE), dict, source.path, where, "an object")
                conversation, message = self._message(row, source.path, where)
            except DataError as e:  # the place is right; the hint should show the shape of a line
                raise DataError(source.path, e.message, where=e.where, hint=_SHAPE) from None
            thread = threads.get(conversation)
            if thread is None:
                thread = threads[conversation] = Thread(f"{self.name}:{conversation}", conversation)
                result.threads.append(thread)
            keep_message(result, thread.items, options, message)
        if not threads and not result.skipped:
            raise DataError(source.path, "the file holds no messages", hint="run `personabot data dump` again")
        result.threads = [t for t in result.threads if t.items]
        return result

    @staticmethod
    def _message(row: dict[str, Any], label: Path, where: str) -> tuple[str, Message]:
        """(conversation id, message) of one line."""
        conversation = json_field(row, "conversation", str, label, where)
        speaker = json_field(row, "speaker", str, label, where)
        text = json_field(row, "text", str, label, where)
        stamp = json_field(row, "timestamp", (str, type(None)), label, where)
        speaker_id = json_field(row, "speaker_id", (str, int), label, where, required=False)
        try:
            timestamp = datetime.fromisoformat(stamp) if stamp is not None else None
        except ValueError:
            raise DataError(label, f"timestamp {stamp[:40]!r} is not an ISO 8601 time",
                            where=f"{where}.timestamp") from None
        return conversation, Message(speaker, text.strip(), timestamp,
                                     speaker_id=str(speaker_id) if speaker_id is not None else None)
