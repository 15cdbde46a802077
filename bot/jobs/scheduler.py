"""Scheduled persona posts: APScheduler 3 (`AsyncIOScheduler`, jobs in memory) fires the schedules stored in
the database; each firing posts one line per target, recorded before it is sent.

The scheduler owns its schedules: `add`, `remove`, `pause` and `describe` write the store and re-arm the jobs
together, so a caller (the /schedule cog) only translates its platform to these calls. Where a post goes is a
`PostTarget`; how it is sent is a `Sender` from `Senders`, to which the Discord adapter registers its channel
sender (this module imports no Discord).

Nothing lost, nothing doubled:
- a slot is claimed in the store (one row per schedule, slot and target, unique) before anything is sampled,
  so two bot processes on one database never both post it;
- a post is `pending` until the target answers, then `posted` (with the remote id), `failed` or `skipped`
  (with the reason); a post still pending at start belongs to a crashed process and becomes `unknown`, never
  re-sent blindly;
- after downtime, each schedule gets at most one catch-up post for its latest missed slot, and only within
  the grace period; APScheduler's own misfire handling coalesces the rest.

Who writes a post: the registered persona the schedule names (`Schedule.persona_id`), else, in a Discord
channel, the persona assigned there (`bot.core.personas.resolve`), else the bot's own. The line is sampled from that
persona and sent as it (the Discord sender speaks under its name).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import IO, Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.core import personas
from bot.core.config import Settings
from bot.core.personas import PersonaRef
from bot.core.posts import DEFAULT_MODE, GRACE_MINUTES, MODES, PostTarget
from bot.core.store import PersonaEntry, Schedule, Store, StoreError
from bot.inference.engine import Engine
from bot.jobs.posting import DuplicateContent, PostError, pick_line
from bot.jobs.twitter import TwitterTarget
from training.generation import attempt_seed

log = logging.getLogger("personabot.schedule")

# How a line is sent to one target: text -> the remote id of what was posted.
Sender = Callable[[str], Awaitable[str]]
# How a line is sent to a Discord channel: (channel id, text, the owning guild or None, the registered persona
# it is spoken as or None for the bot's own) -> remote id. The Discord adapter registers one; it must refuse a
# channel outside the owning guild.
ChannelSender = Callable[[int, str, "int | None", "PersonaRef | None"], Awaitable[str]]
# The registered persona assigned at a Discord channel (None: none there), as the Discord adapter knows it.
ChannelPersona = Callable[[int], Awaitable["PersonaEntry | None"]]
# A post whose every line was a duplicate is skipped after this many lines.
DUPLICATE_ATTEMPTS = 3
# The store setting a process writes when it changes the schedules, and how often the jobs process looks.
SCHEDULES_CHANGED = "schedules_changed"
SYNC_JOB, SYNC_INTERVAL_S = "sync-schedules", 15


class ScheduleError(Exception):
    """A schedule cannot be added as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class PostOutcome:
    """What happened to one post: posted (with its text and remote id), failed or skipped (with the reason),
    or not made because its slot was already claimed (`already-claimed`) or could not be (`not-claimed`)."""

    target: PostTarget
    status: str
    text: str | None = None
    remote_id: str | None = None
    error: str | None = None
    rejected: tuple[str, ...] = ()      # why the lines before it were not posted

    def describe(self) -> str:
        detail = self.text or self.error or ""
        return f"{self.target}: {self.status}" + (f" — {detail[:150]}" if detail else "")


def misfire_grace_s(grace_s: float) -> int:
    """APScheduler's `misfire_grace_time` for a grace period of `grace_s` seconds: whole seconds, at least one
    (it refuses 0). That grace is how late a running scheduler may fire a slot; a slot fired within a second
    of its time is on time, not caught up, so POST_GRACE_MINUTES=0 (no catch-up) still posts it."""
    return max(1, math.ceil(grace_s))


def slot_of(schedule: Schedule, moment: datetime) -> datetime:
    """The slot a firing at `moment` claims, in UTC: the schedule's latest slot at or before it (a crontab
    line's minute; an interval's start plus a whole number of intervals). One rule for a firing on time and a
    catch-up after a restart or a change of leader, so that both claim the same slot and never post it twice."""
    moment = moment.astimezone(timezone.utc)
    if schedule.cron or not schedule.interval_s:
        return moment.replace(second=0, microsecond=0)
    start = datetime.fromisoformat(schedule.created_at).astimezone(timezone.utc)
    intervals = max(0, math.floor((moment - start).total_seconds() / schedule.interval_s))
    return start + timedelta(seconds=intervals * schedule.interval_s)


