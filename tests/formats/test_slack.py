"""The Slack workspace export importer on a hand-written export (tests/fixtures/slack/acme-export/)."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from training.errors import DataError
from training.formats import ImportOptions, Source, detect, get
from training.loader import load_corpus

EXPORT = Path(__file__).parents[1] / "fixtures" / "slack" / "acme-export"
UTC = timezone.utc
GENERAL, RANDOM, DM = "C061GNRL01A", "C061RNDM02B", "D061PRTOM5Q"
PARENT = "1710147942.001900"   # Tomasz's message in #general that has a thread spanning two days
TOMBSTONE = "1710321000.003100"  # a deleted thread parent whose reply survives

PRIYA = ("priya", ("Priya Raman", "priya.raman"), "U061PR1YA2N")
TOMASZ = ("Tomasz Wójcik", ("tomasz.w",), "U061TOMW8KZ")
DEE = ("dee.o", ("Dee Okafor", "dee"), "U061DEEOK4F")
MAREK = ("Marek Lind", ("marek",), "U05ZOLDUSR1")
SAM = ("Sam Ortiz", ("sam.ortiz",), "U07GUEST9XZ")  # a guest missing from users.json: from user_profile

# conversation id -> [(speaker, text)], in order; the loader splits at silences over 3 hours.
CONVERSATIONS = {
    f"slack:{GENERAL}#1": [
        (PRIYA, "Morning all! Standup moved to 10:30 today & we're in #random's usual corner :coffee:"),
        (PRIYA, "quick poll: tabs < spaces? :thinking_face:\n(answers in the thread please, not here)"),
    ],
    f"slack:{GENERAL}#2": [
        (PRIYA, "here's the whiteboard from yesterday, cleaned up"),
        (MAREK, "last day today, it's been a blast. keep the donut tradition alive"),
    ],
    f"slack:{GENERAL}#3": [(DEE, "reminder that #random is for memes, @channel please :pray:")],
    f"slack:{GENERAL}:{PARENT}#1": [
        (TOMASZ, "@priya works for me. Notes are in the standup doc"),
        (DEE, "can you add the Q2 numbers? the old link https://intranet.acme.example/q2 is dead"),
    ],
    f"slack:{GENERAL}:{PARENT}#2": [
        (TOMASZ, "added them, sorry for the delay"),
        (PRIYA, "Q2 numbers are in the doc now, thanks @Tomasz Wójcik!"),  # thread_broadcast
    ],
    f"slack:{GENERAL}:{TOMBSTONE}#1": [(DEE, "answering anyway: yes, Friday works")],
    f"slack:{RANDOM}#1": [
        (DEE, "did anyone else hear the fire alarm test? :rotating_light:"),
        (TOMASZ, "yes & it was LOUD"),
        (PRIYA, "@channel lunch is on me today, ping me if you have allergies"),
    ],
    f"slack:{RANDOM}#2": [(DEE, "waves from the train"), (SAM, "hi from the partner team 👋")],
    f"slack:{DM}#1": [(PRIYA, "are you ok taking the Thursday demo?"), (TOMASZ, "sure, if you send me the deck")],
}
# channel_join, channel_topic, pinned_item, channel_leave; deploybot's bot_message and the Standup Reminder
# bot user; Dee's photo without text; the deleted thread parent.
SKIPPED = {"system": 4, "bot": 2, "attachment-only": 1, "deleted": 1}


def conversations(corpus) -> dict[str, list[tuple[tuple[str, tuple[str, ...], str], str]]]:
    return {c.id: [((m.speaker, m.speaker_aliases, m.speaker_id), m.text) for m in c.messages]
            for c in corpus.conversations}


def zip_export(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


@pytest.fixture
def export_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture export, for breaking it."""
    return Path(shutil.copytree(EXPORT, tmp_path / "acme-export"))


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4), encoding="utf-8")


def one_day(export: Path, messages: list[dict], folder: str = "general") -> None:
    """Replace the export's messages by one day file."""
    for day in export.glob("*/????-??-??.json"):
        day.unlink()
    write_json(export / folder / "2024-03-11.json", messages)


# --- detection ----------------------------------------------------------------------------------------------
def test_export_folder_and_zip_are_detected(tmp_path: Path) -> None:
    assert detect(Source(EXPORT)).name == "slack"
    assert detect(Source(zip_export(EXPORT, tmp_path / "Acme Slack export Mar 11 2024 - Mar 14 2024.zip"))).name \
        == "slack"


