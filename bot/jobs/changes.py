"""What a process does when the database says a process changed something (`Store.listen`, PostgreSQL only):
'model' -> look for the bot's own persona's swap now (`ModelWatch.check_soon`); 'schedules' -> re-arm the
schedules, where they fire (the jobs leader); 'personas' -> unload the loaded artifacts that no registered
persona names any more (removed, retrained or rolled back elsewhere). Lookups by name and assignment need
nothing: they read the store at each request. The 15-second looks stay, for SQLite and as a safety net."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.core.store import Store, StoreError
from bot.inference.engine import Engine
from bot.jobs.model_watch import ModelWatch
from bot.jobs.scheduler import PostScheduler

log = logging.getLogger("personabot.changes")


class ChangeFollower:
    """The handler `Store.listen` calls with each topic heard (quick: the work runs in tasks)."""

    def __init__(self, store: Store, engine: Engine, *, watch: ModelWatch | None = None,
                 poster: Callable[[], PostScheduler | None] = lambda: None) -> None:
        self.store = store
        self.engine = engine
        self.watch = watch
        self.poster = poster            # the process's scheduler, once it has one
        self.heard: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()

    def __call__(self, topic: str) -> None:
        self.heard[topic] = self.heard.get(topic, 0) + 1
        log.debug("heard: %s changed", topic)
        if topic == "model" and self.watch is not None:
            self.watch.check_soon()
        elif topic == "schedules":
            poster = self.poster()
            if poster is not None:
                poster.changed_elsewhere()
        elif topic == "personas":
            task = asyncio.get_running_loop().create_task(self.unload_unnamed(), name="unload-unnamed")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def unload_unnamed(self) -> int:
        """Unload the loaded artifacts no registered persona names any more; how many were unloaded."""
        loaded = {artifact for artifact, _ in self.engine.pool.loaded()}
        if not loaded:
            return 0
        try:
            named = {entry.artifact_path for entry in await self.store.personas()}
        except StoreError as e:
            log.warning("cannot read the personas to unload the unnamed ones (the memory budget will): %s", e)
            return 0
        unloaded = 0
        for artifact in sorted(loaded - named):
            unloaded += await self.engine.forget(artifact)
        if unloaded:
            log.info("unloaded %d persona(s) whose artifact no persona names any more", unloaded)
        return unloaded
