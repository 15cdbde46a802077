"""When a persona speaks in a busy channel (issue 23's "done when" figure): N messages from M members in one
channel of simcord (an offline Discord), with the channel's unasked and follow-up chances set by its admin, and
what the persona did: replies to mentions, replies and wake words; bursts it joined unasked; follow-ups; people
put in a cool-down; sends the send limits delayed or dropped; and whether Discord's limits were kept.

The bot is the tests' bot (tests/test_discord.py `make_bot`): a real tiny persona of Alice (trained here from
tests/chatgen.py's chats, as tests/conftest.py trains it, about 15-20 s; or `--artifact DIR`), greedy and
without the leak guard as the tests' engine, a real SQLite file, the bot's default settings otherwise
(USER_COOLDOWN, CHANNEL_COOLDOWN, USER_INTERACTIONS, CHANNEL_TURNS_PER_HOUR...; `--env KEY=VALUE` changes one).
The persona is registered as "Alice" and assigned to the channel, so it speaks through the channel's webhook
(`--as-bot`: the bot's configured persona speaks as the bot itself).

The members' messages (all seeded by `--seed`): mostly plain chat, some mentioning the bot, a few replying to
one of its messages, a few holding its name (a wake word). Between two messages, simcord's virtual clock moves
on by a seeded gap: a quick one (under BURST_QUIET_S, often the same member again, so bursts form) or a pause.

Discord's limits are checked on the bot's messages as simcord dated them (its request log has no times): the
most in any 2 s through one webhook (5 allowed) and in any 60 s in the channel (30 allowed). simcord does not
model Discord's rate limits (it never answers 429 unless a test injects one); the bot's errors and warnings are
counted, and any HTTP 429 among them reported.

Run by hand:  .venv/bin/python bench/joining_run.py [--messages 200] [--members 10] [--seed N] [--unasked 30]
[--followup 50] [--artifact DIR]
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
# Nothing here may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PERSONA = "Alice"
MEMBER_NAMES = ["Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj",
                "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter"]
# The mix of messages: what share mention the bot, reply to one of its messages, or hold its name; the rest
# is plain chat nobody addressed to it.
MIX = {"mention": 0.10, "reply": 0.06, "wake": 0.06}
# The gaps between messages (seconds of simcord's clock): this share are quick ones (a burst goes on), the rest
# pauses; a quick message comes from the same member as the last one this often.
QUICK_SHARE, QUICK_GAP, PAUSE_GAP, SAME_MEMBER = 0.4, (0.5, 1.9), (2.5, 20.0), 0.6
# simcord's settle_timeout while the members talk. A member's send returns once the bot is settled, and simcord
# counts a bot timer due within settle_timeout (real seconds, its default 5) as work to settle: it waits for it
# in real time and moves its clock on to it. With the default, a burst's 2 s timer (BURST_QUIET_S) always fired
# inside the send that began it, every burst was one message long, and the run took about 1.5 s of wall time per
# message. Under BURST_QUIET_S, the timer waits for advance_time as it should; generating a reply (tens of ms for
# the tiny persona) must still settle within it, or simcord raises TimeoutError.
RUN_SETTLE_S = 1.0


class LogTally(logging.Handler):
    """The bot's warnings and errors while it runs, by logger and message (first words)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()
        self.http_429 = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f" [{type(error).__name__}: {error}]"
            if getattr(error, "status", None) == 429:
                self.http_429 += 1
        if " 429 " in f" {text} " or "rate limited" in text.lower():
            self.http_429 += 1
        self.seen[f"{record.levelname} {record.name}: {text[:160]}"] += 1


def train_artifact(where: Path) -> Path:
    """The tests' tiny Alice (tests/conftest.py `persona_chat` and `alice_artifact`): 300 steps on the test
    chats, Alice opening her every line with @everyone."""
    from chatgen import chat_conversations, write_whatsapp
    from conftest import _train_persona

    conversations = [[(s, f"@everyone {t}" if s == "Alice" else t) for s, t in conv]
                     for conv in chat_conversations(24, seed=7)]
    return _train_persona(where / "alice", "alice", 300, write_whatsapp(where / "chat.txt", conversations))


