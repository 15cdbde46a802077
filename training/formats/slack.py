"""Slack workspace export, as a folder or the downloaded .zip (one code path through `Source` members).

Layout: `users.json` (`org_users.json` on Enterprise Grid), `channels.json` and, in full exports,
`groups.json`, `dms.json`, `mpims.json` at the root; one folder per conversation (named after the channel,
or the DM's id) holding one `YYYY-MM-DD.json` array of messages per day. A zip whose files all sit in one
top folder (a re-zipped export) is read the same way.

- Speakers come from `users.json`: `profile.display_name` when set, else `real_name`, else `name`; the other
  names are aliases and the user id is `speaker_id`. Without `users.json` (or for a user missing from it, such
  as a guest from a shared channel) the `user_profile` Slack stores on each message is used, and failing that
  the user id itself is the speaker.
- Text is Slack mrkdwn made readable: `<@U123>` -> `@Name`, `<#C123|name>` -> `#name`, `<url|label>` ->
  `label`, `<url>` -> `url`, `<!here>` -> `@here`, then `&amp; &lt; &gt;` unescaped. `:emoji:` and `*bold*`
  stay as typed.
- Threads: a message with replies (`reply_count` > 0, or replies present) and its replies form one thread,
  key `slack:<channel id>:<thread_ts>`, in time order; the parent is NOT also in the channel's main flow
  (`slack:<channel id>`), so every message is counted exactly once and a reply's context is its thread.
  `thread_broadcast` replies (also shown in the channel) stay in their thread. Message ids are
  `<channel id>:<ts>` (a `ts` is only unique within a channel); a reply's `reply_to` is its parent's id.
  The channel id comes from channels.json/groups.json/dms.json/mpims.json; a folder none of them lists is
  keyed by its folder name.
- Skipped: join/leave/topic/purpose/rename/pin/... events (system), `bot_message`, messages with a `bot_id`,
  users flagged `is_bot`/`is_app_user`, Slackbot and names in `options.bot_names` (bot), deleted thread
  parents (`tombstone`: deleted), file-only messages (attachment-only), empty text (empty), records that
  are not `type: "message"`, have no author or an unknown subtype (unsupported).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from training.conversation import Message
from training.errors import DataError
from training.formats import register
from training.formats.base import (Importer, ImportOptions, ParseResult, Skip, Source, Thread, json_at,
                                   json_field, squash)

_USER_FILES = ("users.json", "org_users.json")
# Conversation lists, and how each names the folder of its day files.
_CHANNEL_FILES = (("channels.json", "name"), ("groups.json", "name"), ("mpims.json", "name"), ("dms.json", "id"))
_META_FILES = frozenset((*_USER_FILES, *(name for name, _ in _CHANNEL_FILES)))
_DAY_FILE = re.compile(r"^(?P<folder>[^/]+)/(?P<day>\d{4}-\d{2}-\d{2})\.json$")
_TS = re.compile(r"^(?P<sec>\d+)(?:\.(?P<frac>\d{1,6}))?$")

# Subtypes that are events, not something a person wrote. Every `channel_*` / `group_*` subtype is an event
# too (join, leave, topic, purpose, name, archive, convert_to_private...).
_SYSTEM_SUBTYPES = frozenset({
    "pinned_item", "unpinned_item", "reminder_add", "reminder_delete", "bot_add", "bot_remove", "bot_enable",
    "bot_disable", "app_conversation_join", "app_conversation_leave", "sh_room_created", "sh_room_shared",
    "joiner_notification", "joiner_notification_for_inviter", "huddle_thread", "ekm_access_denied",
    "team_join", "file_comment", "file_mention",
})
_BOT_SUBTYPES = frozenset({"bot_message", "slackbot_response"})
# Subtypes that are a person's own words.
_KEPT_SUBTYPES = frozenset({"thread_broadcast", "reply_broadcast", "me_message", "file_share"})
_SLACKBOT = "USLACKBOT"

_CONTROL = re.compile(r"<([^<>]*)>")
# Exports before 2019 wrote uploads as a `file_share` message with generated text; only a comment is words.
_OLD_UPLOAD = re.compile(r"^<@[A-Z0-9]+(?:\|[^>]*)?> uploaded a file: <[^>]*>(?: and commented: (?P<comment>.*))?$",
                         re.DOTALL)
_ESCAPE = re.compile(r"&(amp|lt|gt);")
_UNESCAPED = {"amp": "&", "lt": "<", "gt": ">"}
_HINT = "this does not look like an untouched Slack export; export the workspace again"


@dataclass(frozen=True, slots=True)
class _Person:
    speaker: str
    aliases: tuple[str, ...] = ()
    is_bot: bool = False


@dataclass(slots=True)
class _Channel:
    id: str
    title: str


@dataclass(slots=True)
class _Raw:
    """One message record and where it came from."""

    data: dict[str, Any]
    label: str
    where: str
    ts: str
    order: Decimal


@dataclass(slots=True)
class _Layout:
    root: str                                    # "" or "top-folder/"
    meta: set[str]                               # metadata files present, relative to root
    day_files: dict[str, list[str]] = field(default_factory=dict)  # folder -> member names, by date


@register
class SlackImporter(Importer):
    name = "slack"
    description = "Slack workspace export: the export folder or .zip (users.json, channels.json, day files)"
    reads_archives = True

    def sniff(self, source: Source) -> float:
        if not (source.is_dir or source.is_zip):
            return 0.0
        layout = _find_layout(source.member_names())
        if layout is None:
            return 0.0
        if layout.day_files:
            return 0.9
        # An export of a quiet period has no day files at all; the metadata pair alone is still Slack's.
        return 0.7 if "channels.json" in layout.meta and layout.meta & set(_USER_FILES) else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        with source:  # a zip stays open for all its member reads, and is closed when they are done
            return self._parse(source, options)

    def _parse(self, source: Source, options: ImportOptions) -> ParseResult:
        layout = _find_layout(source.member_names())
        if layout is None:
            raise DataError(source.path, "not a Slack export (no users.json or channels.json next to channel "
                            "folders of YYYY-MM-DD.json day files)",
                            hint="name the export .zip as downloaded from Slack, or the folder it unzips to")
        people = _read_users(source, layout)
        channels = _read_channels(source, layout, people)
        raws = {folder: _read_day_files(source, names) for folder, names in sorted(layout.day_files.items())}
        # Fill in people users.json lacks (or all of them, without users.json) from the messages' own profiles.
        for records in raws.values():
            for raw in records:
                user, profile = raw.data.get("user"), raw.data.get("user_profile")
                if isinstance(user, str) and user not in people and isinstance(profile, dict):
                    person = _person(profile.get("display_name"), profile.get("real_name"), profile.get("name"))
                    if person is not None:
                        people[user] = person
        channel_names = {c.id: c.title.removeprefix("#") for c in channels.values()}
        result = ParseResult()
        for folder, records in raws.items():
            channel = channels.get(folder) or _Channel(folder, f"#{folder}")
            _convert_channel(channel, records, people, channel_names, options, result)
        return result


# --- layout and metadata ------------------------------------------------------------------------------------
def _find_layout(names: list[str]) -> _Layout | None:
    """Where the export sits among `names` (root or one top folder), or None when it is not a Slack export."""
    names = [n for n in names if not n.startswith("__MACOSX/")
             and not any(part.startswith(".") for part in PurePosixPath(n).parts)]
    root = ""
    if not any(n in _META_FILES for n in names):
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        if len(tops) != 1 or any("/" not in n for n in names):
            return None
        root = tops.pop() + "/"
    meta = {n[len(root):] for n in names if n[len(root):] in _META_FILES and n.startswith(root)}
    if not meta:
        return None
    layout = _Layout(root, meta)
    for name in names:
        match = _DAY_FILE.match(name[len(root):]) if name.startswith(root) else None
        if match:
            layout.day_files.setdefault(match.group("folder"), []).append(name)
    for files in layout.day_files.values():
        files.sort()
    return layout


def _read_array(source: Source, name: str) -> tuple[str, list[Any]]:
    label = source.member_label(name)
    return label, json_at(source.read_member_json(name), list, label, "$")


def _person(display: Any, real: Any, handle: Any, is_bot: bool = False) -> _Person | None:
    """Display name first, then real name, then the handle; None when Slack gave no name at all."""
    names = [n.strip() for n in (display, real, handle) if isinstance(n, str) and n.strip()]
    if not names:
        return None
    return _Person(names[0], tuple(dict.fromkeys(n for n in names[1:] if n != names[0])), is_bot)


def _objects(source: Source, layout: _Layout, file: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(label, place, object) of each entry of a metadata file's array; nothing when the export lacks it."""
    if file not in layout.meta:
        return
    label, entries = _read_array(source, layout.root + file)
    for i, entry in enumerate(entries):
        where = f"$[{i}]"
        yield label, where, json_at(entry, dict, label, where)


