"""Reply latency: our engine against plain `transformers` generate, measured so that it cannot mislead.

The model has the GPT-2 small architecture (12 layers, 768 wide, 50257 tokens) with random weights: speed
does not depend on them. Its tokenizer is a byte-level BPE trained on the demo's plays, padded with filler
tokens to GPT-2's 50257 entries, so that every sampled id decodes to text. The artifact is written to a
temporary directory and served exactly as `personabot run` serves one (filters included).

Each request has a context of about 200 prompt tokens and asks for `--new-tokens` new tokens (a random model
seldom stops early; the tokens actually generated are reported).

How it avoids the traps of an earlier version (plain transformers measured at 21 s for one reply, 19 s for
eight, in one run; it takes about 2.5 s): that baseline ran while threads of our engines, in the same
process, were still busy.
- Every variant lives in its own process, loaded once, blocked on a pipe between measurements, and shut
  down (engine closed, worker thread joined) and waited for at the end. One measures at a time; the CPU
  time the others use meanwhile is read from /proc and reported ("idle others"): it must be about zero.
- Variants are measured round-robin: repeat 1 of every variant, then repeat 2 of every variant, ... so a
  change in the machine's load hits all of them alike rather than one.
- Each backend runs at its own default thread count and at the other's, so that a difference in threads
  is never taken for a difference in code.
- Medians and spreads ((max - min) / median) are reported; a ratio is printed only when both sides' own runs
  agree within 50%, otherwise the script says that the machine was too noisy to compare them.

Variants: `plain` (one fp32 `model.generate` at a time; with --channels N, N of them one after another) and
`ours:<backend>` (one `engine.reply`; with --channels, N requests arriving together, batched by the engine).

`--backend openai` (or `openai` in --backends) adds the remote backend in the same run: the bench starts
`transformers serve` on the bench's artifact on a loopback port (its CPU time counts towards the openai
variants, and towards "idle others" for every other one), or, with `--url`, uses a server that loads the
artifact by its path (an unpinned `transformers serve` on this machine: the model asked for is the artifact's
directory; a server serving anything else fails the tokenizer check).

`--server vllm` starts vLLM's CPU build instead (`scripts/vllm.sh`, its own environment), with the --personas
adapters as its LoRA modules; vLLM serves LoRA on the Llama architecture only, so pair it with `--shape
smollm2-135m` (SmolLM2-135M's shape, random weights). The openai variants then also include
`personas:one:openai` and `personas:mixed:openai`: the same requests as `personas:one`/`personas:mixed`, asked of
the server's modules. The CPU of the server's processes (vLLM's engine core included) counts as theirs.

`--personas N` adds several personas in one bot (issue 13), in the same run: N LoRA adapters (rank 8 on the
attention input, random weights) on the bench's model as their base, each written as an adapter artifact.
- Latency: `personas:one` sends the --channels requests all to one adapter persona, `personas:mixed` spreads
  the same requests over the N personas (request i to persona i mod N); both are `engine.reply` with
  `persona=`, at our default threads and backend, in their own processes, round-robin with the rest; and
  `personas:merged` is the one persona served the way a single-persona bot serves it (PERSONA_MODEL: the
  adapter merged into its base). Goal: mixed at most 1.5x one.
- Memory, each in a fresh process: the growth of its resident memory (VmRSS) and the weights the engine's
  pool counts, when loading N LoRA personas, one whole-model persona (the base itself), and N whole models
  (copies of it under other names). Goal: N LoRA personas under 1.3x one whole model.

Run by hand (a few minutes on 2 cores):  .venv/bin/python bench/reply_latency.py --repeats 3
The last line printed is one JSON object with every variant's runs, medians, spreads and the ratios (or why
a ratio was refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONTEXT_TOKENS = 200
GPT2_VOCAB = 50257
SMOLLM2_VOCAB = 49152
PEOPLE = ["Hal", "Poins", "Bardolph", "Peto", "Gadshill", "Mistress Quickly"]
# A variant whose own runs differ by more than this (max - min over median) is not compared with anything.
MAX_SPREAD = 0.5


def play_texts() -> list[str]:
    """Every speech of the demo's plays."""
    from training.demo import demo_plays
    from training.loader import load_corpus

    corpus = load_corpus([str(p) for p in demo_plays()])
    return [m.text for c in corpus.conversations for m in c.messages if getattr(m, "text", None)]


