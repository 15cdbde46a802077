"""Sampling a persona's turn from a causal LM: settings, batched generation with left padding, and cutting
the reply out of the generated token ids (at the end marker, or where the model starts another speaker's
turn). Shared by the trainer (samples in persona.json) and the bot's Persona."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from transformers import DynamicCache

from training import transcript
from training.dataset import CONTEXT_TOKENS
from training.modelling import max_positions


# The coldest sampling allowed: below it the sampler's scores (logits / temperature) overflow to inf, in float32
# near 1e-37, sooner in half precision; at 0.01 a token a tenth of a logit behind the likeliest is already
# e^10 times less likely, which is as good as always choosing the likeliest (top_k 1 does exactly that).
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Sampling controls; an artifact's persona.json stores its defaults."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 60
    context_tokens: int = CONTEXT_TOKENS

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
        if not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            problems.append(f"temperature must be a finite number of at least {MIN_TEMPERATURE:g}, not "
                            f"{self.temperature:g} (for the likeliest token every time, set top_k 1)")
        if self.top_k < 0:
            problems.append("top_k must be 0 (off) or more")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty >= 1):
            problems.append("repetition_penalty must be a finite number, 1 (off) or more")
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


def _repetition_penalty(scores: torch.Tensor, row_tokens: torch.Tensor, penalty: float, eos: int) -> None:
    """CTRL's penalty (as in transformers) on the tokens a row has seen, in place. The end marker is exempt:
    a context holds one after each of the persona's turns, and penalising it would make replies run on."""
    seen = torch.unique(row_tokens)
    seen = seen[seen != eos]
    picked = scores[seen]
    scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)


