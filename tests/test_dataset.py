"""The dataset: loss masking, split without leakage, context budget, packing, speaker matching."""

from __future__ import annotations

import pytest
import torch

from training import transcript
from training.conversation import Conversation, Message
from training.dataset import (CONTEXT, NO_LOSS, RESPONSE, DatasetConfig, attention_mask, build_dataset,
                              conversation_turns, match_speaker, split_units)
from training.errors import DataError
from training.loader import load_corpus
from training.modelling import scratch_model, train_tokenizer

from chatgen import chat_conversations


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"{s}: {t}\n" for conv in chat_conversations(40, seed=1) for s, t in conv]
    return train_tokenizer(texts * 3, vocab_size=400)


def conversations(n: int = 24, seed: int = 7) -> list[Conversation]:
    return [Conversation(f"chat#{i}", [Message(s, t) for s, t in turns])
            for i, turns in enumerate(chat_conversations(n, seed))]


def windows_of(blocks):
    """(ids, kinds) of every packed window, recovered from the segment numbers."""
    out = []
    for b in range(len(blocks)):
        seg = blocks.segments[b]
        for s in sorted(set(seg.tolist()) - {-1}):
            sel = seg == s
            out.append((blocks.input_ids[b][sel].tolist(), blocks.kinds[b][sel].tolist()))
    return out


def runs(ids, kinds, kind):
    """Maximal runs of tokens with the given loss kind."""
    found, current = [], []
    for t, k in zip(ids, kinds):
        if k == kind:
            current.append(t)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def test_loss_falls_on_each_response_and_its_end_marker_only(tokenizer):
    convs = conversations()
    ds = build_dataset(convs, "alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48,
                                                                  standalone_share=0.0))
    eos = tokenizer.eos_token_id
    responses = []
    for ids, kinds in windows_of(ds.train) + windows_of(ds.val):
        assert CONTEXT not in kinds  # fine-tuning: no loss on the other speakers
        for run in runs(ids, kinds, RESPONSE):
            assert run[-1] == eos
            responses.append(tokenizer.decode(run[:-1]))
        # Names and the other speakers' words carry no loss.
        assert all(k == NO_LOSS for t, k in zip(ids, kinds) if t != eos and k != RESPONSE)
    expected = [" " + t.text for u in (*ds.train_units, *ds.val_units) for t in u.turns if t.is_target]
    assert sorted(responses) == sorted(expected)
    assert all("classic" in r for r in responses)  # only Alice's words


def test_responses_follow_the_persona_prefix_and_context(tokenizer):
    ds = build_dataset(conversations(), "Alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48,
                                                                           standalone_share=0.0))
    ids, kinds = windows_of(ds.train)[0]
    first = kinds.index(RESPONSE)
    before = tokenizer.decode(ids[:first])
    assert before.endswith("Alice:")
    assert before.count(":") >= 2  # there was context before the first response


def test_split_is_by_conversation_without_leakage_and_deterministic(tokenizer):
    convs = conversations(30)
    config = DatasetConfig(block_size=128, context_tokens=48, val_fraction=0.2)
    ds = build_dataset(convs, "alice", tokenizer, config)
    train_convs = {u.id.split("/")[0] for u in ds.train_units}
    val_convs = {u.id.split("/")[0] for u in ds.val_units}
    assert val_convs and train_convs and not (train_convs & val_convs)
    # No stretch of a validation conversation (two turns in a row, as rendered) appears in training blocks.
    train_text = "".join(tokenizer.decode(ids) for ids, _ in windows_of(ds.train))
    pairs = [f"{a.speaker}: {a.text}\n{b.speaker}: {b.text}" for u in ds.val_units
             for a, b in zip(u.turns, u.turns[1:]) if not a.is_target]
    assert len(pairs) > 10
    assert not [p for p in pairs if p in train_text]
    # ...while the same check finds the training conversations there (so it can fail).
    train_pairs = [f"{a.speaker}: {a.text}\n{b.speaker}: {b.text}" for u in ds.train_units
                   for a, b in zip(u.turns, u.turns[1:]) if not a.is_target and not b.is_target]
    assert [p for p in train_pairs if p in train_text]
    share = ds.stats["val"]["responses"] / (ds.stats["val"]["responses"] + ds.stats["train"]["responses"])
    assert 0.15 <= share <= 0.35
    again = build_dataset(list(reversed(convs)), "alice", tokenizer, config)
    assert {u.id for u in again.val_units} == {u.id for u in ds.val_units}  # order-independent, seeded
    other = build_dataset(convs, "alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48,
                                                                     val_fraction=0.2, seed=1))
    assert {u.id for u in other.val_units} != {u.id for u in ds.val_units}


