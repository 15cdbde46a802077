"""Fine-tune a base model (or train one from scratch) on one speaker's turns and write the artifact.

A training loop that fits in your head (after nanoGPT): packed blocks, loss on responses, AdamW with
warm-up and cosine decay, gradient accumulation and clipping, evaluation on held-out conversations, the
best weights kept, early stop. Work in progress lives in a `.NAME.partial` folder beside the output; an
interrupted run (Ctrl-C, SIGTERM, a crash, a kill) continues from its last checkpoint when the same command
is run again. The artifact appears at the output path only when it is complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training import artifact
from training.dataset import (BLOCK_SIZE, CONTEXT, RESPONSE, Blocks, DatasetConfig, PersonaDataset, attention_mask,
                              build_dataset, fingerprint)
from training.errors import DataError, TrainingError, TrainingInterrupted
from training.fidelity import FIDELITY_LINES, FidelityReport, HeldOutLines, measure_fidelity, split_lines
from training.leak_guard import LeakGuard
from training.formats.base import CONVERSATION_GAP_MINUTES, ImportOptions, conversation_gap_problem
from training.generation import GenerationSettings, sample_lines
from training.loader import Corpus, corpus_kind, load_corpus, single_voice_as
from training.modelling import (PRECISIONS, PRESETS, autocast_dtype, cpu_threads, load_base, lora_target_modules,
                                max_positions, new_model, pick_device, scratch_model)
from training.progress import Progress
from training.terminal_text import shown

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
RUN_FILE = "run.json"


@dataclass(slots=True)
class TrainConfig:
    """Everything a training run depends on. Fields that change the result are part of the resume key."""

    data: list[str]
    speaker: str
    out: Path
    base: str = "gpt2"
    from_scratch: str | None = None
    format: str | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    time_budget_s: float | None = None
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_merge: bool = False    # a LoRA run writes a full model (adapter merged) instead of an adapter artifact
    lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    eval_every: int | None = None
    patience: int = 3
    block_size: int | None = None
    context_tokens: int | None = None
    val_fraction: float = 0.1
    standalone_share: float = 0.1
    min_responses: int = 20
    context_loss_weight: float | None = None
    seed: int = 0
    bots: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)   # tables and data sets: column per role
    conversation_gap_minutes: float = CONVERSATION_GAP_MINUTES
    samples: int = 5
    fidelity_lines: int = FIDELITY_LINES   # lines sampled for persona.json's fidelity report (0: none)
    # Settings that do not change the result:
    precision: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    restart: bool = False
    checkpoint_every_s: float = 120.0

    def check(self) -> list[str]:
        """Problems with the settings, one line each."""
        # inf overflows the step planning and nan passes no comparison (the checks below would misreport
        # it): any number that is not finite is named on its own, before the rest are looked at.
        options = {"time_budget_s": "--time-budget", "checkpoint_every_s": "--checkpoint-every",
                   "conversation_gap_minutes": "--conversation-gap"}
        not_finite = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                option = options.get(f.name, "--" + f.name.replace("_", "-"))
                not_finite.append(f"{option} must be a finite number, not {value}")
        if not_finite:
            return not_finite
        problems = []
        if self.from_scratch is not None and self.from_scratch not in PRESETS:
            problems.append(f"--from-scratch must be one of: {', '.join(PRESETS)}")
        if self.from_scratch and self.lora:
            problems.append("--lora adapts a pretrained base; it makes no sense with --from-scratch")
        if self.lora_merge and not self.lora:
            problems.append("--lora-merge merges a LoRA adapter: it needs --lora")
        if not self.epochs > 0:
            problems.append("--epochs must be above 0")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "block_size"):
            value = getattr(self, name, None)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr is not None and not self.lr > 0:
            problems.append("--lr must be above 0")
        if not 0 < self.val_fraction < 1:
            problems.append("--val-fraction must be between 0 and 1")
        if not 0 <= self.standalone_share < 1:
            problems.append("--standalone-share must be at least 0 and below 1")
        if not 0 <= self.warmup < 1:
            problems.append("--warmup must be a share of the steps, at least 0 and below 1")
        if self.context_loss_weight is not None and not 0 <= self.context_loss_weight <= 1:
            problems.append("--context-loss-weight must be between 0 and 1")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            problems.append("--time-budget must be above 0")
        if self.patience < 1:
            problems.append("--patience must be at least 1")
        gap_problem = conversation_gap_problem(self.conversation_gap_minutes)
        if gap_problem:
            problems.append(gap_problem)
        if self.samples < 0:
            problems.append("--samples must be 0 or more")
        if self.fidelity_lines < 0:
            problems.append("--fidelity-lines must be 0 or more")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of: {', '.join(PRECISIONS)}")
        return problems

    @classmethod
    def default(cls, name: str) -> Any:
        """A setting's default: the command line shows and uses these, never numbers of its own."""
        return next(f.default for f in fields(cls) if f.name == name)

    def effective_context_weight(self) -> float:
        """Loss weight of the other speakers' turns: none when fine-tuning a model that knows the language
        already; some from scratch, where the responses alone are too little text to learn it from."""
        if self.context_loss_weight is not None:
            return self.context_loss_weight
        return 0.5 if self.from_scratch else 0.0

    def resume_key(self, data_fingerprint: str) -> str:
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("threads", "overwrite", "restart", "checkpoint_every_s", "out", "data", "lora_merge")}
        keep["data_fingerprint"] = data_fingerprint
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(slots=True)
class TrainResult:
    out: Path
    steps: int
    stopped: str
    metrics: artifact.Metrics
    persona: artifact.PersonaInfo