# The model's shape (random weights: speed does not depend on them) and the vocabulary it is padded to.
SHAPES = {"gpt2-small": GPT2_VOCAB, "smollm2-135m": SMOLLM2_VOCAB}


def build_artifact(directory: Path, new_tokens: int, shape: str = "gpt2-small") -> None:
    """A persona artifact with random weights: GPT-2 small's shape, or SmolLM2-135M's (the Llama architecture,
    which vLLM serves LoRA modules on)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from training.artifact import Metrics, PersonaInfo, write_training_text
    from training.demo import DEMO_SPEAKER
    from training.generation import GenerationSettings
    from training.modelling import train_tokenizer

    texts = play_texts()
    tokenizer = train_tokenizer(texts, vocab_size=16000)
    tokenizer.add_tokens([f"<w{i}>" for i in range(SHAPES[shape] - len(tokenizer))])
    eos = tokenizer.eos_token_id
    if shape == "gpt2-small":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                            bos_token_id=eos, eos_token_id=eos)
    else:   # SmolLM2-135M: 30 layers, 576 wide, 9 heads of 64 sharing 3 key-value heads, tied embeddings
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                             rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=eos,
                             eos_token_id=eos)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    settings = GenerationSettings(max_new_tokens=new_tokens, context_tokens=CONTEXT_TOKENS)
    PersonaInfo(directory, DEMO_SPEAKER, settings, Metrics()).write(directory)
    write_training_text(directory, texts[:2000], [])


def channel_turns(tokenizer, seed: int) -> list[tuple[str, str]]:
    """A conversation of short lines, longer than the context budget: the prompt is trimmed to the newest
    whole turns that fit, just under CONTEXT_TOKENS."""
    import random

    rng = random.Random(seed)
    lines = [" ".join(t.split()[:12]) for t in play_texts() if len(t.split()) >= 4]
    turns: list[tuple[str, str]] = []
    while sum(len(tokenizer.encode(f"{s}: {t}\n")) for s, t in turns) < CONTEXT_TOKENS * 2:
        turns.append((rng.choice(PEOPLE), rng.choice(lines)))
    return turns


def build_adapters(base: Path, root: Path, n: int) -> list[Path]:
    """`n` LoRA adapter artifacts on the artifact `base`, each with its own random adapter weights."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.artifact import LoraInfo, PersonaInfo, read_persona
    from training.modelling import lora_target_modules

    info = read_persona(base)
    out = []
    for i in range(n):
        directory = root / f"adapter{i}"
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", init_lora_weights=False,
                                                 target_modules=lora_target_modules(model)))
        model.save_pretrained(directory)
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "training_text.jsonl.gz"):
            if (base / name).exists():
                shutil.copy(base / name, directory / name)
        PersonaInfo(directory, f"{info.speaker}{i}", info.generation, info.metrics, base=str(base),
                    lora=LoraInfo(8, 16, merged=False)).write(directory)
        out.append(directory)
    return out


def full_copies(base: Path, root: Path, n: int) -> list[Path]:
    """`n` whole-model artifacts that are the base under other names. Copied, not linked: loading maps the
    weights' files, and linked files would share their pages as different models never do."""
    import shutil

    out = []
    for i in range(n):
        directory = root / f"full{i}"
        shutil.copytree(base, directory)
        out.append(directory)
    return out


