"""Telegram Desktop JSON export (`result.json`): a single chat, or a whole account with many chats.

Shapes (tdesktop `export_output_json.cpp`):
- single chat: `{"name", "type", "id", "messages": [...]}` (saved messages and replies have no `name`);
  trimmed exports (other tools' test data, hand-made samples) may also lack the chat's `type` and `id`, and
  the messages' `id` and `date`: such a chat is keyed by the file and its place in it, and a message
  without `id` is never de-duplicated;
- whole account: `{"about", "personal_information", ..., "chats": {"about", "list": [chat...]},
  "left_chats": {"about", "list": [chat...]}}`.
Every chat becomes its own thread keyed `telegram:<chat id>`, so a chat exported alone and the same chat
inside an account export merge (and de-duplicate by message id) in the loader.

Choices made here:
- Timestamps: `date` is the exporter's local wall-clock without an offset and `date_unixtime` (a string)
  is the exact instant. Their difference is the exporter's UTC offset at that moment, so each message gets
  an aware datetime carrying that offset: the wall-clock people saw *and* the true instant, which keeps
  conversation gaps right across DST changes (a naive clock jumps an hour, or runs backwards in autumn).
  Exports without `date_unixtime` (older builds) get the naive `date`; a message with only
  `date_unixtime` gets that instant in UTC (the wall-clock is unknown).
- `text_link` entities keep their visible text only; the href is not appended: the reader saw the words,
  not the address, and URLs are noise for a persona model.
- U+2028/U+2029 (which Telegram escapes specially) become ordinary line breaks.
- A channel post signed by an admin (`author`) is spoken by the signer, without the channel's id.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from training.conversation import Message
from training.errors import DataError
from training.formats import register
from training.formats.base import (Importer, ImportOptions, ParseResult, Skip, Source, Thread, json_at,
                                   json_field)

# `from: null` is how the exporter writes an account that was deleted; Telegram's apps show this name.
DELETED_ACCOUNT = "Deleted Account"
# A record `type` this importer does not know (newer exporters may add some).

CHAT_TYPES = ("personal_chat", "bot_chat", "private_group", "private_supergroup", "public_supergroup",
              "private_channel", "public_channel", "saved_messages", "replies")
_UNNAMED_CHAT_TITLES = {"saved_messages": "Saved Messages", "replies": "Replies"}

# Fields that carry a photo, document, sticker, voice note, poll, contact, place, game or invoice. A message
# with one of these and no text is an attachment, not something a person said in words.
_MEDIA_FIELDS = ("photo", "file", "media_type", "sticker_emoji", "poll", "contact_information",
                 "contact_vcard", "location_information", "place_name", "game_title", "invoice_information")

_HINT_REEXPORT = "export the chat again from Telegram Desktop (Settings > Advanced > Export Telegram data, JSON)"

# --- sniffing -----------------------------------------------------------------------------------------------
_CHAT_HEADER = re.compile(r'"type":\s*"(?:' + "|".join(CHAT_TYPES) + r')",\s*"id":\s*-?\d+,\s*"messages":\s*\[')
_UNIXTIME = re.compile(r'"date_unixtime":\s*"\d+"')
_MESSAGE_TYPE = re.compile(r'"type":\s*"(?:message|service)",\s*"date":\s*"\d{4}-\d\d-\d\dT')
# A trimmed export (no `date`, no chat header): the message type followed by Telegram's own unixtime key.
_MESSAGE_TYPE_UNIXTIME = re.compile(r'"type":\s*"(?:message|service)",\s*"date_unixtime":\s*"\d+"')
_ACCOUNT_HEADER = re.compile(r'^\s*\{\s*"about":\s*"(?:[^"\\]|\\.)*",\s*"personal_information":\s*\{'
                             r'\s*"user_id":\s*\d+')


@register
class TelegramImporter(Importer):
    name = "telegram"
    description = "Telegram Desktop export (result.json): one chat or a whole account"

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if not head.lstrip().startswith("{"):
            return 0.0
        if _UNIXTIME.search(head) and (_MESSAGE_TYPE.search(head) or _MESSAGE_TYPE_UNIXTIME.search(head)):
            return 0.95
        if _CHAT_HEADER.search(head):
            return 0.9
        if _ACCOUNT_HEADER.search(head):
            # A whole-account export; its chats may start beyond the first 64 KiB (contacts, sessions...).
            return 0.85
        if _MESSAGE_TYPE.search(head):
            return 0.6
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        label = source.path
        data = json_at(source.read_json(), dict, label, "$")
        result = ParseResult()
        for chat, where in _chats(data, label):
            result.threads.append(_read_chat(chat, label, where, options, result))
        return result


def _chats(data: dict[str, Any], label: Path) -> list[tuple[dict[str, Any], str]]:
    """The chats of a single-chat or whole-account export, each with its JSON path."""
    if "messages" in data:
        return [(data, "$")]
    sections = [s for s in ("chats", "left_chats") if s in data]
    if not sections:
        if "personal_information" in data or "about" in data:
            raise DataError(label, "this account export contains no chats", where="$",
                            hint="export again with the chat types you want ticked under 'Chat export settings'")
        raise DataError(label, 'not a Telegram export: no "messages" and no "chats"', where="$",
                        hint=_HINT_REEXPORT)
    chats = []
    for section in sections:
        block = json_field(data, section, dict, label, "$")
        listing = json_field(block, "list", list, label, f"$.{section}")
        for i, chat in enumerate(listing):
            where = f"$.{section}.list[{i}]"
            chats.append((json_at(chat, dict, label, where), where))
    return chats


def _read_chat(chat: dict[str, Any], label: Path, where: str, options: ImportOptions,
               result: ParseResult) -> Thread:
    chat_id = json_field(chat, "id", int, label, where, required=False)
    chat_type = json_field(chat, "type", (str, type(None)), label, where, required=False)
    name = json_field(chat, "name", (str, type(None)), label, where, required=False)
    if chat_id is not None:
        key, unnamed = f"telegram:{chat_id}", f"Telegram chat {chat_id}"
    else:
        # No id to meet the same chat in another export by: this file and the place in it name the chat.
        key = f"telegram:{label.resolve()}" + ("" if where == "$" else f":{where[2:]}")
        unnamed = f"Telegram chat from {label.name}"
    title = name or _UNNAMED_CHAT_TITLES.get(chat_type or "", unnamed)
    # In a chat with a bot the chat's id is the bot's user id: its messages are the bot's.
    bot_peer = f"user{chat_id}" if chat_type == "bot_chat" and chat_id is not None else None
    messages = json_field(chat, "messages", list, label, where)
    thread = Thread(key, title)
    for i, raw in enumerate(messages):
        item_where = f"{where}.messages[{i}]"
        message = _read_message(json_at(raw, dict, label, item_where), label, item_where, chat_id, title,
                                bot_peer, options, result)
        if message is not None:
            thread.items.append(message)
    return thread


def _read_message(msg: dict[str, Any], label: Path, where: str, chat_id: int | None, chat_title: str,
                  bot_peer: str | None, options: ImportOptions, result: ParseResult) -> Message | None:
    """One message, or None after counting why it is not training text."""
    kind = json_field(msg, "type", str, label, where)
    if kind == "unsupported":  # only {id, type}: the exporter itself could not read it
        result.skip(Skip.UNSUPPORTED)
        return None
    if kind == "service":
        result.skip(Skip.SYSTEM)
        return None
    if kind != "message":
        result.skip(Skip.UNKNOWN_TYPE)
        return None

    msg_id = json_field(msg, "id", int, label, where, required=False)
    timestamp = _timestamp(msg, label, where)
    text = _plain_text(json_field(msg, "text", (str, list), label, where), label, f"{where}.text")
    speaker, speaker_id = _author(msg, label, where, chat_title)
    reply_to = _reply_to(msg, label, where, chat_id)
    via_bot = json_field(msg, "via_bot", str, label, where, required=False)

    if via_bot is not None or (bot_peer is not None and speaker_id == bot_peer) \
            or options.is_bot_name(speaker, speaker_id, via_bot):
        result.skip(Skip.BOT)
        return None
    # `forwarded_from` may be null (a hidden sender); its presence is what marks a forward.
    if "forwarded_from" in msg or "saved_from" in msg:
        result.skip(Skip.FORWARDED)
        return None
    if not text:
        result.skip(Skip.ATTACHMENT_ONLY if any(f in msg for f in _MEDIA_FIELDS) else Skip.EMPTY)
        return None
    return Message(speaker, text, timestamp, reply_to=reply_to, id=None if msg_id is None else str(msg_id),
                   speaker_id=speaker_id)


def _author(msg: dict[str, Any], label: Path, where: str, chat_title: str) -> tuple[str, str | None]:
    """(speaker, speaker_id): the display name people saw and the stable `user123`/`channel123` id."""
    raw_id = json_field(msg, "from_id", (str, int), label, where, required=False)
    # Old exports wrote a bare number for users; current ones write "user123".
    speaker_id = f"user{raw_id}" if isinstance(raw_id, int) else raw_id
    signature = json_field(msg, "author", str, label, where, required=False)
    if signature:
        # A signed channel post: the signer wrote it; the channel's id is not theirs.
        return signature, None
    if "from" not in msg:
        # Unsigned channel posts in some exports carry no sender at all: the channel speaks.
        return chat_title, speaker_id
    name = json_field(msg, "from", (str, type(None)), label, where)
    return (name or DELETED_ACCOUNT), speaker_id


def _reply_to(msg: dict[str, Any], label: Path, where: str, chat_id: int | None) -> str | None:
    reply = json_field(msg, "reply_to_message_id", int, label, where, required=False)
    if reply is None:
        return None
    peer = json_field(msg, "reply_to_peer_id", (str, int), label, where, required=False)
    if peer is not None and _bare_id(peer) != chat_id:
        return None  # a reply to a message in another chat: that id means nothing here
    return str(reply)


# The number at the end of "channel1234" / "user-42". The lookbehind lets a match start only where a run of
# digits starts; tried from every digit of a long run not at the end, `\d+$` takes quadratic time.
_TRAILING_NUMBER = re.compile(r"-?(?<!\d)\d+\Z")


def _bare_id(peer: str | int) -> int | None:
    if isinstance(peer, int):
        return peer
    digits = _TRAILING_NUMBER.search(peer)
    # No chat id has more than 20 digits; a longer number (int() refuses over 4300) is no chat of this file.
    return int(digits.group()) if digits and len(digits.group()) <= 21 else None


def _plain_text(value: str | list[Any], label: Path, where: str) -> str:
    """`text` as a person reads it: plain runs and entity texts concatenated, outer whitespace dropped."""
    if isinstance(value, str):
        parts = [value]
    else:
        parts = []
        for i, part in enumerate(value):
            if isinstance(part, str):
                parts.append(part)
            else:
                entity = json_at(part, dict, label, f"{where}[{i}]", "a string or an entity object")
                # Every entity (bold, link, mention, custom_emoji, spoiler...) shows its `text`;
                # a text_link's href is deliberately left out (see the module docstring).
                parts.append(json_field(entity, "text", str, label, f"{where}[{i}]"))
    text = "".join(parts).replace("\u2028", "\n").replace("\u2029", "\n")
    return text.strip()


_MAX_OFFSET = timedelta(hours=14)  # the widest UTC offset in use (UTC+14, Kiribati)


def _timestamp(msg: dict[str, Any], label: Path, where: str) -> datetime:
    """The message time with the exporter's UTC offset (derived from `date` vs `date_unixtime`); in UTC
    when only `date_unixtime` is given."""
    date_text = json_field(msg, "date", str, label, where, required=False)
    if date_text is None:
        if msg.get("date_unixtime") is None:
            raise DataError(label, 'missing field "date" (and "date_unixtime")', where=where,
                            hint="this does not look like an untouched export; " + _HINT_REEXPORT)
        return _instant(msg, label, where)
    try:
        local = datetime.fromisoformat(date_text)
    except ValueError:
        raise DataError(label, f'unreadable date "{date_text}"', where=f"{where}.date",
                        hint=_HINT_REEXPORT) from None
    unix = json_field(msg, "date_unixtime", (str, int), label, where, required=False)
    if unix is None or local.tzinfo is not None:
        return local
    instant = _instant(msg, label, where)
    offset = local - instant.replace(tzinfo=None)
    if abs(offset) > _MAX_OFFSET or offset % timedelta(minutes=15):
        raise DataError(label, f'date "{date_text}" and date_unixtime "{unix}" disagree by {offset}',
                        where=f"{where}.date_unixtime",
                        hint="the file was edited by hand; " + _HINT_REEXPORT)
    return instant.astimezone(timezone(offset))


def _instant(msg: dict[str, Any], label: Path, where: str) -> datetime:
    """`date_unixtime` (which the caller has seen present) as an aware datetime in UTC."""
    unix = json_field(msg, "date_unixtime", (str, int), label, where)
    if isinstance(unix, str) and not re.fullmatch(r"-?\d+", unix):
        raise DataError(label, f'unreadable date_unixtime "{unix}"', where=f"{where}.date_unixtime",
                        hint=_HINT_REEXPORT)
    try:
        return datetime.fromtimestamp(int(unix), timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise DataError(label, f'date_unixtime "{unix}" is not a time Python can represent (years 1 to 9999)',
                        where=f"{where}.date_unixtime", hint="the file was edited by hand; " + _HINT_REEXPORT) from None
