"""One jobs process, enforced: of the processes with RUN_JOBS=true (the candidates), exactly one leads and
fires the schedules and runs /retrain and /rollback; the others wait as standbys and take over when it dies.

Each candidate asks the store every `LEADER_CHECK_S` seconds (`Store.lead`; for the leader that is its
heartbeat). How long a takeover takes, at most, after the leader dies:
- PostgreSQL (a session advisory lock): the server frees the lock when the dead leader's connection ends (at
  once for a killed process, whose socket the kernel closes; within about 25 s for a machine that vanished,
  `bot.storage.postgres.LEADER_KEEPALIVE`), and a standby takes it at its next try: within `LEADER_CHECK_S`.
- SQLite (a lease row): the lease runs out `SQLITE_LEASE_S` after the dead leader's last heartbeat, and a
  standby takes it at its next try: within `SQLITE_LEASE_S + LEADER_CHECK_S`.
Then the new leader does what a jobs process does at start (`on_lead`): marks the dead leader's running
retrain failed, marks its posts caught mid-send unknown, catches up a slot missed meanwhile (within
POST_GRACE_MINUTES), arms the schedules. A slot is never posted twice: each post claims its slot in the store
first (`Store.claim_post`), whichever process fires it.

A leader that can no longer confirm its leadership (its lock connection died, or its lease could not be
renewed in time) steps down at once (`on_lose`: stops firing schedules, cancels its retrain), since another
process may lead by then."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.core.config import Settings
from bot.core.store import Store, StoreError
from bot.jobs.retrain import close_interrupted_runs
from bot.jobs.scheduler import PostScheduler, seed_first_schedule

log = logging.getLogger("personabot.jobs")

# How often a candidate tries to lead, and the leader confirms it still does.
LEADER_CHECK_S = 1.0
# SQLite: a leader that stopped renewing its lease this long ago is gone.
SQLITE_LEASE_S = 10.0


def this_process() -> str:
    """How this process is named as a holder of the leadership: its host and process id."""
    return f"{socket.gethostname()} pid {os.getpid()}"


class JobsLeadership:
    """Run `on_lead` when this process becomes the jobs leader and `on_lose` when it stops being it."""

    def __init__(self, store: Store, *, on_lead: Callable[[], Awaitable[None]],
                 on_lose: Callable[[], Awaitable[None]], holder: str | None = None,
                 check_s: float = LEADER_CHECK_S, lease_s: float | None = None) -> None:
        # A lease outlives a few missed heartbeats: SQLITE_LEASE_S, longer for slower checks.
        lease_s = max(SQLITE_LEASE_S, 4 * check_s) if lease_s is None else lease_s
        if not 0 < check_s < lease_s / 2:
            raise ValueError(f"the check interval {check_s} s must be under half the lease {lease_s} s")
        self.store = store
        self.holder = holder or this_process()
        self.on_lead = on_lead
        self.on_lose = on_lose
        self.check_s = check_s
        self.lease_s = lease_s
        self.leading = False
        self.since: float | None = None      # when this process took the lead (time.time())
        self._confirmed = 0.0                # monotonic time of the last confirmation
        self._task: asyncio.Task | None = None
        self._reported_standby = False

    def start(self) -> "JobsLeadership":
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jobs-leadership")
        return self

    async def stop(self) -> None:
        """Stop taking part: step down (running `on_lose`) and give the leadership up for a standby."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.leading:
            await self._step_down("this process is stopping")
        try:
            await self.store.resign(self.holder)
        except StoreError as e:
            log.warning("could not give the jobs leadership up (a standby takes over when it runs out): %s", e)

    async def check_once(self) -> bool:
        """Try to lead (or confirm the lead) once, acting on a change; True while this process leads."""
        try:
            held = await self.store.lead(self.holder, self.lease_s)
        except StoreError as e:
            # Unconfirmed: keep leading only while the last confirmation's lease cannot have run out.
            held = self.leading and time.monotonic() - self._confirmed < self.lease_s - 2 * self.check_s
            log.warning("cannot confirm the jobs leadership: %s", e)
        else:
            if held:
                self._confirmed = time.monotonic()
        if held and not self.leading:
            self.leading, self.since = True, time.time()
            log.info("this process (%s) leads the jobs now", self.holder)
            try:
                await self.on_lead()
            except Exception:
                log.exception("taking over the jobs failed; giving the leadership up")
                await self._step_down("taking over failed")
                await self.store.resign(self.holder)
        elif not held and self.leading:
            await self._step_down("its leadership could not be confirmed (another process may lead now)")
        elif not held and not self._reported_standby:
            self._reported_standby = True
            log.info("this process (%s) is a standby for the jobs; %s leads", self.holder,
                     await self._leader_or_none())
        return self.leading

    async def _leader_or_none(self) -> str:
        try:
            return await self.store.leader() or "no process"
        except StoreError:
            return "an unknown process"

    async def _step_down(self, why: str) -> None:
        self.leading, self.since, self._reported_standby = False, None, False
        log.warning("this process stopped leading the jobs: %s", why)
        try:
            await self.on_lose()
        except Exception:
            log.exception("stepping down from the jobs failed")

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:      # the loop must outlive any one check
                log.exception("the jobs leadership check failed")
            await asyncio.sleep(self.check_s)


async def take_over_jobs(store: Store, settings: Settings, poster: PostScheduler) -> list[dict[str, Any]]:
    """What a process does when it becomes the jobs leader (at start, or taking over from one that died):
    the runs a dead leader left running are marked failed and their half-written output removed, old stored
    messages are pruned (MESSAGE_RETENTION_DAYS), the first schedule is seeded from POST_SCHEDULE, and
    `poster` starts firing (its posts caught mid-send marked unknown, a missed slot caught up). Returns the
    interrupted runs, so that the adapter can say in each one's progress message how it ended."""
    interrupted = await close_interrupted_runs(store, settings.models_dir)
    if settings.retention_days:
        removed = await store.prune_messages(settings.retention_days)
        if removed:
            log.info("deleted %d stored messages older than %g days", removed, settings.retention_days)
    await seed_first_schedule(store, settings)
    await poster.start()
    return interrupted
