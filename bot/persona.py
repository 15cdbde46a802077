"""A `Persona`: a trained artifact plus how to prompt it and how to cut its output.

Prompts are built in the one transcript format (`training.transcript`) from a conversation's recent turns;
replies are cut from the generated token ids at the end marker or where the model starts another speaker's
turn. An empty reply is sampled again a bounded number of times, then a fallback line is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from training import transcript
from training.artifact import ArtifactError, PersonaInfo, load_model, read_persona
from training.generation import GenerationSettings, generate, sample_lines

# What the persona says when every retry produced nothing.
FALLBACK_REPLY = "..."


@dataclass(slots=True)
class Persona:
    info: PersonaInfo
    model: object
    tokenizer: object
    settings: GenerationSettings

    @classmethod
    def load(cls, directory: str | Path, **overrides) -> "Persona":
        """Load and check an artifact; `overrides` replace generation defaults (None keeps the default)."""
        info = read_persona(directory)
        model, tokenizer = load_model(info)
        settings = info.generation.with_overrides(**overrides)
        problems = settings.check()
        if problems:
            raise ArtifactError("bad generation settings: " + "; ".join(problems))
        return cls(info, model, tokenizer, settings)

    @property
    def name(self) -> str:
        return self.info.speaker

    def prompt(self, turns: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of the prompt for a reply to `turns` ((speaker, text), oldest first)."""
        return transcript.build_prompt(self.tokenizer, turns, self.name, self.settings.context_tokens)

    def reply(self, turns: Sequence[tuple[str, str]], *, max_tries: int = 3, seed: int | None = None) -> str:
        """The persona's next turn in a conversation; never empty (falls back after `max_tries`)."""
        prompt = self.prompt(turns)
        for attempt in range(max_tries):
            ids = generate(self.model, self.tokenizer, [prompt], self.settings,
                           seed=None if seed is None else seed + attempt)[0]
            text = self.tokenizer.decode(ids).strip()
            if text:
                return text
        return FALLBACK_REPLY

    def sample(self, n: int, *, start: str = "", seed: int | None = None) -> list[str]:
        """`n` stand-alone lines (no context), each starting with `start` when given."""
        lines = sample_lines(self.model, self.tokenizer, self.name, n, self.settings, start=start, seed=seed)
        return [line or FALLBACK_REPLY for line in lines]

    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
