"""What processes share through the database, with real processes on a real database: the jobs leadership
(one holder at a time; a standby takes over from a leader killed with SIGKILL, marking its running retrain
failed), changes heard by another process at once on PostgreSQL (LISTEN/NOTIFY, with a reconnect that
re-reads), what a process does with what it hears, and a slot that a dead leader claimed but did not finish,
caught up by the next without posting anything twice. The second process is tests/store_process.py."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.core.config import load_settings
from bot.core.personas import PersonaRef
from bot.core.posts import PostTarget
from bot.inference.engine import Engine
from bot.jobs.changes import ChangeFollower
from bot.jobs.leadership import JobsLeadership, take_over_jobs
from bot.jobs.retrain import CURRENT
from bot.jobs.scheduler import PostScheduler, slot_of
from test_scheduler import Terminal, TerminalOnly

pytestmark = pytest.mark.slow

PROCESS = Path(__file__).parent / "store_process.py"


class StoreProcess:
    """tests/store_process.py in a role, its stdout lines read by a thread as they come."""

    def __init__(self, role: str, database, tmp_path: Path, *args: str) -> None:
        env = {**os.environ, **database.env, "MODELS_DIR": str(tmp_path / "models")}
        env.pop("DATABASE_URL" if database.engine == "sqlite" else "DATABASE_PATH", None)
        self.stderr_path = tmp_path / f"{role}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([sys.executable, str(PROCESS), role, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"), text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def line(self, timeout: float = 60.0) -> str:
        """The next line it prints; fails after `timeout` seconds, or when it ended."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s: {self.stderr()}") from None
        if line is None:
            raise AssertionError(f"the process ended ({self.proc.wait()}): {self.stderr()}")
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the leadership ----------------------------------------------------------------------------------------
async def test_one_holder_leads_at_a_time_and_a_resigned_lead_passes_on(database):
    first, second = await database.open(), await database.open()
    try:
        assert await first.leader() is None
        assert await first.lead("host-a pid 1", 10.0) is True
        assert await second.lead("host-b pid 2", 10.0) is False            # held: a standby
        assert await first.lead("host-a pid 1", 10.0) is True               # the heartbeat keeps it
        assert await second.leader() == "host-a pid 1"
        await second.resign("host-b pid 2")                                 # not its to give up
        assert await second.lead("host-b pid 2", 10.0) is False
        await first.resign("host-a pid 1")
        assert await second.lead("host-b pid 2", 10.0) is True
        assert await first.leader() == "host-b pid 2"
        assert await first.lead("host-a pid 1", 10.0) is False
    finally:
        await first.close()
        await second.close()


async def test_a_leader_that_stops_renewing_loses_the_lead(database):
    first, second = await database.open(), await database.open()
    try:
        assert await first.lead("host-a pid 1", 0.5)
        assert not await second.lead("host-b pid 2", 0.5)
        if database.engine == "sqlite":
            await asyncio.sleep(0.7)                        # the lease runs out without a heartbeat
        else:
            await first.close()                             # the lock's connection ends with its process
        assert await second.lead("host-b pid 2", 0.5)
        assert await second.leader() == "host-b pid 2"
    finally:
        await first.close()
        await second.close()


async def test_a_leader_whose_lock_connection_died_steps_down_before_leading_again(database):
    if database.engine != "postgresql":
        pytest.skip("a connection of its own holds the lead on PostgreSQL only")
    store = await database.open()
    events: list[str] = []

    async def lead() -> None:
        events.append("lead")

    async def lose() -> None:
        events.append("lose")

    leadership = JobsLeadership(store, on_lead=lead, on_lose=lose, holder="host-a pid 1")
    try:
        assert await leadership.check_once() and events == ["lead"]
        database.server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'host-a pid 1'", database.name)
        assert not await leadership.check_once() and events == ["lead", "lose"]   # another may lead meanwhile
        assert await leadership.check_once() and events == ["lead", "lose", "lead"]
    finally:
        await leadership.stop()
        await store.close()
    assert events[-1] == "lose"


