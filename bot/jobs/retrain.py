"""Retraining while the bot serves: a child process (`python -m training train ... --progress json`) at low
priority, its progress as JSON lines, then a check of the new artifact and a hot swap. The previous artifact
is kept for /rollback. One retrain at a time; a cancelled, crashed or rejected one leaves the current model
serving and says why. Knows nothing of Discord: the admin cog shows what `progress` reports.

A retrain rebuilds the bot's own persona (PERSONA_MODEL, hot-swapped in the engine) or one registered persona
(`bot.core.personas`): that one is retrained from its own artifact (as a LoRA adapter on the same base when it is
one), loaded beside the others (`Engine.load_persona`), and the registry then points at it, keeping the one
before for its own rollback. Every other persona, the bot's own included, keeps serving untouched.

With the models on an inference server (BACKEND=openai) the training still runs here, where the data is, and
the swap changes what the server serves: a LoRA adapter persona's new artifact is loaded there as a module
at run time (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=true; `bot.inference.remote`), by whichever process
loads it first, and the set-aside artifact's module is unloaded `adapter_retire_s` later, when every process
has followed. A whole-model persona swaps where the server loads a model by its path when asked
(`transformers serve` started without one): the new directory is the model asked for. Where the server cannot
(vLLM's whole model, a server that loads no adapter at run time), the retrain is refused before any training
when the server shows it, or after, keeping the new artifact, and the refusal says what to run instead."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.core.personas import PersonaRef, unload_if_unnamed
from bot.core.store import PersonaEntry, Store, StoreError
from bot.inference.engine import Engine, SwapError
from training.artifact import ArtifactError, Metrics, PersonaInfo, read_persona
from training.dataset import normalise_name
from training.formats.data_dump import DumpRow, write_dump
from training.progress import ProgressState

log = logging.getLogger("personabot.retrain")

CURRENT, PREVIOUS = "current_artifact", "previous_artifact"
# How the child is niced: training must never starve the replies.
CHILD_NICENESS = 10
# With adapters served by an inference server: how long after a swap the module of the artifact set aside is
# unloaded there, so that every bot process has followed the swap first (they hear of it within a second on
# PostgreSQL, and within the 15 s poll of bot.jobs.model_watch otherwise).
ADAPTER_RETIRE_S = 30.0


class RetrainError(Exception):
    """A retrain that could not start or whose result was not used; the message says why."""


class RetrainRejected(RetrainError):
    """The training finished but its artifact was not used: unusable, worse than the current model, or it did
    not load."""


class NotServed(RetrainRejected):
    """The training finished, but the inference server would not serve the new artifact: it is kept (the
    message says where, and what to run to serve it)."""


# How a retrain that started ends (its status in the run table, and what `Retrainer.outcome_observers` are
# told): done (swapped in), failed (the child crashed, or the run could not go on), cancelled (/retrain
# cancel, or the bot stopping), rejected (trained, but the check kept the current model).
RETRAIN_OUTCOMES = ("done", "failed", "cancelled", "rejected")


@dataclass
class RetrainResult:
    artifact: Path
    metrics: Metrics
    previous: Path
    loss_plot: Path | None
    persona: str | None = None      # the registered persona retrained; None: the bot's own


@dataclass(frozen=True, slots=True)
class _Subject:
    """What one retrain rebuilds: the artifact serving now (its persona.json) and whose it is."""

    info: PersonaInfo
    speaker: str                          # the speaker it learns unless one is given
    entry: PersonaEntry | None = None     # a registered persona; None: the bot's own

    @property
    def label(self) -> str | None:
        """What the run's out dir is named after: the registered persona (None: the speaker, as before)."""
        return self.entry.name if self.entry is not None else None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "persona"