def _read_users(source: Source, layout: _Layout) -> dict[str, _Person]:
    people: dict[str, _Person] = {}
    for file in _USER_FILES:
        for label, where, user in _objects(source, layout, file):
            user_id = json_field(user, "id", str, label, where)
            profile = json_field(user, "profile", dict, label, where, required=False) or {}
            real = profile.get("real_name") or user.get("real_name")
            is_bot = user.get("is_bot") is True or user.get("is_app_user") is True
            people[user_id] = (_person(profile.get("display_name"), real, user.get("name"), is_bot)
                               or _Person(user_id, (), is_bot))
    return people


def _read_channels(source: Source, layout: _Layout, people: dict[str, _Person]) -> dict[str, _Channel]:
    """Conversations by the folder their day files are in."""
    channels: dict[str, _Channel] = {}
    for file, folder_key in _CHANNEL_FILES:
        for label, where, entry in _objects(source, layout, file):
            channel_id = json_field(entry, "id", str, label, where)
            folder = json_field(entry, folder_key, str, label, where)
            if file == "dms.json":
                members = json_field(entry, "members", list, label, where, required=False) or []
                names = [people[m].speaker if m in people else str(m) for m in members]
                title = "DM: " + ", ".join(names) if names else f"DM {channel_id}"
            else:
                title = f"#{folder}" if file != "mpims.json" else folder
            channels[folder] = _Channel(channel_id, title)
    return channels


