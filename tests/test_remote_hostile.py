"""The `openai` backend against hostile and broken inference servers on loopback (issue 18): what /status and
/healthz show of a server that echoes secrets and other servers' conversations back, and what a server that
trickles, floods or freezes costs the request that meets it and every other channel.

The server is http.server in a thread, answering as its `mode` says; it tokenizes with the artifact's own
tokenizer, so the start check passes against it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from transformers import AutoTokenizer

from bot.inference.backend import BackendError
from bot.inference.engine import Engine
from bot.core.filters import DISCORD
from bot.adapters.metrics import Metrics, engine_problem, metrics_app, serve_metrics
from bot.inference.persona import Persona
from bot.core.personas import PersonaRef
from bot.inference.remote import RemoteBackend, RemoteConfig
from bot.storage.sqlite import SQLiteStore as Store
from training import transcript
from training.generation import GenerationSettings

# A 48-character key, and an address's password: neither may be shown to anyone, in part or whole.
KEY = "sk-proj-7Hq2LmX9vR4tW8zN3cK6pJ1sD5fG0bYeA2uQ9wE4r"
PASSWORD = "Cobalt-Heron-8812"
# A line from another server's conversation, which the hostile server echoes back in its error answer.
PRIVATE = "my new address is 42 Lamplight Lane, flat 3"
TURNS = [("Carol", PRIVATE), ("Bob", "ok, see you there")]
TRICKLE_EVERY_S = 0.2


class HostileServer:
    """An OpenAI-like server on loopback. GET /v1/models lists "alice", POST /tokenize answers the artifact's
    ids; POST /v1/completions answers as `mode` says:
    - "fast": a short completion at once;
    - "echo": 422 (GET /v1/models too), with a body 300+ characters long echoing the request's prompt and its
      Authorization header, as a validation error of some servers does;
    - "trickle": a valid completion `trickle_bytes` long, one byte every 0.2 s;
    - "flood": `flood(text)`'s completion, without a Content-Length (read until the server closes);
    - "silent": the connection held, nothing answered (a frozen server, or a dead one behind a proxy)."""

    def __init__(self, tokenizer) -> None:
        self.mode = "fast"
        self.trickle_bytes = 150
        self.flooded = b""        # made before it is sent, so that it is not counted as the client's memory
        self.completions = 0
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if outer.mode == "echo":
                    return self.echo("")
                self.send(json.dumps({"object": "list", "data": [{"id": "alice"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path == "/tokenize":
                    ids = tokenizer.encode(body["prompt"], add_special_tokens=False)
                    return self.send(json.dumps({"tokens": ids, "count": len(ids)}).encode())
                outer.completions += 1
                mode = outer.mode
                if mode == "echo":
                    return self.echo(body.get("prompt", ""))
                if mode == "silent":
                    outer.released.wait(60)
                    return
                if mode == "flood":
                    return self.flood(outer.flooded)
                text = json.dumps({"choices": [{"text": " sure, see you there", "index": 0}]})
                if mode == "trickle":
                    return self.send((text + " " * (outer.trickle_bytes - len(text))).encode(), trickle=True)
                self.send(text.encode())

            def echo(self, prompt: str) -> None:
                detail = {"detail": [{"type": "value_error", "loc": ["body"], "msg": "invalid request " + "." * 260,
                                      "input": prompt, "authorization": self.headers.get("Authorization")}]}
                self.send(json.dumps(detail).encode(), status=422)

            def send(self, data: bytes, status: int = 200, trickle: bool = False) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not trickle:
                        self.wfile.write(data)
                        return
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        if outer.released.wait(TRICKLE_EVERY_S):
                            return
                except OSError:   # the client gave up
                    pass

            def flood(self, data: bytes) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()     # no length: HTTP/1.0, the body ends when the server closes
                    for start in range(0, len(data), 1 << 16):
                        self.wfile.write(data[start:start + (1 << 16)])
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def flood(self, text: str) -> None:
        self.mode, self.flooded = "flood", json.dumps({"choices": [{"text": text}]}).encode()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def alice_tokenizer(alice_artifact: Path):
    return AutoTokenizer.from_pretrained(alice_artifact)


@pytest.fixture
def hostile(alice_tokenizer):
    servers: list[HostileServer] = []

    def make() -> HostileServer:
        servers.append(HostileServer(alice_tokenizer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def pieces(secret: str, size: int = 8) -> list[str]:
    """Every `size`-character piece of `secret`: none may be shown."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def shows_nothing_private(text: str, secret: str) -> None:
    leaked = [piece for piece in pieces(secret) if piece in text]
    assert not leaked, (leaked, text)
    assert "Lamplight" not in text and "invalid request" not in text, text


