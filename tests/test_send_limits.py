"""Discord's send limits kept before Discord enforces them (bot/adapters/discord/send_limits.py): two sliding
windows (per webhook, per channel), a first-come-first-sent queue per channel that never holds up another
channel, and held-back sends dropped when their check says the conversation moved on or they waited too long,
all counted in the bot's metrics. The windows and the queue run on real asyncio with a clock that moves only
when a test moves it; then a persona speaks in simcord (an offline Discord) through the bot's webhook more
than five times at once, and Discord's own figures are kept. Only Discord is simulated."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.adapters.discord.send_limits import (CHANNEL_WINDOW, DROP_REASONS, LIMITS, MAX_WAIT_S, WEBHOOK_WINDOW,
                                              SendLimits, SendWindow)
from bot.adapters.discord.speaking import people_wrote_since, speak
from bot.adapters.metrics import Metrics
from bot.core.personas import PersonaRef
from test_discord import engine, settings, simcord_bot, store, world  # noqa: F401 (fixtures)


class FakeClock:
    """Monotonic seconds that pass only in `advance`; `sleep` wakes when its time has come."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, woken))
        await woken

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper at its own instant, in order."""
        target = self.now + seconds
        while due := sorted((s for s in self._sleepers if s[0] <= target), key=lambda s: s[0]):
            self._sleepers.remove(due[0])
            self.now = max(self.now, due[0][0])
            if not due[0][1].done():          # else its sleeper was cancelled
                due[0][1].set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    """Let every task that can run, run (each send here is a few steps of plain asyncio)."""
    for _ in range(100):
        await asyncio.sleep(0)


class Sends:
    """Sends through a `SendLimits`, each recorded (time, channel, text) as it goes out."""

    def __init__(self, limits: SendLimits, clock: FakeClock) -> None:
        self.limits, self.clock = limits, clock
        self.sent: list[tuple[float, int, str]] = []
        self.tasks: list[asyncio.Task] = []

    def start(self, channel_id: int, text: str, *, webhook_of: int | None = None,
              still_useful: Callable[[], bool] | None = None) -> asyncio.Task:
        async def send() -> bool:
            async with self.limits.turn(channel_id, still_useful) as turn:
                if not await turn.clear(webhook_channel_id=webhook_of):
                    return False
                self.sent.append((self.clock(), channel_id, text))
                return True
        task = asyncio.create_task(send())
        self.tasks.append(task)
        return task

    def times(self, channel_id: int) -> list[float]:
        return [at for at, channel, _ in self.sent if channel == channel_id]

    def texts(self, channel_id: int) -> list[str]:
        return [text for _, channel, text in self.sent if channel == channel_id]


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The most sends among `times` that fall within one window of `seconds` ([t, t + seconds))."""
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + seconds) for t in times), default=0)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name + "_total", labels) or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_the_limits_are_discords_figures_and_every_label_is_counted_from_zero(metrics):
    assert (WEBHOOK_WINDOW.sends, WEBHOOK_WINDOW.seconds) == (5, 2.0)
    assert (CHANNEL_WINDOW.sends, CHANNEL_WINDOW.seconds) == (30, 60.0)
    assert MAX_WAIT_S == 30.0
    for limit in LIMITS:
        assert metrics.registry.get_sample_value("personabot_sends_delayed_total", {"limit": limit}) == 0
    for reason in DROP_REASONS:
        assert metrics.registry.get_sample_value("personabot_sends_dropped_total", {"reason": reason}) == 0


async def test_a_webhook_takes_five_messages_per_two_seconds_and_the_rest_wait_in_order(clock, metrics):
    sends = Sends(SendLimits(metrics=metrics, clock=clock, sleep=clock.sleep), clock)
    for i in range(12):
        sends.start(1, f"m{i}", webhook_of=1)
    await settle()
    assert sends.texts(1) == [f"m{i}" for i in range(5)]             # five at once, the rest held back
    await clock.advance(1.9)
    assert len(sends.sent) == 5
    await clock.advance(0.1)
    assert sends.texts(1) == [f"m{i}" for i in range(10)]
    await clock.advance(2.0)
    assert sends.texts(1) == [f"m{i}" for i in range(12)]            # in the order they were asked for
    assert all(await asyncio.gather(*sends.tasks))
    assert sends.times(1) == [1000.0] * 5 + [1002.0] * 5 + [1004.0] * 2
    assert most_in_any_window(sends.times(1), 2.0) == 5
    assert counted(metrics, "personabot_sends_delayed", limit="webhook") == 7
    assert counted(metrics, "personabot_sends_delayed", limit="channel") == 0