async def test_kill_9_of_the_leader_hands_the_jobs_to_a_standby_that_fails_its_retrain(database, tmp_path,
                                                                                     bob_artifact):
    # SQLite's lease as short as a check every second allows (the default's 10 s: bench/between_processes.py).
    lease_s = 2.5
    leader = StoreProcess("lead", database, tmp_path, str(lease_s))
    store = await database.open()
    settings = load_settings({**database.env, "MODELS_DIR": str(tmp_path / "models")}, dotenv_path=None)
    taken = asyncio.Event()
    try:
        assert leader.line().startswith("leading")
        assert len(await store.running_runs()) == 1                          # its retrain in flight
        async with Engine.load(bob_artifact) as engine:
            poster = PostScheduler(engine, store, TerminalOnly(Terminal()))

            async def take_over() -> None:
                await take_over_jobs(store, settings, poster)
                taken.set()

            async def step_down() -> None:
                poster.stop()

            standby = JobsLeadership(store, on_lead=take_over, on_lose=step_down, holder="standby",
                                     lease_s=lease_s)
            assert not await standby.check_once()                            # a standby while it lives
            assert await store.running_runs() != []                          # ... which fails nothing
            standby.start()
            await asyncio.sleep(1.5)
            assert not standby.leading
            killed = time.monotonic()
            leader.kill()
            bound = 15.0 if database.engine == "postgresql" else lease_s + 15.0
            await asyncio.wait_for(taken.wait(), bound)
            took = time.monotonic() - killed
            print(f"failover on {database.engine}: {took:.2f} s after SIGKILL")
            assert standby.leading and await store.leader() == "standby"
            runs = await store.runs()
            assert runs[0]["status"] == "failed" and "stopped during training" in runs[0]["error"]
            assert poster.running
            await standby.stop()
            assert not poster.running and await store.leader() is None     # given up on a clean stop
    finally:
        leader.close()
        await store.close()


# -- changes heard between processes ----------------------------------------------------------------------
async def test_changes_reach_another_process_within_a_second(database, tmp_path, alice_artifact, bob_artifact):
    store = await database.open()
    try:
        if database.engine == "sqlite":
            assert await store.listen(lambda topic: None) is False           # SQLite's processes look instead
            return
        listener = StoreProcess("listen", database, tmp_path)
        try:
            assert listener.line() == "listening"
            latencies: dict[str, float] = {}

            async def heard(what: str, topic: str, change) -> None:
                changed = time.time()       # the change is committed within the await, and heard after it
                await change
                word, heard_topic, at = listener.line(timeout=30).split()
                assert (word, heard_topic) == ("heard", topic), what
                latencies[what] = float(at) - changed

            alice = await store.add_persona("Robin", alice_artifact, guild_id=5)
            # (the registration itself was heard too)
            assert listener.line(timeout=30).split()[:2] == ["heard", "personas"]
            await heard("persona assigned", "personas", store.assign_persona(alice.id, "guild", 5, 5))
            await heard("persona retrained", "personas", store.set_persona_artifact(alice.id, bob_artifact,
                                                                                    alice_artifact))
            schedule = await store.add_schedule("evening", cron="0 20 * * *", targets=["terminal"])
            assert listener.line(timeout=30).split()[:2] == ["heard", "schedules"]
            await store.set_last_run(schedule, datetime.now(timezone.utc).isoformat())   # every post: silent
            await heard("schedule paused", "schedules", store.set_paused(schedule, True))
            await heard("model swapped", "model", store.set_setting(CURRENT, str(bob_artifact)))
            await store.set_setting("schedules_changed", "now")                         # not a topic
            await heard("schedule removed", "schedules", store.remove_schedule(schedule))
            await heard("persona removed", "personas", store.remove_persona(alice.id))
            print("notify latency between processes:", {k: f"{v * 1000:.0f} ms" for k, v in latencies.items()})
            # Generous for a busy machine (bench/between_processes.py measures them).
            assert all(latency < 5.0 for latency in latencies.values()), latencies
        finally:
            listener.close()
    finally:
        await store.close()


