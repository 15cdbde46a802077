"""The Twitter/X archive importer on hand-written archive files (tests/fixtures/twitter/)."""

from __future__ import annotations

import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from training.errors import DataError
from training.formats import ImportOptions, Source, detect, get
from training.loader import load_corpus

FIXTURES = Path(__file__).parents[1] / "fixtures" / "twitter"
ARCHIVE = FIXTURES / "archive"
DATA = ARCHIVE / "data"
OWNER = ("Wren Calloway", ("wrenfieldnotes", "@wrenfieldnotes"), "1460032871193722880")
UTC = timezone.utc

# Every tweet of the archive that is training text: (id, time, reply_to, text), oldest first.
ARCHIVE_TWEETS = [
    ("1895775420012345678", datetime(2025, 3, 1, 12, 11, 11, tzinfo=UTC), None, "New notebook, new season."),
    ("1896402517788990011", datetime(2025, 3, 3, 5, 44, 2, tzinfo=UTC), None,
     "Morning walk: 3 herons, 1 kingfisher & a very loud wren. Good start <3"),
    ("1896793401122334455", datetime(2025, 3, 4, 7, 38, 59, tzinfo=UTC), None,
     "Marsh survey thread 🧵 (1/3)\n\nWe counted 212 birds before 8am. Fingers frozen, spirits high."),
    ("1896794093344556677", datetime(2025, 3, 4, 7, 41, 45, tzinfo=UTC), "1896793401122334455",
     "(2/3) Biggest surprise: a pair of avocets > 40 km from the coast. Never seen that here."),
    ("1896794735566778899", datetime(2025, 3, 4, 7, 44, 18, tzinfo=UTC), "1896794093344556677",
     "(3/3) Full tally here — thanks to everyone who came out!"),
    ("1897488711223344556", datetime(2025, 3, 5, 15, 28, 19, tzinfo=UTC), None, "Kingfisher, finally in focus 📸"),
    ("1897978865544332211", datetime(2025, 3, 6, 23, 56, 9, tzinfo=UTC), "1897977001122334455",
     "Yes! Saturday works 🙌 see you at the north gate"),
    ("1898470033445566778", datetime(2025, 3, 8, 8, 26, 31, tzinfo=UTC), None, "This is the best news all week"),
    ("1898485002211003344", datetime(2025, 3, 8, 9, 25, 53, tzinfo=UTC), None,
     "Heading to the reservoir this afternoon, who's in?"),
    ("1898952077009988776", datetime(2025, 3, 9, 16, 21, 47, tzinfo=UTC), "1896400000000000999",
     "Correction: it was a grey heron, not a great blue. Thanks for the sharp eyes!"),
]
SELF_THREAD = ["1896793401122334455", "1896794093344556677", "1896794735566778899"]


def tweets_of(corpus) -> list[tuple[str, datetime, str | None, str]]:
    return sorted(((m.id, m.timestamp, m.reply_to, m.text) for m in corpus.messages()), key=lambda t: t[1])


def conversations_of(corpus) -> dict[str, list[str]]:
    return {c.id: [m.id for m in c.messages] for c in corpus.conversations}


def expected_conversations() -> dict[str, list[str]]:
    """Each tweet alone, except the self-thread, which is one conversation keyed by its first tweet."""
    alone = {f"twitter:{t[0]}#1": [t[0]] for t in ARCHIVE_TWEETS if t[0] not in SELF_THREAD}
    return {**alone, f"twitter:{SELF_THREAD[0]}#1": SELF_THREAD}


def write_tweets(folder: Path, body: str, name: str = "tweets.js") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


ONE_TWEET = """window.YTD.tweets.part0 = [
  {
    "tweet" : {
      "entities" : {
        "hashtags" : [ ],
        "symbols" : [ ],
        "user_mentions" : [ ],
        "urls" : [ ]
      },
      "id_str" : "1900000000000000001",
      "id" : "1900000000000000001",
      "created_at" : "Mon Mar 10 10:00:00 +0000 2025",
      "full_text" : "TEXT"
    }
  }
]"""


# --- detection ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [FIXTURES / "tweet.js", DATA / "tweets.js", DATA / "tweets-part1.js", ARCHIVE])
def test_tweets_files_and_the_archive_folder_are_detected(path: Path) -> None:
    importer = detect(Source(path))
    assert importer is not None and importer.name == "twitter"


