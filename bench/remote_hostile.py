"""The remote backend against hostile or broken inference servers (issue 18, item 6): what one bad server
costs the request that meets it and every other channel.

Scenarios, each in a fresh process (so that memory figures are that scenario's alone), INFERENCE_TIMEOUT=1.5:
- `trickle`: the server answers a valid completion one byte every 0.2 s (about 12 s in all). Reported: how
  long the reply to it took, and how long a reply of a local persona (another channel), asked 0.2 s later,
  waited meanwhile; then the same local reply alone, for reference.
- `silent`: the server holds its port and answers nothing (a frozen or SIGSTOPped server, or a dead one
  behind a proxy that still accepts): how long until the reply comes back as the fallback line.
- `big`: the server answers 2 MB of text (`--big-mb`) to a request for 40 tokens: the growth of resident
  memory at its peak during the reply, how long the reply took, and whether it was the fallback line.

The server is a stdlib http.server in a thread of the measuring process (its prebuilt answer is made before
the memory baseline). The persona is a tiny random-weight GPT-2 with a BPE tokenizer of the demo's plays; the
local persona is the same artifact on the `torch` backend.

`--code DIR` runs another copy of the code, e.g. the code before a change:
    mkdir -p /tmp/before && git archive HEAD bot training | tar -x -C /tmp/before
    .venv/bin/python bench/remote_hostile.py --code /tmp/before
Run by hand (under a minute on 2 cores):  .venv/bin/python bench/remote_hostile.py
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 1.5
TRICKLE_BYTES = 60
TRICKLE_EVERY_S = 0.2
TURNS = [("Hal", "what news from the tavern?"), ("Poins", "none worth the telling")]


def build_artifact(directory: Path) -> None:
    """A tiny GPT-2 persona artifact with random weights (what it says does not matter here)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.artifact import Metrics, PersonaInfo, write_training_text
    from training.demo import DEMO_SPEAKER, demo_plays
    from training.generation import GenerationSettings
    from training.loader import load_corpus
    from training.modelling import train_tokenizer

    corpus = load_corpus([str(p) for p in demo_plays()])
    texts = [m.text for c in corpus.conversations for m in c.messages if getattr(m, "text", None)]
    tokenizer = train_tokenizer(texts, vocab_size=2000)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    PersonaInfo(directory, DEMO_SPEAKER, GenerationSettings(max_new_tokens=40, context_tokens=120),
                Metrics()).write(directory)
    write_training_text(directory, texts[:500], [])


class HostileServer:
    """/v1/models lists "persona"; /tokenize answers the artifact's ids (the start check passes); completions
    answer as `mode` says: "fast", "trickle", "silent" or "big"."""

    def __init__(self, tokenizer, big_bytes: int) -> None:
        self.mode = "fast"
        self.released = threading.Event()
        text = "word " * (big_bytes // 5)
        self.big = json.dumps({"choices": [{"text": text, "index": 0}]}).encode()
        small = json.dumps({"choices": [{"text": " aye, my lord", "index": 0}]})
        self.trickled = (small + " " * max(0, TRICKLE_BYTES - len(small))).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send(json.dumps({"object": "list", "data": [{"id": "persona"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path == "/tokenize":
                    ids = tokenizer.encode(body["prompt"], add_special_tokens=False)
                    return self.send(json.dumps({"tokens": ids, "count": len(ids)}).encode())
                mode = outer.mode
                if mode == "silent":
                    outer.released.wait(120)
                    return
                if mode == "big":
                    return self.send(outer.big)
                if mode == "trickle":
                    return self.send(outer.trickled, every_s=TRICKLE_EVERY_S)
                self.send(small.encode())

            def send(self, data: bytes, every_s: float = 0.0) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not every_s:
                        self.wfile.write(data)
                        return
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(every_s)
                except OSError:   # the client gave up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """The highest resident memory seen while the block runs (sampled every 5 ms), less what it was before."""

    def __enter__(self) -> "PeakRSS":
        import gc

        gc.collect()
        self.before = self.peak = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.before) / 2**20, 1)


def scenario(conn, code: str, directory: str, name: str, big_bytes: int) -> None:
    sys.path.insert(0, code)
    from functools import partial

    from transformers import AutoTokenizer

    from bot.inference.engine import Engine
    from bot.core.filters import TERMINAL
    from bot.inference.persona import Persona
    from bot.core.personas import PersonaRef
    from bot.inference.remote import RemoteConfig
    from training.modelling import quiet_library_output

    quiet_library_output()
    server = HostileServer(AutoTokenizer.from_pretrained(directory), big_bytes)
    remote = Persona.load(directory, backend="openai", remote=RemoteConfig(server.url, timeout_s=TIMEOUT_S))
    engine = Engine(remote, loader=partial(Persona.load, backend="torch", threads=1))
    local = PersonaRef(Path(directory), "Local")
    out: dict = {"code": code}

    async def timed(coroutine) -> tuple[float, object]:
        started = time.monotonic()
        result = await coroutine
        return round(time.monotonic() - started, 2), result

    async def main() -> None:
        async with engine:
            await engine.reply(TURNS, target=TERMINAL, persona=local)      # loaded and warm
            await engine.reply(TURNS, target=TERMINAL)
            server.mode = name
            if name == "trickle":
                slow = asyncio.ensure_future(timed(engine.reply(TURNS, target=TERMINAL)))
                await asyncio.sleep(0.2)
                out["other_channel_wait_s"], _ = await timed(engine.reply(TURNS, target=TERMINAL, persona=local))
                out["trickled_reply_s"], reply = await slow
                out["trickled_fallback"] = reply.fallback
                out["other_channel_alone_s"], _ = await timed(engine.reply(TURNS, target=TERMINAL, persona=local))
            elif name == "silent":
                out["silent_reply_s"], reply = await timed(engine.reply(TURNS, target=TERMINAL))
                out["silent_fallback"] = reply.fallback
            else:
                with PeakRSS() as memory:
                    out["big_reply_s"], reply = await timed(engine.reply(TURNS, target=TERMINAL))
                out["big_peak_rss_growth_mb"] = memory.growth_mb
                out["big_reply_chars"], out["big_fallback"] = len(reply.text), reply.fallback

    try:
        asyncio.run(main())
    finally:
        server.close()
    conn.send(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the copy of the code to measure (default: this)")
    parser.add_argument("--big-mb", type=float, default=2.0, help="size of the `big` answer (default 2 MB)")
    parser.add_argument("--only", choices=("trickle", "silent", "big"), action="append",
                        help="run only these scenarios")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    spawn = mp.get_context("spawn")
    figures: dict = {"inference_timeout_s": TIMEOUT_S, "code": str(args.code.resolve()), "big_mb": args.big_mb}
    with tempfile.TemporaryDirectory() as tmp:
        build_artifact(Path(tmp))
        for name in args.only or ("trickle", "silent", "big"):
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(target=scenario, args=(child_end, str(args.code.resolve()), tmp, name,
                                                           int(args.big_mb * 1e6)), daemon=True)
            process.start()
            result = parent_end.recv()
            process.join()
            result.pop("code")
            print(f"{name}: {result}", flush=True)
            figures.update(result)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
