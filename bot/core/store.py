"""The store as the rest of the bot sees it: the `Store` protocol (what the bot remembers between restarts:
channel messages, opt-outs, settings, training runs, schedules and posts, personas and where they speak,
artifact owners), its row types and its one error. Implementations live in `bot.storage` (SQLite, and
PostgreSQL for several machines); only the entry points name one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.core.posts import DEFAULT_MODE, PostTarget
from bot.core.quiz import QuizScore


class StoreError(Exception):
    """The database cannot be used; the message names it (a file, or a server without its password) and what
    to do."""


def shown_database_url(url: str) -> str:
    """A database address as people may see it (errors, logs, /status): scheme, user, host, port and database,
    without the password or the query (which may carry one: `?password=...`). Never fails."""
    scheme, has_scheme, rest = url.partition("://")
    if not has_scheme:
        return "(a database address that cannot be read)"
    # Up to the last "@": a password may hold "/" or "@" that its writer did not percent-encode.
    userinfo, at, place = rest.partition("?")[0].partition("#")[0].rpartition("@")
    user = userinfo.partition(":")[0]
    hosts, _, database = place.partition("/")
    return f"{scheme}://{user + '@' if at and user else ''}{hosts}/{database}"


# What a change one process makes is about, as other processes hear of it (`Store.listen`): each topic names
# what a listener re-reads. 'model': the bot's own persona was swapped (a retrain or rollback); 'personas': one
# was registered, removed, repointed or assigned; 'schedules': one was added, paused, removed or edited.
CHANGE_TOPICS = ("model", "personas", "schedules")
# Called with a topic when another process (or this one) changed what it names.
ChangeHandler = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    channel_id: int
    author_id: int
    author_name: str
    content: str
    is_bot: bool
    created_at: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """A posting schedule: a crontab line or an interval, in a time zone, posting `mode` lines to `targets`;
    owned by a guild (`guild_id`) or global (None: the bot owners')."""

    id: int | None             # None: an ad-hoc post (/post now), never stored as a schedule
    guild_id: int | None
    name: str
    cron: str | None
    interval_s: int | None
    timezone: str
    targets: tuple[PostTarget, ...]
    mode: str
    paused: bool
    last_run: str | None
    created_at: str
    persona_id: int | None = None  # the registered persona that writes its posts; None: the one at each target


@dataclass(frozen=True, slots=True)
class PersonaEntry:
    """A registered persona: a name, its artifact directory, its owner (a guild, or None: global, the bot
    owners'), and default sampling settings over the artifact's own."""

    id: int
    guild_id: int | None
    name: str
    artifact_path: Path
    generation: dict[str, Any]
    created_at: str
    previous_artifact_path: Path | None = None   # what it served before its last retrain or rollback
    avatar_url: str | None = None                # the image its webhook messages show


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which persona speaks at one place: scope 'bot' (scope_id None), 'guild' or 'channel' (its id);
    `guild_id` is the guild the place belongs to (None for 'bot')."""

    scope: str
    scope_id: int | None
    guild_id: int | None
    persona: PersonaEntry
    created_at: str


class Store(Protocol):
    """What every store does; each method's docstring is the contract (`bot.storage.sqlite.SQLiteStore`,
    `bot.storage.postgres.PostgresStore`)."""

    where: str      # the database as messages name it: a file, or a server address without its password

    async def close(self) -> None:
        ...

    async def __aenter__(self) -> "Store":
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Closes the store."""
        ...

    # -- between processes -------------------------------------------------------------------------------
    async def listen(self, on_change: ChangeHandler) -> bool:
        """Call `on_change(topic)` on this event loop whenever a process on this database changes what a topic
        of `CHANGE_TOPICS` names, within about a second; after a lost connection is back, once per topic (what
        was missed meanwhile is re-read), with one log line. False when the engine cannot tell other processes
        (SQLite: they look every 15 s instead). Stops when the store closes."""
        ...

    async def lead(self, holder: str, lease_s: float) -> bool:
        """Take the jobs leadership for `holder` (this process, as /status names it) when no live process holds
        it, or keep it: True while `holder` leads. Every candidate calls it every few seconds, the leader too
        (its heartbeat). A leader that dies loses it: on PostgreSQL when the server sees its connection close
        (at once for a killed process; a vanished machine within the connection's keepalive bound), on SQLite
        when its lease runs out, `lease_s` after its last call. Raises `StoreError` when the database cannot
        say."""
        ...

    async def leader(self) -> str | None:
        """The holder that leads the jobs now; None when no live process does."""
        ...

    async def resign(self, holder: str) -> None:
        """Give the leadership up, if `holder` has it (a clean stop: a standby takes over at its next try)."""
        ...

    async def add_message(self, *, channel_id: int, author_id: int, author_name: str, content: str,
                          is_bot: bool = False, guild_id: int | None = None, message_id: int | None = None,
                          created_at: str | None = None) -> bool:
        """Remember a channel message; False (nothing stored) when its author opted out."""
        ...

    async def recent_messages(self, channel_id: int, limit: int = 200) -> list[StoredMessage]:
        """The channel's newest `limit` messages, oldest first."""
        ...

    async def all_messages(self, *, guild_id: int | None = None) -> list[StoredMessage]:
        """Every stored message of people who did not opt out, by channel and time (for retraining); with
        `guild_id`, that server's only."""
        ...

    async def prune_messages(self, older_than_days: float) -> int:
        """Delete messages older than the retention period; returns how many."""
        ...

    async def forget_user(self, user_id: int, *names: str) -> int:
        """Delete the user's stored messages and opt them out of storage and, under each of `names`, of
        training; returns the rows deleted. One transaction: all of it happens or none."""
        ...

    async def is_opted_out(self, user_id: int) -> bool:
        ...

    async def opted_out_names(self) -> list[str]:
        """Names of everyone who opted out: their turns are dropped from exports at training time too."""
        ...

    async def opted_out_ids(self) -> list[int]:
        """Account ids of everyone who opted out: exports that carry ids drop them under any name."""
        ...

    async def get_setting(self, key: str, default: Any = None) -> Any:
        ...

    async def set_setting(self, key: str, value: Any) -> None:
        ...

    async def start_run(self, *, requested_by: int | None, speaker: str | None, epochs: float | None,
                        out_path: str | None = None, progress_message: tuple[int, int] | None = None) -> int:
        """Record a run as running; `out_path` is where its artifact will appear and `progress_message` the
        (channel id, message id) showing its progress, so a restart can clean up and say how it ended."""
        ...

    async def finish_run(self, run_id: int, status: str, *, artifact_path: str | None = None,
                         metrics: dict | None = None, error: str | None = None) -> None:
        ...

    async def runs(self, limit: int = 5) -> list[dict[str, Any]]:
        ...

    async def running_runs(self) -> list[dict[str, Any]]:
        """Runs still marked running (at start: left by a process that is gone)."""
        ...

    async def fail_interrupted_runs(self) -> int:
        """Runs still marked running belong to a process that is gone: mark them failed."""
        ...

    async def add_schedule(self, name: str, *, targets: Sequence[PostTarget | str], cron: str | None = None,
                           interval_s: int | None = None, timezone_name: str = "UTC",
                           mode: str = DEFAULT_MODE, guild_id: int | None = None,
                           persona_id: int | None = None) -> int:
        """Add a schedule owned by `guild_id` (None: a global one, the bot owners'). Names are unique per
        owner. Targets given as text are parsed by `PostTarget.parse`. `persona_id` names the registered persona
        that writes its posts (None: the persona assigned where each post goes)."""
        ...

    async def schedules(self, owners: Iterable[int | None] | None = None) -> list[Schedule]:
        """Schedules, oldest first: every one, or only those owned by one of `owners` (guild ids; None
        stands for the global ones)."""
        ...

    async def schedule(self, schedule_id: int) -> Schedule | None:
        """The schedule with this id, if it still exists."""
        ...

    async def remove_schedule(self, schedule_id: int) -> bool:
        ...

    async def set_paused(self, schedule_id: int, paused: bool) -> bool:
        ...

    async def set_last_run(self, schedule_id: int, slot: str) -> None:
        ...

    async def claim_post(self, schedule_id: int | None, slot: str, target: str,
                         guild_id: int | None = None) -> int | None:
        """Record a post as pending before anything is sent, owned by `guild_id` (None: global). None when
        this schedule's slot for this target was claimed already (by this process or another one on the
        same database)."""
        ...

    async def update_post(self, post_id: int, status: str, *, text: str | None = None,
                          remote_id: str | None = None, error: str | None = None) -> None:
        ...

    async def recent_post_texts(self, limit: int = 100) -> list[str]:
        ...

    async def posts(self, limit: int = 10, owners: Iterable[int | None] | None = None) -> list[dict[str, Any]]:
        """The newest posts: every one, or only those owned by one of `owners` (guild ids; None: global)."""
        ...

    async def mark_pending_unknown(self) -> int:
        """Posts still pending belong to a process that stopped mid-send: whether they went out is unknown.
        They are never re-sent blindly; /status reports them."""
        ...

    async def add_persona(self, name: str, artifact_path: str | Path, *, guild_id: int | None = None,
                          generation: dict[str, Any] | None = None, avatar_url: str | None = None) -> PersonaEntry:
        """Register a persona owned by `guild_id` (None: a global one, the bot owners'). Names are unique per
        owner, case-insensitively. The checks of who may and what is valid live in bot/personas.py."""
        ...

    async def personas(self, owners: Iterable[int | None] | None = None, *, prefix: str = "",
                       limit: int | None = None) -> list[PersonaEntry]:
        """Personas by name: every one, or only those owned by one of `owners` (guild ids; None: global); with
        `prefix`, those whose name starts with it (any case); at most `limit`. Filtered by the database, so that
        one server's thousands of personas cost another server's listing nothing."""
        ...

    async def count_personas(self, guild_id: int | None) -> int:
        """How many personas `guild_id` owns (None: global ones)."""
        ...

    async def artifact_owner(self, path: str | Path) -> int | None:
        """The server that owns the artifact at `path` (absolute, resolved); None when no server does."""
        ...

    async def claim_artifact(self, path: str | Path, guild_id: int) -> int:
        """Make the artifact at `path` `guild_id`'s unless a server owns it already: the owner it has now."""
        ...

    async def add_quiz_score(self, artifact: str | Path, score: QuizScore) -> QuizScore:
        """Add a blind quiz's rounds to the results kept for the artifact at `artifact` (absolute, resolved):
        its results now, over every quiz taken on it."""
        ...

    async def quiz_score(self, artifact: str | Path) -> QuizScore | None:
        """The blind quiz results kept for the artifact at `artifact`; None when no quiz was taken on it."""
        ...

    async def find_persona(self, name: str, guild_id: int | None) -> PersonaEntry | None:
        """The persona called `name` (any case) as seen from `guild_id`: the guild's own first, then a global
        one; from no guild (None), global ones only."""
        ...

    async def persona(self, persona_id: int) -> PersonaEntry | None:
        """The persona with this id, if it still exists."""
        ...

    async def set_persona_artifact(self, persona_id: int, artifact_path: str | Path,
                                   previous_path: str | Path | None) -> PersonaEntry | None:
        """Point a persona at another artifact (a retrain's or a rollback's), keeping `previous_path` for the
        next rollback; None when the persona is gone."""
        ...

    async def remove_persona(self, persona_id: int) -> int | None:
        """Remove a persona and its assignments: how many assignments went with it, None when it was gone."""
        ...

    async def assign_persona(self, persona_id: int, scope: str, scope_id: int | None,
                             guild_id: int | None) -> None:
        """Make a persona the one at this place (replacing the one there): scope 'bot' (no ids), 'guild'
        (its id twice) or 'channel' (its id and its guild's)."""
        ...

    async def unassign_persona(self, scope: str, scope_id: int | None) -> bool:
        """Clear the assignment at this place; False when there was none."""
        ...

    async def assignments(self, *, guild_id: int | None = None, bot: bool = False,
                          places: Iterable[tuple[str, int | None]] = ()) -> list[Assignment]:
        """Assignments belonging to `guild_id` (its own and its channels'), the bot-wide one when `bot`, and
        those at each of `places` ((scope, id) pairs); each with its persona."""
        ...
