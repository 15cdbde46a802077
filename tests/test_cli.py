"""The personabot command as users run it: real subprocesses, real files, exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures"
TELEGRAM = FIX / "telegram" / "result.json"
WHATSAPP = FIX / "whatsapp" / "WhatsApp Chat with Hiking Crew.txt"


def test_inspect_json_follows_the_contract(cli):
    result = cli("data", "inspect", str(TELEGRAM), str(WHATSAPP), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"files", "speakers", "conversations"} <= set(report)
    assert [f["path"] for f in report["files"]] == [str(TELEGRAM), str(WHATSAPP)]
    assert [f["format"] for f in report["files"]] == ["telegram", "whatsapp"]
    for f in report["files"]:
        assert set(f) == {"path", "format", "messages", "skipped", "notes"}
        assert isinstance(f["notes"], list)
        assert isinstance(f["messages"], int) and f["messages"] > 0
        assert all(isinstance(n, int) and n > 0 for n in f["skipped"].values())
    assert report["files"][0]["skipped"].get("system", 0) > 0  # Telegram service messages are counted
    counts = list(report["speakers"].values())
    assert counts == sorted(counts, reverse=True)  # ranked by message count
    assert sum(counts) == sum(f["messages"] for f in report["files"])
    assert report["conversations"] >= 2


def test_inspect_for_people_lists_files_speakers_and_dates(cli):
    result = cli("data", "inspect", str(WHATSAPP))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "whatsapp" in out and "messages kept; skipped:" in out
    assert "speakers by messages:" in out and "conversations" in out and "dates: 20" in out


def test_dump_writes_one_json_object_per_message(cli):
    result = cli("data", "dump", str(WHATSAPP), str(TELEGRAM))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    inspect = json.loads(cli("data", "inspect", str(WHATSAPP), str(TELEGRAM), "--json").stdout)
    assert len(rows) == sum(f["messages"] for f in inspect["files"])
    for row in rows:
        # The account id is written when the export has one (Telegram does, WhatsApp does not).
        has_id = row["conversation"].startswith("telegram:")
        assert set(row) == {"conversation", "speaker", "text", "timestamp"} | ({"speaker_id"} if has_id else set())
        assert not has_id or row["speaker_id"]
        assert row["text"] and row["speaker"]
        assert row["timestamp"] is None or row["timestamp"][:2] == "20"
    assert len({r["conversation"] for r in rows}) == inspect["conversations"]


def test_dump_of_a_folder_reads_its_exports_and_lists_what_it_ignored(cli, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "notes.txt").write_text("just some notes, not a chat\n")
    (tmp_path / "chat.txt").write_bytes(WHATSAPP.read_bytes())
    result = cli("data", "inspect", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [Path(f["path"]).name for f in report["files"]] == ["chat.txt"]
    ignored = {Path(i["path"]).name: i["reason"] for i in report["ignored"]}
    assert ignored == {"cat.jpg": "not a chat export file type", "notes.txt": "format not recognised"}


@pytest.mark.parametrize("make,message,where", [
    (lambda d: d / "missing.json", "no such file or folder", None),
    (lambda d: _write(d / "x.txt", "hello there\nnothing to see\n"), "cannot tell which export format", None),
    (lambda d: _write(d / "empty.json", ""), "cannot tell which export format", None),
    (lambda d: _write(d / "cut.json", TELEGRAM.read_text()[:1500]), "is not valid JSON", "line "),
])
def test_bad_inputs_get_one_clear_message_and_exit_code_2(cli, tmp_path, make, message, where):
    path = make(tmp_path)
    result = cli("data", "inspect", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("personabot: error: ")
    assert str(path) in result.stderr and message in result.stderr
    if where:
        assert f"({where}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_truncated_download_says_so_and_a_forced_format_names_the_problem(cli, tmp_path):
    cut = _write(tmp_path / "result.json", TELEGRAM.read_text()[:1500])
    forced = cli("data", "inspect", str(cut), "--format", "telegram")
    assert forced.returncode == 2 and "looks cut off" in forced.stderr
    unknown = cli("data", "inspect", str(TELEGRAM), "--format", "telegramm")
    assert unknown.returncode == 2 and "unknown format 'telegramm'" in unknown.stderr
    assert "telegram" in unknown.stderr.split("known formats:")[1]


def test_names_that_would_take_over_the_terminal_are_shown_escaped(cli, tmp_path):
    # A member can call themselves anything: colours, a cleared screen, text shown backwards.
    red, reversed_ = "Mallory\x1b[31m\x1b[2J", "\u202eyrollaM"
    lines = [f'"{who}",message number {m}' for m, who in enumerate([red, reversed_, "Bob"] * 4)]
    chat = tmp_path / "script.csv"   # a Character/Line table keeps names exactly as written
    chat.write_text("Character,Line\n" + "\n".join(lines) + "\n", encoding="utf-8")
    inspect = cli("data", "inspect", str(chat))
    unknown = cli("train", "--data", str(chat), "--speaker", "Mallory", "--out", str(tmp_path / "m"),
                  "--from-scratch", "tiny")
    assert inspect.returncode == 0, inspect.stderr
    assert unknown.returncode == 2 and "did you mean" in unknown.stderr, unknown.stderr
    for shown in (inspect.stdout, unknown.stderr):
        assert "\x1b" not in shown and "\u202e" not in shown                  # nothing raw reaches the terminal
        assert "Mallory\\x1b[31m\\x1b[2J" in shown and "\\u202eyrollaM" in shown   # what is there, visibly
    assert json.loads(cli("data", "inspect", str(chat), "--json").stdout)["speakers"][red] == 4   # data unchanged


def test_a_persona_named_with_control_characters_chats_and_samples_escaped(cli, tmp_path):
    name = "Mal\x1b[2Jlory\u202e"
    table = tmp_path / "script.csv"
    rows = [f'"{who}",line {i} about the weather' for i in range(40) for who in (name, "Bob")]
    table.write_text("Character,Line\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "p"
    trained = cli("train", "--data", str(table), "--speaker", name, "--out", str(out), "--from-scratch", "tiny",
                  "--max-steps", "2", "--batch-size", "4", "--threads", "1", "--samples", "0", "--progress", "log")
    assert trained.returncode == 0, trained.stderr
    chat = cli("chat", str(out), input="hello\n/quit\n")
    sample = cli("sample", str(out), "-n", "1")
    for result in (trained, chat, sample):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout + result.stderr
    assert "Mal\\x1b[2Jlory\\u202e> " in chat.stdout and sample.stdout.startswith("Mal\\x1b[2Jlory\\u202e: ")


def test_formats_lists_every_importer(cli):
    result = cli("data", "formats")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    from training import formats

    assert names == [i.name for i in formats.all_importers()] and "whatsapp" in names and "table" in names


def test_training_on_too_little_data_fails_cleanly(cli, tmp_path):
    out = tmp_path / "p"
    result = cli("train", "--data", str(WHATSAPP), "--speaker", "marco reyes", "--out", str(out),
                 "--from-scratch", "tiny", "--progress", "none")
    assert result.returncode == 2
    assert "too little data for Marco Reyes: 4 turns (4 messages)" in result.stderr and "hint:" in result.stderr
    assert not out.exists() and not (tmp_path / ".p.partial").exists()


@pytest.fixture(scope="module")
def persona_dir(tmp_path_factory) -> Path:
    """A tiny trained persona, shared by the chat and run tests."""
    from chatgen import chat_conversations, write_whatsapp
    from training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("persona")
    chat = write_whatsapp(root / "chat.txt", chat_conversations())
    train(TrainConfig(data=[str(chat)], speaker="alice", out=root / "alice", from_scratch="tiny", max_steps=20,
                      epochs=100, batch_size=4, threads=1, samples=0))
    return root / "alice"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_chat_answers_each_line_in_character_until_quit(cli, persona_dir):
    result = cli("chat", str(persona_dir), "--name", "Bob", input="pizza tonight\n/reset\nrain again\n/quit\nnever\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("chatting with Alice")
    assert sum(line.startswith("Alice> ") for line in lines) == 2  # two messages, /quit before the third
    assert "(conversation forgotten)" in result.stdout


def test_run_uses_the_configured_persona_and_validates_settings(cli, persona_dir, tmp_path):
    ok = cli("run", cwd=tmp_path, env={"PERSONA_MODEL": str(persona_dir)}, input="hello\n")
    assert ok.returncode == 0, ok.stderr
    assert "Alice> " in ok.stdout and "no DISCORD_TOKEN set, so chatting in the terminal" in ok.stderr
    assert (tmp_path / "data" / "personabot.sqlite3").is_file()   # the store opened at its default place

    # With a token but no way to reach Discord (no network here): a clear error, and the token never shown.
    offline = cli("run", cwd=tmp_path, env={"PERSONA_MODEL": str(persona_dir), "DISCORD_TOKEN": "secret-token-123"},
                  input="", timeout=120)
    assert offline.returncode == 2, offline.stderr
    assert "cannot reach Discord" in offline.stderr or "refused" in offline.stderr
    assert "secret-token-123" not in offline.stderr + offline.stdout

    missing = cli("run", cwd=tmp_path, env={"PERSONA_MODEL": str(tmp_path / "nowhere")}, input="")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    (tmp_path / ".env").write_text("GEN_TEMPERATURE=hot\nGEN_TOP_P=2\nTORCH_THREADS=0\n")
    bad = cli("run", cwd=tmp_path, env={"PERSONA_MODEL": str(persona_dir)}, input="")
    assert bad.returncode == 2
    problems = [line for line in bad.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 3
    assert "GEN_TEMPERATURE='hot' is not a number" in bad.stderr and "GEN_TOP_P" in bad.stderr
    assert "TORCH_THREADS=0 must be at least 1" in bad.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_model_file_is_named_with_what_to_do(cli, persona_dir, tmp_path, damage):
    import shutil

    broken = tmp_path / "alice"
    shutil.copytree(persona_dir, broken)
    weights = broken / "model.safetensors"
    whole = weights.read_bytes()
    # A copy cut off half-way, or a file overwritten with other bytes of the same length.
    weights.write_bytes(whole[:len(whole) // 2] if damage == "truncated" else bytes(range(256)) * (len(whole) // 256))
    for result in (cli("sample", str(broken), "-n", "1"), cli("chat", str(broken), input="hello\n"),
                   cli("run", cwd=tmp_path, env={"PERSONA_MODEL": str(broken)}, input="hello\n")):
        assert result.returncode == 2, result.stderr
        assert f"the model file {weights} is damaged" in result.stderr
        assert "train the persona again" in result.stderr and "restore" in result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("error") == 1


def test_sigterm_stops_personabot_train_as_ctrl_c_does(tmp_path, make_chat):
    """SIGTERM (a process manager, `kill`) as soon as `personabot train` is running, before its training loop:
    the one line Ctrl-C gives, exit status 130, no traceback, nothing at the output path."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "alice"
    proc = subprocess.Popen([sys.executable, "-m", "bot", "train", "--data", str(make_chat()), "--speaker", "alice",
                             "--out", str(out), "--from-scratch", "tiny", "--threads", "1", "--max-steps", "1000",
                             "--progress", "json"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()   # its first progress event: the command has started
        assert json.loads(first)["event"] == "phase", first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = err.splitlines()
    assert proc.returncode == 130, err
    assert [line for line in lines if line.startswith("personabot:")] == lines[-1:], err
    # Before the loop the line is "interrupted"; a machine slow to deliver the signal may see the loop save first.
    assert lines[-1].startswith(("personabot: interrupted", "personabot: training interrupted at step ")), err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("option, value", [
    ("--time-budget", "inf"), ("--time-budget", "nan"), ("--epochs", "inf"), ("--lr", "inf"),
    ("--checkpoint-every", "nan"), ("--conversation-gap", "inf"),
])
def test_train_refuses_a_number_that_is_not_finite(cli, tmp_path, make_chat, option, value):
    out = tmp_path / "alice"
    result = cli("train", "--data", str(make_chat()), "--speaker", "alice", "--out", str(out), "--from-scratch",
                 "tiny", "--threads", "1", "--max-steps", "12", "--progress", "none", option, value, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"personabot: error: {option} must be a finite number, not {value}"]
    assert not out.exists() and not (tmp_path / ".alice.partial").exists()


def test_a_base_model_that_cannot_be_loaded_is_a_clear_error(cli, tmp_path, make_chat):
    chat = make_chat()
    # Tests run with HF_HUB_OFFLINE=1: a hub id goes through from_pretrained and fails without a download.
    hub = cli("train", "--data", str(chat), "--speaker", "alice", "--out", str(tmp_path / "a"), "--base",
              "gpt2-medium", "--progress", "none")
    assert hub.returncode == 2
    assert "cannot load the base model from model id 'gpt2-medium'" in hub.stderr
    assert "--from-scratch" in hub.stderr and "Traceback" not in hub.stderr
    local = cli("train", "--data", str(chat), "--speaker", "alice", "--out", str(tmp_path / "b"), "--base",
                str(tmp_path / "no-such-model"), "--progress", "none")
    assert local.returncode == 2 and "does not exist" in local.stderr
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    empty = cli("train", "--data", str(chat), "--speaker", "alice", "--out", str(tmp_path / "c"), "--base",
                str(not_a_model), "--progress", "none")
    assert empty.returncode == 2 and "cannot load the base model from directory" in empty.stderr
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_sample_prints_lines_that_passed_the_filters(cli, persona_dir):
    from bot.core.filters import LeakGuard

    result = cli("sample", str(persona_dir), "-n", "4", "--json", "--seed", "3", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["speaker"] == "Alice" and 0 < len(out["samples"]) <= 4
    guard = LeakGuard.from_artifact(persona_dir)
    assert all(line and guard.check(line) is None for line in out["samples"])


def test_eval_reports_the_quality_cost_of_int8(cli, persona_dir, tmp_path):
    from chatgen import chat_conversations, write_whatsapp

    data = write_whatsapp(tmp_path / "other.txt", chat_conversations(6, seed=99))
    result = cli("eval", str(persona_dir), "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    int8 = report["int8"]
    assert int8["perplexity"] > 1 and abs(int8["loss"] - report["loss"]) < 0.1
    assert int8["perplexity_change_pct"] == pytest.approx(100 * (int8["perplexity"] / report["perplexity"] - 1))
    text = cli("eval", str(persona_dir), "--data", str(data))
    assert "(float32)" in text.stdout and "(int8, the CPU backend:" in text.stdout


def test_run_checks_the_reply_settings(cli, persona_dir, tmp_path):
    blocklist = _write(tmp_path / "blocked.txt", "# words the bot must never say\nbadword\nre:a(b\n")
    bad = cli("run", cwd=tmp_path, input="", env={"PERSONA_MODEL": str(persona_dir), "BACKEND": "gpu-magic",
                                                  "BLOCKLIST_FILE": str(blocklist), "LEAK_NGRAM_WORDS": "1"})
    assert bad.returncode == 2
    assert "BACKEND='gpu-magic' is not one of auto, torch, torch-int8, ctranslate2" in bad.stderr
    assert f"{blocklist} line 3" in bad.stderr
    assert "LEAK_NGRAM_WORDS=1 must be at least 2" in bad.stderr
    _write(blocklist, "badword\n")
    ok = cli("run", cwd=tmp_path, input="hello\n", env={"PERSONA_MODEL": str(persona_dir), "BACKEND": "torch",
                                                        "BLOCKLIST_FILE": str(blocklist)})
    assert ok.returncode == 0, ok.stderr
    assert "(" + str(persona_dir) + ", torch)" in ok.stdout and "Alice> " in ok.stdout


def test_sigterm_stops_the_bot_cleanly_and_closes_the_store(persona_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "PERSONA_MODEL": str(persona_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("chatting with Alice")   # up, and waiting for input
        database = tmp_path / "data" / "personabot.sqlite3"
        assert database.is_file() and (tmp_path / "data" / "personabot.sqlite3-wal").exists()  # open in WAL
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
    finally:
        proc.kill()
    assert not (tmp_path / "data" / "personabot.sqlite3-wal").exists()   # closed: the WAL was checkpointed


def test_run_catches_up_a_missed_post_once_in_the_terminal(cli, persona_dir, tmp_path):
    import asyncio
    from datetime import datetime, timedelta, timezone

    from bot.storage.sqlite import SQLiteStore as Store

    database = tmp_path / "data" / "personabot.sqlite3"

    async def prepare():
        async with await Store.open(database) as store:
            schedule = await store.add_schedule("nightly", cron="0 3 * * *", targets=["terminal", "twitter"],
                                                mode="line")
            past = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat()   # three slots missed
            await store._execute("UPDATE schedules SET created_at = ?, last_run = ? WHERE id = ?",
                                 (past, past, schedule))

    async def posts():
        async with await Store.open(database) as store:
            return await store.posts()

    asyncio.run(prepare())
    env = {"PERSONA_MODEL": str(persona_dir), "POST_GRACE_MINUTES": "2000"}   # the last one is within grace
    first = cli("run", cwd=tmp_path, env=env, input="")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("[post] Alice: ") == 2          # one catch-up, on both targets
    rows = asyncio.run(posts())
    assert sorted(r["target"] for r in rows) == ["terminal", "twitter"]
    assert {r["status"] for r in rows} == {"posted"}
    assert [r["remote_id"] for r in rows if r["target"] == "twitter"] == ["terminal:no-twitter-credentials"]
    again = cli("run", cwd=tmp_path, env=env, input="")         # restarted at once: nothing missed since
    assert again.returncode == 0 and "[post]" not in again.stdout


def test_run_serves_healthz_and_metrics_on_loopback_when_metrics_port_is_set(persona_dir, tmp_path):
    """The real process: `personabot run` in the terminal with METRICS_PORT answers /healthz (200, its checks)
    and /metrics, whose batch count grows with the replies it generates."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PERSONA_MODEL": str(persona_dir), "METRICS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def batches() -> float:
        lines = [line for line in get("/metrics")[1].splitlines() if line.startswith("personabot_batch_size_count")]
        return float(lines[0].split()[-1])

    try:
        assert proc.stdout.readline().startswith("chatting with Alice")
        status, body = get("/healthz")
        assert status == 200 and json.loads(body)["checks"]["database"] == "ok", body
        before = batches()
        proc.stdin.write("hello there\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while batches() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert batches() > before
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "127.0.0.1" in proc.stderr.read()          # it said where it serves, on loopback only


@pytest.mark.parametrize("gap", ["inf", "nan", "0"])
def test_data_inspect_refuses_a_conversation_gap_that_is_no_time_span(cli, make_chat, gap):
    result = cli("data", "inspect", str(make_chat()), "--conversation-gap", gap, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--conversation-gap must be a number of minutes above 0" in result.stderr