# --- loss -----------------------------------------------------------------------------------------------------
def _core(model):
    """The causal LM under a PEFT wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def block_loss(model, blocks: Blocks, context_weight: float, device: torch.device,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Loss of a batch of packed blocks.

    Returns (weighted CE sum, weight sum, CE sum over response tokens, response token count). Logits are
    computed only where a loss falls, which on chat data is a fraction of the positions."""
    ids = blocks.input_ids.to(device)
    segments = blocks.segments.to(device)
    kinds = blocks.kinds.to(device)[:, 1:]
    core = _core(model)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        hidden = core.base_model(input_ids=ids, attention_mask=attention_mask(segments),
                                 position_ids=blocks.positions.to(device)).last_hidden_state
    # A token is predicted from the one before it, never across the border of two packed windows.
    same_window = segments[:, 1:] == segments[:, :-1]
    is_response = (kinds == RESPONSE) & same_window
    weights = torch.where(is_response, 1.0, 0.0)
    if context_weight > 0:
        weights = weights + torch.where((kinds == CONTEXT) & same_window, context_weight, 0.0)
    selected = weights > 0
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = core.get_output_embeddings()(hidden[:, :-1][selected])
    ce = F.cross_entropy(logits.float(), ids[:, 1:][selected], reduction="none")
    w = weights[selected]
    response = is_response[selected]
    return (ce * w).sum(), w.sum(), ce[response].sum(), int(response.sum())


