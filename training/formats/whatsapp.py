"""WhatsApp "Export chat" text files (Android and iPhone, any of the common phone locales).

One record per message, a header with the phone's local date and time, then the sender and the text:

    Android   12/29/23, 8:02 PM - Dana: text        (system lines have no "Sender:" part)
    iPhone    [29/12/2023, 20:02:11] Dana: text     (system events get a sender too: group or actor)

How the traps of the format are met (docs: chat-export-formats.md, section 3):

* Header style. The date/time layout follows the phone locale (`12/29/23, 8:02 PM`, `29.12.23, 20:02`,
  `[2018/06/13, 21:25:15]`, `13.6.2018 klo 21.25.15`, `3/6/18, 1:55 p. m.` ...). The first line of an
  export is always a header, so its layout is taken as *the* layout of the file (`_Style`): bracket or
  dash, date separator, year position and width, date/time separator, time separator, seconds, and the
  exact AM/PM token including the space before it (U+202F on newer builds, U+00A0 inside Spanish
  "p. m."). Every other line is a header only if it matches that one strict pattern, so a header typed or
  pasted inside a message in another style (`12/23/23, 6:30 AM - ...` with a plain space in a U+202F
  file, or in a `dd.mm.yy` file) stays part of the message.
* Line endings. iPhone exports end records with CRLF but keep a message's own line breaks as bare LF.
  When a file has bare LFs and most headers follow a CRLF, only lines after a CRLF may start a record,
  so even a same-style header typed inside an iPhone message stays text. Other files (all LF, all CRLF)
  are read line by line with the strict pattern.
* Day/month order (per file, from every header): a field above 12 is the day (the majority decides; a
  header that disagrees is an impossible date, see "Impossible headers"). With no field above 12,
  the chronological order decides when it can: within one year the month never goes down, so the field
  that goes down between consecutive headers is the day. A file that stays ambiguous falls back on the
  locale: year first -> year/month/day; `.` or `-` separators -> day first (de, fi, nl, ru, tr...); `/` with
  an upper-case `AM`/`PM` -> month first (en-US); any other `/` (24-hour clock, `am`/`pm` of en-GB/AU/IN,
  Spanish `p. m.`) -> day first. Two-digit years are 20yy. Timestamps are naive local datetimes. On a
  12-hour clock the hour after midnight may be written 00 (`00:08 a. m.`): that is 00:08.
* Impossible headers (month 13, 24:10, 13:00 PM: a line changed by hand, exports of two phones joined): that
  message is skipped (`bad-header`) and a note names its line, so one bad line never costs the whole chat.
  When most headers of a file are impossible, the file is not what it looks like: a `DataError` naming the
  first one.
* Senders. Phone numbers (`+49 151 2345678`) are kept as speakers; bidi marks around names are dropped;
  an unsaved contact shown as `~ Name` becomes `Name` (alias `~ Name`).
* What is skipped, and why (`Skip` reasons):
  - system: Android lines without `Sender:`; iPhone events recognised by their wording (lists below);
    iPhone text that starts with U+200E and is no placeholder nor edited (WhatsApp marks text it wrote
    itself that way).
  - media-placeholder: `<Media omitted>` / `<Medien ausgeschlossen>` / `<Multimedia omitido>`, iPhone
    `image|video|audio|sticker|GIF|Contact card omitted` (de: `Bild ... weggelassen`, es: `imagen omitida`
    ...), `name.pdf • 3 pages document omitted`, `<attached: 00000014-PHOTO-...jpg>` (any language: the
    8-digit media id gives it away), Android `IMG-...jpg (file attached)` (`(Datei angehängt)`...) and
    old iPhone `2015-08-04-PHOTO-00004762.jpg <attached>` with no caption (a caption on the following
    lines is kept as the text, even when WhatsApp marked the file line with U+200E; Android repeats a
    document's name there, which is dropped), shared locations.
  - deleted: `This message was deleted`, `You deleted this message`, `This message was deleted by admin X`
    (de: `Diese Nachricht wurde gelöscht.` / `Du hast diese Nachricht gelöscht.`, es: `Se eliminó este
    mensaje.` / `Eliminaste este mensaje.`).
  - unsupported: `Waiting for this message. This may take a while.` (a message the phone never decrypted).
  - empty, bot (names listed in the options).
  The edit marker `<This message was edited>` (de `<Diese Nachricht wurde bearbeitet.>`, es, fr, it, pt)
  is removed and the message kept. U+200E marks are removed from message text.
* iPhone system wording recognised (English verified; German and Spanish lenient, from parser projects):
  always system: the end-to-end encryption notices (old and new), "created group", "changed the subject",
  "changed the group name/description", "changed/deleted this group's icon", "changed the settings",
  security code changes, "joined using this group's invite link", "You're now an admin", missed voice/
  video calls, "changed their phone number", blocked/unblocked contact, business-account notice,
  disappearing messages, "pinned a message". Events a person might also type ("Tom left", "Tom added
  Ana", "Tom removed Ana" and their de/es forms) count as system only with another sign: the text or
  the line starts with U+200E, or the actor named in the event is the sender ("Tom: Tom left").
  Everything "said" by the group itself is system: the sender equal to the chat's title, in a chat with
  at least two other senders (in a one-to-one chat the title is the other person, who does type).
* No ids: the thread key is `whatsapp:` + the resolved file path, the title comes from the file name
  (`WhatsApp Chat with X.txt`, `WhatsApp Chat - X`, `WhatsApp-Chat mit X`, `Chat de WhatsApp con X`;
  for `_chat.txt`, the folder's name). Messages stay in file order, which is the order the chat showed.
* The .zip that "Export chat" shares (iPhone always, Android with media) is read as it is: the chat's
  text inside it (`_chat.txt`, `WhatsApp Chat with X.txt`) is read like the file, keyed `whatsapp:` + the
  zip's path + `!` + the member, titled from the member's name or else the zip's; the media files beside it
  are counted in a note, not read. The zip limits of `base.py` apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import NoReturn

from training.conversation import Message
from training.errors import DataError
from training.formats import register
from training.formats.base import Importer, ImportOptions, ParseResult, Skip, Source, Thread, squash

LRM = "\u200e"
# A record whose header is no possible date or time (a line changed by hand, two exports joined): skipped,
# and its line named in the notes, unless most of the file's headers are like it.
BAD_HEADER = "bad-header"
# How many bad header lines a note names one by one; the rest are counted.
_BAD_HEADERS_NAMED = 10
# Direction marks and isolates WhatsApp wraps names and numbers in; invisible, never part of a name.
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")

# Any plausible header, used only on the first line to learn the file's style (and by the sniffer).
_LOOSE_HEADER = re.compile(
    r"""
    ^[\u200e\u200f]*
    (?P<open>\[)?
    (?P<f1>\d{1,4}) (?P<dsep>[./-]) (?P<dspace>\x20?) (?P<f2>\d{1,2}) (?P=dsep) (?P=dspace) (?P<f3>\d{1,4})
    (?P<dtrail>\.?)
    (?P<dtsep>,\x20|\x20klo\x20|\x20|,)
    (?P<hour>\d{1,2}) (?P<tsep>[:.]) (?P<minute>\d{2}) (?: (?P=tsep) (?P<second>\d{2}) )?
    (?: (?P<ampm_space>[\x20\u202f\u00a0]) (?P<ampm>[AaPp]\.?[\x20\u00a0\u202f]?[Mm]\.?) )?
    (?(open)\]\x20|\x20-\x20)
    """,
    re.X,
)


@dataclass(frozen=True, slots=True)
class _Style:
    """The exact header layout of one file, learned from its first line."""

    bracketed: bool          # iPhone "[...] " instead of Android "... - "
    dsep: str                # date separator: / . -
    dspace: str              # "" or " " after each date separator ("13. 6. 2018")
    dtrail: str              # "" or "." after the date
    year_first: bool
    year_len: int            # 2 or 4 (year-first dates always have 4)
    dtsep: str               # between date and time: ", " " " "," " klo "
    tsep: str                # : or .
    seconds: bool
    ampm_space: str | None   # the character before AM/PM (space, U+202F, U+00A0), None on a 24-hour clock
    ampm_upper: bool
    ampm_tail: str           # the AM/PM token after its first letter: "M", "m", ".\u00a0m." ...

    @classmethod
    def of(cls, m: re.Match[str]) -> _Style | None:
        f1, f3 = m["f1"], m["f3"]
        if len(f1) == 4 and len(f3) <= 2:
            year_first, year_len = True, 4
        elif len(f1) <= 2 and len(f3) in (2, 4):
            year_first, year_len = False, len(f3)
        else:
            return None
        ampm = m["ampm"]
        return cls(bracketed=m["open"] is not None, dsep=m["dsep"], dspace=m["dspace"], dtrail=m["dtrail"],
                   year_first=year_first, year_len=year_len, dtsep=m["dtsep"], tsep=m["tsep"],
                   seconds=m["second"] is not None, ampm_space=m["ampm_space"],
                   ampm_upper=bool(ampm) and ampm[0].isupper(), ampm_tail=ampm[1:] if ampm else "")

    def regex(self) -> re.Pattern[str]:
        """The one header pattern of this file: nothing else starts a message."""
        sep = re.escape(self.dsep + self.dspace)
        if self.year_first:
            day = rf"(?P<f1>\d{{4}}){sep}(?P<f2>\d{{1,2}}){sep}(?P<f3>\d{{1,2}})"
        else:
            day = rf"(?P<f1>\d{{1,2}}){sep}(?P<f2>\d{{1,2}}){sep}(?P<f3>\d{{{self.year_len}}})"
        t = re.escape(self.tsep)
        clock = rf"(?P<hour>\d{{1,2}}){t}(?P<minute>\d{{2}})"
        if self.seconds:
            clock += rf"{t}(?P<second>\d{{2}})"
        if self.ampm_space is not None:
            letter = "[AP]" if self.ampm_upper else "[ap]"
            clock += re.escape(self.ampm_space) + rf"(?P<ampm>{letter}){re.escape(self.ampm_tail)}"
        open_, close = (r"\[", r"\] ") if self.bracketed else ("", " - ")
        return re.compile(rf"^[\u200e\u200f]*{open_}{day}{re.escape(self.dtrail)}{re.escape(self.dtsep)}"
                          rf"{clock}{close}")

    def describe(self, first_is_day: bool) -> str:
        """The date layout in words, for error messages: "month/day/year"."""
        parts = ["month", "day"] if not first_is_day else ["day", "month"]
        parts = ["year", *parts] if self.year_first else [*parts, "year"]
        return self.dsep.join(parts)


def _style_of_line(line: str) -> _Style | None:
    m = _LOOSE_HEADER.match(line)
    return _Style.of(m) if m else None


# --- what a message's text can be besides words ----------------------------------------------------------
# The lookbehind starts a match only where a run of spaces starts: tried from inside a long run, the pattern
# would rescan the rest of the run at every position (quadratic time).
_EDITED = re.compile(
    r"(?<![ \u200e])[ \u200e]*<(?:This message was edited|Diese Nachricht wurde bearbeitet|Se editó este mensaje"
    r"|Este mensaje fue editado|Ce message a été modifié|Questo messaggio è stato modificato"
    r"|Esta mensagem foi editada)\.?>", re.I)

_DELETED = re.compile(
    r"(?:This message was deleted(?: by admin .+)?|You deleted this message"
    r"|Diese Nachricht wurde gelöscht|Du hast diese Nachricht gelöscht"
    r"|Se eliminó este mensaje|Eliminaste este mensaje)\.?", re.I)

_UNDECRYPTED = re.compile(
    r"(?:Waiting for this message\. This may take a while|Warten auf diese Nachricht\. Dies kann etwas dauern"
    r"|Esperando el mensaje\. Esto puede tomar tiempo)\.?", re.I)

_MEDIA_OMITTED = re.compile(
    r"<(?:Media omitted|Medien ausgeschlossen|Multimedia omitido)>"
    r"|(?:image|video|audio|sticker|GIF|Contact card|video note) omitted"
    r"|(?:Bild|Video|Audio|Sticker|GIF|Kontaktkarte) weggelassen"
    r"|(?:imagen omitida|video omitido|audio omitido|sticker omitido|GIF omitido|tarjeta de contacto omitida)"
    r"|live location shared|Live-Standort geteilt|ubicación en tiempo real compartida", re.I)
# iPhone documents: "name.pdf • 3 pages ‎document omitted" (the U+200E has been removed by then). Matched as
# a suffix plus a string search (see `_is_document_omitted`): as one pattern `.+ • .+ document omitted` it
# takes quadratic time on a text of many "a • ".
_DOCUMENT_OMITTED_END = re.compile(r" (?:document omitted|Dokument weggelassen|documento omitido)\Z", re.I)
# iPhone "Attach media" exports: "<attached: 00000014-PHOTO-2023-12-29-20-17-49.jpg>" in any language
# (Anhang, adjunto...), optionally after a document's "name • 3 pages".
_IOS_ATTACHED = re.compile(r"(?:.* )?<[^<>:\n]{2,30}: ?\d{8}-[^<>\n]*>")
# A file on the first line, a caption (if any) on the next ones: Android "Attach media" exports
# (`IMG-20240101-WA0001.jpg (file attached)`) and old iPhone ones (`2015-08-04-PHOTO-00004762.jpg <attached>`).
_FILE_ATTACHED = re.compile(r"(?P<file>\S.*?\.\w{0,5}) (?:\((?:file attached|Datei angehängt|archivo adjunto)\)"
                            r"|<attached>)", re.I)
_LOCATION = re.compile(r"[^\n]*: ?https://maps\.google\.com/\?q=-?[\d.]+,-?[\d.]+")

# --- system events on iPhone, where they carry a sender (Android ones simply have none) -------------------
_QUOTED = r"[\"“„«].*[\"”“»]"
_ALWAYS_SYSTEM = re.compile("|".join([
    # English
    r"Messages and calls are end-to-end encrypted\..*",
    r"Messages (?:to this|you send to this) (?:chat|group)(?: and calls)? are now secured with end-to-end "
    r"encryption\..*",
    rf".+ created (?:the )?group {_QUOTED}",
    rf".+ changed the (?:subject|group name) (?:from {_QUOTED} )?to {_QUOTED}",
    r".+ (?:changed|deleted) (?:this group's|the group) (?:icon|description)",
    r".+ changed (?:this group's|the group's|the group|the) settings (?:so|to) .+",
    r"(?:Your security code with .+|.+'s security code) changed\..*",
    r".+ joined using this group's invite link",
    r"You(?:'re| are) (?:now|no longer) an admin\.?",
    r"Missed (?:group )?(?:voice|video) call(?:, Tap to call back)?\.?",
    r".+ changed their phone number to .+",
    r"You (?:blocked|unblocked) this contact\..*",
    r"This (?:chat|business account) (?:is with|has now registered as) .+",
    r".+ turned (?:on|off) disappearing messages\..*",
    r".+ pinned a message",
    # German
    r"Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt\..*",
    rf".+ ha(?:t|st) die Gruppe {_QUOTED} erstellt\.?",
    rf".+ ha(?:t|st) den (?:Betreff|Gruppennamen) (?:von {_QUOTED} )?(?:zu|in) {_QUOTED} geändert\.?",
    r".+ ha(?:t|st) (?:das Gruppenbild|die Gruppenbeschreibung) (?:geändert|gelöscht)\.?",
    r"(?:Deine Sicherheitsnummer für .+|Die Sicherheitsnummer von .+) hat sich geändert\..*",
    r".+ (?:ist|bist) .*Einladungslink.* beigetreten\.?",
    r"Du bist (?:jetzt|nicht mehr) (?:ein )?Admin\.?",
    r"Verpasster (?:Gruppen-?)?(?:Sprach|Video)anruf\.?",
    # Spanish
    r"Los mensajes y las llamadas están cifrados de extremo a extremo\..*",
    rf"(?:.+ creó|Creaste) el grupo {_QUOTED}\.?",
    rf"(?:.+ cambió|Cambiaste) el (?:asunto|nombre del grupo) (?:de {_QUOTED} )?a {_QUOTED}\.?",
    r"(?:.+ cambió|Cambiaste) (?:el [ií]cono|la imagen|la descripción) (?:de este grupo|del grupo)\.?",
    r"(?:Tu código de seguridad con .+|El código de seguridad de .+) cambió\..*",
    r".+ se unió (?:usando|mediante|con) el enlace de invitación.*",
    r"Ahora eres (?:un )?admin(?:istrador)?\.?",
    r"(?:Llamada(?: de voz)?|Videollamada) perdida\.?",
]), re.I)
# Wording a person could also type; system only with another sign (see `_is_system`).
_EVENT_SYSTEM = re.compile("|".join([
    r"(?P<a1>.+?) added .+", r"(?P<a2>.+?) left", r"(?P<a3>.+?) removed .+",
    r"(?P<a4>.+?) hat .+ hinzugefügt\.?", r"(?P<a5>.+?) hat die Gruppe verlassen\.?",
    r"(?P<a6>.+?) hat .+ entfernt\.?",
    r"Du hast .+ hinzugefügt\.?", r"Du hast die Gruppe verlassen\.?",
    r"(?P<a7>.+?) (?:te )?añadió(?: a .+)?", r"(?P<a8>.+?) salió del grupo\.?", r"(?P<a9>.+?) eliminó a .+",
    r"Añadiste a .+", r"Saliste del grupo\.?",
]), re.I)
# Cheap pre-filters, searched in the lower-cased text: the patterns above only run on texts holding one
# of these words (most messages hold none). Keep them in step with the patterns.
_ALWAYS_SYSTEM_WORDS = re.compile(
    "encrypt|created|changed|deleted|security code|invite link|admin|missed|blocked|business|disappearing"
    "|pinned|verschlüsselt|erstellt|geändert|gelöscht|sicherheitsnummer|einladungslink|verpasst"
    "|cifrados|creó|creaste|cambi|código|enlace|eres|perdida")
_EVENT_SYSTEM_WORDS = re.compile(
    " added | left| removed |hinzugefügt|verlassen|entfernt|añadió|añadiste|salió|saliste| eliminó ")
# A "sender" that is really the start of a system line holding ": " in a quoted name, e.g.
# `Dana changed the subject to "Alps: day 2"`: no display name contains these words.
_SYSTEM_IN_SENDER = re.compile(
    r" created group | changed the subject | changed the group | ha(?:t|st) die Gruppe "
    r"| ha(?:t|st) den (?:Betreff|Gruppennamen) | creó el grupo | cambió el (?:asunto|nombre)"
    r"|^You created group |^Creaste el grupo ", re.I)

_TILDE_NAME = re.compile(r"~[\s\u202f\u00a0]*(?P<name>\S.*)")

_TITLE_PATTERNS = [re.compile(p, re.I) for p in (
    r"WhatsApp Chat with (?P<t>.+)", r"WhatsApp Chat - (?P<t>.+)", r"WhatsApp-Chat mit (?P<t>.+)",
    r"Chat de WhatsApp con (?P<t>.+)")]


@dataclass(slots=True)
class _Record:
    """One message as written: its header fields, the first line after the header, the lines after it."""

    line: int                 # 1-based line number of the header
    match: re.Match[str]
    line_lrm: bool            # the physical line started with U+200E
    rest: str
    more: list[str] = field(default_factory=list)

    @property
    def header(self) -> str:
        """The date and time as written, for error messages: "[29/12/2023, 20:02:11]", "12/29/23, 8:02 PM"."""
        text = self.match.group(0).lstrip("\u200e\u200f").rstrip()
        return text[:-2] if text.endswith(" -") else text


@register
class WhatsAppImporter(Importer):
    name = "whatsapp"
    description = 'WhatsApp "Export chat" .txt (or the .zip it comes in) from Android or iPhone, any common locale'
    # The .zip "Export chat" shares (always on iPhone, with media on Android). A folder is only read as a
    # whole when --format whatsapp names it; detection walks folders file by file.
    reads_archives = True

    def sniff(self, source: Source) -> float:
        if source.is_dir:
            return 0.0
        if source.is_zip:
            return 0.9 if any(_is_chat_member(name) for name in source.member_names()) else 0.0
        lines = [line.rstrip("\r") for line in source.head_text().split("\n")[:400]]
        first = next((line for line in lines if line.strip()), None)
        style = _style_of_line(first) if first is not None else None
        if style is None:
            return 0.0
        strict = style.regex()
        headers = sum(1 for line in lines if strict.match(line))
        if headers >= 3:
            return 0.95
        return 0.9 if headers == 2 else 0.6

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        if source.is_dir or source.is_zip:
            with source:  # a zip stays open for its member reads, and is closed when they are done
                _read_archive(source, options, result)
        else:
            _read_chat(_ChatText.of_file(source), options, result)
        return result


def _read_archive(source: Source, options: ImportOptions, result: ParseResult) -> None:
    """The chats of an "Export chat" zip (its `_chat.txt` or `WhatsApp Chat with X.txt`; the photos, voice
    notes and documents beside it are counted in a note, not read), or every `.txt` of a folder named with
    --format whatsapp."""
    names = source.member_names()
    texts = [n for n in names if n.lower().endswith(".txt") and not _is_hidden_member(n)]
    # A zip's other .txt files are documents someone sent in the chat, not chats.
    chats = ([n for n in texts if _is_chat_member(n)] or texts) if source.is_zip else texts
    where = "zip" if source.is_zip else "folder"
    if not chats:
        raise DataError(source.path, f"no WhatsApp chat in this {where} (no _chat.txt, no "
                        '"WhatsApp Chat with NAME.txt", no .txt file at all)',
                        hint='name the .zip that "Export chat" shared, or the .txt inside it')
    for name in chats:
        chat = _ChatText.of_member(source, name) if source.is_zip else _ChatText.of_file(Source(source.path / name))
        _read_chat(chat, options, result)
    read = set(chats)
    others = [n for n in names if n not in read]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        result.notes.append(f"{len(others):,} other file{'s' if len(others) > 1 else ''} in the {where} not read "
                            f"(media, attachments): {shown}")


def _is_hidden_member(name: str) -> bool:
    """Whether a member is a dot file or macOS's `__MACOSX/` shadow copy: never part of the export."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def _is_chat_member(name: str) -> bool:
    """Whether a member of a zip is named as WhatsApp names a chat's text: `_chat.txt` (iPhone) or
    `WhatsApp Chat with X.txt` and its translations (Android)."""
    member = PurePosixPath(name)
    if member.suffix.lower() != ".txt" or _is_hidden_member(name):
        return False
    stem = _without_copy_number(member.stem)
    return _is_chat_txt(stem) or any(pattern.fullmatch(stem) for pattern in _TITLE_PATTERNS)


