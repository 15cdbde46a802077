"""The PostgreSQL store (`bot.core.store.Store`): what the bot remembers, on a PostgreSQL server that several
`personabot run` processes on several machines share (`DATABASE_URL=postgresql://...`), through asyncpg and a
small pool of connections. It behaves as the SQLite store does, method for method (`bot.storage.sqlite`).

Schema changes are the same numbered migrations as SQLite's, in PostgreSQL's dialect
(`bot/storage/migrations/postgresql/`, `bot.storage.schema`); the schema version is the one row of
`personabot_schema`. Processes that start together migrate one at a time (a session advisory lock around the whole migration).
A database written by a newer personabot, or one that holds personabot's tables without its schema version,
is an error naming it; it is never replaced or "repaired". A read-only one (a standby, a read-only default
transaction, or a role that may not write) is refused at open, saying so. Every driver error (the server's,
the connection's, a timeout) becomes a `StoreError` naming the database without its password.

Deleting text (`/forget-me`): the rows are deleted in one transaction, then `VACUUM FULL channel_messages`
rewrites the table into a new file and the old one is removed. A plain VACUUM is not enough: it marks the
dead rows' space free but leaves their bytes in the page until new rows overwrite them (measured: about half
of the forgotten messages could still be read from the table's file after a plain VACUUM and a checkpoint;
none after VACUUM FULL, tests/test_privacy.py). The rewrite locks the table (reads and writes of stored
messages wait) for as long as copying the remaining messages takes (it waits, too, for transactions that
are reading the table). What PostgreSQL keeps elsewhere, and for how long:
- the write-ahead log (`pg_wal/`) holds the inserted rows until the segments holding them are recycled: a
  checkpoint (every `checkpoint_timeout`, 5 minutes by default, or sooner after `max_wal_size` of WAL) makes
  them unneeded, and recycled segments are renamed and overwritten by new WAL, not wiped, so the text can be
  read from `pg_wal/` until about `max_wal_size` (1 GB by default) of newer WAL has been written; longer when
  `wal_keep_size`, a replication slot or a lagging standby holds segments back. The old table file is
  truncated at once and unlinked at the next checkpoint;
- standbys replay the same deletion and rewrite; WAL archives, base backups and point-in-time-recovery
  copies (a managed PostgreSQL's backups) keep the text for as long as their retention says: that is the
  operator's retention to state, not the bot's.
Messages pruned for age (`MESSAGE_RETENTION_DAYS`) are deleted and left to autovacuum, as SQLite leaves them
to its secure delete.

Between processes, each on a connection of its own beside the pool:
- changes: the tables announce them (`NOTIFY personabot_changes`, from triggers: migration 0007), and
  `listen` hears them; a lost connection is retried (backing off to 5 s), and once back every topic counts
  as changed, since what was announced meanwhile is lost;
- the jobs leadership is a session advisory lock (`JOBS_LEADER_LOCK`), held by the leader's connection for as
  long as it lives, which is what makes it safe: the server releases it the moment that connection ends (a
  killed process's socket closes at once; a vanished machine's within the keepalive bound set on it,
  `LEADER_KEEPALIVE`). The connection carries the holder as its application name, so `leader` reads who
  holds the lock from the server itself. A session lock needs a real session: connect directly, or through a
  pooler in session mode, never a transaction-mode pooler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg

from bot.core.posts import DEFAULT_MODE, PostTarget
from bot.core.store import CHANGE_TOPICS, Assignment, ChangeHandler, PersonaEntry, StoreError, shown_database_url
from bot.storage.rows import PERSONA_COLUMNS, SharedQueries, now, numbered, stored_targets
from bot.storage.rows import persona as persona_row
from bot.storage.schema import TABLES, migrations

# Connections per process: the bot's writes are short statements, so a few cover a shard's bursts, and
# many shards stay well within a server's max_connections (100 by default).
POOL_SIZE = 4
# How long opening a connection may take before the server counts as unreachable, and one statement.
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
# /forget-me's rewrite of the stored messages: a big table takes a while, and the deletion is committed already.
VACUUM_TIMEOUT_S = 3600.0
# The advisory lock key under which processes migrate one at a time ("personab" in ASCII).
MIGRATION_LOCK = 0x706572736F6E6162
# The advisory lock the jobs leader holds ("personab" + 1), the channel the tables announce changes on, and
# how long a listener or a leader waits before it asks its own connection whether it is still alive.
JOBS_LEADER_LOCK = MIGRATION_LOCK + 1
CHANGES_CHANNEL = "personabot_changes"
# How the listening connection is named to the server (pg_stat_activity), for its operator.
LISTENER_NAME = "personabot changes"
ALIVE_CHECK_S = 5.0
# The server closes a connection whose peer stopped answering after 10 s idle + 3 probes 5 s apart: a leader
# whose machine vanished (no socket closed) loses the lock within about 25 s.
LEADER_KEEPALIVE = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
# A listener that lost its connection tries again after this long, doubling up to the second figure.
RECONNECT_S = (0.5, 5.0)

log = logging.getLogger("personabot.store")



class PostgresStore(SharedQueries):
    """Open with `await PostgresStore.open(url)`; close with `await store.close()` (or `async with`)."""

    def __init__(self, url: str, pool: asyncpg.Pool, version: int) -> None:
        self.where = shown_database_url(url)
        self._url = url
        self._pool = pool
        self.version = version
        self._listener: asyncio.Task | None = None
        self._leader_db: asyncpg.Connection | None = None   # holds the jobs lock while it lives

    @classmethod
    async def open(cls, url: str, *, upto: int | None = None,
                   connect_timeout_s: float = CONNECT_TIMEOUT_S) -> "PostgresStore":
        """Connect to the database at `url` and migrate it. `upto` stops at that schema version (for tests of
        migrations)."""
        known = migrations()
        target = len(known) if upto is None else upto
        where = shown_database_url(url)
        with _driver_errors(where, url):
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=connect_timeout_s,
                                             command_timeout=COMMAND_TIMEOUT_S)
        try:
            with _driver_errors(where, url):
                async with pool.acquire() as db:
                    version = await _migrate(db, where, known, target)
                    await _check_writable(db, where)
        except BaseException:
            await pool.close()
            raise
        return cls(url, pool, version)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await self._drop_leader_connection()
        await self._pool.close()

    async def __aenter__(self) -> "PostgresStore":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- statements, each with the driver's errors as StoreError -------------------------------------------
    async def _execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement (`$n` placeholders, or `?` ones: `SharedQueries`'); the rows it changed."""
        with _driver_errors(self.where, self._url):
            return _rowcount(await self._pool.execute(numbered(sql), *params))

    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[asyncpg.Record]:
        with _driver_errors(self.where, self._url):
            return list(await self._pool.fetch(numbered(sql), *params))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with _driver_errors(self.where, self._url):
            async with self._pool.acquire() as db, db.transaction():
                yield db

    # -- between processes -------------------------------------------------------------------------------
    async def listen(self, on_change: ChangeHandler) -> bool:
        """Hear every change announced on the database (see the module's docstring); returns once listening,
        True. Raises `StoreError` when the first connection fails."""
        if self._listener is not None:
            raise RuntimeError("this store already has a listener")
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._listener = asyncio.get_running_loop().create_task(self._listen(on_change, ready),
                                                                name="database-changes")
        await ready
        return True

    async def _listen(self, on_change: ChangeHandler, ready: asyncio.Future) -> None:
        def heard(_db, _pid, _channel, topic: str) -> None:
            if topic in CHANGE_TOPICS:
                try:
                    on_change(topic)
                except Exception:      # a listener's bug must not end the hearing
                    log.exception("handling a database change (%s) failed", topic)

        lost_at: float | None = None
        wait_s = RECONNECT_S[0]
        while True:
            db = None
            try:
                with _driver_errors(self.where, self._url):
                    db = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_S,
                                               server_settings={"application_name": LISTENER_NAME})
                    ended = asyncio.Event()
                    db.add_termination_listener(lambda _db: ended.set())
                    await db.add_listener(CHANGES_CHANNEL, heard)
                if not ready.done():
                    ready.set_result(True)
                if lost_at is not None:
                    log.warning("database events: the connection to %s is back after %.1f s; re-reading the "
                                "model, personas and schedules, whose changes meanwhile were not heard",
                                self.where, time.monotonic() - lost_at)
                    for topic in CHANGE_TOPICS:
                        on_change(topic)
                lost_at, wait_s = None, RECONNECT_S[0]
                while not ended.is_set():
                    try:
                        await asyncio.wait_for(ended.wait(), ALIVE_CHECK_S)
                    except TimeoutError:       # quiet: a network that went away closes no socket, so ask
                        with _driver_errors(self.where, self._url):
                            await db.fetchval("SELECT 1", timeout=ALIVE_CHECK_S)
            except StoreError as e:
                if not ready.done():
                    ready.set_exception(e)
                    return
                log.debug("database events: %s", e)
            finally:
                if db is not None:
                    db.terminate()
            if lost_at is None:
                lost_at = time.monotonic()
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, RECONNECT_S[1])

    async def lead(self, holder: str, lease_s: float) -> bool:
        """Take the jobs lock on a connection of its own (named `holder`), or check that the connection
        holding it still lives. A connection found dead answers False once (the leadership may have passed to
        another process meanwhile: the caller steps down), and the next call tries again. `lease_s` is
        SQLite's: here the server itself frees the lock of a connection that ended."""
        db = self._leader_db
        if db is not None:
            try:
                await db.fetchval("SELECT 1", timeout=ALIVE_CHECK_S)
                return True
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                await self._drop_leader_connection()
                return False
        with _driver_errors(self.where, self._url):
            db = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_S,
                                       server_settings={"application_name": holder[:63], **LEADER_KEEPALIVE})
            try:
                taken = await db.fetchval("SELECT pg_try_advisory_lock($1)", JOBS_LEADER_LOCK)
            except BaseException:
                db.terminate()
                raise
        if not taken:
            await db.close()
            return False
        self._leader_db = db
        return True

    async def leader(self) -> str | None:
        rows = await self._query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = $1::bigint::oid "
            "AND l.objid = $2::bigint::oid AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())", (JOBS_LEADER_LOCK >> 32, JOBS_LEADER_LOCK & 0xFFFFFFFF))
        return rows[0][0] if rows else None

    async def resign(self, holder: str) -> None:
        await self._drop_leader_connection()     # its end releases the lock

    async def _drop_leader_connection(self) -> None:
        db, self._leader_db = self._leader_db, None
        if db is not None:
            try:
                await asyncio.wait_for(db.close(), ALIVE_CHECK_S)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                db.terminate()

    # -- channel messages ------------------------------------------------------------------------------
    async def add_message(self, *, channel_id: int, author_id: int, author_name: str, content: str,
                          is_bot: bool = False, guild_id: int | None = None, message_id: int | None = None,
                          created_at: str | None = None) -> bool:
        """Remember a channel message; False (nothing stored) when its author opted out."""
        # One statement: an opt-out that lands between a check and an insert cannot let a row through (and
        # forget_user's table lock makes a statement that started before the opt-out finish first).
        changed = await self._execute(
            "INSERT INTO channel_messages (guild_id, channel_id, message_id, author_id, author_name, is_bot, "
            "content, created_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8 "
            "WHERE NOT EXISTS (SELECT 1 FROM opt_outs WHERE user_id = $4) ON CONFLICT DO NOTHING",
            (guild_id, channel_id, message_id, author_id, author_name, is_bot, content, created_at or now()))
        return changed > 0

    async def prune_messages(self, older_than_days: float) -> int:
        """Delete messages older than the retention period; returns how many."""
        cutoff = datetime.now(timezone.utc).timestamp() - older_than_days * 86400
        stamp = datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="seconds")
        # Times are ISO 8601 text: compared byte by byte ("C"), whatever the database's collation.
        return await self._execute('DELETE FROM channel_messages WHERE created_at < $1 COLLATE "C"', (stamp,))

    # -- privacy ---------------------------------------------------------------------------------------
    async def forget_user(self, user_id: int, *names: str) -> int:
        """Delete the user's stored messages and opt them out of storage and, under each of `names`, of
        training; returns the rows deleted. One transaction: all of it happens or none."""
        async with self._transaction() as db:
            # SHARE mode waits for inserts in flight (of any process) and holds new ones until the opt-out is
            # committed: a message that raced the forgetting is either deleted here or refused after.
            await db.execute("LOCK TABLE channel_messages IN SHARE MODE")
            deleted = _rowcount(await db.execute("DELETE FROM channel_messages WHERE author_id = $1", user_id))
            await db.executemany(
                "INSERT INTO opt_outs (user_id, user_name, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                [(user_id, name, now()) for name in dict.fromkeys(names)])
        # The deleted text must leave the table's file too: a plain VACUUM leaves its bytes in the pages, a
        # full one rewrites the table (outside a transaction, as VACUUM must be). What the write-ahead log
        # keeps: the module's docstring.
        with _driver_errors(self.where, self._url):
            await self._pool.execute("VACUUM FULL channel_messages", timeout=VACUUM_TIMEOUT_S)
        return deleted

    async def opted_out_names(self) -> list[str]:
        """Names of everyone who opted out: their turns are dropped from exports at training time too."""
        rows = await self._query('SELECT DISTINCT user_name COLLATE "C" FROM opt_outs ORDER BY 1')
        return [r[0] for r in rows]

    # -- settings --------------------------------------------------------------------------------------
    # -- training runs ---------------------------------------------------------------------------------
    async def start_run(self, *, requested_by: int | None, speaker: str | None, epochs: float | None,
                        out_path: str | None = None, progress_message: tuple[int, int] | None = None) -> int:
        """Record a run as running; `out_path` is where its artifact will appear and `progress_message` the
        (channel id, message id) showing its progress, so a restart can clean up and say how it ended."""
        channel_id, message_id = progress_message or (None, None)
        rows = await self._query(
            "INSERT INTO training_runs (requested_by, speaker, epochs, status, started_at, out_path, "
            "progress_channel_id, progress_message_id) VALUES ($1, $2, $3, 'running', $4, $5, $6, $7) RETURNING id",
            (requested_by, speaker, epochs, now(), out_path, channel_id, message_id))
        return int(rows[0][0])

    async def running_runs(self) -> list[dict[str, Any]]:
        """Runs still marked running (at start: left by a process that is gone)."""
        return [dict(r) for r in await self._query("SELECT * FROM training_runs WHERE status = 'running' ORDER BY id")]

    async def fail_interrupted_runs(self) -> int:
        """Runs still marked running belong to a process that is gone: mark them failed."""
        return await self._execute("UPDATE training_runs SET status = 'failed', error = 'the bot stopped "
                                   "during training', finished_at = $1 WHERE status = 'running'", (now(),))

    # -- schedules and posts ---------------------------------------------------------------------------
    async def add_schedule(self, name: str, *, targets: Sequence[PostTarget | str], cron: str | None = None,
                           interval_s: int | None = None, timezone_name: str = "UTC",
                           mode: str = DEFAULT_MODE, guild_id: int | None = None,
                           persona_id: int | None = None) -> int:
        """Add a schedule owned by `guild_id` (None: a global one, the bot owners'). Names are unique per
        owner. Targets given as text are parsed by `PostTarget.parse`. `persona_id` names the registered persona
        that writes its posts (None: the persona assigned where each post goes)."""
        stored = stored_targets(targets, cron=cron, interval_s=interval_s)
        try:
            rows = await self._query(
                "INSERT INTO schedules (guild_id, name, cron, interval_s, timezone, targets, mode, created_at, "
                "persona_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                (guild_id, name, cron, interval_s, timezone_name, stored, mode, now(), persona_id))
        except _Conflict as e:
            raise StoreError(f"a schedule named {name!r} exists already") from e
        return int(rows[0][0])

    async def remove_schedule(self, schedule_id: int) -> bool:
        return await self._execute("DELETE FROM schedules WHERE id = $1", (schedule_id,)) > 0

    async def set_paused(self, schedule_id: int, paused: bool) -> bool:
        return await self._execute("UPDATE schedules SET paused = $1 WHERE id = $2", (paused, schedule_id)) > 0

    async def set_last_run(self, schedule_id: int, slot: str) -> None:
        await self._execute('UPDATE schedules SET last_run = $1 WHERE id = $2 AND (last_run IS NULL OR '
                            'last_run < $1 COLLATE "C")', (slot, schedule_id))

    async def claim_post(self, schedule_id: int | None, slot: str, target: str,
                         guild_id: int | None = None) -> int | None:
        """Record a post as pending before anything is sent, owned by `guild_id` (None: global). None when
        this schedule's slot for this target was claimed already (by this process or another one on the
        same database)."""
        stamp = now()
        try:
            # The unique index posts_one_per_slot decides between processes: the second insert finds the
            # first one's row (or waits for its transaction) and claims nothing.
            rows = await self._query(
                "INSERT INTO posts (schedule_id, slot, target, status, created_at, updated_at, guild_id) "
                "VALUES ($1, $2, $3, 'pending', $4, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
                (schedule_id, slot, target, stamp, guild_id))
        except _Conflict:           # the schedule was removed meanwhile: nothing to claim, as on SQLite
            return None
        return int(rows[0][0]) if rows else None

    async def posts(self, limit: int = 10, owners: Iterable[int | None] | None = None) -> list[dict[str, Any]]:
        """The newest posts: every one, or only those owned by one of `owners` (guild ids; None: global)."""
        if owners is None:
            rows = await self._query("SELECT * FROM posts ORDER BY id DESC LIMIT $1", (limit,))
            return [dict(r) for r in rows]
        wanted = list(owners)
        ids = [g for g in wanted if g is not None]
        clause = "guild_id = ANY($1::bigint[])" + (" OR guild_id IS NULL" if None in wanted else "")
        rows = await self._query(f"SELECT * FROM posts WHERE {clause} ORDER BY id DESC LIMIT $2", (ids, limit))
        return [dict(r) for r in rows]

    async def mark_pending_unknown(self) -> int:
        """Posts still pending belong to a process that stopped mid-send: whether they went out is unknown.
        They are never re-sent blindly; /status reports them."""
        return await self._execute("UPDATE posts SET status = 'unknown', error = 'the bot stopped while "
                                   "sending; check the target', updated_at = $1 WHERE status = 'pending'", (now(),))

    # -- personas and where they speak -----------------------------------------------------------------
    async def add_persona(self, name: str, artifact_path: str | Path, *, guild_id: int | None = None,
                          generation: dict[str, Any] | None = None, avatar_url: str | None = None) -> PersonaEntry:
        """Register a persona owned by `guild_id` (None: a global one, the bot owners'). Names are unique per
        owner, case-insensitively. The checks of who may and what is valid live in bot/personas.py."""
        try:
            rows = await self._query(
                "INSERT INTO personas (guild_id, name, artifact_path, generation, created_at, avatar_url) "
                f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PERSONA_COLUMNS}",
                (guild_id, name, str(artifact_path), json.dumps(generation or {}), now(), avatar_url))
        except _Conflict as e:
            where = "globally" if guild_id is None else f"in guild {guild_id}"
            raise StoreError(f"a persona named {name!r} exists already {where}") from e
        return persona_row(rows[0])

    async def personas(self, owners: Iterable[int | None] | None = None, *, prefix: str = "",
                       limit: int | None = None) -> list[PersonaEntry]:
        """Personas by name: every one, or only those owned by one of `owners` (guild ids; None: global); with
        `prefix`, those whose name starts with it (any case); at most `limit`. Filtered by the database, so that
        one server's thousands of personas cost another server's listing nothing."""
        where: list[str] = []
        params: list[Any] = []
        if owners is not None:
            wanted = set(owners)
            params.append(sorted(o for o in wanted if o is not None))
            where.append(f"(guild_id = ANY(${len(params)}::bigint[])"
                         + (" OR guild_id IS NULL)" if None in wanted else ")"))
        if prefix:
            params.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            where.append(f"lower(name) COLLATE \"C\" LIKE lower(${len(params)}) ESCAPE '\\'")
        sql = f"SELECT {PERSONA_COLUMNS} FROM personas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # Sorted as SQLite's NOCASE sorts: by the lower-cased name, byte by byte.
        sql += ' ORDER BY lower(name) COLLATE "C", id'
        if limit is not None:
            params.append(limit)
            sql += f" LIMIT ${len(params)}"
        return [persona_row(r) for r in await self._query(sql, params)]

    async def find_persona(self, name: str, guild_id: int | None) -> PersonaEntry | None:
        """The persona called `name` (any case) as seen from `guild_id`: the guild's own first, then a global
        one; from no guild (None), global ones only."""
        rows = await self._query(
            f"SELECT {PERSONA_COLUMNS} FROM personas WHERE lower(name) = lower($1) "
            "AND (guild_id IS NULL OR guild_id = $2) ORDER BY guild_id IS NULL LIMIT 1", (name, guild_id))
        return persona_row(rows[0]) if rows else None

    async def set_persona_artifact(self, persona_id: int, artifact_path: str | Path,
                                   previous_path: str | Path | None) -> PersonaEntry | None:
        """Point a persona at another artifact (a retrain's or a rollback's), keeping `previous_path` for the
        next rollback; None when the persona is gone."""
        rows = await self._query(
            f"UPDATE personas SET artifact_path = $1, previous_artifact_path = $2 WHERE id = $3 "
            f"RETURNING {PERSONA_COLUMNS}",
            (str(artifact_path), str(previous_path) if previous_path is not None else None, persona_id))
        return persona_row(rows[0]) if rows else None

    async def remove_persona(self, persona_id: int) -> int | None:
        """Remove a persona and its assignments: how many assignments went with it, None when it was gone."""
        async with self._transaction() as db:
            # Locks the persona's row first: an assignment made meanwhile waits, and is counted or refused.
            found = await db.fetchval("SELECT id FROM personas WHERE id = $1 FOR UPDATE", persona_id)
            count = await db.fetchval("SELECT count(*) FROM assignments WHERE persona_id = $1", persona_id)
            await db.execute("DELETE FROM personas WHERE id = $1", persona_id)
        return int(count) if found is not None else None

    async def assign_persona(self, persona_id: int, scope: str, scope_id: int | None,
                             guild_id: int | None) -> None:
        """Make a persona the one at this place (replacing the one there): scope 'bot' (no ids), 'guild'
        (its id twice) or 'channel' (its id and its guild's)."""
        await self._execute(
            "INSERT INTO assignments (scope, scope_id, guild_id, persona_id, created_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (scope, (coalesce(scope_id, 0))) DO UPDATE SET persona_id = excluded.persona_id, "
            "guild_id = excluded.guild_id, created_at = excluded.created_at",
            (scope, scope_id, guild_id, persona_id, now()))

    async def unassign_persona(self, scope: str, scope_id: int | None) -> bool:
        """Clear the assignment at this place; False when there was none."""
        return await self._execute("DELETE FROM assignments WHERE scope = $1 AND coalesce(scope_id, 0) = $2",
                                   (scope, scope_id or 0)) > 0

    async def assignments(self, *, guild_id: int | None = None, bot: bool = False,
                          places: Iterable[tuple[str, int | None]] = ()) -> list[Assignment]:
        """Assignments belonging to `guild_id` (its own and its channels'), the bot-wide one when `bot`, and
        those at each of `places` ((scope, id) pairs); each with its persona."""
        clauses: list[str] = []
        params: list[Any] = []
        if guild_id is not None:
            params.append(guild_id)
            clauses.append(f"a.guild_id = ${len(params)}")
        if bot:
            clauses.append("a.scope = 'bot'")
        for scope, scope_id in places:
            params += [scope, scope_id or 0]
            clauses.append(f"(a.scope = ${len(params) - 1} AND coalesce(a.scope_id, 0) = ${len(params)})")
        cols = ", ".join(f"p.{c.strip()}" for c in PERSONA_COLUMNS.split(","))
        rows = await self._query(
            f"SELECT a.scope, a.scope_id, a.guild_id, a.created_at, {cols} FROM assignments a "
            f"JOIN personas p ON p.id = a.persona_id WHERE {' OR '.join(clauses) or 'false'} ORDER BY a.id", params)
        return [Assignment(r[0], r[1], r[2], persona_row(r[4:]), r[3]) for r in rows]


async def _schema_version(db: asyncpg.Connection) -> int | None:
    """The database's schema version; None when it has no `personabot_schema` table (a new database)."""
    # A query of the catalog, not to_regclass: after waiting on the migration lock, this statement's snapshot
    # sees the table another process created meanwhile (to_regclass's catalog cache may not yet).
    if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() "
                             "AND tablename = 'personabot_schema')"):
        return None
    return int(await db.fetchval("SELECT coalesce(max(version), 0) FROM personabot_schema"))


