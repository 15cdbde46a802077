"""`personabot db copy` (bot/storage/copy.py) on real databases: a SQLite file filled through the Store API, with
rows in every table, copied onto a real PostgreSQL database (tests/databases.py) and back into a new SQLite file
by the command in a subprocess; every table's rows compared raw across the three, the copies kept working (new
ids after the copied ones); and what it refuses: a target with rows, an unreachable one, the source itself, a
value the target cannot hold (all or nothing), addresses it does not take. And the table list it copies against
the tables a migrated database has, so a table added by a future migration fails here until it is listed."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from databases import TestDatabase

from bot.core.quiz import QuizScore
from bot.storage.postgres import PostgresStore
from bot.storage.schema import TABLES
from bot.storage.sqlite import SQLiteStore

# Each end's schema version bookkeeping: not personabot's data, never copied (SQLite keeps it in user_version).
BOOKKEEPING = {"personabot_schema"}
UNICODE = "naïve café — 日本語 🎭 \u200b"


def run(coro):
    return asyncio.run(coro)


def with_password(url: str) -> str:
    """The same address with a password in it (the test server trusts loopback and ignores it): messages
    must never show it."""
    return url.replace("postgres@", "postgres:s3cret-pw@", 1)


def copy(cli, tmp_path: Path, *args: str, source: Path | None = None):
    """`python -m bot db copy ARGS` in a subprocess, its settings naming `source` (a SQLite file) as the bot's
    database; run in a folder without a .env."""
    env = {"DATABASE_PATH": str(source or tmp_path / "no-such.sqlite3"), "DATABASE_URL": ""}
    return cli("db", "copy", *args, env=env, cwd=tmp_path, timeout=120)


async def fill(store: Any) -> None:
    """Rows in every table, through the Store API, as the bot writes them (with gaps in the ids)."""
    for n in range(5):
        await store.add_message(channel_id=222, author_id=10 + n % 2, author_name=f"user{n % 2}",
                                content=f"message {n} {UNICODE}", guild_id=111, message_id=9000 + n)
    await store.add_message(channel_id=222, author_id=99, author_name="Bot", content="a bot's reply", is_bot=True,
                            guild_id=111, message_id=9100)
    await store.add_message(channel_id=333, author_id=12, author_name="Mallory", content="forget me", guild_id=111)
    await store.add_message(channel_id=444, author_id=13, author_name="dm", content="no guild")
    await store.forget_user(12, "Mallory", "mal")          # opt-outs under two names, and an id gap
    await store.set_setting("channels", [222, 333])
    await store.set_setting("generation", {"temperature": 0.8, "nested": {"top_k": 20}})
    await store.set_setting("twitter_enabled", False)

    done = await store.start_run(requested_by=42, speaker="alice", epochs=2.5)
    await store.finish_run(done, "done", artifact_path="/models/alice-2", metrics={"loss": 1.25})
    await store.start_run(requested_by=None, speaker=UNICODE, epochs=None, out_path="/models/next",
                          progress_message=(222, 777))

    alice = await store.add_persona("Alice", "/models/alice", generation={"temperature": 0.7, "top_p": 0.9},
                                    avatar_url="https://example.org/alice.png")
    gone = await store.add_persona("Gone", "/models/gone")
    bob = await store.add_persona("Bob", "/models/bob-1", guild_id=111, generation={})
    await store.set_persona_artifact(bob.id, "/models/bob-2", "/models/bob-1")
    await store.remove_persona(gone.id)
    await store.assign_persona(alice.id, "bot", None, None)
    await store.assign_persona(bob.id, "guild", 111, 111)
    await store.assign_persona(alice.id, "channel", 222, 111)
    await store.claim_artifact("/models/bob-2", 111)

    cron = await store.add_schedule("nightly", targets=["discord:222", "twitter"], cron="0 22 * * *",
                                    timezone_name="Europe/Berlin", persona_id=alice.id)
    await store.set_paused(cron, True)
    await store.set_last_run(cron, "2024-05-01T22:00:00+02:00")
    interval = await store.add_schedule("hourly", targets=["discord:222"], interval_s=3600, mode="line",
                                        guild_id=111)
    posted = await store.claim_post(cron, "2024-05-01T22:00:00+02:00", "twitter")
    await store.update_post(posted, "posted", text=f"posted {UNICODE}", remote_id="tw-1")
    failed = await store.claim_post(interval, "2024-05-01T10:00:00+00:00", "discord:222", guild_id=111)
    await store.update_post(failed, "failed", error="Missing Permissions")
    await store.claim_post(None, "2024-05-02T10:00:00+00:00", "terminal")
    await store.mark_pending_unknown()
    await store.claim_post(interval, "2024-05-02T11:00:00+00:00", "discord:222", guild_id=111)   # pending
    await store.add_quiz_score("/models/bob-2", QuizScore(10, 4))
    await store.add_quiz_score("/models/bob-2", QuizScore(3, 2))


def normalised(value: Any) -> Any:
    """SQLite's 0/1 flags and PostgreSQL's booleans compare alike."""
    return int(value) if isinstance(value, bool) else value


def sqlite_tables(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table of the file as stored: its columns (by name) and its rows, read raw with sqlite3."""
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%'")]
        found = {}
        for name in names:
            columns = sorted(r[1] for r in db.execute(f'PRAGMA table_info("{name}")'))
            rows = db.execute(f'SELECT {", ".join(columns)} FROM "{name}"').fetchall()
            found[name] = (columns, sorted((tuple(map(normalised, r)) for r in rows), key=repr))
    db.close()
    return found