def test_single_files_and_other_folders_are_not_slack(tmp_path: Path) -> None:
    slack = get("slack")
    assert slack.sniff(Source(EXPORT / "general" / "2024-03-11.json")) == 0.0
    assert slack.sniff(Source(EXPORT / "users.json")) == 0.0
    assert slack.sniff(Source(EXPORT / "general")) == 0.0  # one channel folder: day files, no metadata
    # A folder that holds an export next to other things is not claimed as a whole: it is walked.
    shutil.copytree(EXPORT, tmp_path / "acme-export")
    (tmp_path / "notes.txt").write_text("not slack")
    assert slack.sniff(Source(tmp_path)) == 0.0


def test_metadata_without_day_files_is_still_an_export(export_copy: Path) -> None:
    for day in export_copy.glob("*/????-??-??.json"):
        day.unlink()
    assert get("slack").sniff(Source(export_copy)) == 0.7
    with pytest.raises(DataError, match="no chat messages to learn from"):
        load_corpus([export_copy])


# --- the export ---------------------------------------------------------------------------------------------
def test_export_messages_speakers_and_threads() -> None:
    corpus = load_corpus([EXPORT])
    assert conversations(corpus) == CONVERSATIONS
    [report] = corpus.files
    assert (report.format, report.messages, dict(report.skipped)) == ("slack", 17, SKIPPED)


def test_no_message_is_counted_twice_and_ids_are_channel_scoped() -> None:
    messages = load_corpus([EXPORT]).messages()
    ids = [m.id for m in messages]
    assert len(ids) == len(set(ids)) == 17
    # The thread parent is in its thread only, not in the channel's flow.
    flow = [m.id for c in load_corpus([EXPORT]).conversations if c.id.startswith(f"slack:{GENERAL}#")
            for m in c.messages]
    assert f"{GENERAL}:{PARENT}" not in flow
    replies = {m.id: m.reply_to for m in messages if m.reply_to}
    assert replies == {
        f"{GENERAL}:1710148023.002000": f"{GENERAL}:{PARENT}",
        f"{GENERAL}:1710232810.002550": f"{GENERAL}:{PARENT}",
        f"{GENERAL}:1710233250.002600": f"{GENERAL}:{PARENT}",
        f"{GENERAL}:1710321150.003200": f"{GENERAL}:{TOMBSTONE}",
    }


def test_timestamps_are_exact_utc() -> None:
    by_id = {m.id: m.timestamp for m in load_corpus([EXPORT]).messages()}
    assert by_id[f"{GENERAL}:1710147731.001100"] == datetime(2024, 3, 11, 9, 2, 11, 1100, tzinfo=UTC)
    assert by_id[f"{GENERAL}:1710232810.002550"] == datetime(2024, 3, 12, 8, 40, 10, 2550, tzinfo=UTC)
    assert by_id[f"{GENERAL}:1710232810.002550"].utcoffset().total_seconds() == 0


def test_titles() -> None:
    titles = {c.id: c.title for c in load_corpus([EXPORT]).conversations}
    assert titles[f"slack:{GENERAL}#1"] == "#general"
    assert titles[f"slack:{GENERAL}:{PARENT}#1"] == "#general thread"
    assert titles[f"slack:{DM}#1"] == "DM: priya, Tomasz Wójcik"


def test_zip_reads_the_same_as_the_folder(tmp_path: Path) -> None:
    corpus = load_corpus([zip_export(EXPORT, tmp_path / "acme.zip")])
    assert conversations(corpus) == CONVERSATIONS
    assert dict(corpus.files[0].skipped) == SKIPPED


def test_a_re_zipped_export_with_a_top_folder(tmp_path: Path) -> None:
    archive = zip_export(EXPORT, tmp_path / "acme.zip", prefix="acme-export/")
    assert detect(Source(archive)).name == "slack"
    assert conversations(load_corpus([archive])) == CONVERSATIONS


def test_two_overlapping_exports_merge_without_duplicates(export_copy: Path, tmp_path: Path) -> None:
    # A later export of the same workspace: everything again plus one new day.
    write_json(export_copy / "random" / "2024-03-15.json",
               [{"type": "message", "user": "U061DEEOK4F", "text": "friday!", "ts": "1710493200.000100"}])
    corpus = load_corpus([EXPORT, zip_export(export_copy, tmp_path / "later.zip")])
    assert conversations(corpus) == {**CONVERSATIONS, f"slack:{RANDOM}#3": [(DEE, "friday!")]}
    assert (corpus.files[1].messages, corpus.files[1].skipped["duplicate"]) == (1, 17)


