"""`personabot db copy`: every row of personabot's tables from one database into another, across engines, so that
a bot that outgrew one machine's SQLite file moves onto a PostgreSQL server (and back again).

- Both ends are opened by their stores' own `open`, so both are at this personabot's schema version before a row
  moves. The schema version's bookkeeping (SQLite's user_version, PostgreSQL's `personabot_schema`) is each
  end's own and is not copied.
- The target must hold no personabot rows (a new database, or one just migrated): a copy never merges into or
  overwrites a database in use. The source and the target being one database is refused too.
- The target is written in one transaction: the check that it is empty (with its tables locked against other
  writers), every row, and its id counters. An error anywhere rolls it back: no row is left half-copied. The
  source is read in one snapshot, so rows written meanwhile do not tear the copy.
- Ids are kept (assignments and schedules name personas by id, posts schedules) and the target's counters
  continue after them: PostgreSQL's identity sequences are set to the largest copied id; SQLite's next rowid
  is the largest one plus one by itself (and SQLite keeps `sqlite_sequence` up with explicit ids, should a
  table ever use AUTOINCREMENT).
- Values take the target's column types: SQLite keeps flags as 0/1 where PostgreSQL has BOOLEAN, and ids as
  INTEGER where PostgreSQL has BIGINT. A value that does not convert exactly stops the copy, naming its table,
  row and column: nothing is dropped or rounded on the way.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from bot.core.config import Settings
from bot.core.store import Store, StoreError, shown_database_url
from bot.storage import open_store
from bot.storage.postgres import PostgresStore
from bot.storage.schema import TABLES
from bot.storage.sqlite import SQLiteStore

# The addresses the PostgreSQL store takes (DATABASE_URL's); anything else that looks like a URL is refused.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Rows read and written per round trip: big enough to stream a large message table quickly, small enough
# that memory stays flat whatever its size.
BATCH_ROWS = 1000

Row = tuple[Any, ...]
Convert = Callable[[Any], Any]


class _Unconvertible(ValueError):
    """A value that the target's column type cannot hold exactly."""


# -- opening the two ends ---------------------------------------------------------------------------------------
async def open_database(address: str, *, must_exist: bool = False) -> Store:
    """The store at `address`: a PostgreSQL address (postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or
    postgres://) or a SQLite file's plain path; opened and migrated. With `must_exist`, a SQLite file that is not
    there is refused (a source is never created empty). Raises `StoreError`."""
    if address.startswith(POSTGRES_SCHEMES):
        return await PostgresStore.open(address)
    if not address.strip():
        raise StoreError("no database given: name a PostgreSQL address (postgresql://...) or a SQLite file")
    # sqlite:///x.db means x.db to some tools and /x.db to others: a plain path is never ambiguous.
    if address.startswith("sqlite:"):
        raise StoreError(f"{address}: write a SQLite database as the file's plain path (data/personabot.sqlite3 "
                         "or /srv/bot/personabot.sqlite3), not a sqlite: URL")
    if "://" in address:
        raise StoreError(f"{shown_database_url(address)} is neither a PostgreSQL address "
                         "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE) nor a SQLite file's path")
    if must_exist and not Path(address).is_file():
        raise StoreError(f"there is no SQLite database at {address} to copy: name the bot's database file")
    return await SQLiteStore.open(address)


async def open_source(settings: Settings | None, address: str | None) -> Store:
    """The database to copy: the one at `address`, else the bot's own (`open_store`: DATABASE_URL when set,
    else DATABASE_PATH). Never creates an empty SQLite file to copy from."""
    if address is not None:
        return await open_database(address, must_exist=True)
    assert settings is not None
    # open_store would create DATABASE_PATH's file; a missing one is a setting pointing at the wrong place.
    if not settings.database_url and not settings.database_path.is_file():
        raise StoreError(f"there is no database at {settings.database_path} (DATABASE_PATH) to copy: point "
                         "DATABASE_PATH (or DATABASE_URL) at the bot's database, or name it with --from")
    return await open_store(settings)