def postgres_tables(url: str) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table of the database's schema as stored, read raw with asyncpg (the bookkeeping table aside)."""
    async def main():
        db = await asyncpg.connect(url)
        try:
            names = [r[0] for r in await db.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_type = 'BASE TABLE'")]
            found = {}
            for name in set(names) - BOOKKEEPING:
                columns = sorted(r[0] for r in await db.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = $1", name))
                rows = await db.fetch(f'SELECT {", ".join(columns)} FROM "{name}"')
                found[name] = (columns, sorted((tuple(map(normalised, r)) for r in rows), key=repr))
            return found
        finally:
            await db.close()

    return run(main())


def test_the_copy_lists_every_table_a_migrated_database_has_in_foreign_key_order(tmp_path, pg):
    """A table added by a migration and not listed in TABLES would be skipped by the copy: it fails here."""
    async def migrate():
        await (await SQLiteStore.open(tmp_path / "bot.sqlite3")).close()
        await (await PostgresStore.open(pg.where)).close()

    run(migrate())
    assert set(sqlite_tables(tmp_path / "bot.sqlite3")) == set(TABLES)
    assert set(postgres_tables(pg.where)) == set(TABLES)
    assert len(TABLES) == len(set(TABLES))
    with sqlite3.connect(tmp_path / "bot.sqlite3") as db:
        for position, table in enumerate(TABLES):
            for reference in db.execute(f'PRAGMA foreign_key_list("{table}")'):
                assert TABLES.index(reference[2]) < position, f"{table} references {reference[2]}, listed later"
    db.close()


def test_sqlite_to_postgresql_and_back_copies_every_row_and_the_copies_keep_working(cli, tmp_path, pg):
    source, back = tmp_path / "one-machine.sqlite3", tmp_path / "back" / "again.sqlite3"

    async def make():
        async with await SQLiteStore.open(source) as store:
            await fill(store)
            return await _views(store)

    views = run(make())
    original = sqlite_tables(source)
    assert set(original) == set(TABLES)
    assert all(rows for _, rows in original.values()), {t for t, (_, rows) in original.items() if not rows}

    target = with_password(pg.where)
    there = copy(cli, tmp_path, "--to", target, source=source)
    assert there.returncode == 0, there.stderr
    lines = there.stderr.splitlines()
    assert lines[:len(TABLES)] == [f"{t}: {len(original[t][1])} rows" for t in TABLES]
    assert lines[-1] == (f"personabot: copied {sum(len(rows) for _, rows in original.values())} rows in "
                         f"{len(TABLES)} tables from {source} to {pg.where}")
    assert "s3cret-pw" not in there.stderr + there.stdout

    # Back, with --from: the settings name a SQLite file that does not exist, and are not read.
    again = copy(cli, tmp_path, "--from", target, "--to", str(back))
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1].endswith(f"from {pg.where} to {back}")

    assert postgres_tables(pg.where) == original
    assert sqlite_tables(back) == original

    async def reopened():
        """The copies, as the bot reads them; and new rows get new ids after the copied ones."""
        found = []
        for store in (await PostgresStore.open(pg.where), await SQLiteStore.open(back)):
            async with store:
                found.append(await _views(store))
                top = {t: max(r[original[t][0].index("id")] for r in original[t][1])
                       for t in ("personas", "schedules", "posts", "training_runs")}
                persona = await store.add_persona("Carol", "/models/carol")
                schedule = await store.add_schedule("new", targets=["terminal"], interval_s=60)
                assert await store.add_message(channel_id=222, author_id=50, author_name="new", content="hi")
                post = await store.claim_post(schedule, "2024-06-01T00:00:00+00:00", "terminal")
                run_id = await store.start_run(requested_by=1, speaker="carol", epochs=1)
                await store.assign_persona(persona.id, "channel", 555, 111)
                assert persona.id == top["personas"] + 1 and schedule == top["schedules"] + 1
                assert post == top["posts"] + 1 and run_id == top["training_runs"] + 1
                assert (await store.recent_messages(222, 1))[0].content == "hi"
                assert len(await store.assignments(guild_id=111)) == 3
        return found

    on_postgres, on_sqlite = run(reopened())
    assert on_postgres == views and on_sqlite == views
    for copied in (postgres_tables(pg.where), sqlite_tables(back)):
        assert {t: len(rows) - len(original[t][1]) for t, (_, rows) in copied.items()} == {
            "channel_messages": 1, "personas": 1, "schedules": 1, "posts": 1, "training_runs": 1, "assignments": 1,
            "settings": 0, "opt_outs": 0, "artifact_owners": 0, "quiz_results": 0}


async def _views(store: Any) -> dict[str, Any]:
    """What the bot reads back through the Store API, typed (flags as booleans, generation dicts, paths)."""
    return {"personas": await store.personas(), "schedules": await store.schedules(),
            "assignments": await store.assignments(guild_id=111, bot=True),
            "messages": await store.all_messages(), "opted_out": await store.opted_out_names(),
            "opted_out_ids": await store.opted_out_ids(), "runs": await store.runs(limit=10),
            "posts": await store.posts(limit=10), "owner": await store.artifact_owner("/models/bob-2"),
            "settings": [await store.get_setting(k) for k in ("channels", "generation", "twitter_enabled")],
            "bot_reply": (await store.recent_messages(222, 1))[0],
            "quiz": await store.quiz_score("/models/bob-2")}


def test_a_target_with_rows_is_refused_named_without_its_password_and_left_as_it_was(cli, tmp_path, pg):
    source = tmp_path / "bot.sqlite3"

    async def make():
        async with await SQLiteStore.open(source) as store:
            await fill(store)
        async with await PostgresStore.open(pg.where) as target:
            await target.set_setting("in_use", True)

    run(make())
    before, source_before = postgres_tables(pg.where), sqlite_tables(source)
    refused = copy(cli, tmp_path, "--to", with_password(pg.where), source=source)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"personabot: error: the target {pg.where} holds personabot rows already "
                                      "(in settings); the copy goes only into a new or empty database. Nothing was "
                                      "written.")
    assert postgres_tables(pg.where) == before and sqlite_tables(source) == source_before


