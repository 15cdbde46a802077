"""Sampling a persona's turn from a causal LM: settings, batched generation with left padding, and cutting
the reply out of the generated token ids (at the end marker, or where the model starts another speaker's
turn). Shared by the trainer (samples in persona.json) and the bot's Persona."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from training import transcript


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Sampling controls; an artifact's persona.json stores its defaults."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 60
    context_tokens: int = 256

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GenerationSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> "GenerationSettings":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def check(self) -> list[str]:
        """Problems with these settings, one line each (empty when fine)."""
        problems = []
        if not self.temperature > 0:
            problems.append("temperature must be above 0")
        if self.top_k < 0:
            problems.append("top_k must be 0 (off) or more")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.repetition_penalty < 1:
            problems.append("repetition_penalty must be 1 (off) or more")
        if self.no_repeat_ngram_size < 0:
            problems.append("no_repeat_ngram_size must be 0 (off) or more")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if self.context_tokens < 0:
            problems.append("context_tokens must be 0 or more")
        return problems


def cut_reply(ids: Sequence[int], tokenizer) -> tuple[list[int], bool]:
    """The reply's token ids: up to the end marker or up to the token where another speaker's turn starts,
    whichever comes first. Returns (ids, finished): False when the reply simply ran out of tokens."""
    ids = list(ids)
    eos = transcript.end_marker_id(tokenizer)
    finished = eos in ids
    if finished:
        ids = ids[:ids.index(eos)]
    start = transcript.find_new_turn(tokenizer.decode(ids))
    if start is None:
        return ids, finished
    # Cut before the first token whose text reaches the newline that opens the other speaker's turn.
    for k in range(len(ids)):
        if len(tokenizer.decode(ids[:k + 1])) > start:
            return ids[:k], True
    return ids, True


class _StopAtNewTurn:
    """Stops a row once it has produced the end marker or started another speaker's turn."""

    def __init__(self, tokenizer, prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_len:])
            done.append(transcript.find_new_turn(text) is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], settings: GenerationSettings,
             *, seed: int | None = None) -> list[list[int]]:
    """Sample one continuation per prompt (token ids) in one left-padded batch; returns the reply ids."""
    from transformers import StoppingCriteriaList

    if not prompts:
        return []
    eos = transcript.end_marker_id(tokenizer)
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), eos, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            input_ids[i, longest - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, longest - len(p):] = 1
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
        temperature=settings.temperature, top_k=settings.top_k or None, top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        no_repeat_ngram_size=settings.no_repeat_ngram_size or None,
        max_new_tokens=settings.max_new_tokens, eos_token_id=eos, pad_token_id=eos,
        stopping_criteria=StoppingCriteriaList([_StopAtNewTurn(tokenizer, longest)]),
    )
    return [cut_reply(row[longest:].tolist(), tokenizer)[0] for row in out]


def sample_lines(model, tokenizer, persona: str, n: int, settings: GenerationSettings, *,
                 start: str = "", seed: int | None = None, max_tries: int = 3) -> list[str]:
    """`n` stand-alone lines in the persona's voice (no context), each optionally starting with `start`.

    Empty lines are sampled again, up to `max_tries` rounds; what is still empty stays empty."""
    prompt = transcript.encode_prefix(tokenizer, persona)
    if start:
        prompt = prompt + tokenizer.encode(" " + start.strip(), add_special_tokens=False)
    lines: list[str | None] = [None] * n
    for attempt in range(max_tries):
        todo = [i for i, line in enumerate(lines) if not line]
        if not todo:
            break
        replies = generate(model, tokenizer, [prompt] * len(todo), settings,
                           seed=None if seed is None else seed + attempt)
        for i, ids in zip(todo, replies):
            text = tokenizer.decode(ids).strip()
            lines[i] = f"{start.strip()} {text}".strip() if start else text
    return [line or "" for line in lines]
