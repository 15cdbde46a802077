"""Useful training tokens per second: our packed blocks against per-example padding (the tutorials' way).

Useful tokens carry loss: the persona's responses and their end markers, never padding and never context.
Both approaches train the same model (the GPT-2 small architecture, random weights: speed does not depend
on them) on the same (context, response) examples, in the same process, one after the other:

- baseline: every example (context within 128 tokens, then the response) padded to 256 tokens, a standard
  HF forward with labels (-100 on context and padding), as in the usual fine-tuning tutorials;
- ours: `build_dataset` windows packed into blocks of 512 tokens (what `personabot train` uses for GPT-2),
  the same 128-token context budget, `block_loss`; first in fp32 like the baseline (the effect of packing
  alone), then, on a CPU that computes bf16 natively, in bf16 autocast as `personabot train` runs by
  default there (weights stay fp32).

How much packing gains depends on the data: the loss-bearing share of a packed block can be no more than the
persona's share of the conversation, while a padded row wastes what its example leaves empty. So the
benchmark measures three shapes of data:

- group: a five-person group chat, short messages (median about seven words), the persona writing a quarter;
- dm: a two-person chat of the same kind of messages (the commonest export: a friend's DMs);
- plays: Falstaff's three plays (the demo corpus): long speeches in crowded scenes.

The chats are generated (their words taken from the plays); only their shape matters for speed.

Run by hand, about ten minutes on 2 cores:  .venv/bin/python bench/train_throughput.py
The last line printed is one JSON object with the figures of every corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import transcript  # noqa: E402
from training.conversation import Conversation, Message  # noqa: E402
from training.dataset import DatasetConfig, build_dataset  # noqa: E402
from training.demo import DEMO_SPEAKER, demo_plays  # noqa: E402
from training.loader import load_corpus  # noqa: E402
from training.modelling import autocast_dtype, quiet_library_output, train_tokenizer  # noqa: E402
from training.trainer import block_loss  # noqa: E402

PERSONA = "Mira"


def chat_corpus(people: list[str], weights: list[float], seed: int, conversations: int = 160) -> list[Conversation]:
    """Chats shaped like real ones: short messages with a long tail (log-normal word counts, median about
    seven), a third of the time the same person writing again."""
    rng = random.Random(seed)
    words = [w for p in demo_plays() for w in re.findall(r"[A-Za-z']+", p.read_text())]
    result = []
    for c in range(conversations):
        messages, speaker = [], rng.choices(people, weights)[0]
        for _ in range(rng.randint(15, 60)):
            if rng.random() > 0.35:
                speaker = rng.choices([p for p in people if p != speaker] or people)[0]
            n = max(1, min(60, int(rng.lognormvariate(2.0, 0.7))))
            start = rng.randrange(len(words) - n)
            messages.append(Message(speaker, " ".join(words[start:start + n])))
        result.append(Conversation(f"chat#{c}", messages))
    return result


def corpus(name: str) -> tuple[list[Conversation], str]:
    if name == "group":
        return chat_corpus([PERSONA, "Jonas", "Priya", "Tomek", "Ines"], [0.25, 0.22, 0.2, 0.18, 0.15], 0), PERSONA
    if name == "dm":
        return chat_corpus([PERSONA, "Jonas"], [0.5, 0.5], 1), PERSONA
    return load_corpus([str(p) for p in demo_plays()], format="script-play").conversations, DEMO_SPEAKER


def padded_examples(dataset, tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per training response: its context within the budget, the response, the end
    marker; built with the same prompt function that training and inference use."""
    persona = dataset.speaker.name
    examples = []
    for unit in dataset.train_units:
        for i, turn in enumerate(unit.turns):
            if not turn.is_target:
                continue
            before = [(t.speaker, t.text) for t in unit.turns[:i]]
            prompt = transcript.build_prompt(tokenizer, before, persona, dataset.config.context_tokens)
            response = transcript.encode_response(tokenizer, turn.text)
            examples.append(((prompt + response)[:max_length], ([-100] * len(prompt) + response)[:max_length]))
    return examples


def time_steps(step, batches) -> tuple[float, int]:
    """Seconds and useful tokens over `batches`, the first one untimed (warm-up)."""
    step(batches[0])
    start = time.perf_counter()
    useful = sum(step(batch) for batch in batches[1:])
    return time.perf_counter() - start, useful