def test_a_long_conversation_is_cut_into_units_that_share_no_turn(tokenizer):
    # Long enough to be cut three times (`unit_responses` responses a unit): each turn goes to exactly one
    # unit, in order, so a held-out unit's context cannot come from a training unit.
    per_unit, exchanges = 6, 3 * 6 + 4
    long = Conversation("long", [Message(s, f"{s.lower()} says number {i:03d}")
                                 for i in range(exchanges) for s in ("Bob", "Alice")])
    speaker = match_speaker([long], "alice")
    units = split_units([long], speaker, per_unit)
    assert [u.id for u in units] == ["long/0", "long/1", "long/2", "long/3"]
    assert [u.responses for u in units] == [6, 6, 6, 4]
    turns = conversation_turns(long, speaker)
    assert [(t.speaker, t.text) for u in units for t in u.turns] == [(t.speaker, t.text) for t in turns]
    # Through the whole dataset, held-out units included: no text of a validation unit is in training.
    config = DatasetConfig(block_size=256, context_tokens=200, unit_responses=per_unit, val_fraction=0.3,
                           standalone_share=0.0)
    ds = build_dataset([long], "alice", tokenizer, config)
    assert ds.train_units and ds.val_units
    train_text = "".join(tokenizer.decode(ids) for ids, _ in windows_of(ds.train))
    val_texts = [t.text for u in ds.val_units for t in u.turns]
    assert val_texts and not [t for t in val_texts if t in train_text]
    assert [t.text for u in ds.train_units for t in u.turns if t.text in train_text]   # the check can fail


def test_context_of_a_window_is_the_newest_whole_turns_within_the_budget(tokenizer):
    budget = 40
    config = DatasetConfig(block_size=256, context_tokens=budget, standalone_share=0.0)
    floor = int(budget * config.min_context_share)
    ds = build_dataset(conversations(), "alice", tokenizer, config)
    prefix_len = len(transcript.encode_prefix(tokenizer, "Alice"))
    before_of = {}
    for unit in ds.train_units:
        for i, turn in enumerate(unit.turns):
            if turn.is_target:
                before_of.setdefault(turn.text, []).append([(t.speaker, t.text) for t in unit.turns[:i]])
    full_contexts = trimmed = 0
    for ids, kinds in windows_of(ds.train):
        context = ids[:kinds.index(RESPONSE) - prefix_len]
        response = tokenizer.decode(runs(ids, kinds, RESPONSE)[0][:-1]).strip()
        assert len(context) <= budget

        def fits(before, context=context):
            # What inference builds: the newest whole turns within a budget (the full one, or the room a
            # block had left, but then at least the floor).
            full = transcript.encode_context(tokenizer, before, "Alice", budget)
            if context == full:
                return "full"
            if context == transcript.encode_context(tokenizer, before, "Alice", len(context)) \
                    and len(context) >= min(len(full), floor):
                return "trimmed"
            return None

        kind = next((k for k in map(fits, before_of[response]) if k), None)
        assert kind, response
        full_contexts += kind == "full"
        trimmed += kind == "trimmed"
    assert full_contexts > 10 and full_contexts > 3 * trimmed