async def _migrate(db: asyncpg.Connection, where: str, known: list, target: int) -> int:
    """Bring the database to schema version `target`, one migration per transaction; its version after.
    Processes starting together take turns (a session advisory lock over the whole of it): what one reads
    before it writes is never half another's migration (its tables there, its schema version not yet)."""
    await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        return await _migrate_locked(db, where, known, target)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def _migrate_locked(db: asyncpg.Connection, where: str, known: list, target: int) -> int:
    # Read before anything is written: a database that is not ours, or a newer one, stays exactly as it is.
    version = await _schema_version(db)
    if version is None:
        ours = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                              "AND tablename = ANY($1::text[]) ORDER BY tablename", list(TABLES))
        if ours:
            raise StoreError(f"{where} holds tables named as personabot's ({', '.join(r[0] for r in ours)}) but "
                             "no personabot schema version; personabot will not write into it: point DATABASE_URL "
                             "at an empty database, or restore this one from a backup.")
    if (version or 0) > len(known):
        raise StoreError(f"{where} has schema version {version}, newer than this personabot knows "
                         f"({len(known)}); run the newer personabot, or restore an older backup.")
    version = version or 0
    for migration in known:
        if not version < migration.version <= target:
            continue
        try:
            async with db.transaction():
                done = await _schema_version(db)
                if done is None:
                    await db.execute("CREATE TABLE personabot_schema (version INTEGER NOT NULL)")
                    await db.execute("INSERT INTO personabot_schema (version) VALUES (0)")
                if (done or 0) < migration.version:
                    await db.execute(migration.script("postgresql"))
                    await db.execute("UPDATE personabot_schema SET version = $1", migration.version)
        except asyncpg.PostgresError as e:
            if isinstance(e, (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError)):
                raise
            raise StoreError(f"migration {migration.name} failed on {where} ({type(e).__name__}: {e}); the "
                             f"database was left at version {migration.version - 1}") from e
        version = migration.version
    return version