def test_an_unreachable_target_and_the_source_itself_are_refused(cli, tmp_path, pg):
    source = tmp_path / "bot.sqlite3"

    async def make():
        async with await SQLiteStore.open(source) as store:
            await fill(store)

    run(make())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]       # nothing listens there once the probe is closed
    unreachable = copy(cli, tmp_path, "--to", f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/nowhere",
                       source=source)
    assert unreachable.returncode == 2
    assert f"cannot reach the PostgreSQL server at postgresql://postgres@127.0.0.1:{port}/nowhere" in \
        unreachable.stderr
    assert "s3cret-pw" not in unreachable.stderr and "Traceback" not in unreachable.stderr

    # The same file under another spelling of its path.
    (tmp_path / "link.sqlite3").symlink_to(source)
    before = sqlite_tables(source)
    itself = copy(cli, tmp_path, "--to", "link.sqlite3", source=source)
    assert itself.returncode == 2
    assert itself.stderr.strip() == ("personabot: error: the source and the target are the same database "
                                     "(link.sqlite3): name another target")
    assert sqlite_tables(source) == before

    # A PostgreSQL database under two addresses (one with a password and a query): refused before the check
    # for rows, which would refuse it too but say less.
    assert copy(cli, tmp_path, "--to", pg.where, source=source).returncode == 0
    same = copy(cli, tmp_path, "--from", pg.where, "--to", with_password(pg.where) + "?application_name=x")
    assert same.returncode == 2
    assert "are the same database" in same.stderr and "s3cret-pw" not in same.stderr


def test_a_value_the_target_cannot_hold_stops_the_copy_and_nothing_is_left_half_copied(cli, tmp_path, pg):
    source = tmp_path / "bot.sqlite3"

    async def make():
        async with await SQLiteStore.open(source) as store:
            await fill(store)

    run(make())
    with sqlite3.connect(source) as db:     # a flag SQLite's loose typing let through
        db.execute("UPDATE schedules SET paused = 2 WHERE name = 'hourly'")
        schedule_id = db.execute("SELECT id FROM schedules WHERE name = 'hourly'").fetchone()[0]
    db.close()
    failed = copy(cli, tmp_path, "--to", pg.where, source=source)
    assert failed.returncode == 2
    # Tables before schedules were copied, then rolled back with the rest.
    assert "personas: " in failed.stderr
    assert failed.stderr.splitlines()[-1] == (
        f"personabot: error: {source}: schedules row id={schedule_id}: paused holds 2, not a flag (0 or 1); "
        f"nothing was written to {pg.where}")
    assert all(not rows for _, rows in postgres_tables(pg.where).values())


@pytest.mark.parametrize("source, target, message", [
    ("bot.sqlite3", "sqlite:///copy.sqlite3", "sqlite:///copy.sqlite3: write a SQLite database as the file's"),
    ("bot.sqlite3", "mysql://root:s3cret-pw@db/bot", "mysql://root@db/bot is neither a PostgreSQL address"),
    ("missing.sqlite3", "copy.sqlite3", "there is no SQLite database at missing.sqlite3 to copy"),
])
def test_addresses_it_does_not_take_get_one_message(cli, tmp_path, source, target, message):
    async def make():       # a source file that exists
        await (await SQLiteStore.open(tmp_path / "bot.sqlite3")).close()

    run(make())
    refused = copy(cli, tmp_path, "--from", source, "--to", target)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"personabot: error: {message}") and "s3cret-pw" not in refused.stderr
    assert not (tmp_path / "copy.sqlite3").exists()
