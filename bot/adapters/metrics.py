"""Health and metrics: what the bot counts (`Metrics`, in Prometheus' terms) and the optional HTTP endpoint
that serves it (`start_metrics_server`: `/metrics` and `/healthz` on METRICS_HOST:METRICS_PORT, 127.0.0.1 by
default; nothing starts when METRICS_PORT is unset).

`Metrics` owns its own `CollectorRegistry`, so several bots (and tests) in one process never share counters.
What it counts is told to it where it happens: the chat cog reports replies, the post scheduler its post
outcomes (`PostScheduler.outcome_observers`), the retrainer its outcomes (`Retrainer.outcome_observers`),
the engine its batch sizes (`Engine.batch_observers`, from the worker thread), the Discord adapter's send
limits (`bot.adapters.discord.send_limits`) the sends they delayed or dropped. The queue depth and the
gateway latency per shard are read when scraped. The endpoint runs on the bot's event loop (aiohttp, which
discord.py already uses); its handlers never block it: the database check is a small write with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.adapters.discord.send_limits import DROP_REASONS, LIMITS
from bot.core.filters.output import rejection_filter

if TYPE_CHECKING:
    from bot.core.config import Settings
    from bot.core.store import Store
    from bot.inference.engine import Engine, Reply
    from bot.jobs.leadership import JobsLeadership
    from bot.jobs.retrain import Retrainer
    from bot.jobs.scheduler import PostOutcome

log = logging.getLogger("personabot.metrics")

# What a reply that was asked for became: sent (the persona's words), fallback (every sample was rejected,
# so the fallback line), failed (generation raised; the user got an apology).
REPLY_OUTCOMES = ("sent", "fallback", "failed")
# Seconds from deciding to answer to the reply being sent: CPU replies take ~0.1-5 s, remote ones up to the
# inference timeout.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# The setting the health check writes (and overwrites): a database that takes it is writable.
HEALTH_PROBE_KEY = "health_probe"
# How long the database check may take before /healthz calls the database failing.
HEALTH_TIMEOUT_S = 3.0


class _ReadWhenScraped(Collector):
    """The gauges read at scrape time: the engine's queue depth and the gateway latency of each shard."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.gateway: Any = None          # a discord.py client: `latencies` when sharded, else `latency`
        self.leadership: JobsLeadership | None = None   # RUN_JOBS: whether this candidate leads

    def describe(self) -> Iterable[Metric]:
        return []   # nothing to check for clashes: the names are this module's own

    def collect(self) -> Iterator[Metric]:
        if self.engine is not None:
            yield GaugeMetricFamily("personabot_queue_depth", "Requests waiting for a generation batch",
                                    value=self.engine.queue_depth)
            pool = self.engine.pool
            yield GaugeMetricFamily("personabot_personas_loaded", "Registered personas loaded now",
                                    value=len(pool.loaded()))
            yield GaugeMetricFamily("personabot_persona_memory_bytes",
                                    "Weights of the registered personas loaded now (PERSONA_MEMORY_MB)",
                                    value=pool.memory_bytes)
        if self.leadership is not None:
            yield GaugeMetricFamily("personabot_jobs_leader", "1 while this process leads the jobs (posts, "
                                    "retrains), 0 while it stands by", value=int(self.leadership.leading))
        if self.gateway is not None:
            gauge = GaugeMetricFamily("personabot_gateway_latency_seconds",
                                      "Discord gateway heartbeat latency, per shard", labels=["shard"])
            for shard, seconds in gateway_latencies(self.gateway):
                if math.isfinite(seconds):      # inf/nan: that shard has no heartbeat yet
                    gauge.add_metric([str(shard)], seconds)
            yield gauge


def gateway_latencies(client: Any) -> list[tuple[int, float]]:
    """(shard id, seconds) for each shard of a discord.py client: `latencies` on an AutoShardedBot, else its
    one `latency` as shard 0."""
    latencies = getattr(client, "latencies", None)
    if latencies is not None:
        return [(int(shard), float(seconds)) for shard, seconds in latencies]
    return [(0, float(client.latency))]


