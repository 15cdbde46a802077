"""The `openai` backend against real servers on loopback: `transformers serve` serving a tiny persona the
tests train, and a small fault server (http.server in a thread) that answers errors, hangs and malformed
bodies on cue."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import urlopen

import pytest
from transformers import AutoTokenizer

from bot.inference.backend import BackendError
from bot.inference.engine import Engine
from bot.core.filters import DISCORD
from bot.inference.persona import FALLBACK_REPLY
from bot.inference.remote import RemoteBackend, RemoteConfig, serve_locally, tokenizer_probes
from training import transcript
from training.generation import GenerationSettings

KEY = "sk-test-SECRET-4242"
TURNS = [("Bob", "anyone up for pizza tonight?"), ("Carol", "only if alice comes")]
FREE = {"temperature": 1.5, "top_k": 0, "top_p": 1.0}   # so that some of Alice's replies are her own words


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server) -> None:
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def alice_server(alice_artifact: Path):
    """`transformers serve` serving Alice on a free loopback port; (url, port)."""
    port = free_port()
    server = serve_locally(str(alice_artifact), port)
    try:
        yield f"http://127.0.0.1:{port}/v1", port
    finally:
        stop(server)


def served(reply) -> bool:
    """The server answered: the reply is the persona's text or was refused by a filter, not for emptiness."""
    return not reply.fallback or any(reason != "empty" for reason in reply.rejected)


# -- through transformers serve ----------------------------------------------------------------------------
def test_a_reply_travels_to_transformers_serve_and_back_through_the_filters(alice_server, alice_artifact):
    url, _ = alice_server
    engine = Engine.load(alice_artifact, backend="openai", remote=RemoteConfig(url, api_key=KEY), max_tries=3)
    backend = engine.persona.backend
    assert backend.name == "openai" and backend.model == str(alice_artifact)   # the one model it lists
    assert backend.health.endswith(": ok") and backend.healthy

    async def main():
        async with engine:
            return await asyncio.gather(*(engine.reply(TURNS, seed=i, overrides=FREE, target=DISCORD)
                                          for i in range(6)))

    replies = asyncio.run(main())
    assert all(served(r) for r in replies)
    spoken = [r for r in replies if not r.fallback]
    assert spoken, [r.rejected for r in replies]
    guard = engine.persona.output_filter.leak_guard
    for reply in spoken:
        assert reply.persona == engine.persona.name
        assert transcript.find_new_turn(reply.text) is None and "<|endoftext|>" not in reply.text
        assert guard.check(reply.text) is None and "@everyone" not in reply.text
    # transformers serve refuses top_k and repetition_penalty as fields; they went in generation_config.
    assert backend.extra_style == "generation_config"