@pytest.mark.parametrize("name", ["account.js", "like.js"])
def test_other_archive_files_are_not_tweets(name: str) -> None:
    assert get("twitter").sniff(Source(DATA / name)) == 0.0
    assert detect(Source(DATA / name)) is None


def test_a_folder_without_the_archive_layout_is_not_claimed(tmp_path: Path) -> None:
    # tweets.js + account.js without the data/ level is walked file by file instead (see below).
    assert get("twitter").sniff(Source(DATA)) == 0.0
    shutil.copy(DATA / "tweets.js", tmp_path / "tweets.js")
    (tmp_path / "data").mkdir()
    shutil.copy(DATA / "tweets.js", tmp_path / "data" / "tweets.js")
    assert get("twitter").sniff(Source(tmp_path)) == 0.0  # data/tweets.js alone, no account.js/manifest.js


# --- the archive --------------------------------------------------------------------------------------------
def test_archive_folder_reads_every_tweet_as_the_owner() -> None:
    corpus = load_corpus([ARCHIVE])
    assert tweets_of(corpus) == ARCHIVE_TWEETS
    for message in corpus.messages():
        assert (message.speaker, message.speaker_aliases, message.speaker_id) == OWNER
    [report] = corpus.files
    assert (report.format, report.messages) == ("twitter", 10)
    # RT @quillandmoss (retweet), photo-only tweet and photo-only reply (attachment-only), a reply that is
    # only "@quillandmoss" (empty), the first version of the edited "resevoir" tweet (superseded-edit).
    assert dict(report.skipped) == {"retweet": 1, "attachment-only": 2, "empty": 1, "superseded-edit": 1}


def test_each_tweet_stands_alone_except_self_threads_across_parts() -> None:
    corpus = load_corpus([ARCHIVE])
    assert conversations_of(corpus) == expected_conversations()


def test_walking_the_data_folder_reads_the_same_and_ignores_account_js() -> None:
    corpus = load_corpus([DATA])
    assert tweets_of(corpus) == ARCHIVE_TWEETS
    assert conversations_of(corpus) == expected_conversations()
    assert {m.speaker for m in corpus.messages()} == {"Wren Calloway"}
    assert sorted((Path(r.path).name, r.messages) for r in corpus.files) == [("tweets-part1.js", 2),
                                                                             ("tweets.js", 8)]
    assert sorted((Path(p).name, why) for p, why in corpus.ignored) == [
        ("account.js", "format not recognised"), ("like.js", "format not recognised")]


def test_archive_zip_reads_the_same(tmp_path: Path) -> None:
    archive = tmp_path / "twitter-2025-03-10-5f1d2c.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(ARCHIVE.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(ARCHIVE).as_posix())
    assert detect(Source(archive)).name == "twitter"
    corpus = load_corpus([archive])
    assert tweets_of(corpus) == ARCHIVE_TWEETS
    assert conversations_of(corpus) == expected_conversations()


def test_links_are_expanded_on_request_but_media_links_never() -> None:
    corpus = load_corpus([ARCHIVE], options=ImportOptions(twitter_links="expand"))
    texts = {m.id: m.text for m in corpus.messages()}
    assert texts["1896794735566778899"] == ("(3/3) Full tally here https://wrenfieldnotes.example/marsh-2025"
                                            " — thanks to everyone who came out!")
    assert texts["1898470033445566778"] == ("This is the best news all week "
                                            "https://twitter.com/quillandmoss/status/1898412345678901234")
    assert texts["1897488711223344556"] == "Kingfisher, finally in focus 📸"
    assert load_corpus([ARCHIVE], options=ImportOptions(twitter_links="expand")).files[0].skipped[
        "attachment-only"] == 2


def test_a_part_read_alone_without_account_js_is_me_and_stands_alone(tmp_path: Path) -> None:
    alone = shutil.copy(DATA / "tweets-part1.js", tmp_path / "tweets-part1.js")
    corpus = load_corpus([alone])
    assert [(m.speaker, m.speaker_aliases, m.speaker_id) for m in corpus.messages()] == [("me", (), None)] * 2
    # Its parent (2/3) is in tweets.js, which is not there: the reply keeps reply_to but is its own thread.
    assert conversations_of(corpus) == {"twitter:1895775420012345678#1": ["1895775420012345678"],
                                        "twitter:1896794735566778899#1": ["1896794735566778899"]}
    assert next(m for m in corpus.messages() if m.id == "1896794735566778899").reply_to == "1896794093344556677"