class Metrics:
    """The bot's counters, histograms and gauges, in a registry of their own (`registry`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.replies = Counter("personabot_replies", "Replies asked for, by outcome", ["outcome"],
                               registry=registry)
        self.reply_seconds = Histogram("personabot_reply_seconds", "Seconds from deciding to answer to the "
                                       "reply being sent", buckets=LATENCY_BUCKETS, registry=registry)
        self.rejected = Counter("personabot_rejected_samples", "Sampled texts rejected, by the filter that "
                                "rejected them", ["filter"], registry=registry)
        self.batch_sizes = Histogram("personabot_batch_size", "Requests generated together in one batch",
                                     buckets=BATCH_BUCKETS, registry=registry)
        self.posts = Counter("personabot_posts", "Scheduled and immediate posts, by outcome", ["outcome"],
                             registry=registry)
        self.retrains = Counter("personabot_retrains", "Retrains, by outcome", ["outcome"], registry=registry)
        self.sends_delayed = Counter("personabot_sends_delayed", "Messages held back to keep to Discord's send "
                                     "limits, by the limit (webhook, channel)", ["limit"], registry=registry)
        self.sends_dropped = Counter("personabot_sends_dropped", "Held-back messages dropped unsent, by reason "
                                     "(stale: the conversation moved on; waited_too_long)", ["reason"],
                                     registry=registry)
        self.unasked = Counter("personabot_unasked_turns", "Turns a persona took without being addressed, by "
                               "kind (unasked: a burst it joined; followup: one soon after it spoke; scene: a "
                               "turn of a scene)", ["kind"], registry=registry)
        self.cool_downs = Counter("personabot_person_cool_downs", "People put in a cool-down for addressing the "
                                  "personas past USER_INTERACTIONS", registry=registry)
        self._live = _ReadWhenScraped()
        registry.register(self._live)
        for outcome in REPLY_OUTCOMES:     # present (at 0) before the first reply, so rates start at once
            self.replies.labels(outcome)
        for limit in LIMITS:
            self.sends_delayed.labels(limit)
        for reason in DROP_REASONS:
            self.sends_dropped.labels(reason)
        for kind in ("unasked", "followup", "scene"):
            self.unasked.labels(kind)

    # -- what it watches ----------------------------------------------------------------------------
    def watch(self, *, engine: Engine | None = None, retrainer: Retrainer | None = None,
              gateway: Any = None, leadership: JobsLeadership | None = None) -> "Metrics":
        """Count `engine`'s batches and read its queue depth, count `retrainer`'s outcomes, read `gateway`'s
        (a discord.py client's) latency per shard and whether `leadership`'s process leads the jobs. Watching
        the same thing twice counts it once."""
        if engine is not None:
            self._live.engine = engine
            if self.batch_done not in engine.batch_observers:
                engine.batch_observers.append(self.batch_done)
        if retrainer is not None and self.retrain_finished not in retrainer.outcome_observers:
            retrainer.outcome_observers.append(self.retrain_finished)
        if gateway is not None:
            self._live.gateway = gateway
        if leadership is not None:
            self._live.leadership = leadership
        return self

    # -- what it is told ----------------------------------------------------------------------------
    def reply_sent(self, reply: Reply, seconds: float) -> None:
        """A reply went out after `seconds`: the persona's words, or the fallback line when every sample was
        rejected. Each rejected sample is counted under its filter."""
        self.replies.labels("fallback" if reply.fallback else "sent").inc()
        self.reply_seconds.observe(seconds)
        self.samples_rejected(reply.rejected)

    def reply_failed(self, seconds: float) -> None:
        """Generating a reply raised after `seconds`."""
        self.replies.labels("failed").inc()
        self.reply_seconds.observe(seconds)

    def samples_rejected(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.rejected.labels(rejection_filter(reason)).inc()

    def post_made(self, outcome: PostOutcome) -> None:
        """A post's outcome (posted, failed, skipped, already-claimed, not-claimed), and the lines rejected on
        the way."""
        self.posts.labels(outcome.status).inc()
        self.samples_rejected(outcome.rejected)

    def retrain_finished(self, outcome: str) -> None:
        """A retrain ended: done, failed, cancelled or rejected (see bot.jobs.retrain.RETRAIN_OUTCOMES)."""
        self.retrains.labels(outcome).inc()

    def spoke_unasked(self, kind: str) -> None:
        """A persona joined the talk unasked ("unasked" or "followup")."""
        self.unasked.labels(kind).inc()

    def person_cooled_down(self) -> None:
        self.cool_downs.inc()

    def scene_turn(self) -> None:
        """A persona took a turn in a scene (cogs.scenes)."""
        self.unasked.labels("scene").inc()

    def send_delayed(self, limit: str) -> None:
        """A message waited for a send limit (one of bot.adapters.discord.send_limits.LIMITS) to let it go."""
        self.sends_delayed.labels(limit).inc()

    def send_dropped(self, reason: str) -> None:
        """A held-back message was dropped unsent (one of bot.adapters.discord.send_limits.DROP_REASONS)."""
        self.sends_dropped.labels(reason).inc()

    def batch_done(self, size: int) -> None:
        """The engine generated a batch of `size` requests (called from its worker thread)."""
        self.batch_sizes.observe(size)

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)


# -- health ------------------------------------------------------------------------------------------
async def health_checks(engine: Engine, store: Store, bot: Any = None,
                        timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, str]:
    """Each check's verdict: "ok", or what is wrong. The gateway only when there is a `bot`."""
    checks: dict[str, str] = {}
    if bot is not None:
        checks["gateway"] = gateway_problem(bot) or "ok"
    checks["engine"] = engine_problem(engine) or "ok"
    checks["database"] = await database_problem(store, timeout_s) or "ok"
    return checks


def gateway_problem(bot: Any) -> str | None:
    """Why the bot is not connected to Discord (each shard, when it runs several), or None."""
    if bot.is_closed():
        return "closed"
    if not bot.is_ready():
        return "not connected yet"
    shards = getattr(bot, "shards", None) or {}
    down = sorted(shard_id for shard_id, shard in shards.items() if shard.is_closed())
    if down:
        return "shard(s) " + ", ".join(map(str, down)) + " disconnected"
    return None


def engine_problem(engine: Engine) -> str | None:
    """Why the engine cannot answer, or None: it is closed, its worker thread died, or its backend (a remote
    inference server) says it is unhealthy."""
    if engine.problem is not None:
        return engine.problem
    backend = engine.persona.backend
    if getattr(backend, "healthy", True) is False:
        return f"backend unhealthy: {getattr(backend, 'health', backend.name)}"
    return None


async def database_problem(store: Store, timeout_s: float) -> str | None:
    """Why the database is not writable (a small write within `timeout_s`), or None."""
    from bot.core.store import StoreError

    try:
        async with asyncio.timeout(timeout_s):
            await store.set_setting(HEALTH_PROBE_KEY, time.time())
    except TimeoutError:
        return f"no write within {timeout_s:g} s (locked?)"
    except StoreError as e:
        return str(e)
    return None


# -- the endpoint --------------------------------------------------------------------------------------
class MetricsServerError(Exception):
    """The endpoint cannot listen where the settings say; the message says what to change."""


@dataclass
class MetricsServer:
    """The running endpoint: where it listens; `await stop()` at shutdown."""

    runner: web.AppRunner
    host: str
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


def metrics_app(metrics: Metrics, *, engine: Engine, store: Store, bot: Any = None,
                health_timeout_s: float = HEALTH_TIMEOUT_S) -> web.Application:
    """The aiohttp application: GET /metrics (Prometheus text) and GET /healthz (JSON; 503 when a check
    fails, naming it)."""

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health_page(request: web.Request) -> web.Response:
        checks = await health_checks(engine, store, bot, health_timeout_s)
        failing = sorted(name for name, verdict in checks.items() if verdict != "ok")
        body = {"ok": not failing, "failing": failing, "checks": checks}
        return web.Response(text=json.dumps(body), status=503 if failing else 200, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", health_page)
    return app


async def serve_metrics(app: web.Application, host: str, port: int) -> MetricsServer:
    """Serve `app` on host:port (port 0: a free one, reported in the result)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise MetricsServerError(f"cannot serve /metrics on {host}:{port} ({e.strerror or e}); choose another "
                                 "METRICS_PORT, or stop what listens there") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info("serving /healthz and /metrics on http://%s:%d", host, bound)
    return MetricsServer(runner, host, bound)


async def start_metrics_server(settings: Settings, metrics: Metrics, *, engine: Engine, store: Store,
                               bot: Any = None) -> MetricsServer | None:
    """Serve /metrics and /healthz on METRICS_HOST:METRICS_PORT, on the running event loop; None (nothing
    started) when METRICS_PORT is unset. `bot` (a discord.py client) adds the gateway check; without it
    (the terminal chat) there is no gateway to check."""
    if settings.metrics_port is None:
        return None
    app = metrics_app(metrics, engine=engine, store=store, bot=bot)
    return await serve_metrics(app, settings.metrics_host, settings.metrics_port)