@torch.no_grad()
def evaluate(model, blocks: Blocks, batch_size: int, device: torch.device,
             dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Mean cross-entropy on the response tokens of `blocks` (the held-out responses), and their count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        _, _, ce, n = block_loss(model, blocks.subset(slice(start, start + batch_size)), 0.0, device, dtype)
        total += float(ce)
        count += n
    model.train(was_training)
    return (total / count if count else float("nan")), count


def perplexity(loss: float) -> float:
    return float(math.exp(loss)) if loss < 50 else float("inf")


def lr_at(step: int, total: int, peak: float, warmup_steps: int, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak` at `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --- the run --------------------------------------------------------------------------------------------------
class _StopFlag:
    """Ctrl-C and SIGTERM ask the loop to stop at the next step boundary (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run (or resume) a training run and write the artifact at `cfg.out`: prepare -> loop -> finish.

    Raises `DataError` for bad input, `TrainingError` for impossible settings, `TrainingInterrupted` when
    stopped by a signal (a checkpoint is saved first)."""
    run = _prepare(cfg, progress or Progress("none"))
    _loop(run)
    return _finish(run)


@dataclass(slots=True)
class _RunState:
    """The part of a run that changes as it goes; saved in every checkpoint (its fields are the format)."""

    total: int
    step: int = 0
    elapsed: float = 0.0
    best_val: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    stopped: str | None = None
    budget_limited: bool = False  # the time budget, not the epochs or --max-steps, set the run's length
    train_history: list = field(default_factory=list)
    val_history: list = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    """One training run: its settings, data, model and optimizer, and its `_RunState`."""

    cfg: TrainConfig
    progress: Progress
    out: Path
    work: Path
    device: torch.device
    dtype: torch.dtype | None
    corpus: Corpus
    data_fp: str
    model: Any
    tokenizer: Any
    base_label: str
    dataset: PersonaDataset
    context_tokens: int
    base_metrics: dict[str, Any]
    optimizer: torch.optim.Optimizer
    peak_lr: float
    step_limit: int           # the length the epochs and --max-steps allow (a time budget may cut it short)
    micro_per_epoch: int
    state: _RunState

    @property
    def context_weight(self) -> float:
        return self.cfg.effective_context_weight()

    def save_checkpoint(self) -> None:
        _atomic_save({"model": _trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                      "rng": torch.get_rng_state(), "run": asdict(self.state), "base_metrics": self.base_metrics},
                     self.work / CHECKPOINT)


# --- prepare --------------------------------------------------------------------------------------------------
def _prepare(cfg: TrainConfig, progress: Progress) -> _Run:
    """Check the settings, read the data, load the model, build the examples and the optimizer, and resume
    from the checkpoint of an interrupted run of the same command."""
    out = _output_path(cfg)
    torch.set_num_threads(cpu_threads(cfg.threads))
    device = pick_device()
    dtype = autocast_dtype(device, cfg.precision)
    corpus = _read_corpus(cfg, progress)
    data_fp = fingerprint(corpus.conversations)
    key = cfg.resume_key(data_fp)
    work = out.parent / f".{out.name}.partial"
    saved = _open_work_dir(work, key, cfg)
    model, tokenizer, base_label = _load_model(cfg, corpus, work, saved is not None, progress)
    dataset, context_tokens = _build_examples(cfg, corpus, model, tokenizer, progress)

    model.to(device)
    if saved is None:
        progress.phase("measuring the base model", "validation loss before training")
        base_loss, val_tokens = evaluate(model, dataset.val, cfg.batch_size, device, dtype)
        base_metrics = {"val_loss": base_loss, "val_perplexity": perplexity(base_loss), "val_tokens": val_tokens}
    else:
        base_metrics = saved["base_metrics"]
    if cfg.lora:
        model = _wrap_lora(model, cfg)
    optimizer, peak_lr = _optimizer(model, cfg)

    micro_per_epoch = math.ceil(len(dataset.train) / cfg.batch_size)
    epoch_steps = max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    step_limit = min(epoch_steps, cfg.max_steps or epoch_steps)
    run = _Run(cfg, progress, out, work, device, dtype, corpus, data_fp, model, tokenizer, base_label, dataset,
               context_tokens, base_metrics, optimizer, peak_lr, step_limit, micro_per_epoch, _RunState(step_limit))
    if saved is not None:
        _resume(run, saved)
    else:
        _start_work_dir(run, key)
    return run


def _output_path(cfg: TrainConfig) -> Path:
    """The artifact's absolute path, once the settings are good and `--overwrite` allows what is there."""
    problems = cfg.check()
    if problems:
        raise TrainingError("; ".join(problems))
    out = Path(cfg.out).expanduser().absolute()
    if out.exists() and not cfg.overwrite:
        raise TrainingError(f"{out} already exists; pass --overwrite to replace it (it is replaced only "
                            "when the new artifact is complete)")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out} is a file; the output must be a directory path")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _read_corpus(cfg: TrainConfig, progress: Progress) -> Corpus:
    progress.phase("reading exports", ", ".join(cfg.data))
    options = ImportOptions.from_user(cfg.bots, cfg.conversation_gap_minutes, cfg.exclude, cfg.columns)
    # The persona's own speaker is never left out, whoever took their name as a nickname.
    corpus = load_corpus(cfg.data, format=cfg.format, options=options, protect=[cfg.speaker])
    return single_voice_as(corpus, cfg.speaker)   # posts that name no speaker are the trained voice's


def _build_examples(cfg: TrainConfig, corpus: Corpus, model, tokenizer,
                    progress: Progress) -> tuple[PersonaDataset, int]:
    """The packed training and validation blocks, and the context budget they were cut with."""
    positions = max_positions(model)
    block = cfg.block_size or min(positions, BLOCK_SIZE)
    if block > positions:
        raise TrainingError(f"--block-size {block} is longer than the model's {positions} positions")
    context_tokens = cfg.context_tokens if cfg.context_tokens is not None else block // 2
    if context_tokens >= block:
        raise TrainingError(f"--context-tokens ({context_tokens}) must be smaller than the block size ({block})")
    dataset_config = DatasetConfig(context_tokens=context_tokens, block_size=block,
                                   val_fraction=cfg.val_fraction, standalone_share=cfg.standalone_share,
                                   min_responses=cfg.min_responses, seed=cfg.seed)
    progress.phase("building examples", f"speaker {cfg.speaker!r}")
    dataset = build_dataset(corpus.conversations, cfg.speaker, tokenizer, dataset_config,
                            context_weighted=cfg.effective_context_weight() > 0)
    progress.phase("examples ready", _describe(dataset), **dataset.stats)
    return dataset, context_tokens


def _optimizer(model, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, float]:
    """AdamW with weight decay on the matrices only, and its peak learning rate."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    peak_lr = cfg.lr or (PRESETS[cfg.from_scratch].lr if cfg.from_scratch else (2e-4 if cfg.lora else 5e-5))
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=peak_lr,
                                  betas=(0.9, 0.95))
    return optimizer, peak_lr


def _resume(run: _Run, saved: dict) -> None:
    run.state = _RunState(**saved["run"])
    _load_trainable(run.model, saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    run.progress.phase("resuming", f"from step {run.state.step} of {run.state.total}")


def _start_work_dir(run: _Run, key: str) -> None:
    """The work folder appears only now that the data and settings are known to be good."""
    try:
        run.work.mkdir(parents=True)
        _write_json(run.work / RUN_FILE, {"key": key, "out": str(run.out), "started": _now()})
        if run.cfg.from_scratch:
            run.tokenizer.save_pretrained(run.work / "tokenizer")  # a resumed run must use the very same tokenizer
    except OSError as e:
        shutil.rmtree(run.work, ignore_errors=True)
        raise _write_failed("the training folder", run.work, e, "make room, then run the same command again") from e


# --- policies -------------------------------------------------------------------------------------------------
def _eval_interval(cfg: TrainConfig, total: int) -> int:
    """Steps between evaluations: --eval-every, or about eight evaluations a run (at most 500 steps apart)."""
    return cfg.eval_every or max(1, min(500, total // 8))


class _TimeBudget:
    """--time-budget sets the run's length from the measured speed (evaluations included), so that warm-up
    and cosine decay fit the time available; re-measured at every evaluation."""

    def __init__(self, cfg: TrainConfig, state: _RunState) -> None:
        self.seconds = cfg.time_budget_s
        self.first_step = state.step
        self.started = time.monotonic()
        self.elapsed_before = state.elapsed

    def tick(self, state: _RunState) -> None:
        state.elapsed = self.elapsed_before + (time.monotonic() - self.started)

    def should_replan(self, step: int, eval_every: int) -> bool:
        return self.seconds is not None and (step == self.first_step + 5 or step % eval_every == 0)

    def replan(self, state: _RunState, step_limit: int) -> None:
        per_step = (time.monotonic() - self.started) / (state.step - self.first_step)
        fits = state.step + int((self.seconds - state.elapsed) / per_step)
        state.total = max(state.step + 1, min(fits, step_limit))
        state.budget_limited = fits < step_limit

    def spent(self, state: _RunState) -> bool:
        """The budget ran out before the planned end."""
        return self.seconds is not None and state.elapsed >= self.seconds and state.step < state.total


def _out_of_patience(cfg: TrainConfig, state: _RunState) -> bool:
    """Early stop: --patience evaluations in a row without a new best validation loss."""
    return state.bad_evals >= cfg.patience


class _CheckpointCadence:
    """A checkpoint every --checkpoint-every seconds while the run goes on (the end saves its own)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self, state: _RunState) -> bool:
        return time.monotonic() - self.last >= self.every_s and state.step < state.total

    def saved(self) -> None:
        self.last = time.monotonic()


