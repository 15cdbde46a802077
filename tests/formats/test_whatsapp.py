"""WhatsApp "Export chat" .txt importer: real files written as Android and iPhone write them."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from training.conversation import Message
from training.errors import DataError
from training.formats import detect, get
from training.formats.base import ImportOptions, ParseResult, Source
from training.loader import load_corpus

FIXTURES = Path(__file__).parent.parent / "fixtures" / "whatsapp"
HIKING = FIXTURES / "WhatsApp Chat with Hiking Crew.txt"            # Android en-US, U+202F, LF
BERGER = FIXTURES / "WhatsApp-Chat mit Familie Berger.txt"           # Android de-DE, LF
TRIP = FIXTURES / "WhatsApp Chat - Trip Planning.txt"                # iPhone en-GB, CRLF records + LF inside
MAYA = FIXTURES / "WhatsApp Chat - Maya Chen.txt"                    # iPhone en-US, U+202F, attach media
KENJI = FIXTURES / "WhatsApp Chat - Kenji Watanabe.txt"              # iPhone, year first
AINO = FIXTURES / "WhatsApp Chat with Aino Virtanen.txt"             # Android fi-FI "klo"
LUCIA = FIXTURES / "Chat de WhatsApp con Carmen Ortiz.txt"           # Android es-ES "p. m." with U+00A0
BOOK_CLUB = FIXTURES / "WhatsApp Chat with Book Club.txt"            # Android en-GB, with media
SKAT = FIXTURES / "WhatsApp Chat - Skatrunde.txt"                    # iPhone de-DE group
ALLOTMENT = FIXTURES / "WhatsApp Chat with Allotment Friends.txt"     # Android en-GB, U+200E file lines
BRANDT = FIXTURES / "WhatsApp Chat - Jörg Brandt.txt"                # old iPhone de-DE, "FILE <attached>"
LOTTE_ZIP = FIXTURES / "WhatsApp Chat - Lotte de Vries.zip"          # iPhone "Export chat" zip: _chat.txt + photo
BAD = FIXTURES / "bad"

LRM, NNBSP, NBSP = "\u200e", "\u202f", "\u00a0"


def parse(path: Path, **options) -> ParseResult:
    return get("whatsapp").parse(Source(path), ImportOptions(**options))


def messages(result: ParseResult) -> list[Message]:
    assert len(result.threads) == 1
    return [m for m in result.threads[0].items if isinstance(m, Message)]


def said(result: ParseResult) -> list[tuple[str, str, datetime]]:
    return [(m.speaker, m.text, m.timestamp) for m in messages(result)]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def parse_text(tmp_path: Path, text: str, name: str = "WhatsApp Chat with Test.txt", **options) -> ParseResult:
    return parse(write(tmp_path / name, text), **options)


def error_of(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        parse(path)
    return caught.value


# --- detection ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Shopping list\n- eggs\n- 12/29/23 is the party\n",
    '{"messages": [{"id": 1, "text": "12/29/23, 8:02 PM - Dana: hi"}]}',
    "AuthorID,Author,Date,Content,Attachments,Reactions\n"
    '"1","dana","12/29/23, 8:02 PM","hi","",""\n',
    "DANA:\nWho's in for Saturday?\n\nMARCO:\nMe!\n",
    "Dana: Who's in for Saturday?\nMarco: Me!\n",
    "<|USER|> hi <|ASSISTANT|> hello <|End|>\n",
    "2023-12-29 20:02:11 some log line\n",
])
def test_sniff_is_zero_for_other_text(tmp_path, text):
    assert get("whatsapp").sniff(Source(write(tmp_path / "other.txt", text))) == 0.0


def test_sniff_single_header_file_is_weaker_but_still_detected(tmp_path):
    path = write(tmp_path / "one.txt", "12/29/23, 8:02 PM - Dana: hi\n")
    assert get("whatsapp").sniff(Source(path)) == 0.6
    assert detect(Source(path)).name == "whatsapp"


# --- Android en-US: U+202F, system lines without sender, placeholders, the header-looking line ------------
def test_android_us_messages_speakers_and_timestamps():
    result = parse(HIKING)
    assert said(result) == [
        ("Dana Whitfield", "Who's in for Saturday?", datetime(2023, 12, 28, 20, 2)),
        ("Marco Reyes", "Me! Which trail?", datetime(2023, 12, 28, 20, 3)),
        ("Dana Whitfield", "Thinking Ridge Loop.\nParking fills up early, so the ranger said:\n"
                           "12/23/23, 6:30 AM - meet at the lot before sunrise\n(that was last week's notice)",
         datetime(2023, 12, 28, 20, 5)),
        ("+1 (415) 555-0132", "Sounds great, count me in", datetime(2023, 12, 28, 20, 6)),
        ("Marco Reyes", "I'll bring the snacks", datetime(2023, 12, 28, 20, 9)),
        ("Marco Reyes", "Running 10 min late", datetime(2023, 12, 29, 6, 45)),
        ("Dana Whitfield", "Summit!", datetime(2023, 12, 29, 12, 15)),      # 12:15 PM is noon
        ("Marco Reyes", "Home safe", datetime(2023, 12, 30, 0, 5)),         # 12:05 AM is after midnight
    ]
    # encryption notice, created group, added, subject change containing ": ", left
    assert result.skipped == Counter({"system": 5, "deleted": 2, "media-placeholder": 1})
    assert all(m.timestamp.tzinfo is None for m in messages(result))


def test_android_pasted_header_with_plain_space_stays_in_the_message_because_the_file_uses_u202f(tmp_path):
    # The same export from an older build (plain space before AM/PM): then the pasted line *is* a header
    # by the file's own rule and cuts the message. This is what the strict per-file pattern protects.
    old_build = HIKING.read_text(encoding="utf-8").replace(NNBSP, " ")
    result = parse_text(tmp_path, old_build)
    dana = [m.text for m in messages(result) if m.speaker == "Dana Whitfield"]
    assert dana[1] == "Thinking Ridge Loop.\nParking fills up early, so the ranger said:"
    assert result.skipped["system"] == 6


def test_android_crlf_reads_like_lf(tmp_path):
    crlf = HIKING.read_text(encoding="utf-8").replace("\n", "\r\n")
    assert said(parse_text(tmp_path, crlf)) == said(parse(HIKING))


def test_android_thread_key_title_and_conversation_splits():
    result = parse(HIKING)
    thread = result.threads[0]
    assert thread.key == f"whatsapp:{HIKING.resolve()}"
    assert thread.title == "Hiking Crew"
    corpus = load_corpus([HIKING])
    # 20:02-20:09, then 6:45 (10 h later), 12:15 (5.5 h), 0:05 (12 h): silences over 3 h split
    assert [len(c.messages) for c in corpus.conversations] == [5, 1, 1, 1]
    assert {c.title for c in corpus.conversations} == {"Hiking Crew"}
    assert corpus.files[0].format == "whatsapp"
    assert corpus.files[0].messages == 8


def test_bot_names_are_skipped_as_bot():
    result = parse(HIKING, bot_names=frozenset({"marco reyes"}))
    assert {m.speaker for m in messages(result)} == {"Dana Whitfield", "+1 (415) 555-0132"}
    # Marco's deleted message counts as bot: the author is checked before the content
    assert result.skipped == Counter({"system": 5, "bot": 5, "deleted": 1, "media-placeholder": 1})


# --- Android de-DE -----------------------------------------------------------------------------------------
def test_android_german_dd_mm_yy_and_placeholders():
    result = parse(BERGER)
    assert said(result) == [
        ("Jonas Berger", "Wer kommt an Silvester?", datetime(2023, 12, 29, 20, 2)),
        ("Oma Hilde", "Ich! Ich bringe Kartoffelsalat mit.\nUnd den Nachtisch.", datetime(2023, 12, 29, 20, 4)),
        # a US-style header inside a dd.mm.yy file is text
        ("Lena Berger",
         "Schaut mal, was Tante Uschi weitergeleitet hat:\n12/23/23, 6:30 AM - Uschi: Frohe Weihnachten!",
         datetime(2023, 12, 29, 20, 6)),
        ("Jonas Berger", "Haha, typisch", datetime(2023, 12, 29, 20, 7)),   # <Diese Nachricht wurde bearbeitet.>
        ("+49 151 23456789", "Hallo, hier ist Kai mit neuer Nummer", datetime(2023, 12, 29, 20, 9)),
        ("Jonas Berger", "Frohes neues Jahr! 🎆", datetime(2023, 12, 31, 23, 59)),
        ("Oma Hilde", "Euch auch!", datetime(2024, 1, 1, 0, 1)),
    ]
    assert result.skipped == Counter({"system": 4, "media-placeholder": 1, "deleted": 1})
    assert result.threads[0].title == "Familie Berger"


# --- iPhone en-GB: CRLF records, bare LF inside, U+200E, system events with a sender ----------------------
def test_iphone_group_messages_and_skips():
    result = parse(TRIP)
    assert said(result) == [
        ("Ines Duarte", "Lisbon or Porto?", datetime(2023, 12, 28, 18, 1, 12)),
        ("Tom Brennan", "Porto!!\nBetter food, cheaper flights\n(and my cousin lives there)",
         datetime(2023, 12, 28, 18, 2, 40)),
        # a same-style header after a bare LF is inside the message
        ("Oskar Lind", "The airline just sent me this:\n[27/12/2023, 09:15:00] Fare alert: Porto from £39",
         datetime(2023, 12, 28, 18, 3)),
        # "X added Y" typed by someone else, without U+200E: a message
        ("Oskar Lind", "Ines added pineapple to the pizza order again", datetime(2023, 12, 28, 18, 3, 30)),
        ("Tom Brennan", "Booked the flights", datetime(2023, 12, 28, 18, 7)),   # edit marker removed
        ("Ines Duarte", "Tom, come back 😅", datetime(2023, 12, 30, 9)),
        ("+44 7700 900123", "Hi all, Tom's new number. Sorry, I left by accident", datetime(2023, 12, 30, 9, 1)),
    ]
    # system: encryption notice, created group, 2x added (one without U+200E, from the group itself),
    # subject change, icon change, security code, left; media: image, video, sticker, GIF, audio, document
    assert result.skipped == Counter({"system": 8, "media-placeholder": 6, "deleted": 2})
    assert all(LRM not in m.text and LRM not in m.speaker for m in messages(result))
    assert result.threads[0].title == "Trip Planning"


def test_iphone_bare_lf_rule_is_what_keeps_the_same_style_header_in_the_message(tmp_path):
    # With every line break turned into LF, the record/line distinction is gone and the typed header
    # becomes a message of "Fare alert".
    flattened = TRIP.read_text(encoding="utf-8").replace("\r\n", "\n")
    result = parse_text(tmp_path, flattened, name="WhatsApp Chat - Trip Planning.txt")
    assert ("Fare alert", "Porto from £39", datetime(2023, 12, 27, 9, 15)) in said(result)


def test_iphone_conversations_split_at_the_silence():
    corpus = load_corpus([TRIP])
    assert [[m.speaker for m in c.messages] for c in corpus.conversations] == [
        ["Ines Duarte", "Tom Brennan", "Oskar Lind", "Oskar Lind", "Tom Brennan"],
        ["Ines Duarte", "+44 7700 900123"],
    ]


def test_iphone_chat_txt_takes_its_title_from_the_folder(tmp_path):
    folder = tmp_path / "WhatsApp Chat - Trip Planning"
    folder.mkdir()
    shutil.copy(TRIP, folder / "_chat.txt")
    result = parse(folder / "_chat.txt")
    assert result.threads[0].title == "Trip Planning"
    assert result.threads[0].key == f"whatsapp:{(folder / '_chat.txt').resolve()}"
    # the group-as-sender rule needs the title: the unmarked "Ines Duarte added Tom Brennan" is system
    assert result.skipped["system"] == 8


def test_unmarked_event_from_the_group_is_kept_when_the_title_is_unknown(tmp_path):
    # Without the title, only U+200E and the wording can tell: the unmarked "added" line reads as text.
    result = parse(write(tmp_path / "export.txt", TRIP.read_text(encoding="utf-8")))
    assert result.threads[0].title == "export"
    assert ("Trip Planning", "Ines Duarte added Tom Brennan", datetime(2023, 12, 28, 18, 0, 6)) in said(result)


# --- iPhone en-US one-to-one: U+202F before PM, <attached: ...>, events a person might type ----------------
def test_iphone_us_one_to_one_with_attached_media():
    result = parse(MAYA)
    assert said(result) == [
        ("Maya Chen", "Did you get home ok?", datetime(2023, 12, 29, 20, 2, 11)),
        ("Leo Park", "Yes! Just now", datetime(2023, 12, 29, 20, 5, 40)),
        ("Maya Chen", "The view from your balcony 😍", datetime(2023, 12, 29, 20, 18, 2)),
        ("Leo Park", "Sorry, I was in the shower", datetime(2023, 12, 29, 20, 31, 15)),
        # "... left" and "... added ..." typed by the other person (the chat's title) stay messages
        ("Maya Chen", "No worries, I left", datetime(2023, 12, 29, 20, 32)),
        ("Maya Chen", "I added you to the shared album", datetime(2023, 12, 30, 0, 10, 5)),
    ]
    # encryption notice attributed to Maya, missed voice call; the <attached: ...> photo
    assert result.skipped == Counter({"system": 2, "media-placeholder": 1})


# --- iPhone de-DE group: German system wording --------------------------------------------------------------
def test_iphone_german_system_events_with_and_without_lrm():
    result = parse(SKAT)
    assert said(result) == [
        ("Uwe Kramer", "Freitag 19 Uhr bei mir?", datetime(2023, 12, 29, 20, 1)),
        ("Petra Vogel", "Passt!", datetime(2023, 12, 29, 20, 2, 11)),
        ("Jan Sommer", "Ich bin dabei\nBringe Bier mit", datetime(2023, 12, 29, 20, 4)),
    ]
    # encryption, "hat die Gruppe ... erstellt", "hinzugefügt", "Sicherheitsnummer", "Gruppenbild geändert"
    # (no U+200E), "Petra Vogel: Petra Vogel hat die Gruppe verlassen" (no U+200E, the actor is the sender)
    assert result.skipped == Counter({"system": 6, "media-placeholder": 1, "deleted": 1})


@pytest.mark.parametrize("text", [
    "Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read "
    "or listen to them.",
    "Messages to this group are now secured with end-to-end encryption. Tap for more info.",
    "Dana created group “Hikers”",
    "Dana changed the subject from “Hikers” to “Hikers: Alps”",
    "Dana changed the group name to “Alps”",
    "Dana changed this group's icon",
    "Dana deleted this group's icon",
    "Dana changed the group description",
    "Dana changed this group's settings to allow only admins to send messages to this group",
    "Your security code with Marco changed. Tap to learn more.",
    "Marco's security code changed. Tap to learn more.",
    "Marco joined using this group's invite link",
    "You're now an admin",
    "Missed voice call",
    "Missed video call, Tap to call back",
    "Marco changed their phone number to a new number. Tap to message or add the new number.",
    "You blocked this contact. Tap to unblock.",
    "This chat is with a business account. Tap for more info.",
    "Dana turned on disappearing messages. New messages will disappear from this chat 7 days after they're sent.",
    "Dana pinned a message",
    "Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt. Niemand außerhalb dieses Chats kann sie lesen.",
    "Uwe hat die Gruppe „Skatrunde“ erstellt",
    "Du hast den Betreff von „Skat“ zu „Skatrunde“ geändert",
    "Uwe hat die Gruppenbeschreibung geändert",
    "Uwe hat das Gruppenbild gelöscht",
    "Deine Sicherheitsnummer für Jan hat sich geändert. Tippe, um mehr zu erfahren.",
    "Jan ist der Gruppe über den Einladungslink beigetreten",
    "Du bist jetzt ein Admin",
    "Verpasster Sprachanruf",
    "Los mensajes y las llamadas están cifrados de extremo a extremo. Nadie fuera de este chat puede leerlos.",
    "Lucía creó el grupo “Comidas”",
    "Lucía cambió el asunto de “Comidas” a “Comidas: junio”",
    "Cambiaste el ícono de este grupo",
    "Lucía cambió la descripción del grupo",
    "Tu código de seguridad con Carmen cambió. Toca para obtener más información.",
    "Carmen se unió usando el enlace de invitación de este grupo",
    "Ahora eres admin",
    "Llamada perdida",
])
def test_system_wording_without_lrm_from_a_person_is_system(tmp_path, text):
    # A one-to-one chat (the title is a sender, but there is only one other): no group rule, no U+200E.
    result = parse_text(tmp_path, f"[1/2/24, 9:00:00 AM] Dana: {text}\r\n[1/2/24, 9:01:00 AM] Marco: ok\r\n",
                        name="WhatsApp Chat - Dana.txt")
    assert result.skipped == Counter({"system": 1}), text


@pytest.mark.parametrize("text", [
    "I changed the subject, sorry",                    # no quoted subject
    "Missed your call, will ring back",
    "Marco left",                                      # an event, but no U+200E and Marco is not the sender
    "You added way too much salt",
    "Uwe hat Kuchen hinzugefügt",
    "Carmen salió del grupo de teatro",
])
def test_lookalike_wording_from_a_person_is_kept(tmp_path, text):
    result = parse_text(tmp_path, f"[1/2/24, 9:00:00 AM] Dana: {text}\r\n", name="WhatsApp Chat - Dana.txt")
    assert said(result) == [("Dana", text, datetime(2024, 1, 2, 9))]


# --- other locales ---------------------------------------------------------------------------------------------
def test_iphone_year_first():
    assert said(parse(KENJI)) == [
        ("Kenji Watanabe", "Are we still on for Friday?", datetime(2018, 6, 13, 21, 25, 15)),
        ("Ruth Adler", "Yes, 7pm at the usual place", datetime(2018, 6, 13, 21, 26, 2)),
        ("Kenji Watanabe", "👍", datetime(2018, 6, 14, 8, 3, 44)),
    ]


def test_android_finnish_klo_with_dotted_time():
    assert said(parse(AINO)) == [
        ("Aino Virtanen", "Moi! Lähdetkö saunaan?", datetime(2018, 6, 13, 21, 25, 15)),
        ("Mikko Laine", "Joo, tunnin päästä", datetime(2018, 6, 13, 21, 26, 40)),
        ("Aino Virtanen", "Kiitos illasta!", datetime(2018, 6, 14, 8, 5)),
    ]


def test_android_spanish_p_m_with_nbsp_and_ambiguous_dates_fall_back_to_day_first():
    # No field above 12 and nothing goes down: the Spanish "p. m." locale means day/month/year.
    result = parse(LUCIA)
    assert said(result) == [
        ("Lucía Fernández", "¿Comemos juntas mañana?", datetime(2018, 6, 3, 13, 55)),
        ("Carmen Ortiz", "¡Sí! A las 2", datetime(2018, 6, 3, 13, 57)),
        ("Lucía Fernández", "Perfecto, nos vemos", datetime(2018, 6, 4, 9, 15)),   # <Se editó este mensaje.>
        ("Carmen Ortiz", "Ya llegué", datetime(2018, 6, 4, 12, 5)),
    ]
    assert result.skipped == Counter({"system": 1, "media-placeholder": 1, "deleted": 1})
    assert result.threads[0].title == "Carmen Ortiz"


def test_android_with_media_keeps_captions_and_drops_file_lines():
    result = parse(BOOK_CLUB)
    assert said(result) == [
        ("Priya Nair", "The quote from chapter 3 that got me", datetime(2021, 4, 28, 14, 6)),
        ("Sam Okafor", "Next month is on there, page 2", datetime(2021, 4, 28, 14, 9)),
        ("Grace Liu", "Sorry, voice note, my hands are full", datetime(2021, 4, 28, 14, 11)),
    ]
    # photo without caption, document (its name repeated under it is no caption), voice note
    assert result.skipped == Counter({"media-placeholder": 3})


def test_a_caption_under_a_file_line_marked_with_u200e_is_the_person_s_text():
    result = parse(ALLOTMENT)
    assert said(result) == [
        ("Rosa Lindqvist", "First tomatoes of the year!", datetime(2022, 4, 14, 9, 12)),
        ("Tomás Herrera", "Mine are still tiny", datetime(2022, 4, 14, 9, 16)),
        ("Rosa Lindqvist", "The hedgehog is back\nunder the shed", datetime(2022, 4, 14, 9, 21)),
        ("Tomás Herrera", "Ha, brilliant", datetime(2022, 4, 14, 9, 25)),
    ]
    # the photo without caption, the document whose name is repeated under it; nothing taken as system
    assert result.skipped == Counter({"media-placeholder": 2})


@pytest.mark.parametrize("file_line", [f"{LRM}IMG-20150405-WA0002.jpg (Datei angehängt)",
                                       f"{LRM}Einkaufsliste.pdf (Datei angehängt)"])
def test_a_german_caption_under_a_marked_file_line_is_kept(tmp_path, file_line):
    result = parse_text(tmp_path, f"05.04.15, 10:00 - Hanne Vogt: {file_line}\nIch bringe Kuchen mit\n"
                                  "05.04.15, 10:02 - Jörg Brandt: Prima\n")
    assert [text for _, text, _ in said(result)] == ["Ich bringe Kuchen mit", "Prima"]
    assert result.skipped == Counter()


def test_old_iphone_attached_marker_is_a_media_placeholder():
    result = parse(BRANDT)
    assert said(result) == [
        ("Hanne Vogt", "Schau mal, der Kirschbaum blüht", datetime(2015, 8, 4, 14, 12, 3)),
        ("Jörg Brandt", "Unserer auch!", datetime(2015, 8, 4, 14, 13, 30)),
    ]
    assert result.skipped == Counter({"media-placeholder": 2})


# --- the .zip "Export chat" shares ---------------------------------------------------------------------------
def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_iphone_export_zip_is_detected_and_its_chat_txt_read():
    assert detect(Source(LOTTE_ZIP)).name == "whatsapp"
    result = parse(LOTTE_ZIP)
    assert said(result) == [
        ("Lotte de Vries", "Did the bike shop call you back?", datetime(2024, 5, 2, 18, 40, 12)),
        ("Sem Bakker", "Not yet\nI'll try again tomorrow", datetime(2024, 5, 2, 18, 42, 55)),
        ("Lotte de Vries", "That wheel looks beyond saving", datetime(2024, 5, 2, 18, 44, 1)),
    ]
    assert result.skipped == Counter({"system": 1, "media-placeholder": 1})
    [thread] = result.threads
    assert (thread.key, thread.title) == (f"whatsapp:{LOTTE_ZIP.resolve()}!_chat.txt", "Lotte de Vries")
    assert result.notes == ["1 other file in the zip not read (media, attachments): "
                            "00000004-PHOTO-2024-05-02-18-43-30.jpg"]
    corpus = load_corpus([LOTTE_ZIP])
    assert (corpus.files[0].format, corpus.files[0].messages) == ("whatsapp", 3)


def test_android_zip_reads_the_chat_txt_not_the_media_nor_a_sent_document(tmp_path):
    chat = "14/04/2022, 09:12 - Rosa Lindqvist: Sowing day\n14/04/2022, 09:13 - Tomás Herrera: On my way\n"
    path = write_zip(tmp_path / "export (2).zip", {
        "WhatsApp Chat with Allotment Friends.txt": chat.encode(),
        "IMG-20220414-WA0007.jpg": b"\xff\xd8 photo",
        "Seed list.txt": b"carrots, beans",   # a document sent in the chat
        "__MACOSX/._WhatsApp Chat with Allotment Friends.txt": b"\x00\x05",
    })
    assert detect(Source(path)).name == "whatsapp"
    result = parse(path)
    assert [text for _, text, _ in said(result)] == ["Sowing day", "On my way"]
    assert result.threads[0].title == "Allotment Friends"
    assert result.notes == ["3 other files in the zip not read (media, attachments): "
                            "IMG-20220414-WA0007.jpg, Seed list.txt, __MACOSX/._WhatsApp Chat with Allotment Friends.txt"]


def test_a_zip_whose_txt_has_another_name_takes_the_title_from_the_zip(tmp_path):
    chat = "[02/05/2024, 18:40:12] Lotte de Vries: hoi\r\n[02/05/2024, 18:41:00] Sem Bakker: hoi!\r\n"
    path = write_zip(tmp_path / "WhatsApp Chat - Sem Bakker.zip", {"chat.txt": chat.encode()})
    assert get("whatsapp").sniff(Source(path)) == 0.0   # nothing named as WhatsApp names it: not claimed
    result = parse(path)                                # but read when --format whatsapp says so
    assert result.threads[0].title == "Sem Bakker" and len(said(result)) == 2


def test_zip_errors_name_the_zip_and_the_member(tmp_path):
    photos = write_zip(tmp_path / "photos.zip", {"IMG-1.jpg": b"\xff\xd8"})
    assert get("whatsapp").sniff(Source(photos)) == 0.0
    error = error_of(photos)
    assert (error.path, error.message) == (str(photos), 'no WhatsApp chat in this zip (no _chat.txt, no '
                                                        '"WhatsApp Chat with NAME.txt", no .txt file at all)')
    broken = write_zip(tmp_path / "WhatsApp Chat - Dana.zip",
                       {"_chat.txt": b"[02/05/2024, 18:40:12] Dana: hi\r\n[02/05/2024, 18:41:00] Dana: caf\xe9\r\n"})
    error = error_of(broken)
    assert (error.path, error.where) == (f"{broken}!_chat.txt", "line 2")
    assert "not UTF-8" in error.message
    bad_header = write_zip(tmp_path / "WhatsApp Chat - Eli.zip",
                           {"_chat.txt": b"[02/05/2024, 18:40:12] Eli: a\r\n[02/05/2024, 25:41:00] Eli: b\r\n"})
    result = parse(bad_header)
    assert result.notes[0].startswith("skipped 1 message in _chat.txt whose header is no possible date or time")


def test_a_folder_named_with_format_whatsapp_reads_each_txt_as_before(tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    shutil.copy(HIKING, folder / HIKING.name)
    shutil.copy(BERGER, folder / BERGER.name)
    (folder / "IMG-1.jpg").write_bytes(b"\xff\xd8")
    assert get("whatsapp").sniff(Source(folder)) == 0.0   # detection walks folders file by file
    walked = load_corpus([folder])
    forced = load_corpus([folder], format="whatsapp")
    assert [(c.id, len(c.messages)) for c in forced.conversations] == \
        [(c.id, len(c.messages)) for c in walked.conversations]
    assert {c.title for c in forced.conversations} == {"Hiking Crew", "Familie Berger"}


# --- day/month inference -----------------------------------------------------------------------------------
def test_field_above_12_settles_the_order(tmp_path):
    us = parse_text(tmp_path, "1/2/24, 9:00 AM - Dana: a\n1/13/24, 9:00 AM - Dana: b\n")
    assert [m.timestamp for m in messages(us)] == [datetime(2024, 1, 2, 9), datetime(2024, 1, 13, 9)]
    gb = parse_text(tmp_path, "1/2/24, 9:00 AM - Dana: a\n13/2/24, 9:00 AM - Dana: b\n")
    assert [m.timestamp for m in messages(gb)] == [datetime(2024, 2, 1, 9), datetime(2024, 2, 13, 9)]


def test_chronology_settles_the_order_against_the_locale_hint(tmp_path):
    # Upper-case AM with "/" hints en-US, but the first field goes down within 2018: it is the day.
    day_first = parse_text(tmp_path, "5/6/18, 10:00 AM - Dana: a\n1/7/18, 10:00 AM - Dana: b\n")
    assert [m.timestamp for m in messages(day_first)] == [datetime(2018, 6, 5, 10), datetime(2018, 7, 1, 10)]
    # "." hints day first, but here the second field goes down: month first.
    month_first = parse_text(tmp_path, "6.5.18, 10:00 - Dana: a\n7.1.18, 10:00 - Dana: b\n")
    assert [m.timestamp for m in messages(month_first)] == [datetime(2018, 6, 5, 10), datetime(2018, 7, 1, 10)]


@pytest.mark.parametrize("header, expected", [
    ("1/2/24, 9:00 AM - ", datetime(2024, 1, 2, 9)),                 # en-US: month first
    (f"1/2/24, 9:00{NNBSP}PM - ", datetime(2024, 1, 2, 21)),          # en-US, newer build
    ("1/2/24, 9:00 pm - ", datetime(2024, 2, 1, 21)),                 # en-GB/AU/IN lower-case pm: day first
    ("1/2/24, 21:00 - ", datetime(2024, 2, 1, 21)),                   # 24-hour clock with "/": day first
    ("1.2.24, 21:00 - ", datetime(2024, 2, 1, 21)),                   # "." : day first
    ("01-02-2024 21:00 - ", datetime(2024, 2, 1, 21)),                # nl: day first
    ("2024-01-02 21:00 - ", datetime(2024, 1, 2, 21)),                # year first: year/month/day
    ("[1/2/24, 9:00:05 AM] ", datetime(2024, 1, 2, 9, 0, 5)),
    ("[5.1.2024 9.00.05] ", datetime(2024, 1, 5, 9, 0, 5)),           # no comma between date and time
])
def test_fully_ambiguous_files_follow_the_locale(tmp_path, header, expected):
    result = parse_text(tmp_path, f"{header}Dana: hi\n")
    assert said(result) == [("Dana", "hi", expected)]


# --- senders and texts -------------------------------------------------------------------------------------
def test_unsaved_contact_tilde_name_and_bidi_marks(tmp_path):
    result = parse_text(tmp_path, "29.12.23, 20:00 - ~\u202fSam Okafor: Hallo\n"
                                  "29.12.23, 20:01 - \u202a+49 151 23456789\u202c: Wer ist Sam?\n"
                                  "29.12.23, 20:02 - Jonas: Ein Freund\n")
    assert [(m.speaker, m.speaker_aliases) for m in messages(result)] == [
        ("Sam Okafor", ("~\u202fSam Okafor",)), ("+49 151 23456789", ()), ("Jonas", ())]
    assert parse_text(tmp_path, "29.12.23, 20:00 - ~\u202fSam Okafor: Hallo\n",
                      bot_names=frozenset({"~\u202fsam okafor"})).skipped == Counter({"bot": 1})


def test_empty_undecrypted_location_and_generated_texts(tmp_path):
    result = parse_text(tmp_path, "\n".join([
        "[1/2/24, 9:00:00 AM] Dana: ",
        "[1/2/24, 9:00:01 AM] Dana: Waiting for this message. This may take a while.",
        f"[1/2/24, 9:00:02 AM] Dana: {LRM}Location: https://maps.google.com/?q=60.167850,24.952965",
        f"[1/2/24, 9:00:03 AM] Dana: {LRM}POLL:",                        # generated, unknown: system
        "[1/2/24, 9:00:04 AM] Dana: This message was deleted by admin Marco",
        f"[1/2/24, 9:00:05 AM] Dana: {LRM}Contact card omitted",
        "[1/2/24, 9:00:06 AM] Dana: image omitted from the report, sorry",   # words, not a placeholder
    ]) + "\r\n")
    assert said(result) == [("Dana", "image omitted from the report, sorry", datetime(2024, 1, 2, 9, 0, 6))]
    assert result.skipped == Counter({"empty": 1, "unsupported": 1, "media-placeholder": 2, "system": 1,
                                      "deleted": 1})


def test_title_from_android_second_download_name(tmp_path):
    result = parse_text(tmp_path, "1/2/24, 9:00 AM - Dana: hi\n",
                        name="WhatsApp Chat with Dana Whitfield (1).txt")
    assert result.threads[0].title == "Dana Whitfield"


def test_bom_and_leading_blank_lines_are_ignored(tmp_path):
    result = parse_text(tmp_path, "\ufeff\n\n1/2/24, 9:00 AM - Dana: hi\n")
    assert said(result) == [("Dana", "hi", datetime(2024, 1, 2, 9))]


# --- bad input ---------------------------------------------------------------------------------------------
def test_no_header_names_the_first_line():
    error = error_of(BAD / "not a chat.txt")
    assert error.where == "line 1"
    assert error.message == "no WhatsApp message header found; the first line is 'Shopping list'"
    assert get("whatsapp").sniff(Source(BAD / "not a chat.txt")) == 0.0


def test_text_before_the_first_header_is_an_error():
    error = error_of(BAD / "starts mid-message.txt")
    assert error.where == "line 1"
    assert error.message == ("does not start with a WhatsApp message header; "
                             "the first line is 'and that is why I never go there'")


def test_hour_zero_on_a_12_hour_clock_is_read_as_just_after_midnight():
    # Spanish-style "a. m." phones write the hour after midnight as 00 where others write 12.
    result = parse(FIXTURES / "WhatsApp Chat with Diego Marín.txt")
    assert [stamp for _, _, stamp in said(result)] == [
        datetime(2022, 3, 17, 23, 52), datetime(2022, 3, 17, 23, 58), datetime(2022, 3, 18, 0, 8),
        datetime(2022, 3, 18, 0, 30), datetime(2022, 3, 18, 1, 15)]
    assert result.skipped == Counter() and result.notes == []


def test_one_impossible_date_skips_that_message_names_its_line_and_keeps_the_chat():
    result = parse(BAD / "month 13.txt")
    assert [text for _, text, _ in said(result)] == ["First", "Second", "Third"]
    assert result.skipped == Counter({"bad-header": 1})
    assert result.notes == [
        "skipped 1 message whose header is no possible date or time (bad-header): line 4: impossible date in "
        "the message header '13/05/24, 9:03 PM': month 13, day 5 (the file's dates are month/day/year); "
        "fix or remove that line to keep it"]


def test_impossible_times_are_skipped_with_their_lines(tmp_path):
    result = parse_text(tmp_path, "29.12.23, 20:00 - Jonas: a\n29.12.23, 24:10 - Jonas: b\nmore of b\n"
                                  "29.12.23, 20:02 - Jonas: c\n29.12.23, 20:61 - Jonas: d\n29.12.23, 20:04 - Jonas: e\n")
    assert [text for _, text, _ in said(result)] == ["a", "c", "e"]
    assert result.skipped == Counter({"bad-header": 2})
    [note] = result.notes
    assert note.startswith("skipped 2 messages whose header is no possible date or time (bad-header): "
                           "line 2: impossible time in the message header '29.12.23, 24:10'; "
                           "line 5: impossible time in the message header '29.12.23, 20:61'")
    result = parse_text(tmp_path, "1/2/24, 9:00 AM - Dana: a\n1/2/24, 13:00 PM - Dana: b\n")
    assert [text for _, text, _ in said(result)] == ["a"]


def test_a_note_names_the_first_bad_lines_and_counts_the_rest(tmp_path):
    good = "".join(f"29.12.23, 20:{m:02d} - Jonas: fine {m}\n" for m in range(30))
    bad = "".join(f"29.12.23, 25:{m:02d} - Jonas: odd {m}\n" for m in range(12))
    result = parse_text(tmp_path, good + bad)
    assert len(said(result)) == 30 and result.skipped == Counter({"bad-header": 12})
    [note] = result.notes
    assert "line 40:" in note and "line 41:" not in note and note.endswith("; and 2 more; fix or remove those "
                                                                           "lines to keep them")


def test_a_file_whose_headers_are_mostly_impossible_is_an_error():
    error = error_of(BAD / "mostly impossible headers.txt")
    assert error.where == "line 2"
    assert error.message == ("impossible date in the message header '13/28/23, 9:01 PM': month 13, day 28 (the "
                             "file's dates are month/day/year); 3 of the 4 message headers are no possible date "
                             "or time")


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "WhatsApp Chat with Nobody.txt"
    path.write_bytes(content)
    error = error_of(path)
    assert error.message == "the file is empty"


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "WhatsApp Chat with Dana.txt"
    path.write_bytes(b"1/2/24, 9:00 AM - Dana: hi\n1/2/24, 9:01 AM - Dana: caf\xe9\n")
    error = error_of(path)
    assert error.where == "line 2"
    assert "not UTF-8" in error.message
