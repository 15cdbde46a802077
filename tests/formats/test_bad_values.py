"""Values no exporter writes get one clear error naming the file and the place, never a traceback (issue 9,
item 6): times past the year 9999, an impossible UTC offset, digits that are not ASCII, impossible dates in a
CSV, JSON nested far deeper than any export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from training.errors import DataError
from training.formats import ImportOptions, Source, detect, get

HUGE = 10 ** 20  # seconds or milliseconds far past the year 9999


def _telegram(stamp: str) -> str:
    return json.dumps({"name": "c", "type": "personal_chat", "id": 1, "messages": [
        {"id": 1, "type": "message", "date": "2024-01-01T00:00:00", "date_unixtime": stamp, "from": "Ana",
         "from_id": "user1", "text": "hi"}]})


def _messenger(stamp: int) -> str:
    return json.dumps({"participants": [{"name": "Ana"}], "messages": [
        {"sender_name": "Ana", "timestamp_ms": stamp, "content": "hi", "type": "Generic"}]})


def _tweets(created_at: str) -> str:
    return "window.YTD.tweets.part0 = " + json.dumps([{"tweet": {"id_str": "1", "full_text": "hi",
                                                                 "created_at": created_at}}])


def _discord_json(message_id: str, kind: str) -> str:
    return json.dumps({"guild": {"id": "1", "name": "g"}, "channel": {"id": "2", "type": "GuildTextChat"},
                       "messages": [{"id": message_id, "type": kind, "timestamp": "2024-01-01T00:00:00+00:00",
                                     "content": "hi", "author": {"id": "4", "name": "Ana"}}]})


def _discord_csv(date: str) -> str:
    return ('AuthorID,Author,Date,Content,Attachments,Reactions\n'
            f'"1","Ana","3/11/2024 6:58 PM","hi","",""\n"1","Ana","{date}","ho","",""\n')


# case -> (format, file name, file text, the place the error must name, words the message must hold)
CASES: dict[str, tuple[str, str, str, str, str]] = {
    "telegram date_unixtime 10^20": ("telegram", "result.json", _telegram(str(HUGE)),
                                     "$.messages[0].date_unixtime", "not a time"),
    "messenger timestamp_ms 10^20": ("messenger", "message_1.json", _messenger(HUGE),
                                     "$.messages[0].timestamp_ms", "not a time"),
    "twitter offset +9999": ("twitter", "tweets.js", _tweets("Sat Dec 06 18:20:30 +9999 2025"),
                             "$[0].tweet.created_at", "+9999"),
    "discord id ²": ("discord-json", "c.json", _discord_json("²", "Default"), "$.messages[0].id",
                     "unreadable message id '²'"),
    "discord type ²": ("discord-json", "c.json", _discord_json("3", "²"), "$.messages[0].type",
                       "unreadable message type '²'"),
    "csv date 0/5/2024": ("discord-csv", "c.csv", _discord_csv("0/5/2024 10:00"), "line 3",
                          "not a real date: '0/5/2024 10:00'"),
    "csv time 99:00": ("discord-csv", "c.csv", _discord_csv("1/5/2024 99:00"), "line 3",
                       "not a real time: '1/5/2024 99:00'"),
    "telegram nested 100,000 deep": ("telegram", "result.json",
                                     '{"messages": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                     "line 1, column 122", "nested more than 100 levels deep"),
    "alpaca line nested 100,000 deep": ("alpaca", "a.jsonl",
                                        '{"instruction": "a", "output": "b"}\n' + "[" * 100_000 + "\n",
                                        "line 2, column 101", "nested more than 100 levels deep"),
    "alpaca number of 5,000 digits": ("alpaca", "b.jsonl",
                                      '{"instruction": "a", "output": "b"}\n' + "1" * 5_000 + "\n",
                                      "line 2", "is not usable JSON Lines"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_value_no_exporter_writes_is_a_clear_error_at_its_place(case: str, tmp_path: Path) -> None:
    format_name, name, text, where, words = CASES[case]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        get(format_name).parse(Source(path), ImportOptions())
    assert caught.value.path == str(path)
    assert caught.value.where == where
    assert words in caught.value.message


def _slack_export(folder: Path, ts: str) -> Path:
    (folder / "general").mkdir(parents=True)
    (folder / "users.json").write_text('[{"id": "U1", "name": "ana", "profile": {}}]')
    (folder / "channels.json").write_text('[{"id": "C1", "name": "general"}]')
    (folder / "general" / "2024-03-11.json").write_text(json.dumps([{"type": "message", "user": "U1", "ts": ts,
                                                                       "text": "hi"}]))
    return folder


def test_a_slack_ts_past_the_year_9999_names_the_day_file_and_message(tmp_path: Path) -> None:
    export = _slack_export(tmp_path / "export", f"{HUGE}.000100")
    with pytest.raises(DataError) as caught:
        get("slack").parse(Source(export), ImportOptions())
    assert caught.value.path == str(export / "general" / "2024-03-11.json")
    assert caught.value.where == "$[0].ts" and "not a time" in caught.value.message


@pytest.mark.parametrize("text", ["[" * 100_000, "[" + "{\"a\": [" * 50_000])
def test_detection_is_not_thrown_by_json_nested_too_deep(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    assert detect(Source(path)) is None


def test_the_cli_answers_a_bad_value_with_exit_2_and_no_traceback(cli: Callable, tmp_path: Path) -> None:
    for case in ("telegram date_unixtime 10^20", "discord type ²", "telegram nested 100,000 deep"):
        format_name, name, text, where, words = CASES[case]
        path = tmp_path / case.replace(" ", "-") / name
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        result = cli("data", "inspect", str(path), "--format", format_name)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"personabot: error: {path} ({where}): ")
        assert words in result.stderr
