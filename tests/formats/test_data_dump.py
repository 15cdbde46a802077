"""personabot's own data dump (`personabot data dump`, the bot's stored messages): written and read back by
one module, ids kept so that leaving a person out by id works on a dump."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import formats
from training.errors import DataError
from training.formats.base import ImportOptions, Source
from training.formats.data_dump import NAME, DataDumpImporter, write_dump
from training.loader import load_corpus


@pytest.fixture
def dump_file(fixtures_dir: Path) -> Path:
    return fixtures_dir / "personabot-jsonl" / "dump.jsonl"


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _messages(rows: list[dict]) -> list[tuple]:
    return [(r["speaker"], r.get("speaker_id"), r["text"], r["timestamp"]) for r in rows]


def _partition(rows: list[dict]) -> list[list[str]]:
    """The texts grouped by conversation, in order: what must survive a round trip whatever the ids."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["conversation"], []).append(r["text"])
    return list(groups.values())


def test_a_dump_reads_back_as_the_same_messages_ids_and_conversations(fixtures_dir, tmp_path, cli):
    telegram = fixtures_dir / "telegram" / "result.json"
    whatsapp = fixtures_dir / "whatsapp" / "WhatsApp Chat with Hiking Crew.txt"
    first = cli("data", "dump", str(telegram), str(whatsapp))
    assert first.returncode == 0, first.stderr
    dumped = tmp_path / "dump.jsonl"
    dumped.write_text(first.stdout, encoding="utf-8")
    assert formats.detect(Source(dumped)).name == NAME

    again = cli("data", "dump", str(dumped))
    assert again.returncode == 0, again.stderr
    before, after = _rows(first.stdout), _rows(again.stdout)
    assert _messages(after) == _messages(before)
    assert _partition(after) == _partition(before)
    assert any(r.get("speaker_id") for r in before)             # Telegram's account ids travel with the text


def test_people_left_out_by_account_id_are_left_out_of_a_dump(dump_file, cli):
    every = _rows(cli("data", "dump", str(dump_file)).stdout)
    assert {"Mirelle", "Tobin"} <= {r["speaker"] for r in every}
    result = cli("data", "dump", str(dump_file), "--exclude", "1102938475610293847")
    assert result.returncode == 0, result.stderr
    kept = _rows(result.stdout)
    assert "Mirelle" not in {r["speaker"] for r in kept}
    assert len(kept) == len(every) - sum(r["speaker"] == "Mirelle" for r in every)
    report = load_corpus([dump_file], options=ImportOptions.from_user(exclude=["1102938475610293847"])).files[0]
    assert report.skipped["excluded"] == 4


def test_the_writer_takes_the_rows_the_bot_stores(tmp_path):
    """(conversation, speaker, speaker id, text, timestamp): ids as numbers, times as ISO text or none."""
    path = tmp_path / "logged.jsonl"
    with path.open("w", encoding="utf-8") as out:
        count = write_dump([("123", "Ana", 42, "hello there", "2024-01-01T10:00:00+00:00"),
                            ("123", "Ben", None, "hi Ana", None), ("123", "Ana", 42, "", None)], out)
    assert count == 3
    result = DataDumpImporter().parse(Source(path), ImportOptions())
    [thread] = result.threads
    assert [(m.speaker, m.speaker_id, m.text) for m in thread.items] == [("Ana", "42", "hello there"),
                                                                       ("Ben", None, "hi Ana")]
    assert thread.items[0].timestamp.isoformat() == "2024-01-01T10:00:00+00:00" and thread.items[1].timestamp is None
    assert result.skipped == {"empty": 1}
    assert DataDumpImporter().parse(Source(path), ImportOptions.from_user(bots=["ben"])).skipped["bot"] == 1


@pytest.mark.parametrize("line,message,where", [
    ('{"conversation": "c", "speaker": "Ana", "text": "hi", "timestamp": nu', "is not valid JSON Lines",
     "line 2, column 68"),
    ('{"conversation": "c", "text": "hi", "timestamp": null}', 'missing field "speaker"', "line 2"),
    ('{"conversation": "c", "speaker": "Ana", "text": 5, "timestamp": null}', "expected a string", "line 2.text"),
    ('{"conversation": "c", "speaker": "Ana", "text": "hi", "timestamp": "yesterday"}', "not an ISO 8601 time",
     "line 2.timestamp"),
    ('["c", "Ana", "hi"]', "expected an object", "line 2"),
])
def test_a_bad_line_is_named(tmp_path, line, message, where):
    path = tmp_path / "dump.jsonl"
    good = '{"conversation": "c", "speaker": "Ana", "text": "hello", "timestamp": null}'
    path.write_text(f"{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        DataDumpImporter().parse(Source(path), ImportOptions())
    assert message in caught.value.message and caught.value.where == where
    assert caught.value.path == str(path) and "each line is one object" in caught.value.hint


def test_reading_is_one_pass_over_the_lines(tmp_path):
    """Many conversations interleaved: each line finds its conversation directly (no search per line)."""
    path = tmp_path / "big.jsonl"
    rows = [(f"c{i % 500}", "Ana", None, f"line {i}", None) for i in range(20_000)]
    with path.open("w", encoding="utf-8") as out:
        write_dump(rows, out)
    result = DataDumpImporter().parse(Source(path), ImportOptions())
    assert len(result.threads) == 500 and result.kept == 20_000