async def _check_writable(db: asyncpg.Connection, where: str) -> None:
    """Refuse a database the bot could read but never write (it stores every message and post)."""
    read_only = await db.fetchval("SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()")
    if read_only:
        raise StoreError(_read_only(where))
    denied = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY($1::text[]) "
        "AND NOT (SELECT bool_and(has_table_privilege(quote_ident(tablename), p)) "
        "FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p) ORDER BY tablename",
        list(TABLES))
    if denied:
        user = await db.fetchval("SELECT current_user")
        raise StoreError(f"the database {where} is read-only for its user {user} (no right to write "
                         f"{', '.join(r[0] for r in denied)}): grant it SELECT, INSERT, UPDATE and DELETE on "
                         "personabot's tables, or connect as their owner")


def _read_only(where: str) -> str:
    return (f"the database {where} is read-only (a standby server, or default_transaction_read_only is on): "
            "point DATABASE_URL at the primary server, or let the bot's role write")


class _Conflict(StoreError):
    """A statement broke a constraint (a unique name, a foreign key): the caller says what that means."""


@contextmanager
def _driver_errors(where: str, url: str) -> Iterator[None]:
    """asyncpg's errors, the connection's and timeouts as a `StoreError` naming the database (never its
    password), with what to do."""
    try:
        yield
    except StoreError:
        raise
    except asyncpg.IntegrityConstraintViolationError as e:
        raise _Conflict(_scrubbed(f"{where}: {e}", url)) from e
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as e:
        raise StoreError(_scrubbed(_problem(where, e), url)) from e


