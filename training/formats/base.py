"""What every importer shares: the input it reads, what it returns, how it reports bad input.

An importer is a class with a `name`, a `sniff` that scores how sure it is that an input is its format,
and a `parse` that turns the input into threads of messages plus counts of what it skipped and why.
Register it with `@register` (see `training.formats`); the loader does the rest (merging parts of one chat
read from several files, ordering, splitting into conversations at long silences and scene breaks).
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from training.conversation import Message, SceneBreak
from training.errors import DataError


class Skip:
    """Reasons a message is not training text. Importers may add their own short kebab-case reasons."""

    SYSTEM = "system"                   # joins, pins, calls, "X added Y", group renames...
    BOT = "bot"                         # authored by a bot (flagged by the format or named in options)
    ATTACHMENT_ONLY = "attachment-only"  # a file, photo or sticker with no text
    MEDIA = "media-placeholder"         # "<Media omitted>", "image omitted" and friends
    EMPTY = "empty"                     # no text at all
    DELETED = "deleted"                 # "This message was deleted"
    RETWEET = "retweet"                 # someone else's words
    FORWARDED = "forwarded"             # someone else's words
    UNSUPPORTED = "unsupported"         # records the exporter itself could not read
    UNKNOWN_TYPE = "unknown-type"       # a record type newer than the importer: counted, not guessed at
    NO_SPEAKER = "no-speaker"           # text nobody is named as saying (a prologue, text before a marker)
    STAGE_DIRECTION = "stage-direction"  # "_Exit_", "_Enter ROMEO_": a script's instructions, not speech
    NO_MARKER = "no-marker"             # a chat-tokens line with no <|USER|>/<|ASSISTANT|>/<|SYSTEM|> marker
    SUPERSEDED_EDIT = "superseded-edit"  # an earlier version of a tweet its owner edited later
    EXCLUDED = "excluded"                # by a person who asked to be left out (--exclude, /forget-me)


# A silence longer than this many minutes starts a new conversation (--conversation-gap, the bot's retrains).
CONVERSATION_GAP_MINUTES = 180.0


def conversation_gap_problem(minutes: float) -> str | None:
    """What is wrong with a conversation gap, or None: the one home of its check."""
    # Not finite: a gap of inf (or nan) minutes is no time span, and overflowed where it became one.
    return None if math.isfinite(minutes) and minutes > 0 else "--conversation-gap must be a number of minutes above 0"


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """Settings that change what an importer keeps."""

    # Author names or ids (compared case-insensitively) to treat as bots, for formats that do not flag them.
    bot_names: frozenset[str] = frozenset()
    # A silence longer than this starts a new conversation.
    conversation_gap: timedelta = timedelta(minutes=CONVERSATION_GAP_MINUTES)
    # Twitter t.co links: "expand" to the real address, or "remove".
    twitter_links: str = "remove"
    # Names or ids (compared case-insensitively) of people whose messages must not be used at all.
    excluded_names: frozenset[str] = frozenset()
    # Tables: the column that plays a role (text, speaker, conversation, time, turns), from --columns.
    columns: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_user(cls, bots: Iterable[str] = (), gap_minutes: float = CONVERSATION_GAP_MINUTES,
                  exclude: Iterable[str] = (), columns: Mapping[str, str] | None = None) -> "ImportOptions":
        """Options as a user gives them: bot names or ids (any case), the conversation gap in minutes, the
        names or ids of people to leave out, table columns by role."""
        return cls(bot_names=frozenset(b.strip().casefold() for b in bots if b.strip()),
                   conversation_gap=timedelta(minutes=gap_minutes),
                   excluded_names=frozenset(e.strip().casefold() for e in exclude if e.strip()),
                   columns=dict(columns or {}))

    def is_excluded(self, *names: str | None) -> bool:
        """True when any of the given names or ids belongs to someone left out."""
        return bool(self.excluded_names) and any(n is not None and n.casefold() in self.excluded_names
                                                 for n in names)

    def is_bot_name(self, *names: str | None) -> bool:
        """True when any of the given names or ids is one the user listed as a bot."""
        # Asked for every message: no list, no work.
        return bool(self.bot_names) and any(n is not None and n.casefold() in self.bot_names for n in names)


@dataclass(slots=True)
class Thread:
    """Messages of one chat (channel, group, DM thread, play) in the order they were said.

    `key` identifies the chat across files: the parts of a partitioned Discord export or the
    `message_N.json` files of one Messenger thread carry the same key and are merged by the loader.
    Items may include `SceneBreak` markers where a conversation must end regardless of timestamps.
    """

    key: str
    title: str = ""
    items: list[Message | SceneBreak] = field(default_factory=list)
    # Posts of one voice with no speaker named (a table without a speaker column, a text file of posts):
    # the messages stand alone and take the speaker the user trains (--speaker).
    single_voice: bool = False


@dataclass(slots=True)
class ParseResult:
    """What one importer read from one input."""

    threads: list[Thread] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)    # how the input was read, for `data inspect`

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count

    @property
    def kept(self) -> int:
        return sum(isinstance(item, Message) for t in self.threads for item in t.items)


# What personabot unpacks from one zip. A zip's sizes are only its own word and a few KB can inflate to
# gigabytes, so both the declared sizes and the bytes actually inflated are held to these.
# - Members: a Slack export has a file per channel per day, so 100,000 is 100 busy channels for nearly three
#   years; every member costs a central-directory entry in memory before anything is read.
ZIP_MAX_MEMBERS = 100_000
# - One member: a JSON one is read whole and parsed (several times its size in objects), a chat's text is read
#   a line at a time (`Source.member_lines`); the largest real ones (a prolific account's tweets.js) are a few
#   hundred MB.
ZIP_MAX_MEMBER_BYTES = 512 * 1024 ** 2
# - All members together (a member read twice counts once): the text of a large workspace's export is well
#   under this.
ZIP_MAX_TOTAL_BYTES = 4 * 1024 ** 3
# Members inflate this much at a time, each piece counted against the caps as it comes.
_ZIP_CHUNK_BYTES = 1024 ** 2
_ZIP_HINT = ("this may be a zip bomb; if it is a genuine export, unzip it and name the folder (or the files in "
             "it) instead")


def _size(n: int) -> str:
    """A byte count for messages: 512 MiB, 4 GiB, 4.01 GiB."""
    for unit, factor in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} bytes"


class Source:
    """One input: a file, a folder, or a .zip, with helpers that turn read failures into `DataError`.

    A zip is opened once, on first use, and stays open for the reads that follow (reopening it for every
    member re-reads its whole directory); `close()`, or leaving a `with source:` block, closes it.
    """

    HEAD_BYTES = 64 * 1024

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._head: bytes | None = None
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: list[str] | None = None
        self._zip_inflated = 0  # bytes inflated from the zip so far, against ZIP_MAX_TOTAL_BYTES
        self._member_inflated: dict[str, int] = {}  # of which from each member (its longest read)

    def __repr__(self) -> str:
        return f"Source({str(self.path)!r})"

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the zip if it is open (reading again reopens it)."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def is_zip(self) -> bool:
        return self.path.is_file() and self.path.suffix.lower() == ".zip"

    @property
    def name(self) -> str:
        return self.path.name

    # --- files ---------------------------------------------------------------------------------------------
    def head(self) -> bytes:
        """The first 64 KiB of a file (empty for folders), for sniffing."""
        if self._head is None:
            if self.is_dir:
                self._head = b""
            else:
                try:
                    with self.path.open("rb") as f:
                        self._head = f.read(self.HEAD_BYTES)
                except OSError as e:
                    raise DataError(self.path, f"cannot read the file: {e.strerror or e}") from e
        return self._head

    def head_text(self) -> str:
        """The head decoded leniently (BOM removed), for sniffing only."""
        return _strip_bom(self.head().decode("utf-8", errors="replace"))

    def read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise DataError(self.path, f"cannot read the file: {e.strerror or e}") from e

    def read_text(self) -> str:
        """The whole file as UTF-8 text (a BOM is dropped); invalid UTF-8 is an error naming the line."""
        return decode_utf8(self.read_bytes(), self.path)

    def text_lines(self) -> Iterator[str]:
        """The file's lines as UTF-8 text, each with its line ending (a BOM is dropped), decoded one at a time
        so that a large file is never held whole; invalid UTF-8 is an error naming the line."""
        try:
            with self.path.open("rb") as f:
                for number, raw in enumerate(f, start=1):
                    yield _decoded_line(raw, self.path, number)
        except OSError as e:
            raise DataError(self.path, f"cannot read the file: {e.strerror or e}") from e

    def read_json(self) -> Any:
        """The file parsed as JSON; a syntax error names line and column."""
        return parse_json(self.read_text(), self.path)

    # --- folders and zips ----------------------------------------------------------------------------------
    def member_names(self) -> list[str]:
        """Relative POSIX paths of the files inside a folder or zip, sorted."""
        if self.is_dir:
            return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        if self.is_zip:
            self._archive()
            assert self._zip_names is not None
            return self._zip_names
        return []

    def _archive(self) -> zipfile.ZipFile:
        """The open zip; on first use its member count and declared sizes are checked against the caps."""
        if self._zip is not None:
            return self._zip
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise DataError(self.path, f"not a readable zip file ({e})",
                            hint="download the export again; the zip may be truncated") from e
        infos = archive.infolist()
        if len(infos) > ZIP_MAX_MEMBERS:
            archive.close()
            raise DataError(self.path, f"the zip holds {len(infos):,} files, more than the {ZIP_MAX_MEMBERS:,} "
                            "personabot reads from one zip", hint=_ZIP_HINT)
        declared = sum(info.file_size for info in infos)
        if declared > ZIP_MAX_TOTAL_BYTES:
            archive.close()
            raise DataError(self.path, f"the zip says it inflates to {_size(declared)}, more than the "
                            f"{_size(ZIP_MAX_TOTAL_BYTES)} personabot unpacks from one zip", hint=_ZIP_HINT)
        self._zip = archive
        if self._zip_names is None:
            self._zip_names = sorted(info.filename for info in infos if not info.is_dir())
        return archive

    def read_member_bytes(self, name: str) -> bytes:
        """A member of a folder or zip, whole (for a format that must parse it whole, as JSON)."""
        if self.is_dir:
            try:
                return (self.path / name).read_bytes()
            except OSError as e:
                raise DataError(self.path / name, f"cannot read the file: {e.strerror or e}") from e
        data = io.BytesIO()  # grows in place and hands its buffer over: the member is held once, not twice
        for chunk in self._inflate(name):
            data.write(chunk)
        return data.getvalue()

    def member_lines(self, name: str) -> Iterator[str]:
        """A member's lines as UTF-8 text, each with its line ending (a BOM is dropped), as `text_lines` gives a
        file's: a zip member is inflated and decoded a piece at a time, never held whole. Invalid UTF-8 is an
        error naming the line."""
        if self.is_dir:
            yield from Source(self.path / name).text_lines()
            return
        label = self.member_label(name)
        number = 0
        pending: list[bytes] = []  # the start of a line that goes on in the next piece
        for chunk in self._inflate(name):
            *ended, rest = chunk.split(b"\n")
            for raw in ended:
                number += 1
                if pending:
                    pending.append(raw)
                    raw = b"".join(pending)
                    pending.clear()
                yield _decoded_line(raw + b"\n", label, number)
            if rest:
                pending.append(rest)
        if pending:
            yield _decoded_line(b"".join(pending), label, number + 1)

    def _inflate(self, name: str) -> Iterator[bytes]:
        """A zip member's bytes as they inflate, a piece at a time, held to the caps as they come: its declared
        size was checked already, but a zip's sizes are only its own word."""
        archive = self._archive()
        too_big = f"{name} inflates to more than {_size(ZIP_MAX_MEMBER_BYTES)}, the most personabot reads of " \
                  "one file in a zip"
        inflated = 0
        try:
            info = archive.getinfo(name)
            if info.file_size > ZIP_MAX_MEMBER_BYTES:
                raise DataError(self.path, too_big, hint=_ZIP_HINT)
            with archive.open(info) as member:
                while chunk := member.read(_ZIP_CHUNK_BYTES):
                    inflated += len(chunk)
                    self._count_inflated(name, inflated, too_big)
                    yield chunk
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise DataError(self.member_label(name), f"cannot read this file from the zip ({e})",
                            hint="download the export again; the zip may be truncated or damaged") from e

    def _count_inflated(self, name: str, inflated: int, too_big: str) -> None:
        """Count the first `inflated` bytes of member `name` against the caps; those an earlier read of it
        counted already are not counted again (a chat is read twice, and no bigger for it)."""
        grown = inflated - self._member_inflated.get(name, 0)
        if grown > 0:
            self._member_inflated[name] = inflated
            self._zip_inflated += grown
        if inflated > ZIP_MAX_MEMBER_BYTES:
            raise DataError(self.path, too_big, hint=_ZIP_HINT)
        if self._zip_inflated > ZIP_MAX_TOTAL_BYTES:
            raise DataError(self.path, f"the zip inflates to more than {_size(ZIP_MAX_TOTAL_BYTES)}, the most "
                            "personabot unpacks from one zip", hint=_ZIP_HINT)

    def member_label(self, name: str) -> str:
        """How to name a member in messages: a real path for folders, `archive.zip!inner/path` for zips."""
        if self.is_dir:
            return str(self.path / PurePosixPath(name))
        return f"{self.path}!{name}"

    def read_member_json(self, name: str) -> Any:
        label = self.member_label(name)
        return parse_json(decode_utf8(self.read_member_bytes(name), label), label)


