"""DiscordChatExporter (Tyrrrz) exports: JSON (`discord-json`) and CSV (`discord-csv`).

JSON (every build since 2020): a preamble (`guild`, `channel`, `dateRange`, since 2023-07 `exportedAt`), then
`messages` oldest-first, then `messageCount`. A big channel may be split into `... [part N].json` files; each
part repeats the preamble, so every part carries the channel id and the parts merge in the loader.

CSV: one row per message, every field double-quoted. The header and the date text changed over the years
(see `_CSV_HEADERS` and `_CsvDates`); there is no message id, no message type and no nickname.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from training.conversation import Message, sort_key
from training.errors import DataError
from training.formats import register
from training.formats.base import (
    Importer,
    ImportOptions,
    ParseResult,
    Skip,
    Source,
    Thread,
    json_at,
    json_field,
    squash,
)

# --- shared ------------------------------------------------------------------------------------------------
_HINT_REEXPORT = "export the channel again with DiscordChatExporter"

# Discord user mentions and custom emoji as raw markup: only exports made with `--markdown false` have them
# (by default DCE already writes `@Name` and `:emoji:`).
_RAW_MENTION = re.compile(r"<@!?(\d+)>")
_RAW_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
# A lone UTF-16 surrogate (a half emoji that Discord cut) cannot be written as UTF-8 later.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# The `[channelId]` in DCE's default file name `Guild - Category - channel [channelId] [part N].ext`.
_CHANNEL_ID_IN_NAME = re.compile(r"\[(\d{15,21})\]")
_PART_IN_NAME = re.compile(r"\s*\[part \d+\]", re.IGNORECASE)


def _message_text(raw: str, mention_names: dict[str, str] | None = None) -> str:
    """Message text as a reader sees it: raw mentions/emoji resolved, Unix newlines, outer blanks gone."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if "<" in text:
        if mention_names:
            text = _RAW_MENTION.sub(lambda m: "@" + mention_names[m.group(1)]
                                    if m.group(1) in mention_names else m.group(0), text)
        text = _RAW_CUSTOM_EMOJI.sub(r":\1:", text)
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return squash(text.split("\n"))


def _in_time_order(items: list[tuple[tuple[float, int, int], Message]]) -> list[Message]:
    """Messages sorted by time; ties keep their order (the tuple's last element is the position read)."""
    return [message for _, message in sorted(items, key=lambda pair: pair[0])]


# --- JSON ---------------------------------------------------------------------------------------------------
# `type` is `MessageKind.ToString()`. Names DCE knows:
_USER_KINDS = {"Default", "Reply"}
_SYSTEM_KINDS = {"RecipientAdd", "RecipientRemove", "Call", "ChannelNameChange", "ChannelIconChange",
                 "ChannelPinnedMessage", "GuildMemberJoin", "ThreadCreated"}
# Any other Discord type is an undefined enum value and prints as its number. These two are the answers of an
# application to a slash command (20, CHAT_INPUT_COMMAND) or a context-menu command (23): bot output. Every
# other numbered type is a Discord notice (boosts 8-11, follows 12, thread starters 21, invite reminders 22,
# auto-moderation 24, stage events 27-31, poll results 46...), so it counts as system.
_BOT_OUTPUT_KIND_NUMBERS = {20, 23}

# What DCE writes: ids are Discord snowflakes (ASCII digits); a type is a MessageKind name or, for kinds it
# has no name for, their number. Anything else (`"²"` passes str.isdigit() but not int()) is a damaged file.
_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}|[0-9]{1,6}")

_JSON_SIGNATURE = re.compile(r'\A\s*\{\s*"guild"\s*:\s*\{\s*"id"\s*:')
_JSON_CHANNEL = re.compile(r'"channel"\s*:\s*\{\s*"id"\s*:\s*"\d+"\s*,\s*"type"\s*:')
_JSON_MESSAGES = re.compile(r'"messages"\s*:\s*\[')


