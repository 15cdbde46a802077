"""Tables of posts or lines: CSV, TSV, JSON (an array of objects), JSON Lines and Parquet, read as rows.

Each column gets a role from its name (case-insensitive; the first name in each list that a table has wins),
or from `--columns text=full_text,speaker=screen_name,conversation=thread_id,time=created_at`:

    text          text, content, message, tweet, full_text, body, line, dialogue, utterance, output, ...
    speaker       speaker, author, character, name, user, username, screen_name, from, sender
    conversation  conversation, conversation_id, thread, thread_id, dialog_id, dialogue_id, episode, ...
    time          timestamp, date, created_at, time, datetime
    instruction   instruction
    input         input, context
    output        output, response

What a row is depends on the columns:
* a speaker column: a message of that speaker. Rows with the same conversation value are one conversation,
  in table order; without a conversation column the table is one thread, which the loader splits at long
  silences of the time column.
* no speaker column: a *single-voice corpus* (the stand-alone "confession" generator: a CSV of one
  account's tweets). Every row is a stand-alone post of one voice, named by `--speaker` when training
  (shown as the file's stem until then).
* a `messages` / `conversations` column holding a list of turns ({role, content} or {from, value}), or a
  text cell holding `<|USER|> ... <|ASSISTANT|> ...` turns: the row is that whole conversation.
* instruction and output columns (input optional): instruction data, Alpaca's columns (as
  vicgalle/alpaca-gpt4 ships them). Each row is a conversation of a User prompt and an Assistant response,
  by the alpaca format's own rule (`instructions.alpaca_conversation`); a pre-rendered `text` column (the
  prompt template filled in) repeats the others and is ignored, as are speaker and conversation columns.
  Naming a text, speaker or turns column with --columns reads the table as messages instead.

Rows are read as they come (a million-row table is never held as Python objects at once beyond its
messages), every cell is checked, and a malformed row is an error naming the file and the row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from training.formats.base import (ImportOptions, Importer, ParseResult, Skip, Source, Thread, keep_message,
                                   loads_json)
from training.formats.instructions import alpaca_conversation, chat_token_turns

# Role -> accepted column names, most specific first.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("text", "full_text", "content", "message", "tweet", "body", "line", "dialogue", "dialog",
             "utterance", "output", "response", "post", "value"),
    "speaker": ("speaker", "author", "character", "name", "user", "username", "screen_name", "user_name",
                "from", "sender", "role"),
    "conversation": ("conversation", "conversation_id", "thread", "thread_id", "dialog_id", "dialogue_id",
                     "episode", "scene", "chat", "chat_id", "session", "session_id"),
    "time": ("timestamp", "date", "created_at", "time", "datetime", "created", "posted_at"),
    "turns": ("messages", "conversations"),
    # Instruction data: Alpaca's columns (and Dolly's context and response).
    "instruction": ("instruction",),
    "input": ("input", "context"),
    "output": ("output", "response"),
}
ROLES = tuple(ROLE_NAMES)
_MESSAGE_ROLES = ("text", "speaker", "conversation", "time", "turns")
_INSTRUCTION_ROLES = ("instruction", "input", "output")
# What an instruction table's columns become, as `data inspect` shows it.
_INSTRUCTION_PARTS = {"instruction": "User prompt", "input": "prompt context", "output": "Assistant response"}
_PARQUET_MAGIC = b"PAR1"
_COLUMNS_HINT = ("name the columns with --columns text=COLUMN,speaker=COLUMN (speaker, conversation and time "
                 "are optional)")


# --- which column plays which role -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ColumnRoles:
    """The column (as the table spells it) that plays each role, or None."""

    text: str | None = None
    speaker: str | None = None
    conversation: str | None = None
    time: str | None = None
    turns: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    # (role, column) of columns whose names give them a role that this table's shape does not read: an
    # instruction table's pre-rendered `text`. Shown by `data inspect`, never read.
    ignored: tuple[tuple[str, str], ...] = ()

    def columns(self) -> list[str]:
        """The columns that play a role (and so are read)."""
        return list(dict.fromkeys(c for c in (getattr(self, role) for role in ROLES) if c is not None))

    @property
    def instructions(self) -> bool:
        """Instruction data: each row is a User prompt and an Assistant response."""
        return self.instruction is not None

    @property
    def single_voice(self) -> bool:
        return self.speaker is None and self.turns is None and not self.instructions

    def describe(self) -> str:
        """`text=full_text, speaker=screen_name` for `data inspect`."""
        if self.instructions:
            found = [f"{role}={getattr(self, role)} ({_INSTRUCTION_PARTS[role]})" for role in _INSTRUCTION_ROLES
                     if getattr(self, role) is not None]
            found += [f"time={self.time}"] if self.time is not None else []
            found += [f"{role}={column} (ignored)" for role, column in self.ignored]
            return ", ".join(found) + " (a conversation per row, read as the alpaca format reads one)"
        found = [f"{role}={getattr(self, role)}" for role in _MESSAGE_ROLES if getattr(self, role) is not None]
        shape = "one voice, stand-alone posts" if self.single_voice else (
            "whole conversations per row" if self.turns else "messages of speakers")
        return ", ".join(found) + f" ({shape})"


def parse_column_mapping(spec: str) -> dict[str, str]:
    """`text=full_text,speaker=screen_name` -> {"text": "full_text", ...}; a bad entry is a `DataError`."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        role, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not column or role not in ROLES:
            raise DataError(None, f"--columns: {part!r} is not ROLE=COLUMN",
                            hint=f"roles are {', '.join(ROLES)}; e.g. --columns text=full_text,speaker=screen_name")
        mapping[role] = column
    return mapping


