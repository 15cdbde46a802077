"""The one error type for input the user can fix: it names the file, the place in it and what to do."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Bad input: an unreadable, malformed or unusable export, an unknown speaker, too little data.

    `where` is a place inside the file (``line 12``, ``$.messages[3].author``) and `hint` says what to do.
    The CLI prints `str(error)` and exits non-zero; nothing is written at the output path.
    """

    def __init__(self, path: str | Path | None, message: str, *, where: str | None = None,
                 hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        place = ""
        if self.path:
            place = self.path + (f" ({self.where})" if self.where else "") + ": "
        elif self.where:
            place = f"{self.where}: "
        text = place + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class TrainingError(Exception):
    """A training run that cannot go on (bad settings, a damaged checkpoint, a failed save)."""


class TrainingInterrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint."""

    def __init__(self, step: int, work: Path) -> None:
        super().__init__(f"training interrupted at step {step}; progress is saved in {work}. "
                         "Run the same command again to continue.")
        self.step = step