class Retrainer:
    def __init__(self, engine: Engine, store: Store, *, data_dir: Path, models_dir: Path,
                 loss_margin: float = 0.05, fidelity_margin: float = 0.10, python: str = sys.executable,
                 extra_args: Sequence[str] = (), include_logged: bool = False,
                 adapter_retire_s: float = ADAPTER_RETIRE_S) -> None:
        self.engine = engine
        self.store = store
        self.data_dir = Path(data_dir)
        self.models_dir = Path(models_dir)
        self.loss_margin = loss_margin
        self.fidelity_margin = fidelity_margin   # attribution share (training.fidelity) a new model may lose
        self.python = python
        self.extra_args = list(extra_args)   # e.g. ["--time-budget", "600"] from the settings
        self.include_logged = include_logged  # also learn from the channel messages in the store
        self.progress: ProgressState | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._cancelled = False
        self._shutting_down = False
        self._lock = asyncio.Lock()
        self.adapter_retire_s = adapter_retire_s
        self._retiring: set[asyncio.Task] = set()      # modules of set-aside adapters, unloaded later
        # Called with each started retrain's outcome (one of RETRAIN_OUTCOMES), e.g. by bot.adapters.metrics; quick.
        self.outcome_observers: list[Callable[[str], None]] = []

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def data_files(self) -> list[Path]:
        if not self.data_dir.is_dir():
            return []
        return sorted(p for p in self.data_dir.iterdir() if p.is_file() and not p.name.startswith("."))

    async def run(self, *, speaker: str | None = None, epochs: float | None = None, force: bool = False,
                  requested_by: int | None = None,
                  on_progress: Callable[[ProgressState], Awaitable[None]] | None = None,
                  progress_message: tuple[int, int] | None = None,
                  persona: PersonaEntry | None = None) -> RetrainResult:
        """Train, check and swap in a new artifact of `persona` (a registered one; None: the bot's own).
        Raises `RetrainError` with the reason when the current model stays. `progress_message` (channel id,
        message id) is recorded with the run, so that a bot restarted mid-run can say there how it ended."""
        if self._lock.locked():
            raise RetrainError("a retrain is already running; wait for it, or cancel it first")
        async with self._lock:
            self._cancelled = False
            self.progress = ProgressState()
            subject = await self._subject(persona)
            await self._check_served(subject.info, "retrain")
            speaker = speaker or subject.speaker
            files, logged = await self._training_files(subject)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            out = (self.models_dir / f"{slug(subject.label or speaker)}-{stamp}").absolute()
            try:
                run_id = await self.store.start_run(requested_by=requested_by, speaker=speaker, epochs=epochs,
                                                    out_path=str(out), progress_message=progress_message)
                if subject.entry is not None and subject.entry.guild_id is not None:
                    # What a server's persona learns is that server's: no other server may register it.
                    await self.store.claim_artifact(out.resolve(), subject.entry.guild_id)
            except StoreError as e:
                _remove_dump(logged)
                raise RetrainError(f"cannot record the run: {e}") from e
            try:
                result = await self._train_check_swap(subject, speaker, epochs, force, files, out, on_progress)
            except RetrainError as e:
                outcome = "cancelled" if self._cancelled else "rejected" if isinstance(e, RetrainRejected) else "failed"
                await self._finish(run_id, outcome, error=str(e))
                if not isinstance(e, NotServed):
                    remove_run_output(out)
                self._tell(outcome)
                raise
            finally:
                _remove_dump(logged)
            await self._finish(run_id, "done", artifact_path=str(out), metrics=result.metrics.to_json())
            self._tell("done")
            return result

    async def _subject(self, persona: PersonaEntry | None) -> _Subject:
        """What this retrain rebuilds: the bot's own persona as it serves now, or the registered `persona`
        as its artifact says (read off the event loop)."""
        if persona is None:
            current = self.engine.persona
            return _Subject(current.info, current.name)
        try:
            info = await asyncio.to_thread(read_persona, persona.artifact_path)
        except ArtifactError as e:
            raise RetrainError(f"the persona {persona.name}'s artifact cannot be read, so it cannot be retrained "
                               f"from it: {e}") from e
        return _Subject(info, info.speaker, persona)

    async def _check_served_artifact(self, artifact: Path, what: str) -> None:
        """`_check_served` for the artifact a rollback goes back to (its persona.json read off the event loop;
        one that cannot be read is the swap's to refuse)."""
        if getattr(self.engine.persona.backend, "serves_elsewhere", False):
            try:
                info = await asyncio.to_thread(read_persona, artifact)
            except ArtifactError:
                return
            await self._check_served(info, what)

    async def _training_files(self, subject: _Subject) -> tuple[list[Path], Path | None]:
        """The exports to train on, and the folder of stored channel messages among them (to remove after)."""
        files = self.data_files()
        logged = await self._dump_logged(subject) if self.include_logged else None
        if logged is not None:
            files += sorted(logged.iterdir())
        if not files:
            _remove_dump(logged)
            raise RetrainError(f"there are no exports in {self.data_dir} to train on; add one (an attachment "
                               "to /retrain start, or a file in TRAIN_DATA_DIR)")
        return files, logged

    def _tell(self, outcome: str) -> None:
        """Tell the outcome observers how a retrain ended; an observer's failure never fails the retrain."""
        for observe in self.outcome_observers:
            try:
                observe(outcome)
            except Exception:
                log.exception("a retrain outcome observer failed")

    async def _dump_logged(self, subject: _Subject) -> Path | None:
        """The store's channel messages (people who opted out left out, the bot's own lines too: it must not
        learn from itself) in the project's own data dump (`training.formats.data_dump`), one conversation per
        channel, with each author's account id, in a temporary folder.

        A server's persona learns from that server's messages only. And a name alone never makes a stored
        message the persona's: one whose author goes by the persona's name from an account the persona was not
        trained on (persona.json's speaker ids) is written under a name that says whose account it is, so that
        anyone can take the name "Bob" without speaking for Bob's persona."""
        guild_id = subject.entry.guild_id if subject.entry is not None else None
        try:
            messages = [m for m in await self.store.all_messages(guild_id=guild_id) if not m.is_bot]
        except StoreError as e:
            raise RetrainError(f"cannot read the stored messages: {e}") from e
        if not messages:
            return None
        folder = self.models_dir / f".logged-{os.getpid()}-{int(time.time() * 1000)}"
        folder.mkdir(parents=True)
        persona_names = {normalise_name(n) for n in [subject.info.speaker, *subject.info.speaker_names]}
        persona_ids = set(subject.info.speaker_ids)

        def author(m) -> str:
            if normalise_name(m.author_name) in persona_names and str(m.author_id) not in persona_ids:
                return f"{m.author_name} (account {m.author_id})"
            return m.author_name

        rows = (DumpRow(f"channel-{m.channel_id}", author(m), str(m.author_id), m.content, m.created_at)
                for m in messages)
        with (folder / "logged-messages.jsonl").open("w", encoding="utf-8") as out:
            write_dump(rows, out)
        return folder

    async def _write_exclusions(self, out: Path) -> Path | None:
        """The people who opted out, by account id and by every name they gave, one per line, in a file
        for the child (an argument list has a size limit and names can look like options)."""
        try:
            people = [str(i) for i in await self.store.opted_out_ids()] + await self.store.opted_out_names()
        except StoreError as e:
            # Training without the opt-outs would break a promise: do not train at all.
            raise RetrainError(f"cannot read who opted out, so not training: {e}") from e
        people = [p for p in dict.fromkeys(p.replace("\n", " ").replace("\r", " ").strip() for p in people) if p]
        if not people:
            return None
        path = out.parent / f".{out.name}.exclude"
        path.write_text("\n".join(people) + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    async def _check_served(self, info: PersonaInfo, what: str, *, after_training: bool = False) -> None:
        """With the models on an inference server (BACKEND=openai) a swap must change what the server serves,
        not only the tokenizer the bot reads (`RemoteBackend.swap_refusal`): an adapter persona swaps where the
        server loads adapters at run time, a whole model where it loads a model by its path. Otherwise
        `RetrainError` says what to run instead: before any training where the server shows it (vLLM), else
        once the new artifact is there (`NotServed`: it is kept)."""
        backend = self.engine.persona.backend
        if getattr(backend, "serves_elsewhere", False):
            refusal = await asyncio.to_thread(backend.swap_refusal, info, what)
            if refusal is not None and after_training:
                raise NotServed(f"{refusal}. The new model is kept at {info.path}")
            if refusal is not None:
                raise RetrainError(refusal)

    def _retire_later(self, old: Path) -> None:
        """After a swap, with adapters on an inference server: unload the set-aside artifact's module there
        once every process has followed (`adapter_retire_s`), unless something names that artifact again by
        then (a rollback)."""
        if getattr(self.engine.persona.backend, "serves_elsewhere", False):
            task = asyncio.get_running_loop().create_task(self._retire(Path(old)))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Path) -> None:
        await asyncio.sleep(self.adapter_retire_s)
        try:
            if self.engine.persona.path.resolve() == old.resolve() or \
                    any(p.artifact_path == old for p in await self.store.personas()):
                return
            names = await asyncio.to_thread(self.engine.persona.backend.retire_adapter, old)
        except Exception as e:   # the module stays loaded: it costs the server a little memory, nothing else
            log.warning("the LoRA module of %s stays loaded on the inference server: %s", old, e)
            return
        if names:
            log.info("unloaded %s (the set-aside %s) from the inference server", ", ".join(names), old.name)

    async def shutdown(self, timeout: float = 60.0) -> None:
        """Stop a running retrain and wait until it has ended (the child is reaped, the run recorded): the
        bot is going down."""
        for task in list(self._retiring):    # a set-aside module stays loaded: harmless
            task.cancel()
        if not self._lock.locked():
            return
        self._shutting_down = True
        await self.cancel()
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    pass
        except TimeoutError:
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()

    async def _finish(self, run_id: int, status: str, **fields) -> None:
        try:
            await self.store.finish_run(run_id, status, **fields)
        except StoreError as e:
            log.warning("training run %s not recorded as %s: %s", run_id, status, e)

    async def _train_check_swap(self, subject: _Subject, speaker: str, epochs: float | None, force: bool,
                                files: list[Path], out: Path, on_progress) -> RetrainResult:
        """Run the training child -> accept its artifact -> swap it in (the bot's own, or the persona's)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        exclusions = await self._write_exclusions(out)
        try:
            code, stderr = await self._run_child(self._child_args(subject.info, speaker, epochs, files, out,
                                                                  exclusions), on_progress)
        finally:
            if exclusions is not None:
                exclusions.unlink(missing_ok=True)   # it lists private names; the child is done with it
        if self._cancelled:
            if self._shutting_down:
                raise RetrainError("the bot is shutting down, so the retrain was stopped")
            raise RetrainError("cancelled; the current model keeps serving")
        if code != 0:
            reason = _last_error(stderr) or f"the training process exited with code {code}"
            raise RetrainError(f"training failed: {reason}")
        info = self._accept(subject.info, out, force)
        await self._check_served(info, "swap in the new model", after_training=True)
        self.progress.phase = "loading the new model"
        if subject.entry is None:
            previous = await self._swap_own(out)
        else:
            previous = await self._swap_registered(subject.entry, out)
        plot = out / "loss.png"
        return RetrainResult(out, info.metrics, previous, plot if plot.is_file() else None,
                             subject.entry.name if subject.entry is not None else None)

    async def _swap_own(self, out: Path) -> Path:
        """Serve `out` as the bot's own persona; the artifact it replaced."""
        try:
            previous = await self.engine.swap(out)
        except SwapError as e:
            raise RetrainRejected(f"the new model did not load: {e}") from e
        await self._remember_swap(out, previous.path)
        self._retire_later(previous.path)
        return previous.path

    async def _swap_registered(self, entry: PersonaEntry, out: Path) -> Path:
        """Point the registered persona at `out` (loaded and checked first), keeping the artifact it served
        for its rollback; the artifact it replaced."""
        try:
            return await self._repoint(entry, out)
        except RetrainError as e:
            raise RetrainRejected(str(e)) from e

    async def _repoint(self, entry: PersonaEntry, new: Path) -> Path:
        """Load `new` as `entry`'s persona (SwapError: nothing changes), then make the registry name it, keeping
        the artifact it named as the one before; unload that one when nothing names it any more. The persona
        is read again first: it may have been removed, or changed by another process, meanwhile."""
        fresh = await self._fresh(entry)
        try:
            await self.engine.load_persona(replace(PersonaRef.of(fresh), artifact=new))
        except SwapError as e:
            await unload_if_unnamed(self.store, self.engine.forget, new)
            raise RetrainError(f"the model {new.name} of {fresh.name} did not load: {e}") from e
        old = fresh.artifact_path
        try:
            moved = await self.store.set_persona_artifact(fresh.id, new, previous_path=old)
        except StoreError as e:
            moved = None
            log.warning("persona %s not pointed at %s: %s", fresh.name, new, e)
        if moved is None:
            await unload_if_unnamed(self.store, self.engine.forget, new)
            raise RetrainError(f"the persona {fresh.name} could not be pointed at the new model (removed "
                               "meanwhile, or the database refused); nothing changed")
        await unload_if_unnamed(self.store, self.engine.forget, old)
        self._retire_later(old)
        return old

    async def _fresh(self, entry: PersonaEntry) -> PersonaEntry:
        try:
            fresh = await self.store.persona(entry.id)
        except StoreError as e:
            raise RetrainError(f"cannot read the persona {entry.name}: {e}") from e
        if fresh is None:
            raise RetrainError(f"the persona {entry.name} was removed meanwhile; nothing changed")
        return fresh

    def _child_args(self, current: PersonaInfo, speaker: str, epochs: float | None, files: list[Path], out: Path,
                    exclusions: Path | None) -> list[str]:
        """The training child's command line: from the current artifact's base (or from-scratch preset) again;
        a LoRA adapter again as an adapter on the same base."""
        # `--opt=value`: a value that starts with "-" (a speaker's name) is never read as an option.
        args = [self.python, "-m", "training", "--data", *map(str, files), f"--speaker={speaker}",
                f"--out={out}", "--progress", "json", f"--stop-with-parent={os.getpid()}"]
        if current.is_adapter:
            args += ["--lora", f"--base={current.base}"]
        elif current.from_scratch:
            args += ["--from-scratch", current.from_scratch]
        else:
            args += [f"--base={current.base or 'gpt2'}"]
        if epochs is not None:
            args += ["--epochs", str(epochs)]
        if exclusions is not None:
            args += [f"--exclude-file={exclusions}"]
        log.info("retraining %s on %d file(s) into %s", speaker, len(files), out)
        return args + self.extra_args

    async def _run_child(self, args: list[str], on_progress) -> tuple[int, str]:
        """Run the training child at low priority, reporting its progress events; (exit code, stderr)."""
        try:
            # No preexec_fn: forking this threaded process to run Python in the child is slow and unsafe; the
            # child asks for its own SIGTERM when the bot dies (--stop-with-parent), and is niced from here.
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_environment())
        except OSError as e:
            raise RetrainError(f"cannot start the training process: {e}") from e
        try:
            # Training must never starve the replies.
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, CHILD_NICENESS)
        except OSError as e:
            log.warning("the training process runs at normal priority (%s)", e)
        errors = asyncio.ensure_future(self._proc.stderr.read())
        async for raw in self._proc.stdout:
            if not self.progress.read_line(raw):
                continue
            if self.progress.done:
                self.progress.phase = "checking the new model"
            if on_progress is not None:
                try:
                    await on_progress(self.progress)
                except Exception:  # showing progress must never stop the training
                    log.exception("progress report failed")
        code = await self._proc.wait()
        self._proc = None
        return code, (await errors).decode("utf-8", "replace")

    def _accept(self, current: PersonaInfo, out: Path, force: bool) -> PersonaInfo:
        """The new artifact's persona.json, if it may replace the current one: it reads, its validation loss
        is not worse than the current one's by more than the loss margin, and the share of its lines taken for
        the person (its fidelity report's attribution) is not smaller than the current one's by more than the
        fidelity margin (unless `force`; a model without a report is not compared)."""
        try:
            info = read_persona(out)
        except ArtifactError as e:
            raise RetrainRejected(f"the new model is not usable: {e}") from e
        new_loss, old_loss = info.trained_val_loss, current.trained_val_loss
        if not force and _finite(new_loss) and _finite(old_loss) and new_loss > old_loss + self.loss_margin:
            raise RetrainRejected(f"the new model's validation loss {new_loss:.3f} is worse than the current "
                                  f"{old_loss:.3f} by more than {self.loss_margin}; kept the current one (use "
                                  "force to swap anyway)")
        new_share = info.fidelity.attribution if info.fidelity else None
        old_share = current.fidelity.attribution if current.fidelity else None
        if not force and new_share is not None and old_share is not None and \
                new_share < old_share - self.fidelity_margin:
            raise RetrainRejected(f"the new model's lines are taken for {info.speaker} in {new_share:.0%} of lines, "
                                  f"the current one's in {old_share:.0%}: fewer by more than "
                                  f"{self.fidelity_margin:.0%} (RETRAIN_FIDELITY_MARGIN); kept the current one (use "
                                  "force to swap anyway)")
        return info

    async def _remember_swap(self, current: Path, previous: Path) -> None:
        try:
            await self.store.set_setting(CURRENT, str(current))
            await self.store.set_setting(PREVIOUS, str(previous))
        except StoreError as e:
            log.warning("the swap to %s is not recorded (a restart will load the earlier model): %s", current, e)

    async def cancel(self) -> bool:
        """Stop a running retrain (the child saves nothing we keep). False when none is running."""
        if self._proc is None or self._proc.returncode is not None:
            return False
        self._cancelled = True
        self._proc.terminate()
        return True

    async def rollback(self, persona: PersonaEntry | None = None) -> tuple[Path, Path]:
        """Swap `persona` (a registered one; None: the bot's own) back to the artifact it served before;
        returns (now serving, set aside). Nothing changes when that artifact is gone or does not load."""
        if self._lock.locked():
            raise RetrainError("a retrain is running; cancel it or wait before rolling back")
        if persona is not None:
            return await self._rollback_registered(persona)
        previous = await self.store.get_setting(PREVIOUS)
        if not previous:
            raise RetrainError("there is no previous model to roll back to")
        if not Path(previous).is_dir():
            raise RetrainError(f"the previous model {previous} is gone; nothing was changed")
        await self._check_served_artifact(Path(previous), "roll back")
        try:
            replaced = await self.engine.swap(previous)
        except SwapError as e:
            raise RetrainError(f"the previous model did not load: {e}") from e
        await self._remember_swap(Path(previous), replaced.path)
        self._retire_later(replaced.path)
        return Path(previous), replaced.path

    async def _rollback_registered(self, persona: PersonaEntry) -> tuple[Path, Path]:
        async with self._lock:     # no retrain may start while the registry is repointed
            fresh = await self._fresh(persona)
            previous = fresh.previous_artifact_path
            if previous is None:
                raise RetrainError(f"the persona {fresh.name} has no previous model to roll back to")
            if not previous.is_dir():
                raise RetrainError(f"the previous model of {fresh.name}, {previous}, is gone; nothing was changed")
            await self._check_served_artifact(previous, "roll back")
            aside = await self._repoint(fresh, previous)
            return previous, aside


