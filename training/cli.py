"""Command-line front of the training side: `data inspect|dump|formats`, `train`, `eval`.

`personabot` mounts these subcommands; `python -m training` runs `train` alone (for child processes).
Exit codes: 0 done, 2 bad input or settings (a message says what to fix), 130 interrupted (Ctrl-C or
SIGTERM; a training run is resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from training.errors import DataError, TrainingError, TrainingInterrupted
from training.terminal_text import shown

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_data_options(parser: argparse.ArgumentParser) -> None:
    from training.formats.base import CONVERSATION_GAP_MINUTES

    parser.add_argument("--format", metavar="NAME", help="the export format (default: detected from the content; "
                        "`personabot data formats` lists them)")
    parser.add_argument("--bots", metavar="NAMES", default="",
                        help="comma-separated author names or ids to treat as bots (skipped)")
    parser.add_argument("--exclude", metavar="NAMES", default="",
                        help="comma-separated names or ids of people whose messages must not be used at all")
    parser.add_argument("--exclude-file", metavar="FILE", type=Path,
                        help="a UTF-8 file of more names or ids to leave out, one per line (any characters, "
                             "any number of them: no command-line limit)")
    parser.add_argument("--columns", metavar="ROLE=COLUMN,...", default="",
                        help="for tables and data sets: which column is the text, speaker, conversation, time "
                             "(or turns), e.g. text=full_text,speaker=screen_name (default: from the names)")
    parser.add_argument("--conversation-gap", metavar="MINUTES", type=float, default=CONVERSATION_GAP_MINUTES,
                        help="a silence longer than this starts a new conversation "
                             f"(default {CONVERSATION_GAP_MINUTES:g})")


def import_options(args: argparse.Namespace):
    from training.formats.base import ImportOptions, conversation_gap_problem
    from training.formats.tables import parse_column_mapping

    gap_problem = conversation_gap_problem(args.conversation_gap)
    if gap_problem:
        raise DataError(None, gap_problem)

    return ImportOptions.from_user(args.bots.split(","), args.conversation_gap, excluded_people(args),
                                   parse_column_mapping(args.columns))


def excluded_people(args: argparse.Namespace) -> list[str]:
    """Names and ids from --exclude and from every line of --exclude-file."""
    people = [e.strip() for e in args.exclude.split(",") if e.strip()]
    if args.exclude_file is not None:
        try:
            text = args.exclude_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(args.exclude_file, f"cannot read the list of people to leave out: {e}",
                            hint="one name or id per line, UTF-8") from e
        people += [line.strip() for line in text.splitlines() if line.strip()]
    return people


# --- data ------------------------------------------------------------------------------------------------
def cmd_data_inspect(args: argparse.Namespace) -> int:
    from training.loader import load_corpus

    corpus = load_corpus(args.paths, format=args.format, options=import_options(args))
    speakers = corpus.speakers()
    if args.json:
        report = {"files": [f.to_json() for f in corpus.files], "speakers": dict(speakers.most_common()),
                  "conversations": len(corpus.conversations)}
        span = corpus.date_range()
        report["date_range"] = [span[0].isoformat(), span[1].isoformat()] if span else None
        report["ignored"] = [{"path": p, "reason": why} for p, why in corpus.ignored]
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    # Names and paths come from the exports: shown escaped, never as terminal control sequences.
    width = max(len(shown(f.path)) for f in corpus.files)
    for f in corpus.files:
        skipped = ", ".join(f"{n} {why}" for why, n in f.skipped.most_common()) or "none"
        print(f"{shown(f.path):<{width}}  {f.format:<16} {f.messages:>7,} messages kept; skipped: {skipped}")
        for note in f.notes:
            print(f"{'':<{width}}  {shown(note)}")
    if corpus.ignored:
        reasons = Counter(why for _, why in corpus.ignored)
        print(f"ignored {len(corpus.ignored)} other files in the folders named: "
              + ", ".join(f"{n} {why}" for why, n in reasons.most_common()))
        for path, why in corpus.ignored[:10]:
            print(f"  {shown(path)} ({why})")
        if len(corpus.ignored) > 10:
            print(f"  ... and {len(corpus.ignored) - 10} more (--json lists them all)")
    total = sum(speakers.values())
    print(f"\n{total:,} messages in {len(corpus.conversations):,} conversations")
    span = corpus.date_range()
    print("dates: " + (f"{span[0].isoformat()} to {span[1].isoformat()}" if span else "none in these exports"))
    limit = None if args.all else 20
    print("\nspeakers by messages:")
    for name, count in speakers.most_common(limit):
        print(f"  {count:>7,}  {shown(name)}")
    if limit and len(speakers) > limit:
        print(f"  ... {len(speakers) - limit} more (--all lists them)")
    return 0


def cmd_data_dump(args: argparse.Namespace) -> int:
    from training.formats.data_dump import write_dump
    from training.loader import load_corpus

    corpus = load_corpus(args.paths, format=args.format, options=import_options(args))
    write_dump(((conversation.id, m.speaker, m.speaker_id, m.text, m.timestamp)
                for conversation in corpus.conversations for m in conversation.messages), sys.stdout)
    sys.stdout.flush()
    return 0


def cmd_data_formats(args: argparse.Namespace) -> int:
    from training import formats

    for importer in formats.all_importers():
        print(f"{importer.name:<18} {importer.description}")
    return 0


# --- train -----------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from training.modelling import PRECISIONS, PRESETS
    from training.progress import MODES
    from training.dataset import BLOCK_SIZE
    from training.trainer import TrainConfig

    default = TrainConfig.default

    what = parser.add_argument_group("what to train")
    what.add_argument("--data", nargs="+", required=True, metavar="PATH",
                      help="chat exports: files, folders or zips (several allowed)")
    what.add_argument("--speaker", help="whose voice to learn (name, username or id; any case); for posts that "
                      "name no speaker, the name to give their voice (default: the assistant, for fine-tuning "
                      "data; required otherwise)")
    what.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write the artifact")
    base = what.add_mutually_exclusive_group()
    base.add_argument("--base", default=default("base"), metavar="HUB_ID_OR_DIR",
                      help=f"pretrained model to fine-tune: a hub id or a local directory (default {default('base')})")
    base.add_argument("--from-scratch", choices=list(PRESETS), metavar="SIZE",
                      help=f"train a new GPT-2 and tokenizer instead: {', '.join(PRESETS)}")
    what.add_argument("--lora", action="store_true",
                      help="train a LoRA adapter on the base: the artifact holds the adapter (megabytes) and "
                           "names its base, which must still be there (hub id or directory) to load it")
    what.add_argument("--lora-merge", action="store_true",
                      help="with --lora: merge the adapter into the base and write a full model artifact instead")
    what.add_argument("--lora-r", type=int, default=default("lora_r"), help=f"LoRA rank (default {default('lora_r')})")
    add_data_options(what)

    how = parser.add_argument_group("how long and how")
    how.add_argument("--epochs", type=float, default=default("epochs"),
                     help=f"passes over the training data (default {default('epochs'):g})")
    how.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    how.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="fit the training loop into this many seconds (the schedule adapts)")
    how.add_argument("--lr", type=float, help="peak learning rate (default: 5e-5, LoRA 2e-4, from scratch by size)")
    how.add_argument("--batch-size", type=int, default=default("batch_size"),
                     help=f"blocks per micro-batch (default {default('batch_size')})")
    how.add_argument("--grad-accum", type=int, default=default("grad_accum"),
                     help=f"micro-batches per optimiser step (default {default('grad_accum')})")
    how.add_argument("--warmup", type=float, default=default("warmup"),
                     help=f"share of steps spent warming up (default {default('warmup'):g})")
    how.add_argument("--eval-every", type=int, help="steps between evaluations (default: about 8 per run)")
    how.add_argument("--patience", type=int, default=default("patience"),
                     help=f"stop after this many evaluations without improvement (default {default('patience')})")
    how.add_argument("--block-size", type=int, help=f"packed sequence length (default: min(model, {BLOCK_SIZE}))")
    how.add_argument("--context-tokens", type=int, help="context budget per response (default: half a block)")
    how.add_argument("--val-fraction", type=float, default=default("val_fraction"),
                     help=f"share held out (default {default('val_fraction'):g})")
    how.add_argument("--standalone-share", type=float, default=default("standalone_share"),
                     help=f"share of turns also trained with no context (default {default('standalone_share'):g})")
    how.add_argument("--min-responses", type=int, default=default("min_responses"),
                     help=f"refuse to train on fewer turns of the speaker (default {default('min_responses')})")
    how.add_argument("--context-loss-weight", type=float,
                     help="loss weight on the other speakers' turns (default 0; 0.5 from scratch)")
    how.add_argument("--seed", type=int, default=default("seed"), help="seed for the split, shuffling and sampling")
    how.add_argument("--samples", type=int, default=default("samples"),
                     help=f"sample lines stored in persona.json (default {default('samples')})")
    how.add_argument("--fidelity-lines", type=int, default=default("fidelity_lines"), metavar="N",
                     help=f"lines sampled for persona.json's fidelity report: whose lines they are taken for, "
                          f"diversity, length (default {default('fidelity_lines')}; 0: no report)")

    run = parser.add_argument_group("running")
    run.add_argument("--threads", type=int, help="CPU threads (default: the cores available)")
    run.add_argument("--precision", choices=PRECISIONS, default=default("precision"),
                     help="auto: bf16 where the GPU or CPU computes it natively, else fp32")
    run.add_argument("--progress", choices=MODES, default="auto",
                     help="auto (a bar on a terminal), bar, json (JSON lines on stdout), log, none")
    run.add_argument("--checkpoint-every", type=float, default=default("checkpoint_every_s"), metavar="SECONDS",
                     help=f"save a resumable checkpoint this often (default {default('checkpoint_every_s'):g}; "
                          "also on Ctrl-C/SIGTERM)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
    run.add_argument("--restart", action="store_true", help="discard an interrupted run instead of resuming it")


def cmd_train(args: argparse.Namespace) -> int:
    from training.formats.tables import parse_column_mapping
    from training.loader import default_speaker
    from training.progress import Progress
    from training.trainer import TrainConfig, train

    speaker = args.speaker or default_speaker([str(p) for p in args.data], format=args.format)
    if speaker is None:
        raise DataError(None, "--speaker is needed: these exports name no default speaker",
                        hint="`personabot data inspect` on them lists who speaks most")
    cfg = TrainConfig(
        data=[str(p) for p in args.data], speaker=speaker, out=args.out, base=args.base,
        from_scratch=args.from_scratch, format=args.format, epochs=args.epochs, max_steps=args.max_steps,
        time_budget_s=args.time_budget, lora=args.lora, lora_merge=args.lora_merge, lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup=args.warmup, eval_every=args.eval_every, patience=args.patience, block_size=args.block_size,
        context_tokens=args.context_tokens, val_fraction=args.val_fraction,
        standalone_share=args.standalone_share, min_responses=args.min_responses,
        context_loss_weight=args.context_loss_weight, seed=args.seed,
        bots=[b.strip() for b in args.bots.split(",") if b.strip()], exclude=excluded_people(args),
        columns=parse_column_mapping(args.columns), conversation_gap_minutes=args.conversation_gap,
        samples=args.samples, fidelity_lines=args.fidelity_lines, threads=args.threads, precision=args.precision, overwrite=args.overwrite,
        restart=args.restart, checkpoint_every_s=args.checkpoint_every)
    progress = Progress(args.progress)
    result = train(cfg, progress)   # stopped by Ctrl-C or SIGTERM: `run_command` says where progress is kept
    if progress.mode != "json":
        base, trained = result.metrics.base, result.metrics.trained
        print(f"wrote {result.out}\n"
              f"  validation loss {base.val_loss:.3f} -> {trained.val_loss:.3f} "
              f"(perplexity {base.val_perplexity:.1f} -> {trained.val_perplexity:.1f}) "
              f"on {trained.val_tokens:,} held-out response tokens\n"
              f"  {result.steps} steps, stopped: {result.stopped}", file=sys.stderr)
    return 0


# --- eval ------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_artifact

    report = evaluate_artifact(args.dir, args.data, fmt=args.format, options=import_options(args),
                               speaker=args.speaker, threads=args.threads, fidelity_lines=args.fidelity_lines)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{report['artifact']}: {report['speaker']} on {report['responses']:,} turns "
              f"({report['response_tokens']:,} tokens) from {', '.join(args.data)}")
        print(f"  loss {report['loss']:.4f}  perplexity {report['perplexity']:.2f}  (float32)")
        if "int8" in report:
            q = report["int8"]
            print(f"  loss {q['loss']:.4f}  perplexity {q['perplexity']:.2f}  (int8, the CPU backend: "
                  f"{q['perplexity_change_pct']:+.1f}% perplexity)")
        stored = report.get("artifact_val_loss")
        if stored is not None and math.isfinite(stored):
            print(f"  (its own held-out loss when trained: {stored:.4f})")
        from training.fidelity import FidelityReport

        fidelity = FidelityReport.from_json(report.get("fidelity"))
        if fidelity is not None:
            print(f"  fidelity: {fidelity.summary()}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="persona artifact directory")
    parser.add_argument("--data", nargs="+", required=True, metavar="PATH", help="exports to evaluate on")
    parser.add_argument("--speaker", help="whose turns to score (default: the artifact's speaker)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores available)")
    from training.fidelity import FIDELITY_LINES   # light: no torch, no scikit-learn until measured

    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fidelity-lines", type=int, default=FIDELITY_LINES, metavar="N",
                        help=f"lines to sample for the fidelity report (default {FIDELITY_LINES}; 0: no report)")
    add_data_options(parser)


# --- wiring ----------------------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="look at chat exports the way training will read them")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{inspect,dump,formats}")
    inspect = data_sub.add_parser("inspect", help="formats, messages kept and skipped, speakers, dates")
    inspect.add_argument("paths", nargs="+", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--all", action="store_true", help="list every speaker")
    add_data_options(inspect)
    inspect.set_defaults(func=cmd_data_inspect)
    dump = data_sub.add_parser("dump", help="the normalised messages as JSON Lines")
    dump.add_argument("paths", nargs="+", metavar="PATH")
    add_data_options(dump)
    dump.set_defaults(func=cmd_data_dump)
    fmts = data_sub.add_parser("formats", help="list the export formats personabot reads")
    fmts.set_defaults(func=cmd_data_formats)

    train = sub.add_parser("train", help="train a persona on one speaker's messages")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="loss and perplexity of a persona on exports")
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning the errors a user can fix into one message and exit code 2, and Ctrl-C or
    SIGTERM into one line and exit code 130 (where a training run keeps its progress, the line says so)."""
    from training.artifact import ArtifactError
    from training.modelling import quiet_library_output

    quiet_library_output()
    try:
        with _sigterm_as_ctrl_c():
            return func(args)
    except (DataError, TrainingError, ArtifactError) as e:
        # The message may quote names from the data (the closest speakers, a file name).
        print(f"personabot: error: {shown(str(e), keep_newlines=True)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("personabot: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at /dev/null so that Python's final
        # flush does not complain (the recipe in the `signal` module's documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except TrainingInterrupted as e:    # progress is saved; the line says where
        print(f"personabot: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a process manager, `kill`, the bot ending a retrain) stops a command as Ctrl-C does, where it
    would otherwise end the process without a word. In its loop the trainer takes both over, to save a
    checkpoint first; an asyncio loop (`personabot run`) does the same while it serves."""
    if threading.current_thread() is not threading.main_thread():   # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`python -m training`: the train command alone, for child processes."""
    parser = argparse.ArgumentParser(prog="python -m training", description="Train a persona (same options "
                                     "as `personabot train`).")
    add_train_arguments(parser)
    parser.add_argument("--stop-with-parent", type=int, metavar="PID",
                        help="stop (as on SIGTERM: a checkpoint is saved) when process PID ends: the bot passes its "
                             "own, so that a bot that dies leaves no training running on")
    args = parser.parse_args(argv)
    if args.stop_with_parent is not None:
        stop_with_parent(args.stop_with_parent)
    return run_command(cmd_train, args)


def stop_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when our parent ends (Linux); if `parent_pid` is not our parent any more,
    it ended before we asked: stop now."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(f"personabot: the process that started this training ({parent_pid}) has ended")
