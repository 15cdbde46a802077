"""What both stores write and read the same way: the time stamp they store, a schedule's targets and a
persona's row as stored, and the queries both engines take as written (`SharedQueries`; `bot.storage.sqlite`,
`bot.storage.postgres`)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.core.posts import PostTarget
from bot.core.quiz import QuizScore
from bot.core.store import PersonaEntry, Schedule, StoredMessage


def now() -> str:
    """The time stamp stored with rows: ISO 8601 in UTC, to the second (compared as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def targets(stored: str) -> tuple[PostTarget, ...]:
    """A schedule's targets as stored (a JSON list of their texts); one no longer understood is left out."""
    parsed = (PostTarget.parse(text) for text in json.loads(stored))
    return tuple(target for target in parsed if target is not None)


def stored_targets(targets: Sequence[PostTarget | str], *, cron: str | None, interval_s: int | None) -> str:
    """A new schedule's targets as stored (the JSON list `targets` reads back), after the checks both stores
    make: a cron line or an interval, not both or neither; targets given as text parsed by `PostTarget.parse`.
    Raises ValueError."""
    if (cron is None) == (interval_s is None):
        raise ValueError("a schedule has either a cron line or an interval")
    parsed = [t if isinstance(t, PostTarget) else PostTarget.parse(t) for t in targets]
    if None in parsed:
        raise ValueError(f"not post targets: {targets!r}")
    return json.dumps([str(t) for t in parsed])


PERSONA_COLUMNS = "id, guild_id, name, artifact_path, generation, created_at, previous_artifact_path, avatar_url"


def persona(row: Sequence[Any]) -> PersonaEntry:
    """A `personas` row (columns as `PERSONA_COLUMNS`) as a typed entry."""
    return PersonaEntry(row[0], row[1], row[2], Path(row[3]), json.loads(row[4]), row[5],
                        Path(row[6]) if row[6] else None, row[7])


def numbered(sql: str) -> str:
    """`sql` with its `?` placeholders (SQLite's, as `SharedQueries` writes them) as PostgreSQL's `$1, $2, ...`."""
    count = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


class SharedQueries:
    """The Store methods whose SQL is the same on both engines, written once with `?` placeholders (PostgreSQL's
    store numbers them, `numbered`). A store gives `_query` (the rows) and `_execute` (runs a statement)."""

    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def _execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    async def recent_messages(self, channel_id: int, limit: int = 200) -> list[StoredMessage]:
        """The channel's newest `limit` messages, oldest first."""
        rows = await self._query(
            "SELECT channel_id, author_id, author_name, content, is_bot, created_at FROM channel_messages "
            "WHERE channel_id = ? ORDER BY id DESC LIMIT ?", (channel_id, limit))
        return [StoredMessage(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in reversed(rows)]

    async def all_messages(self, *, guild_id: int | None = None) -> list[StoredMessage]:
        """Every stored message of people who did not opt out, by channel and time (for retraining); with
        `guild_id`, that server's only."""
        where = " AND guild_id = ?" if guild_id is not None else ""
        rows = await self._query(
            "SELECT channel_id, author_id, author_name, content, is_bot, created_at FROM channel_messages "
            f"WHERE author_id NOT IN (SELECT user_id FROM opt_outs){where} ORDER BY channel_id, id",
            (guild_id,) if guild_id is not None else ())
        return [StoredMessage(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    async def is_opted_out(self, user_id: int) -> bool:
        return bool(await self._query("SELECT 1 FROM opt_outs WHERE user_id = ?", (user_id,)))

    async def opted_out_ids(self) -> list[int]:
        """Account ids of everyone who opted out: exports that carry ids drop them under any name."""
        return [r[0] for r in await self._query("SELECT DISTINCT user_id FROM opt_outs ORDER BY user_id")]

    async def get_setting(self, key: str, default: Any = None) -> Any:
        rows = await self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    async def set_setting(self, key: str, value: Any) -> None:
        await self._execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    async def finish_run(self, run_id: int, status: str, *, artifact_path: str | None = None,
                         metrics: dict | None = None, error: str | None = None) -> None:
        await self._execute(
            "UPDATE training_runs SET status = ?, artifact_path = ?, metrics = ?, error = ?, finished_at = ? "
            "WHERE id = ?", (status, artifact_path, json.dumps(metrics) if metrics else None, error, now(), run_id))

    async def runs(self, limit: int = 5) -> list[dict[str, Any]]:
        rows = await self._query("SELECT * FROM training_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    async def schedules(self, owners: Iterable[int | None] | None = None) -> list[Schedule]:
        """Schedules, oldest first: every one, or only those owned by one of `owners` (guild ids; None
        stands for the global ones)."""
        rows = await self._query("SELECT id, guild_id, name, cron, interval_s, timezone, targets, mode, paused, "
                                 "last_run, created_at, persona_id FROM schedules ORDER BY id")
        found = [Schedule(*r[:6], targets(r[6]), r[7], bool(r[8]), r[9], r[10], r[11]) for r in rows]
        if owners is None:
            return found
        wanted = set(owners)
        return [s for s in found if s.guild_id in wanted]

    async def schedule(self, schedule_id: int) -> Schedule | None:
        """The schedule with this id, if it still exists."""
        return next((s for s in await self.schedules() if s.id == schedule_id), None)

    async def update_post(self, post_id: int, status: str, *, text: str | None = None,
                          remote_id: str | None = None, error: str | None = None) -> None:
        await self._execute("UPDATE posts SET status = ?, text = coalesce(?, text), remote_id = ?, error = ?, "
                            "updated_at = ? WHERE id = ?", (status, text, remote_id, error, now(), post_id))

    async def recent_post_texts(self, limit: int = 100) -> list[str]:
        rows = await self._query("SELECT text FROM posts WHERE text IS NOT NULL AND status IN "
                                 "('posted', 'pending', 'unknown') ORDER BY id DESC LIMIT ?", (limit,))
        return [r[0] for r in rows]

    async def count_personas(self, guild_id: int | None) -> int:
        """How many personas `guild_id` owns (None: global ones)."""
        rows = await self._query("SELECT count(*) FROM personas WHERE coalesce(guild_id, 0) = ?", (guild_id or 0,))
        return int(rows[0][0])

    async def artifact_owner(self, path: str | Path) -> int | None:
        """The server that owns the artifact at `path` (absolute, resolved); None when no server does."""
        rows = await self._query("SELECT guild_id FROM artifact_owners WHERE path = ?", (str(path),))
        return int(rows[0][0]) if rows else None

    async def claim_artifact(self, path: str | Path, guild_id: int) -> int:
        """Make the artifact at `path` `guild_id`'s unless a server owns it already: the owner it has now."""
        await self._execute("INSERT INTO artifact_owners (path, guild_id, created_at) VALUES (?, ?, ?) "
                            "ON CONFLICT (path) DO NOTHING", (str(path), guild_id, now()))
        owner = await self.artifact_owner(path)
        assert owner is not None
        return owner

    async def add_quiz_score(self, artifact: str | Path, score: QuizScore) -> QuizScore:
        """Add a blind quiz's rounds to the results kept for the artifact at `artifact`: its results now."""
        # One statement: quizzes finishing at once in two processes both count.
        await self._execute("INSERT INTO quiz_results (artifact_path, rounds, fooled, updated_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (artifact_path) DO UPDATE SET rounds = quiz_results.rounds + excluded.rounds, "
                            "fooled = quiz_results.fooled + excluded.fooled, updated_at = excluded.updated_at",
                            (str(artifact), score.rounds, score.fooled, now()))
        kept = await self.quiz_score(artifact)
        assert kept is not None
        return kept

    async def quiz_score(self, artifact: str | Path) -> QuizScore | None:
        """The blind quiz results kept for the artifact at `artifact`; None when no quiz was taken on it."""
        rows = await self._query("SELECT rounds, fooled FROM quiz_results WHERE artifact_path = ?", (str(artifact),))
        return QuizScore(int(rows[0][0]), int(rows[0][1])) if rows else None

    async def persona(self, persona_id: int) -> PersonaEntry | None:
        """The persona with this id, if it still exists."""
        rows = await self._query(f"SELECT {PERSONA_COLUMNS} FROM personas WHERE id = ?", (persona_id,))
        return persona(rows[0]) if rows else None