# --- the loop -------------------------------------------------------------------------------------------------
def _loop(run: _Run) -> None:
    """Optimizer steps until the planned total, an early stop, the time budget or a stop request."""
    cfg, state, progress = run.cfg, run.state, run.progress
    run.model.train()
    eval_every = _eval_interval(cfg, state.total)
    budget = _TimeBudget(cfg, state)
    cadence = _CheckpointCadence(cfg.checkpoint_every_s)
    train_loss = state.train_history[-1][1] if state.train_history else float("nan")
    progress.start(state.total, state.step)

    with _StopFlag() as stop:
        while state.step < state.total and state.stopped is None:
            # one optimizer step (gradient accumulation over micro-batches)
            step_lr = lr_at(state.step, state.total, run.peak_lr, max(1, int(cfg.warmup * state.total)))
            loss = _train_step(run, step_lr)
            state.step += 1
            budget.tick(state)
            if loss is not None:   # a batch of other speakers' text only (from scratch) has no response loss
                train_loss = loss
                state.train_history.append((state.step, train_loss))

            # the time budget re-plans the run's length from the measured speed
            if budget.should_replan(state.step, eval_every):
                budget.replan(state, run.step_limit)
                eval_every = _eval_interval(cfg, state.total)
                progress.set_total(state.total)
            progress.step(state.step, train_loss, step_lr)

            # evaluate; stop early when out of patience or out of time
            if state.step % eval_every == 0 or state.step >= state.total:
                _evaluate_step(run)
                if _out_of_patience(cfg, state):
                    state.stopped = "early-stop"
            if budget.spent(state):
                _evaluate_step(run)
                state.stopped = "time-budget"

            # Ctrl-C or SIGTERM: save and stop; otherwise a checkpoint now and then
            if stop.requested:
                run.save_checkpoint()
                progress.close()
                raise TrainingInterrupted(state.step, run.work)
            if cadence.due(state):
                run.save_checkpoint()
                cadence.saved()