def trigger_for(schedule: Schedule):
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron, timezone=schedule.timezone)
    return IntervalTrigger(seconds=int(schedule.interval_s), timezone=schedule.timezone,
                           start_date=datetime.fromisoformat(schedule.created_at))


def check_cron(cron: str, timezone_name: str) -> None:
    """Raise `ScheduleError` unless `cron` is a crontab line and `timezone_name` a time zone."""
    try:
        ZoneInfo(timezone_name)
        CronTrigger.from_crontab(cron, timezone=timezone_name)
    except (ValueError, KeyError, OSError) as e:
        raise ScheduleError(f"`{cron}` in `{timezone_name}` is not a schedule I can use: {e}") from e


class PostScheduler:
    def __init__(self, engine: Engine, store: Store, senders, *, grace_s: float = GRACE_MINUTES * 60,
                 seed: int | None = None, follow_other_processes: bool = False,
                 channel_persona: ChannelPersona | None = None) -> None:
        self.engine = engine
        self.store = store
        self.senders = senders       # .get(target: PostTarget, guild_id=..., persona=...) -> Sender | None
        # Who is assigned at a Discord channel; without the adapter's, the store is asked with the schedule's
        # guild (a global schedule then sees the channel's and the bot's assignments, not the guild's).
        self.channel_persona = channel_persona
        self.grace_s = grace_s
        self.seed = seed             # a seeded scheduler samples the same lines each run (tests)
        self.scheduler = None
        self.twitter: TwitterTarget | None = None
        # Called with every post's outcome (e.g. by bot.adapters.metrics); quick, and never allowed to stop a post.
        self.outcome_observers: list[Callable[[PostOutcome], None]] = []
        self._seen_change: Any = None
        self._reloading = asyncio.Lock()     # re-arms one at a time (a change heard while one runs waits)
        self._tasks: set[asyncio.Task] = set()
        # Other bot processes (SHARD_IDS split the guilds) may change the schedules: look every SYNC_INTERVAL_S.
        self.follow_other_processes = follow_other_processes

    async def start(self) -> None:
        """Mark interrupted posts unknown, catch up once per schedule, then schedule every unpaused one."""

        unknown = await self.store.mark_pending_unknown()
        if unknown:
            log.warning("%d post(s) were being sent when the bot stopped; marked unknown (see /status)", unknown)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        for schedule in await self.store.schedules():
            if not schedule.paused:
                await self.catch_up(schedule)
        self._seen_change = await self._last_change()
        await self.reload()
        if self.follow_other_processes:
            # Schedules changed by another process (a shard, or a standby) reach this one's jobs within an interval.
            self.scheduler.add_job(self.sync, "interval", seconds=SYNC_INTERVAL_S, id=SYNC_JOB, coalesce=True,
                                   max_instances=1)
        self.scheduler.start()

    @property
    def running(self) -> bool:
        """Whether this process fires the schedules (it leads the jobs)."""
        return self.scheduler is not None and self.scheduler.running

    def changed_elsewhere(self) -> None:
        """Another process changed the schedules (heard from the database): re-arm the jobs soon, if they run
        here."""
        if self.running:
            task = asyncio.get_running_loop().create_task(self.reload(), name="reload-schedules")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def sync(self) -> bool:
        """Re-arm the jobs when another process changed the stored schedules since the last look."""
        change = await self._last_change()
        if change == self._seen_change:
            return False
        self._seen_change = change
        await self.reload()
        return True

    async def _last_change(self) -> Any:
        try:
            return await self.store.get_setting(SCHEDULES_CHANGED)
        except StoreError as e:
            log.warning("cannot read whether schedules changed: %s", e)
            return self._seen_change

    async def _changed(self) -> None:
        """Say in the shared store that the schedules changed, then re-arm this process's jobs (if it runs
        them): the jobs process follows a change made anywhere."""
        await self.store.set_setting(SCHEDULES_CHANGED, datetime.now(timezone.utc).isoformat())
        await self.reload()

    async def reload(self) -> None:
        """Jobs for exactly the unpaused schedules in the store."""
        async with self._reloading:
            try:
                schedules = await self.store.schedules()
            except StoreError as e:
                log.warning("cannot read the schedules to re-arm them (the next change or look tries again): %s", e)
                return
            if self.scheduler is None:
                return
            for job in self.scheduler.get_jobs():
                if job.id != SYNC_JOB:
                    job.remove()
            for schedule in schedules:
                if not schedule.paused:
                    self._arm(schedule)

    def _arm(self, schedule: Schedule) -> None:
        self.scheduler.add_job(self._fire_now, trigger_for(schedule), args=[schedule.id],
                                   id=f"schedule-{schedule.id}", misfire_grace_time=misfire_grace_s(self.grace_s),
                                   coalesce=True, max_instances=1)

    # -- managing schedules: the store and the jobs change together --------------------------------------
    async def add(self, name: str, *, cron: str, targets: Sequence[PostTarget], timezone_name: str = "UTC",
                  mode: str = DEFAULT_MODE, guild_id: int | None = None, persona_id: int | None = None) -> Schedule:
        """Add a schedule and arm it; `persona_id` is the registered persona that writes its posts (None: the
        one at each target). Raises `ScheduleError` for a line or zone it cannot use and `StoreError` when the
        name is taken."""
        check_cron(cron, timezone_name)
        schedule_id = await self.store.add_schedule(name, cron=cron, targets=list(targets),
                                                    timezone_name=timezone_name, mode=mode, guild_id=guild_id,
                                                    persona_id=persona_id)
        await self._changed()
        return await self.store.schedule(schedule_id)

    async def named(self, name: str, owners: Iterable[int | None]) -> Schedule | None:
        """The schedule called `name` among those of `owners`, searched in their order (a guild's own first,
        then global ones)."""
        for owner in owners:
            for schedule in await self.store.schedules([owner]):
                if schedule.name == name:
                    return schedule
        return None

    async def remove(self, schedule: Schedule) -> bool:
        """Remove a schedule and its job (its past posts stay recorded)."""
        done = await self.store.remove_schedule(schedule.id)
        await self._changed()
        return done

    async def pause(self, schedule: Schedule, paused: bool = True) -> bool:
        """Pause (or, with `paused=False`, resume) a schedule, and its job with it."""
        done = await self.store.set_paused(schedule.id, paused)
        await self._changed()
        return done

    def describe(self, schedule: Schedule, persona_name: str | None = None) -> str:
        """One line for /schedule list: the schedule, where it posts, who writes it (`persona_name`, the name
        of the schedule's persona), and when it runs next."""
        nxt = self.next_runs().get(schedule.id)
        when = "paused" if schedule.paused else f"next {nxt:%Y-%m-%d %H:%M %Z}" if nxt else "not running"
        scope = " (global)" if schedule.guild_id is None else ""
        every = schedule.cron or f"{schedule.interval_s} s"
        who = f"as **{persona_name}**" if persona_name else "as the persona where it posts"
        return (f"`{schedule.name}`{scope}: `{every}` ({schedule.timezone}) → "
                f"{', '.join(map(str, schedule.targets))}, {schedule.mode}, {who}; {when}")

    # -- posting ---------------------------------------------------------------------------------------
    async def post_now(self, targets: Sequence[PostTarget], mode: str = DEFAULT_MODE,
                       guild_id: int | None = None, persona_id: int | None = None) -> list[PostOutcome]:
        """One post to each target right away (/post now), recorded like scheduled ones, owned by `guild_id`
        (None: global) and, for a guild, sent only to that guild's channels; written by the registered persona
        `persona_id` (None: the one at each target)."""
        slot = datetime.now(timezone.utc).isoformat(timespec="seconds")
        adhoc = Schedule(None, guild_id, "post now", None, None, "UTC", tuple(targets), mode, False, None, slot,
                         persona_id)
        return [await self._post(adhoc, slot, target) for target in targets]

    def stop(self) -> None:
        """Stop firing (a clean stop, or this process no longer leads the jobs); `start` fires them again."""
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    def next_runs(self) -> dict[int, datetime | None]:
        if self.scheduler is None:
            return {}
        return {int(job.id.split("-")[1]): job.next_run_time for job in self.scheduler.get_jobs()
                if job.id != SYNC_JOB}

    async def catch_up(self, schedule: Schedule, now: datetime | None = None) -> bool:
        """Post the latest slot missed while the bot was down, if it is within the grace period."""
        now = now or datetime.now(timezone.utc)
        since = datetime.fromisoformat(schedule.last_run or schedule.created_at)
        trigger = trigger_for(schedule)
        missed, slot = None, trigger.get_next_fire_time(None, since + timedelta(seconds=1))
        while slot is not None and slot <= now:
            missed = slot
            slot = trigger.get_next_fire_time(slot, slot + timedelta(seconds=1))
        if missed is None:
            return False
        if (now - missed).total_seconds() > self.grace_s:
            log.info("schedule %s missed %s, beyond the grace period: not posted", schedule.name, missed)
            await self.store.set_last_run(schedule.id, missed.isoformat())
            return False
        await self.fire(schedule.id, slot_of(schedule, missed))
        return True

    async def _fire_now(self, schedule_id: int) -> None:
        # APScheduler calls this at the slot: the slot is the latest at or before now (what processes agree on).
        await self.fire(schedule_id, None)

    async def fire(self, schedule_id: int, slot: datetime | None) -> list[PostOutcome]:
        """Post one line per target of the schedule for `slot` (None: the one now, `slot_of`); returns what
        happened per target."""
        schedule = await self.store.schedule(schedule_id)
        if schedule is None:
            return []
        if slot is None:
            slot = slot_of(schedule, datetime.now(timezone.utc))
        stamp = slot.astimezone(timezone.utc).isoformat()
        outcomes = [await self._post(schedule, stamp, target) for target in schedule.targets]
        # After the claims: a process killed before this line leaves the slot to the next leader's catch-up,
        # whose claims then find what this one claimed (never sent twice) and post the rest (never lost).
        await self.store.set_last_run(schedule_id, stamp)
        return outcomes

    async def _post(self, schedule: Schedule, slot: str, target: PostTarget) -> PostOutcome:
        outcome = await self._claim_and_send(schedule, slot, target)
        for observe in self.outcome_observers:
            try:
                observe(outcome)
            except Exception:
                log.exception("a post outcome observer failed")
        return outcome

    async def _claim_and_send(self, schedule: Schedule, slot: str, target: PostTarget) -> PostOutcome:
        try:
            post_id = await self.store.claim_post(schedule.id, slot, str(target), schedule.guild_id)
        except StoreError as e:
            log.error("cannot record a post for %s: %s; not posting", schedule.name, e)
            return PostOutcome(target, "not-claimed", error=str(e))
        if post_id is None:
            return PostOutcome(target, "already-claimed")
        try:
            persona = await self.speaker(schedule, target)
        except StoreError as e:   # never post as someone else than the one who should write it
            error = f"cannot read who writes this post: {e}"
            await self.store.update_post(post_id, "failed", error=error)
            return PostOutcome(target, "failed", error=error)
        sender = self.senders.get(target, guild_id=schedule.guild_id, persona=persona)
        if sender is None:
            await self.store.update_post(post_id, "failed", error=f"no such target here: {target}")
            return PostOutcome(target, "failed")
        outcome = await self._send_a_line(schedule, post_id, target, sender, persona)
        if outcome.status == "skipped":
            log.info("schedule %s, %s: slot skipped (%s)", schedule.name, target, outcome.error)
        return outcome

    async def speaker(self, schedule: Schedule, target: PostTarget) -> PersonaRef | None:
        """The registered persona that writes `schedule`'s post to `target`: the one it names, else (in a
        Discord channel) the one assigned there; None: the bot's own. A named persona that was removed
        (its id cleared by the store) falls back the same way."""
        entry = await self.store.persona(schedule.persona_id) if schedule.persona_id is not None else None
        if entry is None and target.kind == "discord" and target.channel_id is not None:
            entry = await self._channel_persona(target.channel_id, schedule.guild_id)
        return PersonaRef.of(entry) if entry is not None else None

    async def _channel_persona(self, channel_id: int, guild_id: int | None) -> PersonaEntry | None:
        if self.channel_persona is not None:
            return await self.channel_persona(channel_id)
        return await personas.resolve(self.store, channel_id, guild_id)

    async def _send_a_line(self, schedule: Schedule, post_id: int, target: PostTarget,
                           sender: Sender, persona: PersonaRef | None = None) -> PostOutcome:
        """Pick a line and send it; a line the target calls a duplicate is replaced by a new one (bounded).
        The line is recorded before it is sent, and every outcome is recorded."""
        recent = await self.store.recent_post_texts()
        start = MODES.get(schedule.mode, schedule.mode)
        rejected: list[str] = []
        for attempt in range(DUPLICATE_ATTEMPTS):
            choice = await pick_line(self.engine, target.output, start=start, recent=recent, persona=persona,
                                     seed=attempt_seed(self.seed, attempt, stride=1000))
            rejected += choice.rejected
            if choice.text is None:
                reason = "no line passed the filters: " + "; ".join(sorted(set(choice.rejected))[:5])
                await self.store.update_post(post_id, "skipped", error=reason)
                return PostOutcome(target, "skipped", error=reason, rejected=tuple(rejected))
            await self.store.update_post(post_id, "pending", text=choice.text)   # recorded before it is sent
            try:
                remote_id = await sender(choice.text)
            except DuplicateContent:
                rejected.append(f"{target}: duplicate of an earlier post")
                recent.append(choice.text)
                continue
            except PostError as e:
                await self.store.update_post(post_id, "failed", error=str(e))
                return PostOutcome(target, "failed", error=str(e), rejected=tuple(rejected))
            await self.store.update_post(post_id, "posted", remote_id=remote_id)
            return PostOutcome(target, "posted", text=choice.text, remote_id=remote_id, rejected=tuple(rejected))
        reason = "every line was a duplicate"
        await self.store.update_post(post_id, "skipped", error=reason)
        return PostOutcome(target, "skipped", error=reason, rejected=tuple(rejected))


