"""Progress of long work: a bar with loss and ETA on a terminal, JSON lines for a parent process, plain
log lines otherwise. Progress goes to stderr except in JSON mode, where stdout carries only JSON lines.

The JSON lines are a contract between a training child and the bot that started it: `Progress` writes the
events and `ProgressState` reads them back, here in one module, so that the two sides cannot drift."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

MODES = ("auto", "bar", "json", "log", "none")
# The events of JSON mode, one object per line: {"event": NAME, ...fields}.
PHASE, START, STEP, EVAL, DONE = "phase", "start", "step", "eval", "done"


class Progress:
    """Reports phases, training steps and evaluations in one of the modes above."""

    def __init__(self, mode: str = "auto", *, stream: TextIO | None = None, log_every_s: float = 10.0) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
        err = sys.stderr
        if mode == "auto":
            mode = "bar" if err.isatty() else "log"
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else err)
        self.log_every_s = log_every_s
        self._bar = None
        self._last_log = 0.0
        self._t0 = time.monotonic()
        self._total = 0
        self._start_step = 0

    # --- events ----------------------------------------------------------------------------------------------
    def phase(self, name: str, detail: str = "", **fields: Any) -> None:
        """A stage of the work starts (loading data, training the tokenizer, evaluating...)."""
        if self.mode == "json":
            self._json({"event": PHASE, "phase": name, "detail": detail, **fields})
        elif self.mode != "none":
            self._write(f"{name}{': ' + detail if detail else ''}")

    def start(self, total_steps: int, start_step: int = 0) -> None:
        self._total = total_steps
        self._start_step = start_step
        self._t0 = time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=self.stream,
                             dynamic_ncols=True, desc="training")
        elif self.mode == "json":
            self._json({"event": START, "total_steps": total_steps, "step": start_step})

    def set_total(self, total_steps: int) -> None:
        """The run got a new length (a time budget measured the speed)."""
        self._total = total_steps
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def step(self, step: int, loss: float, lr: float, **fields: Any) -> None:
        eta = self.eta(step)
        if self.mode == "bar" and self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            self._bar.refresh()
        elif self.mode == "json":
            self._json({"event": STEP, "step": step, "total_steps": self._total, "loss": round(loss, 5),
                        "lr": lr, "eta_s": None if eta is None else round(eta, 1), **fields})
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.log_every_s or step == self._total:
                self._last_log = now
                self._write(f"step {step}/{self._total}  loss {loss:.3f}  "
                            f"eta {format_duration(eta) if eta is not None else '?'}")

    def evaluation(self, step: int, val_loss: float, best: bool) -> None:
        if self.mode == "json":
            self._json({"event": EVAL, "step": step, "val_loss": round(val_loss, 5), "best": best})
        elif self.mode != "none":
            self._write(f"step {step}: validation loss {val_loss:.4f}{' (best so far)' if best else ''}")

    def done(self, **fields: Any) -> None:
        self.close()
        if self.mode == "json":
            self._json({"event": DONE, **fields})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def eta(self, step: int) -> float | None:
        done = step - self._start_step
        if done <= 0 or not self._total:
            return None
        return (time.monotonic() - self._t0) / done * max(0, self._total - step)

    # --- output ----------------------------------------------------------------------------------------------
    def _json(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.stream.flush()

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


@dataclass
class ProgressState:
    """What a parent knows of a training child from the JSON lines `Progress` writes: the reading side."""

    phase: str = "starting"
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    eta_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    done: bool = False

    def read_line(self, line: str | bytes) -> bool:
        """Take in one line of the child's output; False (and nothing changed) when it is no event."""
        try:
            event = json.loads(line)
        except ValueError:
            return False
        if not isinstance(event, dict) or "event" not in event:
            return False
        self.apply(event)
        return True

    def apply(self, event: dict[str, Any]) -> None:
        """Take in one event; fields an event lacks keep their last value."""
        kind = event.get("event")
        if kind == PHASE:
            self.phase = str(event.get("phase", self.phase))
        elif kind == START:
            self.phase = "training"
            self.total_steps = event.get("total_steps", self.total_steps)
        elif kind == STEP:
            self.phase = "training"
            self.step = int(event.get("step", self.step))
            self.total_steps = event.get("total_steps", self.total_steps)
            self.loss = event.get("loss", self.loss)
            self.eta_s = event.get("eta_s", self.eta_s)
        elif kind == EVAL:
            self.val_loss = event.get("val_loss", self.val_loss)
        elif kind == DONE:
            self.done = True


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
