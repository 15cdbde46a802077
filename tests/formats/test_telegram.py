"""The Telegram Desktop importer, on hand-written result.json files laid out exactly as tdesktop writes them."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from training import formats
from training.conversation import Message, sort_key
from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult, Source
from training.formats.telegram import TelegramImporter
from training.loader import load_corpus

CET = timezone(timedelta(hours=1))
CEST = timezone(timedelta(hours=2))


@pytest.fixture
def tg_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "telegram"


def parse(path: Path, options: ImportOptions | None = None) -> ParseResult:
    return TelegramImporter().parse(Source(path), options or ImportOptions())


def messages(result: ParseResult, key: str) -> list[Message]:
    [thread] = [t for t in result.threads if t.key == key]
    return [m for m in thread.items if isinstance(m, Message)]


def write(tmp_path: Path, obj: object, name: str = "result.json") -> Path:
    """A file in tdesktop's layout (1-space indentation, raw UTF-8)."""
    path = tmp_path / name
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def chat(*msgs: dict, chat_type: str = "personal_chat", chat_id: int = 100202) -> dict:
    return {"name": "Tobias Reinholt", "type": chat_type, "id": chat_id, "messages": list(msgs)}


def message(msg_id: int = 1, **fields: object) -> dict:
    base = {"id": msg_id, "type": "message", "date": "2024-03-30T18:00:00", "date_unixtime": "1711818000",
            "from": "Marta Kowalczyk", "from_id": "user100201", "text": "hello", "text_entities": []}
    base.update(fields)
    return base


# --- detection ----------------------------------------------------------------------------------------------
def test_account_export_is_recognised_when_chats_start_beyond_the_sniffed_head(tmp_path: Path) -> None:
    # Real account exports list contacts, sessions... before the chats; the head may hold none of them.
    contacts = [{"user_id": 200000 + i, "first_name": f"Person{i}", "last_name": "Example",
                 "phone_number": "+49 30 5550 0000", "date": "2023-05-02T09:14:07",
                 "date_unixtime": "1683011647"} for i in range(900)]
    account = {"about": "Here is the data you requested.",
               "personal_information": {"user_id": 100201, "first_name": "Marta", "last_name": "Kowalczyk",
                                        "phone_number": "+49 30 5550 0001"},
               "contacts": {"about": "This is your contact list.", "list": contacts},
               "chats": {"about": "This page lists all chats from this export.",
                         "list": [chat(message(text="far down the file"))]}}
    path = write(tmp_path, account)
    source = Source(path)
    assert b'"messages"' not in source.head()
    assert TelegramImporter().sniff(source) == 0.85
    assert formats.detect(source).name == "telegram"
    assert [m.text for m in messages(parse(path), "telegram:100202")] == ["far down the file"]


def test_sniff_ignores_other_json(fixtures_dir: Path, tmp_path: Path) -> None:
    importer = TelegramImporter()
    assert importer.sniff(Source(fixtures_dir / "messenger" / "message_1.json")) == 0.0
    plain = write(tmp_path, {"messages": [{"id": 1, "type": "note", "text": "hi"}]}, "other.json")
    assert importer.sniff(Source(plain)) == 0.0


# --- the single-chat export -----------------------------------------------------------------------------------
def test_single_chat_speakers_and_plain_texts(tg_dir: Path) -> None:
    result = parse(tg_dir / "result.json")
    [thread] = result.threads
    assert (thread.key, thread.title) == ("telegram:987654321", "Allotment Crew 🌱")
    assert [(m.id, m.speaker, m.text) for m in messages(result, "telegram:987654321")] == [
        ("2", "Marta Kowalczyk", "Welcome to the plot chat! Seeds arrive Saturday."),
        # an array of plain runs and a bold entity; the line break inside the message stays
        ("3", "Tobias Reinholt", "Great, I'll bring the big watering can.\nAnd snacks 🍪"),
        # a text_link keeps its visible words only (no href), a mention its @name
        ("4", "Inès Château", "Planting guide: this one — @tobias_r read it"),
        ("6", "Marta Kowalczyk", "Our beds after weeding"),  # a photo's caption is kept
        ("9", "Deleted Account", "Is the shed key still under the pot?"),  # "from": null
        ("12", "PlotBot", "Reminder: water the tomatoes."),  # not flagged: Telegram has no bot flag
        ("18", "Marta Kowalczyk", "Harvest party 🎉 on the 20th, bring the secret cake"),  # custom_emoji, spoiler
        ("19", "Inès Château", "Deal.\nI'll bake two."),  # an escaped U+2028 becomes a line break
        ("20", "Tobias Reinholt", "Can't sleep, checking the frost."),
        ("21", "Marta Kowalczyk", "Go to bed, the fleece is on."),
        ("22", "Inès Château", "Morning! Tomatoes survived 🍅"),
        ("24", "Tobias Reinholt", "Same plan as the seed swap group then."),
    ]
    assert not any("example.org" in m.text for m in messages(result, "telegram:987654321"))