def _train_step(run: _Run, step_lr: float) -> float | None:
    """One optimizer step at `step_lr`; the mean loss on its response tokens (None when it had none)."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = step_lr
    run.optimizer.zero_grad(set_to_none=True)
    resp_sum, resp_count = 0.0, 0
    for micro in range(cfg.grad_accum):
        batch = _micro_batch(run.dataset.train, run.state.step * cfg.grad_accum + micro, cfg.batch_size,
                             run.micro_per_epoch, cfg.seed)
        weighted, weight, ce, n = block_loss(run.model, batch, run.context_weight, run.device, run.dtype)
        if float(weight) > 0:
            (weighted / weight / cfg.grad_accum).backward()
        resp_sum += float(ce.detach())
        resp_count += n
    if cfg.clip:
        torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], cfg.clip)
    run.optimizer.step()
    return resp_sum / resp_count if resp_count else None


def _evaluate_step(run: _Run) -> None:
    """Validation loss now (once per step); a new best is kept in `best.pt`, otherwise patience runs down."""
    state = run.state
    if state.val_history and state.val_history[-1][0] == state.step:
        return
    val_loss, _ = evaluate(run.model, run.dataset.val, run.cfg.batch_size, run.device, run.dtype)
    state.val_history.append((state.step, val_loss))
    best = val_loss < state.best_val
    if best:
        state.best_val, state.best_step, state.bad_evals = val_loss, state.step, 0
        _atomic_save(_trainable_state(run.model), run.work / BEST)
    else:
        state.bad_evals += 1
    run.progress.evaluation(state.step, val_loss, best)


# --- finish ---------------------------------------------------------------------------------------------------
def _finish(run: _Run) -> TrainResult:
    """Say why the run stopped, save its final state, take the best weights and write the artifact."""
    cfg, state = run.cfg, run.state
    if state.stopped is None:
        if state.budget_limited:
            state.stopped = "time-budget"
        else:
            state.stopped = "max-steps" if cfg.max_steps and state.step >= cfg.max_steps else "completed"
    # The final state is saved too: if writing the artifact fails, the same command finishes quickly.
    run.save_checkpoint()
    run.progress.close()

    if (run.work / BEST).exists():
        _load_trainable(run.model, torch.load(run.work / BEST, map_location="cpu", weights_only=True))
    if cfg.lora and cfg.lora_merge:
        run.model = run.model.merge_and_unload()
    run.model.eval()
    trained = artifact.LossFigures(state.best_val, perplexity(state.best_val), run.base_metrics["val_tokens"])
    metrics = artifact.Metrics(artifact.LossFigures.from_json(run.base_metrics), trained, state.best_step)

    run.progress.phase("writing artifact", str(run.out))
    persona = _write_artifact(run, metrics)
    shutil.rmtree(run.work, ignore_errors=True)
    run.progress.done(artifact=str(run.out), steps=state.step, stopped=state.stopped, metrics=metrics.to_json())
    return TrainResult(run.out, state.step, state.stopped, metrics, persona)


def _write_artifact(run: _Run, metrics: artifact.Metrics) -> artifact.PersonaInfo:
    """Build the artifact in a temporary sibling and rename it into place; returns its persona.json.

    A failed write leaves nothing of it behind; the run's final checkpoint in `work` stays for another try."""
    out, cfg, dataset = run.out, run.cfg, run.dataset
    generation = GenerationSettings(context_tokens=run.context_tokens)
    staged = artifact.staging_dir(out)
    try:
        # An unmerged LoRA model samples through its core, where the adapter layers sit in place.
        samples = sample_lines(_core(run.model), run.tokenizer, dataset.speaker.name, cfg.samples, generation,
                               seed=cfg.seed) if cfg.samples else []
        held_out = _held_out(run)
        generated = _fidelity_lines(run, generation) if cfg.fidelity_lines and held_out is not None else None
        _save_model(run, staged)
        index_size = artifact.write_training_text(staged, dataset.responses(), dataset.context_texts())
        if held_out is not None:     # the blind quiz's real lines
            artifact.write_held_out(staged, held_out.persona_heldout, cfg.seed)
        artifact.plot_losses(staged / artifact.LOSS_PLOT, _thin(run.state.train_history), run.state.val_history,
                             f"{dataset.speaker.name} ({run.base_label})")
        persona = _persona_info(run, metrics, generation, samples, index_size)
        persona.write(staged)
        if generated is not None:     # copying is counted by the guard the bot will build from these files
            persona = replace(persona, fidelity=_fidelity(run, staged, generated, held_out))
            persona.write(staged)
        artifact.commit(staged, out)
    except BaseException as e:
        shutil.rmtree(staged, ignore_errors=True)
        from safetensors import SafetensorError   # how safetensors reports a failed write (a full disk)

        if isinstance(e, (OSError, SafetensorError)):   # a full disk, a read-only folder: a clear error
            kept = f"the artifact already at {out} is untouched; " if out.exists() else ""
            raise _write_failed("the artifact", out, e, f"{kept}the trained model is saved in {run.work}: make "
                                "room, then run the same command again to finish quickly") from e
        raise
    return persona