# --- the 2019 tweet.js --------------------------------------------------------------------------------------
def test_old_tweet_js_with_bare_entries_and_no_account_js() -> None:
    corpus = load_corpus([FIXTURES / "tweet.js"])
    assert [(m.speaker, m.speaker_id, m.id, m.timestamp, m.reply_to, m.text) for m in tweets_sorted(corpus)] == [
        ("me", None, "612345678901234567", datetime(2015, 6, 20, 18, 30, tzinfo=UTC), "612340000000000001",
         "thanks both!"),  # 2015 reply: range starts at 0, the leading mentions are stripped by pattern
        ("me", None, "1117902338877665544", datetime(2019, 4, 15, 20, 55, 3, tzinfo=UTC), "1117899912345678901",
         "Agreed > the old trail map is better"),  # display_text_range starts after "@mossbank_ed "
        ("me", None, "1118236061122334455", datetime(2019, 4, 16, 19, 1, 9, tzinfo=UTC), None,
         "Finished the hedgerow survey & only got rained on twice"),
        ("me", None, "1118261220011223344", datetime(2019, 4, 16, 20, 41, 7, tzinfo=UTC), "1118236061122334455",
         "…and the hawthorn is already in leaf. Early year."),
    ]
    assert dict(corpus.files[0].skipped) == {"retweet": 1}
    assert conversations_of(corpus) == {
        "twitter:612345678901234567#1": ["612345678901234567"],
        "twitter:1117902338877665544#1": ["1117902338877665544"],
        "twitter:1118236061122334455#1": ["1118236061122334455", "1118261220011223344"],
    }


def tweets_sorted(corpus):
    return sorted(corpus.messages(), key=lambda m: m.timestamp)


# --- smaller cases ------------------------------------------------------------------------------------------
def test_t_co_links_without_an_entity_are_removed_unless_expanding(tmp_path: Path) -> None:
    path = write_tweets(tmp_path, ONE_TWEET.replace("TEXT", "slides: https://t.co/Vb8Nm3Kq0Z see you"))
    assert [m.text for m in load_corpus([path]).messages()] == ["slides: see you"]
    expand = ImportOptions(twitter_links="expand")
    assert [m.text for m in load_corpus([path], options=expand).messages()] == [
        "slides: https://t.co/Vb8Nm3Kq0Z see you"]


def test_the_owner_listed_as_a_bot_is_skipped() -> None:
    with pytest.raises(DataError) as caught:
        load_corpus([ARCHIVE], options=ImportOptions(bot_names=frozenset({"@wrenfieldnotes"})))
    assert caught.value.message == "no chat messages to learn from (skipped: 13 bot, 1 superseded-edit, 1 retweet)"


def test_account_js_with_only_a_username(tmp_path: Path) -> None:
    path = write_tweets(tmp_path, ONE_TWEET.replace("TEXT", "hi"))
    (tmp_path / "account.js").write_text('window.YTD.account.part0 = [ {\n  "account" : {\n'
                                         '    "username" : "wrenfieldnotes",\n    "accountId" : "42"\n  }\n} ]')
    [message] = load_corpus([path]).messages()
    assert (message.speaker, message.speaker_aliases, message.speaker_id) == (
        "wrenfieldnotes", ("@wrenfieldnotes",), "42")


# --- malformed input ----------------------------------------------------------------------------------------
def test_truncated_download() -> None:
    with pytest.raises(DataError) as caught:
        load_corpus([FIXTURES / "bad" / "tweets-truncated.js"])
    error = caught.value
    assert error.message.startswith("is not valid JSON")
    assert error.where is not None and error.where.startswith("line ")
    assert "cut off" in error.hint


@pytest.mark.parametrize("body, where", [
    ('window.YTD.tweets.part0 = [ {, ]', "line 1, column 30"),
    ('window.YTD.tweets.part0 = [ {\n  "tweet" : { "full_text" : "x", } } ]', "line 2, column 34"),
])
def test_prefix_is_blanked_so_line_and_column_stay_true(tmp_path: Path, body: str, where: str) -> None:
    path = write_tweets(tmp_path, body)
    with pytest.raises(DataError) as caught:
        load_corpus([path], format="twitter")
    assert caught.value.where == where