def _read_chat(chat: _ChatText, options: ImportOptions, result: ParseResult) -> None:
    """Read one chat's text into a thread of `result`.

    Two passes over the text, a line at a time, so that only the messages are held (12.7x the file size was
    held when the text, its lines and a match per line were all kept at once): the first learns what needs
    every header (layout, record boundaries, day/month order, the group's name), the second turns each
    record into a message as soon as it ends.
    """
    layout = _scan(chat)
    thread = Thread(key=chat.key, title=chat.title)
    result.threads.append(thread)
    speakers: dict[str, tuple[str, tuple[str, ...]]] = {}  # one str per name, not one per message
    last_stamp: tuple[str, datetime] | None = None          # one datetime per run of equal headers
    records = bad_headers = 0
    named_bad: list[DataError] = []                         # the first few, for the note (or the error)

    def finish(record: _Record) -> None:
        nonlocal last_stamp, records, bad_headers
        records += 1
        header = record.match.group(0)
        if last_stamp is None or last_stamp[0] != header:
            try:
                stamp = _timestamp(record, layout.style, layout.first_is_day, chat.label)
            except DataError as bad:
                # One line changed by hand must not cost the whole chat: skip this record, name its line.
                bad_headers += 1
                if len(named_bad) < _BAD_HEADERS_NAMED:
                    named_bad.append(bad)
                result.skip(BAD_HEADER)
                return
            last_stamp = header, stamp
        message = _message(record, last_stamp[1], layout.group, options, result, speakers)
        if message is not None:
            thread.items.append(message)

    record: _Record | None = None
    for number, line, after_crlf in _numbered_lines(chat):
        if number < layout.first:
            continue
        m = layout.strict.match(line)
        if m is not None and (number == layout.first or not layout.records_end_with_crlf or after_crlf):
            if record is not None:
                finish(record)
            record = _Record(line=number, match=m, line_lrm=line.startswith(LRM), rest=line[m.end():])
        else:
            assert record is not None  # the first non-blank line is a header (checked by _scan)
            record.more.append(line)
    if record is not None:
        finish(record)
    if bad_headers:
        _report_bad_headers(chat, named_bad, bad_headers, records, result)


