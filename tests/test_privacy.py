"""Privacy holds by account, not only by name: opted-out accounts under older names, hostile nicknames,
deleted text that must leave the disk, a training child without the bot's secrets, and no orphaned training
when the bot dies. Everything real: SQLite files, exports on disk, training children."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.inference.engine import Engine
from bot.jobs.retrain import Retrainer, RetrainError
from bot.storage.postgres import PostgresStore
from bot.storage.sqlite import SQLiteStore as Store
from training.formats.base import ImportOptions
from training.loader import load_corpus

FAST = ["--max-steps", "10", "--threads", "1", "--samples", "0", "--batch-size", "4", "--fidelity-lines", "0"]


def dce_export(path: Path, messages: list[tuple[str, str, str, str]]) -> Path:
    """A DiscordChatExporter JSON export of invented people: (account id, username, nickname, text)."""
    rows = [{"id": str(1000 + i), "type": "Default", "timestamp": f"2026-03-14T19:{i:02d}:00+00:00",
             "content": text, "author": {"id": account, "name": user, "discriminator": "0000", "nickname": nick,
                                         "isBot": False}}
            for i, (account, user, nick, text) in enumerate(messages)]
    path.write_text(json.dumps({"guild": {"id": "1", "name": "Moorside"},
                                "channel": {"id": "2", "type": "GuildTextChat", "name": "general"},
                                "messages": rows, "messageCount": len(rows)}), encoding="utf-8")
    return path


def test_an_opted_out_account_stays_out_under_an_older_name(tmp_path):
    export = dce_export(tmp_path / "general.json", [
        ("42", "oakley_old", "Oak", "my old secret is the blue door"),   # the same account, renamed since
        ("7", "tamsin", "Tamsin", "hello all"),
        ("42", "oakley", "Oakley", "newer words"),
        ("7", "tamsin", "Tamsin", "bye"),
    ])
    for left_out in ("Oakley", "42"):                     # by the name they have now, or by account id
        corpus = load_corpus([export], options=ImportOptions.from_user(exclude=[left_out]))
        texts = [m.text for m in corpus.messages()]
        assert texts == ["hello all", "bye"], left_out
        assert corpus.files[0].skipped["excluded"] == 2


def test_a_hostile_nickname_never_excludes_the_persona(tmp_path):
    """A member who opted out under the persona's name leaves the persona's words in (names never exclude
    the persona), while their own account, left out by id, goes under every name."""
    export = dce_export(tmp_path / "general.json", [
        ("1", "wren", "Wren", "persona line one"),
        ("9", "troll", "Wren", "a troll wearing her name"),
        ("1", "wren", "Wrennie", "persona line under another nickname"),
        ("9", "troll", "Troll", "more trolling"),
    ])
    corpus = load_corpus([export], options=ImportOptions.from_user(exclude=["Wren", "9"]), protect=["wren"])
    assert [m.text for m in corpus.messages()] == ["persona line one", "persona line under another nickname"]


def test_forgotten_text_leaves_the_database_and_its_write_ahead_log(tmp_path):
    path = tmp_path / "bot.sqlite3"

    async def main():
        async with await Store.open(path) as store:
            for i in range(50):
                await store.add_message(channel_id=1, author_id=7, author_name="Bob",
                                        content=f"bob's pin is 4711-{i:03d} zebra")
                await store.add_message(channel_id=1, author_id=8, author_name="Carol", content=f"carol {i}")
            await store.forget_user(7, "Bob")
            files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
            return files, await store.all_messages()

    files, left = asyncio.run(main())
    assert len(left) == 50 and all(m.author_name == "Carol" for m in left)
    for name, data in files.items():
        assert b"4711-0" not in data and b"zebra" not in data, name


def test_forgotten_text_leaves_the_postgresql_database_files(postgres_server):
    """On PostgreSQL: after /forget-me (the rows deleted, then the table rewritten by VACUUM FULL) and a
    checkpoint (which writes every changed page to the files), no file of the database (tables, indexes, TOAST)
    holds a byte of the forgotten text. A plain VACUUM would leave about half of it in the pages' free space.
    The write-ahead log (pg_wal/) still holds it until its segments are recycled: bot/storage/postgres.py."""
    name = postgres_server.create_database()

    async def main():
        async with await PostgresStore.open(postgres_server.url(name)) as store:
            for i in range(50):
                await store.add_message(channel_id=1, author_id=7, author_name="Bob",
                                        content=f"bob's pin is 4711-{i:03d} zebra")
                await store.add_message(channel_id=1, author_id=8, author_name="Carol", content=f"carol {i}")
            deleted = await store.forget_user(7, "Bob")
            return deleted, await store.all_messages()

    deleted, left = asyncio.run(main())
    assert deleted == 50 and len(left) == 50 and all(m.author_name == "Carol" for m in left)
    postgres_server.psql("CHECKPOINT", name)
    folder = postgres_server.data / "base" / postgres_server.psql(
        f"SELECT oid FROM pg_database WHERE datname = '{name}'")
    # The server rewrites some of its files while it runs (pg_internal.init, the relation cache): one listed
    # may be gone when it is read, and holds nothing then.
    contents = {}
    for path in folder.iterdir():
        try:
            contents[path.name] = path.read_bytes() if path.is_file() else None
        except FileNotFoundError:
            continue
    contents = {name: data for name, data in contents.items() if data is not None}
    assert len(contents) > 100                               # the database's own files, catalogs included
    assert b"carol 7" in b"".join(contents.values())         # what is kept is found there
    holding = [name for name, data in contents.items() if b"4711-0" in data or b"zebra" in data]
    assert holding == []


def test_the_training_child_gets_no_bot_secrets(tmp_path, monkeypatch, alice_artifact, data_dir):
    """The child is started with the bot's environment minus Discord, Twitter and inference secrets."""
    seen = tmp_path / "child-env.json"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                           f"json.dump(dict(os.environ), open({str(seen)!r}, 'w'))\nsys.exit(3)\n")
    fake_python.chmod(0o755)
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret")
    monkeypatch.setenv("TWITTER_ACCESS_TOKEN_SECRET", "twitter-secret")
    monkeypatch.setenv("INFERENCE_API_KEY", "inference-secret")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(alice_artifact) as engine:
            retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                                  python=str(fake_python))
            with pytest.raises(RetrainError):
                await retrainer.run()

    asyncio.run(main())
    env = json.loads(seen.read_text())
    assert not {"DISCORD_TOKEN", "TWITTER_ACCESS_TOKEN_SECRET", "INFERENCE_API_KEY"} & set(env)
    assert not {"discord-secret", "twitter-secret", "inference-secret"} & set(env.values())
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["PATH"]      # what training needs is still there


