"""Context windows: the most recent messages within a token budget, per channel."""

from __future__ import annotations

import pytest

from bot.context import ContextWindow, ContextWindows


def words(speaker: str, text: str) -> int:
    """A stand-in token count: one token per word plus the name and the turn end (real counts come from the
    persona's tokenizer; the window only needs a count)."""
    return len(text.split()) + 2


def test_oldest_messages_go_first_and_names_and_the_bots_replies_stay():
    window = ContextWindow(20, words)
    window.add("Bob", "one two three")           # 5
    window.add("Alice", "four five")             # 4 (the bot's own reply)
    window.add("Carol", "six seven eight nine")  # 6
    assert window.tokens == 15 and len(window) == 3
    window.add("Bob", "ten eleven twelve")       # 5 -> 20, still within budget
    assert [s for s, _ in window.turns()] == ["Bob", "Alice", "Carol", "Bob"]
    window.add("Dave", "thirteen")               # 3 -> 23: the oldest message goes
    assert window.turns() == [("Alice", "four five"), ("Carol", "six seven eight nine"),
                              ("Bob", "ten eleven twelve"), ("Dave", "thirteen")]
    assert window.tokens == 18


def test_a_message_longer_than_the_budget_is_kept_alone_and_empty_ones_are_ignored():
    window = ContextWindow(5, words)
    window.add("Bob", "hi")
    window.add("Carol", " ".join(["word"] * 30))
    assert window.turns() == [("Carol", " ".join(["word"] * 30))]
    window.add("Bob", "   \n ")
    assert len(window) == 1


def test_channels_are_separate_and_the_least_recently_used_are_forgotten():
    windows = ContextWindows(50, words, max_channels=2)
    windows.add(1, "Bob", "in channel one")
    windows.add(2, "Carol", "in channel two")
    assert windows.turns(1) == [("Bob", "in channel one")] and windows.turns(2) == [("Carol", "in channel two")]
    windows.add(1, "Bob", "again")               # channel 1 is now the most recent
    windows.add(3, "Dave", "a third channel")    # channel 2 is forgotten
    assert 2 not in windows and 1 in windows and 3 in windows
    assert windows.turns(2) == []


def test_forgetting_a_speaker_removes_their_messages_everywhere():
    windows = ContextWindows(100, words)
    windows.add("a", "Bob", "secret one")
    windows.add("a", "Carol", "hello")
    windows.add("b", "bob", "secret two")
    assert windows.forget_speaker("Bob") == 2
    assert windows.turns("a") == [("Carol", "hello")] and windows.turns("b") == []
    assert windows.window("a").tokens == words("Carol", "hello")


def test_a_negative_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        ContextWindow(-1, words)
