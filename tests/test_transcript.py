"""The prompt format and reply cutting, shared by training and inference."""

from __future__ import annotations

import pytest

from training import transcript
from training.generation import GenerationSettings, cut_reply, generate
from training.modelling import scratch_model, train_tokenizer

from chatgen import chat_conversations


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"{s}: {t}\n" for conv in chat_conversations(40, seed=1) for s, t in conv]
    return train_tokenizer(texts * 3 + ["note: hello there, Hal, I say"] * 5, vocab_size=400)


def test_prompt_keeps_the_newest_whole_turns_within_budget(tokenizer):
    turns = [("Bob", "pizza tonight"), ("Alice", "pizza again? classic bob"), ("Carol", "rain bus late")]
    full = transcript.build_prompt(tokenizer, turns, "Alice", 10_000)
    text = tokenizer.decode(full)
    assert text == ("Bob: pizza tonight\nAlice: pizza again? classic bob<|endoftext|>\nCarol: rain bus late\n"
                    "Alice:")
    last = transcript.encode_turn(tokenizer, "Carol", "rain bus late")
    prefix = transcript.encode_prefix(tokenizer, "Alice")
    tight = transcript.build_prompt(tokenizer, turns, "Alice", len(last) + len(prefix))
    assert tokenizer.decode(tight) == "Carol: rain bus late\nAlice:"
    assert transcript.build_prompt(tokenizer, turns, "Alice", len(last) + len(prefix) - 1) == prefix
    assert len(transcript.build_prompt(tokenizer, turns, "Alice", 25)) <= 25


def test_consecutive_messages_merge_and_names_are_made_safe(tokenizer):
    merged = transcript.merge_turns([("Bob", "one"), ("bob", "two\r\n\r\n\r\nthree"), ("Carol", "  "),
                                     ("Carol", "four")])
    assert merged == [("Bob", "one\ntwo\n\nthree"), ("Carol", "four")]
    assert transcript.speaker_label("Dr: Who\nknows") == "Dr Who knows"
    assert transcript.speaker_label(":::") == "Someone"


def test_find_new_turn_needs_a_line_that_starts_with_a_name(tokenizer):
    assert transcript.find_new_turn("sure thing\nBob: no way") == len("sure thing")
    assert transcript.find_new_turn("note: this colon is part of the reply") is None
    assert transcript.find_new_turn("I swear\nHal, I say: hear me") is None
    assert transcript.find_new_turn("two\nlines of verse") is None


def test_cut_reply_stops_at_end_marker_or_another_speakers_turn(tokenizer):
    eos = tokenizer.eos_token_id
    words = tokenizer.encode(" pizza again? classic bob", add_special_tokens=False)
    assert cut_reply(words + [eos] + tokenizer.encode(" extra", add_special_tokens=False), tokenizer) == (words, True)
    other = tokenizer.encode("\nCarol: rain bus", add_special_tokens=False)
    ids, finished = cut_reply(words + other, tokenizer)
    assert ids == words and finished
    # A row that stopped at a new turn is padded with end markers in a batch: the new turn still wins.
    ids, finished = cut_reply(words + other + [eos, eos], tokenizer)
    assert ids == words and finished
    assert cut_reply(words, tokenizer) == (words, False)


def test_batched_generation_matches_one_at_a_time(tokenizer):
    model = scratch_model("tiny", tokenizer, seed=5).eval()
    greedy = GenerationSettings(top_k=1, repetition_penalty=1.0, max_new_tokens=12)
    prompts = [transcript.build_prompt(tokenizer, [("Bob", "pizza tonight")], "Alice", 64),
               transcript.build_prompt(tokenizer, [("Carol", "rain bus late coffee keys train"),
                                                   ("Bob", "exam")], "Alice", 64),
               transcript.encode_prefix(tokenizer, "Alice")]
    assert len({len(p) for p in prompts}) == 3  # different lengths: left padding matters
    batched = generate(model, tokenizer, prompts, greedy, seed=0)
    alone = [generate(model, tokenizer, [p], greedy, seed=0)[0] for p in prompts]
    assert batched == alone
    assert all(tokenizer.eos_token_id not in ids for ids in batched)


def test_generation_settings_are_checked():
    assert GenerationSettings().check() == []
    bad = GenerationSettings(temperature=0, top_p=1.5, max_new_tokens=0)
    assert len(bad.check()) == 3
    assert GenerationSettings.from_json({"temperature": 0.5, "unknown": 1}).temperature == 0.5
