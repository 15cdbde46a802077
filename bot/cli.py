"""The `personabot` command: data tools and training (from `training.cli`), sampling, chat, and `run`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot.core.config import BACKENDS, Settings
from bot.core.quiz import MAX_QUIZ_ROUNDS, QUIZ_ROUNDS
from training.cli import EXIT_BAD_INPUT, add_commands, add_data_options, run_command
from training.terminal_text import shown

if TYPE_CHECKING:   # imported when used: the engine pulls in torch, which `personabot --help` need not load
    from bot.core.filters import Target
    from bot.inference.engine import Engine


def _generation_overrides(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens}


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults from the artifact's persona.json)")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--top-p", type=float)
    group.add_argument("--max-new-tokens", type=int)
    group.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="auto (default: the fastest here), torch (float32), torch-int8, ctranslate2")
    group.add_argument("--threads", type=int, help="CPU threads for generation (default: half the cores)")


def _engine(args: argparse.Namespace, blocklist_file: Path | None = None) -> Engine:
    """The engine for `args.dir`, with the blocklist of `blocklist_file` when given."""
    from bot.core.filters.blocklist import Blocklist
    from bot.inference.engine import Engine

    return Engine.load(args.dir, backend=args.backend, threads=args.threads,
                       generation=_generation_overrides(args), remote=_remote(args.backend),
                       blocklist=Blocklist.from_file(blocklist_file) if blocklist_file else None)


def _remote(backend: str):
    """`--backend openai`: the inference server the settings name (INFERENCE_URL, INFERENCE_API_KEY, ...: from
    the environment and `.env`, as `personabot run` reads them); None for the other backends."""
    if backend != "openai":
        return None
    from bot.core.config import ConfigError, load_settings
    from bot.inference.backend import BackendError
    from bot.inference.remote import RemoteConfig

    try:
        return RemoteConfig.from_settings(load_settings())
    except ConfigError as e:
        raise BackendError(f"--backend openai reads the inference server from the settings: {e}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        print("personabot: error: -n must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    import asyncio

    from bot.core.filters import TERMINAL

    engine = _engine(args)
    lines, rejected = asyncio.run(_sample(engine, args.n, args.start or "", args.seed, TERMINAL))
    name = engine.persona.name
    if rejected:
        print(f"personabot: {rejected} sampled line(s) failed the output filters and were drawn again",
              file=sys.stderr)
    if len(lines) < args.n:
        print(f"personabot: only {len(lines)} of {args.n} lines passed the output filters", file=sys.stderr)
    if args.json:
        print(json.dumps({"speaker": name, "samples": lines}, ensure_ascii=False))
    else:
        for line in lines:   # a name and lines from chat data: shown escaped, never as control sequences
            print(f"{shown(name)}: {shown(line, keep_newlines=True)}")
    return 0


async def _sample(engine: Engine, n: int, start: str, seed: int | None, target: Target) -> tuple[list[str], int]:
    """`n` lines that pass the filters, drawing again for rejected ones (bounded): (lines, rejections)."""
    from training.generation import attempt_seed

    lines: list[str] = []
    rejected = 0
    async with engine:
        for attempt in range(engine.max_tries):
            todo = n - len(lines)
            if todo <= 0:
                break
            batch = await engine.lines(todo, start=start, target=target, seed=attempt_seed(seed, attempt, n))
            lines += [line.text for line in batch if line.rejected is None]
            rejected += sum(line.rejected is not None for line in batch)
    return lines, rejected


def cmd_chat(args: argparse.Namespace) -> int:
    from bot.adapters.console import chat

    return chat(_engine(args), user=args.name)


def cmd_quiz(args: argparse.Namespace) -> int:
    """`personabot quiz DIR`: the blind quiz (`bot.core.quiz`) in the terminal; the result is added to the
    artifact's kept results in the bot's database (DATABASE_URL, else DATABASE_PATH), which /persona info shows."""
    import asyncio

    from bot.core.config import ConfigError, load_settings
    from bot.core.store import StoreError
    from bot.jobs.quiz import QuizError

    if not 1 <= args.rounds <= MAX_QUIZ_ROUNDS:
        print(f"personabot: error: --rounds must be 1 to {MAX_QUIZ_ROUNDS}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        settings = load_settings()
        real = None
        if args.data:     # an artifact trained before quizzes: its held-out lines split from its exports again
            from training.cli import import_options
            from training.evaluate import held_out_lines

            real = held_out_lines(args.dir, args.data, fmt=args.format, options=import_options(args))
        # The bot's blocklist (BLOCKLIST_FILE), as for replies: no line it refuses is shown, real or generated.
        return asyncio.run(_quiz(args, settings, _engine(args, settings.blocklist_file), real))
    except (ConfigError, StoreError, QuizError) as e:
        print(f"personabot: error: {shown(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT


async def _quiz(args: argparse.Namespace, settings: Settings, engine: Engine, real: list[str] | None) -> int:
    import asyncio
    import random

    from bot.core.filters import TERMINAL
    from bot.core.quiz import QuizScore
    from bot.jobs.quiz import prepare_quiz
    from bot.storage import open_store

    async with await open_store(settings) as store, engine:
        print(f"personabot: sampling {engine.persona.name}'s lines for the quiz...", file=sys.stderr)
        quiz = await prepare_quiz(engine, store, None, rounds=args.rounds, target=TERMINAL,
                                  rng=random.Random(args.seed), real=real)
        name = shown(quiz.name)
        print(f"Blind quiz: {len(quiz.rounds)} rounds. Each shows two lines: one is {name}'s own, never trained on; "
              f"the other {name}'s persona wrote. Pick the real one (1 or 2; q stops).")
        score = QuizScore()
        for number, round_ in enumerate(quiz.rounds, 1):
            print(f"\nRound {number} of {len(quiz.rounds)}")
            for option, line in enumerate(round_.options, 1):
                print(f"  {option}) {shown(line, keep_newlines=True)}")
            picked = await asyncio.to_thread(_ask_pick)
            if picked is None:
                break
            fooled = round_.fooled_by(picked)
            score += QuizScore(1, int(fooled))
            print("  The persona's line: you took it for the real one." if fooled else "  Right: that was the real one.")
        print(f"\nThis quiz: {score.summary(quiz.name)}.")
        if score.rounds:
            kept = await store.add_quiz_score(quiz.artifact, score)
            print(f"All quizzes on this model ({store.where}): {kept.summary(quiz.name)}.")
    return 0


def _ask_pick() -> int | None:
    """The option picked (0 or 1) from the terminal; None to stop (q, or the end of input)."""
    while True:
        try:
            answer = input("Real one (1/2)? ").strip().casefold()
        except EOFError:
            return None
        if answer in ("1", "2"):
            return int(answer) - 1
        if answer in ("q", "quit"):
            return None
        print("  1 or 2, please (q stops)")


def _build_demo(settings: Settings) -> None:
    """Build the demo persona into DEMO_DIR. Ctrl-C or SIGTERM stops it as it stops `personabot train` (one
    line from `run_command`, exit status 130; in the training loop the progress is saved first)."""
    from training.demo import DEMO_BASE_NAME, DEMO_SPEAKER, build_demo, demo_base_gguf
    from training.errors import DataError
    from training.progress import Progress

    base_gguf = None
    if settings.demo_base == "auto":
        try:
            base_gguf = demo_base_gguf()
        except DataError as e:   # the fallback, said once with how to get the better demo
            print(f"personabot: {e.message}, so the demo persona is trained from scratch instead (much weaker); "
                  f"for the better demo: {e.hint}", file=sys.stderr)
    how = (f"a LoRA adapter on {DEMO_BASE_NAME}" if base_gguf else "trained from scratch") + " on Shakespeare"
    print(f"personabot: no persona yet (PERSONA_MODEL is not set), so building the demo persona: "
          f"{DEMO_SPEAKER}, {how} in about {settings.demo_time_budget_s / 60:.0f} minutes, into "
          f"{settings.model_dir}", file=sys.stderr)
    build_demo(settings.model_dir, time_budget_s=settings.demo_time_budget_s, base_gguf=base_gguf,
               progress=Progress("auto"), threads=settings.torch_threads)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from bot.core.config import ConfigError, load_settings
    from bot.core.store import StoreError
    from bot.runner import StartError, serve

    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"personabot: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if settings.persona_model is None and not settings.model_dir.exists():
        _build_demo(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler announces every start, stop and job run at INFO: in the terminal chat that is noise.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # discord.py logs at INFO by itself; the token never appears in its logs or in ours.
    try:
        return asyncio.run(serve(settings))
    except (StartError, StoreError) as e:
        print(f"personabot: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 0


def cmd_persona(args: argparse.Namespace) -> int:
    """`personabot persona add|list|remove`: the persona registry in the store (DATABASE_URL, else
    DATABASE_PATH), as the bot's owner."""
    import asyncio

    from bot.core.config import ConfigError, load_settings
    from bot.core.personas import PersonaError
    from bot.core.store import StoreError

    try:
        settings = load_settings()
        return asyncio.run(_persona_command(args, settings))
    except (ConfigError, StoreError, PersonaError) as e:
        print(f"personabot: error: {shown(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT


async def _persona_command(args: argparse.Namespace, settings: Settings) -> int:
    from bot.core import personas
    from bot.storage import open_store

    authority = personas.operator(args.guild)
    if args.action == "add":    # the artifact is checked before the database is opened (or created)
        artifact = personas.check_artifact(args.dir)
    async with await open_store(settings) as store:
        if args.action == "add":
            entry = await personas.register(store, authority, args.name, artifact, guild_id=args.guild,
                                            generation=_generation_overrides(args))
            print(f"personabot: registered {shown(entry.name)} ({_owner(entry.guild_id)}): {shown(str(artifact))}")
        elif args.action == "remove":
            dropped = await personas.remove(store, authority, args.name, guild_id=args.guild)
            print(f"personabot: removed {shown(args.name)} ({_owner(args.guild)})"
                  + (f" and its {dropped} assignment(s)" if dropped else ""))
        else:
            found = await (personas.listed(store, args.guild) if args.guild is not None else store.personas())
            for entry in found:
                print(f"{shown(entry.name)}\t{_owner(entry.guild_id)}\t{shown(str(entry.artifact_path))}")
            if not found:
                print("personabot: no personas registered", file=sys.stderr)
    return 0


def _owner(guild_id: int | None) -> str:
    return "global" if guild_id is None else f"guild {guild_id}"


def _add_persona_commands(sub: argparse._SubParsersAction) -> None:
    persona = sub.add_parser("persona", help="register personas (artifacts) the bot can speak as, in the store "
                                             "(DATABASE_URL or DATABASE_PATH)")
    actions = persona.add_subparsers(dest="action", required=True, metavar="ACTION")
    guild = {"type": int, "metavar": "ID", "help": "the guild (server) id that owns it (default: global)"}
    add = actions.add_parser("add", help="register an artifact directory as a persona")
    add.add_argument("name", help="the name it speaks under")
    add.add_argument("dir", type=Path, help="persona artifact directory (a whole model or a LoRA adapter)")
    add.add_argument("--guild", **guild)
    sampling = add.add_argument_group("default sampling (over the artifact's persona.json)")
    for option, kind in (("--temperature", float), ("--top-k", int), ("--top-p", float),
                         ("--max-new-tokens", int)):
        sampling.add_argument(option, type=kind)
    listing = actions.add_parser("list", help="the registered personas: name, owner, artifact (tab-separated)")
    listing.add_argument("--guild", **{**guild, "help": "only those seen from this guild (its own and global)"})
    remove = actions.add_parser("remove", help="unregister a persona (its assignments go with it)")
    remove.add_argument("name")
    remove.add_argument("--guild", **guild)
    persona.set_defaults(func=cmd_persona)


def cmd_db(args: argparse.Namespace) -> int:
    """`personabot db copy`: every row of the bot's database into another one (`bot.storage.copy`)."""
    import asyncio

    from bot.core.config import ConfigError, load_settings
    from bot.core.store import StoreError

    try:
        # Settings name the source only when --from does not: a copy from elsewhere needs none of them.
        settings = load_settings() if args.source is None else None
        return asyncio.run(_copy_database(args, settings))
    except (ConfigError, StoreError) as e:
        print(f"personabot: error: {shown(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT


async def _copy_database(args: argparse.Namespace, settings: Settings | None) -> int:
    from bot.storage.copy import copy_database, open_database, open_source

    async with await open_source(settings, args.source) as source, await open_database(args.to) as target:
        counts = await copy_database(source, target, report=lambda line: print(line, file=sys.stderr))
        print(f"personabot: copied {sum(counts.values())} rows in {len(counts)} tables from {source.where} "
              f"to {target.where}", file=sys.stderr)
    return 0


def _add_db_commands(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the bot's database: copy it into another one (SQLite <-> PostgreSQL)")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    copy = actions.add_parser(
        "copy", help="copy every row into a new or empty database (e.g. SQLite -> PostgreSQL)",
        description="Copy every row of personabot's tables from the bot's database (DATABASE_URL if set, else "
                    "DATABASE_PATH; or --from) into TARGET, e.g. from one machine's SQLite file onto the "
                    "PostgreSQL server of several. Both are migrated to this personabot's schema first. The "
                    "target must hold no personabot rows (a new or just-migrated database): one that does, or "
                    "the source itself, is refused and left as it was. The copy is one transaction on the "
                    "target: all of it or nothing. Ids are kept, and new rows continue after them.",
        epilog="A database is a PostgreSQL address, postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or "
               "postgres://), or a SQLite file's plain path (sqlite:/// URLs are refused: tools disagree on "
               "their slashes). Progress goes to stderr, a line per table. Exit status 2 when refused or failed.")
    copy.add_argument("--to", required=True, metavar="TARGET",
                      help="the database to fill (a SQLite file is created if absent)")
    copy.add_argument("--from", dest="source", metavar="SOURCE",
                      help="the database to copy (default: the bot's own, DATABASE_URL if set, else "
                           "DATABASE_PATH); a SQLite source must exist")
    copy.set_defaults(func=cmd_db)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personabot", description="A chat bot that talks like a character.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)

    sample = sub.add_parser("sample", help="sample stand-alone lines from a persona")
    sample.add_argument("dir", type=Path, help="persona artifact directory")
    sample.add_argument("-n", type=int, default=5, help="how many lines (default 5)")
    sample.add_argument("--start", help="text every line starts with, e.g. 'my deepest, darkest secret is'")
    sample.add_argument("--seed", type=int, help="seed for repeatable samples")
    sample.add_argument("--json", action="store_true", help='print {"speaker": ..., "samples": [...]}')
    _add_generation_options(sample)
    sample.set_defaults(func=cmd_sample)

    chat = sub.add_parser("chat", help="talk to a persona in the terminal")
    chat.add_argument("dir", type=Path, help="persona artifact directory")
    chat.add_argument("--name", default="You", help="your name in the conversation (default You)")
    _add_generation_options(chat)
    chat.set_defaults(func=cmd_chat)

    quiz = sub.add_parser("quiz", help="a blind quiz: tell the persona's lines from the person's real ones",
                          description="Rounds of two lines of similar length: one real line of the person that "
                                      "training held out, one the persona writes now. Pick the real one; at the end, "
                                      "how often the persona's line was taken for the real one (50%% means they "
                                      "cannot be told apart). The result is added to the model's kept results in the "
                                      "bot's database (DATABASE_URL, else DATABASE_PATH), which /persona info shows.")
    quiz.add_argument("dir", type=Path, help="persona artifact directory")
    quiz.add_argument("--rounds", type=int, default=QUIZ_ROUNDS, help=f"rounds (default {QUIZ_ROUNDS}, at most "
                                                                       f"{MAX_QUIZ_ROUNDS})")
    quiz.add_argument("--seed", type=int, help="seed for repeatable rounds")
    quiz.add_argument("--data", nargs="+", metavar="PATH",
                      help="its training exports: for a model trained before quizzes, whose artifact keeps no "
                           "held-out lines (they are split from the exports as its training split them)")
    add_data_options(quiz)
    _add_generation_options(quiz)
    quiz.set_defaults(func=cmd_quiz)

    run = sub.add_parser("run", help="start the bot (builds the demo persona when there is no model yet)")
    run.set_defaults(func=cmd_run)
    _add_persona_commands(sub)
    _add_db_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