@register
class DiscordJsonImporter(Importer):
    """A DiscordChatExporter JSON export of one channel, DM or thread (any build since 2020)."""

    name = "discord-json"
    description = "DiscordChatExporter JSON export of a channel, DM or thread (also [part N] files)"

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if not _JSON_SIGNATURE.match(head):
            return 0.0
        if _JSON_CHANNEL.search(head) and _JSON_MESSAGES.search(head):
            return 0.95
        return 0.6  # the guild preamble alone: still DCE's layout, but the rest is not in view

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        label = source.path
        root = json_at(source.read_json(), dict, label, "$", "an object with guild, channel and messages")
        channel = json_field(root, "channel", dict, label, "$")
        channel_id = json_field(channel, "id", str, label, "$.channel")
        guild = json_field(root, "guild", dict, label, "$", required=False, default={})
        messages = json_field(root, "messages", list, label, "$")

        records = [json_at(raw, dict, label, f"$.messages[{i}]") for i, raw in enumerate(messages)]
        known_names: dict[str, str] = {}
        for record in records:
            author = record.get("author")
            if isinstance(author, dict) and isinstance(author.get("id"), str):
                known_names[author["id"]] = _display_name(author)

        result = ParseResult()
        items: list[tuple[tuple[float, int, int], Message]] = []
        for i, record in enumerate(records):
            message = self._message(record, f"$.messages[{i}]", label, options, known_names, result)
            if message is not None:
                snowflake = int(message.id) if message.id else 0
                items.append(((sort_key(message.timestamp), snowflake, i), message))

        title = " - ".join(part for part in (
            _optional_str(guild, "name"), _optional_str(channel, "category"), _optional_str(channel, "name"))
            if part)
        result.threads.append(Thread(f"{self.name}:{channel_id}", title, _in_time_order(items)))
        return result

    def _message(self, record: dict[str, Any], where: str, label: Path, options: ImportOptions,
                 known_names: dict[str, str], result: ParseResult) -> Message | None:
        """One message, or None after counting why it is not training text."""
        message_id = _checked(json_field(record, "id", str, label, where), _SNOWFLAKE, "message id", label,
                              f"{where}.id")
        kind = _checked(json_field(record, "type", str, label, where), _KIND, "message type", label,
                        f"{where}.type")
        stamp = _json_timestamp(json_field(record, "timestamp", str, label, where), label, f"{where}.timestamp")
        content = json_field(record, "content", str, label, where)
        author = json_field(record, "author", dict, label, where)
        author_id = json_field(author, "id", str, label, f"{where}.author")
        username = json_field(author, "name", str, label, f"{where}.author")
        discriminator = json_field(author, "discriminator", str, label, f"{where}.author", required=False)
        is_bot = json_field(author, "isBot", bool, label, f"{where}.author", required=False, default=False)
        reference = json_field(record, "reference", dict, label, where, required=False)
        speaker = _display_name(author)
        tagged = f"{username}#{discriminator}" if discriminator and discriminator.strip("0") else None

        if kind in _SYSTEM_KINDS or (kind.isdigit() and int(kind) not in _BOT_OUTPUT_KIND_NUMBERS):
            # New builds give these synthetic text ("Joined the server."), old builds "": system either way.
            result.skip(Skip.SYSTEM)
            return None
        if kind.isdigit() or is_bot or record.get("interaction") is not None \
                or options.is_bot_name(speaker, username, tagged, author_id):
            result.skip(Skip.BOT)
            return None
        if kind not in _USER_KINDS:
            result.skip(Skip.UNKNOWN_TYPE)  # a type name newer than this importer: not guessed at
            return None
        if (reference is not None and reference.get("type") == "Forward") \
                or record.get("forwardedMessage") is not None:
            result.skip(Skip.FORWARDED)
            return None

        # Raw `<@id>` mentions only appear in `--markdown false` exports; names come from the message's own
        # mentions, else from the authors of this file.
        mention_names = {**known_names, **_mention_names(record)} if "<@" in content else None
        text = _message_text(content, mention_names)
        if not text:
            if any(record.get(key) for key in ("attachments", "stickers", "embeds")):
                result.skip(Skip.ATTACHMENT_ONLY)
            elif kind == "Default" and reference is not None:
                # Builds before 2026-02 wrote a forward as an empty Default message that only has a reference.
                result.skip(Skip.FORWARDED)
            else:
                result.skip(Skip.EMPTY)
            return None

        reply_to = None
        if kind == "Reply" and reference is not None and isinstance(reference.get("messageId"), str):
            reply_to = reference["messageId"]
        aliases = tuple(dict.fromkeys(n for n in (username, tagged) if n and n != speaker))
        return Message(speaker=speaker, text=text, timestamp=stamp, reply_to=reply_to, id=message_id,
                       speaker_id=author_id, speaker_aliases=aliases)


