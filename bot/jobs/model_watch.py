"""Follow the jobs leader's model swaps in every process (the leader's own are no change to it).

A retrain or rollback swaps the model in the jobs process and records the artifact it now serves in the shared
database (`bot.jobs.retrain.CURRENT`). `ModelWatch` reads that setting every `interval_s` seconds and, when it names
another artifact than the one this process last took, swaps its own engine to it (`Engine.swap`: loaded in a
worker thread, switched between batches). A swap that fails is logged once and retried only when the setting
changes again; the model that served before keeps serving. The database is read through the store, off the
event loop like every store call. On PostgreSQL the process hears of a swap at once (`Store.listen`, topic
'model') and calls `check_soon`; the interval stays as the safety net, and is all SQLite has."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.core.store import Store, StoreError
from bot.inference.engine import Engine, SwapError
from bot.jobs.retrain import CURRENT

log = logging.getLogger("personabot.model_watch")

# How often a replying process looks for a new model: a swap is rare (a retrain takes hours), and one small
# query per interval costs nothing.
WATCH_INTERVAL_S = 15.0


class ModelWatch:
    """Swap `engine` to the artifact the shared store records as current, whenever that record changes."""

    def __init__(self, engine: Engine, store: Store, *, interval_s: float = WATCH_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.engine = engine
        self.store = store
        self.interval_s = interval_s
        # The record this process last acted on: what it serves now, until the jobs process records another.
        self.seen: str | None = str(engine.persona.path)
        self._store_failing = False
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> "ModelWatch":
        """Start watching (on the running event loop); returns self."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="model-watch")
            log.info("following the current model recorded in the database every %g s", self.interval_s)
        return self

    async def stop(self) -> None:
        """Stop watching; waits for a swap in progress to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def check_soon(self) -> None:
        """Look now rather than at the end of the interval (another process announced a swap)."""
        self._wake.set()

    async def check_once(self) -> bool:
        """Read the record once and swap when it changed; True when this call swapped the engine."""
        try:
            recorded = await self.store.get_setting(CURRENT)
        except StoreError as e:
            if not self._store_failing:
                log.warning("cannot read the current model from the database (will keep trying): %s", e)
            self._store_failing = True
            return False
        if self._store_failing:
            log.info("reading the current model from the database works again")
            self._store_failing = False
        if not recorded or recorded == self.seen or Path(recorded) == self.engine.persona.path:
            self.seen = recorded or self.seen
            return False
        self.seen = recorded       # a failed swap is tried again only when the record changes again
        try:
            await self.engine.swap(recorded)
        except SwapError:          # the engine logged why, and that the old model keeps serving
            return False
        log.info("followed the jobs process: now serving %s", recorded)
        return True

    async def _watch(self) -> None:
        while True:
            self._wake.clear()
            await self.check_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