def test_chat_and_sample_take_the_inference_server_from_the_settings(alice_server, alice_artifact, tmp_path):
    from conftest import run_cli

    url, _ = alice_server
    env = {"INFERENCE_URL": url, "INFERENCE_API_KEY": KEY}
    chat = run_cli("chat", str(alice_artifact), "--backend", "openai", input="pizza tonight?\n", env=env,
                   cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert "chatting with Alice" in chat.stdout and chat.stdout.split("Alice> ", 1)[1].strip()
    sample = run_cli("sample", str(alice_artifact), "--backend", "openai", "-n", "1", "--json", env=env, cwd=tmp_path)
    assert sample.returncode == 0 and json.loads(sample.stdout)["speaker"] == "Alice", sample.stderr
    # Without a server in the settings: one line saying what to set, exit status 2.
    unset = run_cli("chat", str(alice_artifact), "--backend", "openai", input="hi\n", env={"INFERENCE_URL": ""},
                    cwd=tmp_path)
    assert unset.returncode == 2 and "INFERENCE_URL" in unset.stderr and "Traceback" not in unset.stderr
    wrong = run_cli("chat", str(alice_artifact), "--backend", "openai", input="hi\n",
                    env={"INFERENCE_URL": url, "INFERENCE_TIMEOUT": "-1"}, cwd=tmp_path)
    assert wrong.returncode == 2 and "INFERENCE_TIMEOUT" in wrong.stderr and "Traceback" not in wrong.stderr


FAST_RETRAIN = ["--max-steps", "10", "--threads", "1", "--samples", "0", "--batch-size", "4", "--fidelity-lines", "0"]


def test_a_whole_model_retrain_on_a_server_pinned_to_its_model_keeps_the_new_model_and_says_how_to_serve_it(
        alice_server, alice_artifact, tmp_path, data_dir):
    """`transformers serve DIR` serves DIR alone: swapping would change only the bot's tokenizer while the server
    kept the old weights. The new model is trained (nothing showed the server pinned before), then refused
    (HTTP 400 for its path), kept, and the refusal says what to run."""
    from bot.jobs.retrain import NotServed, Retrainer
    from bot.storage.sqlite import SQLiteStore

    url, _ = alice_server
    engine = Engine.load(alice_artifact, backend="openai", remote=RemoteConfig(url))

    async def main():
        store = await SQLiteStore.open(tmp_path / "bot.sqlite3")
        retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                              extra_args=FAST_RETRAIN)
        try:
            with pytest.raises(NotServed) as error:
                await retrainer.run(force=True)
            return str(error.value), await store.runs()
        finally:
            await store.close()
            await engine.close()

    message, runs = asyncio.run(main())
    kept = Path(runs[0]["out_path"])
    assert [r["status"] for r in runs] == ["rejected"] and (kept / "persona.json").is_file()
    assert f"does not serve {kept}" in message and f"kept at {kept}" in message and "transformers serve" in message
    assert engine.persona.path == alice_artifact


def test_a_whole_model_persona_retrains_and_rolls_back_where_the_server_loads_a_model_by_its_path(
        alice_artifact, tmp_path, data_dir):
    """`transformers serve` started without a model loads each directory a request names: the bot asks for its
    persona by its directory, a retrain swaps in the new directory and a rollback the old, with neither the
    server nor the bot restarted."""
    from bot.jobs.retrain import Retrainer
    from bot.storage.sqlite import SQLiteStore

    own = tmp_path / "alice"
    shutil.copytree(alice_artifact, own)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = serve_locally(None, port)

    def loaded() -> list[str]:
        with urlopen(f"{url}/models", timeout=30) as answer:
            return [m["id"] for m in json.load(answer)["data"]]

    async def main():
        store = await SQLiteStore.open(tmp_path / "bot.sqlite3")
        engine = Engine.load(own, backend="openai", remote=RemoteConfig(url)).start()
        retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                              extra_args=FAST_RETRAIN)
        try:
            assert engine.persona.backend.model == str(own.resolve())
            result = await retrainer.run(force=True)
            new = result.artifact
            assert engine.persona.path == new and engine.persona.backend.model == str(new.resolve())
            assert str(new.resolve()) in await asyncio.to_thread(loaded)
            assert served(await engine.reply(TURNS, seed=1, overrides=FREE, target=DISCORD))
            now, aside = await retrainer.rollback()
            assert (now, aside) == (own, new) and engine.persona.backend.model == str(own.resolve())
            assert served(await engine.reply(TURNS, seed=2, overrides=FREE, target=DISCORD))
            return [r["status"] for r in await store.runs()]
        finally:
            await engine.close()
            await store.close()

    try:
        assert asyncio.run(main()) == ["done"]
        assert server.poll() is None
    finally:
        stop(server)


def test_a_served_model_with_another_tokenizer_fails_the_start_check(tiny_base, alice_artifact):
    port = free_port()
    server = serve_locally(str(tiny_base), port)
    try:
        with pytest.raises(BackendError) as error:
            Engine.load(alice_artifact, backend="openai", remote=RemoteConfig(f"http://127.0.0.1:{port}/v1"))
    finally:
        stop(server)
    message = str(error.value)
    assert "another tokenizer" in message and str(port) in message and "tokens there" in message