def _report_bad_headers(chat: _ChatText, named: list[DataError], bad: int, records: int,
                        result: ParseResult) -> None:
    """A note naming the skipped records' lines; a `DataError` when most headers are bad (then the file is
    not this layout, or not a chat, and reading the rest would be a guess)."""
    first = named[0]
    if bad * 2 > records:
        raise DataError(first.path, f"{first.message}; {bad:,} of the {records:,} message headers are no "
                        "possible date or time", where=first.where, hint=first.hint)
    listed = "; ".join(f"{e.where}: {e.message}" for e in named)
    more = f"; and {bad - len(named):,} more" if bad > len(named) else ""
    in_part = f" in {chat.part}" if chat.part else ""
    result.notes.append(f"skipped {bad:,} message{'s' if bad > 1 else ''}{in_part} whose header is no possible "
                        f"date or time ({BAD_HEADER}): {listed}{more}; fix or remove "
                        f"{'those lines' if bad > 1 else 'that line'} to keep {'them' if bad > 1 else 'it'}")


@dataclass(frozen=True, slots=True)
class _ChatText:
    """The text of one chat: a `.txt` file, or the `.txt` of a chat inside an "Export chat" zip."""

    label: str | Path                  # how errors name it: the file, or `export.zip!_chat.txt`
    part: str                          # the member's name inside a zip; "" for a file
    key: str
    title: str
    lines: Callable[[], Iterator[str]]  # the lines with their endings, from the start, each time it is called

    @classmethod
    def of_file(cls, source: Source) -> _ChatText:
        path = source.path
        stem = path.stem
        # iPhone's `_chat.txt` is named after nothing: the folder it was unpacked to is.
        names = [path.parent.name, stem] if _is_chat_txt(stem) else [stem]
        return cls(path, "", f"whatsapp:{path.resolve()}", _title(names, fallback=stem), source.text_lines)

    @classmethod
    def of_member(cls, source: Source, name: str) -> _ChatText:
        label = source.member_label(name)
        member = PurePosixPath(name)
        container = member.parent.name or source.path.stem
        names, fallback = (([container, member.stem], container) if _is_chat_txt(member.stem)
                           else ([member.stem, container], member.stem))
        return cls(label, name, f"whatsapp:{source.path.resolve()}!{name}", _title(names, fallback=fallback),
                   lambda: source.member_lines(name))