def test_single_chat_skips_are_counted_by_reason(tg_dir: Path) -> None:
    result = parse(tg_dir / "result.json")
    assert result.skipped == Counter({
        "attachment-only": 6,  # photo, sticker, voice message, poll, contact, location without text
        "system": 3,           # create_group, pin_message, phone_call
        "forwarded": 1,        # forwarded_from "Garden News"
        "bot": 1,              # sent via @gif
        "unsupported": 1,      # {"id": 16, "type": "unsupported"}
    })
    assert result.kept == 12


def test_speaker_ids_and_the_deleted_account(tg_dir: Path) -> None:
    by_id = {m.id: m for m in messages(parse(tg_dir / "result.json"), "telegram:987654321")}
    assert by_id["2"].speaker_id == "user100201"
    assert (by_id["9"].speaker, by_id["9"].speaker_id) == ("Deleted Account", "user100299")
    assert all(m.speaker_aliases == () for m in by_id.values())


def test_reply_ids_and_replies_into_other_chats(tg_dir: Path) -> None:
    by_id = {m.id: m for m in messages(parse(tg_dir / "result.json"), "telegram:987654321")}
    assert by_id["4"].reply_to == "2"
    assert by_id["21"].reply_to == "20"
    assert by_id["2"].reply_to is None
    # reply_to_peer_id names another chat: message 777 is not in this thread
    assert by_id["24"].reply_to is None


def test_timestamps_carry_the_exporters_offset_across_dst(tg_dir: Path) -> None:
    by_id = {m.id: m for m in messages(parse(tg_dir / "result.json"), "telegram:987654321")}
    assert by_id["2"].timestamp == datetime(2024, 3, 30, 18, 1, 12, tzinfo=CET)
    assert by_id["2"].timestamp.utcoffset() == timedelta(hours=1)
    # Berlin moved to summer time at 02:00: the wall clock shows 75 minutes, the real gap is 15.
    assert by_id["20"].timestamp.isoformat() == "2024-03-31T01:50:00+01:00"
    assert by_id["21"].timestamp.isoformat() == "2024-03-31T03:05:00+02:00"
    assert by_id["21"].timestamp - by_id["20"].timestamp == timedelta(minutes=15)


def test_conversations_split_at_real_silences(tg_dir: Path) -> None:
    corpus = load_corpus([tg_dir / "result.json"])
    assert [[m.id for m in c.messages] for c in corpus.conversations] == [
        ["2", "3", "4", "6", "9", "12", "18", "19"], ["20", "21"], ["22", "24"]]
    assert corpus.conversations[0].title == "Allotment Crew 🌱"
    # With a one-hour gap the DST pair still belongs together (a naive clock would say 75 minutes).
    hourly = load_corpus([tg_dir / "result.json"], options=ImportOptions(conversation_gap=timedelta(hours=1)))
    assert [[m.id for m in c.messages] for c in hourly.conversations][1] == ["20", "21"]
    assert corpus.files[0].to_json() == {
        "path": str(tg_dir / "result.json"), "format": "telegram", "messages": 12,
        "skipped": {"attachment-only": 6, "bot": 1, "forwarded": 1, "system": 3, "unsupported": 1}, "notes": []}


def test_listed_bots_are_skipped_by_name_or_id(tg_dir: Path) -> None:
    for listed in ("plotbot", "user100250"):
        result = parse(tg_dir / "result.json", ImportOptions(bot_names=frozenset({listed})))
        assert result.skipped["bot"] == 2
        assert "PlotBot" not in {m.speaker for m in messages(result, "telegram:987654321")}