def remove_run_output(out: Path) -> None:
    """Remove what a run that did not finish left: its artifact folder, the trainer's `.partial` work
    folder beside it, and the list of excluded people."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)
    (out.parent / f".{out.name}.exclude").unlink(missing_ok=True)


async def close_interrupted_runs(store: Store, models_dir: Path) -> list[dict[str, Any]]:
    """At start: runs still marked running belong to a process that is gone. Mark them failed, remove what
    they left half-written (and stored-message dumps), and return them, so that the bot can say in each
    one's progress message how it ended."""
    runs = await store.running_runs()
    await store.fail_interrupted_runs()
    for run in runs:
        if run.get("out_path"):
            remove_run_output(Path(run["out_path"]))
        log.warning("retrain %s was interrupted by a restart; marked failed", run["id"])
    for leftover in Path(models_dir).glob(".logged-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return runs


# Environment variables the training child never gets: it needs no Discord, Twitter or inference secrets.
CHILD_SECRET_PREFIXES = ("DISCORD_", "TWITTER_", "INFERENCE_API_KEY")


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The bot's environment without its secrets, for the training child."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if not k.upper().startswith(CHILD_SECRET_PREFIXES)}


def _remove_dump(folder: Path | None) -> None:
    """Remove a folder of dumped channel messages (see `Retrainer._dump_logged`), if there is one."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _last_error(stderr: str) -> str | None:
    """The child's own error line (`personabot: error: ...`), or its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1][-300:] if lines else None
