"""Context windows: each channel's recent messages, newest last, within a token budget.

The oldest messages are dropped first; speaker names are kept; the bot's own replies are part of the
context (add them like any other message). The prompt builder applies the same budget exactly, whole turns
only; the window's job is to keep what could still fit and forget the rest.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from training import transcript

# Counts a message's prompt tokens: (speaker, text) -> tokens.
TokenCounter = Callable[[str, str], int]


class ContextWindow:
    """One conversation's recent messages, trimmed to `budget` tokens (the newest message always stays)."""

    def __init__(self, budget: int, count: TokenCounter, *, max_messages: int = 500) -> None:
        if budget < 0:
            raise ValueError("the context budget must be 0 tokens or more")
        self.budget = budget
        self._count = count
        self._messages: deque[tuple[str, str, int]] = deque(maxlen=max_messages)
        self._tokens = 0

    def add(self, speaker: str, text: str) -> None:
        """Append a message; older ones fall out once the window is over budget."""
        text = transcript.clean_text(text)
        if not text:
            return
        if len(self._messages) == self._messages.maxlen:
            self._tokens -= self._messages[0][2]
        cost = self._count(speaker, text)
        self._messages.append((speaker, text, cost))
        self._tokens += cost
        while len(self._messages) > 1 and self._tokens > self.budget:
            self._tokens -= self._messages.popleft()[2]

    def turns(self) -> list[tuple[str, str]]:
        """(speaker, text) pairs, oldest first."""
        return [(speaker, text) for speaker, text, _ in self._messages]

    @property
    def tokens(self) -> int:
        return self._tokens

    def clear(self) -> None:
        self._messages.clear()
        self._tokens = 0

    def forget_speaker(self, speaker: str) -> int:
        """Drop every message by `speaker` (a user who asked to be forgotten); returns how many."""
        kept = [m for m in self._messages if not transcript.same_speaker(m[0], speaker)]
        removed = len(self._messages) - len(kept)
        self._messages = deque(kept, maxlen=self._messages.maxlen)
        self._tokens = sum(m[2] for m in kept)
        return removed

    def __len__(self) -> int:
        return len(self._messages)


class ContextWindows:
    """A context window per channel (any hashable key). The least recently used channels are forgotten
    beyond `max_channels`, so a bot in many servers does not grow without bound."""

    def __init__(self, budget: int, count: TokenCounter, *, max_messages: int = 500,
                 max_channels: int = 10_000) -> None:
        self.budget = budget
        self._count = count
        self._max_messages = max_messages
        self._max_channels = max_channels
        self._windows: OrderedDict[Hashable, ContextWindow] = OrderedDict()

    def window(self, channel: Hashable) -> ContextWindow:
        window = self._windows.get(channel)
        if window is None:
            window = self._windows[channel] = ContextWindow(self.budget, self._count,
                                                            max_messages=self._max_messages)
            while len(self._windows) > self._max_channels:
                self._windows.popitem(last=False)
        self._windows.move_to_end(channel)
        return window

    def add(self, channel: Hashable, speaker: str, text: str) -> None:
        self.window(channel).add(speaker, text)

    def turns(self, channel: Hashable) -> list[tuple[str, str]]:
        window = self._windows.get(channel)
        return window.turns() if window is not None else []

    def clear(self, channel: Hashable) -> None:
        self._windows.pop(channel, None)

    def forget_speaker(self, speaker: str) -> int:
        return sum(w.forget_speaker(speaker) for w in self._windows.values())

    def __contains__(self, channel: Hashable) -> bool:
        return channel in self._windows