def _read_day_files(source: Source, names: list[str]) -> list[_Raw]:
    records: list[_Raw] = []
    for name in names:
        label, messages = _read_array(source, name)
        for i, message in enumerate(messages):
            where = f"$[{i}]"
            message = json_at(message, dict, label, where)
            ts = json_field(message, "ts", str, label, where)
            records.append(_Raw(message, label, where, ts, _ts_order(ts, label, f"{where}.ts")))
    # Day files are in date order and messages in time order, but sort anyway: replies land in the day
    # file of their own ts, and a stable sort keeps the export's order for equal stamps.
    records.sort(key=lambda r: r.order)
    return records


# --- messages -----------------------------------------------------------------------------------------------
def _convert_channel(channel: _Channel, records: list[_Raw], people: dict[str, _Person],
                     channel_names: dict[str, str], options: ImportOptions, result: ParseResult) -> None:
    base = f"slack:{channel.id}"
    # Thread parents: messages with replies in this export or a reply_count saying they have some.
    parents: set[str] = set()
    for raw in records:
        thread_ts = _thread_ts(raw)
        if thread_ts is not None and thread_ts != raw.ts:
            parents.add(thread_ts)
        elif isinstance(raw.data.get("reply_count"), int) and raw.data["reply_count"] > 0:
            parents.add(raw.ts)
    main = Thread(base, channel.title)
    threads: dict[str, Thread] = {}
    for raw in records:
        thread_ts = _thread_ts(raw)
        is_reply = thread_ts is not None and thread_ts != raw.ts
        root = thread_ts if is_reply else raw.ts if raw.ts in parents else None
        message = _message(raw, channel, people, channel_names, options, result,
                           reply_to=f"{channel.id}:{thread_ts}" if is_reply else None)
        if message is None:
            continue
        if root is None:
            main.items.append(message)
        else:
            thread = threads.setdefault(root, Thread(f"{base}:{root}", f"{channel.title} thread"))
            thread.items.append(message)
    for thread in (main, *threads.values()):
        if thread.items:
            result.threads.append(thread)


def _thread_ts(raw: _Raw) -> str | None:
    return json_field(raw.data, "thread_ts", str, raw.label, raw.where, required=False)