# --- the whole-account export ---------------------------------------------------------------------------------
def test_account_export_makes_one_thread_per_chat_including_left_chats(tg_dir: Path) -> None:
    result = parse(tg_dir / "account_result.json")
    assert [(t.key, t.title) for t in result.threads] == [
        ("telegram:100202", "Tobias Reinholt"),
        ("telegram:100250", "PlotBot"),
        ("telegram:100201", "Saved Messages"),  # saved messages have no "name"
        ("telegram:1600999888", "Garden News"),
        ("telegram:1700111222", "Seed Swap Berlin"),  # from left_chats
    ]
    assert result.skipped == Counter({"system": 2, "bot": 1, "forwarded": 1})
    # In a chat with a bot, the bot's own messages (from_id == user<chat id>) are the bot's.
    assert [m.text for m in messages(result, "telegram:100250")] == ["Will it freeze tonight?"]
    # Saved messages: the note is kept, the post saved from a channel is someone else's words.
    assert [m.text for m in messages(result, "telegram:100201")] == ["buy twine + fleece"]
    assert [(m.speaker, m.text, m.reply_to) for m in messages(result, "telegram:1700111222")] == [
        ("Jonas Weber", "Anyone have spare bean seeds?", None),
        ("Marta Kowalczyk", "I have runner beans, plenty.", "902")]


def test_signed_channel_posts_are_spoken_by_the_signer(tg_dir: Path) -> None:
    posts = messages(parse(tg_dir / "account_result.json"), "telegram:1600999888")
    assert [(m.speaker, m.speaker_id, m.text) for m in posts] == [
        ("Lena Fischer", None, "Frost warning for Sunday night."),
        ("Garden News", "channel1600999888", "Seed swap this Saturday, 10:00."),
    ]


def test_repeated_autumn_hour_keeps_true_order(tg_dir: Path) -> None:
    first, second, *_ = messages(parse(tg_dir / "account_result.json"), "telegram:100202")
    # 02:10 comes after 02:40 on the night the clocks go back: the offsets tell them apart.
    assert first.timestamp.isoformat() == "2024-10-27T02:40:00+02:00"
    assert second.timestamp.isoformat() == "2024-10-27T02:10:00+01:00"
    assert second.timestamp - first.timestamp == timedelta(minutes=30)
    assert sort_key(second.timestamp) > sort_key(first.timestamp)


def test_same_chat_from_a_single_and_an_account_export_merges_without_duplicates(tg_dir: Path) -> None:
    corpus = load_corpus([tg_dir / "account_result.json", tg_dir / "tobias_result.json"])
    tobias = [c for c in corpus.conversations if c.id.startswith("telegram:100202#")]
    assert [[m.id for m in c.messages] for c in tobias] == [["501", "502"], ["503", "504", "505", "506"]]
    assert tobias[1].messages[-1].text == "See you there 👋"
    single = corpus.files[1]
    assert (single.format, single.messages, dict(single.skipped)) == ("telegram", 2, {"duplicate": 2})


# --- older and unusual records --------------------------------------------------------------------------------
def test_export_without_unixtime_gives_naive_wall_clock_and_numeric_ids(tmp_path: Path) -> None:
    old = message(date="2019-05-10T18:02:18", from_id=4242, text="old build")
    del old["date_unixtime"]
    [msg] = messages(parse(write(tmp_path, chat(old))), "telegram:100202")
    assert msg.timestamp == datetime(2019, 5, 10, 18, 2, 18)
    assert msg.timestamp.tzinfo is None
    assert msg.speaker_id == "user4242"


def test_trimmed_chat_without_name_type_id_and_with_only_unixtime_is_detected_and_read(tg_dir: Path) -> None:
    # The layout other tools write for their tests: no chat header, no message ids, `date_unixtime` alone.
    path = tg_dir / "trimmed_result.json"
    assert formats.detect(Source(path)).name == "telegram"
    result = parse(path)
    [thread] = result.threads
    assert thread.key == f"telegram:{path.resolve()}"
    assert thread.title == "Telegram chat from trimmed_result.json"
    said = [(m.speaker, m.text, m.timestamp, m.id) for m in thread.items if isinstance(m, Message)]
    assert said == [
        ("Ines Albrecht", "Are you coming to the market on Saturday?",
         datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc), None),
        ("Bruno Salas", "Yes, with the van", datetime(2024, 6, 1, 10, 3, tzinfo=timezone.utc), None),
        ("Ines Albrecht", "Perfect, bring the crates", datetime(2024, 6, 1, 12, 5), None),  # `date` alone
    ]
    assert result.skipped == Counter({"system": 1, "attachment-only": 1})


def test_trimmed_account_export_without_chat_ids_is_detected_and_read(tg_dir: Path) -> None:
    path = tg_dir / "trimmed_account_result.json"
    assert formats.detect(Source(path)).name == "telegram"
    result = parse(path)
    assert [(t.key, t.title) for t in result.threads] == [
        (f"telegram:{path.resolve()}:chats.list[0]", "Market stall"),
        (f"telegram:{path.resolve()}:chats.list[1]", "Telegram chat from trimmed_account_result.json")]
    assert [m.text for m in messages(result, f"telegram:{path.resolve()}:chats.list[0]")] == [
        "Stall 14 again this week", "Good, it has shade"]
    corpus = load_corpus([path])
    assert [len(c.messages) for c in corpus.conversations] == [2, 1]