# --- reading records ---------------------------------------------------------------------------------------
def _numbered_lines(chat: _ChatText) -> Iterator[tuple[int, str, bool]]:
    """(1-based line number, line without its ending, whether the line before ended with CRLF)."""
    after_crlf = False
    for number, raw in enumerate(chat.lines(), start=1):
        line = raw[:-1] if raw.endswith("\n") else raw
        crlf = line.endswith("\r")
        yield number, line[:-1] if crlf else line, after_crlf
        after_crlf = crlf


class _DayOrder:
    """Evidence for the day/month order, gathered header by header (see `_first_field_is_day`)."""

    __slots__ = ("first_big", "second_big", "first_drops", "second_drops", "previous")

    def __init__(self) -> None:
        self.first_big = self.second_big = 0
        self.first_drops = self.second_drops = False
        self.previous: tuple[int, int, int] | None = None

    def add(self, a: int, b: int, year: int) -> None:
        self.first_big += a > 12 >= b
        self.second_big += b > 12 >= a
        if self.previous is not None and self.previous[2] == year:
            # Within one year the month never goes down: the field that goes down is the day.
            self.first_drops |= a < self.previous[0]
            self.second_drops |= b < self.previous[1]
        self.previous = (a, b, year)


@dataclass(slots=True)
class _Layout:
    """What the first pass learns from every header of the file."""

    style: _Style
    strict: re.Pattern[str]
    first: int                   # line number of the first record
    records_end_with_crlf: bool  # iPhone: only a line after a CRLF may start a record
    first_is_day: bool
    group: str | None


