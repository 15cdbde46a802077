"""A second bot process for the tests of what processes share through the database: run as
`python tests/store_process.py ROLE` with the bot's settings in the environment (DATABASE_URL or
DATABASE_PATH), it opens the store as `personabot run` does (`open_store`) and plays one role, printing one
line per event with the wall-clock time it happened (the test, on the same machine, compares times):
- `listen`: hears changes (`Store.listen`): `heard TOPIC TIME`; prints `listening` once ready;
- `lead [LEASE_S]`: a jobs candidate (`JobsLeadership`, its real take-over and step-down; SQLite's lease
  LEASE_S, default its own): `leading TIME` when it takes the lead, `standby` when it starts as one; when it leads, it records a retrain as running, as a
  leader killed mid-retrain leaves it.
It runs until killed (the tests kill it with SIGKILL, as a crash would) or its stdin closes."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.core.config import load_settings  # noqa: E402
from bot.jobs.leadership import JobsLeadership  # noqa: E402
from bot.storage import open_store  # noqa: E402


def say(*words: object) -> None:
    print(*words, flush=True)


async def until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def main(role: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    store = await open_store(load_settings(dotenv_path=None))
    try:
        if role == "listen":
            await store.listen(lambda topic: say("heard", topic, time.time()))
            say("listening")
        elif role == "lead":
            async def take_over() -> None:
                await store.start_run(requested_by=1, speaker="Alice", epochs=1.0)
                say("leading", time.time())

            async def step_down() -> None:
                say("stepped-down", time.time())

            lease_s = float(sys.argv[2]) if len(sys.argv) > 2 else None    # SQLite's; None: the default
            leadership = JobsLeadership(store, on_lead=take_over, on_lose=step_down, lease_s=lease_s)
            if not await leadership.check_once():
                say("standby")
            leadership.start()
        await until_stdin_closes()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