def _checked(value: str, pattern: re.Pattern[str], what: str, label: Path, where: str) -> str:
    """`value` when it is what DiscordChatExporter writes for `what`, else a `DataError` at `where`."""
    if pattern.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise DataError(label, f"unreadable {what} {shown!r}", where=where,
                        hint="the file was changed or damaged; " + _HINT_REEXPORT)
    return value


def _display_name(author: dict[str, Any]) -> str:
    """The name people saw: the server nickname / global display name, else the username."""
    for key in ("nickname", "name"):
        value = author.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return "Unknown user"


def _mention_names(record: dict[str, Any]) -> dict[str, str]:
    mentions = record.get("mentions")
    if not isinstance(mentions, list):
        return {}
    return {m["id"]: _display_name(m) for m in mentions if isinstance(m, dict) and isinstance(m.get("id"), str)}


def _optional_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value.strip() if isinstance(value, str) else ""


def _json_timestamp(text: str, label: Path, where: str) -> datetime:
    """DCE's ISO 8601 timestamps keep their offset (+00:00 before 2023-09, the exporter's own after)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise DataError(label, f"cannot read the timestamp {text!r}", where=where,
                        hint="DiscordChatExporter writes ISO 8601 timestamps such as "
                             f"2024-04-02T10:15:42.846+02:00; {_HINT_REEXPORT}") from None


# --- CSV ----------------------------------------------------------------------------------------------------
# Headers, newest first: since 2019-12 comma-separated; before that semicolons with a trailing `;` (rows end
# with `;` too); before AuthorID existed, without it (the oldest without Reactions as well).
_CSV_HEADERS: list[tuple[str, ...]] = [
    ("AuthorID", "Author", "Date", "Content", "Attachments", "Reactions"),
    ("Author", "Date", "Content", "Attachments", "Reactions"),
    ("Author", "Date", "Content", "Attachments"),
]
_CSV_CURRENT_HEADER = ",".join(_CSV_HEADERS[0])
_CSV_SIGNATURES = {
    ",".join(_CSV_HEADERS[0]): 0.95,
    ";".join(_CSV_HEADERS[0]) + ";": 0.95,
    ";".join(_CSV_HEADERS[1]) + ";": 0.95,
    ";".join(_CSV_HEADERS[2]) + ";": 0.9,
}
# A header with quoted names is not what DCE writes, but a spreadsheet that re-saved the file may write it.
_CSV_QUOTED_HEADER = re.compile(r'\A"AuthorID"[,;]"Author"[,;]"Date"[,;]"Content"[,;]')

# The text DCE writes for system messages in CSV since 2023-02 (`PlainTextMessageExtensions`); CSV has no type
# column, so these exact sentences are the only way to tell them from what people wrote.
_CSV_SYSTEM_TEXT = re.compile(
    r"Added .+ to the group\.|Added a recipient\.|Left the group\.|Removed .+ from the group\."
    r"|Removed a recipient\.|Started a call that lasted [\d,]+ minutes\.|Changed the channel name\."
    r"|Changed the channel name: .+|Changed the channel icon\.|Pinned a message\.|Started a thread\."
    r"|Joined the server\.", re.DOTALL)
_TAGGED_NAME = re.compile(r"(?P<name>.+)#(?P<discriminator>\d{4})", re.DOTALL)


@register
class DiscordCsvImporter(Importer):
    """A DiscordChatExporter CSV export of one channel (every header and date style since 2018)."""

    name = "discord-csv"
    description = "DiscordChatExporter CSV export of a channel (AuthorID,Author,Date,Content,...)"

    def sniff(self, source: Source) -> float:
        first_line = source.head_text().split("\n", 1)[0].rstrip("\r")
        if first_line in _CSV_SIGNATURES:
            return _CSV_SIGNATURES[first_line]
        if _CSV_QUOTED_HEADER.match(first_line):
            return 0.6
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        label = source.path
        text = source.read_text()
        if not text.strip():
            raise DataError(label, "the file is empty", hint=_HINT_REEXPORT)
        delimiter, columns = _csv_header(text.split("\n", 1)[0].rstrip("\r"), label)
        rows = _csv_rows(text, delimiter, columns, label)

        dates = _CsvDates(label, [(line, row["Date"]) for line, row in rows])
        result = ParseResult()
        items: list[tuple[tuple[float, int, int], Message]] = []
        for position, ((_, row), stamp) in enumerate(zip(rows, dates.parsed)):
            message = self._message(row, stamp, options, result)
            if message is not None:
                items.append(((sort_key(message.timestamp), 0, position), message))

        # Exports made with `--reverse` are newest-first; turn them round first so that messages written in
        # the same minute (CSV dates often have no seconds) keep the order they were said in.
        if _mostly_descending([key[0] for key, _ in items]):
            items = [((key[0], 0, len(items) - n), m) for n, (key, m) in enumerate(items)]
        result.threads.append(Thread(_csv_thread_key(self.name, source.path), _csv_title(source.path),
                                     _in_time_order(items)))
        return result

    def _message(self, row: dict[str, str], stamp: datetime, options: ImportOptions,
                 result: ParseResult) -> Message | None:
        author = row["Author"]
        author_id = row.get("AuthorID") or None
        speaker, aliases = _csv_names(author)
        if options.is_bot_name(speaker, *aliases, author, author_id):
            result.skip(Skip.BOT)
            return None
        content = _message_text(row["Content"])
        if not content:
            result.skip(Skip.ATTACHMENT_ONLY if row["Attachments"].strip() else Skip.EMPTY)
            return None
        if not row["Attachments"].strip() and _CSV_SYSTEM_TEXT.fullmatch(content):
            result.skip(Skip.SYSTEM)
            return None
        return Message(speaker=speaker, text=content, timestamp=stamp, speaker_id=author_id,
                       speaker_aliases=aliases)


def _csv_header(first_line: str, label: Path) -> tuple[str, tuple[str, ...]]:
    """The delimiter and column names of a DCE CSV header; anything else is a DataError on line 1."""
    for delimiter in (",", ";"):
        names = next(csv.reader([first_line], delimiter=delimiter))
        if names and names[-1] == "" and first_line.endswith(delimiter):
            names = names[:-1]  # the old semicolon header ends with `;`
        if tuple(names) in _CSV_HEADERS:
            return delimiter, tuple(names)
    shown = first_line if len(first_line) <= 80 else first_line[:77] + "..."
    raise DataError(label, f"this is not a DiscordChatExporter CSV header: {shown!r}", where="line 1",
                    hint=f"DiscordChatExporter CSV files start with {_CSV_CURRENT_HEADER}; "
                         "check that this is the export you meant, or export the channel again")


def _csv_rows(text: str, delimiter: str, columns: tuple[str, ...],
              label: Path) -> list[tuple[int, dict[str, str]]]:
    """(first line number, row by column name) for every data row; raw newlines inside quotes are kept."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    line = 1
    try:
        next(reader)  # the header, checked by _csv_header
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            if not fields or fields == [""]:
                continue  # a blank line (a trailing newline doubled by an editor): no message in it
            if len(fields) == len(columns) + 1 and fields[-1] == "":
                fields = fields[:-1]  # semicolon builds end every row with `;`
            if len(fields) != len(columns):
                raise DataError(label, f"this row has {len(fields)} fields, the header names {len(columns)}",
                                where=f"line {line}",
                                hint="the file was cut or edited; " + _HINT_REEXPORT)
            rows.append((line, dict(zip(columns, fields))))
    except csv.Error as e:
        raise DataError(label, f"is not valid CSV ({e})", where=f"line {line}",
                        hint="the file was cut or edited; " + _HINT_REEXPORT) from e
    return rows


