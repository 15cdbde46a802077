"""Discord's send limits, kept by the bot before Discord enforces them: `SendLimits` paces what `speak` sends.

Two sliding windows: at most `WEBHOOK_WINDOW` messages through one webhook (one per channel: a thread speaks
through its parent's) and at most `CHANNEL_WINDOW` messages in one channel (webhook and bot messages alike).
Each channel has a queue of its own (first come, first sent, so a channel's messages keep their order); a
send that would exceed a window waits its turn there (an asyncio sleep, never blocking the event loop),
while every other channel goes on. A send may say how to tell that it is no longer worth sending (`still_useful`,
the caller's notion: the conversation moved on): held back in its queue, it is dropped, not sent, when that
check says no or when it would go out more than `MAX_WAIT_S` after it was asked for. A send without such a
check is never dropped; it only waits. Delays and drops are counted in the bot's `Metrics`.

The limits are one process's view: messages another bot process sends in the same channel (a scheduled post
from the jobs leader, say) are not seen here, and Discord's own 429 handling in discord.py remains the net.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol


class SendCounts(Protocol):
    """What counts the sends held back and dropped (the bot's `bot.adapters.metrics.Metrics`): named here, so
    that the metrics can import this module's labels without a circle."""

    def send_delayed(self, limit: str) -> None: ...

    def send_dropped(self, reason: str) -> None: ...


@dataclass(frozen=True)
class SendWindow:
    """At most `sends` messages in any `seconds` (a sliding window)."""

    sends: int
    seconds: float


# Discord's figures. Its developer docs (Topics > Rate Limits) publish the limits per route only through the
# X-RateLimit-* headers, which report 5 requests with a 2 s reset for executing a webhook; Discord's help
# center gives webhooks about 30 messages a minute in one channel. The channel window applies to the bot's
# own messages there as well.
WEBHOOK_WINDOW = SendWindow(sends=5, seconds=2.0)
CHANNEL_WINDOW = SendWindow(sends=30, seconds=60.0)
# How long a send that may be dropped (it has a `still_useful` check) may wait: a reply later than this
# answers a conversation that has gone elsewhere.
MAX_WAIT_S = 30.0

# The window that held a send back, as counted (personabot_sends_delayed{limit}).
LIMITS = ("webhook", "channel")
# Why a held-back send was dropped, as counted (personabot_sends_dropped{reason}): its check said it was no
# longer useful, or it would have gone out more than MAX_WAIT_S after it was asked for.
DROP_REASONS = ("stale", "waited_too_long")


def _monotonic() -> float:
    """time.monotonic, looked up at each call (as the rest of this package reads the clock), so that the
    clock the process runs on at the time is the one read."""
    return time.monotonic()


class _SlidingWindows:
    """The times of the last `window.sends` sends per key, to tell how long the next one must wait."""

    def __init__(self, window: SendWindow) -> None:
        self.window = window
        self._sent: dict[int, deque[float]] = {}
        self._swept_at = -float("inf")

    def wait(self, key: int, now: float) -> float:
        """Seconds until a send under `key` keeps to the window (0: now)."""
        sent = self._sent.get(key)
        if sent is None or len(sent) < self.window.sends:
            return 0.0
        return max(0.0, sent[0] + self.window.seconds - now)

    def record(self, key: int, now: float) -> None:
        self._sent.setdefault(key, deque(maxlen=self.window.sends)).append(now)
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget the keys with no send in the window, at most once a window (so that a bot in many channels
        does not keep one entry per channel it ever spoke in)."""
        if now - self._swept_at < self.window.seconds:
            return
        self._swept_at = now
        for key in [key for key, sent in self._sent.items() if sent[-1] <= now - self.window.seconds]:
            del self._sent[key]


@dataclass
class _Queue:
    """A channel's queue: the lock its sends take in turn (asyncio.Lock wakes its waiters first come, first
    served), the sends that hold it or wait for it (the entry goes when none does), and the limit its head
    is waiting for now, if any."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    turns: set[SendTurn] = field(default_factory=set)
    waiting_for: str | None = None


