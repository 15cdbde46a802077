"""The seam every generation backend fits: the `Backend` protocol and the error of an artifact that cannot run
on the chosen backend. The local backends are `bot.inference.backends`', the inference server's
`bot.inference.remote`'s; both import this, neither the other's internals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

from training.artifact import ArtifactError
from training.generation import GenerationSettings


class BackendError(ArtifactError):
    """An artifact that cannot run on the chosen backend here (missing extra, failed conversion)."""


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
                 seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[list[int]]:
        """One reply (token ids, cut at the end of the persona's turn) per prompt."""
        ...


class SubmittingBackend(Backend, Protocol):
    """A backend whose rows wait on the network (an inference server): `submit` hands them over and returns at
    once, one future per row (its reply's ids, or None when the server gave no answer), so that the engine's
    worker never waits for them."""

    def submit(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
               seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[Future]:
        ...