def test_killing_the_server_gives_the_fallback_within_the_timeout_and_replies_recover(alice_artifact):
    from loop_watch import LoopWatch

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = serve_locally(str(alice_artifact), port)
    # A cooldown longer than any gap between two replies here, even on a loaded machine (else a probe goes out).
    config = RemoteConfig(url, timeout_s=3.0, breaker_failures=2, breaker_cooldown_s=5.0)
    engine = Engine.load(alice_artifact, backend="openai", remote=config)
    backend = engine.persona.backend

    async def main():
        nonlocal server
        ticking = asyncio.Event()

        async def tick():
            while not ticking.is_set():
                await asyncio.sleep(0.005)

        with LoopWatch() as watch:
            ticker = asyncio.create_task(tick())
            async with engine:
                assert served(await engine.reply(TURNS, seed=1, overrides=FREE, target=DISCORD))
                await asyncio.to_thread(stop, server)
                started = time.monotonic()
                down = await engine.reply(TURNS, seed=2, target=DISCORD)
                took = time.monotonic() - started
                assert down.fallback and down.text == FALLBACK_REPLY and took < config.timeout_s
                assert not backend.healthy and "circuit open" in backend.health
                sent = backend.requests_sent
                again = await engine.reply(TURNS, seed=3, target=DISCORD)   # open: no request goes out
                assert again.fallback and backend.requests_sent == sent
                server = await asyncio.to_thread(serve_locally, str(alice_artifact), port)
                await asyncio.sleep(config.breaker_cooldown_s)
                back = await engine.reply(TURNS, seed=4, overrides=FREE, target=DISCORD)
                assert served(back) and backend.healthy and backend.health.endswith(": ok")
            ticking.set()
            await ticker
        watch.check(min_callbacks=50)

    try:
        asyncio.run(main())
    finally:
        stop(server)