def _held_out(run: _Run) -> HeldOutLines | None:
    """This run's own held-out real lines (`training.fidelity.split_lines`), for the fidelity report and the
    blind quiz; None (said) where none can be held out."""
    cfg = run.cfg
    try:
        return split_lines(run.corpus.conversations, cfg.speaker, val_fraction=cfg.val_fraction, seed=cfg.seed,
                           unit_responses=run.dataset.config.unit_responses)
    except DataError as e:
        run.progress.phase("fidelity not measured, no quiz lines", str(e))
        return None


def _fidelity_lines(run: _Run, generation: GenerationSettings) -> list[str]:
    """For the fidelity report (training.fidelity): lines the trained model samples with the persona's settings
    and the run's seed."""
    cfg = run.cfg
    run.progress.phase("measuring fidelity", f"{cfg.fidelity_lines} sampled lines against held-out ones")
    return sample_lines(_core(run.model), run.tokenizer, run.dataset.speaker.name, cfg.fidelity_lines,
                        generation, seed=cfg.seed)


def _fidelity(run: _Run, staged: Path, generated: list[str], held_out: HeldOutLines) -> FidelityReport | None:
    """The report of `generated` against `held_out`, copying counted by the leak guard of the artifact being
    built (`staged`: its training-text index and its bases', as the bot reads them)."""
    started = time.monotonic()
    guard = LeakGuard.from_artifact(staged)
    try:
        report = measure_fidelity(generated, held_out, persona=run.dataset.speaker.name, seed=run.cfg.seed,
                                  copied=lambda line: guard.check(line) is not None)
    except ValueError as e:
        run.progress.phase("fidelity not measured", str(e))
        return None
    run.progress.phase("fidelity measured", f"{report.summary()} ({time.monotonic() - started:.1f} s)")
    return report