async def test_a_listener_that_lost_its_connection_reconnects_rereads_and_says_so_once(database, tmp_path):
    if database.engine != "postgresql":
        pytest.skip("SQLite has no listener connection")
    listener = StoreProcess("listen", database, tmp_path)
    store = await database.open()
    try:
        assert listener.line() == "listening"
        killed = database.server.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE application_name = 'personabot changes'", database.name)
        assert killed == "1"
        reread = sorted(listener.line(timeout=30).split()[1] for _ in range(3))
        assert reread == ["model", "personas", "schedules"]                   # what may have been missed
        await store.add_schedule("later", cron="0 9 * * *", targets=["terminal"])
        assert listener.line(timeout=30).split()[:2] == ["heard", "schedules"]  # and hears again
        said = [line for line in listener.stderr().splitlines() if "is back after" in line]
        assert len(said) == 1 and "re-reading" in said[0] and "postgres@127.0.0.1" in said[0]
    finally:
        listener.close()
        await store.close()


async def test_a_process_unloads_what_a_persona_no_longer_names_when_it_hears_of_it(database, alice_artifact,
                                                                                    bob_artifact):
    if database.engine != "postgresql":
        pytest.skip("SQLite's processes hear nothing")
    here, elsewhere = await database.open(), await database.open()
    try:
        robin = await elsewhere.add_persona("Robin", alice_artifact, guild_id=5)
        async with Engine.load(bob_artifact) as engine:
            follower = ChangeFollower(here, engine)
            assert await here.listen(follower)
            await engine.load_persona(PersonaRef.of(robin))
            assert [artifact for artifact, _ in engine.pool.loaded()] == [alice_artifact]
            await elsewhere.set_persona_artifact(robin.id, bob_artifact, alice_artifact)   # a retrain elsewhere
            for _ in range(100):
                await asyncio.sleep(0.1)
                if not engine.pool.loaded():
                    break
            assert engine.pool.loaded() == [] and follower.heard["personas"] >= 1
    finally:
        await here.close()
        await elsewhere.close()


# -- a slot across a change of leader ---------------------------------------------------------------------
async def test_a_slot_the_dead_leader_claimed_in_part_is_finished_once_by_the_next(database, bob_artifact):
    """The dead leader claimed the slot for its first target and was killed before the second (and before
    recording the slot as run): the next leader's catch-up posts the second only."""
    store = await database.open()
    terminal = Terminal()
    try:
        async with Engine.load(bob_artifact) as engine:
            schedule_id = await store.add_schedule("hourly", cron="0 * * * *", targets=["terminal", "discord:1"])
            slot = slot_of(await store.schedule(schedule_id), datetime.now(timezone.utc)).replace(minute=0)
            await store._execute("UPDATE schedules SET created_at = ? WHERE id = ?",
                                 ((slot - timedelta(hours=1, minutes=1)).isoformat(), schedule_id))
            await store.set_last_run(schedule_id, (slot - timedelta(hours=1)).isoformat())
            dead_claim = await store.claim_post(schedule_id, slot.isoformat(), "terminal")
            assert dead_claim is not None

            class BothTargets(TerminalOnly):
                def get(self, target: PostTarget, guild_id=None, persona=None):
                    return self.terminal

            scheduler = PostScheduler(engine, store, BothTargets(terminal))
            assert await scheduler.catch_up(await store.schedule(schedule_id))
            assert await scheduler.catch_up(await store.schedule(schedule_id)) is False   # once
            posts = await store.posts()
            by_target = {p["target"]: p["status"] for p in posts}
            assert len(posts) == 2 and by_target == {"terminal": "pending", "discord:1": "posted"}
            assert len(terminal.sent) == 1
            assert (await store.schedule(schedule_id)).last_run == slot.isoformat()
    finally:
        await store.close()