# -- against the fault server ------------------------------------------------------------------------------
class FaultServer:
    """An OpenAI-like server on loopback whose answers to /v1/completions are scripted: each entry of
    `script` is (status, body, headers, delay_s) and is used once; then `default` answers."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, dict, float]] = []
        self.default = (200, {"choices": [{"text": " sure, see you there", "index": 0}]}, {}, 0.0)
        self.models = ["alice"]
        self.tokenize: list[int] | None = None
        self.seen: list[tuple[str, dict, dict]] = []   # (path, headers, body)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.seen.append((self.path, dict(self.headers), {}))
                self.answer(200, {"object": "list", "data": [{"id": m} for m in outer.models]}, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                outer.seen.append((self.path, dict(self.headers), body))
                if self.path == "/tokenize":
                    if outer.tokenize is None:
                        return self.answer(404, {"detail": "Not Found"}, {})
                    return self.answer(200, {"tokens": outer.tokenize, "count": len(outer.tokenize)}, {})
                status, answer, headers, delay = outer.script.pop(0) if outer.script else outer.default
                time.sleep(delay)
                if callable(answer):
                    answer = answer(self, body)
                self.answer(status, answer, headers)

            def answer(self, status: int, body: object, headers: dict) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:   # the client gave up (a hang past its timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def completions(self) -> list[dict]:
        return [body for path, _, body in self.seen if path == "/v1/completions"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_server():
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def alice_tokenizer(alice_artifact: Path):
    return AutoTokenizer.from_pretrained(alice_artifact)


def backend_for(server: FaultServer, tokenizer, **options) -> RemoteBackend:
    config = RemoteConfig(server.url, api_key=KEY, timeout_s=options.pop("timeout_s", 2.0),
                          backoff_s=options.pop("backoff_s", 0.01), **options)
    return RemoteBackend(config, tokenizer, "alice")


def reply_text(backend: RemoteBackend, tokenizer, seed: int = 0, **settings) -> str:
    prompt = transcript.build_prompt(tokenizer, TURNS, "Alice", 100)
    ids = backend.generate([prompt], [GenerationSettings(**settings)], [seed])[0]
    return tokenizer.decode(ids).strip()


def test_a_server_that_ignores_stops_cannot_make_the_persona_speak_for_others(fault_server, alice_tokenizer):
    fault_server.default = (200, {"choices": [{"text": " on my way\nBob: I am Bob now<|endoftext|>more"}]}, {}, 0)
    backend = backend_for(fault_server, alice_tokenizer)
    assert reply_text(backend, alice_tokenizer, seed=5, max_new_tokens=40) == "on my way"
    sent = fault_server.completions()[0]
    # The prompt is the bot's transcript, the stops are the format's, sampling settings and the seed go along.
    assert sent["prompt"].endswith("Carol: only if alice comes\nAlice:") and sent["seed"] == 5
    assert sent["stop"] == ["<|endoftext|>", "\nAlice:", "\nCarol:", "\nBob:"]
    assert sent["max_tokens"] == 40 and sent["top_k"] == 50 and sent["repetition_penalty"] == 1.1
    headers = fault_server.seen[0][1]
    assert headers["Authorization"] == f"Bearer {KEY}"


def test_errors_and_malformed_bodies_are_retried_a_bounded_number_of_times(fault_server, alice_tokenizer):
    backend = backend_for(fault_server, alice_tokenizer, retries=3, breaker_failures=10)
    fault_server.script = [(503, {"error": "loading"}, {}, 0), (500, b"oops", {}, 0), (200, b"{not json", {}, 0)]
    assert reply_text(backend, alice_tokenizer) == "sure, see you there"
    assert len(fault_server.completions()) == 4
    fault_server.script = [(200, {"choices": []}, {}, 0), (200, {"object": "x"}, {}, 0),
                           (200, {"choices": [{"text": 7}]}, {}, 0), (502, {}, {}, 0)]
    assert reply_text(backend, alice_tokenizer) == ""          # four failures: the row gives up, empty
    assert len(fault_server.completions()) == 8
    fault_server.script = [(400, {"error": "prompt too long"}, {}, 0)]
    assert reply_text(backend, alice_tokenizer) == "" and len(fault_server.completions()) == 9   # not retried


def test_a_429_is_retried_after_its_retry_after_and_a_hang_ends_at_the_timeout(fault_server, alice_tokenizer):
    backend = backend_for(fault_server, alice_tokenizer, retries=2, breaker_failures=10, timeout_s=1.0)
    fault_server.script = [(429, {"error": "slow down"}, {"Retry-After": "0.3"}, 0)]
    started = time.monotonic()
    assert reply_text(backend, alice_tokenizer) == "sure, see you there"
    assert time.monotonic() - started >= 0.3 * 0.8
    fault_server.script = [(200, {"choices": [{"text": " late"}]}, {}, 3.0)] * 3
    started = time.monotonic()
    assert reply_text(backend, alice_tokenizer) == ""
    assert time.monotonic() - started < 2.0          # one deadline per row, retries included


def test_the_breaker_opens_answers_without_the_network_and_closes_after_a_probe(fault_server, alice_tokenizer,
                                                                                  caplog):
    caplog.set_level(logging.DEBUG, logger="personabot")
    backend = backend_for(fault_server, alice_tokenizer, retries=1, breaker_failures=3, breaker_cooldown_s=0.3)
    echo_key = lambda handler, body: {"error": f"bad request from {handler.headers['Authorization']}"}  # noqa: E731
    fault_server.script = [(503, echo_key, {}, 0)] * 4
    assert reply_text(backend, alice_tokenizer) == ""                # 2 requests
    assert reply_text(backend, alice_tokenizer) == ""                # the third opens the circuit
    assert not backend.healthy and "circuit open" in backend.health and "HTTP 503" in backend.health
    # The server echoed the key back: /status shows only the category, the log its words with the key blanked.
    assert "Bearer" not in backend.health and "bad request from Bearer ***" in caplog.text
    sent = len(fault_server.completions())
    assert sent == 3
    started = time.monotonic()
    for _ in range(5):
        assert reply_text(backend, alice_tokenizer) == ""
    assert len(fault_server.completions()) == sent and time.monotonic() - started < 0.2   # no network
    time.sleep(0.35)
    assert reply_text(backend, alice_tokenizer) == ""                # the probe fails: open again
    assert len(fault_server.completions()) == sent + 1 and not backend.healthy
    time.sleep(0.35)
    assert reply_text(backend, alice_tokenizer) == "sure, see you there"   # the probe succeeds: closed
    assert backend.healthy and backend.health.endswith(": ok")
    changes = [r.getMessage() for r in caplog.records if "circuit" in r.getMessage()]
    assert [m.split("circuit ")[1].split(",")[0] for m in changes] == [
        "open", "half-open", "open", "half-open", "closed"]
    assert KEY not in caplog.text


def test_sampling_fields_a_server_refuses_are_sent_another_way_and_the_step_is_logged_once(
        fault_server, alice_tokenizer, caplog):
    backend = backend_for(fault_server, alice_tokenizer, breaker_failures=10)

    def picky(handler, body):
        return {"detail": f"Unexpected fields in the request: {sorted(set(body) - {'model', 'prompt'})}"}

    fault_server.script = [(422, picky, {}, 0), (422, picky, {}, 0)]
    with caplog.at_level(logging.WARNING, logger="personabot.remote"):
        assert reply_text(backend, alice_tokenizer, top_k=7) == "sure, see you there"
        assert reply_text(backend, alice_tokenizer) == "sure, see you there"
    bodies = fault_server.completions()
    assert "top_k" in bodies[0] and json.loads(bodies[1]["generation_config"])["top_k"] == 7
    assert "top_k" not in bodies[2] and "generation_config" not in bodies[2] and backend.extra_style == "none"
    assert len(bodies) == 4 and len([r for r in caplog.records if "refused sampling fields" in r.getMessage()]) == 2


def test_the_start_check_lists_models_and_compares_tokenize_ids(fault_server, alice_tokenizer):
    config = RemoteConfig(fault_server.url, api_key=KEY)
    marker, probe = tokenizer_probes(alice_tokenizer)
    right = alice_tokenizer.encode(marker + probe, add_special_tokens=False)
    fault_server.tokenize = right
    assert RemoteBackend.connect(config, alice_tokenizer).model == "alice"
    fault_server.tokenize = right[:-1] + [right[-1] + 1]
    with pytest.raises(BackendError, match="tokenizes differently"):
        RemoteBackend.connect(config, alice_tokenizer)
    fault_server.models = ["alice", "bob"]
    with pytest.raises(BackendError, match="lists alice, bob; set INFERENCE_MODEL"):
        RemoteBackend.connect(config, alice_tokenizer)
    fault_server.tokenize = right
    chosen = RemoteBackend.connect(RemoteConfig(fault_server.url, model="bob"), alice_tokenizer)
    assert chosen.model == "bob"


def test_an_unreachable_server_at_start_is_a_clear_error_without_the_key(alice_tokenizer):
    config = RemoteConfig(f"http://127.0.0.1:{free_port()}/v1", api_key=KEY, timeout_s=1.0)
    with pytest.raises(BackendError) as error:
        RemoteBackend.connect(config, alice_tokenizer)
    assert "cannot list the models" in str(error.value) and KEY not in str(error.value) and KEY not in repr(config)


def test_stop_strings_come_from_the_transcript(alice_tokenizer):
    prompt = transcript.build_prompt(alice_tokenizer, [("Bob", "hi"), ("Carol", "yo"), ("Dan", "hey"),
                                                        ("Bob", "so?")], "Alice", 200)
    stops = transcript.stop_strings(alice_tokenizer, alice_tokenizer.decode(prompt))
    assert stops == ["<|endoftext|>", "\nAlice:", "\nBob:", "\nDan:"]
    assert transcript.cut_at_stops("fine\nDan: no", stops) == "fine"


# -- LoRA personas as a vLLM server's LoRA modules ---------------------------------------------------------
class FakeVLLM:
    """vLLM's OpenAI server as the bot sees it when started with `--enable-lora --lora-modules NAME=DIR ...`,
    on loopback (http.server in a thread). GET /v1/models answers in vLLM's shape (`ModelCard`s of
    vllm/entrypoints/openai/protocol.py as `OpenAIServingModels.show_available_models` lists them): the base
    (root: its path, parent: null) and one card per module (root: DIR as given, parent: the base's id).
    POST /tokenize tokenizes with the base's tokenizer, POST /v1/completions answers "hi from NAME"; a model
    it does not serve is vLLM's 404. Every request's path and "model" field is recorded."""

    def __init__(self, base: str, modules: dict[str, str], tokenizer) -> None:
        self.base = base
        self.modules = modules
        self.tokenizer = tokenizer
        self.asked: list[tuple[str, str]] = []     # (path, model)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.asked.append((self.path, ""))
                if self.path != "/v1/models":
                    return self.answer(404, {"detail": "Not Found"})
                self.answer(200, outer.model_list())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                model = str(body.get("model"))
                outer.asked.append((self.path, model))
                if model != outer.base and model not in outer.modules:
                    return self.answer(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                                             "type": "NotFoundError", "param": None, "code": 404})
                ids = outer.tokenizer.encode(body["prompt"], add_special_tokens=False)
                if self.path == "/tokenize":
                    return self.answer(200, {"count": len(ids), "max_model_len": 256, "tokens": ids,
                                             "token_strs": None})
                text = f" hi from {model}"
                self.answer(200, {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model,
                                  "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop",
                                               "stop_reason": None, "prompt_logprobs": None}],
                                  "usage": {"prompt_tokens": len(ids), "total_tokens": len(ids) + 3,
                                            "completion_tokens": 3}})

            def answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def model_list(self) -> dict:
        permission = [{"id": "modelperm-1", "object": "model_permission", "created": 1,
                       "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                       "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                       "organization": "*", "group": None, "is_blocking": False}]
        base = {"id": self.base, "object": "model", "created": 1, "owned_by": "vllm", "root": self.base,
                "parent": None, "max_model_len": 256, "permission": permission}
        modules = [{"id": name, "object": "model", "created": 1, "owned_by": "vllm", "root": root,
                    "parent": self.base, "max_model_len": None, "permission": permission}
                   for name, root in self.modules.items()]
        return {"object": "list", "data": [base, *modules]}

    def models_asked(self, path: str) -> list[str]:
        return [model for p, model in self.asked if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> tuple[Path, Path, Path]:
    """Three LoRA adapter artifacts on `tiny_base`: alice-lora trained through `personabot train --lora` (as in
    test_lora_artifact.py), bob-lora and carol-lora copies of it under other directory names."""
    import shutil

    from chatgen import chat_conversations, write_whatsapp
    from conftest import run_cli

    root = tmp_path_factory.mktemp("lora-personas")
    chat = write_whatsapp(root / "chat.txt", chat_conversations(24, seed=7))
    alice = root / "alice-lora"
    done = run_cli("train", "--data", str(chat), "--speaker", "alice", "--out", str(alice), "--base", str(tiny_base),
                   "--lora", "--max-steps", "10", "--epochs", "100", "--batch-size", "4", "--threads", "1",
                   "--samples", "1", "--progress", "none")
    assert done.returncode == 0, done.stderr
    copies = []
    for name in ("bob-lora", "carol-lora"):
        shutil.copytree(alice, root / name)
        copies.append(root / name)
    return alice, copies[0], copies[1]


def _say(backend, tokenizer, seeds: list[int]) -> list[str]:
    prompt = transcript.build_prompt(tokenizer, TURNS, "Alice", 100)
    replies = backend.generate([prompt] * len(seeds), [GenerationSettings()] * len(seeds), seeds)
    return [tokenizer.decode(ids).strip() for ids in replies]


def test_two_lora_personas_are_served_by_their_own_modules_over_one_connection(served_adapters, tiny_base):
    from concurrent.futures import ThreadPoolExecutor

    from bot.inference.backends import load_backend
    from training.artifact import read_persona

    alice, bob, _ = served_adapters
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    # Module names unlike the directories' names: matched by root, alice's here, bob's on "another machine".
    server = FakeVLLM(str(tiny_base), {"alice": str(alice), "bob": f"/srv/personas/{bob.name}/"}, tokenizer)
    try:
        config = RemoteConfig(server.url, api_key=KEY)
        alice_backend, alice_tokenizer = load_backend(read_persona(alice), "openai", remote=config)
        bob_backend, bob_tokenizer = load_backend(read_persona(bob), "openai", remote=config)
        assert (alice_backend.model, bob_backend.model) == ("alice", "bob")
        assert server.models_asked("/tokenize") == ["alice", "bob"]    # the start check ran against each module
        # One server, one connection: one pool, one breaker, whichever persona asks.
        assert alice_backend.connection is bob_backend.connection and alice_backend.breaker is bob_backend.breaker
        with ThreadPoolExecutor(2) as both:
            said = both.map(lambda pair: _say(*pair, seeds=[1, 2, 3]),
                            [(alice_backend, alice_tokenizer), (bob_backend, bob_tokenizer)])
            alice_said, bob_said = list(said)
        assert alice_said == ["hi from alice"] * 3 and bob_said == ["hi from bob"] * 3
        assert sorted(server.models_asked("/v1/completions")) == ["alice"] * 3 + ["bob"] * 3
        # A sibling for another module shares the connection; one persona closing leaves the others serving.
        sibling = RemoteBackend(config, tokenizer, str(tiny_base), alice_backend.connection)
        assert sibling.connection is alice_backend.connection and sibling.model == str(tiny_base)
        alice_backend.close()
        assert _say(bob_backend, bob_tokenizer, [4]) == ["hi from bob"]
        assert _say(sibling, bob_tokenizer, [5]) == [f"hi from {tiny_base}"]
        bob_backend.close()
        sibling.close()
        assert bob_backend.connection.closed
    finally:
        server.close()


def test_a_lora_persona_without_a_module_names_the_lora_modules_argument_to_add(served_adapters, tiny_base):
    from bot.inference.backends import load_backend
    from training.artifact import read_persona

    alice, bob, carol = served_adapters
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    server = FakeVLLM(str(tiny_base), {"alice": str(alice), "bob": str(bob)}, tokenizer)
    try:
        with pytest.raises(BackendError) as error:
            load_backend(read_persona(carol), "openai", remote=RemoteConfig(server.url))
        message = str(error.value)
        assert f"--lora-modules carol-lora={carol.resolve()}" in message and "--enable-lora" in message
        # The server loads no adapter at run time (vLLM without the setting: 404), which the bot tried first.
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in message
        assert server.models_asked("/v1/load_lora_adapter") == ["None"]
        assert f"alice (LoRA module on {tiny_base}, from {alice})" in message and "bob (LoRA module" in message
        assert server.models_asked("/v1/completions") == [] and server.models_asked("/tokenize") == []
        # Two modules from directories named like carol's (two machines' copies) say nothing: none is taken.
        server.modules = {"a": "/srv/one/carol-lora", "b": "/srv/two/carol-lora"}
        with pytest.raises(BackendError, match="a, b all come from a directory named 'carol-lora'"):
            load_backend(read_persona(carol), "openai", remote=RemoteConfig(server.url))
        # A module named like the directory is taken wherever its files lie.
        server.modules = {"carol-lora": "/mnt/adapters/7"}
        backend, _ = load_backend(read_persona(carol), "openai", remote=RemoteConfig(server.url))
        assert backend.model == "carol-lora"
        backend.close()
    finally:
        server.close()


def test_a_whole_model_persona_picks_the_base_beside_the_servers_lora_modules(served_adapters, alice_artifact,
                                                                              alice_tokenizer):
    from bot.inference.backends import load_backend
    from training.artifact import read_persona

    alice_lora, bob_lora, _ = served_adapters
    # The whole-model persona is the served base here; the modules' tokenizer is the base's.
    server = FakeVLLM(str(alice_artifact), {"alice-lora": str(alice_lora), "bob-lora": str(bob_lora)},
                      alice_tokenizer)
    try:
        backend, tokenizer = load_backend(read_persona(alice_artifact), "openai", remote=RemoteConfig(server.url))
        assert backend.model == str(alice_artifact)     # the only entry without a parent
        # The reply names the model asked for, cut at max_new_tokens where the path is long.
        said = _say(backend, tokenizer, [1])[0]
        assert said.startswith("hi from /") and f"hi from {alice_artifact}".startswith(said)
        assert server.models_asked("/v1/completions") == [str(alice_artifact)]
        backend.close()
    finally:
        server.close()


def test_the_engine_serves_a_registered_lora_persona_by_its_module_and_lets_go_when_it_unloads(served_adapters,
                                                                                                tiny_base):
    """The bot's persona and a registered one, both adapters on one served base: each reply asks for its own
    module, and unloading the registered persona gives back its share of the one connection (the bot's own
    keeps it open)."""
    from bot.core.personas import PersonaRef

    alice, bob, _ = served_adapters
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    server = FakeVLLM(str(tiny_base), {"alice": str(alice), "bob": str(bob)}, tokenizer)

    async def main():
        engine = Engine.load(alice, backend="openai", remote=RemoteConfig(server.url, api_key=KEY)).start()
        try:
            ref = PersonaRef(bob, "Bob")
            own, theirs = await asyncio.gather(engine.reply(TURNS, target=DISCORD),
                                               engine.reply(TURNS, target=DISCORD, persona=ref))
            served = (await engine.load_persona(ref)).backend
            assert await engine.forget(bob) == 1
            return own, theirs, served, engine.persona.backend
        finally:
            await engine.close()

    try:
        own, theirs, served, own_backend = asyncio.run(main())
        assert (own.text, theirs.text, theirs.persona) == ("hi from alice", "hi from bob", "Bob")
        # Bob's module twice: the check that a persona generates when it is loaded, then the reply.
        assert sorted(server.models_asked("/v1/completions")) == ["alice", "bob", "bob"]
        assert served.connection is own_backend.connection
        assert served._closed and not own_backend.connection.closed
    finally:
        server.close()


def test_an_adapter_persona_is_not_retrained_where_the_server_loads_no_adapter_at_run_time(served_adapters, tiny_base,
                                                                                        tmp_path, data_dir):
    """vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING=true has no /load_lora_adapter (404): the new
    adapter could never be served, so nothing is trained, and the refusal says what to start the server with."""
    from bot.jobs.retrain import PREVIOUS, Retrainer, RetrainError
    from bot.storage.sqlite import SQLiteStore

    alice, bob, _ = served_adapters
    server = FakeVLLM(str(tiny_base), {"alice": str(alice), "bob": str(bob)}, AutoTokenizer.from_pretrained(tiny_base))

    async def main():
        store = await SQLiteStore.open(tmp_path / "bot.sqlite3")
        engine = Engine.load(alice, backend="openai", remote=RemoteConfig(server.url))
        retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models")
        await store.set_setting(PREVIOUS, str(bob))       # as after a swap: a rollback would go to Bob's adapter
        try:
            errors = []
            for attempt in (retrainer.run(force=True), retrainer.rollback()):
                with pytest.raises(RetrainError) as error:
                    await attempt
                errors.append(str(error.value))
            return errors, await store.runs(), engine.persona.path
        finally:
            await store.close()
            await engine.close()

    try:
        errors, runs, serving = asyncio.run(main())
    finally:
        server.close()
    assert all("does not load LoRA adapters at run time" in e and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in e
               for e in errors), errors
    assert runs == [] and not (tmp_path / "models").exists() and serving == alice
