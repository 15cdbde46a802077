"""Context windows: the most recent messages within a token budget, per channel; and channel memory, which
keeps them with the store behind them (restored after a restart, opted-out people never kept)."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.channel_memory import DISABLED_CHANNELS, ChannelMemory, HeardMessage
from bot.core.context import ContextWindow, ContextWindows
from bot.storage.sqlite import SQLiteStore as Store
from bot.core.store import StoreError


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


# --- channel memory: the windows with the store behind them ---------------------------------------------------

def heard(author_id: int, name: str, text: str, *, channel_id: int = 1, message_id: int = 0) -> HeardMessage:
    return HeardMessage(channel_id=channel_id, guild_id=10, message_id=message_id or author_id * 1000 + len(text),
                        author_id=author_id, author_name=name, text=text, is_bot=False,
                        created_at="2026-03-14T19:00:00+00:00")


def test_channel_memory_remembers_restores_after_a_restart_and_forgets_a_person(tmp_path):
    async def scenario():
        async with await Store.open(tmp_path / "bot.sqlite3") as store:
            memory = ChannelMemory(store, 100, words)
            assert await memory.remember(heard(1, "Bob", "bob's secret"))
            assert await memory.remember(heard(2, "Carol", "carol talks"))
            assert memory.turns(1) == [("Bob", "bob's secret"), ("Carol", "carol talks")]
            assert await memory.forget(1, ["Bob", "bob_account"]) == 1
            forgotten = memory.turns(1)
            refused = await memory.remember(heard(1, "Bob", "bob again"))     # opted out: neither kept nor stored
            after_restart = ChannelMemory(store, 100, words)
            fresh = after_restart.turns(1)
            # Heard before the channel is read back: restored first, so that it is not in the context twice.
            await after_restart.remember(heard(3, "Dave", "dave joins"))
            return forgotten, refused, fresh, await after_restart.context(1), await store.recent_messages(1)

    forgotten, refused, fresh, restored, stored = asyncio.run(scenario())
    assert forgotten == [("Carol", "carol talks")] and refused is False
    assert fresh == []                                          # a fresh process knows nothing yet...
    assert restored == [("Carol", "carol talks"), ("Dave", "dave joins")]   # ...until it reads the channel back
    assert [m.author_name for m in stored] == ["Carol", "Dave"]


def test_disabled_channels_are_kept_in_the_store(tmp_path):
    async def scenario():
        async with await Store.open(tmp_path / "bot.sqlite3") as store:
            memory = ChannelMemory(store, 100, words)
            await memory.set_disabled(5, True)
            await memory.set_disabled(6, True)
            await memory.set_disabled(6, False)
            later = ChannelMemory(store, 100, words)
            return [await later.disabled(c) for c in (5, 6, 7)], await store.get_setting(DISABLED_CHANNELS)

    assert asyncio.run(scenario()) == ([True, False, False], [5])


class FailingStore:
    """A store whose writes fail (a locked database) and whose opt-out answers are given."""

    def __init__(self, opted_out: bool | None) -> None:
        self.opted_out = opted_out

    async def recent_messages(self, channel_id: int) -> list:
        raise StoreError("database is locked")

    async def add_message(self, **row) -> bool:
        raise StoreError("database is locked")

    async def is_opted_out(self, user_id: int) -> bool:
        if self.opted_out is None:
            raise StoreError("database is locked")
        return self.opted_out


@pytest.mark.parametrize(("opted_out", "kept"), [(False, True), (True, False), (None, False)])
def test_a_message_the_store_cannot_take_is_kept_in_context_only_when_its_author_has_not_opted_out(
        opted_out, kept):
    memory = ChannelMemory(FailingStore(opted_out), 100, words)
    assert asyncio.run(memory.remember(heard(1, "Bob", "hello"))) is kept
    assert memory.turns(1) == ([("Bob", "hello")] if kept else [])