class SendTurn:
    """One send's turn in its channel's queue (from `SendLimits.turn`): `clear` before each message it sends."""

    def __init__(self, limits: SendLimits, channel_id: int, still_useful: Callable[[], bool] | None,
                 queue: _Queue) -> None:
        self._limits = limits
        self._channel_id = channel_id
        self._still_useful = still_useful
        self._queue = queue
        self._asked_at = limits.clock()
        self._held_back = bool(queue.turns)   # others were ahead of it in the channel's queue
        # The limit that held it back (itself or a send ahead of it in the queue), counted once it goes out.
        self._delayed_by: str | None = queue.waiting_for
        self._counted = False
        self.dropped: str | None = None       # why it was dropped (one of DROP_REASONS), once it was

    async def clear(self, webhook_channel_id: int | None = None) -> bool:
        """Wait until a message may go out in the channel (and through the webhook of `webhook_channel_id`,
        when it goes through one), then count it as sent; False when the send is dropped instead (`dropped`
        says why). Only a send that was held back (by its queue or a window) is ever dropped, and only when
        it has a `still_useful` check."""
        if self.dropped is not None:
            return False
        limits = self._limits
        while True:
            now = limits.clock()
            waits = {"channel": limits.channel_sends.wait(self._channel_id, now)}
            if webhook_channel_id is not None:
                waits["webhook"] = limits.webhook_sends.wait(webhook_channel_id, now)
            limit = max(waits, key=waits.__getitem__)
            wait = waits[limit]
            held_back = self._held_back or wait > 0
            if held_back and self._still_useful is not None:
                if now + wait - self._asked_at > limits.max_wait_s:
                    return self._drop("waited_too_long")
                if not self._still_useful():
                    return self._drop("stale")
            if wait <= 0:
                limits.channel_sends.record(self._channel_id, now)
                if webhook_channel_id is not None:
                    limits.webhook_sends.record(webhook_channel_id, now)
                if self._delayed_by is not None and not self._counted and limits.metrics is not None:
                    limits.metrics.send_delayed(self._delayed_by)
                self._counted = True
                return True
            self._held_back = True
            for turn in self._queue.turns:          # this send, and every one waiting behind it
                turn._delayed_by = turn._delayed_by or limit
            self._queue.waiting_for = limit          # and those that join while it waits
            try:
                await limits.sleep(wait)
            finally:
                self._queue.waiting_for = None

    def _drop(self, reason: str) -> bool:
        self.dropped = reason
        if self._limits.metrics is not None:
            self._limits.metrics.send_dropped(reason)
        return False


class SendLimits:
    """The bot's pacing of its messages, per channel and per webhook (see the module's docstring). `clock`
    (seconds, monotonic) and `sleep` are the time it runs on; the windows and `max_wait_s` default to
    Discord's figures and MAX_WAIT_S. `metrics` counts the sends delayed and dropped."""

    def __init__(self, *, webhook: SendWindow = WEBHOOK_WINDOW, channel: SendWindow = CHANNEL_WINDOW,
                 max_wait_s: float = MAX_WAIT_S, metrics: SendCounts | None = None,
                 clock: Callable[[], float] = _monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.webhook_sends = _SlidingWindows(webhook)
        self.channel_sends = _SlidingWindows(channel)
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self._queues: dict[int, _Queue] = {}

    @asynccontextmanager
    async def turn(self, channel_id: int,
                   still_useful: Callable[[], bool] | None = None) -> AsyncIterator[SendTurn]:
        """Wait for this send's turn in the channel's queue; the channel's next send waits until this one
        leaves the block. `still_useful` (None: the send is never dropped) says whether the send is still
        worth making, should it be held back."""
        queue = self._queues.setdefault(channel_id, _Queue())
        turn = SendTurn(self, channel_id, still_useful, queue)
        queue.turns.add(turn)
        try:
            async with queue.lock:
                yield turn
        finally:
            queue.turns.discard(turn)
            if not queue.turns:
                del self._queues[channel_id]