# -- the copy ---------------------------------------------------------------------------------------------------
async def copy_database(source: Store, target: Store, *,
                        report: Callable[[str], None] = lambda line: None) -> dict[str, int]:
    """Copy every row of personabot's tables from `source` into `target` (both open and migrated), as the
    module's docstring says; `report` gets a line per table copied. The rows copied per table. Raises
    `StoreError` (the target then holds none of them)."""
    src, dst = _end(source), _end(target)
    if await src.identity() == await dst.identity():
        raise StoreError(f"the source and the target are the same database ({dst.where}): name another target")
    counts: dict[str, int] = {}
    table = ""
    try:
        async with src.snapshot(), dst.transaction():
            filled = [name for name in TABLES if await dst.has_rows(name)]
            if filled:
                raise StoreError(f"the target {dst.where} holds personabot rows already (in {', '.join(filled)}); "
                                 "the copy goes only into a new or empty database. Nothing was written.")
            for table in TABLES:
                columns = await _shared_columns(src, dst, table)
                kinds = await dst.columns(table)
                converts = [dst.converter(kinds[column]) for column in columns]
                counts[table] = 0
                async for batch in src.rows(table, columns):
                    rows = [_converted(row, columns, converts, table) for row in batch]
                    await dst.insert(table, columns, rows)
                    counts[table] += len(rows)
                report(f"{table}: {counts[table]} rows")
            table = ""
            await dst.continue_counters()
    except _Unconvertible as e:
        raise StoreError(f"{src.where}: {e}; nothing was written to {dst.where}") from e
    except (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error, OSError, TimeoutError) as e:
        during = f" while copying {table}" if table else ""
        raise StoreError(f"the copy from {src.where} to {dst.where} failed{during} ({type(e).__name__}: {e}); "
                         f"nothing was written to {dst.where}") from e
    return counts


async def _shared_columns(src: _End, dst: _End, table: str) -> list[str]:
    """The table's columns, which both ends must have alike (both are at one schema version): a column only one
    end has would be dropped or left empty, so it stops the copy instead."""
    ours, theirs = await src.columns(table), await dst.columns(table)
    if set(ours) != set(theirs):
        only = sorted(set(ours) ^ set(theirs))
        raise StoreError(f"{table} differs between {src.where} and {dst.where} (columns {', '.join(only)}), though "
                         "both are at one schema version; nothing was copied")
    return list(ours)


def _converted(row: Row, columns: Sequence[str], converts: Sequence[Convert], table: str) -> Row:
    values = []
    for column, convert, value in zip(columns, converts, row):
        try:
            values.append(None if value is None else convert(value))
        except _Unconvertible as e:
            raise _Unconvertible(f"{table} row {columns[0]}={row[0]!r}: {column} holds {_short(value)}, {e}") from e
    return tuple(values)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _Unconvertible("not a flag (0 or 1)")


def _integer(value: Any) -> int:
    if isinstance(value, int):          # a bool too: PostgreSQL's flags into SQLite's INTEGER
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Unconvertible("not a whole number")


def _real(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _Unconvertible("not a number")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Unconvertible("not text")


def _as_is(value: Any) -> Any:
    return value


# -- each engine's side -----------------------------------------------------------------------------------------
# The stores keep their connections to themselves; the copy works beneath the Store protocol (whole tables,
# one transaction on purpose), so it reaches them here, in the storage package, and nowhere else.
class _End(Protocol):
    """One end of a copy: what the copy needs of a database, the same on both engines."""

    where: str

    async def identity(self) -> tuple[Any, ...]:
        """What tells two open databases apart, however their addresses are written."""
        ...

    async def columns(self, table: str) -> dict[str, str]:
        """The table's columns, in order, each with its type (lower case)."""
        ...

    def converter(self, kind: str) -> Convert:
        """How a value (not None) becomes one that a column of type `kind` stores."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[None]:
        """Reading: the source's rows as of one moment."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Writing: one transaction, committed when the block ends, rolled back when it raises."""
        ...

    def rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[Row]]:
        """The table's rows (those columns), a batch at a time, in the snapshot."""
        ...

    async def has_rows(self, table: str) -> bool:
        ...

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        ...

    async def continue_counters(self) -> None:
        """After the copied rows: new rows get ids after the copied ones."""
        ...