def _problem(where: str, error: BaseException) -> str:
    """What went wrong with the database at `where`, for people."""
    if isinstance(error, asyncpg.ReadOnlySQLTransactionError):
        return _read_only(where)
    if isinstance(error, asyncpg.InsufficientPrivilegeError):
        return f"the database {where} refused a write ({error}): it is read-only for the bot's user; grant it " \
               "SELECT, INSERT, UPDATE and DELETE on personabot's tables"
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return f"the database {where} does not exist on its server ({error}): create it (createdb), or fix " \
               "DATABASE_URL"
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        return f"the PostgreSQL server at {where} refused the login ({error}): check the user and password " \
               "in DATABASE_URL"
    if isinstance(error, (asyncpg.DataCorruptedError, asyncpg.IndexCorruptedError)):
        return f"the database {where} is damaged ({error}). personabot will not replace it: restore it from a " \
               "backup (or REINDEX a damaged index)"
    if isinstance(error, TimeoutError):
        return f"the PostgreSQL server at {where} did not answer in time: is it overloaded, or is DATABASE_URL's " \
               "host and port right?"
    if isinstance(error, (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError,
                          asyncpg.TooManyConnectionsError)):
        return f"cannot reach the PostgreSQL server at {where} ({type(error).__name__}: {error}): is it running, " \
               "and are DATABASE_URL's host and port right?"
    if isinstance(error, asyncpg.InterfaceError):
        return f"cannot use the database {where} ({type(error).__name__}: {error}); check DATABASE_URL"
    return f"database error in {where} ({type(error).__name__}: {error})"


def _scrubbed(text: str, url: str) -> str:
    """`text` without the password of `url`, should a driver's message ever quote it."""
    userinfo = url.partition("://")[2].partition("?")[0].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return text.replace(password, "***") if password else text


def _rowcount(status: str) -> int:
    """The rows a statement changed, from its command tag ("INSERT 0 1", "DELETE 3", "UPDATE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
