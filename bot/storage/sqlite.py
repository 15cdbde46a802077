"""The SQLite store (`bot.core.store.Store`): one SQLite file (aiosqlite, WAL mode) for what the bot remembers
between restarts.

Schema changes are numbered SQL files in `bot/storage/migrations/` (`bot.storage.schema`), applied in order at
start; the schema version is SQLite's `user_version`. Every write goes through one lock (one writer path), so a
burst of messages and a /forget-me never interleave half-way. A file that is not a readable database, or that
was written by a newer personabot, is an error naming the file; it is never replaced or "repaired".

Between processes (all on one machine): SQLite cannot tell another process of a change (`listen` says so;
they look every 15 s), and the jobs leadership is a lease row in `settings` (`JOBS_LEASE`: its holder and
when it runs out), renewed by its holder's heartbeat and taken by another candidate once it has run out.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite

from bot.core.posts import DEFAULT_MODE, PostTarget
from bot.core.store import Assignment, ChangeHandler, PersonaEntry, StoreError
from bot.storage.rows import PERSONA_COLUMNS, SharedQueries, now, stored_targets
from bot.storage.rows import persona as persona_row
from bot.storage.schema import migrations

# The settings row that holds the jobs lease: {"holder": ..., "expires_at": seconds since the epoch}.
JOBS_LEASE = "jobs_lease"


class SQLiteStore(SharedQueries):
    """Open with `await SQLiteStore.open(path)`; close with `await store.close()` (or `async with`)."""

    def __init__(self, path: Path, db: aiosqlite.Connection, version: int) -> None:
        self.path = path
        self.where = str(path)
        self._db = db
        self.version = version
        self._write = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, *, upto: int | None = None) -> "SQLiteStore":
        """Open (creating if absent) and migrate the database at `path`. `upto` stops at that schema version
        (for tests of migrations)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        known = migrations()
        target = len(known) if upto is None else upto
        try:
            db = await aiosqlite.connect(path, timeout=5.0)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {path}: {e}") from e
        try:
            # Read before anything is written: a damaged file must stay exactly as it is.
            version = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
            await (await db.execute("SELECT count(*) FROM sqlite_master")).fetchone()
        except sqlite3.OperationalError as e:     # locked, read-only, unreadable: the file itself is fine
            await db.close()
            raise StoreError(_operational(path, e)) from e
        except sqlite3.DatabaseError as e:
            await db.close()
            raise StoreError(f"{path} is not a readable SQLite database ({e}). personabot will not replace it: "
                             "restore it from a backup, or move it away to start with an empty one.") from e
        if version > len(known):
            await db.close()
            raise StoreError(f"{path} has schema version {version}, newer than this personabot knows "
                             f"({len(known)}); run the newer personabot, or restore an older backup.")
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # Deleted rows are overwritten, not just unlinked: /forget-me must take the words off the disk.
            await db.execute("PRAGMA secure_delete=ON")
            # Migrations run with foreign keys off (SQLite's procedure for rebuilding a table), checked after.
            for migration in known:
                if version < migration.version <= target:
                    await cls._migrate(db, migration.version, migration.files["sqlite"])
                    version = migration.version
            broken = await (await db.execute("PRAGMA foreign_key_check")).fetchall()
            if broken:
                raise sqlite3.OperationalError(f"{len(broken)} rows break a foreign key after migrating")
            await db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as e:
            await db.close()
            raise StoreError(_operational(path, e)) from e
        db.row_factory = sqlite3.Row
        return cls(path, db, version)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection, number: int, file: Path) -> None:
        script = file.read_text(encoding="utf-8")
        try:
            await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except sqlite3.Error as e:
            await db.rollback()
            raise StoreError(f"migration {file.name} failed ({e}); the database was left at version "
                             f"{number - 1}") from e

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> "SQLiteStore":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the one writer path ---------------------------------------------------------------------------
    async def _execute(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Cursor:
        async with self._write:
            try:
                cursor = await self._db.execute(sql, tuple(params))
                await self._db.commit()
            except sqlite3.OperationalError as e:
                await self._db.rollback()
                raise StoreError(_operational(self.path, e)) from e
            except sqlite3.IntegrityError:
                await self._db.rollback()
                raise
            return cursor

    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await (await self._db.execute(sql, tuple(params))).fetchall())
        except sqlite3.OperationalError as e:
            raise StoreError(_operational(self.path, e)) from e

    # -- between processes -------------------------------------------------------------------------------
    async def listen(self, on_change: ChangeHandler) -> bool:
        """SQLite cannot tell other processes of a change: False (they look every 15 s)."""
        return False

    async def lead(self, holder: str, lease_s: float) -> bool:
        """Take or renew the jobs lease for `holder`, unless another holder's lease is still running: one
        statement, so two candidates never both win."""
        now_s = time.time()
        lease = json.dumps({"holder": holder, "expires_at": now_s + lease_s})
        await self._execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value "
            "WHERE json_extract(settings.value, '$.holder') = ? OR json_extract(settings.value, '$.expires_at') < ?",
            (JOBS_LEASE, lease, holder, now_s))
        return await self.leader() == holder

    async def leader(self) -> str | None:
        lease = await self.get_setting(JOBS_LEASE)
        if not isinstance(lease, dict) or not isinstance(lease.get("expires_at"), (int, float)):
            return None
        return lease.get("holder") if lease["expires_at"] >= time.time() else None

    async def resign(self, holder: str) -> None:
        await self._execute("DELETE FROM settings WHERE key = ? AND json_extract(value, '$.holder') = ?",
                            (JOBS_LEASE, holder))

    # -- channel messages ------------------------------------------------------------------------------
    async def add_message(self, *, channel_id: int, author_id: int, author_name: str, content: str,
                          is_bot: bool = False, guild_id: int | None = None, message_id: int | None = None,
                          created_at: str | None = None) -> bool:
        """Remember a channel message; False (nothing stored) when its author opted out."""
        # One statement: an opt-out that lands between a check and an insert cannot let a row through.
        cursor = await self._execute(
            "INSERT OR IGNORE INTO channel_messages (guild_id, channel_id, message_id, author_id, author_name, "
            "is_bot, content, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE NOT EXISTS (SELECT 1 FROM opt_outs WHERE user_id = ?)",
            (guild_id, channel_id, message_id, author_id, author_name, int(is_bot), content, created_at or now(),
             author_id))
        return cursor.rowcount > 0

    async def prune_messages(self, older_than_days: float) -> int:
        """Delete messages older than the retention period; returns how many."""
        cutoff = datetime.now(timezone.utc).timestamp() - older_than_days * 86400
        stamp = datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="seconds")
        cursor = await self._execute("DELETE FROM channel_messages WHERE created_at < ?", (stamp,))
        return cursor.rowcount

    # -- privacy ---------------------------------------------------------------------------------------
    async def forget_user(self, user_id: int, *names: str) -> int:
        """Delete the user's stored messages and opt them out of storage and, under each of `names`, of
        training; returns the rows deleted. One transaction: all of it happens or none."""
        async with self._write:
            try:
                cursor = await self._db.execute("DELETE FROM channel_messages WHERE author_id = ?", (user_id,))
                await self._db.executemany(
                    "INSERT OR IGNORE INTO opt_outs (user_id, user_name, created_at) VALUES (?, ?, ?)",
                    [(user_id, name, now()) for name in dict.fromkeys(names)])
                await self._db.commit()
                # The deleted text must not linger in the write-ahead log either: copy the log into the
                # (securely deleted) database file and truncate it.
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as e:
                await self._db.rollback()
                raise StoreError(_operational(self.path, e)) from e
            return cursor.rowcount

    async def opted_out_names(self) -> list[str]:
        """Names of everyone who opted out: their turns are dropped from exports at training time too."""
        return [r[0] for r in await self._query("SELECT DISTINCT user_name FROM opt_outs ORDER BY user_name")]

    # -- settings --------------------------------------------------------------------------------------
    # -- training runs ---------------------------------------------------------------------------------
    async def start_run(self, *, requested_by: int | None, speaker: str | None, epochs: float | None,
                        out_path: str | None = None, progress_message: tuple[int, int] | None = None) -> int:
        """Record a run as running; `out_path` is where its artifact will appear and `progress_message` the
        (channel id, message id) showing its progress, so a restart can clean up and say how it ended."""
        channel_id, message_id = progress_message or (None, None)
        cursor = await self._execute(
            "INSERT INTO training_runs (requested_by, speaker, epochs, status, started_at, out_path, "
            "progress_channel_id, progress_message_id) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
            (requested_by, speaker, epochs, now(), out_path, channel_id, message_id))
        return int(cursor.lastrowid)

    async def running_runs(self) -> list[dict[str, Any]]:
        """Runs still marked running (at start: left by a process that is gone)."""
        return [dict(r) for r in await self._query("SELECT * FROM training_runs WHERE status = 'running'")]

    async def fail_interrupted_runs(self) -> int:
        """Runs still marked running belong to a process that is gone: mark them failed."""
        cursor = await self._execute("UPDATE training_runs SET status = 'failed', error = 'the bot stopped "
                                     "during training', finished_at = ? WHERE status = 'running'", (now(),))
        return cursor.rowcount

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
            cursor = await self._execute(
                "INSERT INTO schedules (guild_id, name, cron, interval_s, timezone, targets, mode, created_at, "
                "persona_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, name, cron, interval_s, timezone_name, stored, mode, now(), persona_id))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"a schedule named {name!r} exists already") from e
        return int(cursor.lastrowid)

    async def remove_schedule(self, schedule_id: int) -> bool:
        return (await self._execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))).rowcount > 0

    async def set_paused(self, schedule_id: int, paused: bool) -> bool:
        cursor = await self._execute("UPDATE schedules SET paused = ? WHERE id = ?", (int(paused), schedule_id))
        return cursor.rowcount > 0

    async def set_last_run(self, schedule_id: int, slot: str) -> None:
        await self._execute("UPDATE schedules SET last_run = ? WHERE id = ? AND (last_run IS NULL OR last_run < ?)",
                            (slot, schedule_id, slot))

    async def claim_post(self, schedule_id: int | None, slot: str, target: str,
                         guild_id: int | None = None) -> int | None:
        """Record a post as pending before anything is sent, owned by `guild_id` (None: global). None when
        this schedule's slot for this target was claimed already (by this process or another one on the
        same database)."""
        try:
            cursor = await self._execute(
                "INSERT INTO posts (schedule_id, slot, target, status, created_at, updated_at, guild_id) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?)", (schedule_id, slot, target, now(), now(), guild_id))
        except sqlite3.IntegrityError:
            return None
        return int(cursor.lastrowid)

    async def posts(self, limit: int = 10, owners: Iterable[int | None] | None = None) -> list[dict[str, Any]]:
        """The newest posts: every one, or only those owned by one of `owners` (guild ids; None: global)."""
        if owners is None:
            rows = await self._query("SELECT * FROM posts ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows]
        wanted = list(owners)
        ids = [g for g in wanted if g is not None]
        clause = f"guild_id IN ({','.join('?' * len(ids))})" if ids else "0"
        if None in wanted:
            clause = f"({clause} OR guild_id IS NULL)"
        rows = await self._query(f"SELECT * FROM posts WHERE {clause} ORDER BY id DESC LIMIT ?", (*ids, limit))
        return [dict(r) for r in rows]

    async def mark_pending_unknown(self) -> int:
        """Posts still pending belong to a process that stopped mid-send: whether they went out is unknown.
        They are never re-sent blindly; /status reports them."""
        cursor = await self._execute("UPDATE posts SET status = 'unknown', error = 'the bot stopped while "
                                     "sending; check the target', updated_at = ? WHERE status = 'pending'", (now(),))
        return cursor.rowcount

    # -- personas and where they speak -----------------------------------------------------------------
    async def add_persona(self, name: str, artifact_path: str | Path, *, guild_id: int | None = None,
                          generation: dict[str, Any] | None = None, avatar_url: str | None = None) -> PersonaEntry:
        """Register a persona owned by `guild_id` (None: a global one, the bot owners'). Names are unique per
        owner, case-insensitively. The checks of who may and what is valid live in bot/personas.py."""
        try:
            cursor = await self._execute(
                "INSERT INTO personas (guild_id, name, artifact_path, generation, created_at, avatar_url) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (guild_id, name, str(artifact_path), json.dumps(generation or {}), now(), avatar_url))
        except sqlite3.IntegrityError as e:
            where = "globally" if guild_id is None else f"in guild {guild_id}"
            raise StoreError(f"a persona named {name!r} exists already {where}") from e
        return await self._persona_by_id(int(cursor.lastrowid))

    async def personas(self, owners: Iterable[int | None] | None = None, *, prefix: str = "",
                       limit: int | None = None) -> list[PersonaEntry]:
        """Personas by name: every one, or only those owned by one of `owners` (guild ids; None: global); with
        `prefix`, those whose name starts with it (any case); at most `limit`. Filtered by the database, so that
        one server's thousands of personas cost another server's listing nothing."""
        where, params = [], []
        if owners is not None:
            wanted = set(owners)
            ids = sorted(o for o in wanted if o is not None)
            where.append("(" + " OR ".join(["guild_id IS NULL"] * (None in wanted)
                                           + [f"guild_id IN ({', '.join('?' * len(ids))})"] * bool(ids)) + ")"
                         if wanted else "0")
            params += ids
        if prefix:
            where.append("name LIKE ? ESCAPE '\\'")
            params.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        sql = f"SELECT {PERSONA_COLUMNS} FROM personas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY name COLLATE NOCASE, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [persona_row(r) for r in await self._query(sql, params)]

    async def find_persona(self, name: str, guild_id: int | None) -> PersonaEntry | None:
        """The persona called `name` (any case) as seen from `guild_id`: the guild's own first, then a global
        one; from no guild (None), global ones only."""
        rows = await self._query(
            f"SELECT {PERSONA_COLUMNS} FROM personas WHERE name = ? COLLATE NOCASE "
            "AND (guild_id IS NULL OR guild_id = ?) ORDER BY guild_id IS NULL LIMIT 1", (name, guild_id))
        return persona_row(rows[0]) if rows else None

    async def _persona_by_id(self, persona_id: int) -> PersonaEntry:
        rows = await self._query(f"SELECT {PERSONA_COLUMNS} FROM personas WHERE id = ?", (persona_id,))
        return persona_row(rows[0])

    async def set_persona_artifact(self, persona_id: int, artifact_path: str | Path,
                                   previous_path: str | Path | None) -> PersonaEntry | None:
        """Point a persona at another artifact (a retrain's or a rollback's), keeping `previous_path` for the
        next rollback; None when the persona is gone."""
        cursor = await self._execute(
            "UPDATE personas SET artifact_path = ?, previous_artifact_path = ? WHERE id = ?",
            (str(artifact_path), str(previous_path) if previous_path is not None else None, persona_id))
        return await self.persona(persona_id) if cursor.rowcount else None

    async def remove_persona(self, persona_id: int) -> int | None:
        """Remove a persona and its assignments: how many assignments went with it, None when it was gone."""
        async with self._write:
            try:
                count = (await (await self._db.execute(
                    "SELECT count(*) FROM assignments WHERE persona_id = ?", (persona_id,))).fetchone())[0]
                cursor = await self._db.execute("DELETE FROM personas WHERE id = ?", (persona_id,))
                await self._db.commit()
            except sqlite3.OperationalError as e:
                await self._db.rollback()
                raise StoreError(_operational(self.path, e)) from e
        return count if cursor.rowcount else None

    async def assign_persona(self, persona_id: int, scope: str, scope_id: int | None,
                             guild_id: int | None) -> None:
        """Make a persona the one at this place (replacing the one there): scope 'bot' (no ids), 'guild'
        (its id twice) or 'channel' (its id and its guild's)."""
        await self._execute(
            "INSERT INTO assignments (scope, scope_id, guild_id, persona_id, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (scope, coalesce(scope_id, 0)) DO UPDATE SET persona_id = excluded.persona_id, "
            "guild_id = excluded.guild_id, created_at = excluded.created_at",
            (scope, scope_id, guild_id, persona_id, now()))

    async def unassign_persona(self, scope: str, scope_id: int | None) -> bool:
        """Clear the assignment at this place; False when there was none."""
        cursor = await self._execute("DELETE FROM assignments WHERE scope = ? AND coalesce(scope_id, 0) = ?",
                                     (scope, scope_id or 0))
        return cursor.rowcount > 0

    async def assignments(self, *, guild_id: int | None = None, bot: bool = False,
                          places: Iterable[tuple[str, int | None]] = ()) -> list[Assignment]:
        """Assignments belonging to `guild_id` (its own and its channels'), the bot-wide one when `bot`, and
        those at each of `places` ((scope, id) pairs); each with its persona."""
        wanted = list(places)
        clause = " OR ".join(["a.guild_id = ?"] * (guild_id is not None) + ["a.scope = 'bot'"] * bot
                             + ["(a.scope = ? AND coalesce(a.scope_id, 0) = ?)"] * len(wanted)) or "0"
        params = [guild_id] * (guild_id is not None) + [v for s, i in wanted for v in (s, i or 0)]
        cols = ", ".join(f"p.{c.strip()}" for c in PERSONA_COLUMNS.split(","))
        rows = await self._query(
            f"SELECT a.scope, a.scope_id, a.guild_id, a.created_at, {cols} FROM assignments a "
            f"JOIN personas p ON p.id = a.persona_id WHERE {clause} ORDER BY a.id", params)
        return [Assignment(r[0], r[1], r[2], persona_row(r[4:]), r[3]) for r in rows]


def _operational(path: Path, error: sqlite3.OperationalError) -> str:
    """What went wrong with a database that is itself fine (never advice to move it away)."""
    text = str(error)
    if "locked" in text or "busy" in text:
        return (f"the database {path} is locked by another process (is a second bot running on it?); "
                "try again when it is free")
    if "readonly" in text or "read-only" in text or ("unable to open" in text and not _writable(path)):
        return (f"the database {path} is read-only here: let the bot's user write to it and to its folder "
                "(SQLite adds -wal and -shm files beside it), or set DATABASE_PATH to a writable place")
    if "unable to open" in text:
        return f"cannot open the database {path}: check that its folder exists and the bot may write there"
    return f"database error in {path}: {error}"


def _writable(path: Path) -> bool:
    """Whether the database file can be opened for writing (opening to append changes nothing)."""
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False