async def wait_until(condition, within_s: float = 20.0) -> None:
    until = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < until, "the server never got the request"
        await asyncio.sleep(0.01)


# -- item 2: what people see --------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", ["key", "password"])
def test_status_and_healthz_show_a_category_never_the_servers_words_or_a_secret(secret, hostile, alice_artifact,
                                                                                 alice_tokenizer, tmp_path, caplog):
    """The server answers 422 with a body echoing the prompt (another server's conversation) and the
    Authorization header it got (the key, or the address's password as basic auth), past 300 characters."""
    caplog.set_level(logging.INFO, logger="personabot")
    server = hostile()
    if secret == "key":
        config, hidden = RemoteConfig(server.url, api_key=KEY, breaker_failures=1), KEY
    else:
        config, hidden = RemoteConfig(f"http://bot:{PASSWORD}@127.0.0.1:{server.port}/v1", breaker_failures=1), PASSWORD
    engine = Engine.load(alice_artifact, backend="openai", remote=config)
    backend = engine.persona.backend
    server.mode = "echo"

    async def main():
        store = await Store.open(tmp_path / "bot.sqlite3")
        endpoint = await serve_metrics(metrics_app(Metrics(), engine=engine, store=store), "127.0.0.1", 0)
        try:
            async with engine:
                reply = await engine.reply(TURNS, target=DISCORD)
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{endpoint.port}/healthz") as answer:
                        return reply, answer.status, await answer.text(), engine_problem(engine)
        finally:
            await endpoint.stop()
            await store.close()

    reply, status, healthz, problem = asyncio.run(main())
    assert reply.fallback and server.completions >= 1
    health = backend.health        # what /status shows beside the backend's name
    assert health.startswith(f"openai http://127.0.0.1:{server.port}/v1 model alice: circuit open")
    assert health.endswith("last error: HTTP 422") and "HTTP 422" in problem
    assert status == 503 and "HTTP 422" in json.loads(healthz)["checks"]["engine"]
    for shown in (health, healthz, problem):
        shows_nothing_private(shown, hidden)
        assert "bot:" not in shown and "@127.0.0.1" not in shown
    # The start check's error against the same server says where and what, and nothing more.
    with pytest.raises(BackendError) as error:
        RemoteBackend.connect(config, alice_tokenizer)
    message = str(error.value)
    assert f"http://127.0.0.1:{server.port}/v1" in message and "HTTP 422" in message
    shows_nothing_private(message, hidden)
    # The log has the server's whole answer, the secret blanked before any cut (past 300 characters here).
    logged = [r.getMessage() for r in caplog.records if "/completions answered 422" in r.getMessage()]
    assert logged and all(PRIVATE in m and "***" in m for m in logged)
    assert not [piece for piece in pieces(hidden) if piece in caplog.text]
    if secret == "password":   # sent as basic auth, and echoed back in that form too
        assert base64.b64encode(f"bot:{PASSWORD}".encode()).decode() not in caplog.text


def test_a_config_shows_its_address_without_credentials_and_no_key():
    config = RemoteConfig(f"http://bot:{PASSWORD}@gpu-box:8000/v1?token=abc#x", api_key=KEY)
    assert "gpu-box:8000/v1" in repr(config)
    assert PASSWORD not in repr(config) and KEY not in repr(config) and "abc" not in repr(config)


