"""Scheduled persona posts: APScheduler 3 (`AsyncIOScheduler`, jobs in memory) fires the schedules stored in
the database; each firing posts one line per target, recorded before it is sent.

Nothing lost, nothing doubled:
- a slot is claimed in the store (one row per schedule, slot and target, unique) before anything is sampled,
  so two bot processes on one database never both post it;
- a post is `pending` until the target answers, then `posted` (with the remote id), `failed` or `skipped`
  (with the reason); a post still pending at start belongs to a crashed process and becomes `unknown`, never
  re-sent blindly;
- after downtime, each schedule gets at most one catch-up post for its latest missed slot, and only within
  the grace period; APScheduler's own misfire handling coalesces the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from bot.config import discord_channel_id
from bot.engine import Engine
from bot.filters import DISCORD, TERMINAL, TWITTER, Target
from bot.posting import DuplicateContent, PostError, pick_line
from bot.store import Store, StoreError

log = logging.getLogger("personabot.schedule")

# A seed for "confession" posts; "line" posts start from nothing.
MODES = {"confession": "my deepest, darkest secret is", "line": ""}

# target name -> (how its length is measured, how a line is sent: text -> remote id)
Sender = Callable[[str], Awaitable[str]]


def trigger_for(schedule: dict[str, Any]):
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if schedule["cron"]:
        return CronTrigger.from_crontab(schedule["cron"], timezone=schedule["timezone"])
    return IntervalTrigger(seconds=int(schedule["interval_s"]), timezone=schedule["timezone"],
                           start_date=datetime.fromisoformat(schedule["created_at"]))


def target_kind(name: str) -> Target:
    return TWITTER if name == "twitter" else DISCORD if name.startswith("discord:") else TERMINAL


class PostScheduler:
    def __init__(self, engine: Engine, store: Store, senders, *, grace_s: float = 3600.0) -> None:
        self.engine = engine
        self.store = store
        self.senders = senders       # .get(target) -> Sender: "twitter", "discord:<channel id>", "terminal"
        self.grace_s = grace_s
        self.scheduler = None

    async def start(self) -> None:
        """Mark interrupted posts unknown, catch up once per schedule, then schedule every unpaused one."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        unknown = await self.store.mark_pending_unknown()
        if unknown:
            log.warning("%d post(s) were being sent when the bot stopped; marked unknown (see /status)", unknown)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        for schedule in await self.store.schedules():
            if not schedule["paused"]:
                await self.catch_up(schedule)
        await self.reload()
        self.scheduler.start()

    async def reload(self) -> None:
        """Jobs for exactly the unpaused schedules in the store (after /schedule add, remove, pause...)."""
        for job in self.scheduler.get_jobs():
            job.remove()
        for schedule in await self.store.schedules():
            if schedule["paused"]:
                continue
            self.scheduler.add_job(self._fire_now, trigger_for(schedule), args=[schedule["id"]],
                                   id=f"schedule-{schedule['id']}", misfire_grace_time=int(self.grace_s),
                                   coalesce=True, max_instances=1)

    async def post_now(self, targets: list[str], mode: str = "confession",
                       guild_id: int | None = None) -> list[dict[str, Any]]:
        """One post to each target right away (/post now), recorded like scheduled ones, owned by `guild_id`
        (None: global) and, for a guild, sent only to that guild's channels."""
        slot = datetime.now(timezone.utc).isoformat(timespec="seconds")
        adhoc = {"id": None, "name": "post now", "mode": mode, "guild_id": guild_id}
        return [await self._post(adhoc, slot, target) for target in targets]

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def next_runs(self) -> dict[int, datetime | None]:
        if self.scheduler is None:
            return {}
        return {int(job.id.split("-")[1]): job.next_run_time for job in self.scheduler.get_jobs()}

    async def catch_up(self, schedule: dict[str, Any], now: datetime | None = None) -> bool:
        """Post the latest slot missed while the bot was down, if it is within the grace period."""
        now = now or datetime.now(timezone.utc)
        since = datetime.fromisoformat(schedule["last_run"] or schedule["created_at"])
        trigger = trigger_for(schedule)
        missed, slot = None, trigger.get_next_fire_time(None, since + timedelta(seconds=1))
        while slot is not None and slot <= now:
            missed = slot
            slot = trigger.get_next_fire_time(slot, slot + timedelta(seconds=1))
        if missed is None:
            return False
        if (now - missed).total_seconds() > self.grace_s:
            log.info("schedule %s missed %s, beyond the grace period: not posted", schedule["name"], missed)
            await self.store.set_last_run(schedule["id"], missed.isoformat())
            return False
        await self.fire(schedule["id"], missed)
        return True

    async def _fire_now(self, schedule_id: int) -> None:
        # APScheduler calls this at the slot: the slot is now, to the minute (what two processes agree on).
        await self.fire(schedule_id, datetime.now(timezone.utc).replace(second=0, microsecond=0))

    async def fire(self, schedule_id: int, slot: datetime) -> list[dict[str, Any]]:
        """Post one line per target of the schedule for `slot`; returns what happened per target."""
        schedules = {s["id"]: s for s in await self.store.schedules()}
        schedule = schedules.get(schedule_id)
        if schedule is None:
            return []
        stamp = slot.astimezone(timezone.utc).isoformat()
        await self.store.set_last_run(schedule_id, stamp)
        outcomes = []
        for target in schedule["targets"]:
            outcomes.append(await self._post(schedule, stamp, target))
        return outcomes

    async def _post(self, schedule: dict[str, Any], slot: str, target: str) -> dict[str, Any]:
        try:
            post_id = await self.store.claim_post(schedule["id"], slot, target, schedule.get("guild_id"))
        except StoreError as e:
            log.error("cannot record a post for %s: %s; not posting", schedule["name"], e)
            return {"target": target, "status": "not-claimed", "error": str(e)}
        if post_id is None:
            return {"target": target, "status": "already-claimed"}
        sender = self.senders.get(target, guild_id=schedule.get("guild_id"))
        if sender is None:
            await self.store.update_post(post_id, "failed", error=f"no such target here: {target}")
            return {"target": target, "status": "failed"}
        recent = await self.store.recent_post_texts()
        start = MODES.get(schedule["mode"], schedule["mode"])
        for _attempt in range(3):
            choice = await pick_line(self.engine, target_kind(target), start=start, recent=recent)
            if choice.text is None:
                reason = "no line passed the filters: " + "; ".join(sorted(set(choice.rejected))[:5])
                await self.store.update_post(post_id, "skipped", error=reason)
                log.info("schedule %s, %s: slot skipped (%s)", schedule["name"], target, reason)
                return {"target": target, "status": "skipped", "error": reason}
            await self.store.update_post(post_id, "pending", text=choice.text)   # recorded before it is sent
            try:
                remote_id = await sender(choice.text)
            except DuplicateContent:
                recent.append(choice.text)
                continue
            except PostError as e:
                await self.store.update_post(post_id, "failed", error=str(e))
                return {"target": target, "status": "failed", "error": str(e)}
            await self.store.update_post(post_id, "posted", remote_id=remote_id)
            return {"target": target, "status": "posted", "text": choice.text, "remote_id": remote_id}
        await self.store.update_post(post_id, "skipped", error="every line was a duplicate")
        return {"target": target, "status": "skipped"}


