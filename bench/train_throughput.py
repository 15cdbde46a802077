"""Useful training tokens per second: our packed blocks against per-example padding (the tutorials' way).

Useful tokens are the ones that carry loss (the persona's responses and end markers), never padding and
never context. Both approaches train the same model (the GPT-2 small architecture, random weights: speed
does not depend on them) on the same examples, in the same process, one after the other:

- baseline: every (context, response) example padded to --max-length, a standard HF forward with labels
  (-100 on context and padding), as in the usual fine-tuning tutorials;
- ours: `training.dataset.build_dataset` windows packed into blocks of the same length, `block_loss`.

Run by hand (it takes a few minutes on 2 cores):  .venv/bin/python bench/train_throughput.py
The data defaults to the demo corpus (Falstaff's plays); --data/--speaker/--format pick other exports.
The last line printed is a JSON object with both figures and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import transcript  # noqa: E402
from training.dataset import DatasetConfig, build_dataset  # noqa: E402
from training.demo import DEMO_SPEAKER, demo_plays  # noqa: E402
from training.loader import load_corpus  # noqa: E402
from training.modelling import quiet_library_output, train_tokenizer  # noqa: E402
from training.trainer import block_loss  # noqa: E402


def padded_examples(dataset, tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per response: its context within the budget, the response, its end marker."""
    persona = dataset.speaker.name
    examples = []
    for unit in dataset.train_units:
        for i, turn in enumerate(unit.turns):
            if not turn.is_target:
                continue
            before = [(t.speaker, t.text) for t in unit.turns[:i]]
            prompt = transcript.build_prompt(tokenizer, before, persona, dataset.config.context_tokens)
            response = transcript.encode_response(tokenizer, turn.text)
            ids = (prompt + response)[:max_length]
            labels = ([-100] * len(prompt) + response)[:max_length]
            examples.append((ids, labels))
    return examples


def time_steps(step, batches, warmup: int = 1) -> tuple[float, int]:
    """Seconds and useful tokens over `batches` (the first `warmup` untimed)."""
    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    useful = sum(step(batch) for batch in batches[warmup:])
    return time.perf_counter() - start, useful


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", help="exports (default: the demo plays)")
    parser.add_argument("--speaker", default=DEMO_SPEAKER)
    parser.add_argument("--format", default=None)
    parser.add_argument("--max-length", type=int, default=256, help="padding length and block size (256)")
    parser.add_argument("--context-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per approach (plus one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    quiet_library_output()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or [str(p) for p in demo_plays()]
    fmt = args.format if args.data else "script-play"
    corpus = load_corpus(data, format=fmt)
    texts = [f"{m.speaker}: {m.text}\n" for c in corpus.conversations for m in c.messages]
    tokenizer = train_tokenizer(texts, vocab_size=8192)
    config = DatasetConfig(block_size=args.max_length, context_tokens=args.context_tokens, standalone_share=0.0)
    dataset = build_dataset(corpus.conversations, args.speaker, tokenizer, config)

    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, 768 wide, 50257-token vocabulary
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device = torch.device("cpu")
    n = args.steps + 1

    # --- baseline: one example per row, padded to max_length -----------------------------------------------
    examples = padded_examples(dataset, tokenizer, args.max_length)
    rows = []
    for i in range(n * args.batch_size):
        ids, labels = examples[i % len(examples)]
        pad = args.max_length - len(ids)
        rows.append((ids + [tokenizer.eos_token_id] * pad, labels + [-100] * pad, [1] * len(ids) + [0] * pad))
    padded_batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def padded_step(batch) -> int:
        ids = torch.tensor([r[0] for r in batch])
        labels = torch.tensor([r[1] for r in batch])
        mask = torch.tensor([r[2] for r in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int((labels[:, 1:] != -100).sum())  # the tokens the shifted loss is computed on

    # --- ours: packed windows ---------------------------------------------------------------------------------
    blocks = dataset.train
    packed_batches = [blocks.subset(torch.arange(i, i + args.batch_size) % len(blocks))
                      for i in range(0, n * args.batch_size, args.batch_size)]

    def packed_step(batch) -> int:
        weighted, weight, _, count = block_loss(model, batch, 0.0, device, None)
        (weighted / weight).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return count

    pad_s, pad_useful = time_steps(padded_step, padded_batches)
    pack_s, pack_useful = time_steps(packed_step, packed_batches)
    padded_rate = pad_useful / pad_s
    packed_rate = pack_useful / pack_s
    avg_len = sum(len(e[0]) for e in examples) / len(examples)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"data: {dataset.stats['train']['responses']} training responses of {dataset.speaker.name}; "
          f"padded examples average {avg_len:.0f} of {args.max_length} tokens; packing fills "
          f"{dataset.stats['train']['packing_efficiency']:.0%} of each block")
    print(f"padding to {args.max_length}: {pad_useful} useful tokens in {pad_s:.1f}s = {padded_rate:.1f} tok/s")
    print(f"packed blocks:  {pack_useful} useful tokens in {pack_s:.1f}s = {packed_rate:.1f} tok/s")
    print(json.dumps({"padded_useful_tok_s": round(padded_rate, 1), "packed_useful_tok_s": round(packed_rate, 1),
                      "speedup": round(packed_rate / padded_rate, 2), "steps": args.steps,
                      "batch_size": args.batch_size, "max_length": args.max_length}))


if __name__ == "__main__":
    main()