def test_packing_fills_blocks_and_packed_windows_compute_as_if_alone(tokenizer):
    ds = build_dataset(conversations(), "alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48))
    blocks = ds.train
    assert blocks.input_ids.shape[1] == 128
    total_window_tokens = sum(len(ids) for ids, _ in windows_of(blocks))
    assert total_window_tokens == blocks.tokens()
    assert ds.stats["train"]["packing_efficiency"] > 0.9
    # Windows never attend to each other: a packed block gives each window the logits it gets alone.
    model = scratch_model("tiny", tokenizer, seed=3).eval()
    b = max(range(len(blocks)), key=lambda i: int(blocks.segments[i].max()))
    assert int(blocks.segments[b].max()) >= 1  # this block holds several windows
    with torch.no_grad():
        packed = model(input_ids=blocks.input_ids[b:b + 1], position_ids=blocks.positions[b:b + 1],
                       attention_mask=attention_mask(blocks.segments[b:b + 1])).logits[0]
        for s in range(int(blocks.segments[b].max()) + 1):
            sel = blocks.segments[b] == s
            alone = model(input_ids=blocks.input_ids[b][sel][None]).logits[0]
            assert torch.allclose(packed[sel], alone, atol=1e-4)


def test_standalone_share_trains_some_responses_without_context(tokenizer):
    prefix = transcript.encode_prefix(tokenizer, "Alice")

    def alone_windows(share):
        ds = build_dataset(conversations(), "alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48,
                                                                                standalone_share=share))
        # A stand-alone window: the persona's cue, one response, its end marker, the turn end; nothing else.
        found = [ids for ids, kinds in windows_of(ds.train)
                 if ids[:len(prefix)] == prefix and len(runs(ids, kinds, RESPONSE)) == 1
                 and ids[-2] == tokenizer.eos_token_id and "\n" not in tokenizer.decode(ids[:-1])]
        return len(found), ds.stats["train"]["responses"]

    none, total = alone_windows(0.0)
    some, _ = alone_windows(0.3)
    assert 0.15 * total <= some - none <= 0.45 * total


def test_from_scratch_weighting_covers_all_text_but_validates_on_responses(tokenizer):
    convs = conversations()
    convs.append(Conversation("no-alice#1", [Message("Bob", "garden party cake"), Message("Carol", "dog lunch")]))
    ds = build_dataset(convs, "alice", tokenizer, DatasetConfig(block_size=128, context_tokens=48),
                       context_weighted=True)
    train_text = "".join(tokenizer.decode(ids) for ids, _ in windows_of(ds.train))
    for c in convs:
        if any(u.id.startswith(c.id + "/") for u in ds.train_units):
            for m in c.messages:
                assert m.text in train_text
    assert ds.train.tokens(CONTEXT) > 0
    # Validation scores responses only, exactly as when fine-tuning.
    assert all(CONTEXT not in kinds or RESPONSE in kinds for _, kinds in windows_of(ds.val))


def test_speaker_matching_is_forgiving_and_uses_aliases_and_ids():
    convs = [Conversation("c#1", [
        Message("Ally", "hi there", speaker_id="42", speaker_aliases=("alice.w", "alice.w#0420")),
        Message("Bob", "hey"),
        Message("Alice W", "renamed, same person", speaker_id="42"),
    ])]
    for query in ("ally", "ALICE.W", "@alice.w", "alice.w#0420", "42"):
        match = match_speaker(convs, query)
        assert match.messages == 2, query
        assert match.name == "Ally"
    with pytest.raises(DataError) as err:
        match_speaker(convs, "alise.w")
    assert "did you mean" in err.value.hint and "alice.w" in err.value.hint
    assert "Bob" in err.value.hint


def test_too_little_data_is_a_clear_error(tokenizer):
    convs = [Conversation("c#1", [Message("Bob", "hi"), Message("Alice", "hello")]),
             Conversation("c#2", [Message("Bob", "bye"), Message("Alice", "ciao")])]
    with pytest.raises(DataError, match="too little data for Alice: 2 turns"):
        build_dataset(convs, "alice", tokenizer, DatasetConfig(block_size=64, context_tokens=16))
    one = [Conversation("c#1", [Message("Alice", f"line {i}") for i in range(3)])]
    with pytest.raises(DataError, match="one short conversation"):
        build_dataset(one, "alice", tokenizer, DatasetConfig(block_size=64, context_tokens=16, min_responses=1))


def test_consecutive_messages_merge_into_one_turn(tokenizer, make_chat):
    corpus = load_corpus([make_chat()])
    ds = build_dataset(corpus.conversations, "carol", tokenizer, DatasetConfig(block_size=128, context_tokens=48))
    for unit in ds.train_units:
        assert all(a.speaker != b.speaker for a, b in zip(unit.turns, unit.turns[1:]))
    merged = [t for u in ds.train_units for t in u.turns if t.is_target and "\n" in t.text]
    assert merged  # Carol often writes twice in a row in the generated chat
