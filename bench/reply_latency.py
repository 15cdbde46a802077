"""Reply latency: our engine against plain `transformers` generate, in one process, one after the other.

The model has the GPT-2 small architecture (12 layers, 768 wide, 50257 tokens) with random weights: speed
does not depend on them. Its tokenizer is a byte-level BPE trained on the demo's plays, padded with filler
tokens to GPT-2's 50257 entries, so that every sampled id decodes to text. The artifact is written to a
temporary directory and served exactly as `personabot run` serves one (filters included).

Each request has a context of 200 prompt tokens and asks for 40 new tokens (a random model seldom stops
early; the tokens actually generated are reported).

- batch 1: one reply through our default backend against one plain fp32 `model.generate` (same sampling
  settings, min_new_tokens=40). Median of `--repeats` runs after a warm-up.
- 8 channels: 8 requests with 8 different contexts arriving together, time until the last reply, against
  8 plain generations one after another.
- loop stall: the largest gap beyond 10 ms seen by a coroutine that ticks every 10 ms while the engine
  works (both measurements above).
- peak RSS of the process (baseline model, our model and the tokenizers are all loaded at the end).

Run by hand, about two minutes on 2 cores:  .venv/bin/python bench/reply_latency.py
The last line printed is one JSON object:
{"speedup_batch1": x, "concurrent8_vs_sequential": y, "max_loop_stall_ms": z, "peak_rss_mb": m, ...}
with y our time for the 8 replies divided by the sequential baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.backends import generation_threads  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.filters import TERMINAL  # noqa: E402
from training.artifact import write_persona_json, write_training_text  # noqa: E402
from training.demo import DEMO_SPEAKER, demo_plays  # noqa: E402
from training.generation import GenerationSettings  # noqa: E402
from training.modelling import cpu_threads, train_tokenizer  # noqa: E402

CONTEXT_TOKENS = 200
NEW_TOKENS = 40
GPT2_VOCAB = 50257
PEOPLE = ["Hal", "Poins", "Bardolph", "Peto", "Gadshill", "Mistress Quickly"]


def play_texts() -> list[str]:
    """Every speech of the demo's plays."""
    from training.loader import load_corpus

    corpus = load_corpus([str(p) for p in demo_plays()])
    return [m.text for c in corpus.conversations for m in c.messages if getattr(m, "text", None)]


def build_artifact(directory: Path) -> None:
    """A GPT-2-small-shaped persona artifact with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = play_texts()
    tokenizer = train_tokenizer(texts, vocab_size=16000)
    filler = [f"<w{i}>" for i in range(GPT2_VOCAB - len(tokenizer))]
    tokenizer.add_tokens(filler)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, context_tokens=CONTEXT_TOKENS)
    write_persona_json(directory, {"speaker": DEMO_SPEAKER, "generation": settings.to_json(), "metrics": {}})
    write_training_text(directory, texts[:2000], [])


def channel_turns(tokenizer, seed: int) -> list[tuple[str, str]]:
    """A conversation of short lines, longer than the context budget: the prompt is trimmed to the newest
    whole turns that fit, just under CONTEXT_TOKENS."""
    import random

    rng = random.Random(seed)
    lines = [" ".join(t.split()[:12]) for t in play_texts() if len(t.split()) >= 4]
    turns = []
    while sum(len(tokenizer.encode(f"{s}: {t}\n")) for s, t in turns) < CONTEXT_TOKENS * 2:
        turns.append((rng.choice(PEOPLE), rng.choice(lines)))
    return turns


class StallMeter:
    """A coroutine ticking every 10 ms; records the largest lateness."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.010)
            self.worst = max(self.worst, time.perf_counter() - before - 0.010)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def plain_generate(model, prompt: list[int], settings: GenerationSettings, eos: int) -> tuple[float, int]:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                             repetition_penalty=settings.repetition_penalty, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, pad_token_id=eos, eos_token_id=eos)
    return time.perf_counter() - start, out.shape[1] - ids.shape[1]


