"""The fidelity report (training/fidelity.py): does a persona's output pass for the person's real lines?

Attribution is tried on two invented speaking styles written here, the split on the test chats, and the
whole measurement on real tiny personas of those chats."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from training.conversation import Conversation, Message
from training.errors import DataError
from training.fidelity import FidelityReport, HeldOutLines, distinct_n, measure_fidelity, split_lines

TOPICS = "pizza meeting train garden movie exam bike lunch concert weather report ticket".split()
FEELINGS = "great awful weird fun late cold cheap loud".split()


def casual_line(rng: random.Random) -> str:
    """Zed's style: all lower case, no full stops, 'lol'/'omg', stretched words and emoji."""
    return (f"{rng.choice(['lol', 'omg', 'haha', 'ngl'])} the {rng.choice(TOPICS)} was sooo {rng.choice(FEELINGS)} "
            f"{rng.choice(['😂', '🙃', '💀', '✨'])} {rng.choice(['lol', 'tbh', 'rn', ''])}").strip()


def formal_line(rng: random.Random) -> str:
    """Margaret's style: capitalised full sentences, no slang, careful punctuation."""
    return (f"{rng.choice(['Good afternoon.', 'Thank you.', 'Certainly.', 'Indeed.'])} I believe the "
            f"{rng.choice(TOPICS)} was rather {rng.choice(FEELINGS)}; I shall "
            f"{rng.choice(['report on it', 'look into it', 'write to them'])} tomorrow.")


def styled_lines(seed: int = 3) -> tuple[HeldOutLines, list[str], list[str]]:
    """Real lines of Zed (the persona) and Margaret, and new lines in each style for a persona to 'generate'."""
    rng = random.Random(seed)
    held = HeldOutLines(persona_train=[casual_line(rng) for _ in range(60)],
                        others_train=[formal_line(rng) for _ in range(80)],
                        persona_heldout=[casual_line(rng) for _ in range(20)],
                        others_heldout=[formal_line(rng) for _ in range(25)], others=1)
    return held, [casual_line(rng) for _ in range(30)], [formal_line(rng) for _ in range(30)]


def test_distinct_n_counts_word_ngrams_within_lines() -> None:
    assert distinct_n(["a b a", "b a"], 1) == pytest.approx(2 / 5)
    # n-grams never span two lines: (a b) (b a) from the first, (b a) from the second.
    assert distinct_n(["a b a", "b a"], 2) == pytest.approx(2 / 3)
    # Lower-cased words; punctuation and emoji are not words.
    assert distinct_n(["Lol LOL lol!! 😂"], 1) == pytest.approx(1 / 3)
    assert distinct_n(["don't stop", "Don't"], 1) == pytest.approx(2 / 3)
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "😂"], 1) == 0.0
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n(["x y z"], 3) == 1.0


def test_lengths_and_their_distance() -> None:
    held = HeldOutLines([], [], ["a b c d", "a b c d e f"], [], 0)
    # An empty generated line is still a line the persona said: it counts, with no words.
    report = measure_fidelity(["one two", "one two three", ""], held, persona="Zed")
    assert report.lines == 3
    assert report.median_words == 2.0
    assert report.real_median_words == 5.0
    # Every generated count lies below every real one: the distance is the difference of the means.
    assert report.length_distance == pytest.approx(5 - 5 / 3)
    assert report.distinct1 == pytest.approx(3 / 5)
    assert report.real_distinct2 == pytest.approx(5 / 8)


def test_attribution_tells_the_persona_from_the_others() -> None:
    held, like_zed, like_margaret = styled_lines()
    good = measure_fidelity(like_zed, held, persona="Zed")
    bad = measure_fidelity(like_margaret, held, persona="Zed")
    assert good.attribution is not None and good.attribution >= 0.9
    assert bad.attribution is not None and bad.attribution <= 0.1
    assert good.ceiling is not None and good.floor is not None and good.ceiling > good.floor
    assert good.ceiling >= 0.9 and good.floor <= 0.1
    assert "Zed against 1 other speaker" in good.compared
    assert good.copied is None