def measure(name: str, args: argparse.Namespace) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    conversations, speaker = corpus(name)
    tokenizer = train_tokenizer([f"{m.speaker}: {m.text}\n" for c in conversations for m in c.messages], 8192)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, 768 wide, 50257-token vocabulary
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device = torch.device("cpu")
    n = args.steps + 1

    # Baseline: one example per row, padded to --pad-length.
    base = build_dataset(conversations, speaker, tokenizer,
                         DatasetConfig(block_size=args.pad_length, context_tokens=args.context_tokens))
    examples = padded_examples(base, tokenizer, args.pad_length)
    random.Random(0).shuffle(examples)
    rows = []
    for i in range(n * args.batch_size):
        ids, labels = examples[i % len(examples)]
        pad = args.pad_length - len(ids)
        rows.append((ids + [tokenizer.eos_token_id] * pad, labels + [-100] * pad, [1] * len(ids) + [0] * pad))
    padded_batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def padded_step(batch) -> int:
        labels = torch.tensor([r[1] for r in batch])
        loss = model(input_ids=torch.tensor([r[0] for r in batch]), attention_mask=torch.tensor([r[2] for r in batch]),
                     labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int((labels[:, 1:] != -100).sum())  # the positions the shifted loss is computed on

    # Ours: packed windows in blocks of --block-size, the same context budget.
    ours = build_dataset(conversations, speaker, tokenizer,
                         DatasetConfig(block_size=args.block_size, context_tokens=args.context_tokens))
    blocks = ours.train
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
    packed_batches = [blocks.subset(order[torch.arange(i, i + args.packed_batch) % len(blocks)])
                      for i in range(0, n * args.packed_batch, args.packed_batch)]

    def packed_step(batch, dtype=None) -> int:
        weighted, weight, _, count = block_loss(model, batch, 0.0, device, dtype)
        (weighted / weight).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return count

    pad_s, pad_useful = time_steps(padded_step, padded_batches)
    pack_s, pack_useful = time_steps(packed_step, packed_batches)
    padded_rate, packed_rate = pad_useful / pad_s, pack_useful / pack_s
    result = {
        "padded_useful_tok_s": round(padded_rate, 1), "packed_useful_tok_s": round(packed_rate, 1),
        "speedup_packing": round(packed_rate / padded_rate, 2),
        "padded_fill": round(sum(len(e[0]) for e in examples) / len(examples) / args.pad_length, 3),
        "packed_fill": ours.stats["train"]["packing_efficiency"],
        "responses": ours.stats["train"]["responses"],
    }
    line = (f"{name:>6}: padding to {args.pad_length} (fp32): {pad_useful} useful tokens in {pad_s:.1f}s = "
            f"{padded_rate:.1f} tok/s, rows {result['padded_fill']:.0%} filled | packed in {args.block_size} "
            f"(fp32): {pack_useful} in {pack_s:.1f}s = {packed_rate:.1f} tok/s, blocks "
            f"{result['packed_fill']:.0%} filled: {result['speedup_packing']}x")
    # What `personabot train` runs by default: the same packing, in bf16 where the CPU computes it natively.
    dtype = autocast_dtype(device)
    if dtype is not None:
        bf_s, bf_useful = time_steps(lambda b: packed_step(b, dtype), packed_batches)
        result["packed_bf16_useful_tok_s"] = round(bf_useful / bf_s, 1)
        result["speedup_default"] = round((bf_useful / bf_s) / padded_rate, 2)
        line += f" | packed, bf16 (our default here): {bf_useful / bf_s:.1f} tok/s: {result['speedup_default']}x"
    print(line, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", choices=("group", "dm", "plays"), default=["group", "dm", "plays"])
    parser.add_argument("--pad-length", type=int, default=256, help="the baseline's padded length (256)")
    parser.add_argument("--block-size", type=int, default=512, help="our block length (512, as in training)")
    parser.add_argument("--context-tokens", type=int, default=128, help="context budget, both sides (128)")
    parser.add_argument("--batch-size", type=int, default=8, help="padded rows per step (8)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per approach, after one warm-up (4)")
    args = parser.parse_args()
    # Same tokens per step on both sides: 8 rows of 256 against 4 blocks of 512.
    args.packed_batch = max(1, args.batch_size * args.pad_length // args.block_size)
    quiet_library_output()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); GPT-2 small, {args.steps} timed steps of "
          f"{args.batch_size * args.pad_length} tokens per approach", flush=True)
    results = {name: measure(name, args) for name in args.corpus}
    print(json.dumps({"pad_length": args.pad_length, "block_size": args.block_size,
                      "context_tokens": args.context_tokens, "corpora": results}))


if __name__ == "__main__":
    main()