def _scan(chat: _ChatText) -> _Layout:
    """The first pass: the file's header style and everything that needs all of its headers.

    Which lines start records depends on a count over the whole file (headers after CRLF against headers
    after a bare LF), so the evidence is gathered both ways and the right one kept at the end.
    """
    first = 0
    style: _Style | None = None
    strict: re.Pattern[str] | None = None
    after_crlf_count = after_lf_count = 0
    bare_lf = False
    # [every header line, only the first line and headers after a CRLF]
    orders = (_DayOrder(), _DayOrder())
    senders: tuple[set[str], set[str]] = (set(), set())
    for number, line, after_crlf in _numbered_lines(chat):
        if number > 1 and not after_crlf:
            bare_lf = True
        if strict is None:
            if not line.strip():
                continue
            first, style = number, _style_of_line(line)
            if style is None:
                _no_header(chat, number, line)
            strict = style.regex()
        m = strict.match(line)
        if m is None:
            continue
        if number > first:
            after_crlf_count += after_crlf
            after_lf_count += not after_crlf
        a, b, year = _fields(m, style)
        split = _split_sender(line[m.end():])
        sender = _speaker(split[0])[0].casefold() if split else None
        for kept, order, names in ((True, orders[0], senders[0]),
                                   (number == first or after_crlf, orders[1], senders[1])):
            if kept:
                order.add(a, b, year)
                if sender is not None:
                    names.add(sender)
    if strict is None or style is None:
        raise DataError(chat.label, "the file is empty", hint="export the chat again")
    # iPhone: records end with CRLF, line breaks inside a message are bare LF. When the headers say so,
    # a line after a bare LF is always text, however much it looks like a header.
    # (The last line's own ending is not looked at: no header follows it, so it cannot matter.)
    crlf_records = bare_lf and after_crlf_count > after_lf_count
    which = 1 if crlf_records else 0
    return _Layout(style, strict, first, crlf_records, _first_field_is_day(orders[which], style),
                   _group_sender(senders[which], chat.title))