class Senders:
    """Where posts go. Without Twitter credentials, or without a Discord sender registered (no Discord
    connection), a post for that target goes to the terminal and is recorded with a remote id that says so."""

    def __init__(self, persona_name: Callable[[], str], *, twitter: TwitterTarget | None = None,
                 out: IO[str] | None = None) -> None:
        self.persona_name = persona_name
        self.twitter = twitter
        self.discord: ChannelSender | None = None
        self.out = out or sys.stdout

    def register_discord(self, send: ChannelSender) -> None:
        """Send Discord targets through `send` (the Discord adapter's, once it is connected)."""
        self.discord = send

    def get(self, target: PostTarget, guild_id: int | None = None,
            persona: PersonaRef | None = None) -> Sender | None:
        """How to send to `target` as `persona` (None: the bot's own); for a guild's schedule (`guild_id`),
        Discord channels of that guild only (the registered channel sender refuses the others). Twitter has
        one account: a tweet is the same whoever wrote it."""
        if target.kind == "terminal":
            return self._terminal("terminal", persona)
        if target.kind == "twitter":
            return self._tweet if self.twitter is not None else self._terminal("terminal:no-twitter-credentials",
                                                                                persona)
        if target.kind == "discord" and target.channel_id is not None:
            if self.discord is None:
                return self._terminal("terminal:no-discord-token", persona)
            send, channel_id = self.discord, target.channel_id

            async def to_channel(text: str) -> str:
                return await send(channel_id, text, guild_id, persona)

            return to_channel
        return None

    def _terminal(self, marker: str, persona: PersonaRef | None = None) -> Sender:
        async def send(text: str) -> str:
            name = persona.name if persona is not None else self.persona_name()
            self.out.write(f"[post] {name}: {text}\n")
            self.out.flush()
            return marker

        return send

    async def _tweet(self, text: str) -> str:
        return await asyncio.to_thread(self.twitter.post, text)


