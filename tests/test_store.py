"""The store on both engines (the `database` fixture: a real SQLite file, and a database of its own on a real
PostgreSQL server): migrations, privacy, one writer path; and what only SQLite has (its file damaged, locked or
read-only, its WAL). PostgreSQL's own cases (unreachable, newer, read-only, not ours): test_store_postgres.py."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from bot.core.store import StoreError
from bot.storage.schema import migrations
from bot.storage.sqlite import SQLiteStore as Store


def run(coro):
    return asyncio.run(coro)


def test_a_new_database_gets_every_migration_in_wal_mode(tmp_path):
    path = tmp_path / "data" / "bot.sqlite3"

    async def main():
        async with await Store.open(path) as store:
            return store.version

    assert run(main()) == len(migrations()) >= 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"channel_messages", "opt_outs", "training_runs", "settings", "schedules", "posts"} <= tables


def test_an_older_database_migrates_and_keeps_its_rows(database):
    async def main():
        async with await database.open(upto=1) as old:
            assert old.version == 1
            await old.add_message(channel_id=1, author_id=7, author_name="Bob", content="kept across versions")
        async with await database.open() as new:
            return new.version, await new.recent_messages(1)

    version, messages = run(main())
    assert version == len(migrations())
    assert [m.content for m in messages] == ["kept across versions"]


def test_schedules_become_global_and_keep_their_posts_when_tenancy_arrives(database):
    """Migration 3 rebuilds the schedules table (SQLite; PostgreSQL changes its constraint in place): posts must
    keep pointing at their schedule (a rebuild with foreign keys on would have set them to NULL), and old
    schedules become global (the owners')."""

    async def main():
        async with await database.open(upto=2) as old:
            await database.execute(old, "INSERT INTO schedules (name, cron, targets, created_at) "
                                   "VALUES ('nightly', '0 20 * * *', '[\"terminal\"]', '2026-11-01T00:00:00+00:00')")
            await database.execute(old, "INSERT INTO posts (schedule_id, slot, target, status, created_at, "
                                   "updated_at) VALUES (1, 's', 'terminal', 'posted', 'x', 'x')")
        async with await database.open() as new:
            same_name_elsewhere = await new.add_schedule("nightly", cron="0 8 * * *", targets=["discord:5"],
                                                         guild_id=77)
            with pytest.raises(StoreError, match="exists already"):
                await new.add_schedule("nightly", cron="0 9 * * *", targets=["terminal"])
            return await new.schedules(), await new.posts(), await new.schedules([77]), same_name_elsewhere

    schedules, posts, guild_77, other = run(main())
    assert [(s.name, s.guild_id) for s in schedules] == [("nightly", None), ("nightly", 77)]
    assert posts[0]["schedule_id"] == schedules[0].id and posts[0]["guild_id"] is None
    assert [s.id for s in guild_77] == [other]


def test_a_damaged_database_is_an_error_and_is_left_untouched(tmp_path):
    path = tmp_path / "bot.sqlite3"
    garbage = b"this is not a database, it is a shopping list\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match=r"bot.sqlite3 is not a readable SQLite database.*will not replace it"):
        run(Store.open(path))
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot.sqlite3"]


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        run(Store.open(path))


def test_forget_me_deletes_rows_and_keeps_the_person_out(database):
    async def main():
        async with await database.open() as store:
            for i in range(3):
                await store.add_message(channel_id=1, author_id=7, author_name="Bob", content=f"bob {i}")
                await store.add_message(channel_id=1, author_id=8, author_name="Carol", content=f"carol {i}")
            deleted = await store.forget_user(7, "Bob")
            stored_again = await store.add_message(channel_id=1, author_id=7, author_name="Bob", content="new")
            return deleted, stored_again, await store.recent_messages(1), await store.all_messages(), \
                await store.opted_out_names()

    deleted, stored_again, recent, every, names = run(main())
    assert deleted == 3 and stored_again is False
    assert [m.author_name for m in recent] == ["Carol"] * 3 and len(every) == 3
    assert names == ["Bob"]


def test_recent_messages_are_per_channel_newest_last(database):
    async def main():
        async with await database.open() as store:
            for i in range(10):
                await store.add_message(channel_id=i % 2, author_id=1, author_name="A", content=f"m{i}")
            return await store.recent_messages(0, limit=3), await store.recent_messages(1, limit=2)

    even, odd = run(main())
    assert [m.content for m in even] == ["m4", "m6", "m8"] and [m.content for m in odd] == ["m7", "m9"]


def test_concurrent_writers_in_one_process_never_lose_a_row(database):
    """On PostgreSQL the writes go over several pooled connections at once: the forgetting still wins."""
    async def main():
        async with await database.open() as store:
            await asyncio.gather(*(store.add_message(channel_id=1, author_id=i, author_name=f"u{i}", content="x")
                                   for i in range(50)), store.forget_user(3, "u3"))
            return await store.recent_messages(1, limit=100)

    rows = run(main())
    # Bob (3) is forgotten: his row is gone whether it was written before or after the deletion ran.
    assert sorted(m.author_id for m in rows) == [i for i in range(50) if i != 3]


def test_two_processes_on_one_database_claim_a_slot_once(database):
    """Two stores on one database (as two bot processes have) claim the same schedule slot at once: the
    unique slot index gives it to exactly one; an ad-hoc post (no schedule) is never refused."""

    async def main():
        async with await database.open() as first, await database.open() as second:
            schedule = await first.add_schedule("nightly", cron="0 20 * * *", targets=["terminal"])
            claims = await asyncio.gather(*(store.claim_post(schedule, "2026-11-01T20:00:00+00:00", "terminal")
                                            for store in (first, second) for _ in range(5)))
            again = await second.claim_post(schedule, "2026-11-01T20:00:00+00:00", "terminal")
            other_target = await second.claim_post(schedule, "2026-11-01T20:00:00+00:00", "discord:5")
            ad_hoc = [await first.claim_post(None, "now", "terminal") for _ in range(2)]
            return claims, again, other_target, ad_hoc, await first.posts(limit=20)

    claims, again, other_target, ad_hoc, posts = run(main())
    assert len([c for c in claims if c is not None]) == 1 and again is None
    assert other_target is not None and None not in ad_hoc and len(set(ad_hoc)) == 2
    assert len(posts) == 4


def test_a_locked_database_is_a_clear_error(tmp_path):
    path = tmp_path / "bot.sqlite3"

    async def create():
        await (await Store.open(path)).close()

    run(create())
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        async def main():
            store = await Store.open(path)
            try:
                await store.set_setting("x", 1)
            finally:
                await store.close()

        with pytest.raises(StoreError, match="locked by another process"):
            run(main())
    finally:
        holder.rollback()
        holder.close()


def test_a_database_locked_while_it_opens_is_called_locked_not_damaged(tmp_path):
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:                   # a database in rollback-journal mode (another tool's)
        db.execute("CREATE TABLE t (x)")
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")                   # readers are locked out too in this mode
    try:
        with pytest.raises(StoreError) as error:
            run(Store.open(path))
    finally:
        holder.rollback()
        holder.close()
    assert "locked by another process" in str(error.value) and "move it away" not in str(error.value)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system (a tmpfs remounted read-only; as root, file modes are no bar)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_database_says_so_and_never_advises_moving_it(read_only_dir):
    import subprocess

    path = read_only_dir / "bot.sqlite3"

    async def create():
        async with await Store.open(path) as store:
            await store.set_setting("kept", True)

    run(create())
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_dir)], check=True)
    with pytest.raises(StoreError) as error:
        run(Store.open(path))
    assert "read-only" in str(error.value) and "move it away" not in str(error.value)