@pytest.mark.slow
def test_hostile_opt_outs_cannot_break_a_retrain(tmp_path, alice_artifact, data_dir):
    """Opt-outs under the persona's own name, under a name that looks like an option, and thousands of
    long names (more than the 128 KiB an argument may hold): the retrain still runs, on the persona's words."""

    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(alice_artifact) as engine:
            await store.forget_user(1, "Alice")                  # a member who took the persona's name
            await store.forget_user(2, "--help")
            await store.forget_user(3, *(f"{'x' * 40} member {i}" for i in range(4000)))
            retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                                  extra_args=FAST)
            result = await retrainer.run(epochs=100, force=True)
            return result, [p.name for p in (tmp_path / "models").iterdir()]

    result, left = asyncio.run(main())
    info = json.loads((result.artifact / "persona.json").read_text())
    assert info["speaker"].casefold() == "alice"
    assert left == [result.artifact.name]                      # the list of names did not stay behind


def test_a_training_child_dies_with_the_bot(tmp_path):
    """A bot killed with SIGKILL leaves no training running on: the child (started, as the bot starts it,
    with --stop-with-parent) gets SIGTERM from the kernel."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import sys, time; from training.cli import "
                                      f"stop_with_parent; stop_with_parent({os.getpid()}); print('ready', flush=True); "
                                      "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
            assert child.stdout.readline() == "ready\\n"     # it has asked the kernel
            print(child.pid, flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child_pid)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, reaped by init soon, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_servers_persona_learns_from_that_server_and_its_speakers_account_only(tmp_path, bob_artifact, data_dir):
    """A retrain of server A's persona Bob with stored messages: server B's messages never reach it (a member of
    B named Bob included), and in A a message is Bob's response only from the account Bob's persona was
    trained on; another account taking the name "Bob" is written under a name that says whose account it is.
    Checked on the files the training child is given, read as the trainer reads them."""
    from training.dataset import match_speaker

    artifact = tmp_path / "models" / "bob"
    import shutil

    shutil.copytree(bob_artifact, artifact)
    info = json.loads((artifact / "persona.json").read_text())
    (artifact / "persona.json").write_text(json.dumps({**info, "speaker_ids": ["11"]}))
    given = tmp_path / "child-args.json"
    fake_python = tmp_path / "python"
    fake_python.write_text(
        f"#!{sys.executable}\nimport json, shutil, sys\n"
        "files = sys.argv[sys.argv.index('--data') + 1:]\nfiles = files[:next((i for i, a in enumerate(files) "
        "if a.startswith('--')), len(files))]\n"
        f"kept = []\nfor i, f in enumerate(files):\n    shutil.copy(f, {str(tmp_path)!r} + f'/given-{{i}}.jsonl')\n"
        f"    kept.append({str(tmp_path)!r} + f'/given-{{i}}.jsonl')\n"
        f"json.dump(kept, open({str(given)!r}, 'w'))\nsys.exit(3)\n")
    fake_python.chmod(0o755)

    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            for guild, author, name, text in [(1, 11, "Bob", "the real bob in server a"),
                                              (1, 12, "Carol", "carol in server a"),
                                              (1, 13, "bob", "an impostor in server a"),
                                              (2, 21, "Bob", "a bob of server b says this"),
                                              (2, 11, "Bob", "the real bob, in server b")]:
                await store.add_message(guild_id=guild, channel_id=guild * 100, author_id=author, author_name=name,
                                        content=text)
            entry = await store.add_persona("Bob", artifact, guild_id=1)
            retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                                  python=str(fake_python), include_logged=True)
            with pytest.raises(RetrainError):
                await retrainer.run(persona=entry)

    asyncio.run(main())
    files = [Path(f) for f in json.loads(given.read_text())]
    corpus = load_corpus(files)
    texts = [m.text for m in corpus.messages()]
    assert "carol in server a" in texts and "an impostor in server a" in texts
    assert not [t for t in texts if "server b" in t]
    bob = match_speaker(corpus.conversations, "Bob")
    his = [m.text for c in corpus.conversations for m in c.messages if bob.matches(m)]
    assert "the real bob in server a" in his and "an impostor in server a" not in his