@pytest.mark.parametrize("body, message, where", [
    (ONE_TWEET.replace('      "created_at" : "Mon Mar 10 10:00:00 +0000 2025",\n', ""),
     'missing field "created_at"', "$[0].tweet"),
    (ONE_TWEET.replace("Mon Mar 10 10:00:00 +0000 2025", "2025-03-10 10:00"),
     "unreadable date '2025-03-10 10:00' (expected like 'Sat Dec 06 18:20:30 +0000 2025')",
     "$[0].tweet.created_at"),
    (ONE_TWEET.replace("Mon Mar 10", "Mon Mar 32"), "unreadable date 'Mon Mar 32 10:00:00 +0000 2025' "
     "(day is out of range for month)", "$[0].tweet.created_at"),
    (ONE_TWEET.replace('"id_str" : "1900000000000000001",\n      "id" : "1900000000000000001",', ""),
     'missing field "id_str"', "$[0].tweet"),
    (ONE_TWEET.replace('"full_text" : "TEXT"', '"full_text" : 7'), "expected a string, found a number",
     "$[0].tweet.full_text"),
    (ONE_TWEET.replace('"urls" : [ ]', '"urls" : { }'), "expected an array, found an object",
     "$[0].tweet.entities.urls"),
    ("window.YTD.tweets.part0 = {}", "expected an array, found an object", "$"),
    ("window.YTD.tweets.part0 = [ 3 ]", "expected an object, found a number", "$[0]"),
    ("hello, I am not an archive", "is not a Twitter archive file (it should start with "
     "`window.YTD.tweets.part0 = [`)", "line 1"),
])
def test_bad_tweets_files(tmp_path: Path, body: str, message: str, where: str) -> None:
    path = write_tweets(tmp_path, body)
    with pytest.raises(DataError) as caught:
        load_corpus([path], format="twitter")
    assert (caught.value.path, caught.value.message, caught.value.where) == (str(path), message, where)


def test_empty_file(tmp_path: Path) -> None:
    path = write_tweets(tmp_path, "window.YTD.tweets.part0 = ")
    with pytest.raises(DataError, match="the file is empty"):
        load_corpus([path], format="twitter")


def test_account_js_named_with_format_twitter_says_what_it_is() -> None:
    with pytest.raises(DataError) as caught:
        load_corpus([DATA / "account.js"], format="twitter")
    assert caught.value.message == "this is the archive's `account` file, not the tweets"
    assert "data/tweets.js" in caught.value.hint


def test_damaged_account_js_is_named(tmp_path: Path) -> None:
    path = write_tweets(tmp_path, ONE_TWEET.replace("TEXT", "hi"))
    (tmp_path / "account.js").write_text('window.YTD.account.part0 = [ {\n  "account" : {\n    "username" : ')
    with pytest.raises(DataError) as caught:
        load_corpus([path])
    assert caught.value.path == str(tmp_path / "account.js")
    assert caught.value.message.startswith("is not valid JSON")
    (tmp_path / "account.js").write_text('window.YTD.account.part0 = [ { "account" : { "email" : "a@b.c" } } ]')
    with pytest.raises(DataError) as caught:
        load_corpus([path])
    assert (caught.value.message, caught.value.where) == ('missing field "username"', "$[0].account")


def test_a_damaged_sibling_part_fails_only_its_own_parse(tmp_path: Path) -> None:
    good = write_tweets(tmp_path, ONE_TWEET.replace("TEXT", "hi"))
    shutil.copy(FIXTURES / "bad" / "tweets-truncated.js", tmp_path / "tweets-part1.js")
    assert [m.text for m in load_corpus([good]).messages()] == ["hi"]
    with pytest.raises(DataError) as caught:
        load_corpus([tmp_path])
    assert caught.value.path == str(tmp_path / "tweets-part1.js")


def test_an_archive_folder_without_tweets(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(DATA / "account.js", tmp_path / "data" / "account.js")
    with pytest.raises(DataError) as caught:
        load_corpus([tmp_path], format="twitter")
    assert caught.value.message == "no tweets.js found in this Twitter archive"