def find_roles(columns: Iterable[str], mapping: Mapping[str, str], label: str | Path) -> ColumnRoles:
    """Give each role its column: what `mapping` names (which must exist), else the first known name.
    Instruction and output columns make an instruction table (see the module docstring)."""
    names = [str(c) for c in columns]
    by_folded: dict[str, str] = {}
    for name in names:
        by_folded.setdefault(name.strip().casefold(), name)
    chosen: dict[str, str | None] = {}
    for role in ROLES:
        if role in mapping:
            wanted = mapping[role]
            column = wanted if wanted in names else by_folded.get(wanted.strip().casefold())
            if column is None:
                raise DataError(label, f"--columns names {role}={wanted}, but the table has no such column",
                                hint="its columns are: " + ", ".join(names))
            chosen[role] = column
        else:
            chosen[role] = next((by_folded[n] for n in ROLE_NAMES[role] if n in by_folded), None)
    instruction_roles = _instruction_roles(chosen, mapping, names, label)
    if instruction_roles is not None:
        return instruction_roles
    used = [c for role, c in chosen.items() if role in _MESSAGE_ROLES and c is not None]
    chosen = {role: chosen[role] for role in _MESSAGE_ROLES}
    for role in _MESSAGE_ROLES:   # one column plays one role: the explicit or more specific one keeps it
        column = chosen[role]
        if column is not None and role not in mapping and used.count(column) > 1:
            chosen[role] = None
            used.remove(column)
    roles = ColumnRoles(**chosen)
    if roles.text is None and roles.turns is None:
        raise DataError(label, "no column holds the text (" + ", ".join(names) + ")", hint=_COLUMNS_HINT)
    return roles


def _instruction_roles(chosen: Mapping[str, str | None], mapping: Mapping[str, str], names: Sequence[str],
                       label: str | Path) -> ColumnRoles | None:
    """The roles of an instruction table (instruction and output columns, input optional), or None when the
    table is not one. Columns named for a text, speaker or turns role with --columns make it a table of
    messages; an instruction role named without the other one it needs is a `DataError`."""
    named = [role for role in _INSTRUCTION_ROLES if role in mapping]
    if chosen["instruction"] is None or chosen["output"] is None:
        if named:
            missing = "instruction" if chosen["instruction"] is None else "output"
            raise DataError(label, f"--columns names {named[0]}={mapping[named[0]]}, but the table has no "
                            f"{missing} column", hint=f"name it with --columns {missing}=COLUMN; its columns "
                            "are: " + ", ".join(names))
        return None
    if not named and any(role in mapping for role in ("text", "speaker", "turns")):
        return None
    read = {chosen[role] for role in _INSTRUCTION_ROLES} - {None}
    time = chosen["time"] if chosen["time"] not in read else None
    ignored = tuple((role, column) for role in _MESSAGE_ROLES if role != "time"
                    and (column := chosen[role]) is not None and column not in read)
    return ColumnRoles(instruction=chosen["instruction"], input=chosen["input"], output=chosen["output"],
                       time=time, ignored=ignored)