def _save_model(run: _Run, staged: Path) -> None:
    """The model and tokenizer into the artifact being built. A LoRA run that is not merged saves peft's
    adapter files (megabytes) and the base's config.json (the model's shape, which the bot reads)."""
    run.model.save_pretrained(staged)
    if run.cfg.lora and not run.cfg.lora_merge:
        _core(run.model).config.save_pretrained(staged)
        (staged / "README.md").unlink(missing_ok=True)   # peft's empty model card template
    run.tokenizer.save_pretrained(staged)


def _recorded_base(cfg: TrainConfig) -> str | None:
    """The base as persona.json names it: a hub id as given, a local base by its absolute path. An adapter
    loads its base from there again, and the leak guard reads a base persona's training text from there
    (`artifact.shaping_artifacts`), whatever the working directory then."""
    if cfg.from_scratch:
        return None
    local = Path(cfg.base).expanduser()
    return str(local.absolute()) if local.exists() else cfg.base


def _load_model(cfg: TrainConfig, corpus: Corpus, work: Path, resuming: bool, progress: Progress):
    """(model, tokenizer, label of the base): a pretrained base, or a fresh model from scratch whose tokenizer
    is trained on the corpus (or reloaded from the interrupted run, so that the token ids stay the same)."""
    if not cfg.from_scratch:
        progress.phase("loading base model", cfg.base)
        model, tokenizer = load_base(cfg.base)
        return model, tokenizer, cfg.base
    if resuming and (work / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        progress.phase("loading tokenizer", "from the interrupted run")
        tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
        model = scratch_model(cfg.from_scratch, tokenizer, cfg.seed)
    else:
        preset = PRESETS[cfg.from_scratch]
        progress.phase("training tokenizer", f"{preset.vocab_size} tokens, {cfg.from_scratch} model "
                       f"({preset.describe()})")
        model, tokenizer = new_model(cfg.from_scratch, _corpus_texts(corpus), seed=cfg.seed)
    return model, tokenizer, f"from scratch ({cfg.from_scratch})"


def _micro_batch(blocks: Blocks, index: int, batch_size: int, per_epoch: int, seed: int) -> Blocks:
    """The `index`-th micro-batch of an endless, per-epoch shuffled stream (same order after a resume)."""
    epoch, i = divmod(index, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(blocks), generator=generator)
    return blocks.subset(order[i * batch_size:(i + 1) * batch_size])


def _trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights training changes (all of them, or only the LoRA adapters), on the CPU."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in names}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    missing = set(state) - set(model.state_dict())
    if missing:
        raise TrainingError(f"the checkpoint does not fit this model ({len(missing)} unknown weights); "
                            "run again with --restart")
    model.load_state_dict(state, strict=False)


def _atomic_save(obj: Any, path: Path) -> None:
    """Write `obj` beside `path` and rename it into place: a failed write (a full disk) leaves the previous
    file whole and nothing half-written behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    # torch's zip writer reports a failed write as a RuntimeError that names no cause.
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous one is kept; " if path.exists() else ""
        raise _write_failed("the checkpoint", path, e, f"{kept}make room, then run the same command again "
                            "to continue from the last saved step") from e


def _write_failed(what: str, path: Path, error: BaseException, then: str) -> TrainingError:
    """One message for a save that failed: what, where, why, how much room is left there, what to do."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    reason = error.strerror if isinstance(error, OSError) and error.strerror else f"the write failed ({detail})"
    try:
        room = f" ({shutil.disk_usage(path.parent).free / 1e6:.1f} MB free there)"
    except OSError:
        room = ""
    return TrainingError(f"cannot write {what} {path}: {reason}{room}; {then}")


def _open_work_dir(work: Path, key: str, cfg: TrainConfig) -> dict | None:
    """The checkpoint to resume from (None for a fresh start, with any leftover folder removed); refuses
    to mix two different runs."""
    if work.exists():
        try:
            previous = json.loads((work / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        checkpoint = work / CHECKPOINT
        if cfg.restart or previous is None or not checkpoint.exists():
            shutil.rmtree(work)
        elif previous.get("key") != key:
            raise TrainingError(f"an interrupted training run with other data or settings is saved in {work}; "
                                "run the same command as before to continue it, or add --restart to discard it")
        else:
            try:
                return torch.load(checkpoint, map_location="cpu", weights_only=False)
            except Exception as e:  # a checkpoint cut short by a kill during the write cannot be trusted
                raise TrainingError(f"the checkpoint in {work} is damaged ({e}); add --restart to start over") from e
    return None


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05, task_type="CAUSAL_LM",
                        target_modules=lora_target_modules(model))
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise TrainingError(f"cannot add LoRA adapters to this base model: {e}") from e


def _corpus_texts(corpus: Corpus):
    for conversation in corpus.conversations:
        for message in conversation.messages:
            yield f"{message.speaker}: {message.text}\n"


def _describe(dataset: PersonaDataset) -> str:
    s = dataset.stats
    return (f"{shown(s['speaker'])}: {s['train']['responses']} training and {s['val']['responses']} validation turns "
            f"from {s['conversations']} conversations; {s['train']['blocks']} blocks of "
            f"{dataset.config.block_size} tokens, {s['train']['packing_efficiency']:.0%} filled")


def _persona_info(run: _Run, metrics: artifact.Metrics, generation: GenerationSettings, samples: list[str],
                  index_size: int) -> artifact.PersonaInfo:
    """persona.json for the finished run."""
    cfg, corpus, dataset, state = run.cfg, run.corpus, run.dataset, run.state
    speaker = dataset.speaker
    sources = artifact.DataSummary(
        fingerprint=run.data_fp, files=[f.to_json() for f in corpus.files], conversations=len(corpus.conversations),
        messages=sum(len(c.messages) for c in corpus.conversations), speaker_messages=speaker.messages,
        train=dataset.stats["train"], val=dataset.stats["val"], training_text_entries=index_size)
    training = artifact.TrainingSummary(
        steps=state.step, planned_steps=state.total, stopped=state.stopped, best_step=state.best_step,
        epochs=cfg.epochs, max_steps=cfg.max_steps, time_budget_s=cfg.time_budget_s, lr=run.peak_lr,
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, warmup=cfg.warmup, weight_decay=cfg.weight_decay,
        clip=cfg.clip, patience=cfg.patience, seed=cfg.seed, context_loss_weight=cfg.effective_context_weight(),
        device=run.device.type, precision="bf16" if run.dtype == torch.bfloat16 else "fp32",
        seconds=round(state.elapsed, 1))
    return artifact.PersonaInfo(
        path=run.out, speaker=speaker.name, generation=generation, metrics=metrics,
        speaker_names=sorted(speaker.names), speaker_ids=sorted(speaker.ids),
        base=_recorded_base(cfg), from_scratch=cfg.from_scratch, base_label=run.base_label,
        lora=artifact.LoraInfo(cfg.lora_r, cfg.lora_alpha, merged=cfg.lora_merge) if cfg.lora else None,
        corpus_kind=corpus_kind(corpus), created_at=_now(), sources=sources, dataset=dataset.config,
        training=training, history={"train": _thin(state.train_history), "val": state.val_history}, samples=samples)


def _thin(points: list, keep: int = 400) -> list:
    """At most `keep` points, evenly spaced, last one included."""
    if len(points) <= keep:
        return [list(p) for p in points]
    stride = len(points) / keep
    picked = [points[int(i * stride)] for i in range(keep - 1)] + [points[-1]]
    return [list(p) for p in picked]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "train", "evaluate", "block_loss", "DataError"]
