"""The sampling settings' check: a value it lets through is one the sampler can take."""

from __future__ import annotations

import pytest

from training import transcript
from training.generation import MIN_TEMPERATURE, GenerationSettings, generate
from training.modelling import scratch_model, train_tokenizer

from chatgen import chat_conversations


@pytest.mark.parametrize("temperature", [1e-300, MIN_TEMPERATURE * 0.99, 0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_below_the_least_or_not_finite_is_refused_with_what_to_do(temperature):
    problems = GenerationSettings(temperature=temperature).check()
    assert len(problems) == 1, problems
    assert f"temperature must be a finite number of at least {MIN_TEMPERATURE:g}" in problems[0]
    assert "top_k 1" in problems[0]   # the way to the likeliest token every time


def test_the_least_temperature_samples_even_where_tokens_are_ruled_out():
    texts = [f"{s}: {t}\n" for conv in chat_conversations(20, seed=1) for s, t in conv]
    tokenizer = train_tokenizer(texts * 2, vocab_size=300)
    model = scratch_model("tiny", tokenizer, seed=3).eval()
    coldest = GenerationSettings(temperature=MIN_TEMPERATURE, no_repeat_ngram_size=2, max_new_tokens=20)
    assert coldest.check() == []
    prompt = transcript.build_prompt(tokenizer, [("Bob", "pizza tonight")], "Alice", 64)
    # no_repeat_ngram_size rules tokens out with -inf scores, which the temperature divides too.
    replies = generate(model, tokenizer, [prompt, prompt], coldest, seed=0)
    assert len(replies) == 2 and all(isinstance(token, int) for reply in replies for token in reply)


@pytest.mark.parametrize("penalty", [float("nan"), float("inf"), 0.5])
def test_a_repetition_penalty_not_finite_or_below_one_is_refused(penalty):
    problems = GenerationSettings(repetition_penalty=penalty).check()
    assert problems == ["repetition_penalty must be a finite number, 1 (off) or more"]