def test_copying_is_the_share_the_leak_guard_refuses() -> None:
    held, like_zed, _ = styled_lines()
    trained = set(held.persona_train)
    fresh = [line for line in like_zed if line not in trained][:9]   # the invented styles repeat sometimes
    assert len(fresh) == 9
    generated = held.persona_train[:3] + fresh
    report = measure_fidelity(generated, held, persona="Zed", copied=lambda line: line in trained)
    assert report.copied == pytest.approx(3 / 12)


def test_the_same_inputs_give_the_same_report() -> None:
    held, like_zed, _ = styled_lines()
    first = measure_fidelity(like_zed, held, persona="Zed", seed=5)
    copy = HeldOutLines(list(held.persona_train), list(held.others_train), list(held.persona_heldout),
                        list(held.others_heldout), held.others)
    again = measure_fidelity(list(like_zed), copy, persona="Zed", seed=5)
    assert first == again
    assert first.seed == 5


def test_a_single_voice_has_no_attribution_and_says_why() -> None:
    # A single-voice corpus (stand-alone posts, one conversation each), split as training splits it.
    rng = random.Random(1)
    posts = [Conversation(f"post-{i}", [Message("Zed", casual_line(rng))], single_voice=True) for i in range(40)]
    held = split_lines(posts, "zed")
    assert held.others == 0 and not held.others_train and not held.others_heldout
    report = measure_fidelity([casual_line(rng) for _ in range(10)], held, persona="Zed")
    assert report.attribution is None and report.ceiling is None and report.floor is None
    assert "single voice" in report.compared and "no other speaker" in report.compared
    assert "no attribution" in report.summary() and "single voice" in report.summary()
    assert report.real_distinct1 > 0 and report.median_words > 0


def test_report_json_round_trip_and_bad_data() -> None:
    held, like_zed, _ = styled_lines()
    report = measure_fidelity(like_zed, held, persona="Zed", copied=lambda line: False)
    data = json.loads(json.dumps(report.to_json()))
    assert FidelityReport.from_json(data) == report
    single = measure_fidelity(like_zed, HeldOutLines(held.persona_train, [], held.persona_heldout, [], 0),
                              persona="Zed")
    assert FidelityReport.from_json(json.loads(json.dumps(single.to_json()))) == single
    # An older persona.json has no report, or one this version cannot read: None, never an exception.
    for bad in (None, {}, "garbage", [1, 2], 42, {**data, "ceiling": "83%"}, {**data, "lines": True},
                {**data, "seed": 1.5}, {k: v for k, v in data.items() if k != "distinct2"},
                {**data, "compared": None}, {**data, "median_words": float("nan")}):
        assert FidelityReport.from_json(bad) is None


def test_summary_shows_the_three_percentages() -> None:
    held, like_zed, _ = styled_lines()
    report = measure_fidelity(like_zed, held, persona="Zed", copied=lambda line: False)
    line = report.summary()
    assert "\n" not in line
    for share in (report.attribution, report.ceiling, report.floor):
        assert f"{share:.0%}" in line
    assert line.startswith(f"taken for Zed in {report.attribution:.0%} of lines; Zed's own real lines: "
                           f"{report.ceiling:.0%}; others': {report.floor:.0%}")
    assert "distinct-2" in line and "median" in line and "copied 0%" in line