class Senders:
    """Where posts go. Without Twitter credentials or a Discord connection, a post for that target goes to
    the terminal and is recorded with a remote id that says so."""

    def __init__(self, persona_name: Callable[[], str], *, twitter=None, discord_client=None, out=None) -> None:
        import sys

        self.persona_name = persona_name
        self.twitter = twitter
        self.discord = discord_client
        self.out = out or sys.stdout

    def get(self, target: str, guild_id: int | None = None) -> Sender | None:
        """How to send to `target`; for a guild's schedule (`guild_id`), Discord channels of that guild only."""
        if target == "terminal":
            return self._terminal("terminal")
        if target == "twitter":
            return self._tweet if self.twitter is not None else self._terminal("terminal:no-twitter-credentials")
        channel_id = discord_channel_id(target)
        if channel_id is not None:
            if self.discord is None:
                return self._terminal("terminal:no-discord-token")

            async def send(text: str) -> str:
                return await self._discord(channel_id, text, guild_id)

            return send
        return None

    def _terminal(self, marker: str) -> Sender:
        async def send(text: str) -> str:
            self.out.write(f"[post] {self.persona_name()}: {text}\n")
            self.out.flush()
            return marker

        return send

    async def _tweet(self, text: str) -> str:
        import asyncio

        return await asyncio.to_thread(self.twitter.post, text)

    async def _discord(self, channel_id: int, text: str, guild_id: int | None = None) -> str:
        import discord

        channel = self.discord.get_channel(channel_id)
        try:
            if channel is None:
                channel = await self.discord.fetch_channel(channel_id)
            channel_guild = getattr(getattr(channel, "guild", None), "id", None)
            if guild_id is not None and channel_guild != guild_id:
                # A guild's schedule never posts outside that guild, whatever its stored targets say.
                raise PostError(f"channel {channel_id} is not in the schedule's server")
            message = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as e:
            raise PostError(f"Discord refused the post in channel {channel_id}: {e}") from e
        return str(message.id)


async def start_posting(engine: Engine, store: Store, settings, *, discord_client=None, out=None) -> PostScheduler:
    """Seed the first schedule from POST_SCHEDULE (first start only), then start the scheduler."""
    if settings.post_schedule and not await store.schedules():
        await store.add_schedule("default", cron=settings.post_schedule, targets=list(settings.post_targets),
                                 timezone_name=settings.post_timezone, mode=settings.post_mode)
        log.info("schedule 'default' created from POST_SCHEDULE: %s", settings.post_schedule)
    twitter = None
    if settings.twitter_keys:
        from bot.posting import TwitterTarget

        twitter = TwitterTarget(*settings.twitter_keys)
    senders = Senders(lambda: engine.persona.name, twitter=twitter, discord_client=discord_client, out=out)
    scheduler = PostScheduler(engine, store, senders, grace_s=settings.post_grace_minutes * 60)
    scheduler.twitter = twitter
    await scheduler.start()
    return scheduler