def rss_bytes() -> int:
    """This process's resident memory, after handing freed heap back to the system (glibc keeps what a
    model's float copy used while it was quantised, which would be counted as the model's otherwise)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(conn, directory: str, artifacts: list[str], threads: int) -> None:
    """Load the bench's persona as the bot's own, then the registered personas `artifacts`; send back how
    much resident memory and counted weights the registered ones added."""
    import gc

    from bot.inference.engine import Engine
    from bot.core.personas import PersonaRef
    from training.modelling import quiet_library_output

    quiet_library_output()
    loop = asyncio.new_event_loop()
    engine = Engine.load(directory, threads=threads).start()
    gc.collect()
    before = rss_bytes()
    for path in artifacts:
        loop.run_until_complete(engine.load_persona(PersonaRef(Path(path), Path(path).name)))
    gc.collect()
    conn.send({"rss_growth": rss_bytes() - before, "counted": engine.pool.memory_bytes,
               "backend": engine.persona.backend.name})
    loop.run_until_complete(engine.close())


def measure_memory(directory: Path, cases: dict[str, list[Path]], threads: int) -> dict:
    spawn = mp.get_context("spawn")
    out = {}
    for name, artifacts in cases.items():
        parent_end, child_end = spawn.Pipe()
        process = spawn.Process(target=memory_child, args=(child_end, str(directory), [str(a) for a in artifacts],
                                                           threads), daemon=True)
        process.start()
        out[name] = parent_end.recv()
        process.join(timeout=120)
        print(f"# memory, {name}: resident +{out[name]['rss_growth'] / 2**20:.0f} MB, counted "
              f"{out[name]['counted'] / 2**20:.0f} MB", file=sys.stderr)
    return out


# --- one variant, in its own process ---------------------------------------------------------------------

def serve_variant(conn, directory: str, kind: str, threads: int, conversations, new_tokens: int,
                  url: str | None = None, model: str | None = None, adapters: list[str] | None = None) -> None:
    """Load one variant, then answer ("batch1" | "channels", seed) with (seconds, tokens) until None."""
    import torch

    from training.modelling import quiet_library_output

    quiet_library_output()
    if kind == "plain":
        torch.set_num_threads(threads)   # plain transformers runs in this (the main) thread
        run = PlainRunner(directory, conversations, new_tokens)
        close = None
    elif kind.startswith("personas:"):
        from bot.core.personas import PersonaRef
        from bot.inference.engine import Engine
        from bot.inference.remote import RemoteConfig

        loop = asyncio.new_event_loop()
        how, _, backend = kind.split(":", 1)[1].partition(":")
        # "personas:mixed:openai": the adapters as the inference server's LoRA modules.
        remote = dict(backend="openai", remote=RemoteConfig(url, timeout_s=300)) if backend == "openai" else {}
        if how == "merged":     # one adapter persona as a single-persona bot serves it: merged, the bot's own
            engine = Engine.load(adapters[0], threads=threads).start()
            refs = [None]
        else:
            engine = Engine.load(directory, threads=threads, **remote).start()
            chosen = adapters[:1] if how == "one" else adapters
            refs = [PersonaRef(Path(a), Path(a).name) for a in chosen]
        run = OurRunner(engine, loop, conversations, refs)
        run("channels", 0)   # every persona loaded before measuring
        close = lambda: loop.run_until_complete(engine.close())  # noqa: E731
    else:
        from bot.inference.engine import Engine

        loop = asyncio.new_event_loop()
        from bot.inference.remote import RemoteConfig

        backend = kind.split(":", 1)[1]
        remote = RemoteConfig(url, model=model, timeout_s=300) if backend == "openai" else None
        engine = Engine.load(directory, backend=backend, threads=threads, remote=remote).start()
        run = OurRunner(engine, loop, conversations)
        close = lambda: loop.run_until_complete(engine.close())  # noqa: E731 - joins the worker thread
    run("batch1", 0)   # warm-up
    conn.send({"ready": os.getpid(), "backend": getattr(run, "backend", "transformers fp32")})
    while (request := conn.recv()) is not None:
        conn.send(run(*request))
    if close is not None:
        close()
    conn.send({"closed": True})


class PlainRunner:
    """`model.generate` as a user of transformers runs it: fp32, one prompt at a time."""

    def __init__(self, directory: str, conversations, new_tokens: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from training import transcript
        from training.artifact import read_persona

        self.model = AutoModelForCausalLM.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        info = read_persona(directory)
        self.settings = info.generation
        self.eos = tokenizer.eos_token_id
        self.new_tokens = new_tokens
        self.prompts = [transcript.build_prompt(tokenizer, turns, info.speaker, CONTEXT_TOKENS)
                        for turns in conversations]

    def generate(self, prompt: list[int], seed: int) -> int:
        import torch

        torch.manual_seed(seed)
        ids = torch.tensor([prompt])
        s = self.settings
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                      temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                      repetition_penalty=s.repetition_penalty, max_new_tokens=self.new_tokens,
                                      min_new_tokens=self.new_tokens, pad_token_id=self.eos, eos_token_id=self.eos)
        return out.shape[1] - ids.shape[1]

    def __call__(self, what: str, seed: int) -> dict:
        prompts = self.prompts[:1] if what == "batch1" else self.prompts
        start = time.perf_counter()
        tokens = [self.generate(p, seed + i) for i, p in enumerate(prompts)]
        return {"s": time.perf_counter() - start, "tokens": tokens}


class OurRunner:
    """`engine.reply` as the bot calls it; for "channels", all conversations at once; request i goes to the
    persona `refs[i % len(refs)]` (None: the bot's own)."""

    def __init__(self, engine, loop: asyncio.AbstractEventLoop, conversations, refs=(None,)) -> None:
        self.engine, self.loop, self.conversations, self.refs = engine, loop, conversations, list(refs)
        self.backend = engine.persona.backend.name

    def __call__(self, what: str, seed: int) -> dict:
        from bot.core.filters import TERMINAL

        conversations = self.conversations[:1] if what == "batch1" else self.conversations

        async def replies():
            return await asyncio.gather(*(self.engine.reply(c, target=TERMINAL, seed=seed + i,
                                                            persona=self.refs[i % len(self.refs)])
                                          for i, c in enumerate(conversations)))

        start = time.perf_counter()
        done = self.loop.run_until_complete(replies())
        # Samples drawn per reply: a rejected sample is drawn again, which costs a batch more.
        return {"s": time.perf_counter() - start, "tokens": [r.tokens for r in done], "tries": [r.tries for r in done]}


# --- the parent: round-robin, checks, report -------------------------------------------------------------

def process_cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_descendants(pid: int) -> list[int]:
    """`pid` and every process under it (vLLM computes in its engine core, a child of its API server)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def summary(runs: list[float]) -> dict:
    median = statistics.median(runs)
    return {"runs_s": [round(r, 3) for r in runs], "median_s": round(median, 3),
            "spread": round((max(runs) - min(runs)) / median, 3) if median else 0.0}


def ratio(numerator: dict, denominator: dict, names: tuple[str, str]) -> dict:
    """numerator's median over denominator's, or why it is not given."""
    noisy = [n for n, v in zip(names, (numerator, denominator)) if v["spread"] > MAX_SPREAD]
    if noisy:
        return {"ratio": None, "refused": f"the runs of {' and '.join(noisy)} differ by more than "
                                          f"{MAX_SPREAD:.0%} of their median: too noisy to compare"}
    return {"ratio": round(numerator["median_s"] / denominator["median_s"], 3)}


def start_server(directory: Path, url: str | None, kind: str, adapters: list[Path], dtype: str = "float32"):
    """(server process or None, its URL, the model to ask for) for the openai variants: `kind` "transformers"
    (`transformers serve` on the artifact) or "vllm" (vLLM's CPU build on the artifact, `adapters` as its LoRA
    modules)."""
    if url:
        return None, url.rstrip("/"), str(directory)
    from bot.inference.vllm_cpu import VLLMServer, free_port, setup_vllm

    if kind == "vllm":
        setup_vllm()
        server = VLLMServer(directory, {a.name: a for a in adapters}, directory.parent / "vllm.log",
                            max_loras=max(4, len(adapters)), max_model_len=1024, dtype=dtype).start()
        return server, server.url, None
    from bot.inference.remote import serve_locally

    port = free_port()
    server = serve_locally(str(directory), port, deadline_s=300)
    return server, f"http://127.0.0.1:{port}/v1", None


def stop_server(server) -> None:
    """Stop what `start_server` started (a `VLLMServer`, or the `transformers serve` process)."""
    if hasattr(server, "stop"):
        server.stop()
    else:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant, round-robin (default 5)")
    parser.add_argument("--new-tokens", type=int, default=40, help="tokens per reply (default 40)")
    parser.add_argument("--channels", type=int, default=8,
                        help="requests arriving together in the second measurement (default 8; 0 skips it)")
    parser.add_argument("--backends", default="auto", help="comma-separated backends of ours (default auto)")
    parser.add_argument("--backend", action="append", default=[], help="one more backend of ours (repeatable)")
    parser.add_argument("--url", help="for openai: a server that loads the artifact by path (default: start "
                                      "transformers serve on loopback)")
    parser.add_argument("--server", choices=["transformers", "vllm"], default="transformers",
                        help="the inference server the openai variants start: transformers serve (default) or vLLM's "
                             "CPU build (scripts/vllm.sh; LoRA modules need --shape smollm2-135m)")
    parser.add_argument("--vllm-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the weights' type in vLLM (default float32, as the artifact and plain transformers; "
                             "bfloat16 where the CPU computes it natively: AVX512-BF16 or AMX)")
    parser.add_argument("--shape", choices=list(SHAPES), default="gpt2-small",
                        help="the model's shape (default gpt2-small; smollm2-135m: the Llama architecture)")
    parser.add_argument("--personas", type=int, default=0,
                        help="also measure N LoRA personas of one base against one (latency, memory); default 0")
    args = parser.parse_args()

    from bot.inference.backends import generation_threads
    from training.modelling import cpu_threads

    cores = cpu_threads(None)
    plain_default, ours_default = cores, generation_threads(None)
    thread_counts = sorted({plain_default, ours_default})
    kinds = ["plain", *dict.fromkeys(f"ours:{b}" for b in [*args.backends.split(","), *args.backend] if b)]
    variants = [(kind, t) for kind in kinds for t in thread_counts]
    persona_kinds = ["personas:one", "personas:mixed", "personas:merged"] if args.personas else []
    if args.personas and "ours:openai" in kinds:
        persona_kinds += ["personas:one:openai", "personas:mixed:openai"]
    variants += [(kind, ours_default) for kind in persona_kinds]
    defaults = {"plain": plain_default}
    import torch

    print(f"# {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; defaults: "
          f"plain {plain_default} threads, ours {ours_default}; each variant also at the other's", file=sys.stderr)
    results: dict = {"cores": cores, "repeats": args.repeats, "new_tokens": args.new_tokens,
                     "channels": args.channels, "variants": {}}
    spawn = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "persona"
        directory.mkdir()
        build_artifact(directory, args.new_tokens, args.shape)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        conversations = [channel_turns(tokenizer, seed) for seed in range(max(1, args.channels))]
        adapters = build_adapters(directory, Path(tmp), args.personas) if args.personas else []
        server, url, model = (start_server(directory, args.url, args.server, adapters, args.vllm_dtype)
                              if "ours:openai" in kinds else (None, None, None))
        children = {}
        for kind, threads in variants:   # loaded one after another, so that loading never overlaps a run
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(target=serve_variant, daemon=True,
                                    args=(child_end, str(directory), kind, threads, conversations, args.new_tokens,
                                          url, model, [str(a) for a in adapters]))
            process.start()
            hello = parent_end.recv()
            name = f"{kind}@{threads}t"
            if kind.startswith("personas:"):
                name = f"{kind}:{hello['backend']}@{threads}t"
            elif kind != "plain":
                name = f"ours:{hello['backend']}@{threads}t"
            children[(kind, threads)] = (name, process, parent_end, hello["ready"])
        measures = ["batch1", *(["channels"] if args.channels > 1 else [])]
        runs: dict = {(v, m): [] for v in variants for m in measures}
        tokens: dict = {(v, m): [] for v in variants for m in measures}
        idle_others_s = 0.0
        for repeat in range(args.repeats):
            for measure in measures:
                for variant in variants:
                    name, _, conn, pid = children[variant]
                    others = [c[3] for v, c in children.items() if v != variant]
                    if server is not None and not variant[0].endswith("openai"):   # it works for openai
                        others += with_descendants(server.pid)
                    before = [process_cpu_s(p) for p in others]
                    conn.send((measure, 1000 * (repeat + 1)))
                    answer = conn.recv()
                    idle_others_s = max(idle_others_s, sum(process_cpu_s(p) for p in others) - sum(before))
                    runs[(variant, measure)].append(answer["s"])
                    tokens[(variant, measure)].append(answer["tokens"])
                    if max(answer.get("tries", [1])) > 1:
                        print(f"# {children[variant][0]} {measure}: some replies were sampled again "
                              f"(tries {answer['tries']}): that run did more work", file=sys.stderr)
            print(f"# round {repeat + 1} of {args.repeats} done", file=sys.stderr)
        for name, process, conn, _ in children.values():
            conn.send(None)
            conn.recv()           # the engine is closed and its worker thread joined
            process.join(timeout=60)
        if server is not None:
            stop_server(server)
        results["idle_others_max_cpu_s"] = round(idle_others_s, 3)
        if args.personas:
            fulls = full_copies(directory, Path(tmp), args.personas)
            results["persona_memory"] = measure_memory(directory, {
                f"{args.personas} LoRA personas": adapters, "1 whole model": fulls[:1],
                f"{args.personas} whole models": fulls}, ours_default)

    table = {}
    for (variant, measure), values in runs.items():
        name = children[variant][0]
        entry = summary(values) | {"tokens": tokens[(variant, measure)][-1]}
        table[(variant, measure)] = entry
        results["variants"].setdefault(name, {})[measure] = entry
        default = defaults.get(variant[0], ours_default) == variant[1]
        print(f"{name:<22} {'(default)' if default else '(same threads as the other)':<28} {measure:<8} "
              f"median {entry['median_s']:7.3f} s  spread {entry['spread']:5.0%}  runs "
              f"{', '.join(f'{r:.2f}' for r in values)}", file=sys.stderr)
    print(f"other variants' CPU while one was measured: at most {idle_others_s:.3f} s", file=sys.stderr)

    ratios = {}
    if args.personas:
        one, mixed, merged = ((kind, ours_default) for kind in persona_kinds[:3])
        pairs = [(mixed, one), (mixed, merged), (one, merged)]
        if len(persona_kinds) > 3:      # the same requests to the inference server's LoRA modules
            served_one, served_mixed = ((kind, ours_default) for kind in persona_kinds[3:])
            pairs += [(served_mixed, served_one), (served_mixed, mixed), (served_one, one)]
        for measure in measures:
            for a, b in pairs:
                key = f"{measure}: {children[a][0]} / {children[b][0]}"
                ratios[key] = ratio(table[(a, measure)], table[(b, measure)], (children[a][0], children[b][0]))
        memory = results["persona_memory"]
        whole = memory["1 whole model"]
        for name, entry in memory.items():
            results["persona_memory"][name]["x_one_whole_model"] = {
                "rss": round(entry["rss_growth"] / whole["rss_growth"], 3),
                "counted": round(entry["counted"] / whole["counted"], 3)}
            print(f"memory, {name}: {entry['rss_growth'] / whole['rss_growth']:.2f}x one whole model resident, "
                  f"{entry['counted'] / whole['counted']:.2f}x counted", file=sys.stderr)
    for kind in kinds[1:]:
        for threads in thread_counts:
            ours = (kind, threads)
            # Against plain as its users run it, and against plain on the same number of threads.
            for base in dict.fromkeys([("plain", plain_default), ("plain", threads)]):
                for measure in measures:
                    key = f"{measure}: {children[ours][0]} / {children[base][0]}"
                    ratios[key] = ratio(table[(ours, measure)], table[(base, measure)],
                                        (children[ours][0], children[base][0]))
    for key, value in ratios.items():
        shown = f"{value['ratio']:.3f} of the time" if value["ratio"] is not None else f"no ratio: {value['refused']}"
        print(f"{key}: {shown}", file=sys.stderr)
    results["ratios"] = ratios
    print(json.dumps(results))


if __name__ == "__main__":
    main()