# --- reading rows ------------------------------------------------------------------------------------------
def table_kind(source: Source) -> str | None:
    """csv, tsv, json, jsonl or parquet, from the content where it tells (Parquet's magic, JSON's first
    character) and else from the file name."""
    head = source.head()
    suffix = source.path.suffix.lower()
    if head.startswith(_PARQUET_MAGIC) or suffix == ".parquet":
        return "parquet"
    text = source.head_text().lstrip()
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    return None


Rows = Callable[[Sequence[str]], Iterator[tuple[str, dict[str, Any]]]]


def read_rows(source: Source, kind: str) -> tuple[list[str], Rows]:
    """The table's column names, and a function giving its rows as (place, row) pairs, `row 12` counting
    the header as row 1 as a spreadsheet does (JSON Lines rows are `line N`, JSON array rows `$[N]`). It is
    told the columns needed: a Parquet file reads only those."""
    if kind == "parquet":
        return _parquet_rows(source)
    if kind in ("csv", "tsv"):
        return _csv_rows(source, kind)
    if kind == "json":
        return _json_rows(source)
    return _jsonl_rows(source)


def _delimiter(kind: str, header: str) -> str:
    """A TSV's tab; for CSV, the one of , ; tab that splits the header line most."""
    return "\t" if kind == "tsv" else max((",", ";", "\t"), key=header.count)


def _csv_rows(source: Source, kind: str):
    text = source.read_text()
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise DataError(source.path, "the first line is not a header row", where="row 1",
                        hint="the first row must name the columns, e.g. text,date,likes")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(kind, first), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise DataError(source.path, f"is not valid CSV: {e}", where="row 1") from e

    def rows(wanted: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        number = 1
        try:
            for number, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header) and any(cell.strip() for cell in row[len(header):]) or \
                        len(row) < len(header):
                    raise DataError(source.path, f"the row has {len(row)} column(s); the header has "
                                    f"{len(header)}", where=f"row {number}",
                                    hint="a quote is unbalanced or a field holds the delimiter unquoted; fix "
                                         "the row or export the table again")
                yield f"row {number}", dict(zip(header, row))
        except csv.Error as e:
            raise DataError(source.path, f"is not valid CSV: {e}", where=f"row {number + 1}",
                            hint="a quoted field is not closed; export the table again") from e

    return header, rows


