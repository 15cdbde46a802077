"""Facebook Messenger "Download your information" JSON: `messages/inbox/<title>_<id>/message_N.json`.

Each file is one part of one thread (long threads are split into message_1.json, message_2.json, ...);
every part carries the same `thread_path`, which becomes the thread key `messenger:<thread_path>`, so the
loader merges the parts. Instagram's DM export uses the same layout (as third-party parsers read it) and
is read the same way.

Choices made here:
- Mojibake: Facebook writes every string's UTF-8 bytes as if they were Latin-1 characters, `\\u00XX`-escaped
  (the file is pure ASCII). `fix_mojibake` undoes that per string and keeps a string unchanged when it
  cannot be undone (a real `\\u201c` in it, or bytes that are not UTF-8).
- Order: files list messages newest first; threads come out sorted by `timestamp_ms`.
- Timestamps: `timestamp_ms` is an exact instant with no zone of its own, so it becomes an aware UTC
  datetime (exact, and consistent with every other file of the thread whatever machine reads it).
- Ids: the export has no message ids; each message gets `<timestamp_ms>:<sender>:<content digest>` so that
  overlapping downloads of the same thread de-duplicate in the loader.
- Auto texts Messenger/Instagram put in `content` for attachments ("Olu sent an attachment.", "You sent a
  photo.") count as attachment-only when the name is the sender's (full or first name) or "You".
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from training.conversation import Message
from training.errors import DataError
from training.formats import register
from training.formats.base import (Importer, ImportOptions, ParseResult, Skip, Source, Thread, json_at,
                                   json_field)

# Facebook's own name for an account that no longer exists (its name is exported empty).
UNKNOWN_SENDER = "Facebook User"

_SYSTEM_TYPES = {"Call", "Subscribe", "Unsubscribe"}
_TEXT_TYPES = {"Generic", "Share"}
# Fields that carry something other than words: with no `content`, the message is an attachment.
_MEDIA_FIELDS = ("photos", "videos", "audio_files", "files", "gifs", "sticker", "share")
# Folders a thread folder sits in inside `messages/`; used for the key when `thread_path` is missing.
_THREAD_SECTIONS = {"inbox", "archived_threads", "filtered_threads", "message_requests", "e2ee_cutover"}

_AUTO_ATTACHMENT_TEXT = re.compile(
    r"(?P<who>.+?) sent (?:an attachment|a photo|a video|a GIF|a sticker|a voice message|an audio clip"
    r"|a file|a link)\.")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_SENDER = re.compile(r'"sender_name":\s*"')
_TIMESTAMP_MS = re.compile(r'"timestamp_ms":\s*\d{10,}')
_THREAD_START = re.compile(r'^\s*\{\s*"participants":\s*\[')


def fix_mojibake(text: str) -> str:
    """Undo Facebook's double encoding of one string (`"Jos\\u00c3\\u00a9"` -> "José").

    Strings that were not double-encoded stay as they are: one holding a character above U+00FF (a real
    `\\u201c` quote, as some exports contain) cannot be Latin-1-encoded, and Latin-1 text that is not UTF-8
    once re-read (a plain "café") cannot be decoded.
    """
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


@register
class MessengerImporter(Importer):
    name = "messenger"
    description = "Facebook Messenger / Instagram 'Download your information' JSON (message_N.json)"

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if not head.lstrip().startswith("{") or not _SENDER.search(head) or not _TIMESTAMP_MS.search(head):
            return 0.0
        return 0.9 if _THREAD_START.search(head) else 0.7

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        label = source.path
        data = json_at(source.read_json(), dict, label, "$")
        messages = json_field(data, "messages", list, label, "$")
        participants = json_field(data, "participants", list, label, "$", required=False, default=[])
        names = []
        for i, person in enumerate(participants):
            person = json_at(person, dict, label, f"$.participants[{i}]")
            names.append(fix_mojibake(json_field(person, "name", str, label, f"$.participants[{i}]")))
        title = fix_mojibake(json_field(data, "title", str, label, "$", required=False, default="")).strip()
        thread_path = json_field(data, "thread_path", str, label, "$", required=False)

        result = ParseResult()
        dated: list[tuple[int, int, Message]] = []
        for i, raw in enumerate(messages):
            where = f"$.messages[{i}]"
            entry = _read_message(json_at(raw, dict, label, where), label, where, options, result)
            if entry is not None:
                # Newest first in the file: for equal times, a later position means said earlier.
                dated.append((entry[0], -i, entry[1]))
        dated.sort(key=lambda d: (d[0], d[1]))
        key = "messenger:" + (thread_path or _folder_key(source.path))
        thread = Thread(key, title or ", ".join(n for n in names if n), [m for _, _, m in dated])
        result.threads.append(thread)
        return result


def _read_message(msg: dict[str, Any], label: Path, where: str, options: ImportOptions,
                  result: ParseResult) -> tuple[int, Message] | None:
    """(timestamp_ms, message), or None after counting why it is not training text."""
    raw_sender = json_field(msg, "sender_name", str, label, where)
    # People who left the thread are missing from `participants` but keep their name here.
    sender = fix_mojibake(raw_sender).strip() or UNKNOWN_SENDER
    stamp = json_field(msg, "timestamp_ms", int, label, where)
    kind = json_field(msg, "type", str, label, where, required=False, default="Generic")
    content = json_field(msg, "content", str, label, where, required=False, default="")
    text = fix_mojibake(content).strip()

    if kind in _SYSTEM_TYPES:
        result.skip(Skip.SYSTEM)
        return None
    if kind not in _TEXT_TYPES:
        result.skip(Skip.UNKNOWN_TYPE)
        return None
    if msg.get("is_unsent") is True:
        result.skip(Skip.DELETED)
        return None
    if options.is_bot_name(sender):
        result.skip(Skip.BOT)
        return None
    if not text or _is_auto_attachment_text(text, sender):
        result.skip(Skip.ATTACHMENT_ONLY if text or any(f in msg for f in _MEDIA_FIELDS) else Skip.EMPTY)
        return None
    try:
        timestamp = _EPOCH + timedelta(milliseconds=stamp)
    except OverflowError:
        raise DataError(label, f"timestamp_ms {stamp} is not a time Python can represent (years 1 to 9999)",
                        where=f"{where}.timestamp_ms",
                        hint="the file was changed or damaged; download your information again") from None
    digest = hashlib.sha1(content.encode("utf-8")).hexdigest()[:10]
    return stamp, Message(sender, text, timestamp, id=f"{stamp}:{sender}:{digest}")


def _is_auto_attachment_text(text: str, sender: str) -> bool:
    """True for the placeholder Messenger writes instead of an attachment ("Olu sent an attachment.")."""
    match = _AUTO_ATTACHMENT_TEXT.fullmatch(text)
    if match is None:
        return False
    who = match.group("who")
    return who == "You" or who == sender or who == sender.split()[0]


def _folder_key(path: Path) -> str:
    """`inbox/<title>_<id>` from where the file lies, for files without `thread_path`."""
    folder = path.resolve().parent
    if folder.parent.name in _THREAD_SECTIONS:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name