async def seed_first_schedule(store: Store, settings: Settings) -> None:
    """The first schedule, from POST_SCHEDULE, when there is none yet (the jobs process, at its first start)."""
    if settings.post_schedule and not await store.schedules():
        await store.add_schedule("default", cron=settings.post_schedule, targets=list(settings.post_targets),
                                 timezone_name=settings.post_timezone, mode=settings.post_mode)
        log.info("schedule 'default' created from POST_SCHEDULE: %s", settings.post_schedule)


async def start_posting(engine: Engine, store: Store, settings: Settings, *,
                        discord_sender: ChannelSender | None = None, out: IO[str] | None = None,
                        outcome_observers: Sequence[Callable[[PostOutcome], None]] = (),
                        run_schedules: bool = True, channel_persona: ChannelPersona | None = None) -> PostScheduler:
    """Seed the first schedule from POST_SCHEDULE (first start only), then start the scheduler. The Discord
    adapter passes its `discord_sender`; without one, Discord targets go to the terminal. `outcome_observers`
    are told every post's outcome, catch-up posts at start included (e.g. `Metrics.post_made`). With
    `run_schedules` false (every bot process: the jobs leader calls `start` when it takes the lead, see
    `bot.jobs.leadership`) nothing fires yet: the scheduler manages the stored schedules and posts now. `channel_persona` (the Discord
    adapter's) says who is assigned at a channel; without it the store is asked (see `PostScheduler`)."""
    if run_schedules:
        await seed_first_schedule(store, settings)
    twitter = TwitterTarget(*settings.twitter_keys) if settings.twitter_keys else None
    senders = Senders(lambda: engine.persona.name, twitter=twitter, out=out)
    if discord_sender is not None:
        senders.register_discord(discord_sender)
    # A process that runs every shard is the only one (each would otherwise answer every guild twice).
    scheduler = PostScheduler(engine, store, senders, grace_s=settings.post_grace_minutes * 60,
                              follow_other_processes=settings.shard_ids is not None,
                              channel_persona=channel_persona)
    scheduler.twitter = twitter
    scheduler.outcome_observers.extend(outcome_observers)
    if run_schedules:
        await scheduler.start()
    return scheduler