def test_split_lines_never_shares_a_line_across_the_split() -> None:
    # Every line unique, so that a line on both sides could only come from a leaking split.
    rng = random.Random(4)
    conversations = []
    for c in range(30):
        messages = []
        for k in range(rng.randint(4, 10)):
            messages.append(Message(rng.choice(["Margaret", "Ivo"]), f"{formal_line(rng)} ({c}.{k})"))
            messages.append(Message("Zed", f"{casual_line(rng)} {c}x{k}"))
        conversations.append(Conversation(f"chat-{c}", messages))
    held = split_lines(conversations, "ZED", val_fraction=0.2, seed=3)
    assert held.persona_train and held.persona_heldout and held.others_train and held.others_heldout
    assert not set(held.persona_heldout) & set(held.persona_train)
    assert not set(held.others_heldout) & set(held.others_train)
    every = [m.text for c in conversations for m in c.messages if m.speaker == "Zed"]
    assert sorted(held.persona_train + held.persona_heldout) == sorted(every)   # nothing silently dropped
    assert held.others == 2
    assert 0.1 <= len(held.persona_heldout) / len(every) <= 0.4
    # Another seed holds out other conversations.
    assert split_lines(conversations, "zed", val_fraction=0.2, seed=4).persona_heldout != held.persona_heldout
    with pytest.raises(DataError):
        split_lines(conversations, "nobody")


def test_split_lines_holds_out_what_training_held_out(persona_chat: Path, alice_artifact: Path) -> None:
    from training.artifact import read_persona
    from training.loader import load_corpus

    conversations = load_corpus([str(persona_chat)]).conversations
    info = read_persona(alice_artifact)
    held = split_lines(conversations, "alice", val_fraction=info.dataset.val_fraction, seed=info.dataset.seed,
                       unit_responses=info.dataset.unit_responses)
    assert held.persona_train and held.persona_heldout and held.others_heldout
    # The counts training recorded for its own split.
    assert len(held.persona_train) == info.sources.train["responses"]
    assert len(held.persona_heldout) == info.sources.val["responses"]
    assert held.others == 2   # Bob and Carol
    # Training's defaults are split_lines' defaults.
    assert split_lines(conversations, "alice") == held


def test_a_trained_persona_is_attributed_above_another_speakers_model(persona_chat: Path, alice_artifact: Path,
                                                                     bob_artifact: Path) -> None:
    """The issue's acceptance check: Alice's persona passes for Alice more often than Bob's model does."""
    from training.artifact import load_model, read_persona
    from training.generation import sample_lines
    from training.loader import load_corpus

    held = split_lines(load_corpus([str(persona_chat)]).conversations, "alice")
    samples = {}
    for path in (alice_artifact, bob_artifact):
        info = read_persona(path)
        model, tokenizer = load_model(info)
        samples[info.speaker] = sample_lines(model, tokenizer, info.speaker, 30, info.generation, seed=0)
    started = time.perf_counter()
    alice = measure_fidelity(samples["Alice"], held, persona="Alice")
    bob = measure_fidelity(samples["Bob"], held, persona="Alice")
    seconds = time.perf_counter() - started
    print(f"\nAlice persona: {alice.summary()}\nBob model as Alice: {bob.summary()}\nmeasured in {seconds:.2f} s")
    assert alice.attribution is not None and bob.attribution is not None
    assert alice.attribution > bob.attribution
    assert alice.ceiling is not None and alice.floor is not None and alice.ceiling > alice.floor
    assert alice.lines == bob.lines == 30


def test_the_classifier_learns_from_a_seeded_sample_of_a_large_corpus():
    """A corpus of years of chat: at most CLASSIFIER_LINES lines of each side, the same ones for one seed."""
    from training.fidelity import at_most

    texts = [f"line {i}" for i in range(50)]
    kept = at_most(texts, seed=3, limit=10)
    assert len(kept) == 10 and len(set(kept)) == 10 and set(kept) <= set(texts)
    assert kept == sorted(kept, key=texts.index)                # in their order
    assert at_most(texts, seed=3, limit=10) == kept and at_most(texts, seed=4, limit=10) != kept
    assert at_most(texts, seed=3, limit=50) == texts


def test_an_artifact_without_a_report_says_how_to_get_one():
    from training.fidelity import fidelity_line

    assert "not measured" in fidelity_line(None) and "personabot eval" in fidelity_line(None)