def _message(raw: _Raw, channel: _Channel, people: dict[str, _Person], channel_names: dict[str, str],
             options: ImportOptions, result: ParseResult, reply_to: str | None) -> Message | None:
    data, label, where = raw.data, raw.label, raw.where
    kind = json_field(data, "type", str, label, where, required=False)
    subtype = json_field(data, "subtype", str, label, where, required=False)
    if kind not in (None, "message"):
        result.skip(Skip.UNSUPPORTED)
        return None
    if subtype in _SYSTEM_SUBTYPES or (subtype or "").startswith(("channel_", "group_")):
        result.skip(Skip.SYSTEM)
        return None
    if subtype == "tombstone":
        result.skip(Skip.DELETED)
        return None
    user = json_field(data, "user", str, label, where, required=False)
    person = people.get(user) if user else None
    names = (person.speaker, *person.aliases) if person else ()
    if (subtype in _BOT_SUBTYPES or data.get("bot_id") or user == _SLACKBOT or (person and person.is_bot)
            or options.is_bot_name(user, data.get("username"), *names)):
        result.skip(Skip.BOT)
        return None
    if user is None or (subtype is not None and subtype not in _KEPT_SUBTYPES):
        result.skip(Skip.UNSUPPORTED)
        return None
    raw_text = json_field(data, "text", str, label, where, required=False) or ""
    if subtype == "file_share" and (upload := _OLD_UPLOAD.match(raw_text)):
        raw_text = upload.group("comment") or ""
    text = _readable(raw_text, people, channel_names)
    if not text:
        has_files = bool(data.get("files")) or bool(data.get("attachments")) or bool(data.get("file"))
        result.skip(Skip.ATTACHMENT_ONLY if has_files else Skip.EMPTY)
        return None
    person = person or _Person(user)
    return Message(person.speaker, text, _timestamp(raw), reply_to=reply_to, id=f"{channel.id}:{raw.ts}",
                   speaker_id=user, speaker_aliases=person.aliases)


def _readable(text: str, people: dict[str, _Person], channel_names: dict[str, str]) -> str:
    """Slack mrkdwn as a reader sees it: control sequences resolved, HTML escapes undone, lines kept."""
    out: list[str] = []
    position = 0
    for match in _CONTROL.finditer(text):
        out.append(_unescape(text[position:match.start()]))
        out.append(_control(match.group(1), people, channel_names))
        position = match.end()
    out.append(_unescape(text[position:]))
    return squash("".join(out).split("\n"))


def _control(inner: str, people: dict[str, _Person], channel_names: dict[str, str]) -> str:
    target, _, label = inner.partition("|")
    label = _unescape(label)
    if target.startswith("@"):
        user_id = target[1:]
        # Names from users.json are raw text, not escaped; a label is the old `<@U123|name>` form.
        name = people[user_id].speaker if user_id in people else label or user_id
        return "@" + name.removeprefix("@")
    if target.startswith("#"):
        return "#" + (label or channel_names.get(target[1:]) or target[1:])
    if target.startswith("!"):
        command = target[1:]
        if command in ("here", "channel", "everyone"):
            return "@" + command
        if label:  # <!subteam^S123|@design>, <!date^1392734382^{date}|Feb 18th>
            return label
        return "@" + command.split("^")[-1] if command.startswith("subteam^") else "@" + command.split("^")[0]
    return label or _unescape(target)


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], text)


def _ts_order(ts: str, label: str, where: str) -> Decimal:
    """The sort key of a `ts`, after checking that it is a time (so `_timestamp` cannot fail later)."""
    match = _TS.match(ts)
    if not match:
        raise DataError(label, f"unreadable timestamp {ts!r} (expected like \"1710147300.000400\")",
                        where=where, hint=_HINT)
    try:
        _instant(match)
    except (OverflowError, ValueError):
        shown = ts if len(ts) <= 40 else ts[:37] + "..."
        raise DataError(label, f"timestamp {shown!r} is not a time Python can represent (years 1 to 9999)",
                        where=where, hint=_HINT) from None
    return Decimal(ts)


def _timestamp(raw: _Raw) -> datetime:
    """`ts` is seconds since the epoch in UTC; parsed exactly (a float would round the microseconds)."""
    match = _TS.match(raw.ts)
    assert match is not None  # checked when the record was read
    return _instant(match)


def _instant(ts: re.Match[str]) -> datetime:
    micro = int((ts.group("frac") or "0").ljust(6, "0"))
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=int(ts.group("sec")), microseconds=micro)
