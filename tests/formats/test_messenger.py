"""The Facebook Messenger importer, on message_N.json files written as Facebook writes them (pure ASCII,
every string double-encoded and `\\u00XX`-escaped, messages newest first)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from training import formats
from training.conversation import Message
from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult, Source
from training.formats.messenger import MessengerImporter, fix_mojibake
from training.loader import load_corpus

UTC = timezone.utc
THREAD = "hedgehogrescuecrew_8f3k2j1q9a"


@pytest.fixture
def fb_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "messenger"


@pytest.fixture
def thread_dir(fb_dir: Path) -> Path:
    return fb_dir / "inbox" / THREAD


def parse(path: Path, options: ImportOptions | None = None) -> ParseResult:
    return MessengerImporter().parse(Source(path), options or ImportOptions())


def texts(result: ParseResult) -> list[tuple[str, str]]:
    [thread] = result.threads
    return [(m.speaker, m.text) for m in thread.items if isinstance(m, Message)]


def mojibake(text: str) -> str:
    """What Facebook does to every string."""
    return text.encode("utf-8").decode("latin-1")


def write_thread(path: Path, messages: list[dict], **top: object) -> Path:
    """A message_N.json as Facebook writes it: 2-space indentation, pure ASCII, mojibake strings."""
    thread = {"participants": [{"name": mojibake("Zoë Lindqvist")}, {"name": "Ravi Menon"}],
              "messages": messages, "title": "Ravi Menon", "is_still_participant": True,
              "thread_type": "Regular", "thread_path": "inbox/ravimenon_5tq8wz3k1m", "magic_words": []}
    thread.update(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(thread, indent=2, ensure_ascii=True), encoding="ascii")
    return path


def entry(ms: int, content: str | None = "hi", sender: str = "Ravi Menon", **fields: object) -> dict:
    msg: dict = {"sender_name": mojibake(sender), "timestamp_ms": ms}
    if content is not None:
        msg["content"] = mojibake(content)
    msg.update(fields)
    return msg


# --- mojibake -------------------------------------------------------------------------------------------------
def test_fix_mojibake_repairs_double_encoded_strings() -> None:
    assert fix_mojibake("Jos\u00c3\u00a9") == "José"
    assert fix_mojibake("\u00f0\u009f\u0098\u00a2") == "😢"
    assert fix_mojibake("plain ascii") == "plain ascii"


def test_fix_mojibake_keeps_strings_it_cannot_repair() -> None:
    # A real U+201C cannot be encoded as Latin-1 (Chatistics #65) ...
    assert fix_mojibake("\u201cback for good\u201d") == "\u201cback for good\u201d"
    # ... and a plain Latin-1 "é" is not UTF-8 once re-read.
    assert fix_mojibake("caf\u00e9") == "caf\u00e9"


def test_fixture_files_are_pure_ascii_with_mojibake_escapes(fb_dir: Path, thread_dir: Path) -> None:
    raw = (thread_dir / "message_2.json").read_bytes()
    assert raw.isascii()
    assert b'"name": "Bj\\u00c3\\u00b6rn \\u00c3\\u0085kesson"' in raw
    # Reaction emoji are double-encoded like everything else.
    data = json.loads(raw)
    [reaction] = [r for m in data["messages"] for r in m.get("reactions", [])]
    assert (fix_mojibake(reaction["reaction"]), fix_mojibake(reaction["actor"])) == ("😢", "Björn Åkesson")
    assert b"\\u201c" in (fb_dir / "message_1.json").read_bytes()


# --- detection ------------------------------------------------------------------------------------------------
def test_a_thread_folder_is_read_file_by_file(thread_dir: Path) -> None:
    # Not an archive format: a named folder is walked and each message_N.json detected on its own.
    assert formats.detect(Source(thread_dir)) is None
    corpus = load_corpus([thread_dir])
    assert [(Path(f.path).name, f.format) for f in corpus.files] == [
        ("message_1.json", "messenger"), ("message_2.json", "messenger")]


def test_sniff_ignores_other_json(fixtures_dir: Path, tmp_path: Path) -> None:
    importer = MessengerImporter()
    assert importer.sniff(Source(fixtures_dir / "telegram" / "result.json")) == 0.0
    other = tmp_path / "other.json"
    other.write_text('{"messages": [{"author": "x", "timestamp": "2024-01-01T00:00:00"}]}')
    assert importer.sniff(Source(other)) == 0.0


# --- one file -------------------------------------------------------------------------------------------------
def test_older_part_texts_in_time_order_with_repaired_names(thread_dir: Path) -> None:
    result = parse(thread_dir / "message_2.json")
    assert texts(result) == [
        ("Olu Adeyemi", "Thanks! Found one in my garden 🦔"),  # Olu left: not in participants, still a speaker
        ("Björn Åkesson", "Bring it to the shed, it's warm there.\nI have a box."),
        ("Priya Raman", "Like this one?"),  # content with a photo is kept
        ("Zoë Lindqvist", "https://example.org/hedgehog-care"),  # a Share with content keeps the content
        ("Zoë Lindqvist", "Poor thing is so small 😢"),
    ]
    assert result.skipped == Counter({
        "attachment-only": 4,  # a photo, a sticker, a Share without content, "Olu sent an attachment."
        "system": 2,           # Subscribe, Call
    })


def test_newer_part_texts_and_skips(thread_dir: Path) -> None:
    result = parse(thread_dir / "message_1.json")
    assert texts(result) == [
        ("Zoë Lindqvist", "Update: the hedgehog ate some cat food!"),
        ("Zoë Lindqvist", "Björn, can you name it?"),
        ("Björn Åkesson", "Let's call it Igelkott ✨"),
        ("Priya Raman", "Vet form attached, she weighs 410 g"),
    ]
    assert result.skipped == Counter({"attachment-only": 3, "system": 1})  # gif, audio, video; Unsubscribe


def test_messages_come_out_oldest_first_with_exact_utc_times(thread_dir: Path) -> None:
    path = thread_dir / "message_2.json"
    stamps = [m["timestamp_ms"] for m in json.loads(path.read_text())["messages"]]
    assert stamps == sorted(stamps, reverse=True)  # the file itself is newest first
    [thread] = parse(path).threads
    times = [m.timestamp for m in thread.items]
    assert times == sorted(times)
    assert times[0] == datetime(2023, 11, 4, 12, 1, 30, 417000, tzinfo=UTC)
    assert times[-1] == datetime(2023, 11, 4, 12, 7, tzinfo=UTC)


def test_thread_key_title_and_ids(thread_dir: Path) -> None:
    [thread] = parse(thread_dir / "message_2.json").threads
    assert (thread.key, thread.title) == (f"messenger:inbox/{THREAD}", "Hedgehog Rescue Crew 🦔")
    first = thread.items[0]
    assert first.id.startswith("1699099290417:Olu Adeyemi:")
    assert (first.speaker_id, first.reply_to, first.speaker_aliases) == (None, None, ())
    assert len({m.id for m in thread.items}) == len(thread.items)


def test_strings_that_cannot_be_repaired_are_kept_as_written(fb_dir: Path) -> None:
    result = parse(fb_dir / "message_1.json")
    assert texts(result) == [
        ("Ravi Menon", "Did you see the café reopened?"),
        ("Zoë Lindqvist", "Yes! Their sign says \u201cback for good\u201d"),
        ("Ravi Menon", "café au lait for me then"),
        ("Zoë Lindqvist", "See you there 👋"),
    ]
    assert result.threads[0].key == "messenger:inbox/ravimenon_5tq8wz3k1m"


# --- a thread in several files --------------------------------------------------------------------------------
def test_parts_of_a_thread_merge_and_split_into_conversations(thread_dir: Path) -> None:
    corpus = load_corpus([thread_dir])
    assert [c.id for c in corpus.conversations] == [f"messenger:inbox/{THREAD}#{n}" for n in (1, 2, 3)]
    assert [[m.text for m in c.messages] for c in corpus.conversations] == [
        ["Thanks! Found one in my garden 🦔", "Bring it to the shed, it's warm there.\nI have a box.",
         "Like this one?", "https://example.org/hedgehog-care", "Poor thing is so small 😢"],
        ["Update: the hedgehog ate some cat food!", "Björn, can you name it?", "Let's call it Igelkott ✨"],
        ["Vet form attached, she weighs 410 g"],
    ]
    assert {c.title for c in corpus.conversations} == {"Hedgehog Rescue Crew 🦔"}
    assert corpus.speakers() == Counter({"Zoë Lindqvist": 4, "Björn Åkesson": 2, "Priya Raman": 2,
                                         "Olu Adeyemi": 1})


def test_a_part_downloaded_twice_is_de_duplicated_by_thread_path(thread_dir: Path, tmp_path: Path) -> None:
    # A second download of the same thread, unpacked elsewhere: same thread_path, same messages.
    again = tmp_path / "second_download"
    again.mkdir()
    shutil.copy(thread_dir / "message_1.json", again / "message_1.json")
    corpus = load_corpus([thread_dir, again])
    assert len(corpus.conversations) == 3
    assert len(corpus.messages()) == 9
    assert (corpus.files[-1].path, corpus.files[-1].messages, dict(corpus.files[-1].skipped)) == (
        str(again / "message_1.json"), 0, {"attachment-only": 3, "duplicate": 4, "system": 1})


def test_thread_key_falls_back_to_the_folder(tmp_path: Path) -> None:
    inboxed = write_thread(tmp_path / "inbox" / "ravimenon_5tq8wz3k1m" / "message_1.json",
                           [entry(1707595200000)], thread_path=None)
    assert parse(inboxed).threads[0].key == "messenger:inbox/ravimenon_5tq8wz3k1m"
    loose = write_thread(tmp_path / "ravi" / "message_1.json", [entry(1707595200000)])
    data = json.loads(loose.read_text())
    del data["thread_path"]
    loose.write_text(json.dumps(data, indent=2))
    assert parse(loose).threads[0].key == "messenger:ravi"


# --- unusual records ------------------------------------------------------------------------------------------
def test_auto_texts_unsent_unknown_and_empty_messages(tmp_path: Path) -> None:
    path = write_thread(tmp_path / "message_1.json", [
        entry(1707595209000, "Mom sent a photo."),  # not the sender's name: a real sentence
        entry(1707595208000, "You sent a photo.", sender="Zoë Lindqvist", photos=[{"uri": "p.jpg"}]),
        entry(1707595207000, "Ravi sent an attachment."),
        entry(1707595206000, None),  # nothing at all
        entry(1707595205000, "   "),
        entry(1707595204000, "gone", is_unsent=True),
        entry(1707595203000, "paid you", type="Payment"),
        entry(1707595202000, "hello from nobody", sender=""),  # a deactivated account's empty name
        entry(1707595201000, "first"),
    ])
    result = parse(path)
    assert texts(result) == [("Ravi Menon", "first"), ("Facebook User", "hello from nobody"),
                             ("Ravi Menon", "Mom sent a photo.")]
    assert result.skipped == Counter({"attachment-only": 2, "empty": 2, "deleted": 1, "unknown-type": 1})


def test_listed_bots_are_skipped(fb_dir: Path) -> None:
    result = parse(fb_dir / "message_1.json", ImportOptions(bot_names=frozenset({"ravi menon"})))
    assert texts(result) == [("Zoë Lindqvist", "Yes! Their sign says \u201cback for good\u201d"),
                             ("Zoë Lindqvist", "See you there 👋")]
    assert result.skipped == Counter({"bot": 2})


def test_equal_timestamps_keep_the_order_they_were_said(tmp_path: Path) -> None:
    path = write_thread(tmp_path / "message_1.json", [entry(1707595200000, "second"),
                                                      entry(1707595200000, "first")])
    assert [t for _, t in texts(parse(path))] == ["first", "second"]


# --- broken inputs --------------------------------------------------------------------------------------------
def data_error(path: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        parse(path)
    return caught.value


def test_truncated_download(fb_dir: Path) -> None:
    path = fb_dir / "bad" / "truncated_message_1.json"
    error = data_error(path)
    lines = path.read_text().split("\n")
    assert error.message.startswith("is not valid JSON")
    assert error.where == f"line {len(lines)}, column {len(lines[-1]) + 1}"
    assert "cut off" in error.hint


def test_timestamp_of_the_wrong_type(fb_dir: Path) -> None:
    error = data_error(fb_dir / "bad" / "timestamp_text_message_1.json")
    assert (error.message, error.where) == ("expected a number, found a string", "$.messages[1].timestamp_ms")


def test_message_without_sender(fb_dir: Path) -> None:
    error = data_error(fb_dir / "bad" / "no_sender_message_1.json")
    assert (error.message, error.where) == ('missing field "sender_name"', "$.messages[3]")


def test_structure_errors(tmp_path: Path) -> None:
    path = tmp_path / "message_1.json"
    path.write_text('[{"sender_name": "x"}]')
    assert (data_error(path).message, data_error(path).where) == ("expected an object, found an array", "$")
    path.write_text('{"participants": [], "title": "x"}')
    assert (data_error(path).message, data_error(path).where) == ('missing field "messages"', "$")
    path.write_text('{"participants": [{"name": 3}], "messages": []}')
    assert (data_error(path).message, data_error(path).where) == (
        "expected a string, found a number", "$.participants[0].name")
    path.write_text('{"participants": [], "messages": ["hi"]}')
    assert (data_error(path).message, data_error(path).where) == ("expected an object, found a string",
                                                                  "$.messages[0]")
    path.write_text("")
    assert data_error(path).message == "the file is empty"