def _no_header(chat: _ChatText, number: int, line: str) -> NoReturn:
    """The error for a file whose first non-blank line (`number`) is no message header."""
    shown = _shorten(line)
    if any(_style_of_line(other) for n, other, _ in _numbered_lines(chat) if n > number):
        raise DataError(chat.label, f"does not start with a WhatsApp message header; the first line is "
                        f"{shown!r}", where=f"line {number}",
                        hint="the start of the export is missing or was edited; export the chat again")
    raise DataError(chat.label, f"no WhatsApp message header found; the first line is {shown!r}",
                    where=f"line {number}",
                    hint='this is not a WhatsApp "Export chat" file (its lines start like '
                         '"12/29/23, 8:02 PM - Name:" or "[29/12/2023, 20:02:11] Name:"); '
                         'pass the right --format')


def _shorten(line: str, limit: int = 80) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"


# --- dates -------------------------------------------------------------------------------------------------
def _fields(match: re.Match[str], style: _Style) -> tuple[int, int, int]:
    """(first, second, year) where first/second are the two day-or-month fields in written order."""
    f1, f2, f3 = int(match["f1"]), int(match["f2"]), int(match["f3"])
    return (f2, f3, f1) if style.year_first else (f1, f2, f3)


def _first_field_is_day(order: _DayOrder, style: _Style) -> bool:
    """Whether the first of the two day/month fields is the day, inferred from every header of the file."""
    if order.first_big != order.second_big:
        # The majority decides; a header that disagrees is skipped later as an impossible date.
        return order.first_big > order.second_big
    if not order.first_big:
        # Exports are chronological: within one year the month never goes down, so the field that goes
        # down between consecutive headers is the day.
        if order.first_drops != order.second_drops:
            return order.first_drops
    # Still ambiguous: the locale the layout belongs to.
    if style.year_first:
        return False                                 # 2018/06/13: year, month, day
    if style.dsep in ".-":
        return True                                  # 29.12.23 (de, fi, ru, tr...), 29-12-2023 (nl)
    if style.ampm_space is not None and style.ampm_upper and style.ampm_tail == "M":
        return False                                 # 12/29/23, 8:02 PM: en-US
    return True                                      # 29/12/2023 20:02, 29/12/23 8:02 pm, 3/6/18 1:55 p. m.


