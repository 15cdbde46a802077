"""The generation engine: one worker thread off the event loop, a request queue, micro-batching, hot swap.

Callers `await engine.reply(turns, target=...)` (or `lines(...)`). Requests that arrive together (within
`batch_window_s` of the first, up to `max_batch`) are generated in one left-padded batch, each with its own
sampling settings, seed and stops. A caller that is cancelled frees its row: a queued request is dropped,
a running one leaves the batch at the next token.

The worker builds each request's prompt itself, with the persona it is about to run, so a request queued
before a swap is prompted with the tokenizer of the model that answers it. `swap()` loads a new artifact
beside the old one (in another thread), checks that it generates, and replaces it between batches; a
failed load leaves the old one serving. Every reply passes the persona's output filter: candidates the
leak guard or the blocklist reject are sampled again, a bounded number of times.

The engine names no platform: every caller passes the `bot.core.filters.Target` its text goes to, built by its
adapter, and the target finishes the text its own way (its length limit, its mention names).

A persona served by an inference server (`bot.inference.remote`) never holds the worker: its rows are handed to the
server's connection (`submit`) and their callers settled from there when the answers come, so a slow server
keeps neither a local persona's batch nor another server's persona waiting. A row the server did not answer
within INFERENCE_TIMEOUT (or whose circuit is open) gets the fallback line at once: drawing again would wait
as long again.

Several personas: a request may name a registered persona (`bot.inference.persona.PersonaRef`); the engine's
`bot.inference.persona_pool.PersonaPool` loads it on demand within PERSONA_MEMORY_MB and holds it while the request
runs. A batch mixes personas: rows of LoRA adapters on one shared base run in one pass (each row through its
own adapter), whole models each run their own rows. Without a persona, a request is the bot's configured
persona's, the one `swap` replaces.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bot.core.config import MAX_BATCH, PERSONA_MEMORY_MB
from bot.core.filters import Target
from training.leak_guard import NGRAM_WORDS
from bot.core.filters.output import EMPTY
from bot.core.personas import PersonaRef
from bot.inference.backends import AdapterBackend, SharedBases, expected_bytes, generation_threads
from bot.inference.persona import FALLBACK_REPLY, Persona
from bot.inference.persona_pool import PersonaPool
from bot.inference.remote import RemoteConfig
from training.generation import attempt_seed
from training.transcript import join_line

log = logging.getLogger("personabot.engine")

_STOP = object()
# Why a reply is the fallback line when the inference server gave no answer (see `bot.inference.remote`).
UNANSWERED = "unanswered"


class EngineClosed(Exception):
    """The engine was closed before the request could be answered."""


class SwapError(Exception):
    """A new artifact could not be loaded or did not generate; the previous one keeps serving."""


@dataclass(slots=True)
class Reply:
    text: str                       # filtered, ready for the target
    persona: str                    # who answered
    artifact: Path                  # which artifact answered
    tries: int                      # samples drawn
    tokens: int = 0                 # tokens generated for the reply that was used
    rejected: list[str] = field(default_factory=list)  # why earlier samples were not used
    fallback: bool = False          # every try failed; `text` is the fallback line


@dataclass(slots=True)
class Line:
    """A stand-alone candidate line and, when it failed a filter, why."""

    text: str
    rejected: str | None = None


@dataclass(slots=True, eq=False)
class _Job:
    turns: Sequence[tuple[str, str]] | None     # a reply to these turns, or
    start: str                                  # a stand-alone line starting with this
    overrides: dict[str, Any]
    seed: int | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    persona: Persona | None = None              # a registered persona (leased); None: the one serving then
    speaks_as: str | None = None                # the name its own turns carry in `turns`, when not its speaker's
    queued: float = field(default_factory=time.monotonic)


class Engine:
    """Serves the bot's persona, and registered personas on demand, to any number of concurrent callers."""

    def __init__(self, persona: Persona, *, loader: Callable[[Path], Persona] | None = None,
                 max_batch: int = MAX_BATCH, batch_window_s: float = 0.01, threads: int | None = None,
                 max_tries: int = 3, pool: PersonaPool | None = None) -> None:
        if max_batch < 1 or max_tries < 1:
            raise ValueError("max_batch and max_tries must be at least 1")
        self._persona = persona
        self._loader = loader or Persona.load
        # Registered personas; without a pool of its own the engine loads them with its loader, unbudgeted.
        self.pool = pool or PersonaPool(lambda directory, bases=None, **o: self._loader(directory, **o),
                                        budget_bytes=1 << 62, check=check_generates)
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.threads = threads
        self.max_tries = max_tries
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._swap_lock: asyncio.Lock | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0            # batches generated so far (or being generated)
        self.largest_batch = 0
        self.busy = False           # a batch is running now
        # Called with each generated batch's size, from the worker thread (metrics); must be quick.
        self.batch_observers: list[Callable[[int], None]] = []

    @classmethod
    def load(cls, directory: str | Path, *, backend: str = "auto", threads: int | None = None,
             blocklist=None, leak_ngram_words: int = NGRAM_WORDS, max_batch: int = MAX_BATCH,
             batch_window_s: float = 0.01, max_tries: int = 3, generation: dict[str, Any] | None = None,
             remote: RemoteConfig | None = None, persona_memory_mb: float = PERSONA_MEMORY_MB) -> "Engine":
        """An engine serving the artifact in `directory`; swaps and registered personas load artifacts with
        the same options (a registered persona's own sampling defaults over them), the registered ones within
        `persona_memory_mb`. `remote` (a `bot.inference.remote.RemoteConfig`) is the inference server of `openai`."""


        loader = partial(Persona.load, backend=backend, threads=threads, blocklist=blocklist,
                         leak_ngram_words=leak_ngram_words, remote=remote, **(generation or {}))
        bases = SharedBases()
        pool = PersonaPool(loader, budget_bytes=int(persona_memory_mb * 1024 * 1024), bases=bases,
                           check=check_generates, expected_bytes=partial(expected_bytes, backend=backend, bases=bases))
        return cls(loader(directory), loader=loader, max_batch=max_batch, batch_window_s=batch_window_s,
                   threads=threads, max_tries=max_tries, pool=pool)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="personabot-engine", daemon=True)
            self._thread.start()
        return self

    async def close(self) -> None:
        """Stop the worker after the batch it is running; queued requests fail with `EngineClosed`."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                self._resolve(job, error=EngineClosed("the engine is shutting down"))

    async def __aenter__(self) -> "Engine":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- what callers use ---------------------------------------------------------------------------
    @property
    def persona(self) -> Persona:
        with self._lock:
            return self._persona

    @property
    def problem(self) -> str | None:
        """Why this engine cannot answer now, or None: closed, or its worker thread has died."""
        if self._closed:
            return "closed"
        if self._thread is not None and not self._thread.is_alive():
            return "its worker thread stopped"
        return None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def count_tokens(self, speaker: str, text: str) -> int:
        """Tokens a message takes in a prompt of the persona serving now (for context windows)."""
        return self.persona.count_tokens(speaker, text)

    async def reply(self, turns: Sequence[tuple[str, str]], *, target: Target, persona: PersonaRef | None = None,
                    overrides: dict[str, Any] | None = None, seed: int | None = None) -> Reply:
        """The next turn of `persona` (default: the bot's) after `turns` ((speaker, text), oldest first),
        filtered for `target`. A registered persona's own earlier turns are those under its `name`.

        Empty or rejected samples are drawn again up to `max_tries` times; then the fallback line is used."""
        async with self._leased(persona) as registered:
            rejected: list[str] = []
            speaker = self.persona if registered is None else registered
            for attempt in range(self.max_tries):
                speaker, ids = await self._submit(list(turns), "", overrides, attempt_seed(seed, attempt),
                                                  registered, persona.name if persona else None)
                if ids is None:     # the inference server did not answer; another try would wait as long again
                    rejected.append(UNANSWERED)
                    break
                text = speaker.text(ids)
                reason = EMPTY if not text else speaker.output_filter.reject(text)
                if reason is None:
                    return Reply(speaker.output_filter.finish(text, target), _name(persona, speaker), speaker.path,
                                 attempt + 1, len(ids), rejected)
                rejected.append(reason)
                log.info("sample %d for a reply rejected: %s", attempt + 1, reason)
            return Reply(FALLBACK_REPLY, _name(persona, speaker), speaker.path, self.max_tries, 0, rejected,
                         fallback=True)

    async def lines(self, n: int, *, target: Target, start: str = "", persona: PersonaRef | None = None,
                    overrides: dict[str, Any] | None = None, seed: int | None = None) -> list[Line]:
        """`n` stand-alone candidate lines of `persona` (default: the bot's) in one batch, each checked by the
        filters: a rejected line keeps its reason and is never to be sent. Accepted lines are finished for
        `target`."""
        async with self._leased(persona) as registered:
            jobs = [self._submit(None, start, overrides, attempt_seed(seed, i), registered) for i in range(n)]
            out = []
            for speaker, ids in await asyncio.gather(*jobs):
                if ids is None:     # the inference server did not answer
                    out.append(Line(start, UNANSWERED))
                    continue
                said = speaker.text(ids)
                text = join_line(start, said)
                reason = EMPTY if not said else speaker.output_filter.reject(text)
                out.append(Line(text if reason else speaker.output_filter.finish(text, target), reason))
            return out

    async def load_persona(self, ref: PersonaRef) -> Persona:
        """Load a registered persona now (checked to generate), e.g. a retrained artifact before the registry
        points at it. Raises `SwapError` when it does not load or generate; nothing else changes then."""
        try:
            async with self._leased(ref) as persona:
                return persona
        except EngineClosed:
            raise
        except Exception as e:  # any failure to load is reported; whatever served keeps serving
            raise SwapError(f"could not load {ref.artifact}: {e}") from e

    async def forget(self, artifact: str | Path) -> int:
        """Unload the registered personas of an artifact that nothing names any more (how many)."""
        return await self.pool.forget(Path(artifact))

    async def swap(self, directory: str | Path) -> Persona:
        """Load the artifact in `directory` beside the serving one and switch to it between batches.

        Returns the persona it replaced. Raises `SwapError` (and keeps serving the old one) when the new
        artifact does not load or does not generate."""
        if self._swap_lock is None:
            self._swap_lock = asyncio.Lock()
        async with self._swap_lock:
            try:
                new = await asyncio.to_thread(self._load_checked, Path(directory))
            except Exception as e:  # any failure to load is reported; the old persona keeps serving
                log.warning("swap to %s failed, %s keeps serving: %s", directory, self.persona.path, e)
                raise SwapError(f"could not load {directory}: {e}") from e
            with self._lock:
                old, self._persona = self._persona, new
            log.info("now serving %s (%s) with %s", new.name, new.path, new.backend.name)
            return old

    # -- internals ----------------------------------------------------------------------------------
    def _load_checked(self, directory: Path) -> Persona:
        persona = self._loader(directory)
        check_generates(persona)
        return persona

    @asynccontextmanager
    async def _leased(self, ref: PersonaRef | None) -> AsyncIterator[Persona | None]:
        """The registered persona of `ref`, held while the block runs; None for the bot's own."""
        if ref is None:
            yield None
            return
        if self._closed:
            raise EngineClosed("the engine is shut down")
        persona = await self.pool.lease(ref)
        try:
            yield persona
        finally:
            self.pool.give_back(ref)

    async def _submit(self, turns, start: str, overrides, seed, persona: Persona | None = None,
                      speaks_as: str | None = None) -> tuple[Persona, list[int] | None]:
        """(the persona that ran it, the reply's ids; None when an inference server gave no answer)."""
        if self._closed:
            raise EngineClosed("the engine is shut down")
        problems = (persona or self.persona).settings.with_overrides(**(overrides or {})).check()
        if problems:  # refused here, so that one caller's bad settings never fail a shared batch
            raise ValueError("bad generation settings: " + "; ".join(problems))
        self.start()
        loop = asyncio.get_running_loop()
        job = _Job(turns, start, dict(overrides or {}), seed, loop.create_future(), loop, persona, speaks_as)
        self._queue.put(job)
        return await job.future

    def _resolve(self, job: _Job, result=None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():   # cancelled by its caller meanwhile
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # that event loop is closed: nobody is waiting any more
            pass

    def _next_batch(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=max(0.0, timeout)) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)   # finish this batch, then stop
                break
            batch.append(job)
        return [job for job in batch if not job.future.cancelled()]

    def _work(self) -> None:
        # Set in this thread: torch's CPU thread count is per calling thread.
        torch.set_num_threads(generation_threads(self.threads))
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            with self._lock:
                serving = self._persona
            # Counted before its callers are answered, so that a caller reads counts that include its batch.
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            for observe in self.batch_observers:
                observe(len(batch))
            self.busy = True
            try:
                for group in _groups(batch, serving):
                    self._run_group(group)
            finally:
                self.busy = False

    def _run_group(self, group: list[tuple[_Job, Persona]]) -> None:
        """Generate one group of a batch (rows that run in one pass) and settle its callers."""
        try:
            settings = [persona.settings.with_overrides(**job.overrides) for job, persona in group]
            prompts = [persona.prompt(_as_trained(job.turns, job.speaks_as, persona.name), s)
                       if job.turns is not None else persona.line_prompt(job.start)
                       for (job, persona), s in zip(group, settings)]
            seeds = [job.seed for job, _ in group]

            def cancelled(row: int) -> bool:
                return group[row][0].future.cancelled()

            backend = group[0][1].backend
            submit = getattr(backend, "submit", None)
            if submit is not None:   # an inference server's rows: settled when they come, never waited for here
                for (job, persona), row in zip(group, submit(prompts, settings, seeds, cancelled)):
                    row.add_done_callback(lambda row, job=job, persona=persona: self._settle_row(job, persona, row))
                    _cancel_with_caller(job, row)
                return
            if isinstance(backend, AdapterBackend):   # each row through its own adapter, in one pass
                adapters = [persona.backend.adapter for _, persona in group]
                replies = backend.shared.generate(prompts, settings, seeds, cancelled, adapters=adapters)
            else:
                replies = group[0][1].generate(prompts, settings, seeds, cancelled=cancelled)
        except Exception as e:  # a failed group fails its callers, never the worker
            log.exception("generation failed")
            for job, _ in group:
                self._resolve(job, error=e)
            return
        for (job, persona), ids in zip(group, replies):
            self._resolve(job, (persona, ids))

    def _settle_row(self, job: _Job, persona: Persona, row: Future) -> None:
        """Settle the caller of one row an inference server's connection ran (called from its thread)."""
        if row.cancelled():     # its connection closed under it
            self._resolve(job, error=EngineClosed("the inference server's connection closed"))
            return
        error = row.exception()
        if error is not None:
            log.error("generation failed", exc_info=error)
            self._resolve(job, error=error)
        else:
            self._resolve(job, (persona, row.result()))


def _cancel_with_caller(job: _Job, row: Future) -> None:
    """A caller that leaves frees its row on the inference server's connection too: the request in flight is
    cancelled, and its place among the server's `concurrency` goes to the next."""
    def watch() -> None:
        job.future.add_done_callback(lambda future: row.cancel() if future.cancelled() else None)

    try:
        job.loop.call_soon_threadsafe(watch)   # the caller's future is its event loop's to touch
    except RuntimeError:  # that event loop is closed: nobody waits for the row
        row.cancel()


def check_generates(persona: Persona) -> None:
    """Raise unless `persona` generates (two tokens of a line): a model that loads can still fail to run."""
    quick = persona.settings.with_overrides(max_new_tokens=2)
    persona.generate([persona.line_prompt()], [quick], [0])


def _groups(batch: list[_Job], serving: Persona) -> list[list[tuple[_Job, Persona]]]:
    """The batch's jobs with the persona each runs, grouped by what runs together: the adapters of one shared
    base, or one persona's own model."""
    groups: dict[int, list[tuple[_Job, Persona]]] = {}
    for job in batch:
        persona = job.persona or serving
        backend = persona.backend
        key = id(backend.shared) if isinstance(backend, AdapterBackend) else id(persona)
        groups.setdefault(key, []).append((job, persona))
    return list(groups.values())


def _as_trained(turns: Sequence[tuple[str, str]] | None, speaks_as: str | None,
                speaker: str) -> Sequence[tuple[str, str]] | None:
    """`turns` with the persona's own (under the name it speaks as) under the speaker name it was trained on."""
    if turns is None or not speaks_as or speaks_as == speaker:
        return turns
    return [(speaker if who == speaks_as else who, text) for who, text in turns]


def _name(ref: PersonaRef | None, persona: Persona) -> str:
    return ref.name if ref is not None else persona.name