# --- helpers for importers ----------------------------------------------------------------------------------
def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _decoded_line(raw: bytes, label: str | Path, number: int) -> str:
    """Line `number` of a file as UTF-8 text (a BOM dropped from the first); invalid UTF-8 is a `DataError`
    naming the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        decode_utf8(raw, label, first_line=number)  # raises the DataError naming the line
        raise
    return line if number > 1 else _strip_bom(line)


def decode_utf8(data: bytes, label: str | Path, *, first_line: int = 1) -> str:
    """UTF-8 text with a BOM dropped; on invalid bytes a `DataError` naming the line (`data` starts on line
    `first_line` of the file)."""
    try:
        return _strip_bom(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + first_line
        raise DataError(label, "is not UTF-8 text (invalid byte "
                        f"0x{data[e.start]:02x})", where=f"line {line}",
                        hint="export the chat again as UTF-8, or convert the file to UTF-8") from e


def parse_json(text: str, label: str | Path) -> Any:
    """JSON with syntax errors reported as line and column (truncated downloads are the usual cause)."""
    if not text.strip():
        raise DataError(label, "the file is empty", hint="export the chat again")
    return loads_json(text, label)


def loads_json(text: str, label: str | Path, *, first_line: int = 1, what: str = "JSON",
               hint: str | None = None) -> Any:
    """`json.loads` with every failure a `DataError` naming line and column: syntax errors, nesting too
    deep for the parser (RecursionError), numbers too long to convert. `first_line` is the line of the file
    `text` starts on (a JSON Lines record); `what` names the format and `hint` replaces the usual advice."""
    damaged = hint or "the file was changed or damaged; export it again"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # A string cut off by the end of the file is reported where the string began, not at the end.
        truncated = e.pos >= len(text.rstrip()) - 1 or e.msg.startswith("Unterminated string")
        raise DataError(label, f"is not valid {what}: {e.msg}",
                        where=f"line {e.lineno + first_line - 1}, column {e.colno}",
                        hint=hint or ("the file looks cut off; download or export it again" if truncated
                                      else damaged)) from e
    except RecursionError:
        line, column = _deep_nesting_at(text)
        raise DataError(label, f"is not usable {what}: nested more than {JSON_MAX_DEPTH} levels deep, which no "
                        "export does", where=f"line {line + first_line - 1}, column {column}", hint=damaged) from None
    except ValueError as e:  # a number of more than 4300 digits, which int() refuses
        raise DataError(label, f"is not usable {what}: {e}", where=f"line {first_line}", hint=damaged) from None


# Where `_deep_nesting_at` reports a nesting too deep for the parser: real exports nest a few levels.
JSON_MAX_DEPTH = 100
_JSON_BRACKET_OR_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def _deep_nesting_at(text: str) -> tuple[int, int]:
    """Line and column of the first bracket nested deeper than JSON_MAX_DEPTH (the start when none is)."""
    depth = 0
    for match in _JSON_BRACKET_OR_STRING.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > JSON_MAX_DEPTH:
                start = match.start()
                line = text.count("\n", 0, start) + 1
                return line, start - (text.rfind("\n", 0, start) + 1) + 1
        elif char in "]}":
            depth -= 1
    return 1, 1


def json_at(value: Any, expected: type | tuple[type, ...], label: str | Path, where: str,
            what: str | None = None) -> Any:
    """`value` if it has the expected JSON type, else a `DataError` at the JSON path `where`."""
    if isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected)):
        return value
    want = what or " or ".join(_JSON_NAMES.get(t, t.__name__) for t in _as_tuple(expected))
    raise DataError(label, f"expected {want}, found {_json_name(value)}", where=where,
                    hint="this does not look like an untouched export; export the chat again")


def json_field(obj: dict[str, Any], key: str, expected: type | tuple[type, ...], label: str | Path,
               where: str, *, required: bool = True, default: Any = None) -> Any:
    """`obj[key]` checked with `json_at`; a missing required key is a `DataError` naming the path."""
    if key not in obj or (obj[key] is None and type(None) not in _as_tuple(expected)):
        if required:
            raise DataError(label, f'missing field "{key}"', where=where,
                            hint="this does not look like an untouched export; export the chat again")
        return default
    return json_at(obj[key], expected, label, f"{where}.{key}")


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def keep_message(result: "ParseResult", items: list[Message | SceneBreak], options: ImportOptions,
                 message: Message) -> bool:
    """Append `message`, or count why it is no training text (no text at all, a bot's); True when kept."""
    if not message.text:
        result.skip(Skip.EMPTY)
    elif options.is_bot_name(message.speaker):
        result.skip(Skip.BOT)
    else:
        items.append(message)
        return True
    return False


def split_lines(text: str) -> list[str]:
    """Lines split at LF or CRLF only: `str.splitlines` would also split at U+2028, form feeds and other
    characters that a message or a JSON string may hold."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def squash(lines: Iterable[str]) -> str:
    """Join lines into message text: trailing spaces dropped, outer blank lines removed."""
    return "\n".join(line.rstrip() for line in lines).strip("\n").strip()


class Importer:
    """Base class of all importers. Subclasses set `name` and `description` and implement both methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Whether this importer reads folders or zip archives as a whole (Slack exports).
    reads_archives: ClassVar[bool] = False
    # A fallback reads any file of a general shape (a table, lines of text): it is asked only when no
    # importer of a specific format recognises the file.
    fallback: ClassVar[bool] = False
    # The speaker a persona learns when --speaker is omitted (fine-tuning data: the assistant); None: the
    # user must name one.
    default_speaker: ClassVar[str | None] = None

    def sniff(self, source: Source) -> float:
        """How sure this importer is that `source` is its format: 0 (no) to 1 (certain). Must not raise
        for inputs of other formats; it sees only `source.head()` / `head_text()` (or member names)."""
        raise NotImplementedError

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        """Read the whole input. Raise `DataError` (with `where`) for malformed input; count every message
        that is not training text in `ParseResult.skipped`; never drop one silently."""
        raise NotImplementedError