async def test_a_channel_takes_thirty_a_minute_the_bots_own_messages_and_webhook_ones_alike(clock, metrics):
    sends = Sends(SendLimits(webhook=SendWindow(100, 2.0), metrics=metrics, clock=clock, sleep=clock.sleep), clock)
    for i in range(20):
        sends.start(1, f"hook{i}", webhook_of=1)
    for i in range(12):
        sends.start(1, f"bot{i}")                   # the bot itself: no webhook, the channel's window still
    await settle()
    assert len(sends.sent) == 30
    await clock.advance(59.0)
    assert len(sends.sent) == 30
    await clock.advance(1.0)
    assert sends.texts(1)[-2:] == ["bot10", "bot11"]
    assert most_in_any_window(sends.times(1), 60.0) == 30
    assert counted(metrics, "personabot_sends_delayed", limit="channel") == 2


async def test_a_busy_channel_holds_up_no_other_but_a_thread_shares_its_parents_webhook(clock):
    sends = Sends(SendLimits(clock=clock, sleep=clock.sleep), clock)
    for i in range(7):
        sends.start(1, f"busy{i}", webhook_of=1)
    sends.start(2, "elsewhere", webhook_of=2)       # another channel, another webhook: at once
    sends.start(3, "in a thread of 1", webhook_of=1)   # its own queue, but channel 1's webhook is full
    sends.start(4, "the bot in a thread of 1")          # its own channel window: at once
    await settle()
    assert sends.texts(2) == ["elsewhere"] and sends.texts(4) == ["the bot in a thread of 1"]
    assert len(sends.texts(1)) == 5 and sends.texts(3) == []
    await clock.advance(2.0)
    assert len(sends.texts(1)) + len(sends.texts(3)) == 8
    assert most_in_any_window(sends.times(1) + sends.times(3), 2.0) == 5


async def test_a_held_back_send_is_dropped_when_the_conversation_moved_on(clock, metrics):
    sends = Sends(SendLimits(metrics=metrics, clock=clock, sleep=clock.sleep), clock)
    useful = {"reply": True}
    # A send that goes out at once is never checked, even when its check would say no.
    sends.start(1, "at once", webhook_of=1, still_useful=lambda: False)
    for i in range(4):
        sends.start(1, f"m{i}", webhook_of=1)
    late = sends.start(1, "late reply", webhook_of=1, still_useful=lambda: useful["reply"])
    after = sends.start(1, "a post", webhook_of=1)           # no check: never dropped, only waits
    await settle()
    assert len(sends.sent) == 5
    useful["reply"] = False                                  # while it waits, the conversation moves on
    await clock.advance(2.0)
    assert await late is False and await after is True
    assert "late reply" not in sends.texts(1) and sends.texts(1)[-1] == "a post"
    assert sends.times(1)[-1] == 1002.0                      # the drop freed its slot for the next send
    assert counted(metrics, "personabot_sends_dropped", reason="stale") == 1
    assert counted(metrics, "personabot_sends_dropped", reason="waited_too_long") == 0


async def test_a_held_back_send_that_would_wait_past_the_most_is_dropped_without_waiting(clock, metrics):
    sends = Sends(SendLimits(max_wait_s=3.0, metrics=metrics, clock=clock, sleep=clock.sleep), clock)
    tasks = [sends.start(1, f"m{i}", webhook_of=1, still_useful=lambda: True) for i in range(15)]
    await settle()
    await clock.advance(2.0)        # 5 at once, 5 after 2 s; the last 5 would go at 4 s, past 3 s: dropped
    assert sends.texts(1) == [f"m{i}" for i in range(10)]
    assert [t.done() for t in tasks] == [True] * 15 and [t.result() for t in tasks[10:]] == [False] * 5
    assert counted(metrics, "personabot_sends_dropped", reason="waited_too_long") == 5
    # The queue is empty again: the next send goes as soon as the window lets it.
    next_one = sends.start(1, "next", webhook_of=1, still_useful=lambda: True)
    await clock.advance(2.0)
    assert await next_one is True and sends.times(1)[-1] == 1004.0


