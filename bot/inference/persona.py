"""A `Persona`: a trained artifact plus how to prompt it, how to run it and what it must not say.

Prompts are built in the one transcript format (`training.transcript`) from a conversation's recent turns;
replies come back from the backend already cut at the end marker or where the model starts another
speaker's turn (by token ids, never by string length). The artifact's training text feeds the leak guard.
Generation itself is scheduled by `bot.inference.engine.Engine`; a Persona only knows how to do one batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.core.filters import Blocklist, LeakGuard, OutputFilter
from training.leak_guard import NGRAM_WORDS
from bot.inference.backend import Backend
from bot.inference.backends import SharedBases, load_backend
from bot.inference.remote import RemoteConfig
from training import transcript
from training.artifact import ArtifactError, PersonaInfo, read_persona
from training.generation import GenerationSettings

# What the persona says when every try produced nothing usable.
FALLBACK_REPLY = "..."


@dataclass(slots=True)
class Persona:
    info: PersonaInfo
    tokenizer: object
    backend: Backend
    settings: GenerationSettings
    output_filter: OutputFilter
    max_positions: int | None = None

    @classmethod
    def load(cls, directory: str | Path, *, backend: str = "auto", threads: int | None = None,
             blocklist: Blocklist | None = None, leak_ngram_words: int = NGRAM_WORDS,
             remote: RemoteConfig | None = None, bases: SharedBases | None = None, **overrides) -> "Persona":
        """Load and check an artifact. `overrides` replace persona.json's generation defaults (None keeps
        the default); `backend` is one of `bot.inference.backends.BACKENDS`; `remote` (a `bot.inference.remote.RemoteConfig`)
        is where the `openai` backend finds its server; with `bases`, a LoRA adapter shares its base with the
        other adapter personas on it instead of being merged into a base of its own."""
        info = read_persona(directory)
        settings = info.generation.with_overrides(**overrides)
        problems = settings.check()
        if problems:
            raise ArtifactError("bad generation settings: " + "; ".join(problems))
        try:
            guard = LeakGuard.from_artifact(info.path, ngram_words=leak_ngram_words)
        except (OSError, EOFError, ValueError) as e:
            raise ArtifactError(f"cannot read the training-text index in {info.path}: {e}") from e
        engine, tokenizer = load_backend(info, backend, threads=threads, remote=remote, bases=bases)
        config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        positions = config.get("n_positions") or config.get("max_position_embeddings")
        return cls(info, tokenizer, engine, settings, OutputFilter(guard, blocklist), positions)

    @property
    def name(self) -> str:
        return self.info.speaker

    @property
    def path(self) -> Path:
        return self.info.path

    def prompt(self, turns: Sequence[tuple[str, str]], settings: GenerationSettings | None = None) -> list[int]:
        """Token ids of the prompt for a reply to `turns` ((speaker, text), oldest first)."""
        settings = settings or self.settings
        budget = settings.context_tokens
        if self.max_positions:  # the prompt and the reply must fit the model's positions together
            budget = min(budget, self.max_positions - settings.max_new_tokens)
        return transcript.build_prompt(self.tokenizer, turns, self.name, max(0, budget))

    def line_prompt(self, start: str = "") -> list[int]:
        """The prompt for a stand-alone line (no context), which starts with `start` when given."""
        return transcript.encode_line_prompt(self.tokenizer, self.name, start)

    def generate(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
                 seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[list[int]]:
        """One batch through the backend: reply ids per prompt (blocking; call from the engine's worker)."""
        return self.backend.generate(prompts, settings, seeds, cancelled)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)).strip()

    def count_tokens(self, speaker: str, text: str) -> int:
        """Tokens a message takes in a prompt."""
        return len(transcript.encode_turn(self.tokenizer, speaker, text))