def _end(store: Store) -> _End:
    if isinstance(store, SQLiteStore):
        return _SQLiteEnd(store)
    if isinstance(store, PostgresStore):
        return _PostgresEnd(store)
    raise TypeError(f"no copy for {type(store).__name__}")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SQLiteEnd:
    def __init__(self, store: SQLiteStore) -> None:
        self.where = store.where
        self._path = store.path
        self._db: aiosqlite.Connection = store._db

    async def identity(self) -> tuple[Any, ...]:
        found = os.stat(self._path)     # one file under two paths (a link, a relative one) is one database
        return ("sqlite", found.st_dev, found.st_ino)

    async def columns(self, table: str) -> dict[str, str]:
        rows = await self._db.execute_fetchall(f"PRAGMA table_info({_quoted(table)})")
        return {row[1]: row[2].lower() for row in rows}

    def converter(self, kind: str) -> Convert:
        # SQLite's type affinity, from the declared type (https://sqlite.org/datatype3.html, 3.1).
        if "int" in kind:
            return _integer
        if "char" in kind or "clob" in kind or "text" in kind:
            return _text
        if "real" in kind or "floa" in kind or "doub" in kind:
            return _real
        return _as_is

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        # In WAL mode a read transaction sees the database as of its first read until it ends.
        await self._db.execute("BEGIN")
        try:
            yield
        finally:
            await self._db.rollback()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        # IMMEDIATE: the write lock from the start, so no other process writes between the check and the copy.
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[Row]]:
        names = ", ".join(map(_quoted, columns))
        async with self._db.execute(f"SELECT {names} FROM {_quoted(table)}") as cursor:
            while batch := await cursor.fetchmany(BATCH_ROWS):
                yield [tuple(row) for row in batch]

    async def has_rows(self, table: str) -> bool:
        return bool(await self._db.execute_fetchall(f"SELECT 1 FROM {_quoted(table)} LIMIT 1"))

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        names = ", ".join(map(_quoted, columns))
        marks = ", ".join("?" * len(columns))
        await self._db.executemany(f"INSERT INTO {_quoted(table)} ({names}) VALUES ({marks})", rows)

    async def continue_counters(self) -> None:
        """Nothing to do: the next rowid is the largest one plus one (the module's docstring)."""


class _PostgresEnd:
    def __init__(self, store: PostgresStore) -> None:
        self.where = store.where
        self._pool: asyncpg.Pool = store._pool
        self._db: asyncpg.Connection | None = None

    async def identity(self) -> tuple[Any, ...]:
        # The cluster's system identifier and the database's name; a role that may not read the control data
        # (some managed servers) falls back on the address as written.
        async with self._pool.acquire() as db:
            try:
                return ("postgresql", *await db.fetchrow(
                    "SELECT system_identifier, current_database() FROM pg_control_system()"))
            except asyncpg.InsufficientPrivilegeError:
                return ("postgresql", self.where, await db.fetchval("SELECT current_database()"))

    async def columns(self, table: str) -> dict[str, str]:
        async with self._connection() as db:
            rows = await db.fetch("SELECT column_name, data_type FROM information_schema.columns WHERE "
                                  "table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                                  table)
        return {row[0]: row[1].lower() for row in rows}

    def converter(self, kind: str) -> Convert:
        if kind == "boolean":
            return _flag
        if kind in ("bigint", "integer", "smallint"):
            return _integer
        if kind in ("double precision", "real"):
            return _real
        if kind in ("text", "character varying", "character"):
            return _text
        return _as_is

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The transaction's connection while one is open, else one from the pool."""
        if self._db is not None:
            yield self._db
        else:
            async with self._pool.acquire() as db:
                yield db

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        async with self._pool.acquire() as db, db.transaction(isolation="repeatable_read", readonly=True):
            self._db = db
            try:
                yield
            finally:
                self._db = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self._pool.acquire() as db, db.transaction():
            self._db = db
            try:
                # Other processes may read but not write these tables until the copy commits: the emptiness
                # checked here is still true when the rows land.
                await db.execute(f"LOCK TABLE {', '.join(map(_quoted, TABLES))} IN EXCLUSIVE MODE")
                yield
            finally:
                self._db = None

    async def rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[Row]]:
        assert self._db is not None, "rows are read in a snapshot"
        names = ", ".join(map(_quoted, columns))
        batch: list[Row] = []
        async for record in self._db.cursor(f"SELECT {names} FROM {_quoted(table)}", prefetch=BATCH_ROWS):
            batch.append(tuple(record))
            if len(batch) == BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch

    async def has_rows(self, table: str) -> bool:
        async with self._connection() as db:
            return bool(await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_quoted(table)})"))

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        assert self._db is not None, "rows are written in the transaction"
        await self._db.copy_records_to_table(table, records=rows, columns=list(columns))

    async def continue_counters(self) -> None:
        """Each identity (or serial) column's sequence set to the largest copied id, so the next is one more.
        setval is not undone by a rollback; it runs last, and a sequence ahead of an empty table harms nothing."""
        assert self._db is not None, "counters are set in the transaction"
        counters = await self._db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ANY($1::text[]) AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
            list(TABLES))
        for table, column in counters:
            await self._db.execute(
                f"SELECT setval(pg_get_serial_sequence($1, $2), max({_quoted(column)})) FROM {_quoted(table)} "
                f"HAVING max({_quoted(column)}) IS NOT NULL", _quoted(table), column)