def _timestamp(record: _Record, style: _Style, first_is_day: bool, path: str | Path) -> datetime:
    a, b, year = _fields(record.match, style)
    day, month = (a, b) if first_is_day else (b, a)
    if style.year_len == 2:
        year += 2000
    where = f"line {record.line}"
    try:
        date(year, month, day)
    except ValueError:
        raise DataError(path, f"impossible date in the message header {record.header!r}: month {month}, "
                              f"day {day} (the file's dates are {style.describe(first_is_day)})",
                        where=where, hint="this line was changed by hand or the file joins exports made with "
                                          "different phone settings; fix or remove the line") from None
    m = record.match
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"]) if style.seconds else 0
    twelve_hour = style.ampm_space is not None
    # Some 12-hour locales write the hour after midnight as 00 ("00:08 a. m."): that is 00:08.
    if not (hour <= 12 if twelve_hour else hour <= 23) or minute > 59 or second > 59:
        raise DataError(path, f"impossible time in the message header {record.header!r}", where=where,
                        hint="this line was changed by hand; fix or remove the line")
    if twelve_hour:
        hour = hour % 12 + (12 if m["ampm"] in "Pp" else 0)   # 12:05 AM is 00:05, 12:15 PM is 12:15
    return datetime(year, month, day, hour, minute, second)


# --- messages ----------------------------------------------------------------------------------------------
def _split_sender(rest: str) -> tuple[str, str] | None:
    """(sender, first line of text) of a header's remainder, or None for a line without a sender."""
    sender, sep, first = rest.partition(": ")
    if not sep and rest.endswith(":") and len(rest) > 1:
        sender, sep, first = rest[:-1], ":", ""      # "Name:" with an empty text
    if not sep or _SYSTEM_IN_SENDER.search(sender):
        return None
    return sender, first


def _group_sender(senders: set[str], title: str) -> str | None:
    """The group's own name when iPhone uses it as a sender: the title, in a chat with two other senders
    (`senders`: every sender's name, case-folded).

    A group never types, so everything "it" says is a system event. In a one-to-one chat the title is
    the other person, who does type: there it means nothing.
    """
    key = title.casefold()
    return title if title and key in senders and len(senders - {key}) >= 2 else None


