"""Scheduled posts on a real SQLite store and a real tiny persona: APScheduler firing, a catch-up after
downtime that posts at most once, two processes on one database, filters, interrupted posts."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
import responses

from bot.inference.engine import Engine
from bot.core.filters import Blocklist
from bot.inference.persona import Persona
from bot.core.posts import PostTarget
from bot.jobs.twitter import TwitterTarget
from bot.jobs.scheduler import PostScheduler, Senders
from bot.storage.sqlite import SQLiteStore as Store

pytestmark = pytest.mark.slow


class Terminal:
    """The terminal target: prints nothing here, but records what was sent (as the real one prints)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def __call__(self, text: str) -> str:
        self.sent.append(text)
        return f"terminal-{len(self.sent)}"


class TerminalOnly:
    """Senders with one target, the terminal (the scheduler asks `get(target, guild_id=..., persona=...)`)."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def get(self, target: PostTarget, guild_id: int | None = None, persona=None) -> Terminal | None:
        return self.terminal if target == PostTarget("terminal") else None


def minutes_ago(n: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(minutes=n)).isoformat()


async def backdate(store: Store, schedule_id: int, created: str, last_run: str | None) -> None:
    await store._execute("UPDATE schedules SET created_at = ?, last_run = ? WHERE id = ?",
                         (created, last_run, schedule_id))


def test_a_schedule_fires_posts_once_per_slot_and_records_it(bob_artifact, tmp_path):
    async def main():
        terminal = Terminal()
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            await store.add_schedule("every 2 s", interval_s=2, targets=["terminal"], mode="line")
            scheduler = PostScheduler(engine, store, TerminalOnly(terminal))
            await scheduler.start()
            for _ in range(100):
                await asyncio.sleep(0.1)
                if terminal.sent:
                    break
            scheduler.stop()
            return terminal.sent, await store.posts()

    sent, posts = asyncio.run(main())
    assert sent and len(posts) == len(sent)
    assert posts[-1]["status"] == "posted" and posts[-1]["text"] == sent[0] and posts[-1]["remote_id"] == "terminal-1"
    assert len({p["slot"] for p in posts}) == len(posts)


def test_after_downtime_at_most_one_catch_up_post_and_only_within_grace(bob_artifact, tmp_path):
    async def main():
        terminal = Terminal()
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            hourly = await store.add_schedule("each minute", cron="* * * * *", targets=["terminal"], mode="line")
            await backdate(store, hourly, minutes_ago(60), minutes_ago(30))     # 30 slots missed
            scheduler = PostScheduler(engine, store, TerminalOnly(terminal), grace_s=300)
            first = await scheduler.catch_up((await store.schedules())[0])
            again = await scheduler.catch_up((await store.schedules())[0])        # a second restart
            old = await store.add_schedule("old", cron="* * * * *", targets=["terminal"], mode="line")
            await backdate(store, old, minutes_ago(120), minutes_ago(100))
            scheduler.grace_s = 0.001                                            # the last slot is too old
            late = await scheduler.catch_up(await store.schedule(old))
            return first, again, late, terminal.sent, await store.posts()

    first, again, late, sent, posts = asyncio.run(main())
    assert first is True and again is False and late is False
    assert len(sent) == 1 and len(posts) == 1 and posts[0]["status"] == "posted"


def test_two_processes_on_one_database_post_a_slot_once(bob_artifact, tmp_path):
    async def main():
        terminal = Terminal()
        path = tmp_path / "bot.sqlite3"
        async with await Store.open(path) as a, await Store.open(path) as b, Engine.load(bob_artifact) as engine:
            schedule = await a.add_schedule("shared", cron="0 * * * *", targets=["terminal"], mode="line")
            slot = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)
            one, two = await asyncio.gather(PostScheduler(engine, a, TerminalOnly(terminal)).fire(schedule, slot),
                                            PostScheduler(engine, b, TerminalOnly(terminal)).fire(schedule, slot))
            return one + two, terminal.sent, await a.posts()

    outcomes, sent, posts = asyncio.run(main())
    assert sorted(o.status for o in outcomes) == ["already-claimed", "posted"]
    assert len(sent) == 1 and len(posts) == 1


def test_processes_fired_seconds_apart_by_their_clocks_claim_one_slot_the_minute(bob_artifact, tmp_path):
    # Each process's APScheduler fires at its own moment; the slot they claim must be the minute itself.
    async def main():
        terminal = Terminal()
        path = tmp_path / "bot.sqlite3"
        async with await Store.open(path) as a, await Store.open(path) as b, Engine.load(bob_artifact) as engine:
            one, two = PostScheduler(engine, a, TerminalOnly(terminal)), PostScheduler(engine, b, TerminalOnly(terminal))
            for attempt in range(5):
                schedule = await a.add_schedule(f"shared {attempt}", cron="* * * * *", targets=["terminal"],
                                                mode="line")
                if datetime.now(timezone.utc).second >= 55:      # start early in a minute
                    await asyncio.sleep(61 - datetime.now(timezone.utc).second)
                before = datetime.now(timezone.utc).replace(second=0, microsecond=0)
                await one._fire_now(schedule)
                await asyncio.sleep(1.5)                          # seconds apart
                await two._fire_now(schedule)
                if datetime.now(timezone.utc).replace(second=0, microsecond=0) == before:
                    break                                         # (else a minute began between them: again)
            else:
                pytest.fail("never fired twice within one minute")
            return before, [p for p in await a.posts(limit=100) if p["schedule_id"] == schedule]

    minute, posts = asyncio.run(main())
    assert len(posts) == 1                                        # claimed once, by the first
    assert datetime.fromisoformat(posts[0]["slot"]) == minute


def test_a_line_that_fails_the_filters_is_never_posted_and_the_slot_says_why(bob_artifact, tmp_path):
    persona = Persona.load(bob_artifact, blocklist=Blocklist([r"re:\w"]))

    async def main():
        terminal = Terminal()
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine(persona) as engine:
            schedule = await store.add_schedule("blocked", cron="0 * * * *", targets=["terminal"])
            outcome = await PostScheduler(engine, store, TerminalOnly(terminal)).fire(
                schedule, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
            return outcome, terminal.sent, await store.posts()

    outcome, sent, posts = asyncio.run(main())
    assert sent == [] and outcome[0].status == "skipped"
    assert posts[0]["status"] == "skipped" and "blocked pattern" in posts[0]["error"] and posts[0]["text"] is None


def test_a_post_interrupted_by_a_crash_becomes_unknown_and_is_not_resent(bob_artifact, tmp_path):
    async def main():
        terminal = Terminal()
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            schedule = await store.add_schedule("s", cron="0 * * * *", targets=["terminal"])
            post = await store.claim_post(schedule, "2026-11-22T09:00:00+00:00", "terminal")
            await store.update_post(post, "pending", text="half sent")
            scheduler = PostScheduler(engine, store, TerminalOnly(terminal))
            await scheduler.start()                          # the restart after the crash
            next_runs = scheduler.next_runs()
            scheduler.stop()
            again = await scheduler.fire(schedule, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
            return await store.posts(), again, terminal.sent, next_runs

    posts, again, sent, next_runs = asyncio.run(main())
    assert posts[-1]["status"] == "unknown" and posts[-1]["text"] == "half sent"
    assert again[0].status == "already-claimed" and sent == []
    assert list(next_runs) == [1] and next_runs[1] is not None


TWEETS = "https://api.twitter.com/2/tweets"
DUPLICATE = {"detail": "You are not allowed to create a Tweet with duplicate content.", "status": 403,
             "title": "Forbidden", "type": "about:blank"}
CREATED = {"json": {"data": {"id": "11", "text": "x", "edit_history_tweet_ids": ["11"]}}, "status": 201}


def twitter_only() -> Senders:
    return Senders(lambda: "Bob", twitter=TwitterTarget("ck", "cs", "at", "ats", backoff_s=0.5, sleep=lambda s: None))


def test_a_duplicate_tweet_is_replaced_by_a_different_line(bob_artifact, tmp_path):
    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            schedule = await store.add_schedule("tweets", cron="0 * * * *", targets=["twitter"], mode="line")
            with responses.RequestsMock() as mock:
                mock.add(responses.POST, TWEETS, status=403, json=DUPLICATE)
                mock.add(responses.POST, TWEETS, **CREATED)
                [outcome] = await PostScheduler(engine, store, twitter_only(), seed=3).fire(
                    schedule, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
                bodies = [json.loads(c.request.body)["text"] for c in mock.calls]
            return outcome, bodies, await store.posts()

    outcome, bodies, posts = asyncio.run(main())
    assert outcome.remote_id == "11" and len(bodies) == 2 and bodies[0] != bodies[1]
    assert outcome.text == bodies[1] and "duplicate" in " ".join(outcome.rejected)
    assert [(p["status"], p["text"], p["remote_id"]) for p in posts] == [("posted", bodies[1], "11")]


def test_a_seeded_scheduler_picks_the_same_lines(bob_artifact, tmp_path):
    async def main():
        texts = []
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(bob_artifact) as engine:
            for attempt in range(2):
                schedule = await store.add_schedule(f"s{attempt}", cron="0 * * * *", targets=["terminal"])
                terminal = Terminal()
                await PostScheduler(engine, store, TerminalOnly(terminal), seed=5).fire(
                    schedule, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
                await store._execute("UPDATE posts SET text = NULL")     # not a repeat of a recent post
                texts += terminal.sent
        return texts

    texts = asyncio.run(main())
    assert len(texts) == 2 and texts[0] == texts[1]


def test_a_line_that_fails_a_filter_is_never_tweeted(bob_artifact, tmp_path):
    persona = Persona.load(bob_artifact, blocklist=Blocklist([r"re:\w"]))   # refuses every line

    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine(persona) as engine:
            schedule = await store.add_schedule("tweets", cron="0 * * * *", targets=["twitter"], mode="line")
            with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
                mock.add(responses.POST, TWEETS, **CREATED)
                [outcome] = await PostScheduler(engine, store, twitter_only(), seed=1).fire(
                    schedule, datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc))
                return outcome, len(mock.calls)

    outcome, calls = asyncio.run(main())
    assert outcome.status == "skipped" and "no line passed the filters" in outcome.error and calls == 0