async def test_a_cancelled_send_leaves_the_queue_to_the_next(clock):
    sends = Sends(SendLimits(clock=clock, sleep=clock.sleep), clock)
    for i in range(5):
        sends.start(1, f"m{i}", webhook_of=1)
    waiting = sends.start(1, "given up", webhook_of=1)
    behind = sends.start(1, "behind", webhook_of=1)
    await settle()
    waiting.cancel()
    await settle()
    await clock.advance(2.0)
    assert await behind is True and sends.texts(1)[-1] == "behind"


# -- in simcord: a persona speaking through the bot's webhook ---------------------------------------------


def record_webhook_sends(env, channel_id: int, clock: Callable[[], float]) -> list[float]:
    """The instants (on `clock`) at which Discord created a webhook message in the channel."""
    times: list[float] = []

    def created(event: str, payload) -> None:
        if (event == "MESSAGE_CREATE" and int(payload["channel_id"]) == channel_id
                and payload.get("webhook_id") is not None):
            times.append(clock())
    env.backend.subscribers.append(created)
    return times


@pytest.mark.slow
async def test_a_persona_speaking_eight_times_at_once_keeps_to_five_per_two_seconds(
        world, alice_artifact: Path):  # noqa: F811
    env, general, other, admin, bob, carol = world
    bot = env.bot
    channel = bot.get_channel(general.id)
    alice = PersonaRef(alice_artifact, "Alice")
    loop = asyncio.get_running_loop()
    created = record_webhook_sends(env, general.id, loop.time)
    said = await asyncio.gather(*(speak(channel, f"line {i}", persona=alice, webhooks=bot.webhooks,
                                        send_limits=bot.send_limits) for i in range(8)))
    # None failed: all eight went through the webhook, under Alice's name, in the order asked for.
    assert [m.content for m in said] == [f"line {i}" for i in range(8)]
    assert all(m.webhook_id is not None and m.author.name == "Alice" for m in said)
    executions = [r for r in env.http_requests if r.method == "POST" and r.path.startswith("/webhooks/")]
    assert len(executions) == 8 and len(created) == 8
    assert not any(r.method == "POST" and r.path == f"/channels/{general.id}/messages" for r in env.http_requests)
    assert most_in_any_window(created, 2.0) <= 5                # Discord's figure, on the loop's clock
    assert counted(bot.metrics, "personabot_sends_delayed", limit="webhook") == 3


@pytest.mark.slow
async def test_a_queued_reply_is_dropped_once_someone_writes_after_the_message_it_answers(
        world, alice_artifact: Path):  # noqa: F811
    env, general, other, admin, bob, carol = world
    bot = env.bot
    channel = bot.get_channel(general.id)
    alice = PersonaRef(alice_artifact, "Alice")
    asked = await bob.send(general, "what are we doing tonight")
    replies = [asyncio.create_task(speak(channel, f"reply {i}", persona=alice, webhooks=bot.webhooks,
                                         send_limits=bot.send_limits,
                                         still_useful=lambda: not people_wrote_since(bot, asked)))
               for i in range(6)]
    for _ in range(200):                                       # the first five go at once; the sixth waits
        if sum(t.done() for t in replies) == 5:
            break
        await asyncio.sleep(0.01)
    assert not people_wrote_since(bot, asked)                  # the persona's own messages do not count
    await carol.send(general, "never mind, pizza at mine")     # the conversation moves on meanwhile
    assert people_wrote_since(bot, asked)
    said = await asyncio.gather(*replies)
    assert [m.content for m in said[:5]] == [f"reply {i}" for i in range(5)] and said[5] is None
    assert general.last_message.content == "never mind, pizza at mine"
    assert counted(bot.metrics, "personabot_sends_dropped", reason="stale") == 1