# -- item 6: deadlines and sizes ----------------------------------------------------------------------------
def test_a_trickling_server_is_cut_off_at_the_timeout_and_keeps_no_other_channel_waiting(hostile, alice_artifact,
                                                                                         tmp_path):
    """The bot's persona is on a server that trickles its answer (30 s of it); a local persona and one on
    another, fast server are answered while that request is still on the wire, and it ends at its deadline."""
    slow, fast = hostile(), hostile()
    slow.trickle_bytes = 150
    other = tmp_path / "fast-alice"
    shutil.copytree(alice_artifact, other)
    config = RemoteConfig(slow.url, timeout_s=8.0)

    def loader(directory, **overrides) -> Persona:
        if Path(directory).name == other.name:
            return Persona.load(directory, backend="openai", remote=RemoteConfig(fast.url), **overrides)
        return Persona.load(directory, backend="torch", threads=1, **overrides)

    engine = Engine(Persona.load(alice_artifact, backend="openai", remote=config), loader=loader)
    local, elsewhere = PersonaRef(alice_artifact, "Local"), PersonaRef(other, "Fast")

    async def main():
        async with engine:
            await engine.load_persona(local)
            await engine.load_persona(elsewhere)
            slow.mode = "trickle"
            started = time.monotonic()
            trickled = asyncio.ensure_future(engine.reply(TURNS, target=DISCORD))
            await wait_until(lambda: slow.completions == 1)
            others = await asyncio.gather(engine.reply(TURNS, target=DISCORD, persona=local),
                                          engine.reply(TURNS, target=DISCORD, persona=elsewhere))
            still_trickling = not trickled.done()
            down = await trickled
            return others, still_trickling, down, time.monotonic() - started

    others, still_trickling, down, took = asyncio.run(main())
    assert still_trickling, "the other channels waited for the trickling server"
    assert others[1].text == "sure, see you there" and "unanswered" not in others[0].rejected
    assert down.fallback and down.rejected == ["unanswered"]
    assert took < config.timeout_s + 8.0, took      # the trickle alone lasts 30 s


def test_a_server_that_holds_its_port_and_answers_nothing_costs_one_timeout_not_one_per_try(hostile,
                                                                                             alice_artifact):
    """The terminal chat took over 90 s to give the fallback line with the server gone: each of the engine's
    three tries waited the whole INFERENCE_TIMEOUT (30 s) on a connection that was never answered."""
    server = hostile()
    config = RemoteConfig(server.url, timeout_s=2.0)
    engine = Engine.load(alice_artifact, backend="openai", remote=config, max_tries=3)
    server.mode = "silent"

    async def main():
        async with engine:
            started = time.monotonic()
            reply = await engine.reply(TURNS, target=DISCORD)
            return reply, time.monotonic() - started

    reply, took = asyncio.run(main())
    assert reply.fallback and reply.rejected == ["unanswered"]
    assert server.completions == 1                  # asked once: no new draw after an unanswered one
    assert took < config.timeout_s + 6.0, took


def test_a_caller_that_leaves_frees_its_place_on_the_server_at_once(hostile, alice_artifact):
    server = hostile()
    engine = Engine.load(alice_artifact, backend="openai", remote=RemoteConfig(server.url, timeout_s=60.0,
                                                                               concurrency=1))
    server.mode = "silent"

    async def main():
        async with engine:
            leaving = asyncio.ensure_future(engine.reply(TURNS, target=DISCORD))
            await wait_until(lambda: server.completions == 1)
            leaving.cancel()
            server.mode = "fast"
            # One request in flight at most: this one goes out only once the first has let go of its place.
            return await asyncio.wait_for(engine.reply(TURNS, target=DISCORD), 20.0)

    assert asyncio.run(main()).text == "sure, see you there"


class RecordingTokenizer:
    """The artifact's tokenizer, noting the longest text it was asked to encode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.longest_encoded = 0

    def encode(self, text: str, **options):
        self.longest_encoded = max(self.longest_encoded, len(text))
        return self.inner.encode(text, **options)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_an_answer_far_longer_than_asked_for_is_capped_before_parsing_and_tokenising(hostile, alice_tokenizer):
    server = hostile()
    tokenizer = RecordingTokenizer(alice_tokenizer)
    backend = RemoteBackend(RemoteConfig(server.url, timeout_s=20.0, breaker_failures=10), tokenizer, "alice")
    prompt = transcript.build_prompt(alice_tokenizer, TURNS, "Alice", 100)
    settings = GenerationSettings(max_new_tokens=20)
    # 5 MB of text (no Content-Length): refused once past the cap, never parsed whole.
    server.flood("party tonight " * 400_000)
    tracemalloc.start()
    try:
        flooded = backend.generate([prompt], [settings], [0])[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert flooded == [] and tokenizer.longest_encoded < 1000
    assert peak < 2 * 2**20, f"{peak / 2**20:.1f} MB held for a 5 MB answer"
    # Text under the cap but far more than 20 tokens: no more of it is tokenised than 20 tokens can hold.
    from bot.inference.remote import SPARE_TOKENS, longest_token_chars

    server.flood(" see you there" * 3000)
    said = backend.generate([prompt], [settings], [0])[0]
    assert 0 < len(said) <= 20
    assert tokenizer.longest_encoded <= (20 + SPARE_TOKENS) * longest_token_chars(alice_tokenizer)
    backend.close()