def test_without_users_json_profiles_on_messages_and_ids_are_used(export_copy: Path) -> None:
    (export_copy / "users.json").unlink()
    assert detect(Source(export_copy)).name == "slack"
    got = conversations(load_corpus([export_copy]))
    # Marek's message carries no user_profile: his id is the speaker. Priya's profile has a display name.
    assert got[f"slack:{GENERAL}#2"] == [(PRIYA, "here's the whiteboard from yesterday, cleaned up"),
                                         (("U05ZOLDUSR1", (), "U05ZOLDUSR1"),
                                          "last day today, it's been a blast. keep the donut tradition alive")]
    # Mentions resolve through the same profiles.
    assert got[f"slack:{GENERAL}:{PARENT}#2"][1] == (PRIYA, "Q2 numbers are in the doc now, thanks @Tomasz Wójcik!")
    # The Standup Reminder is still a bot (bot_id), though users.json no longer says is_bot.
    assert load_corpus([export_copy]).files[0].skipped["bot"] == 2


def test_bot_names_from_options(export_copy: Path) -> None:
    corpus = load_corpus([export_copy], options=ImportOptions(bot_names=frozenset({"dee.o"})))
    assert "dee.o" not in {m.speaker for m in corpus.messages()}
    assert corpus.files[0].skipped["bot"] == 2 + 6  # five kept messages and the photo (channel_join: system)


def test_mrkdwn_control_sequences(export_copy: Path) -> None:
    texts = [
        "<@U999NOBODY> meet <@U061DEEOK4F|dee>, see <#C999GONE> and <#C061GNRL01A>",
        "ping <!subteam^S061DSGN|@design> and <!here|here>, <!everyone> too",
        "due <!date^1710147300^{date_short}|Mar 11, 2024> at <https://acme.example/a?b=1&amp;c=2>",
        "a &lt;tag&gt; &amp;amp; <mailto:dee@acme.example|dee@acme.example>",
        "   \n  ",
    ]
    one_day(export_copy, [{"type": "message", "user": "U061PR1YA2N", "text": t, "ts": f"1710147300.00{i}"}
                          for i, t in enumerate(texts)])
    corpus = load_corpus([export_copy])
    assert [m.text for m in corpus.messages()] == [
        "@U999NOBODY meet @dee.o, see #C999GONE and #general",
        "ping @design and @here, @everyone too",
        "due Mar 11, 2024 at https://acme.example/a?b=1&c=2",
        "a <tag> &amp; dee@acme.example",
    ]
    assert dict(corpus.files[0].skipped) == {"empty": 1}


def test_unknown_records_and_old_style_uploads(export_copy: Path) -> None:
    user = "U061PR1YA2N"
    one_day(export_copy, [
        {"type": "message", "user": user, "text": "fine", "ts": "1710147300.000100"},
        {"type": "message", "subtype": "some_future_event", "user": user, "text": "?", "ts": "1710147301.000100"},
        {"type": "reminder", "user": user, "text": "?", "ts": "1710147302.000100"},
        {"type": "message", "text": "no author", "ts": "1710147303.000100"},
        {"type": "message", "subtype": "file_share", "user": user, "upload": True, "file": {"name": "a.png"},
         "text": "<@U061PR1YA2N|priya> uploaded a file: <https://acme.slack.com/files/a.png|a.png>",
         "ts": "1710147304.000100"},
        {"type": "message", "subtype": "file_share", "user": user, "upload": True, "file": {"name": "b.png"},
         "text": "<@U061PR1YA2N|priya> uploaded a file: <https://acme.slack.com/files/b.png|b.png> and "
                 "commented: this one's better &gt; the first", "ts": "1710147305.000100"},
        {"type": "message", "subtype": "channel_archive", "user": user, "text": "archived", "ts": "1710147306.1"},
        {"type": "message", "subtype": "slackbot_response", "user": "USLACKBOT", "text": "hi", "ts": "1710147307"},
    ])
    corpus = load_corpus([export_copy])
    assert [m.text for m in corpus.messages()] == ["fine", "this one's better > the first"]
    assert dict(corpus.files[0].skipped) == {"unsupported": 3, "attachment-only": 1, "system": 1, "bot": 1}


def test_a_reply_whose_parent_is_outside_the_export_still_gets_its_thread(export_copy: Path) -> None:
    one_day(export_copy, [
        {"type": "message", "user": "U061PR1YA2N", "text": "in the channel", "ts": "1710147300.000100"},
        {"type": "message", "user": "U061DEEOK4F", "text": "late reply", "ts": "1710147400.000100",
         "thread_ts": "1710000000.000100", "parent_user_id": "U061PR1YA2N"},
    ])
    corpus = load_corpus([export_copy])
    assert {c.id: [m.text for m in c.messages] for c in corpus.conversations} == {
        f"slack:{GENERAL}#1": ["in the channel"], f"slack:{GENERAL}:1710000000.000100#1": ["late reply"]}