async def measure_ours(engine: Engine, conversations, repeats: int) -> dict:
    meter = StallMeter()
    meter.start()
    await engine.reply(conversations[0], target=TERMINAL, seed=0)   # warm-up
    single, tokens = [], []
    for r in range(repeats):
        start = time.perf_counter()
        reply = await engine.reply(conversations[0], target=TERMINAL, seed=r + 1)
        single.append(time.perf_counter() - start)
        tokens.append(reply.tokens)
    start = time.perf_counter()
    replies = await asyncio.gather(*(engine.reply(c, target=TERMINAL, seed=100 + i)
                                     for i, c in enumerate(conversations)))
    concurrent = time.perf_counter() - start
    await meter.stop()
    return {"batch1_s": statistics.median(single), "batch1_tokens": tokens,
            "concurrent8_s": concurrent, "concurrent8_tokens": [r.tokens for r in replies],
            "largest_batch": engine.largest_batch, "max_loop_stall_ms": meter.worst * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for our engine (default: its own default, half the cores); the baseline "
                             "always uses torch's default, every core")
    parser.add_argument("--backends", default="auto", help="comma-separated backends to measure after auto")
    args = parser.parse_args()
    threads = cpu_threads(None)
    torch.set_num_threads(threads)   # the baseline: plain transformers as a user runs it
    from training.modelling import quiet_library_output

    quiet_library_output()
    print(f"# {platform.processor() or platform.machine()}, {threads} cores, baseline on {threads} threads, ours on "
          f"{generation_threads(args.threads)}, torch {torch.__version__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "persona"
        directory.mkdir()
        build_artifact(directory)
        from transformers import AutoModelForCausalLM

        from training.artifact import read_persona

        info = read_persona(directory)
        baseline = AutoModelForCausalLM.from_pretrained(directory).eval()
        results: dict = {"machine": platform.machine(), "cores": threads,
                         "our_threads": generation_threads(args.threads)}
        engines = {}
        for name in dict.fromkeys(["auto", *[b for b in args.backends.split(",") if b]]):
            engines[name] = Engine.load(directory, backend=name, threads=args.threads).start()
        persona = engines["auto"].persona
        conversations = [channel_turns(persona.tokenizer, seed) for seed in range(8)]
        prompts = [persona.prompt(c) for c in conversations]
        print(f"# prompt tokens: {[len(p) for p in prompts]}", file=sys.stderr)
        eos = persona.tokenizer.eos_token_id

        plain_generate(baseline, prompts[0], info.generation, eos)   # warm-up
        plain = [plain_generate(baseline, prompts[0], info.generation, eos)[0] for _ in range(args.repeats)]
        sequential = sum(plain_generate(baseline, p, info.generation, eos)[0] for p in prompts)
        results["plain_batch1_s"] = statistics.median(plain)
        results["plain_sequential8_s"] = sequential
        print(f"plain transformers fp32: batch 1 {results['plain_batch1_s']:.2f} s, "
              f"8 one after another {sequential:.2f} s", file=sys.stderr)

        async def run_all() -> None:
            for name, engine in engines.items():
                measured = await measure_ours(engine, conversations, args.repeats)
                measured["backend"] = engine.persona.backend.name
                results[f"ours_{name}"] = measured
                print(f"ours ({name} = {measured['backend']}): batch 1 {measured['batch1_s']:.2f} s, "
                      f"8 together {measured['concurrent8_s']:.2f} s (batches of up to "
                      f"{measured['largest_batch']}), worst loop stall {measured['max_loop_stall_ms']:.1f} ms",
                      file=sys.stderr)
                await engine.close()

        asyncio.run(run_all())
        ours = results["ours_auto"]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(results), file=sys.stderr)
        print(json.dumps({
            "speedup_batch1": round(results["plain_batch1_s"] / ours["batch1_s"], 2),
            "concurrent8_vs_sequential": round(ours["concurrent8_s"] / sequential, 3),
            "max_loop_stall_ms": round(max(r["max_loop_stall_ms"] for k, r in results.items()
                                           if k.startswith("ours_")), 1),
            "peak_rss_mb": round(peak_mb),
            "backend": ours["backend"],
        }))


if __name__ == "__main__":
    main()