def _json_rows(source: Source):
    data = loads_json(source.read_text(), source.path)
    if not isinstance(data, list):
        raise DataError(source.path, "expected a JSON array of objects (one per row)", where="$")
    columns: dict[str, None] = {}
    for i, row in enumerate(data[:1000]):
        if isinstance(row, dict):
            columns.update(dict.fromkeys(row))

    def rows(wanted: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(source.path, "expected an object (one row)", where=f"$[{i}]")
            yield f"$[{i}]", row

    return list(columns), rows


def _jsonl_rows(source: Source):
    text = source.read_text()
    lines = text.split("\n")
    columns: dict[str, None] = {}
    for number, line in enumerate(lines[:1000], start=1):
        if line.strip():
            row = loads_json(line, source.path, first_line=number, what="JSON Lines")
            if isinstance(row, dict):
                columns.update(dict.fromkeys(row))

    def rows(wanted: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row = loads_json(line, source.path, first_line=number, what="JSON Lines")
            if not isinstance(row, dict):
                raise DataError(source.path, "expected an object (one row per line)", where=f"line {number}")
            yield f"line {number}", row

    return list(columns), rows


def _parquet_rows(source: Source):
    pq = _pyarrow_parquet()
    try:
        table = pq.ParquetFile(source.path)
    except Exception as e:     # pyarrow raises its own ArrowInvalid/OSError family for damaged files
        raise DataError(source.path, f"is not a readable Parquet file ({e})",
                        hint="export or download the table again") from e
    header = list(table.schema_arrow.names)

    def rows(wanted: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        number = 1
        try:
            # Only the columns with a role, converted a column at a time (a dict per row costs more).
            for batch in table.iter_batches(batch_size=65536, columns=list(wanted) or None):
                names = batch.schema.names
                for values in zip(*(column.to_pylist() for column in batch.columns)):
                    number += 1
                    yield f"row {number}", dict(zip(names, values))
        except DataError:
            raise
        except Exception as e:
            raise DataError(source.path, f"the Parquet data is damaged ({e})", where=f"row {number + 1}",
                            hint="export or download the table again") from e

    return header, rows


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:   # a dependency of personabot; a broken install says how to mend it
        raise DataError(None, "reading Parquet needs pyarrow", hint="pip install pyarrow") from e
    return pq


# --- rows -> messages ---------------------------------------------------------------------------------------
_TWITTER_TIME = "%a %b %d %H:%M:%S %z %Y"
_UNIX_TIME = re.compile(r"-?\d{1,13}(?:\.\d+)?")


def parse_time(value: Any, label: str | Path, where: str) -> datetime | None:
    """A time cell: ISO 8601, Twitter's `Wed Oct 10 20:19:24 +0000 2018`, Unix seconds or milliseconds, or
    a datetime already (Parquet); empty is None; anything else is a `DataError` at its place."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise DataError(label, f"the time {value!r} is out of range", where=where) from None
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text)      # the common case first (3.11 reads a trailing Z too)
    except ValueError:
        pass
    if _UNIX_TIME.fullmatch(text):
        return parse_time(float(text), label, where)
    try:
        return datetime.strptime(text, _TWITTER_TIME)
    except ValueError:
        pass
    raise DataError(label, f"cannot read the time {text[:60]!r}", where=where,
                    hint="times must be ISO 8601 (2024-05-01 20:15:00), Twitter's created_at, or Unix seconds; "
                         "name another column with --columns time=COLUMN")


def cell_text(value: Any, label: str | Path, where: str) -> str:
    """A text cell as text (numbers and booleans as written); a list or object is a `DataError`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("\r\n", "\n").strip()
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise DataError(label, f"expected text, found {type(value).__name__}", where=where,
                    hint="name the text column with --columns text=COLUMN")


def rows_to_threads(rows: Iterable[tuple[str, dict[str, Any]]], roles: ColumnRoles, label: str | Path,
                    key: str, voice: str, options: ImportOptions, result: ParseResult) -> None:
    """Turn rows into threads in `result` (see the module docstring for the shapes)."""
    one_thread: list[Message | SceneBreak] = []
    by_conversation: dict[str, list[Message | SceneBreak]] = {}
    for place, row in rows:
        if roles.instructions:
            prompt, extra, output = (_instruction_cell(row, c, label, place)
                                     for c in (roles.instruction, roles.input, roles.output))
            when = parse_time(row.get(roles.time), label, f"{place}.{roles.time}") if roles.time else None
            items = alpaca_conversation(prompt, extra, output, place, options, result, when)
            if items:
                result.threads.append(Thread(f"{key}:{place}", f"{voice} {place}", items))
            continue
        if roles.turns is not None and row.get(roles.turns) not in (None, "", []):
            items = _row_turns(row[roles.turns], label, place, roles.turns, options, result)
            if items:
                result.threads.append(Thread(f"{key}:{place}", f"{voice} {place}", items))
            continue
        text = cell_text(row.get(roles.text), label, f"{place}.{roles.text}") if roles.text else ""
        when = parse_time(row.get(roles.time), label, f"{place}.{roles.time}") if roles.time else None
        if text.lstrip().startswith("<|"):
            turns = chat_token_turns(text)
            if turns:
                items = []
                for n, (speaker, piece) in enumerate(turns):
                    keep_message(result, items, options, Message(speaker, piece, when, id=f"{place}.{n}"))
                if items:
                    result.threads.append(Thread(f"{key}:{place}", f"{voice} {place}", items))
                continue
        if roles.single_voice:
            if keep_message(result, one_thread, options, Message(voice, text, when, id=place)):
                one_thread.append(SceneBreak())      # every post stands alone
            continue
        speaker = cell_text(row.get(roles.speaker), label, f"{place}.{roles.speaker}")
        if not speaker:
            result.skip(Skip.NO_SPEAKER)
            continue
        target = one_thread
        if roles.conversation is not None:
            conversation = cell_text(row.get(roles.conversation), label, f"{place}.{roles.conversation}")
            target = by_conversation.setdefault(conversation, [])
        keep_message(result, target, options, Message(speaker, text, when, id=place))
    if one_thread:
        result.threads.append(Thread(key, voice, one_thread, single_voice=roles.single_voice))
    for conversation, items in by_conversation.items():
        result.threads.append(Thread(f"{key}#{conversation}", f"{voice} {conversation}", items))


def _instruction_cell(row: dict[str, Any], column: str | None, label: str | Path, place: str) -> str:
    """An instruction table's instruction, input or output cell as text ("" when the table has no such
    column); the hint of a cell that is not text names these columns' roles."""
    if column is None:
        return ""
    try:
        return cell_text(row.get(column), label, f"{place}.{column}")
    except DataError as e:
        raise DataError(label, e.message, where=e.where,
                        hint="instruction, input and output cells must be text; name other columns with "
                             "--columns instruction=COLUMN,input=COLUMN,output=COLUMN") from None


def _row_turns(value: Any, label: str | Path, place: str, column: str, options: ImportOptions,
               result: ParseResult) -> list[Message | SceneBreak]:
    """A `messages` / `conversations` cell, a list (or JSON text of one) of turns as fine-tuning data has
    them: read by those formats' own rules (their places name the turn list: `row 2.messages[1]`)."""
    from training.formats.finetune import read_turn_list

    if isinstance(value, str):
        value = loads_json(value, label, what="JSON in a cell")
    if not isinstance(value, list):
        raise DataError(label, "expected a list of turns", where=f"{place}.{column}")
    return read_turn_list(value, label, place, options, result)


@register
class TableImporter(Importer):
    """A table of posts or lines (see the module docstring)."""

    name = "table"
    fallback = True
    description = ("A table: CSV, TSV, JSON array, JSON Lines or Parquet with a text column (speaker, "
                   "conversation and time optional; --columns names them), or instruction data's "
                   "instruction, input and output columns")

    def sniff(self, source: Source) -> float:
        kind = table_kind(source)
        if kind == "parquet":    # by its magic bytes; by its name alone, to say clearly that it is damaged
            return 0.9 if source.head().startswith(_PARQUET_MAGIC) else 0.5
        if kind is None:
            return 0.0
        try:
            columns = _head_columns(source, kind)
        except (csv.Error, StopIteration, ValueError, RecursionError):
            return 0.0
        try:
            find_roles(columns, {}, source.path)
        except DataError:
            # A table whose text column has a name of its own: --columns names it, or parsing says to.
            return 0.5
        return 0.55

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        kind = table_kind(source)
        if kind is None:
            raise DataError(source.path, "is not a table personabot can read",
                            hint="tables are .csv, .tsv, .json (an array of objects), .jsonl or .parquet")
        columns, rows = read_rows(source, kind)
        roles = find_roles(columns, options.columns, source.path)
        result = ParseResult()
        result.notes.append(f"columns: {roles.describe()}")
        rows_to_threads(rows(roles.columns()), roles, source.path, f"{self.name}:{source.path.resolve()}",
                        source.path.stem, options, result)
        return result


def _head_columns(source: Source, kind: str) -> list[str]:
    """Column names from the start of the file only (for sniffing)."""
    text = source.head_text()
    if kind in ("csv", "tsv"):
        first = text.split("\n", 1)[0]
        return next(csv.reader([first], delimiter=_delimiter(kind, first)))
    if kind == "jsonl":
        first = json.loads(text.split("\n", 1)[0])
    else:
        first, _ = json.JSONDecoder().raw_decode(text.lstrip()[1:].lstrip())
    if not isinstance(first, dict):
        raise ValueError("not a row")
    return list(first)