def test_settings_and_training_runs_round_trip(database):
    async def main():
        async with await database.open() as store:
            await store.set_setting("disabled_channels", [1, 2])
            run_id = await store.start_run(requested_by=5, speaker="alice", epochs=2.0)
            await store.finish_run(run_id, "done", artifact_path="/m/a", metrics={"val_loss": 1.5})
            other = await store.start_run(requested_by=5, speaker=None, epochs=None)
            interrupted = await store.fail_interrupted_runs()
            return await store.get_setting("disabled_channels"), await store.runs(), interrupted, other

    setting, runs, interrupted, other = run(main())
    assert setting == [1, 2] and interrupted == 1
    assert runs[0]["id"] == other and runs[0]["status"] == "failed"
    assert runs[1]["status"] == "done" and runs[1]["metrics"] == '{"val_loss": 1.5}'


def test_ids_that_only_look_like_digits_are_a_settings_problem_not_a_crash():
    from bot.core.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as error:
        load_settings({"ADMIN_USER_IDS": "123,\u00b2", "ADMIN_ROLE_IDS": "\u0664\u0662"}, dotenv_path=None)
    assert "ADMIN_USER_IDS: \u00b2 not a Discord id" in str(error.value)
    assert "ADMIN_ROLE_IDS: \u0664\u0662 not a Discord id" in str(error.value)
    assert load_settings({"ADMIN_USER_IDS": "123, 456"}, dotenv_path=None).admin_user_ids == {123, 456}