def test_message_with_neither_date_nor_unixtime_names_the_message(tmp_path: Path) -> None:
    undated = message(2)
    del undated["date"], undated["date_unixtime"]
    error = data_error(write(tmp_path, chat(message(1), undated)))
    assert (error.message, error.where) == ('missing field "date" (and "date_unixtime")', "$.messages[1]")


def test_unknown_types_empty_texts_and_hidden_forward_senders(tmp_path: Path) -> None:
    path = write(tmp_path, chat(
        message(1, type="story"),
        message(2, text=""),
        message(3, text=["  ", {"type": "bold", "text": " "}]),
        message(4, forwarded_from=None, text="forwarded from a hidden account"),
        message(5, text="kept"),
    ))
    result = parse(path)
    assert result.skipped == Counter({"unknown-type": 1, "empty": 2, "forwarded": 1})
    assert [m.text for m in messages(result, "telegram:100202")] == ["kept"]


# --- broken inputs --------------------------------------------------------------------------------------------
def data_error(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        parse(path)
    return caught.value


def test_truncated_download(tg_dir: Path) -> None:
    path = tg_dir / "bad" / "truncated_result.json"
    error = data_error(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert error.message.startswith("is not valid JSON")
    assert error.where == f"line {len(lines)}, column {len(lines[-1]) + 1}"
    assert "cut off" in error.hint


def test_unreadable_date_names_the_message(tg_dir: Path) -> None:
    error = data_error(tg_dir / "bad" / "bad_date_result.json")
    assert error.message == 'unreadable date "2024-02-30T18:01:00"'
    assert error.where == "$.messages[1].date"


def test_text_of_the_wrong_type(tg_dir: Path) -> None:
    error = data_error(tg_dir / "bad" / "text_number_result.json")
    assert error.message == "expected a string or an array, found a number"
    assert error.where == "$.messages[0].text"


def test_entity_without_text(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, chat(message(text=["see ", {"type": "link"}]))))
    assert error.message == 'missing field "text"'
    assert error.where == "$.messages[0].text[1]"


def test_entity_of_the_wrong_type(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, chat(message(text=["see ", 7]))))
    assert error.message == "expected a string or an entity object, found a number"
    assert error.where == "$.messages[0].text[1]"


def test_date_and_unixtime_that_disagree(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, chat(message(date="2024-03-30T18:00:00", date_unixtime="1611818000"))))
    assert error.message.startswith('date "2024-03-30T18:00:00" and date_unixtime "1611818000" disagree')
    assert error.where == "$.messages[0].date_unixtime"


def test_unixtime_that_is_not_a_number(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, chat(message(date_unixtime="soon"))))
    assert (error.message, error.where) == ('unreadable date_unixtime "soon"', "$.messages[0].date_unixtime")


def test_missing_sender_type_and_id_fields(tmp_path: Path) -> None:
    no_type = message()
    del no_type["type"]
    error = data_error(write(tmp_path, chat(message(1), no_type)))
    assert (error.message, error.where) == ('missing field "type"', "$.messages[1]")
    error = data_error(write(tmp_path, chat(message(**{"from": 12}))))
    assert (error.message, error.where) == ("expected a string or null, found a number", "$.messages[0].from")


def test_account_export_with_a_broken_chat_list(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, {"about": "x", "chats": {"about": "y", "list": {"0": {}}}}))
    assert (error.message, error.where) == ("expected an array, found an object", "$.chats.list")
    error = data_error(write(tmp_path, {"about": "x", "chats": {"about": "y", "list": [chat(message(), chat_id="7")]}}))
    assert (error.message, error.where) == ("expected a number, found a string", "$.chats.list[0].id")


def test_account_export_without_chats(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, {"about": "x", "personal_information": {"user_id": 1}}))
    assert (error.message, error.where) == ("this account export contains no chats", "$")


def test_json_that_is_not_a_telegram_export(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, {"hello": []}))
    assert (error.message, error.where) == ('not a Telegram export: no "messages" and no "chats"', "$")
    error = data_error(write(tmp_path, [1, 2]))
    assert (error.message, error.where) == ("expected an object, found an array", "$")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(b"")
    assert data_error(path).message == "the file is empty"
