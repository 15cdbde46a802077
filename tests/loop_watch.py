"""Watch what runs *on* an asyncio event loop: the CPU time and the wall time of each callback.

Why not the gaps a ticking coroutine sees: on a busy machine the operating system deschedules the whole
process now and then, and a tick comes late although nothing blocked the loop. What would make Discord drop
the bot is a callback that keeps the loop thread for long, so that is what this measures, per callback:

- CPU time of the loop thread inside the callback (`time.thread_time`): work done on the loop. It does not
  grow when the machine is loaded (a descheduled or GIL-waiting thread spends no CPU time), so it can be
  held to a tight bound: generation, training or parsing on the loop shows up here at once.
- wall time inside the callback: also catches a callback that *waits* on the loop (a blocking sleep, a
  synchronous subprocess), which costs no CPU. Load inflates it, so it is held to a bound tied to the
  Discord heartbeat with a wide margin (`WALL_BOUND_S`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from asyncio import events
from dataclasses import dataclass

# Discord's gateway asks for a heartbeat every 41.25 s and drops a connection that misses one; a callback
# that holds the loop a tenth of that is already a bug, and no amount of load makes a 10 ms one that long.
DISCORD_HEARTBEAT_S = 41.25
WALL_BOUND_S = DISCORD_HEARTBEAT_S / 10
# Work a single callback may do on the loop. Handling a message, an interaction or a progress line takes a
# few milliseconds; the most is forking the bot for the training child (about 20 ms with the tests' models).
# Training, loading a model or a reply of a real model take far more.
CPU_BOUND_S = 0.05


@dataclass(slots=True)
class Slowest:
    seconds: float = 0.0
    callback: str = ""

    def see(self, seconds: float, handle: events.Handle) -> None:
        if seconds > self.seconds:
            self.seconds, self.callback = seconds, describe(handle)


def describe(handle: events.Handle) -> str:
    """The callback a handle runs, and the coroutine when it steps a task (what a reader needs to find it)."""
    callback = handle._callback
    # A test harness may wrap callbacks; it keeps the original here.
    callback = getattr(callback, "__simcord_original_callback__", callback)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return f"a step of {owner.get_coro()!r}"[:300]
    return repr(callback)[:300]


class LoopWatch:
    """Times every callback the event loop of the thread that enters it runs, until it exits.

    Use: `with LoopWatch() as watch: ...` inside a coroutine, then `watch.check()`."""

    def __init__(self) -> None:
        self.cpu = Slowest()
        self.wall = Slowest()
        self.callbacks = 0
        self.total_cpu = 0.0
        self.process_cpu = 0.0   # CPU time of the whole process (every thread) while watched
        self._thread = 0
        self._original = events.Handle._run

    def __enter__(self) -> "LoopWatch":
        asyncio.get_running_loop()   # only meaningful on the loop's own thread
        self._thread = threading.get_ident()
        original, watch = self._original, self

        def timed_run(handle: events.Handle) -> None:
            if threading.get_ident() != watch._thread:   # another thread's loop: not watched
                return original(handle)
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return original(handle)
            finally:
                watch.callbacks += 1
                cpu = time.thread_time() - cpu
                watch.total_cpu += cpu
                watch.cpu.see(cpu, handle)
                watch.wall.see(time.perf_counter() - wall, handle)

        events.Handle._run = timed_run
        self.process_cpu = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        events.Handle._run = self._original
        self.process_cpu = time.process_time() - self.process_cpu

    @property
    def loop_share(self) -> float:
        """The share of the process's CPU time spent in callbacks on the loop."""
        return self.total_cpu / max(self.process_cpu, 1e-9)

    def check(self, min_callbacks: int = 100, max_loop_share: float | None = None) -> None:
        """Fail when a callback did too much work or held the loop too long (or too little was watched).

        `max_loop_share`: also fail when the loop's callbacks took more than this share of the process's CPU
        time (for code whose heavy work is meant to run in other threads: a ratio of CPU times, which load
        does not change, catches work moved onto the loop even in pieces below `CPU_BOUND_S`)."""
        assert self.callbacks >= min_callbacks, f"only {self.callbacks} callbacks ran on the loop"
        if max_loop_share is not None:
            assert self.loop_share < max_loop_share, (
                f"the event loop did {self.loop_share:.0%} of the process's work (bound {max_loop_share:.0%}): "
                f"{self}")
        assert self.cpu.seconds < CPU_BOUND_S, (
            f"{self.cpu.seconds * 1000:.0f} ms of CPU in one callback on the event loop "
            f"(bound {CPU_BOUND_S * 1000:.0f} ms): {self.cpu.callback}")
        assert self.wall.seconds < WALL_BOUND_S, (
            f"one callback held the event loop {self.wall.seconds:.1f} s (bound {WALL_BOUND_S:.1f} s): "
            f"{self.wall.callback}")

    def __str__(self) -> str:
        return (f"{self.callbacks} callbacks, {self.total_cpu * 1000:.0f} ms of CPU in all "
                f"({self.loop_share:.1%} of the process's); most CPU {self.cpu.seconds * 1000:.1f} ms in {self.cpu.callback}; "
                f"longest {self.wall.seconds * 1000:.1f} ms in {self.wall.callback}")