def _message(record: _Record, timestamp: datetime, group: str | None, options: ImportOptions,
             result: ParseResult, speakers: dict[str, tuple[str, tuple[str, ...]]]) -> Message | None:
    """The training message of one record, or None after counting why it is not one. `speakers` caches
    `_speaker` by sender, so that every message of one person shares one name string."""
    split = _split_sender(record.rest)
    if split is None:
        # No sender: a system line ("Dana added Ana", the encryption notice...).
        result.skip(Skip.SYSTEM if squash([record.rest, *record.more]) else Skip.EMPTY)
        return None
    sender, first = split
    raw_text = "\n".join([first, *record.more])
    generated = first.startswith(LRM)        # WhatsApp's mark on text it wrote itself
    edited = "<" in raw_text and _EDITED.search(raw_text) is not None
    text = squash((_EDITED.sub("", raw_text) if edited else raw_text).replace(LRM, "").split("\n"))
    if sender not in speakers:
        speakers[sender] = _speaker(sender)
    speaker, aliases = speakers[sender]

    reason: str | None = None
    if (group is not None and speaker.casefold() == group.casefold()) \
            or _is_system(text, speaker, marked=generated or record.line_lrm):
        reason = Skip.SYSTEM
    elif options.is_bot_name(speaker, *aliases):
        reason = Skip.BOT
    elif _DELETED.fullmatch(text):
        reason = Skip.DELETED
    elif _UNDECRYPTED.fullmatch(text):
        reason = Skip.UNSUPPORTED
    elif (_MEDIA_OMITTED.fullmatch(text) or _is_document_omitted(text) or _IOS_ATTACHED.fullmatch(text)
          or (_LOCATION.fullmatch(text.split("\n")[-1]) and text.count("\n") <= 2)):
        reason = Skip.MEDIA
    else:
        caption = _attachment_caption(text)
        if caption is not None:
            # WhatsApp's U+200E marked the file line it wrote; a caption under it is the person's own text.
            text, generated = caption, False
        if caption == "":
            reason = Skip.MEDIA
        elif generated and not edited:
            reason = Skip.SYSTEM  # generated text that is no known placeholder: a system event
        elif not text:
            reason = Skip.EMPTY
    if reason is not None:
        result.skip(reason)
        return None
    return Message(speaker=speaker, text=text, timestamp=timestamp, speaker_aliases=aliases)


def _is_document_omitted(text: str) -> bool:
    """Whether one line reads `NAME • DETAILS document omitted` (NAME and DETAILS not empty)."""
    end = _DOCUMENT_OMITTED_END.search(text)
    if end is None or "\n" in text:
        return False
    # A " • " with at least one character on each side, before the suffix.
    return text.find(" • ", 1, end.start() - 1) != -1


def _speaker(sender: str) -> tuple[str, tuple[str, ...]]:
    """The display name (bidi marks dropped) and, for an unsaved contact's `~ Name`, that form as alias."""
    name = _BIDI.sub("", sender).strip()
    tilde = _TILDE_NAME.fullmatch(name)
    if tilde:
        return tilde["name"].strip(), (name,)
    return name, ()


def _is_system(text: str, sender: str, *, marked: bool) -> bool:
    """Whether a record with a sender is a system event by its wording (see the module docstring).

    `marked`: the line or the text starts with U+200E, as WhatsApp marks what it wrote itself.
    """
    if "\n" in text or len(text) > 500:
        return False  # system events are one short line
    low = text.lower()
    if _ALWAYS_SYSTEM_WORDS.search(low) and _ALWAYS_SYSTEM.fullmatch(text):
        return True
    event = _EVENT_SYSTEM.fullmatch(text) if _EVENT_SYSTEM_WORDS.search(low) else None
    if event is None:
        return False
    actor = next((v for v in event.groupdict().values() if v is not None), None)
    return marked or (actor is not None and _BIDI.sub("", actor).strip().casefold() == sender.casefold())


def _attachment_caption(text: str) -> str | None:
    """The caption under a `FILE (file attached)` / `FILE <attached>` first line ("" when there is none);
    None when the text does not start with an attached file."""
    lines = text.split("\n")
    attached = _FILE_ATTACHED.fullmatch(lines[0])
    if attached is None:
        return None
    caption = squash(lines[1:])
    # Android repeats a document's name under it, as if it were a caption.
    if caption == Path(attached["file"]).stem or caption == attached["file"]:
        caption = ""
    return caption


def _is_chat_txt(stem: str) -> bool:
    """Whether a file's stem is iPhone's `_chat` (as in `_chat.txt`), which names no chat."""
    return _without_copy_number(stem).casefold() == "_chat"


def _without_copy_number(name: str) -> str:
    return re.sub(r" \(\d+\)$", "", name)  # "WhatsApp Chat with X (1).txt": a second download


def _title(names: list[str], fallback: str) -> str:
    """The chat's name from the first of `names` (the file's and its folder's or zip's names, in the order
    to trust them) that reads like an export's name (`WhatsApp Chat with X`...), else `fallback`."""
    for name in names:
        for pattern in _TITLE_PATTERNS:
            m = pattern.fullmatch(_without_copy_number(name))
            if m:
                return m["t"].strip()
    return _without_copy_number(fallback)