def by_label(counter) -> dict[str, int]:
    """A prometheus Counter's counts by its one label ("" for an unlabelled counter), as /metrics shows them."""
    return {next(iter(sample.labels.values()), ""): int(sample.value) for metric in counter.collect()
            for sample in metric.samples if sample.name.endswith("_total")}


def most_in_window(times: list[float], seconds: float) -> int:
    """The most of `times` (sorted) in any half-open window [t, t + seconds)."""
    return max((bisect_left(times, t + seconds) - i for i, t in enumerate(times)), default=0)


async def run(args: argparse.Namespace, artifact: Path, tmp: Path) -> dict:
    import discord
    import simcord
    from chatgen import chat_conversations
    from test_discord import make_bot

    from bot.adapters.discord.send_limits import CHANNEL_WINDOW, WEBHOOK_WINDOW
    from bot.core.config import load_settings
    from bot.core.filters import OutputFilter
    from bot.core.joining import BURST_QUIET_S
    from bot.core.personas import PersonaRef
    from bot.inference.engine import Engine
    from bot.storage.sqlite import SQLiteStore

    data_dir = tmp / "exports"
    data_dir.mkdir(exist_ok=True)
    env_vars = {"DATABASE_PATH": str(tmp / "bot.sqlite3"), "TRAIN_DATA_DIR": str(data_dir),
                "MODELS_DIR": str(tmp / "models"), "SHARD_COUNT": "1", "MESSAGE_RETENTION_DAYS": "0"}
    env_vars.update(dict(pair.split("=", 1) for pair in args.env))
    settings = load_settings(env_vars, dotenv_path=None)      # ConfigError: main says what is wrong
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact, settings.models_dir / "alice")

    engine = Engine.load(artifact, generation={"top_k": 1}).start()
    engine.persona.output_filter = OutputFilter()      # as tests/test_discord.py's engine: no leak guard
    store = await SQLiteStore.open(settings.database_path)
    tally = LogTally()
    logging.getLogger().addHandler(tally)
    rng = random.Random(args.seed)
    texts = [t for conv in chat_conversations(60, seed=args.seed) for s, t in conv if s != PERSONA]
    answered: Counter[str] = Counter()     # addressed messages answered while simcord settled their send
    sent: Counter[str] = Counter()
    kinds: dict[int, str] = {}             # each member's message: its kind (for --timeline)
    wall_in: Counter[str] = Counter()      # wall seconds spent in simcord's send and advance_time
    try:
        bot = make_bot(settings, engine, store)
        async with simcord.run(bot, check_errors=False) as env:
            guild = env.create_guild()
            channel = guild.create_text_channel("general")
            mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
            admin = guild.add_member(env.create_user("admin"), roles=[mods])
            members = [guild.add_member(env.create_user(MEMBER_NAMES[i % len(MEMBER_NAMES)] +
                                                        ("" if i < len(MEMBER_NAMES) else str(i))))
                       for i in range(args.members)]
            setup = []
            if not args.as_bot:
                for command, options in (("persona add", {"name": PERSONA, "directory": "alice"}),
                                         ("persona use", {"name": PERSONA, "scope": "channel"})):
                    setup.append((await admin.slash(channel, command, **options)).response.content)
                # The tests' engine has no leak guard (tiny Alice says only her training lines): nor has the
                # registered persona here, so that its replies are her words rather than the fallback line.
                entry = await store.find_persona(PERSONA, guild.id)
                (await engine.load_persona(PersonaRef.of(entry))).output_filter = OutputFilter()
            talk = {"unasked": args.unasked, "followup": args.followup, "seed": args.seed}
            if args.turns_per_hour is not None:
                talk["turns_per_hour"] = args.turns_per_hour
            setup.append((await admin.slash(channel, "talk set", **talk)).response.content)
            for line in setup:
                print(f"# setup: {line}")

            me = env.bot.user
            # From here on, a send settles only what the bot does at once (see RUN_SETTLE_S).
            env.settle_timeout = args.settle_timeout

            floor = max((m.id for m in channel.history()), default=0)     # the setup's answers, if any

            def bots_messages() -> list:
                """The persona's messages in the channel since the members began, in order."""
                return [m for m in channel.history() if m.id > floor and not m.flags.ephemeral
                        and (m.author.id == me.id or m.webhook_id is not None)]

            start_virtual = env.now()
            wall = time.perf_counter()
            last = None
            for _ in range(args.messages):
                ours = bots_messages()
                roll, kind = rng.random(), "plain"
                for name, share in MIX.items():
                    if roll < share:
                        kind = name
                        break
                    roll -= share
                if kind == "reply" and not ours:
                    kind = "plain"
                quick = rng.random() < QUICK_SHARE
                member = last if quick and last is not None and rng.random() < SAME_MEMBER else rng.choice(members)
                text = rng.choice(texts)
                reply_to = None
                if kind == "mention":
                    text = f"{me.mention} {text}"
                elif kind == "wake":
                    text = rng.choice([f"{PERSONA.lower()} {text}", f"{text}, right {PERSONA}?",
                                       f"what do you think {PERSONA}"])
                elif kind == "reply":
                    reply_to = rng.choice(ours[-3:])
                before = len(ours)
                step = time.perf_counter()
                message = await member.send(channel, text, reply_to=reply_to)
                wall_in["send"] += time.perf_counter() - step
                sent[kind] += 1
                now_answered = kind != "plain" and len(bots_messages()) > before
                answered[kind] += now_answered
                kinds[message.id] = kind + (" (answered)" if now_answered else "")
                last = member
                step = time.perf_counter()
                await env.advance_time(rng.uniform(*(QUICK_GAP if quick else PAUSE_GAP)))
                wall_in["advance_time"] += time.perf_counter() - step
            await env.advance_time(60)        # the last burst ends, anything queued goes out
            if args.timeline:
                for m in channel.history():
                    at = (m.created_at - start_virtual).total_seconds()
                    who = kinds.get(m.id, f"bot (reply to {m.reference.message_id})" if m.reference else "bot")
                    print(f"# {at:8.2f} s  {m.author.name:<10} {who:<22} {m.content[:70]!r}")
            wall_s = time.perf_counter() - wall
            virtual_s = (env.now() - start_virtual).total_seconds()

            ours = bots_messages()
            times = sorted(m.created_at.timestamp() for m in ours)
            by_webhook: dict[int, list[float]] = {}
            for m in ours:
                if m.webhook_id is not None:
                    by_webhook.setdefault(m.webhook_id, []).append(m.created_at.timestamp())
            webhook_most = max((most_in_window(sorted(t), WEBHOOK_WINDOW.seconds) for t in by_webhook.values()),
                               default=0)
            channel_most = most_in_window(times, CHANNEL_WINDOW.seconds)
            metrics = env.bot.metrics
            errors = env.errors
            http_429 = tally.http_429 + sum(getattr(e, "status", None) == 429 for e in errors)
            dms = sum(1 for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")
                      and not r.path.startswith(f"/channels/{channel.id}/")
                      and "talking to me a lot" in ((r.json or {}).get("content") or ""))
            counts = {name: by_label(getattr(metrics, name)) for name in
                      ("unasked", "replies", "rejected", "sends_delayed", "sends_dropped")}
            gaps = [b - a for a, b in pairwise(times)]
            result = {
                "messages": args.messages, "members": args.members, "seed": args.seed,
                "unasked_percent": args.unasked, "followup_percent": args.followup,
                "turns_per_hour": args.turns_per_hour, "speaks_through": "bot" if args.as_bot else "webhook",
                "sent_by_kind": dict(sent),
                "answered_at_once_by_kind": {k: answered[k] for k in ("mention", "reply", "wake")},
                "bot_messages_in_channel": len(ours),
                "unasked_turns": counts["unasked"].get("unasked", 0), "followups": counts["unasked"].get("followup", 0),
                "replies_total": counts["replies"],
                "rejected_samples": {k: v for k, v in counts["rejected"].items() if v},
                "person_cool_downs": sum(by_label(metrics.cool_downs).values()), "cool_down_notices_sent": dms,
                "sends_delayed": counts["sends_delayed"], "sends_dropped": counts["sends_dropped"],
                "most_per_webhook_in_2s": webhook_most, "webhook_limit": WEBHOOK_WINDOW.sends,
                "most_in_channel_in_60s": channel_most, "channel_limit": CHANNEL_WINDOW.sends,
                "limits_kept": webhook_most <= WEBHOOK_WINDOW.sends and channel_most <= CHANNEL_WINDOW.sends,
                "shortest_gap_between_bot_messages_s": round(min(gaps), 3) if gaps else None,
                "http_429_seen": http_429, "simcord_models_rate_limits": False,
                "bot_errors": [f"{type(e).__name__}: {e}"[:200] for e in errors],
                "bot_warnings": dict(tally.seen),
                "virtual_s": round(virtual_s, 1), "wall_s": round(wall_s, 1),
                "wall_in_s": {k: round(v, 1) for k, v in wall_in.items()},
                "burst_quiet_s": BURST_QUIET_S,
            }
    finally:
        logging.getLogger().removeHandler(tally)
        await store.close()
        await engine.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="messages the members send (default 200)")
    parser.add_argument("--members", type=int, default=10, help="members who send them (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the messages, gaps and the channel's chances")
    parser.add_argument("--unasked", type=int, default=30, help="%% chance to answer a burst unasked (default 30)")
    parser.add_argument("--followup", type=int, default=50, help="%% chance of a follow-up (default 50)")
    parser.add_argument("--turns-per-hour", type=int, help="the channel's budget (default: the bot's, 20)")
    parser.add_argument("--artifact", type=Path, help="a trained persona to use (default: train the tests' Alice)")
    parser.add_argument("--settle-timeout", type=float, default=RUN_SETTLE_S,
                        help=f"simcord's settle_timeout while the members talk, seconds (default {RUN_SETTLE_S}; "
                             "5.0, simcord's own, makes every burst end within the send that began it)")
    parser.add_argument("--timeline", action="store_true", help="print every message of the channel, timed")
    parser.add_argument("--as-bot", action="store_true", help="speak as the bot, not through a webhook")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a bot setting (repeatable), e.g. --env USER_COOLDOWN=0")
    args = parser.parse_args()
    from bot.core.config import ConfigError
    from bot.core.joining import BURST_QUIET_S

    if args.messages < 1 or args.members < 1:
        parser.error("--messages and --members must be at least 1")
    if not (0 <= args.unasked <= 100 and 0 <= args.followup <= 100):
        parser.error("--unasked and --followup are percents, 0 to 100")
    if bad := [pair for pair in args.env if "=" not in pair]:
        parser.error(f"--env takes KEY=VALUE, not {bad[0]!r}")
    if args.artifact is not None and not (args.artifact / "persona.json").is_file():
        parser.error(f"--artifact {args.artifact}: no persona.json there; give a trained persona's directory")
    # The bot's warnings and errors are tallied (LogTally) and printed at the end, not as they come.
    logging.getLogger().setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        began = time.perf_counter()
        artifact = args.artifact or train_artifact(tmp)
        train_s = 0.0 if args.artifact else time.perf_counter() - began
        try:
            result = asyncio.run(run(args, artifact, tmp))
        except ConfigError as e:
            sys.exit(f"joining_run: the bot's settings from --env are not valid: {e}")
        except TimeoutError as e:       # simcord's: the bot did not settle within --settle-timeout
            sys.exit(f"joining_run: simcord gave up waiting for the bot ({e}); on a busy machine give a longer "
                     f"--settle-timeout (under {BURST_QUIET_S} s keeps bursts of several messages)")
    result["train_s"] = round(train_s, 1)
    result["total_wall_s"] = round(time.perf_counter() - began, 1)
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
