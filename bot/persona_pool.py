"""Registered personas loaded on demand within a memory budget, the least recently used unloaded first.

A request for a persona (`bot.persona.PersonaRef`) leases it: loaded (off the event loop, checked to
generate) when it is not loaded yet, and never unloaded while a request holds it. After each load, personas
nobody holds are unloaded, least recently used first, until the loaded ones fit the budget again; the budget
can be passed for a moment by the persona just loaded and by those in use (said in the log once per
overrun). Whole models count their weights; LoRA adapters count their own few megabytes, and the base they
share (`bot.backends.SharedBases`) counts once, unloaded with its last adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.backends import AdapterBackend, SharedBases
from bot.persona import Persona, PersonaRef

log = logging.getLogger("personabot.personas")

MB = 1024 * 1024


@dataclass(slots=True, eq=False)
class _Loaded:
    persona: Persona
    leases: int = 0

    @property
    def memory_bytes(self) -> int:
        return int(getattr(self.persona.backend, "memory_bytes", 0))


class PersonaPool:
    """The registered personas this process has loaded (the bot's configured persona is the engine's own,
    always loaded, outside the budget)."""

    def __init__(self, load: Callable[..., Persona], *, budget_bytes: int, bases: SharedBases | None = None,
                 check: Callable[[Persona], None] | None = None) -> None:
        self._load = load                       # (directory, bases=..., **generation overrides) -> Persona
        self.budget_bytes = budget_bytes
        self.bases = bases
        self._check = check                     # raises when a loaded persona cannot generate
        self._loaded: OrderedDict[Any, _Loaded] = OrderedDict()   # least recently used first
        self._loading: dict[Any, asyncio.Future] = {}
        self._over_budget_said = False
        self.loads = 0                          # personas loaded so far
        self.unloads = 0

    # -- what the engine uses -----------------------------------------------------------------------
    async def lease(self, ref: PersonaRef) -> Persona:
        """The persona of `ref`, loaded if need be; hold it until `give_back`. Load failures raise (an
        `ArtifactError` or what the check raised); nothing is left loaded by a failed load."""
        while True:
            held = self._loaded.get(ref.key)
            if held is not None:
                self._loaded.move_to_end(ref.key)
                held.leases += 1
                return held.persona
            pending = self._loading.get(ref.key)
            if pending is None:
                break
            await asyncio.shield(pending)    # another request is loading it: use theirs (or fail as they did)
        future = asyncio.get_running_loop().create_future()
        self._loading[ref.key] = future
        try:
            persona = await asyncio.to_thread(self._load_checked, ref)
        except BaseException as e:
            future.set_exception(e)
            future.exception()    # retrieved here: waiters raise it themselves
            raise
        finally:
            del self._loading[ref.key]
        self._loaded[ref.key] = _Loaded(persona, leases=1)
        self.loads += 1
        if not future.done():
            future.set_result(None)
        await self._fit()
        return persona

    def give_back(self, ref: PersonaRef) -> None:
        """End one lease of `ref`'s persona (it stays loaded until the budget needs its room)."""
        held = self._loaded.get(ref.key)
        if held is not None and held.leases > 0:
            held.leases -= 1

    async def forget(self, artifact: Path) -> int:
        """Unload the personas of `artifact` nobody holds (an artifact a retrain or rollback replaced): how
        many. One still in use is unloaded by the budget later, like any other."""
        gone = [key for key, held in self._loaded.items() if key[0] == artifact and held.leases == 0]
        for key in gone:
            await self._unload(key)
        return len(gone)

    # -- what /status and the tests read -------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        """The bytes of the personas loaded now, shared bases included."""
        return sum(held.memory_bytes for held in self._loaded.values()) + (self.bases.memory_bytes if self.bases else 0)

    def loaded(self) -> list[tuple[Path, int]]:
        """(artifact, leases) of each loaded persona, least recently used first."""
        return [(key[0], held.leases) for key, held in self._loaded.items()]

    # -- internals ----------------------------------------------------------------------------------
    def _load_checked(self, ref: PersonaRef) -> Persona:
        persona = self._load(ref.artifact, bases=self.bases, **dict(ref.generation))
        try:
            if self._check is not None:
                self._check(persona)
        except BaseException:
            self._release(persona)
            raise
        log.info("loaded persona %s from %s (%.1f MB)", ref.name, ref.artifact,
                 getattr(persona.backend, "memory_bytes", 0) / MB)
        return persona

    async def _fit(self) -> None:
        """Unload the least recently used personas nobody holds until the loaded ones fit the budget."""
        for key in list(self._loaded):
            if self.memory_bytes <= self.budget_bytes:
                self._over_budget_said = False
                return
            if self._loaded[key].leases == 0:
                await self._unload(key)
        if self.memory_bytes > self.budget_bytes and not self._over_budget_said:
            self._over_budget_said = True
            log.warning("personas in use take %.0f MB, over PERSONA_MEMORY_MB (%.0f MB); those not in use are "
                        "unloaded as soon as they are not", self.memory_bytes / MB, self.budget_bytes / MB)

    async def _unload(self, key: Any) -> None:
        held = self._loaded.pop(key)
        self.unloads += 1
        # Removing an adapter waits for the batch running on its base: not on the event loop.
        await asyncio.to_thread(self._release, held.persona)
        log.info("unloaded persona %s (%s)", held.persona.name, key[0])

    def _release(self, persona: Persona) -> None:
        backend = persona.backend
        if isinstance(backend, AdapterBackend) and self.bases is not None:
            self.bases.release(backend)
        close = getattr(backend, "close", None)
        if close is not None:    # a served persona's share of the server connection (bot.remote)
            close()