def _csv_names(author: str) -> tuple[str, tuple[str, ...]]:
    """Speaker and aliases from CSV's `Author` (`name` or `name#1234`; no nickname in CSV)."""
    tagged = _TAGGED_NAME.fullmatch(author)
    if tagged is None:
        return author, ()
    if not tagged["discriminator"].strip("0"):
        # `#0000` is how builds from the 2023 username migration wrote new-style users: not a real tag.
        return tagged["name"], ()
    return author, (tagged["name"],)


def _csv_thread_key(format_name: str, path: Path) -> str:
    """The channel id from DCE's file name when it is there (so `[part N]` files merge), else the path."""
    found = _CHANNEL_ID_IN_NAME.findall(path.name)
    return f"{format_name}:{found[-1]}" if found else f"{format_name}:{path.resolve()}"


def _csv_title(path: Path) -> str:
    return _PART_IN_NAME.sub("", _CHANNEL_ID_IN_NAME.sub("", path.stem)).strip()


def _mostly_descending(keys: list[float]) -> bool:
    steps = list(zip(keys, keys[1:]))
    return sum(b < a for a, b in steps) > sum(b > a for a, b in steps)


# --- CSV dates ----------------------------------------------------------------------------------------------
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                "october", "november", "december")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T")
_UNIX_DATE = re.compile(r"\d{9,13}")  # the `unix` / `unixms` date formats of 2020-2023 builds
# `(?:\s*+,)?\s++` is "\s*,?\s+" without its ambiguity: two adjacent runs of spaces that can split a long run
# any number of ways take quadratic time on a date followed by thousands of spaces.
_TIME = r"(?:\s*+,)?\s++(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?(?:\s*(?P<ampm>[AaPp])\.?\s?[Mm]\.?)?"
# `dd-MMM-yy hh:mm tt` (invariant culture, 2018 to 2023-02).
_NAMED_MONTH_DATE = re.compile(r"(?P<d>\d{1,2})[- ](?P<mon>[^\W\d_]+)\.?[- ](?P<y>\d{4}|\d{2})" + _TIME)
# Numeric dates: `MM/dd/yyyy h:mm tt` (2023-02 to 09) and culture "g" (2023-09 to 11): en-US `3/11/2024 6:58 PM`,
# de-DE `11.03.2024 18:58`, en-GB `11/03/2024 18:58`, sv-SE `2024-03-11 18:58`, ja-JP `2024/03/11 18:58`...
_NUMERIC_DATE = re.compile(r"(?P<a>\d{1,4})(?P<sep>[./-])\s?(?P<b>\d{1,2})(?P=sep)\s?(?P<c>\d{1,4})\.?" + _TIME)
# Invisible marks some cultures put in their date patterns (U+200E/U+200F/U+061C).
_BIDI_MARKS = re.compile(r"[\u200e\u200f\u061c]")


