"""Twitter / X archive: the owner's tweets from `data/tweets.js` (and older `tweet.js`, `tweets-partN.js`).

The archive files are JavaScript, `window.YTD.tweets.part0 = [ … ]`: everything up to the first `[` is
dropped and the rest read as JSON. Entries are `{"tweet": {...}}` in current archives and bare objects in
older ones; every number is a string. Only the owner's tweets are in the file (the other side of a reply is
just an id), so this is single-speaker data.

Reads one tweets file (the loader walks an unzipped archive's `data/` folder file by file) or a whole archive
folder / zip that has `data/tweets.js` next to `data/account.js` or `data/manifest.js`.

- Speaker: `account.js` from the same folder gives `accountDisplayName` (speaker), `username` and `@username`
  (aliases) and `accountId` (speaker id). Without an `account.js` beside the tweets the speaker is "me".
- Each tweet is its own thread `twitter:<id>`, except self-threads: a reply to another of the owner's tweets
  (in this file or another tweets part of the same folder) joins the thread of the tweet it answers.
- Text: HTML entities (`&amp; &lt; &gt;`) unescaped; t.co links removed, or replaced by their real address
  when `options.twitter_links == "expand"`; media t.co links always removed; a reply's leading @mentions
  removed (via `display_text_range`, or for tweets without a range, by pattern).
- Skipped: retweets (`RT @user: ` prefix; the archive does not flag them), tweets left empty once links and
  mentions are gone (attachment-only when they carried media), and versions of an edited tweet that a later
  version in the archive supersedes (`superseded-edit`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from training.conversation import Message
from training.errors import DataError
from training.formats import register
from training.formats.base import (Importer, ImportOptions, ParseResult, Skip, Source, Thread, decode_utf8,
                                   json_at, json_field, parse_json, squash)

# `window.YTD.<kind>.part<N> = [`: the assignment Twitter puts in front of every archive data file.
_YTD_PREFIX = re.compile(r"\A\s*window\.YTD\.(?P<kind>\w+)\.part(?P<part>\d+)\s*=\s*")
_TWEET_KINDS = frozenset({"tweets", "tweet"})
# File names of tweet parts: tweets.js, tweets-part1.js, and the older tweet.js (tweet-part1.js).
_TWEETS_FILE = re.compile(r"^tweets?(?:-part\d+)?\.js$", re.IGNORECASE)
# Member names that make a folder or zip a Twitter archive as a whole.
_ARCHIVE_TWEETS = re.compile(r"^data/tweets?(?:-part\d+)?\.js$", re.IGNORECASE)
_ARCHIVE_MARKERS = ("data/account.js", "data/manifest.js")

_RETWEET = re.compile(r"^RT @\w+:")
# Leading reply mentions: screen names are ASCII letters, digits and underscores.
_MENTION_PREFIX = re.compile(r"(?:@[A-Za-z0-9_]+\s*)*")
_LEADING_MENTIONS = re.compile(r"^(?:@[A-Za-z0-9_]+(?:\s+|$))+")
# Links and the spaces before them. The lookbehind starts a match only where a run of spaces starts: tried
# from inside a long run, the pattern would rescan the rest of the run at every position (quadratic time).
_SPACES_BEFORE = r"(?<![ \t])[ \t]*"
_TCO_LINK = re.compile(_SPACES_BEFORE + r"https?://t\.co/[A-Za-z0-9]+")
_HTML_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITY_CHARS = {"amp": "&", "lt": "<", "gt": ">"}

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
# `Sat Dec 06 18:20:30 +0000 2025`, parsed by hand: strptime's %a/%b follow the process locale.
_CREATED_AT = re.compile(r"^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?P<mon>[A-Z][a-z]{2}) (?P<day>\d{2}) "
                         r"(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2}) (?P<off>[+-]\d{4}) (?P<year>\d{4})$")

_ARCHIVE_HINT = "name data/tweets.js (and any tweets-partN.js), or the whole archive folder or zip"


@dataclass(slots=True)
class _Account:
    speaker: str
    aliases: tuple[str, ...] = ()
    speaker_id: str | None = None


_NO_ACCOUNT = _Account("me")


@dataclass(slots=True)
class _Tweet:
    data: dict[str, Any]
    where: str        # JSON path of the tweet object, for errors
    label: str        # the file it came from, for errors
    id: str
    reply_to: str | None
    edit_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class _Part:
    """One tweets file: its label and the tweets in it."""

    label: str
    tweets: list[_Tweet] = field(default_factory=list)


@register
class TwitterImporter(Importer):
    name = "twitter"
    description = "Twitter/X archive: data/tweets.js (or tweet.js, tweets-partN.js), or the archive folder/zip"
    reads_archives = True

    def sniff(self, source: Source) -> float:
        if source.is_dir or source.is_zip:
            names = {n.lower() for n in source.member_names()}
            if any(_ARCHIVE_TWEETS.match(n) for n in names) and any(m in names for m in _ARCHIVE_MARKERS):
                return 0.9
            return 0.0
        match = _YTD_PREFIX.match(source.head_text())
        return 0.95 if match and match.group("kind") in _TWEET_KINDS else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        if source.is_dir or source.is_zip:
            with source:  # a zip stays open for all its member reads, and is closed when they are done
                groups = _archive_groups(source)
            for parts, account in groups:
                _emit(parts, parts, account, options, result)
            return result
        part = _read_part(source.read_text(), str(source.path))
        account = _file_account(source.path.parent / "account.js")
        # Other tweet parts of the same archive folder are read only to link self-threads across parts.
        _emit([part], [part, *_sibling_parts(source.path)], account, options, result)
        return result


# --- reading files ------------------------------------------------------------------------------------------
def _ytd_json(text: str, label: str) -> tuple[str | None, list[Any]]:
    """The array of a `window.YTD.<kind>.partN = [...]` file, and its kind (None for a bare JSON array)."""
    match = _YTD_PREFIX.match(text)
    if match:
        # Blank the prefix out instead of cutting it so JSON errors keep the file's line and column.
        body = re.sub(r"[^\n]", " ", text[:match.end()]) + text[match.end():]
        kind: str | None = match.group("kind")
    elif text.lstrip().startswith("["):
        body, kind = text, None
    else:
        raise DataError(label, "is not a Twitter archive file (it should start with "
                        "`window.YTD.tweets.part0 = [`)", where="line 1", hint=_ARCHIVE_HINT)
    stripped = body.rstrip()
    if stripped.endswith(";"):
        body = stripped[:-1]
    return kind, json_at(parse_json(body, label), list, label, "$")


def _read_part(text: str, label: str) -> _Part:
    kind, entries = _ytd_json(text, label)
    if kind is not None and kind not in _TWEET_KINDS:
        raise DataError(label, f"this is the archive's `{kind}` file, not the tweets",
                        hint=_ARCHIVE_HINT)
    part = _Part(label)
    for i, entry in enumerate(entries):
        where = f"$[{i}]"
        entry = json_at(entry, dict, label, where)
        if isinstance(entry.get("tweet"), dict) and "full_text" not in entry:
            entry, where = entry["tweet"], where + ".tweet"
        tweet_id = _id_field(entry, ("id_str", "id"), label, where, required=True)
        reply_to = _id_field(entry, ("in_reply_to_status_id_str", "in_reply_to_status_id"), label, where)
        part.tweets.append(_Tweet(entry, where, label, tweet_id, reply_to, _edit_ids(entry, label, where)))
    return part


def _id_field(obj: dict[str, Any], keys: tuple[str, ...], label: str, where: str,
              required: bool = False) -> str | None:
    """The first of `keys` present, as a string (archives write ids as strings; accept numbers too)."""
    for key in keys:
        value = json_field(obj, key, (str, int), label, where, required=False)
        if value is not None and str(value):
            return str(value)
    if required:
        raise DataError(label, f'missing field "{keys[0]}"', where=where,
                        hint="this does not look like an untouched export; export the archive again")
    return None


def _edit_ids(tweet: dict[str, Any], label: str, where: str) -> tuple[str, ...]:
    """Ids of every version of an edited tweet, oldest first (`edit_info.initial/edit…editTweetIds`)."""
    info = json_field(tweet, "edit_info", dict, label, where, required=False)
    if not info:
        return ()
    # The first version has `initial`; each later one has `edit.editControlInitial` with the same list.
    control, path = info.get("initial"), f"{where}.edit_info.initial"
    if control is None and isinstance(info.get("edit"), dict):
        control, path = info["edit"].get("editControlInitial"), f"{where}.edit_info.edit.editControlInitial"
    if not isinstance(control, dict):
        return ()
    ids = json_field(control, "editTweetIds", list, label, path, required=False) or []
    return tuple(str(i) for i in ids if isinstance(i, (str, int)))


def _read_account(text: str, label: str) -> _Account:
    _, entries = _ytd_json(text, label)
    if not entries:
        return _NO_ACCOUNT
    first = json_at(entries[0], dict, label, "$[0]")
    account = json_field(first, "account", dict, label, "$[0]")
    where = "$[0].account"
    username = json_field(account, "username", str, label, where, required=False) or ""
    display = json_field(account, "accountDisplayName", str, label, where, required=False) or ""
    account_id = json_field(account, "accountId", (str, int), label, where, required=False)
    if not username and not display:
        raise DataError(label, 'missing field "username"', where=where,
                        hint="this does not look like an untouched export; export the archive again")
    speaker = display.strip() or username
    aliases = tuple(dict.fromkeys(a for a in (username, f"@{username}" if username else "") if a and a != speaker))
    return _Account(speaker, aliases, str(account_id) if account_id is not None else None)


def _file_account(path: Path) -> _Account:
    if not path.is_file():
        return _NO_ACCOUNT
    return _read_account(Source(path).read_text(), str(path))


def _sibling_parts(path: Path) -> list[_Part]:
    """Readable tweet parts next to `path` (other than itself); damaged ones are left to their own parse."""
    parts = []
    for sibling in sorted(path.parent.iterdir()):
        if sibling == path or not sibling.is_file() or not _TWEETS_FILE.match(sibling.name):
            continue
        try:
            parts.append(_read_part(Source(sibling).read_text(), str(sibling)))
        except DataError:
            continue
    return parts


def _archive_groups(source: Source) -> list[tuple[list[_Part], _Account]]:
    """The tweet parts of a folder or zip, grouped by the folder they sit in, each with its account."""
    by_folder: dict[PurePosixPath, list[str]] = {}
    names = source.member_names()
    for name in names:
        posix = PurePosixPath(name)
        if _TWEETS_FILE.match(posix.name) and not any(p.startswith((".", "__MACOSX")) for p in posix.parts):
            by_folder.setdefault(posix.parent, []).append(name)
    if not by_folder:
        raise DataError(source.path, "no tweets.js found in this Twitter archive", hint=_ARCHIVE_HINT)
    groups = []
    lower = {n.lower(): n for n in names}
    for folder, members in sorted(by_folder.items()):
        parts = [_read_part(_member_text(source, m), source.member_label(m)) for m in members]
        account_name = lower.get(str(folder / "account.js").lower().removeprefix("./"))
        account = (_read_account(_member_text(source, account_name), source.member_label(account_name))
                   if account_name else _NO_ACCOUNT)
        groups.append((parts, account))
    return groups


def _member_text(source: Source, name: str) -> str:
    return decode_utf8(source.read_member_bytes(name), source.member_label(name))


# --- turning tweets into messages ---------------------------------------------------------------------------
def _emit(parts: list[_Part], known: list[_Part], account: _Account, options: ImportOptions,
          result: ParseResult) -> None:
    """Add the tweets of `parts` to `result`; `known` (a superset) is every tweet used to link self-threads."""
    all_tweets = [t for p in known for t in p.tweets]
    present = {t.id for t in all_tweets}
    # The newest version of an edited tweet that this archive holds, for every version's id.
    latest: dict[str, str] = {}
    for t in all_tweets:
        versions = [i for i in t.edit_ids if i in present]
        for version in versions:
            latest[version] = versions[-1]
    parent = {latest.get(t.id, t.id): latest.get(t.reply_to, t.reply_to)
              for t in all_tweets if t.reply_to is not None}

    def root(tweet_id: str) -> str:
        seen = {tweet_id}
        while (up := parent.get(tweet_id)) is not None and up in present and up not in seen:
            seen.add(up)
            tweet_id = up
        return tweet_id

    threads: dict[str, Thread] = {}
    for tweet in (t for p in parts for t in p.tweets):
        if latest.get(tweet.id, tweet.id) != tweet.id:
            result.skip(Skip.SUPERSEDED_EDIT)
            continue
        message = _message(tweet, account, options, result)
        if message is None:
            continue
        key_id = root(tweet.id)
        thread = threads.setdefault(key_id, Thread(f"twitter:{key_id}", f"tweet {key_id}"))
        thread.items.append(message)
    for thread in threads.values():
        thread.items.sort(key=lambda m: m.timestamp)  # archives list tweets newest first
    result.threads.extend(sorted(threads.values(), key=lambda t: t.items[0].timestamp))


def _message(tweet: _Tweet, account: _Account, options: ImportOptions, result: ParseResult) -> Message | None:
    data, label, where = tweet.data, tweet.label, tweet.where
    raw = json_field(data, "full_text", str, label, where, required="text" not in data)
    if raw is None:
        raw = json_field(data, "text", str, label, where)
    timestamp = _created_at(json_field(data, "created_at", str, label, where), label, f"{where}.created_at")
    if _RETWEET.match(raw):
        result.skip(Skip.RETWEET)
        return None
    if options.is_bot_name(account.speaker, account.speaker_id, *account.aliases):
        result.skip(Skip.BOT)
        return None
    # Very old @replies name the user without a status id.
    is_reply = tweet.reply_to is not None or bool(data.get("in_reply_to_user_id_str")
                                                  or data.get("in_reply_to_user_id"))
    text, had_media = _clean_text(data, raw, is_reply, options, label, where)
    if not text:
        result.skip(Skip.ATTACHMENT_ONLY if had_media else Skip.EMPTY)
        return None
    return Message(account.speaker, text, timestamp, reply_to=tweet.reply_to, id=tweet.id,
                   speaker_id=account.speaker_id, speaker_aliases=account.aliases)


def _clean_text(data: dict[str, Any], raw: str, is_reply: bool, options: ImportOptions, label: str,
                where: str) -> tuple[str, bool]:
    """The tweet as a reader sees it, and whether it carried media."""
    text = raw
    start = _display_start(data, label, where)
    # display_text_range starts after the reply's leading @mentions (indices count code points, which is
    # how Python indexes str). Only its start is used: the end may or may not exclude a trailing media link,
    # and links are removed by their text below.
    if start and start <= len(text) and _MENTION_PREFIX.fullmatch(text[:start]):
        text = text[start:]
    elif is_reply:
        # Tweets from before hidden reply prefixes (2017) have a range starting at 0; strip by pattern.
        text = _LEADING_MENTIONS.sub("", text, count=1)
    text = _HTML_ENTITY.sub(lambda m: _ENTITY_CHARS[m.group(1)], text)

    entities = json_field(data, "entities", dict, label, where, required=False) or {}
    extended = json_field(data, "extended_entities", dict, label, where, required=False) or {}
    media = [*_entity_list(entities, "media", label, f"{where}.entities"),
             *_entity_list(extended, "media", label, f"{where}.extended_entities")]
    for item in media:
        if isinstance(item.get("url"), str):
            text = _remove_link(text, item["url"])
    for item in _entity_list(entities, "urls", label, f"{where}.entities"):
        url = item.get("url")
        if not isinstance(url, str) or not url:
            continue
        expanded = item.get("expanded_url")
        if options.twitter_links == "expand" and isinstance(expanded, str) and expanded:
            text = text.replace(url, expanded)
        else:
            text = _remove_link(text, url)
    if options.twitter_links != "expand":
        text = _TCO_LINK.sub("", text)  # links whose entity was lost (140-character cut-offs)
    return squash(text.split("\n")), bool(media)


def _remove_link(text: str, url: str) -> str:
    """Drop a link with the spaces before it, so `see <link> now` reads `see now`."""
    return re.sub(_SPACES_BEFORE + re.escape(url), "", text)


def _entity_list(entities: dict[str, Any], key: str, label: str, where: str) -> list[dict[str, Any]]:
    items = json_field(entities, key, list, label, where, required=False) or []
    return [json_at(item, dict, label, f"{where}.{key}[{i}]") for i, item in enumerate(items)]


def _display_start(data: dict[str, Any], label: str, where: str) -> int | None:
    span = json_field(data, "display_text_range", list, label, where, required=False)
    if not span:
        return None
    first = json_at(span[0], (str, int), label, f"{where}.display_text_range[0]")
    try:
        return int(first)
    except ValueError:
        raise DataError(label, f"expected a number, found {first!r}", where=f"{where}.display_text_range[0]",
                        hint="this does not look like an untouched export; export the archive again") from None


def _created_at(value: str, label: str, where: str) -> datetime:
    match = _CREATED_AT.match(value.strip())
    month = _MONTHS.get(match.group("mon")) if match else None
    if match is None or month is None:
        raise DataError(label, f"unreadable date {value!r} (expected like 'Sat Dec 06 18:20:30 +0000 2025')",
                        where=where, hint="this does not look like an untouched export; export the archive again")
    offset = match.group("off")
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:  # UTC+14 (Kiribati) is the widest offset in use
        raise DataError(label, f"unreadable date {value!r} (the UTC offset {offset} is not a real one)",
                        where=where, hint="this does not look like an untouched export; export the archive again")
    minutes += hours * 60
    tz = timezone.utc if minutes == 0 else timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    try:
        return datetime(int(match.group("year")), month, int(match.group("day")), int(match.group("h")),
                        int(match.group("m")), int(match.group("s")), tzinfo=tz)
    except ValueError as e:
        raise DataError(label, f"unreadable date {value!r} ({e})", where=where,
                        hint="this does not look like an untouched export; export the archive again") from None
