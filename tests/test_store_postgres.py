"""What only the PostgreSQL store has, on a real server the tests start (tests/databases.py): a server that is
down, silent or lacks the database; a database newer than this personabot, or one that is not its own; a
read-only database or role; processes that migrate at once; and a message in flight while someone is
forgotten. Everything the store shares with SQLite runs on both in test_store.py, test_personas.py and
test_privacy.py."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from bot.core.config import ConfigError, load_settings
from bot.core.store import StoreError
from bot.storage.postgres import PostgresStore
from bot.storage.schema import migrations
from databases import TestDatabase


def run(coro):
    return asyncio.run(coro)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]       # nothing listens there once the probe is closed


def test_a_new_database_gets_every_migration_and_records_its_version(pg):
    async def main():
        async with await PostgresStore.open(pg.where) as store:
            return store.version, store.where

    version, where = run(main())
    assert version == len(migrations()) >= 6 and where == pg.where
    assert pg.server.psql("SELECT version FROM personabot_schema", pg.name) == str(version)
    tables = set(pg.server.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", pg.name).split())
    assert {"channel_messages", "opt_outs", "training_runs", "settings", "schedules", "posts", "personas",
            "assignments", "artifact_owners", "quiz_results", "personabot_schema"} == tables


def test_processes_that_start_together_migrate_once(pg):
    """Eight processes opening one new database at once, on three new databases: each migrates it once, and
    none takes another's half-done migration (its tables there, its version not yet) for a database that is
    not personabot's (which failed now and then while the version was read outside the lock)."""
    async def main(url: str):
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(8)))
        for store in stores:
            await store.close()
        return [store.version for store in stores]

    for name in (pg.name, pg.server.create_database(), pg.server.create_database()):
        assert run(main(pg.server.url(name))) == [len(migrations())] * 8
        assert pg.server.psql("SELECT count(*) FROM personabot_schema", name) == "1"


def test_a_database_from_a_newer_version_is_refused_and_left_as_it_is(pg):
    run(_create(pg, upto=2))
    pg.server.psql("UPDATE personabot_schema SET version = 99", pg.name)
    with pytest.raises(StoreError, match=r"test_\d+ has schema version 99, newer than this personabot knows"):
        run(PostgresStore.open(pg.where))
    assert pg.server.psql("SELECT version FROM personabot_schema", pg.name) == "99"
    assert pg.server.psql("SELECT to_regclass('personas') IS NULL", pg.name) == "t"     # nothing was migrated


def test_a_database_with_personabots_tables_but_no_schema_version_is_not_written_into(pg):
    pg.server.psql("CREATE TABLE settings (key TEXT, value TEXT); INSERT INTO settings VALUES ('theirs', 'x')",
                   pg.name)
    with pytest.raises(StoreError) as error:
        run(PostgresStore.open(pg.where))
    assert "holds tables named as personabot's (settings) but no personabot schema version" in str(error.value)
    assert "will not write into it" in str(error.value)
    assert pg.server.psql("SELECT to_regclass('personabot_schema') IS NULL", pg.name) == "t"
    assert pg.server.psql("SELECT key FROM settings", pg.name) == "theirs"


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    url = f"postgresql://bot:hunter2@127.0.0.1:{_closed_port()}/personabot?sslmode=disable"
    with pytest.raises(StoreError) as error:
        run(PostgresStore.open(url))
    text = str(error.value)
    assert text.startswith("cannot reach the PostgreSQL server at postgresql://bot@127.0.0.1:")
    assert "is it running" in text and "hunter2" not in text and "sslmode" not in text


def test_a_server_that_never_answers_times_out_with_a_clear_error():
    with socket.socket() as silent:       # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://bot:hunter2@127.0.0.1:{silent.getsockname()[1]}/personabot"
        with pytest.raises(StoreError) as error:
            run(PostgresStore.open(url, connect_timeout_s=1.0))
    assert "did not answer in time" in str(error.value) and "hunter2" not in str(error.value)


def test_a_database_that_does_not_exist_is_named(postgres_server):
    with pytest.raises(StoreError, match=r"the database postgresql://postgres@127\.0\.0\.1:\d+/no_such_db does "
                                         r"not exist on its server .*create it"):
        run(PostgresStore.open(postgres_server.url("no_such_db")))


def test_a_read_only_database_says_so(pg):
    run(_create(pg))
    pg.server.psql(f"ALTER DATABASE {pg.name} SET default_transaction_read_only = on")
    with pytest.raises(StoreError) as error:
        run(PostgresStore.open(pg.where))
    assert "is read-only" in str(error.value) and "move it away" not in str(error.value)


def test_a_role_that_may_only_read_is_told_so(pg):
    run(_create(pg))
    role = f"reader_{pg.name}"
    pg.server.psql(f"CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", pg.name)
    with pytest.raises(StoreError) as error:
        run(PostgresStore.open(pg.server.url(pg.name, user=role)))
    assert f"is read-only for its user {role}" in str(error.value)
    assert "grant it SELECT, INSERT, UPDATE and DELETE" in str(error.value)


def test_a_write_refused_mid_run_is_a_store_error_saying_read_only(pg):
    """A database turned read-only under a running bot (a failover to a standby): the next write says so."""

    async def main():
        async with await PostgresStore.open(pg.where) as store:
            pg.server.psql(f"ALTER DATABASE {pg.name} SET default_transaction_read_only = on")
            await store._pool.expire_connections()      # the pool reconnects, as after a failover
            await store.set_setting("x", 1)

    with pytest.raises(StoreError, match="is read-only"):
        run(main())


def test_a_message_in_flight_while_its_author_is_forgotten_is_deleted_too(pg):
    """Another process inserted a message of Bob's and has not committed yet when Bob is forgotten: the
    forgetting waits for it and deletes it (without the wait, the row would be committed after the deletion
    ran and stay)."""

    async def main():
        async with await PostgresStore.open(pg.where) as store:
            other = await asyncpg.connect(pg.where)
            try:
                transaction = other.transaction()
                await transaction.start()
                await other.execute("INSERT INTO channel_messages (channel_id, author_id, author_name, content, "
                                    "created_at) VALUES (1, 7, 'Bob', 'in flight', 'then')")
                forgetting = asyncio.create_task(store.forget_user(7, "Bob"))
                while not forgetting.done() and not await other.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'channel_messages'::regclass"):
                    await asyncio.sleep(0.01)
                await transaction.commit()
                deleted = await forgetting
            finally:
                await other.close()
            stored_after = await store.add_message(channel_id=1, author_id=7, author_name="Bob", content="later")
            return deleted, stored_after, await store.recent_messages(1)

    deleted, stored_after, left = run(main())
    assert deleted == 1 and stored_after is False and left == []


def test_a_database_url_that_is_not_postgresql_is_a_settings_problem_that_hides_the_value():
    with pytest.raises(ConfigError) as error:
        load_settings({"DATABASE_URL": "mysql://bot:hunter2@db/personabot"}, dotenv_path=None)
    assert "DATABASE_URL is not a PostgreSQL address" in str(error.value) and "hunter2" not in str(error.value)
    settings = load_settings({"DATABASE_URL": "postgresql://bot:hunter2@db/personabot"}, dotenv_path=None)
    assert settings.database_url == "postgresql://bot:hunter2@db/personabot" and "hunter2" not in repr(settings)


async def _create(database: TestDatabase, **options) -> None:
    async with await database.open(**options) as store:
        await store.set_setting("kept", True)