@dataclass(slots=True)
class _NumericDate:
    line: int
    first: int   # the two numbers whose order (day/month or month/day) depends on the exporter's culture
    second: int
    year: int
    time: tuple[int, int, int]
    twelve_hour: bool


class _CsvDates:
    """Every `Date` of one CSV file, parsed. All rows come from one export, so they share one date style.

    Numeric dates with the year last are `d/m` or `m/d` depending on the exporter's culture. The order is
    decided once per file: a first number above 12 means day-first, a second above 12 month-first. When every
    number is 12 or less, the reading under which the rows run in one direction in time wins (an export is
    oldest-first, or newest-first with `--reverse`), then the one whose messages span less time (a wrong reading
    turns each new day into a jump of a month); when both fit equally, 12-hour times (AM/PM) mean month-first
    (en-US) and 24-hour times day-first (en-GB, fr-FR...).
    Dotted dates (de-DE, ru-RU...) are always day-first. ISO dates keep their offset; the others are the
    exporter's local wall-clock time and stay naive.
    """

    def __init__(self, label: Path, dates: list[tuple[int, str]]) -> None:
        self.label = label
        self.parsed: list[datetime] = []
        numeric: list[tuple[int, _NumericDate]] = []  # (index in parsed, date) still waiting for an order
        for line, raw in dates:
            value = _BIDI_MARKS.sub("", raw).strip()
            stamp = self._unambiguous(line, value)
            if isinstance(stamp, _NumericDate):
                numeric.append((len(self.parsed), stamp))
                stamp = datetime.min
            self.parsed.append(stamp)
        if numeric:
            day_first = self._day_first([d for _, d in numeric])
            for index, d in numeric:
                day, month = (d.first, d.second) if day_first else (d.second, d.first)
                self.parsed[index] = self._build(d.line, d.year, month, day, d.time)

    def _error(self, line: int, message: str) -> DataError:
        return DataError(self.label, message, where=f"line {line}",
                         hint="DiscordChatExporter CSV dates look like 2024-03-11T18:58:03.4120000+01:00, "
                              "3/11/2024 6:58 PM, 11.03.2024 18:58 or 11-Mar-24 06:58 PM; a custom --dateformat "
                              "cannot be read: " + _HINT_REEXPORT + " without one")

    def _unambiguous(self, line: int, value: str) -> datetime | _NumericDate:
        if _ISO_DATE.match(value):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise self._error(line, f"cannot read the date {value!r}") from None
        if _UNIX_DATE.fullmatch(value):
            seconds = int(value) / (1000 if len(value) > 11 else 1)
            return datetime.fromtimestamp(seconds, timezone.utc)
        if m := _NAMED_MONTH_DATE.fullmatch(value):
            # The legacy formats use the invariant culture: English names (`Mar`; `Sept`/`March` tolerated).
            month = next((n for n, name in enumerate(_MONTH_NAMES, start=1)
                          if len(m["mon"]) >= 3 and name.startswith(m["mon"].lower())), None)
            if month is None:
                raise self._error(line, f"cannot read the month {m['mon']!r} in the date {value!r}")
            year = int(m["y"]) + (2000 if len(m["y"]) == 2 else 0)
            return self._build(line, year, month, int(m["d"]), self._time(line, value, m))
        if m := _NUMERIC_DATE.fullmatch(value):
            time = self._time(line, value, m)
            a, b, c = m["a"], int(m["b"]), m["c"]
            if len(a) == 4:  # year first: yyyy-MM-dd, yyyy/MM/dd, yyyy.MM.dd
                return self._build(line, int(a), b, int(c), time)
            if len(c) not in (2, 4):
                raise self._error(line, f"cannot read the date {value!r}")
            year = int(c) + (2000 if len(c) == 2 else 0)
            if m["sep"] == ".":  # no culture writes month.day.year
                return self._build(line, year, b, int(a), time)
            if not (1 <= int(a) <= 31 and 1 <= b <= 31):
                # Checked now: the day/month order is decided later, from every date, which must be real.
                raise self._error(line, f"this is not a real date: {value!r}")
            return _NumericDate(line, int(a), b, year, time, m["ampm"] is not None)
        raise self._error(line, f"cannot read the date {value!r}")

    def _time(self, line: int, value: str, m: re.Match[str]) -> tuple[int, int, int]:
        hour, minute, second = int(m["H"]), int(m["M"]), int(m["S"] or 0)
        if m["ampm"]:
            if not 1 <= hour <= 12:
                raise self._error(line, f"the hour in {value!r} does not fit AM/PM")
            hour = hour % 12 + (12 if m["ampm"] in "Pp" else 0)
        if hour > 23 or minute > 59 or second > 59:
            raise self._error(line, f"this is not a real time: {value!r}")
        return hour, minute, second

    def _build(self, line: int, year: int, month: int, day: int, time: tuple[int, int, int]) -> datetime:
        try:
            return datetime(year, month, day, *time)
        except ValueError as e:
            raise self._error(line, f"this is not a real date or time ({e})") from None

    def _day_first(self, dates: list[_NumericDate]) -> bool:
        day_first = next((d for d in dates if d.first > 12), None)
        month_first = next((d for d in dates if d.second > 12), None)
        if day_first is not None and month_first is not None:
            raise self._error(month_first.line, "the dates mix day/month (line "
                              f"{day_first.line}: {day_first.first}/{day_first.second}) and month/day "
                              f"(line {month_first.line}: {month_first.first}/{month_first.second}) order")
        if day_first is not None or month_first is not None:
            return day_first is not None

        def implausibility(as_day_first: bool) -> tuple[int, float]:
            """Steps against the file's direction (exports may be newest-first), then the time they span."""
            stamps = [datetime(d.year, d.second if as_day_first else d.first,
                               d.first if as_day_first else d.second, *d.time) for d in dates]
            steps = list(zip(stamps, stamps[1:]))
            against = min(sum(b < a for a, b in steps), sum(b > a for a, b in steps))
            return against, sum(abs((b - a).total_seconds()) for a, b in steps)

        as_day_first, as_month_first = implausibility(True), implausibility(False)
        if as_day_first != as_month_first:
            return as_day_first < as_month_first
        return not any(d.twelve_hour for d in dates)
