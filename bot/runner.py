"""`personabot run`: open the store, load the persona into the engine, then serve Discord when a token is set,
else the terminal chat. With RUN_JOBS, the process is a candidate for the jobs leadership (`bot.jobs.leadership`),
taken at once when no other process holds it. Every process follows what others change in the database
(`bot.jobs.changes`, `bot.jobs.model_watch`). Shuts down cleanly on SIGTERM and Ctrl-C: the running retrain is
cancelled, the leadership given up, the engine finishes its batch, the store is closed."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from bot.adapters.console import chat_async
from bot.adapters.metrics import Metrics, MetricsServerError, start_metrics_server
from bot.core.config import Settings
from bot.core.filters import Blocklist
from bot.core.store import Store, StoreError
from bot.inference.engine import Engine
from bot.inference.remote import RemoteConfig
from bot.jobs.changes import ChangeFollower
from bot.jobs.leadership import JobsLeadership, take_over_jobs
from bot.jobs.model_watch import ModelWatch
from bot.jobs.retrain import CURRENT
from bot.jobs.scheduler import start_posting
from bot.storage import open_store

log = logging.getLogger("personabot")


class StartError(Exception):
    """The bot cannot start; the message says what to fix (and never holds a token)."""


async def current_artifact(store: Store, settings: Settings) -> Path:
    """The artifact a retrain or rollback last swapped in, if it is still there; else the configured one."""
    recorded = await store.get_setting(CURRENT)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    if recorded:
        log.warning("the last swapped-in model %s is gone; starting with %s", recorded, settings.model_dir)
    return settings.model_dir


async def serve(settings: Settings, *, stdin=None, stdout=None) -> int:
    store = await open_store(settings)
    try:
        # What a dead jobs process left (running retrains, stale messages) is the next leader's to clean up:
        # a process that starts as a standby must not fail the retrain running in the leader.
        model_dir = await current_artifact(store, settings)
        engine = await asyncio.to_thread(load_engine, settings, model_dir)
        if not settings.discord_token:
            return await _terminal(settings, engine, store, stdin=stdin, stdout=stdout)
        async with engine:
            return await _discord(settings, engine, store)
    finally:
        await store.close()


def load_engine(settings: Settings, model_dir: Path) -> Engine:
    """The engine for `model_dir` with the settings' backend (an inference server's for BACKEND=openai),
    filters and batching. Blocking: call it in a thread."""
    blocklist = Blocklist.from_file(settings.blocklist_file) if settings.blocklist_file else None
    remote = None
    if settings.backend == "openai":
        remote = RemoteConfig.from_settings(settings)
    return Engine.load(model_dir, backend=settings.backend, threads=settings.torch_threads, blocklist=blocklist,
                       leak_ngram_words=settings.leak_ngram_words, max_batch=settings.max_batch,
                       generation=settings.generation, remote=remote, persona_memory_mb=settings.persona_memory_mb)


async def _terminal(settings: Settings, engine: Engine, store: Store, *, stdin, stdout) -> int:
    """The terminal chat, with scheduled posts printed, and /healthz and /metrics when METRICS_PORT is set."""

    print("personabot: no DISCORD_TOKEN set, so chatting in the terminal", file=sys.stderr)
    metrics = Metrics().watch(engine=engine)
    try:
        server = await start_metrics_server(settings, metrics, engine=engine, store=store)
    except MetricsServerError as e:
        raise StartError(str(e)) from None
    poster = await start_posting(engine, store, settings, out=stdout, outcome_observers=[metrics.post_made],
                                 run_schedules=False)
    leadership = None
    if settings.run_jobs:
        async def take_over() -> None:
            await take_over_jobs(store, settings, poster)

        async def step_down() -> None:
            poster.stop()

        leadership = JobsLeadership(store, on_lead=take_over, on_lose=step_down)
        await leadership.check_once()          # a lone process leads before the chat starts
        leadership.start()
    chat = asyncio.ensure_future(chat_async(engine, user=settings.chat_user_name, stdin=stdin, stdout=stdout))
    _on_signals(chat.cancel)
    try:
        return await chat
    except asyncio.CancelledError:   # SIGTERM or Ctrl-C: the engine and the store still close
        log.info("stopped by a signal")
        return 0
    finally:
        if leadership is not None:
            await leadership.stop()
        poster.stop()
        if server is not None:
            await server.stop()


def _on_signals(handler) -> None:
    """Run `handler` on SIGTERM (a process manager stopping us) and Ctrl-C."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # not on this platform, or not the main thread
            pass


async def _discord(settings: Settings, engine: Engine, store: Store) -> int:
    # Here: discord.py is loaded only for the Discord adapter (the terminal chat runs without it).
    import discord

    from bot.adapters.discord.api import use_api_url
    from bot.adapters.discord.bot import PersonaBot

    bot = PersonaBot(settings, engine, store)

    def stop() -> None:
        log.info("stopping (signal)")
        asyncio.ensure_future(bot.shutdown())

    _on_signals(stop)
    # Every process follows the model the jobs leader swaps in (the shared store records it): a standby may
    # lead later, and a leader's own swaps are no change to it.
    watch = ModelWatch(engine, store).start()
    follower = ChangeFollower(store, engine, watch=watch, poster=lambda: bot.poster)
    try:
        if await store.listen(follower):
            log.info("hearing other processes' changes from the database as they happen")
        gateway = bot if settings.shard_ids != () else None      # SHARD_IDS=none: no gateway to check
        server = await start_metrics_server(settings, bot.metrics, engine=engine, store=store, bot=gateway)
    except (MetricsServerError, StoreError) as e:
        await watch.stop()
        raise StartError(str(e)) from None
    try:
        await use_api_url(settings.discord_api_url, settings.discord_token)
        async with bot:
            if settings.shard_ids == ():
                await bot.serve_without_gateway(settings.discord_token)
            else:
                await bot.start(settings.discord_token)
    except discord.LoginFailure:
        raise StartError("Discord refused DISCORD_TOKEN; copy the bot token again from the developer portal "
                         "(Bot > Reset Token)") from None
    except (OSError, discord.GatewayNotFound, discord.ConnectionClosed) as e:
        raise StartError(f"cannot reach Discord ({type(e).__name__}: {e}); check the network and try again") from None
    except discord.HTTPException as e:
        raise StartError(f"Discord answered {e.status} at login; try again later") from None
    except discord.PrivilegedIntentsRequired:
        raise StartError("Discord refused the Message Content intent: enable it for the bot in the developer "
                         "portal (Bot > Privileged Gateway Intents), or set MESSAGE_CONTENT=false") from None
    finally:
        await bot.retrainer.shutdown()
        await watch.stop()
        if server is not None:
            await server.stop()
    return 0
