"""Health and metrics over real HTTP on loopback: /metrics (parsed with prometheus_client's own parser) and
/healthz change as replies go through the real chat path (simcord, a real tiny persona), as posts are made
and as a retrain ends; /healthz turns 503 naming the check when the database is locked, the backend says it
is unhealthy or the engine is closed; the endpoint listens on 127.0.0.1 unless told otherwise, and nothing
starts without METRICS_PORT. Only Discord is simulated."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import socket
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatgen import chat_conversations
from loop_watch import LoopWatch

from bot.core.config import load_settings
from bot.inference.engine import FALLBACK_REPLY, Engine
from bot.core.filters import Blocklist, LeakGuard, OutputFilter
from bot.core.filters.output import rejection_filter
from bot.adapters.metrics import Metrics, MetricsServerError, metrics_app, serve_metrics, start_metrics_server
from bot.core.posts import PostTarget
from bot.jobs.retrain import Retrainer, RetrainError
from bot.jobs.scheduler import start_posting
from bot.storage.sqlite import SQLiteStore as Store
# The Discord suite's fixtures and helpers: the same settings, store, bot and simulated server.
from test_discord import FAST, settings, simcord_bot, store, world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

# A blocklist entry that matches any visible character: every sample is rejected, by the blocklist. (It was
# `\w`, any word character, which let a sampled line of punctuation alone through now and then: seen in CI.)
EVERYTHING = Blocklist([r"re:\S"])


@pytest.fixture
async def engine(alice_artifact: Path):
    """Alice, greedy, with the output filter her artifact comes with (the leak guard); tests change it."""
    engine = Engine.load(alice_artifact, generation={"top_k": 1}).start()
    yield engine
    await engine.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """Every sample /metrics serves: (name, sorted labels) -> value."""
    status, text = await get(base + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def health(base: str) -> tuple[int, dict]:
    import json

    status, text = await get(base + "/healthz")
    return status, json.loads(text)


async def test_metrics_and_health_follow_replies_through_the_chat_path(world, engine, store, settings):
    env, general, other, admin, bob, carol = world
    settings = dataclasses.replace(settings, metrics_port=free_port())
    server = await start_metrics_server(settings, env.bot.metrics, engine=engine, store=store, bot=env.bot)
    base = f"http://127.0.0.1:{server.port}"
    try:
        before = await scrape(base)
        assert value(before, "personabot_replies_total", outcome="sent") == 0
        assert value(before, "personabot_queue_depth") == 0
        assert ("personabot_gateway_latency_seconds", (("shard", "0"),)) in before   # read from the bot
        assert value(before, "personabot_jobs_leader") == 1                          # the lone candidate leads

        engine.persona.output_filter = OutputFilter()     # no guard: her training lines go out
        for word in ("pizza", "rain"):
            await bob.send(general, f"{env.bot.user.mention} {word}")
        engine.persona.output_filter = OutputFilter(blocklist=EVERYTHING)   # every sample rejected
        await bob.send(general, f"{env.bot.user.mention} keys")
        fallback_line = general.last_message.content
        after = await scrape(base)
        status, body = await health(base)
    finally:
        await server.stop()
    assert fallback_line == FALLBACK_REPLY
    assert value(after, "personabot_replies_total", outcome="sent") == 2
    assert value(after, "personabot_replies_total", outcome="fallback") == 1
    assert value(after, "personabot_replies_total", outcome="failed") == 0
    assert value(after, "personabot_reply_seconds_count") == 3 and value(after, "personabot_reply_seconds_sum") > 0
    # Three tries for the fallback reply, each rejected by the blocklist (and counted under its name).
    assert value(after, "personabot_rejected_samples_total", filter="blocklist") == engine.max_tries
    assert value(after, "personabot_batch_size_count") >= 2 + engine.max_tries   # fed by Engine.batch_observers
    assert status == 200 and body["ok"] and body["failing"] == []
    assert body["checks"] == {"gateway": "ok", "engine": "ok", "database": "ok"}


async def test_posts_are_counted_by_outcome_with_the_lines_rejected_on_the_way(bob_artifact, tmp_path, settings):
    metrics = Metrics()
    port = free_port()
    async with await Store.open(tmp_path / "posts.sqlite3") as store, Engine.load(bob_artifact) as engine:
        metrics.watch(engine=engine)
        poster = await start_posting(engine, store, settings, out=io.StringIO(),
                                     outcome_observers=[metrics.post_made])
        server = await serve_metrics(metrics_app(metrics, engine=engine, store=store), "127.0.0.1", port)
        try:
            terminal = [PostTarget("terminal")]
            posted = await poster.post_now(terminal, mode="line")
            engine.persona.output_filter = OutputFilter(blocklist=EVERYTHING)
            skipped = await poster.post_now(terminal, mode="line")
            samples = await scrape(f"http://127.0.0.1:{port}")
        finally:
            poster.stop()
            await server.stop()
    assert [o.status for o in posted + skipped] == ["posted", "skipped"]
    assert value(samples, "personabot_posts_total", outcome="posted") == 1
    assert value(samples, "personabot_posts_total", outcome="skipped") == 1
    # Every line rejected on the way is counted under its filter (a half-trained Bob also says empty lines).
    told = collections.Counter(rejection_filter(reason) for o in posted + skipped for reason in o.rejected)
    assert told["blocklist"] > 0
    assert {name: value(samples, "personabot_rejected_samples_total", filter=name) for name in told} == told


async def test_a_retrain_kept_out_by_the_check_is_counted_as_rejected(alice_artifact, tmp_path, data_dir):
    metrics = Metrics()
    async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(alice_artifact) as engine:
        retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                              loss_margin=-100.0, extra_args=FAST)     # any new model counts as worse
        metrics.watch(retrainer=retrainer)
        metrics.watch(retrainer=retrainer)                            # watched twice, counted once
        with pytest.raises(RetrainError, match="worse than the current"):
            await retrainer.run(epochs=100)
        runs = await store.runs()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.exposition().decode()) for s in family.samples}
    assert value(samples, "personabot_retrains_total", outcome="rejected") == 1
    assert value(samples, "personabot_retrains_total", outcome="failed") == 0
    assert runs[0]["status"] == "rejected" and "worse" in runs[0]["error"]


async def test_healthz_names_a_locked_database_an_unhealthy_backend_and_a_closed_engine(alice_artifact, tmp_path):
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    engine = Engine.load(alice_artifact).start()
    port = free_port()
    server = await serve_metrics(metrics_app(Metrics().watch(engine=engine), engine=engine, store=store,
                                             health_timeout_s=2.0), "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    try:
        status, body = await health(base)
        assert status == 200 and "gateway" not in body["checks"]      # no Discord, no gateway to check

        other_process = sqlite3.connect(path, isolation_level=None)   # another process holds the write lock
        other_process.execute("BEGIN EXCLUSIVE")
        with LoopWatch() as watch:          # the probe waits for the database off the event loop
            locked_status, locked = await health(base)
        watch.check(min_callbacks=10)
        other_process.execute("ROLLBACK")
        other_process.close()
        recovered = await _until_healthy(base)

        backend = engine.persona.backend       # what the remote backend reports when its circuit is open
        backend.healthy, backend.health = False, "circuit open since 12:00, last error: 503"
        sick_status, sick = await health(base)
        del backend.healthy, backend.health

        await engine.close()
        closed_status, closed = await health(base)
    finally:
        await server.stop()
        await engine.close()
        await store.close()
    assert locked_status == 503 and locked["failing"] == ["database"] and not locked["ok"]
    assert locked["checks"]["engine"] == "ok" and locked["checks"]["database"] != "ok"
    assert recovered == 200
    assert sick_status == 503 and sick["failing"] == ["engine"] and "circuit open" in sick["checks"]["engine"]
    assert closed_status == 503 and closed["failing"] == ["engine"] and closed["checks"]["engine"] == "closed"


async def _until_healthy(base: str, within_s: float = 20.0) -> int:
    """/healthz's status once it is 200, or the last one when `within_s` passes (a write blocked behind the
    released lock finishes first)."""
    deadline = time.monotonic() + within_s
    while True:
        status, _ = await health(base)
        if status == 200 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.2)


async def test_the_endpoint_listens_on_loopback_by_default_and_not_at_all_without_a_port(alice_artifact, tmp_path):
    port = free_port()
    env = {"DATABASE_PATH": str(tmp_path / "bot.sqlite3")}
    on, off = load_settings({**env, "METRICS_PORT": str(port)}, dotenv_path=None), load_settings(env, dotenv_path=None)
    async with await Store.open(on.database_path) as store, Engine.load(alice_artifact) as engine:
        metrics = Metrics().watch(engine=engine)
        assert await start_metrics_server(off, metrics, engine=engine, store=store) is None
        server = await start_metrics_server(on, metrics, engine=engine, store=store)
        try:
            assert (server.host, server.port) == ("127.0.0.1", port)
            assert {address[0] for address in server.runner.addresses} == {"127.0.0.1"}
            status, _ = await health(f"http://127.0.0.1:{port}")
            with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}.*METRICS_PORT"):
                await start_metrics_server(on, metrics, engine=engine, store=store)   # the port is taken
        finally:
            await server.stop()
    assert status == 200


async def test_jobs_leader_says_whether_this_candidate_leads_or_stands_by(tmp_path):
    from bot.jobs.leadership import JobsLeadership

    async def nothing() -> None:
        pass

    async with await Store.open(tmp_path / "bot.sqlite3") as store:
        first = JobsLeadership(store, on_lead=nothing, on_lose=nothing, holder="first")
        second = JobsLeadership(store, on_lead=nothing, on_lose=nothing, holder="second")
        leading, standing_by = Metrics().watch(leadership=first), Metrics().watch(leadership=second)
        assert await first.check_once() and not await second.check_once()
        assert _gauge(leading, "personabot_jobs_leader") == 1 and _gauge(standing_by, "personabot_jobs_leader") == 0
        await first.stop()
        assert await second.check_once()
        assert _gauge(leading, "personabot_jobs_leader") == 0 and _gauge(standing_by, "personabot_jobs_leader") == 1
    assert "personabot_jobs_leader" not in Metrics().exposition().decode()     # not a candidate: no gauge


def _gauge(metrics: Metrics, name: str) -> float:
    families = text_string_to_metric_families(metrics.exposition().decode())
    return next(sample.value for family in families for sample in family.samples if sample.name == name)


def test_each_rejection_names_the_filter_that_gave_it(alice_artifact):
    guard = LeakGuard.from_artifact(alice_artifact)
    said = [f"@everyone {text}" for conv in chat_conversations(24, seed=7) for speaker, text in conv
            if speaker == "Alice"]                                     # her lines, as the persona chat has them
    training_line = next(line for line in said if guard.check(line))
    both = OutputFilter(leak_guard=guard, blocklist=EVERYTHING)
    assert rejection_filter(both.reject(training_line)) == "leak_guard"          # the guard speaks first
    assert rejection_filter(OutputFilter(blocklist=EVERYTHING).reject("hello there")) == "blocklist"
    assert rejection_filter("empty") == "empty" and rejection_filter("contains a link") == "other"
    assert both.reject(training_line) == guard.check(training_line)             # still the reason's text