def test_a_folder_not_in_channels_json_is_keyed_by_its_name(export_copy: Path) -> None:
    one_day(export_copy, [{"type": "message", "user": "U061PR1YA2N", "text": "hi", "ts": "1710147300.000100"}],
            folder="secret-plans")
    [conversation] = load_corpus([export_copy]).conversations
    assert (conversation.id, conversation.title, conversation.messages[0].id) == (
        "slack:secret-plans#1", "#secret-plans", "secret-plans:1710147300.000100")


# --- malformed input ----------------------------------------------------------------------------------------
def test_bad_json_in_a_zip_names_the_member(export_copy: Path, tmp_path: Path) -> None:
    day = export_copy / "general" / "2024-03-11.json"
    day.write_text(day.read_text()[:500], encoding="utf-8")
    archive = zip_export(export_copy, tmp_path / "acme.zip")
    with pytest.raises(DataError) as caught:
        load_corpus([archive])
    assert caught.value.path == f"{archive}!general/2024-03-11.json"
    assert caught.value.message.startswith("is not valid JSON")
    assert caught.value.where is not None and caught.value.where.startswith("line ")


def test_bad_json_in_a_folder_names_the_file(export_copy: Path) -> None:
    (export_copy / "random" / "2024-03-14.json").write_text("", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_corpus([export_copy])
    assert (caught.value.path, caught.value.message) == (str(export_copy / "random" / "2024-03-14.json"),
                                                         "the file is empty")


@pytest.mark.parametrize("messages, message, where", [
    ({"messages": []}, "expected an array, found an object", "$"),
    ([{"type": "message", "user": "U061PR1YA2N", "text": "hi", "ts": "1710147300.000100"}, "oops"],
     "expected an object, found a string", "$[1]"),
    ([{"type": "message", "user": "U061PR1YA2N", "text": "hi"}], 'missing field "ts"', "$[0]"),
    ([{"type": "message", "user": "U061PR1YA2N", "text": "hi", "ts": 1710147300.0001}],
     "expected a string, found a number", "$[0].ts"),
    ([{"type": "message", "user": "U061PR1YA2N", "text": "hi", "ts": "2024-03-11T09:00:00"}],
     "unreadable timestamp '2024-03-11T09:00:00' (expected like \"1710147300.000400\")", "$[0].ts"),
    ([{"type": "message", "user": "U061PR1YA2N", "text": ["hi"], "ts": "1710147300.000100"}],
     "expected a string, found an array", "$[0].text"),
])
def test_bad_day_files(export_copy: Path, tmp_path: Path, messages, message: str, where: str) -> None:
    one_day(export_copy, messages)
    archive = zip_export(export_copy, tmp_path / "acme.zip")
    for source, label in ((export_copy, str(export_copy / "general" / "2024-03-11.json")),
                          (archive, f"{archive}!general/2024-03-11.json")):
        with pytest.raises(DataError) as caught:
            load_corpus([source])
        assert (caught.value.path, caught.value.message, caught.value.where) == (label, message, where)


@pytest.mark.parametrize("file, value, message, where", [
    ("users.json", {"members": []}, "expected an array, found an object", "$"),
    ("users.json", [{"name": "priya"}], 'missing field "id"', "$[0]"),
    ("users.json", [{"id": "U1", "profile": "priya"}], "expected an object, found a string", "$[0].profile"),
    ("channels.json", [{"id": "C1"}], 'missing field "name"', "$[0]"),
    ("dms.json", [{"id": "D1", "members": "U1,U2"}], "expected an array, found a string", "$[0].members"),
])
def test_bad_metadata(export_copy: Path, file: str, value, message: str, where: str) -> None:
    write_json(export_copy / file, value)
    with pytest.raises(DataError) as caught:
        load_corpus([export_copy])
    assert (caught.value.path, caught.value.message, caught.value.where) == (
        str(export_copy / file), message, where)


def test_format_slack_on_something_else(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text("[]")
    with pytest.raises(DataError) as caught:
        load_corpus([tmp_path], format="slack")
    assert caught.value.message.startswith("not a Slack export")


def test_a_damaged_zip(tmp_path: Path) -> None:
    archive = tmp_path / "acme.zip"
    archive.write_bytes(zip_export(EXPORT, tmp_path / "whole.zip").read_bytes()[:300])
    with pytest.raises(DataError) as caught:
        load_corpus([archive], format="slack")
    assert caught.value.message.startswith("not a readable zip file")