def _sample(scores: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> int:
    """One token from a row's scores: temperature, then top-k, then top-p, as transformers' warpers do.

    Written out rather than using the warpers because they sort the whole vocabulary for top-p at every
    step of every row; here top-p works on the top-k candidates only (50 instead of 50,257 for GPT-2),
    which is most of the sampling time on a CPU."""
    scores = scores / settings.temperature
    if settings.top_k:
        values, ids = scores.topk(min(settings.top_k, scores.shape[-1]))
    else:
        values, ids = scores.sort(descending=True)
    if settings.top_p < 1:
        probs = torch.softmax(values, dim=-1)
        # The smallest set of most likely tokens whose probabilities add up to top_p (at least one).
        keep = int(((probs.cumsum(-1) - probs) < settings.top_p).sum().clamp(min=1))
        values, ids = values[:keep], ids[:keep]
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
    return int(ids[choice])


def cache_argument(model) -> str:
    """The name under which the model's forward takes its key-value cache.

    transformers 5 renamed `past_key_values` to `cache` and warns at every call that uses the old name (a
    FutureWarning in the middle of a terminal chat); releases before the rename only know the old one. The
    cache object is updated in place, so it is passed on from step to step without reading it back. A peft
    model passes its keyword arguments through to the model it wraps, whose signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(model, tokenizer, prompts: Sequence[Sequence[int]],
           settings: GenerationSettings | Sequence[GenerationSettings], *,
           seeds: Sequence[int | None] | int | None = None,
           cancelled: Callable[[int], bool] | None = None,
           adapters: Sequence[str] | None = None) -> list[list[int]]:
    """Sample a persona's turn after each prompt, all rows in one left-padded batch with a key-value cache.

    Each row has its own sampling settings, seed and stop: the end marker, the start of another speaker's
    turn, its own `max_new_tokens`, or `cancelled(row)` turning true. Finished rows leave the batch, so one
    long reply does not make the others pay for its length. Returns each row's reply ids, already cut.

    `adapters` names each row's LoRA adapter when `model` is a peft model holding several (peft's mixed-adapter
    batches: one forward pass, each row through its own adapter).
    """
    n = len(prompts)
    if n == 0:
        return []
    per_row = list(settings) if isinstance(settings, Sequence) else [settings] * n
    if isinstance(seeds, int) or seeds is None:
        seeds = [None if seeds is None else seeds + i for i in range(n)]
    if len(per_row) != n or len(seeds) != n or (adapters is not None and len(adapters) != n):
        raise ValueError("decode: one settings, one seed (and one adapter, when given) per prompt")
    eos = transcript.end_marker_id(tokenizer)
    device = next(model.parameters()).device
    limit = max_positions(model)
    # Prompt and reply must fit the model's positions together; the oldest prompt tokens give way.
    rows = [list(p)[max(0, len(p) - max(1, limit - s.max_new_tokens)):] for p, s in zip(prompts, per_row)]
    longest = max(len(r) for r in rows)
    input_ids = torch.full((n, max(longest, 1)), eos, dtype=torch.long)
    mask = torch.zeros((n, max(longest, 1)), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, input_ids.shape[1] - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, input_ids.shape[1] - len(r):] = 1
        else:  # an empty prompt still needs one token to condition on: the end marker starts a text
            input_ids[i, -1] = eos
            mask[i, -1] = 1
            rows[i] = [eos]
    generators = []
    for seed in seeds:
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        generators.append(gen)
    no_repeat = {}
    for s in per_row:
        if s.no_repeat_ngram_size and s.no_repeat_ngram_size not in no_repeat:
            from transformers import NoRepeatNGramLogitsProcessor

            no_repeat[s.no_repeat_ngram_size] = NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size)
    newline: dict[int, bool] = {}   # token id -> whether its text holds a line break
    multiline = [False] * n         # rows whose reply holds one: only these can have started a new turn

    generated: list[list[int]] = [[] for _ in range(n)]
    caps = [max(1, min(s.max_new_tokens, limit - len(r))) for s, r in zip(per_row, rows)]
    active = list(range(n))                       # original row index of each batch position
    seen = [torch.tensor(r, dtype=torch.long) for r in rows]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_ids, step_pos, past = input_ids, positions, DynamicCache()
    attention = mask
    cache_arg = cache_argument(model)
    while active:
        extra = {cache_arg: past}
        if adapters is not None:     # rows leave the batch as they finish: name the adapters of those left
            extra["adapter_names"] = [adapters[row] for row in active]
        out = model(input_ids=step_ids.to(device), attention_mask=attention.to(device),
                    position_ids=step_pos.to(device), use_cache=True, logits_to_keep=1, **extra)
        logits = out.logits[:, -1, :].float().cpu()
        chosen = torch.empty(len(active), dtype=torch.long)
        for b, row in enumerate(active):
            s = per_row[row]
            scores = logits[b]
            if s.repetition_penalty != 1:
                _repetition_penalty(scores, seen[row], s.repetition_penalty, eos)
            if s.no_repeat_ngram_size:
                scores = no_repeat[s.no_repeat_ngram_size](seen[row][None], scores[None])[0]
            chosen[b] = _sample(scores, s, generators[row])
        keep = []
        for b, row in enumerate(active):
            token = int(chosen[b])
            if token != eos:
                generated[row].append(token)
                seen[row] = torch.cat([seen[row], chosen[b:b + 1]])
            done = token == eos or len(generated[row]) >= caps[row]
            if token not in newline:
                newline[token] = "\n" in tokenizer.decode([token])
            multiline[row] = multiline[row] or newline[token]
            if not done and multiline[row] and transcript.find_new_turn(tokenizer.decode(generated[row])) is not None:
                done = True
            if not done and cancelled is not None and cancelled(row):
                done = True
            if not done:
                keep.append(b)
        if len(keep) < len(active):
            if not keep:
                break
            index = torch.tensor(keep, dtype=torch.long)
            past.batch_select_indices(index.to(device))
            attention = attention[index]
            chosen = chosen[index]
            step_pos = step_pos[index]
            active = [active[b] for b in keep]
        attention = torch.cat([attention, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
        step_ids = chosen[:, None]
        step_pos = step_pos[:, -1:] + 1
    return [cut_reply(ids, tokenizer)[0] for ids in generated]


def attempt_seed(seed: int | None, attempt: int, stride: int = 1) -> int | None:
    """The seed of draw number `attempt` (from 0) when each draw takes `stride` seeds: every resampling loop
    derives its seeds here, so that a seeded run repeats and no two draws share a seed. None stays None."""
    return None if seed is None else seed + attempt * stride


def generate(model, tokenizer, prompts: Sequence[Sequence[int]], settings: GenerationSettings,
             *, seed: int | None = None) -> list[list[int]]:
    """Sample one continuation per prompt (token ids) in one batch; returns the reply ids."""
    return decode(model, tokenizer, prompts, settings, seeds=seed)


def sample_lines(model, tokenizer, persona: str, n: int, settings: GenerationSettings, *,
                 start: str = "", seed: int | None = None, max_tries: int = 3) -> list[str]:
    """`n` stand-alone lines in the persona's voice (no context), each optionally starting with `start`.

    Empty lines are sampled again, up to `max_tries` rounds; what is still empty stays empty."""
    prompt = transcript.encode_line_prompt(tokenizer, persona, start)
    lines: list[str | None] = [None] * n
    for attempt in range(max_tries):
        todo = [i for i, line in enumerate(lines) if not line]
        if not todo:
            break
        replies = generate(model, tokenizer, [prompt] * len(todo), settings,
                           seed=attempt_seed(seed, attempt))
        for i, ids in zip(todo, replies):
            text = tokenizer.decode(ids).strip()
            lines[i] = transcript.join_line(start, text)
    return [line or "" for line in lines]
