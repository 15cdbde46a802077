"""Registered personas loaded on demand within a memory budget, the least recently used unloaded first.

A request for a persona (`bot.inference.persona.PersonaRef`) leases it: loaded (off the event loop, checked to
generate) when it is not loaded yet, and never unloaded while a request holds it. Loads run one at a time,
and room is made for each before it starts, by its expected size (its weights on disk): eight first
requests at once no longer load eight models past the budget. Room is made by unloading personas nobody
holds, least recently used first, and only a server's own or those of a server (or the global ones) holding
more than its fair share (the budget split evenly among the servers with personas loaded): one server's
new personas never push out another's that keeps within its share. The budget can still be passed for a
moment by the persona just loaded and by those in use (said in the log once per overrun). Whole models count
their weights; LoRA adapters count their own few megabytes, and the base they share
(`bot.inference.backends.SharedBases`) counts once, unloaded with its last adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.personas import PersonaRef
from bot.inference.backends import AdapterBackend, SharedBases
from bot.inference.persona import Persona

log = logging.getLogger("personabot.personas")

MB = 1024 * 1024


@dataclass(slots=True, eq=False)
class _Loaded:
    persona: Persona
    leases: int = 0
    owner: int | None = None     # the guild it was loaded for (None: a global persona); its memory counts there

    @property
    def memory_bytes(self) -> int:
        return int(getattr(self.persona.backend, "memory_bytes", 0))


class PersonaPool:
    """The registered personas this process has loaded (the bot's configured persona is the engine's own,
    always loaded, outside the budget)."""

    def __init__(self, load: Callable[..., Persona], *, budget_bytes: int, bases: SharedBases | None = None,
                 check: Callable[[Persona], None] | None = None,
                 expected_bytes: Callable[[Path], int] | None = None) -> None:
        self._load = load                       # (directory, bases=..., **generation overrides) -> Persona
        self.budget_bytes = budget_bytes
        self.bases = bases
        self._check = check                     # raises when a loaded persona cannot generate
        # What loading an artifact will add, before it is loaded (reads files: called off the event loop).
        self._expected = expected_bytes or (lambda artifact: 0)
        self._loaded: OrderedDict[Any, _Loaded] = OrderedDict()   # least recently used first
        self._loading: dict[Any, asyncio.Future] = {}
        self._one_load: asyncio.Lock | None = None   # made on first use, in the event loop that uses it
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
            if self._one_load is None:
                self._one_load = asyncio.Lock()
            async with self._one_load:
                expected = await asyncio.to_thread(self._expected, ref.artifact)
                await self._make_room(ref.owner, expected)
                persona = await asyncio.to_thread(self._load_checked, ref)
                self._loaded[ref.key] = _Loaded(persona, leases=1, owner=ref.owner)
                self.loads += 1
        except BaseException as e:
            future.set_exception(e)
            future.exception()    # retrieved here: waiters raise it themselves
            raise
        finally:
            del self._loading[ref.key]
        if not future.done():
            future.set_result(None)
        await self._make_room(ref.owner, 0)
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

    def _usage(self) -> dict[int | None, int]:
        """Bytes of the personas loaded, by the server they were loaded for (None: global ones)."""
        usage: dict[int | None, int] = {}
        for held in self._loaded.values():
            usage[held.owner] = usage.get(held.owner, 0) + held.memory_bytes
        return usage

    async def _make_room(self, owner: int | None, expected: int) -> None:
        """Unload personas nobody holds, least recently used first, until the loaded ones and `expected` more
        bytes (a load of `owner`'s about to start) fit the budget. Only `owner`'s own personas are taken, and
        another owner's while it holds more than its fair share: the budget split evenly among the owners with
        personas loaded, `owner` counted."""
        for key, held in list(self._loaded.items()):
            if self.memory_bytes + expected <= self.budget_bytes:
                self._over_budget_said = False
                return
            if self._loaded.get(key) is not held or held.leases:   # gone meanwhile, or in use
                continue
            usage = self._usage()
            fair_share = self.budget_bytes / len(set(usage) | {owner})
            if held.owner == owner or usage.get(held.owner, 0) > fair_share:
                await self._unload(key)
        if self.memory_bytes + expected > self.budget_bytes and not self._over_budget_said:
            self._over_budget_said = True
            log.warning("personas take %.0f MB (%.0f MB more on the way), over PERSONA_MEMORY_MB (%.0f MB): "
                        "those in use, or other servers' within their share; unloaded when they may be",
                        self.memory_bytes / MB, expected / MB, self.budget_bytes / MB)

    async def _unload(self, key: Any) -> None:
        held = self._loaded.pop(key, None)
        if held is None:     # another unload (a forget, another load's room) took it first
            return
        self.unloads += 1
        # Removing an adapter waits for the batch running on its base: not on the event loop.
        await asyncio.to_thread(self._release, held.persona)
        log.info("unloaded persona %s (%s)", held.persona.name, key[0])

    def _release(self, persona: Persona) -> None:
        backend = persona.backend
        if isinstance(backend, AdapterBackend) and self.bases is not None:
            self.bases.release(backend)
        close = getattr(backend, "close", None)
        if close is not None:    # a served persona's share of the server connection (bot.inference.remote)
            close()
