"""DiscordChatExporter importers (`discord-json`, `discord-csv`) on hand-written exports of invented people."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from training.conversation import Message
from training.errors import DataError
from training.formats import get
from training.formats.base import ImportOptions, Source
from training.loader import load_corpus

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JSON_DIR = FIXTURES / "discord-json"
CSV_DIR = FIXTURES / "discord-csv"

GENERAL_JSON = JSON_DIR / "Lanternfall - Text Channels - general [1093847561029384756].json"
ARCHIVE_2021_JSON = JSON_DIR / "Lanternfall - Text Channels - archive [847362910283746501].json"
DM_JSON = JSON_DIR / "Direct Messages - Private - mirelle.v [1102938475610293847].json"
LORE_PART_1 = JSON_DIR / "Lanternfall - Text Channels - lore [1099887766554433221] [part 1].json"
LORE_PART_2 = JSON_DIR / "Lanternfall - Text Channels - lore [1099887766554433221] [part 2].json"

GENERAL_CSV = CSV_DIR / "Lanternfall - Text Channels - general [1093847561029384756].csv"
TRADES_CSV = CSV_DIR / "Lanternfall - Trading - trades [1105566778899001122].csv"
STAMMTISCH_CSV = CSV_DIR / "Lanternfall - Text Channels - stammtisch [1106677889900112233].csv"
EVENTS_CSV = CSV_DIR / "Lanternfall - Text Channels - events [1104455667788990011].csv"
MEMES_CSV = CSV_DIR / "Lanternfall - Text Channels - memes [888777666555444333].csv"
OLDTOWN_CSV = CSV_DIR / "Lanternfall - Text Channels - oldtown [612345678901234567].csv"
FOUNDERS_CSV = CSV_DIR / "Lanternfall - Text Channels - founders [512345678901234567].csv"

CET = timezone(timedelta(hours=1))
CEST = timezone(timedelta(hours=2))
CSV_HEADER = "AuthorID,Author,Date,Content,Attachments,Reactions\n"


def parse(format_name: str, path: Path, **options):
    return get(format_name).parse(Source(path), ImportOptions(**options))


def messages(result) -> list[Message]:
    return [item for thread in result.threads for item in thread.items]


def said(result) -> list[tuple[str, str]]:
    return [(m.speaker, m.text) for m in messages(result)]


def write_csv(tmp_path: Path, name: str, rows: list[tuple[str, ...]], header: str = CSV_HEADER) -> Path:
    path = tmp_path / name
    body = "".join(",".join('"' + v.replace('"', '""') + '"' for v in row) + "\n" for row in rows)
    path.write_text(header + body, encoding="utf-8", newline="")
    return path


def csv_dates(tmp_path: Path, dates: list[str]) -> list[datetime]:
    rows = [("389201746528374785", "mirelle.v", d, f"message {n}", "", "") for n, d in enumerate(dates)]
    result = parse("discord-csv", write_csv(tmp_path, "dates [1093847561029384756].csv", rows))
    by_text = {m.text: m.timestamp for m in messages(result)}
    return [by_text[f"message {n}"] for n in range(len(dates))]


def edited_json(tmp_path: Path, edit, source: Path = GENERAL_JSON, name: str = "edited.json") -> Path:
    data = json.loads(source.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


# --- detection -----------------------------------------------------------------------------------------------
def test_sniffers_do_not_claim_each_other_or_lookalikes(tmp_path: Path):
    json_importer, csv_importer = get("discord-json"), get("discord-csv")
    assert json_importer.sniff(Source(GENERAL_CSV)) == 0.0
    assert csv_importer.sniff(Source(GENERAL_JSON)) == 0.0
    other_json = tmp_path / "other.json"
    other_json.write_text('{"name": "Lanternfall", "messages": [{"guild": {"id": "1"}}]}', encoding="utf-8")
    assert json_importer.sniff(Source(other_json)) == 0.0
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("Author,Date,Content\nmirelle,2024-03-11,hi\n", encoding="utf-8")
    assert csv_importer.sniff(Source(other_csv)) == 0.0


def test_csv_header_as_a_spreadsheet_rewrites_it_is_a_weaker_match_that_still_parses(tmp_path: Path):
    header = '"AuthorID","Author","Date","Content","Attachments","Reactions"\n'
    path = write_csv(tmp_path, "resaved.csv",
                     [("389201746528374785", "mirelle.v", "2024-03-11T18:58:03.4120000+01:00", "hi", "", "")], header)
    assert get("discord-csv").sniff(Source(path)) == 0.6
    assert said(parse("discord-csv", path)) == [("mirelle.v", "hi")]


# --- JSON: current build ----------------------------------------------------------------------------------
def test_current_json_keeps_what_people_wrote_in_order():
    result = parse("discord-json", GENERAL_JSON)
    assert said(result) == [
        ("Mirelle", "welcome in, oddny! grab a lantern \U0001F3EE"),
        ("oddny_h", "thanks!! is the *night market* thread still going?"),
        ("Tobiah Quill", "it is \u2014 every friday, bring snacks \U0001F609"),
        ("Sparrowhawk", "**bold claim**: the east bridge lamps were never lit before 1890\nsource: my grandmother"),
        ("Mirelle", "@Sparrowhawk citation needed \U0001F604"),
        ("Tobiah Quill", "ok who changed the lantern emoji :lantern_sway:"),
        ("Mirelle", "see #night-market for the map"),
        ("Sparrowhawk", "anyone still up?"),
        ("Tobiah Quill", "always \U0001F989"),
        ("oddny_h", "same \U0001F469\u200D\U0001F467 my kid says hi"),
    ]
    # Joined, pinned, thread created / attachment, sticker / slash-command reply, bot / forward
    assert result.skipped == Counter({"system": 3, "attachment-only": 2, "bot": 2, "forwarded": 1})
    [thread] = result.threads
    assert thread.key == "discord-json:1093847561029384756"
    assert thread.title == "Lanternfall - Text Channels - general"


def test_json_speaker_is_the_nickname_with_username_and_tag_as_aliases():
    by_speaker = {m.speaker: m for m in messages(parse("discord-json", GENERAL_JSON))}
    assert by_speaker["Sparrowhawk"].speaker_aliases == ("grenwick", "grenwick#4821")
    assert by_speaker["Sparrowhawk"].speaker_id == "274650192837465601"
    # New-style usernames have discriminator "0000": no `#0000` alias.
    assert by_speaker["Mirelle"].speaker_aliases == ("mirelle.v",)
    assert by_speaker["Tobiah Quill"].speaker_aliases == ("tquill",)
    # No nickname (nickname == name): no alias repeating the speaker.
    assert by_speaker["oddny_h"].speaker_aliases == ()
    assert by_speaker["oddny_h"].speaker_id == "601928374650192837"


def test_json_reply_points_at_the_referenced_message_id():
    kept = messages(parse("discord-json", GENERAL_JSON))
    by_text = {m.text: m for m in kept}
    question = by_text["thanks!! is the *night market* thread still going?"]
    answer = by_text["it is \u2014 every friday, bring snacks \U0001F609"]
    assert question.id == "1482439179999772672"
    assert answer.reply_to == question.id
    claim = by_text["**bold claim**: the east bridge lamps were never lit before 1890\nsource: my grandmother"]
    assert by_text["@Sparrowhawk citation needed \U0001F604"].reply_to == claim.id
    # Only type "Reply" is a reply: the pin notice also had a reference, and plain messages have none.
    assert [m.reply_to is not None for m in kept].count(True) == 2


def test_json_surrogate_escaped_emoji_come_out_as_real_emoji():
    raw = GENERAL_JSON.read_bytes()
    assert b"\\uD83C\\uDFEE" in raw and "\U0001F3EE".encode() not in raw  # how DCE writes it
    assert b"\\u200D" in raw
    for m in messages(parse("discord-json", GENERAL_JSON)):
        m.text.encode("utf-8")  # no surrogate halves left
    assert "\U0001F3EE" in messages(parse("discord-json", GENERAL_JSON))[0].text


def test_json_lone_surrogate_becomes_a_replacement_character(tmp_path: Path):
    def cut_emoji(data):
        data["messages"][1]["content"] = "half an emoji \ud83c"
    kept = messages(parse("discord-json", edited_json(tmp_path, cut_emoji)))
    assert kept[0].text == "half an emoji \ufffd"


def test_json_timestamps_keep_their_offset():
    first = messages(parse("discord-json", GENERAL_JSON))[0]
    assert first.timestamp == datetime(2026, 3, 14, 19, 3, 40, 117000, tzinfo=CET)
    assert first.timestamp.utcoffset() == timedelta(hours=1)


def test_json_bot_names_from_options_match_nickname_username_tag_or_id():
    for name in ("Sparrowhawk", "grenwick", "GRENWICK#4821", "274650192837465601"):
        result = parse("discord-json", GENERAL_JSON, bot_names=frozenset({name.casefold()}))
        assert "Sparrowhawk" not in {m.speaker for m in messages(result)}
        assert result.skipped["bot"] == 2 + 2


def test_json_slash_command_replies_are_bot_output_and_other_numbered_types_are_system(tmp_path: Path):
    def retype(data):
        msgs = data["messages"]
        # A "20" reply whose author is not flagged (webhook-style), a "23" (context menu), a boost ("8"), a
        # thread starter ("21") and a type name this importer does not know yet.
        msgs[1]["type"] = "20"
        msgs[2]["type"] = "23"
        msgs[3]["type"] = "8"
        msgs[4]["type"] = "21"
        msgs[14]["type"] = "GuildBoostTier1"
    result = parse("discord-json", edited_json(tmp_path, retype))
    assert result.skipped == Counter({"system": 3 + 2, "attachment-only": 2, "bot": 2 + 2, "forwarded": 1,
                                      "unknown-type": 1})
    assert "see #night-market for the map" not in [m.text for m in messages(result)]


def test_json_forwards_are_skipped_in_new_and_old_builds():
    assert parse("discord-json", GENERAL_JSON).skipped["forwarded"] == 1  # reference.type "Forward"
    # Before 2026-02 a forward is an empty Default message with only a reference.
    part_2 = parse("discord-json", LORE_PART_2)
    assert part_2.skipped == Counter({"forwarded": 1})


def test_json_reverse_export_is_put_back_in_time_order(tmp_path: Path):
    path = edited_json(tmp_path, lambda data: data["messages"].reverse())
    assert said(parse("discord-json", path)) == said(parse("discord-json", GENERAL_JSON))


def test_json_conversations_split_at_a_long_silence():
    corpus = load_corpus([GENERAL_JSON])
    assert [len(c.messages) for c in corpus.conversations] == [7, 3]
    assert [c.id for c in corpus.conversations] == ["discord-json:1093847561029384756#1",
                                                    "discord-json:1093847561029384756#2"]
    assert corpus.files[0].format == "discord-json"
    assert corpus.files[0].skipped == Counter({"system": 3, "attachment-only": 2, "bot": 2, "forwarded": 1})


# --- JSON: 2021 build ----------------------------------------------------------------------------------------
def test_2021_json_with_crlf_and_empty_system_content():
    raw = ARCHIVE_2021_JSON.read_bytes()
    assert b'\r\n  "guild": {' in raw and b'"exportedAt"' not in raw and b'"roles"' not in raw
    result = parse("discord-json", ARCHIVE_2021_JSON)
    assert said(result) == [
        ("Sparrowhawk", "welcome \U0001F44B"),
        ("mirelle", "hi! found you through the lantern walk poster"),
        ("mirelle", "does anyone have the route map?\nthe one with the\u00a0bridge"),
        ("Tobiah", "pinned it \u2014 look up \u2191"),
        ("Tobiah", "renamed it, this channel is for old stuff now"),
    ]
    # GuildMemberJoin and ChannelPinnedMessage with "" content, ChannelNameChange / attachment / bot
    assert result.skipped == Counter({"system": 3, "attachment-only": 1, "bot": 1})
    kept = messages(result)
    assert kept[1].speaker_aliases == ("mirelle#2718",)
    assert kept[3].speaker_aliases == ("tquill", "tquill#0093")
    assert kept[1].reply_to == "850077146939523072" == kept[0].id
    assert kept[0].timestamp == datetime(2021, 6, 3, 18, 23, 5, 500000, tzinfo=timezone.utc)


# --- JSON: DM across a DST change, --markdown false -------------------------------------------------------
def test_json_offsets_across_dst_order_by_the_instant_not_the_wall_clock():
    kept = messages(parse("discord-json", DM_JSON))
    assert [m.text for m in kept] == [
        "you awake? @Tobiah Quill the clocks go back tonight",
        "awake :blobwave: we get the hour twice",
        "so at 2:30 I can say it's 2:30 again",
        "it just happened \u2014 02:08, the second time",
        "ok sleep now \U0001F634",
    ]
    assert kept[2].timestamp == datetime(2023, 10, 29, 2, 55, 40, 120000, tzinfo=CEST)
    assert kept[3].timestamp == datetime(2023, 10, 29, 2, 8, 3, 500000, tzinfo=CET)
    # 02:08 on the wall clock, yet after 02:55: clocks went back an hour in between.
    assert kept[3].timestamp.replace(tzinfo=None) < kept[2].timestamp.replace(tzinfo=None)
    assert kept[3].reply_to == kept[2].id


def test_json_dst_file_stays_one_conversation_and_skips_the_call_and_pin():
    corpus = load_corpus([DM_JSON])
    assert [len(c.messages) for c in corpus.conversations] == [5]
    assert corpus.files[0].skipped == Counter({"system": 2})
    assert corpus.conversations[0].title == "Direct Messages - mirelle.v"


def test_json_reversed_dst_export_still_orders_by_instant(tmp_path: Path):
    path = edited_json(tmp_path, lambda data: data["messages"].reverse(), source=DM_JSON)
    assert said(parse("discord-json", path)) == said(parse("discord-json", DM_JSON))


# --- JSON: partitioned channel -------------------------------------------------------------------------------
def test_json_parts_of_one_channel_merge_into_one_thread_in_time_order():
    corpus = load_corpus([LORE_PART_2, LORE_PART_1])  # named out of order on purpose
    assert [[(m.speaker, m.text) for m in c.messages] for c in corpus.conversations] == [
        [("Sparrowhawk", "lore night! tonight: the drowned lamplighter"),
         ("oddny_h", "the one who kept lighting lamps under the river?"),
         ("Sparrowhawk", "yes. every flood the lamps come back lit"),
         ("Mirelle", "my aunt swears she saw one in \u201998"),
         ("Tobiah Quill", "which year was the flood?")],
        [("Tobiah Quill", "I looked it up: 1998, and the lamps were lit \U0001F47B"),
         ("Mirelle", "told you")],
    ]
    assert {c.id.split("#")[0] for c in corpus.conversations} == {"discord-json:1099887766554433221"}
    first = corpus.conversations[0].messages
    assert first[4].reply_to == first[3].id  # a reply in part 2 to a message in part 1
    reports = {Path(r.path).name: (r.messages, r.skipped) for r in corpus.files}
    assert reports[LORE_PART_1.name] == (4, Counter({"system": 1}))
    assert reports[LORE_PART_2.name] == (3, Counter({"forwarded": 1}))


def test_json_overlapping_exports_of_one_channel_are_deduplicated_by_message_id(tmp_path: Path):
    def one_more(data):
        later = dict(data["messages"][-1], id="1381025500000000000", content="and that's lore night",
                     timestamp="2025-06-07T23:42:17.5+02:00")
        data["messages"].append(later)
    again = edited_json(tmp_path, one_more, source=LORE_PART_2, name="lore again [1099887766554433221].json")
    corpus = load_corpus([LORE_PART_1, LORE_PART_2, again])
    assert [m.text for m in corpus.conversations[-1].messages] == [
        "I looked it up: 1998, and the lamps were lit \U0001F47B", "told you", "and that's lore night"]
    assert (corpus.files[-1].messages, corpus.files[-1].skipped) == (1, Counter({"duplicate": 3, "forwarded": 1}))


# --- JSON: bad input ----------------------------------------------------------------------------------------
def test_json_truncated_file_names_line_and_column(tmp_path: Path):
    path = tmp_path / "cut.json"
    raw = GENERAL_JSON.read_bytes()
    cut_at = raw.index(b'"isPinned": false,', 3000) + len(b'"isPinned": false,')
    path.write_bytes(raw[:cut_at])
    with pytest.raises(DataError) as e:
        parse("discord-json", path)
    assert e.value.message == "is not valid JSON: Expecting property name enclosed in double quotes"
    lines = raw[:cut_at].count(b"\n") + 1
    assert e.value.where == f"line {lines}, column 25"
    assert "cut off" in e.value.hint


def test_json_empty_file(tmp_path: Path):
    path = tmp_path / "empty.json"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError) as e:
        parse("discord-json", path)
    assert e.value.message == "the file is empty"


@pytest.mark.parametrize("edit, where, message", [
    (lambda d: d.__setitem__("messages", {"0": {}}), "$.messages", "expected an array, found an object"),
    (lambda d: d.pop("channel"), "$", 'missing field "channel"'),
    (lambda d: d["channel"].__setitem__("id", 1093847561029384756), "$.channel.id",
     "expected a string, found a number"),
    (lambda d: d["messages"].__setitem__(2, "hello"), "$.messages[2]", "expected an object, found a string"),
    (lambda d: d["messages"][0].pop("author"), "$.messages[0]", 'missing field "author"'),
    (lambda d: d["messages"][5]["author"].__setitem__("isBot", "no"), "$.messages[5].author.isBot",
     "expected true/false, found a string"),
    (lambda d: d["messages"][1].__setitem__("timestamp", "14.03.2026 19:03"), "$.messages[1].timestamp",
     "cannot read the timestamp '14.03.2026 19:03'"),
])
def test_json_malformed_records_name_the_json_path(tmp_path: Path, edit, where: str, message: str):
    with pytest.raises(DataError) as e:
        parse("discord-json", edited_json(tmp_path, edit))
    assert (e.value.where, e.value.message) == (where, message)
    assert e.value.hint


def test_json_root_that_is_not_an_object(tmp_path: Path):
    path = tmp_path / "list.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError) as e:
        parse("discord-json", path)
    assert (e.value.where, e.value.message) == ("$", "expected an object with guild, channel and messages, "
                                                     "found an array")


# --- CSV: current build ------------------------------------------------------------------------------------
def test_current_csv_rows_with_quotes_newlines_and_system_text():
    result = parse("discord-csv", GENERAL_CSV)
    assert said(result) == [
        ("mirelle.v", 'who\'s bringing the "good" lanterns tonight?'),
        ("tquill", "me\nand I'm bringing the map too"),
        ("Lanternkeeper#7340", "Reminder: night market at 8"),
        ("oddny_h", 'hi all \U0001F3EE is it "bring your own lantern"?\n\nasking for a friend'),
        ("grenwick#4821", "yes, obviously, bring one"),
        ("tquill", "still up, anyone?"),
    ]
    # two attachments, no text / "Joined the server.", "Pinned a message." / a row with nothing at all
    assert result.skipped == Counter({"attachment-only": 1, "system": 2, "empty": 1})
    [thread] = result.threads
    assert thread.key == "discord-csv:1093847561029384756"
    assert thread.title == "Lanternfall - Text Channels - general"


def test_csv_iso_dates_with_seven_fraction_digits_keep_their_offset():
    first = messages(parse("discord-csv", GENERAL_CSV))[0]
    assert first.timestamp == datetime(2024, 3, 11, 18, 58, 3, 412000, tzinfo=CET)


def test_csv_speaker_is_the_author_with_id_and_untagged_alias():
    kept = messages(parse("discord-csv", GENERAL_CSV))
    grenwick = next(m for m in kept if m.speaker == "grenwick#4821")
    assert grenwick.speaker_aliases == ("grenwick",)
    assert grenwick.speaker_id == "274650192837465601"
    assert kept[0].speaker_aliases == () and kept[0].speaker_id == "389201746528374785"
    assert kept[0].id is None and kept[0].reply_to is None  # CSV has neither


def test_csv_bot_names_from_options(tmp_path: Path):
    for name in ("Lanternkeeper", "lanternkeeper#7340", "870123456789012345"):
        result = parse("discord-csv", GENERAL_CSV, bot_names=frozenset({name.casefold()}))
        assert "Lanternkeeper#7340" not in {m.speaker for m in messages(result)}
        assert result.skipped["bot"] == 1


def test_csv_conversations_split_at_a_long_silence():
    corpus = load_corpus([GENERAL_CSV])
    assert [len(c.messages) for c in corpus.conversations] == [5, 1]
    assert corpus.files[0].format == "discord-csv"


# --- CSV: header and date variants -------------------------------------------------------------------------
def test_csv_culture_g_en_us_with_crlf_and_narrow_no_break_space():
    raw = TRADES_CSV.read_bytes()
    assert raw.count(b"\r\n") == 6 and "11:58\u202fPM".encode() in raw
    kept = messages(parse("discord-csv", TRADES_CSV))
    assert [(m.timestamp, m.text) for m in kept] == [
        (datetime(2023, 10, 12, 23, 58), "anyone trading lantern glass?"),
        (datetime(2023, 10, 12, 23, 59), "I have two panes\nslightly cracked\nhalf price"),
        (datetime(2023, 10, 13, 0, 3), "deal \u2014 I'll pick them up friday"),  # 12:03 AM
        (datetime(2023, 10, 13, 9, 30), "morning! still on for friday?"),
    ]
    assert all(m.timestamp.tzinfo is None for m in kept)  # local wall-clock time, no offset in the file
    assert parse("discord-csv", TRADES_CSV).skipped == Counter({"attachment-only": 1})


def test_csv_culture_g_de_de_dotted_dates_in_a_reversed_export():
    result = parse("discord-csv", STAMMTISCH_CSV)
    # Newest-first in the file; two rows share a minute and must keep the order they were said in.
    assert [(m.timestamp, m.speaker, m.text) for m in messages(result)] == [
        (datetime(2023, 10, 4, 18, 58), "mirelle.v", "Wer kommt heute zum Stammtisch?"),
        (datetime(2023, 10, 4, 18, 58), "tquill", "und ich bringe Brezeln mit"),
        (datetime(2023, 10, 4, 19, 7), "grenwick#4821", "Prost! \U0001F37B"),
    ]
    assert result.skipped == Counter({"system": 1})


def test_csv_default_us_format_with_every_day_below_13_reads_month_first():
    result = parse("discord-csv", EVENTS_CSV)
    assert [m.timestamp for m in messages(result)] == [
        datetime(2023, 5, 6, 21, 15), datetime(2023, 5, 6, 21, 40), datetime(2023, 5, 7, 0, 10)]
    assert result.skipped == Counter({"system": 1})  # "Started a call that lasted 14 minutes."


def test_csv_legacy_named_month_dates_and_deleted_user():
    result = parse("discord-csv", MEMES_CSV)
    assert [(m.timestamp, m.speaker, m.speaker_aliases) for m in messages(result)] == [
        (datetime(2021, 8, 3, 18, 22), "grenwick#4821", ("grenwick",)),
        (datetime(2021, 8, 3, 18, 24), "mirelle#2718", ("mirelle",)),
        (datetime(2021, 8, 3, 18, 30), "Deleted User", ()),  # "#0000" is no real tag
        (datetime(2021, 8, 4, 0, 5), "tquill#0093", ("tquill",)),
    ]
    assert result.skipped == Counter({"empty": 1})  # a system message: empty content in builds before 2023-02


def test_csv_old_semicolon_header_with_trailing_semicolons():
    raw = OLDTOWN_CSV.read_bytes()
    assert raw.startswith(b"AuthorID;Author;Date;Content;Attachments;Reactions;\r\n")
    result = parse("discord-csv", OLDTOWN_CSV)
    assert [(m.timestamp, m.speaker, m.speaker_id, m.text) for m in messages(result)] == [
        (datetime(2019, 11, 14, 21, 5), "grenwick#4821", "274650192837465601", "is this the old town channel?"),
        (datetime(2019, 11, 14, 21, 7), "mirelle#2718", "389201746528374785", 'yes; "old town" as in the bridges'),
    ]
    assert result.skipped == Counter({"attachment-only": 1})


def test_csv_oldest_header_without_author_id():
    result = parse("discord-csv", FOUNDERS_CSV)
    assert [(m.timestamp, m.speaker, m.speaker_id, m.text) for m in messages(result)] == [
        (datetime(2018, 12, 2, 22, 15), "mirelle#2718", None, "first!"),
        (datetime(2018, 12, 2, 22, 16), "grenwick#4821", None, "welcome to Lanternfall\nrules are in the pins"),
    ]


def test_csv_header_without_author_id_but_with_reactions(tmp_path: Path):
    path = tmp_path / "mid [512345678901234567].csv"
    path.write_text('Author;Date;Content;Attachments;Reactions;\r\n'
                    '"mirelle#2718";"02-Jun-19 10:15 PM";"hello";"";"";\r\n', encoding="utf-8", newline="")
    assert get("discord-csv").sniff(Source(path)) == 0.95
    assert said(parse("discord-csv", path)) == [("mirelle#2718", "hello")]


def test_csv_day_first_when_a_first_number_is_above_12(tmp_path: Path):
    assert csv_dates(tmp_path, ["03/04/2024 18:58", "13/04/2024 09:00"]) == [
        datetime(2024, 4, 3, 18, 58), datetime(2024, 4, 13, 9, 0)]


def test_csv_month_first_when_a_second_number_is_above_12(tmp_path: Path):
    assert csv_dates(tmp_path, ["03/04/2024 18:58", "03/14/2024 09:00"]) == [
        datetime(2024, 3, 4, 18, 58), datetime(2024, 3, 14, 9, 0)]


def test_csv_ambiguous_dates_follow_the_order_that_runs_forward_in_time(tmp_path: Path):
    # d/m would be 3 Dec then 4 Jan (backwards); m/d is 12 Mar then 1 Apr. 24-hour times alone would say d/m.
    assert csv_dates(tmp_path, ["03/12/2024 18:58", "04/01/2024 09:00"]) == [
        datetime(2024, 3, 12, 18, 58), datetime(2024, 4, 1, 9, 0)]


def test_csv_ambiguous_dates_prefer_the_reading_that_spans_less_time(tmp_path: Path):
    # Both readings run forward; d/m spans 15 hours, m/d a month (5 Mar -> 6 Mar vs 3 May -> 3 Jun).
    assert csv_dates(tmp_path, ["05/03/2024 18:58", "06/03/2024 10:00"]) == [
        datetime(2024, 3, 5, 18, 58), datetime(2024, 3, 6, 10, 0)]
    assert csv_dates(tmp_path, ["05/03/2024 6:58 PM", "05/04/2024 10:00 AM"]) == [
        datetime(2024, 5, 3, 18, 58), datetime(2024, 5, 4, 10, 0)]


def test_csv_fully_ambiguous_dates_read_day_first_in_24_hours_and_month_first_with_am_pm(tmp_path: Path):
    assert csv_dates(tmp_path, ["05/03/2024 18:58", "05/03/2024 19:10"]) == [
        datetime(2024, 3, 5, 18, 58), datetime(2024, 3, 5, 19, 10)]
    assert csv_dates(tmp_path, ["05/03/2024 6:58 PM", "05/03/2024 7:10 PM"]) == [
        datetime(2024, 5, 3, 18, 58), datetime(2024, 5, 3, 19, 10)]


def test_csv_year_first_unix_and_lower_case_designator_styles(tmp_path: Path):
    assert csv_dates(tmp_path, ["2024-03-11 18:58", "2024/03/11 18:59", "1710179940", "1710179941000",
                                "11-Mar-2024 07:00 pm", "3/11/2024, 7:01 p.m."]) == [
        datetime(2024, 3, 11, 18, 58), datetime(2024, 3, 11, 18, 59),
        datetime(2024, 3, 11, 17, 59, tzinfo=timezone.utc), datetime(2024, 3, 11, 17, 59, 1, tzinfo=timezone.utc),
        datetime(2024, 3, 11, 19, 0), datetime(2024, 3, 11, 19, 1)]


def test_csv_parts_of_one_channel_merge_by_the_id_in_the_file_name(tmp_path: Path):
    row = lambda date, text: ("389201746528374785", "mirelle.v", date, text, "", "")  # noqa: E731
    part_1 = write_csv(tmp_path, "Lanternfall - general [1093847561029384756] [part 1].csv",
                       [row("2024-03-11T18:58:03.4120000+01:00", "one")])
    part_2 = write_csv(tmp_path, "Lanternfall - general [1093847561029384756] [part 2].csv",
                       [row("2024-03-11T18:59:03.4120000+01:00", "two")])
    assert parse("discord-csv", part_2).threads[0].title == "Lanternfall - general"
    corpus = load_corpus([part_2, part_1])
    assert [[m.text for m in c.messages] for c in corpus.conversations] == [["one", "two"]]


def test_csv_without_channel_id_in_the_name_is_keyed_by_its_path(tmp_path: Path):
    path = write_csv(tmp_path, "my export.csv",
                     [("389201746528374785", "mirelle.v", "2024-03-11T18:58:03.4120000+01:00", "hi", "", "")])
    [thread] = parse("discord-csv", path).threads
    assert thread.key == f"discord-csv:{path.resolve()}"
    assert thread.title == "my export"


# --- CSV: bad input -----------------------------------------------------------------------------------------
def test_csv_wrong_header(tmp_path: Path):
    path = write_csv(tmp_path, "x.csv", [("1", "a", "b")], header="AuthorID,Author,Date,Content\n")
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert e.value.where == "line 1"
    assert e.value.message == "this is not a DiscordChatExporter CSV header: 'AuthorID,Author,Date,Content'"


def test_csv_row_with_missing_fields_names_its_first_line(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text(CSV_HEADER + '"1","mirelle.v","2024-03-11T18:58:03.4120000+01:00","two\nlines","",""\n'
                    '"1","mirelle.v","2024-03-11T18:59:03.4120000+01:00","cut"\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert (e.value.where, e.value.message) == ("line 4", "this row has 4 fields, the header names 6")


def test_csv_broken_quoting_and_truncation(tmp_path: Path):
    path = tmp_path / "quotes.csv"
    path.write_text(CSV_HEADER + '"1","mirelle.v","2024-03-11T18:58:03.4120000+01:00","say "hi"","",""\n',
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert (e.value.where, e.value.message) == ("line 2", "is not valid CSV (',' expected after '\"')")

    cut = tmp_path / "cut.csv"
    cut.write_bytes(GENERAL_CSV.read_bytes()[:200])  # ends inside the second row's two-line Content
    with pytest.raises(DataError) as e:
        parse("discord-csv", cut)
    assert (e.value.where, e.value.message) == ("line 3", "is not valid CSV (unexpected end of data)")


@pytest.mark.parametrize("date, message", [
    ("yesterday at 6", "cannot read the date 'yesterday at 6'"),
    ("31-Feb-21 06:22 PM", "this is not a real date or time (day is out of range for month)"),
    ("11-Mär-24 06:58", "cannot read the month 'Mär' in the date '11-Mär-24 06:58'"),
    ("3/11/2024 13:58 PM", "the hour in '3/11/2024 13:58 PM' does not fit AM/PM"),
])
def test_csv_unreadable_dates_name_the_row(tmp_path: Path, date: str, message: str):
    path = write_csv(tmp_path, "dates.csv", [
        ("1", "mirelle.v", "2024-03-11T18:58:03.4120000+01:00", "fine", "", ""),
        ("1", "mirelle.v", date, "not fine", "", ""),
    ])
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert (e.value.where, e.value.message) == ("line 3", message)
    assert "2024-03-11T18:58:03.4120000+01:00" in e.value.hint


def test_csv_dates_that_mix_day_first_and_month_first(tmp_path: Path):
    path = write_csv(tmp_path, "mixed.csv", [
        ("1", "mirelle.v", "13/03/2024 18:58", "a", "", ""),
        ("1", "mirelle.v", "03/14/2024 18:58", "b", "", ""),
    ])
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert e.value.where == "line 3"
    assert e.value.message == ("the dates mix day/month (line 2: 13/3) and month/day (line 3: 3/14) order")


def test_csv_empty_file(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        parse("discord-csv", path)
    assert e.value.message == "the file is empty"
