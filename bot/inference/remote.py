"""The `openai` backend: a persona served by an OpenAI-compatible inference server (vLLM, TGI, llama.cpp's
server, `transformers serve`), spoken to over its completions API.

The bot still builds every prompt (same transcript, same context window) and still owns every rule about
what the persona may say: the prompt ids are decoded to text and sent as `prompt`; the stops sent are the
transcript's (`training.transcript.stop_strings`); the text that comes back is cut at those stops, encoded
with the artifact's tokenizer and cut again by `training.generation.cut_reply`, so a server that ignores a
stop still cannot make the persona speak for others. Filters, mention defusing and length cuts stay in the
bot (`bot.inference.engine`).

Each row is a coroutine on the connection's own event loop (a daemon thread, `aiohttp`), never on the
bot's event loop and never on the engine's generation worker: `RemoteBackend.submit` hands back a future per
row, which the engine settles its callers from, so a slow server holds no thread and keeps no other channel
waiting. INFERENCE_TIMEOUT (`timeout_s`) is one deadline per row, from the moment it is asked for: waiting for
a free connection (`concurrency` in flight per server), every try, the backoff between them, the name lookup,
the connect and the whole answer, body included, all fall within it (a server that trickles its answer a byte
at a time is cut off at the deadline, not at each read's timeout). Answers are read at most so big
(`completion_cap_bytes`, from max_tokens) before anything parses them, and no more of the text is tokenised
than max_tokens tokens can hold. Failures (refused connection, timeout, 429, 5xx, a malformed body) are
retried a bounded number of times with backoff inside that deadline; a row that gets no answer in the end is
settled with None, and the engine then gives the fallback line without asking again (each new try would wait
as long again). A circuit breaker opens after consecutive failures and then answers at once, with None,
until a probe after the cooldown succeeds.

What people see of the server (/status, /healthz, the start check's errors, the logs) is `shown_url`: the
address without credentials, query or fragment; and of a failure only its category (`RemoteError`: "HTTP 422",
"timed out", "refused", ...), never the server's words, which may echo another server's conversation. The
server's answer goes to the log in full, with the API key and the address's credentials blanked out before
anything is cut. The API key goes in the Authorization header only.

Sampling: `temperature`, `top_p`, `max_tokens`, `seed` and `stop` are in every server's API. `top_k` and
`repetition_penalty` are sent as vLLM (and llama.cpp) take them, as top-level fields; a server that refuses
them (`transformers serve` answers 422 to unknown fields) gets them in its own `generation_config` field
instead, and one that refuses that too gets the plain fields only. Each step down is logged once.

A prompt starts with the tokenizer's `transcript.special_prefix` (Llama's `<s>`): it is sent without it, as
text, and the server's tokenizer puts it back in front, as every server's completions do with the special
tokens of the tokenizer it serves.

The start check (`RemoteBackend.connect`) lists the served models (`GET /models`) and checks the served
tokenizer against the artifact's, on a probe holding the end marker, the texts of the vocabulary's last
tokens (its last merges, where two vocabularies part first) and a transcript sample:
- where the server has a tokenize endpoint (vLLM and llama.cpp `POST /tokenize`, TGI likewise): the ids
  must be the artifact's ids exactly;
- otherwise (`transformers serve`): through the prompt token counts a one-token completion reports
  (`usage.prompt_tokens`): the end marker must be one token, the rest of the probe as many tokens as the
  artifact's tokenizer makes of it (a count, so a weaker check than the ids: it catches another vocabulary,
  not the same merges numbered otherwise).

LoRA personas: an adapter artifact (persona.json names its base) is served as one of the server's LoRA modules
(vLLM: `--enable-lora --lora-modules NAME=DIR ...`), and each request names that module as its `model`. The
start check finds the module in the model list (`served_model`): the entry whose `root` is the artifact's
directory, else the one entry whose `root` ends with the directory's name (a server on another machine, where
the path differs), else the entry named like the directory; no such entry is a `BackendError` that shows the
`--lora-modules` argument to add, unless the server loads adapters at run time (vLLM with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=true: `POST /load_lora_adapter`): then the bot loads the adapter's directory
as a module itself (`adapter_module_name`), which is how a retrained or rolled-back adapter persona is served
without a restart (`bot.jobs.retrain`; `RemoteBackend.retire_adapter` unloads the one set aside). The
tokenizer check runs against the module (an adapter's tokenizer is its base's).

Several personas on one server share one `RemoteConnection` (thread pool, circuit breaker, HTTP sessions, the
sampling-field style the server takes): the server is one thing that is up or down, whichever model a request
names. `RemoteConnection.shared` hands out one per server settings, and every persona's backend is made on it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import aiohttp
from yarl import URL

from bot.inference.backend import BackendError
from training import transcript
from training.artifact import PersonaInfo
from training.generation import GenerationSettings, cut_reply

log = logging.getLogger("personabot.remote")

# Where sampling fields the completions API lacks go, tried in this order (see the module's docstring).
EXTRA_STYLES = ("top-level", "generation_config", "none")
_RETRY_STATUS = {429, 500, 502, 503, 504}
# Tokens of the artifact's vocabulary the start check probes (kept short of a tiny model's 256 positions).
PROBE_TOKENS = 48
# The most of any answer but a completion that is read (a model list of many LoRA modules, a tokenize answer).
MAX_ANSWER_BYTES = 2 * 2**20
# A completion's answer is read up to this much JSON around its text, plus its text at the worst escaping
# (`\u00XX`: six bytes for each byte of text) of max_tokens of the longest tokens (`completion_cap_bytes`).
COMPLETION_OVERHEAD_BYTES = 64 * 1024
ESCAPED_BYTES_PER_BYTE = 6
# Tokens of text beyond max_tokens kept before tokenising, so that a cut never changes the tokens kept.
SPARE_TOKENS = 8
# How long a server that loads a model when asked for it by its path may take to answer the first request.
MODEL_LOAD_S = 300.0
# How much of a failed request's detail (the server's answer, secrets already blanked) one log line holds.
LOG_DETAIL_CHARS = 4000


def shown_url(url: str) -> str:
    """The inference server's address as people may see it (/status, /healthz, errors, logs): scheme, host,
    port and path, without the credentials, query or fragment it may carry."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        return "(an address that cannot be read)"


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token of `tokenizer` stands for: its longest vocabulary entry
    (byte-level entries hold one character per byte, so the text a token decodes to is never longer)."""
    return max((len(entry) for entry in tokenizer.get_vocab()), default=1)


def completion_cap_bytes(max_tokens: int, longest_token: int) -> int:
    """The most of a completion's answer that is read before parsing: what `max_tokens` tokens of text could
    take at the worst, with room for the JSON around it. A bigger answer is refused unread."""
    return COMPLETION_OVERHEAD_BYTES + max_tokens * longest_token * ESCAPED_BYTES_PER_BYTE


class RemoteError(Exception):
    """One failed request to the inference server. Its text is the failure's category, for people ("HTTP
    422", "timed out", "refused", "malformed answer", ...): never the server's words (they may echo another
    server's conversation), the address's credentials or the key. `detail` is for the log, secrets blanked."""

    def __init__(self, category: str, *, detail: str = "", status: int | None = None, retry: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(category)
        self.detail = detail or category
        self.status = status
        self.retry = retry
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True, repr=False)
class RemoteConfig:
    """Where the inference server is and how to treat it."""

    url: str                                         # e.g. http://gpu-box:8000/v1
    api_key: str | None = None
    model: str | None = None                         # None: the one model the server lists
    timeout_s: float = 30.0                          # one row's deadline, retries and the whole answer included
    concurrency: int = 8                             # requests in flight at most
    retries: int = 2                                 # tries after the first, within the deadline
    backoff_s: float = 0.25                          # first pause between tries; doubles each time
    max_retry_after_s: float = 5.0                   # a 429's Retry-After is honoured up to this
    breaker_failures: int = 3                        # consecutive failed requests that open the circuit
    breaker_cooldown_s: float = 10.0                 # open this long before one probe is let through

    def __repr__(self) -> str:
        # The address without its credentials, and no key: a config may end up in a log or a traceback.
        shown = [f"url={shown_url(self.url)!r}"] + [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                                                    if f.name not in ("url", "api_key")]
        return f"RemoteConfig({', '.join(shown)})"

    @classmethod
    def from_settings(cls, settings: Any) -> "RemoteConfig":
        """The remote settings of a `bot.core.config.Settings` (INFERENCE_URL, _API_KEY, _MODEL, _TIMEOUT,
        _CONCURRENCY)."""
        if not settings.inference_url:
            raise BackendError("BACKEND=openai needs INFERENCE_URL (e.g. http://gpu-box:8000/v1)")
        return cls(url=settings.inference_url.rstrip("/"), api_key=settings.inference_api_key,
                   model=settings.inference_model, timeout_s=settings.inference_timeout_s,
                   concurrency=settings.inference_concurrency)

    @property
    def secrets(self) -> list[str]:
        """Every form of a secret this config holds that a server might echo back: the key, the address's
        credentials as written and as sent (percent-decoded, and base64 in a basic Authorization header);
        longest first, so that a secret inside another is blanked as part of it."""
        found = {self.api_key or ""}
        try:
            address = URL(self.url)
        except (TypeError, ValueError):
            address = None
        if address is not None and (address.raw_user or address.raw_password):
            user, password = address.user or "", address.password or ""
            found |= {address.raw_user or "", address.raw_password or "", password, f"{user}:{password}",
                      base64.b64encode(f"{user}:{password}".encode()).decode()}
        return sorted(found - {""}, key=len, reverse=True)


class CircuitBreaker:
    """closed -> open after `failures` consecutive failures -> half-open (one probe) after `cooldown_s` ->
    closed on the probe's success, open again on its failure. Thread-safe; logs each state change once."""

    def __init__(self, name: str, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.opened_wall = 0.0
        self.last_error = ""
        self._probing = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether a request may go out now (in half-open, only the one probe)."""
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and self.clock() - self.opened_at >= self.cooldown_s:
                self._change("half-open", "probing the server once")
            if self.state == "half-open" and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.consecutive = 0
            self._probing = False
            if self.state != "closed":
                self._change("closed", "the server answers again")

    def failure(self, error: str) -> None:
        """A request failed; `error` is its category (shown in /status: never the server's words)."""
        with self._lock:
            self.consecutive += 1
            self.last_error = error
            probe_failed = self.state == "half-open" and self._probing
            self._probing = False
            if probe_failed or (self.state == "closed" and self.consecutive >= self.failures):
                self.opened_at, self.opened_wall = self.clock(), time.time()
                self._change("open", f"after {self.consecutive} failed requests (last: {error}); replies use "
                                     f"the fallback line, next probe in {self.cooldown_s:g} s")

    def abandoned(self) -> None:
        """A request that was let through ended neither way (its caller left): a probe may go out again."""
        with self._lock:
            self._probing = False

    def _change(self, state: str, why: str) -> None:
        self.state = state
        level = logging.WARNING if state == "open" else logging.INFO
        log.log(level, "inference server %s: circuit %s, %s", self.name, state, why)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of the server's model list (`GET /models`).

    vLLM lists its models as `ModelCard`s (vllm/entrypoints/openai/protocol.py: id, object "model", created,
    owned_by "vllm", root, parent, max_model_len, permission). `OpenAIServingModels.show_available_models`
    (vllm/entrypoints/openai/serving_models.py) lists each base model with `root` its model path and no
    `parent`, then each LoRA module with `root` its path exactly as given to `--lora-modules NAME=PATH` (not
    resolved, so possibly relative to the server's working directory) and `parent` its base model's id. Other
    servers list `id` only: no root, no parent."""

    id: str
    root: str | None = None
    parent: str | None = None
    owner: str | None = None      # owned_by: "vllm" for vLLM's models

    @property
    def is_module(self) -> bool:
        """A LoRA module on a base the server also serves."""
        return self.parent is not None

    def describe(self) -> str:
        if self.is_module:
            return f"{self.id} (LoRA module on {self.parent}, from {self.root or 'an unnamed directory'})"
        return self.id


class _IOLoop:
    """An asyncio event loop in a daemon thread of its own, with the aiohttp session that lives on it: where
    one server's requests wait on the network (a waiting request holds no thread). The thread holds the loop
    only, never the connection, so a connection nobody closed can still be collected (and stops its loop)."""

    def __init__(self, concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=_run_forever, args=(self.loop,), name="personabot-remote",
                                       daemon=True)
        self.thread.start()

    def session(self) -> aiohttp.ClientSession:
        """The session (made on first use; call on the loop only). At most `concurrency` connections at once;
        answers read as sent (no decompression: what is read is what is capped)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency), timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False)
        return self._session

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future:
        """Run `coroutine` on the loop; its result (or exception) comes in the returned future."""
        with self._lock:
            if self._closed:
                coroutine.close()
                raise RemoteError("connection closed", retry=False)
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        """Cancel what is still running (its futures are cancelled), close the session, stop the loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._shut()))
        except RuntimeError:   # the loop is gone already (interpreter exit)
            pass

    async def _shut(self) -> None:
        current = asyncio.current_task()
        running = [task for task in asyncio.all_tasks() if task is not current]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        asyncio.get_running_loop().stop()


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class RemoteConnection:
    """What every backend speaking to one inference server shares: the event loop its requests run on, with
    at most `config.concurrency` in flight for the whole server (not per persona), the circuit breaker (the
    server is down for every model at once), the sampling-field style the server accepts and the count of
    requests sent. Closed when the last backend using it closes."""

    # One connection per server settings, for as long as a backend holds it (see `shared`).
    _shared: "weakref.WeakValueDictionary[RemoteConfig, RemoteConnection]" = weakref.WeakValueDictionary()
    _shared_lock = threading.Lock()

    def __init__(self, config: RemoteConfig) -> None:
        self.config = replace(config, model=None)     # the model is each backend's; the rest is the server's
        self.shown = shown_url(config.url)
        self.breaker = CircuitBreaker(self.shown, config.breaker_failures, config.breaker_cooldown_s)
        self.extra_style = EXTRA_STYLES[0]
        self.requests_sent = 0
        self._secrets = config.secrets
        # Credentials in the address go as basic auth (aiohttp takes them from it); a request has one
        # Authorization header, so the key goes only where the address has none (as requests did before).
        self._headers = {"Accept-Encoding": "identity"}
        if config.api_key and URL(config.url).raw_user is None:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        elif config.api_key:
            log.warning("INFERENCE_URL %s carries credentials, which are sent as basic auth: INFERENCE_API_KEY is "
                        "not sent (a request carries one Authorization header)", self.shown)
        self._io = self._open()
        self._users = 0
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> _IOLoop:
        io = _IOLoop(self.config.concurrency)
        weakref.finalize(self, io.close)
        return io

    @classmethod
    def shared(cls, config: RemoteConfig) -> "RemoteConnection":
        """The open connection for `config`'s server and settings (any `model`), made on first use. Held
        weakly: it lives as long as a backend uses it, so a later persona on the same server joins it."""
        key = replace(config, model=None)
        with cls._shared_lock:
            connection = cls._shared.get(key)
            if connection is None:
                connection = cls._shared[key] = cls(key)
            return connection

    @property
    def closed(self) -> bool:
        return self._closed

    def acquire(self) -> None:
        """One more backend uses this connection. One that its last user closed opens again with a fresh loop
        (a persona can join between `shared` handing it out and the last other persona closing)."""
        with self._lock:
            if self._closed:
                self._io = self._open()
                self._closed = False
            self._users += 1

    def release(self) -> None:
        """A backend is done with it; the last one out closes it (requests still running are cancelled)."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._closed:
                return
            self._closed = True
        self._io.close()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future:
        """Run `coroutine` on this connection's loop; `RemoteError` when the connection is closed."""
        return self._io.submit(coroutine)

    def step_down(self, style: str, error: RemoteError) -> None:
        """Send sampling fields the next way (`EXTRA_STYLES`) from now on, once per refusal of `style`."""
        with self._lock:
            if self.extra_style == style:
                self.extra_style = EXTRA_STYLES[EXTRA_STYLES.index(style) + 1]
                log.warning("inference server %s refused sampling fields sent %s (%s); sending them %s from now on",
                            self.shown, style, error.detail[:LOG_DETAIL_CHARS], self.extra_style)

    def request(self, method: str, path: str, body: dict | None, timeout: float, *, base: str | None = None,
                cap: int = MAX_ANSWER_BYTES, text: bool = False) -> Any:
        """`fetch`, waited for (blocking: never call it on this connection's loop)."""
        if threading.current_thread() is self._io.thread:
            raise RuntimeError("RemoteConnection.request would wait on its own loop; await fetch there")
        try:
            return self.submit(self.fetch(method, path, body, timeout, base=base, cap=cap, text=text)).result()
        except CancelledError:   # the connection closed meanwhile
            raise RemoteError("connection closed", retry=False) from None

    async def fetch(self, method: str, path: str, body: dict | None, timeout: float, *, base: str | None = None,
                    cap: int = MAX_ANSWER_BYTES, text: bool = False) -> Any:
        """JSON from the server (its text with `text`) within `timeout` seconds (the whole exchange: the name
        lookup, a free connection, the connect, the answer and all its body), read at most `cap` bytes; or
        `RemoteError` (retryable or not), its detail logged with the secrets blanked."""
        url = (base or self.config.url) + path
        where = shown_url(url)
        io = self._io
        if asyncio.get_running_loop() is not io.loop:   # a row of a loop closed meanwhile (its session is gone)
            raise RemoteError("connection closed", retry=False)
        with self._lock:
            self.requests_sent += 1
        try:
            try:
                async with asyncio.timeout(timeout):
                    async with io.session().request(method, url, json=body, headers=self._headers) as answer:
                        data, whole = await _read_capped(answer, cap)
            except TimeoutError:
                raise RemoteError("timed out", detail=f"no whole answer from {where} within {timeout:.1f} s") from None
            except aiohttp.ClientConnectorError as e:
                refused = isinstance(e.os_error, ConnectionRefusedError)
                raise RemoteError("refused" if refused else "unreachable",
                                  detail=f"cannot connect to {where}: {self.redact(str(e))}") from None
            except (aiohttp.ClientError, ValueError) as e:   # ValueError: an address aiohttp cannot use
                raise RemoteError("connection failed",
                                  detail=f"{where}: {type(e).__name__}: {self.redact(str(e))}") from None
            if answer.status != 200:
                text = self.redact(data.decode("utf-8", "replace"))   # blanked before any cut
                more = "" if whole else f" ... (more than {cap} bytes)"
                raise RemoteError(f"HTTP {answer.status}", status=answer.status,
                                  detail=f"{where} answered {answer.status}: {text[:LOG_DETAIL_CHARS]}{more}",
                                  retry=answer.status in _RETRY_STATUS,
                                  retry_after_s=_retry_after(answer.headers.get("Retry-After")))
            if not whole:
                raise RemoteError("answer too large", retry=False,
                                  detail=f"{where} answered more than {cap} bytes; read no further")
            if text:
                return data.decode("utf-8", "replace")
            try:
                return json.loads(data)
            except ValueError:
                raise RemoteError("malformed answer", detail=f"{where} answered something that is not JSON") from None
        except RemoteError as e:
            log.info("inference server %s: %s %s failed: %s", self.shown, method, path, e.detail)
            raise

    def redact(self, text: str) -> str:
        """`text` with every form of the key and the address's credentials blanked out."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def list_models(self) -> list[ServedModel]:
        """The server's model list; `BackendError` when it cannot be read."""
        try:
            body = self.request("GET", "/models", None, self.config.timeout_s)
            entries = body["data"]
            listed = [ServedModel(str(m["id"]), _text_or_none(m.get("root")), _text_or_none(m.get("parent")),
                                  _text_or_none(m.get("owned_by"))) for m in entries]
        except RemoteError as e:
            raise BackendError(f"cannot list the models of the inference server at {self.shown}: {e}") from e
        except (KeyError, TypeError, AttributeError) as e:
            raise BackendError(f"the inference server at {self.shown} lists its models in an unknown "
                               f"form (no data[].id)") from e
        return listed

    def load_adapter(self, name: str, directory: Path) -> None:
        """Load the LoRA adapter in `directory` as the module `name` (vLLM started with
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=true: `POST /load_lora_adapter`). `RemoteError` when the server will
        not: HTTP 404 where it loads none at run time."""
        answer = self.request("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": str(directory)},
                              self.config.timeout_s, text=True)
        log.info("inference server %s: loaded the LoRA module %s from %s (%s)", self.shown, name, directory,
                 self.redact(answer.strip())[:200])

    def unload_adapter(self, name: str) -> None:
        """Unload the LoRA module `name` (`POST /unload_lora_adapter`); `RemoteError` when the server will not."""
        self.request("POST", "/unload_lora_adapter", {"lora_name": name}, self.config.timeout_s, text=True)
        log.info("inference server %s: unloaded the LoRA module %s", self.shown, name)

    def answers_for(self, model: str) -> bool:
        """Whether the server answers a one-token completion for `model`: a model it serves, or one it loads
        when asked (`transformers serve` started without a model loads a directory by its path; this may take
        a while: MODEL_LOAD_S). False when it refuses the model (4xx); `RemoteError` when it does not answer."""
        try:
            self.request("POST", "/completions", {"model": model, "prompt": " ", "max_tokens": 1},
                         max(self.config.timeout_s, MODEL_LOAD_S))
        except RemoteError as e:
            if e.status is not None and 400 <= e.status < 500:
                return False
            raise
        return True

    def serves_by_path(self, directory: Path) -> bool:
        """Whether the server serves the model in `directory` when asked for it by its path: it answers for
        it, and lists it then (a server that ignores the model asked for, as llama.cpp's does, answers any
        name but lists only its own). `RemoteError`, `BackendError` when it does not answer."""
        directory = directory.resolve()
        return self.answers_for(str(directory)) and listed_as(self.list_models(), directory) is not None

    def loads_adapters(self) -> bool:
        """Whether the server loads LoRA adapters at run time: its `/load_lora_adapter` answers a request
        without an adapter with a refusal of the request (400, 422) rather than 404 (no such endpoint, as
        vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING=true). `RemoteError` when the server does not answer."""
        try:
            self.request("POST", "/load_lora_adapter", {}, self.config.timeout_s, text=True)
        except RemoteError as e:
            if e.status in (400, 422):
                return True
            if e.status in (404, 405):
                return False
            raise
        return True


async def _read_capped(answer: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """(at most `cap` bytes of the answer's body, whether that is all of it). An answer that says it is
    bigger is not read at all; one that does not say is read until it passes the cap."""
    if answer.content_length is not None and answer.content_length > cap:
        return b"", False
    data = bytearray()
    async for chunk in answer.content.iter_any():
        data += chunk
        if len(data) > cap:
            return bytes(data[:cap]), False
    return bytes(data), True


class RemoteBackend:
    """The `Backend` of bot.inference.backends over an OpenAI-compatible completions endpoint, for one served model
    (a whole model or a LoRA module), on a `RemoteConnection` it may share with backends of other models."""

    name = "openai"
    # The weights live on the inference server: a swap here cannot change what it serves (see bot.jobs.retrain).
    serves_elsewhere = True

    def __init__(self, config: RemoteConfig, tokenizer, model: str,
                 connection: RemoteConnection | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.connection = connection if connection is not None else RemoteConnection(config)
        self.connection.acquire()
        self.longest_token = longest_token_chars(tokenizer)   # bounds the text tokenised per reply
        self._closed = False

    # What the connection holds, read through the backend as before it was shared.
    @property
    def breaker(self) -> CircuitBreaker:
        return self.connection.breaker

    @property
    def extra_style(self) -> str:
        return self.connection.extra_style

    @property
    def requests_sent(self) -> int:
        """Requests sent to the server by every backend on this connection."""
        return self.connection.requests_sent

    # -- start ---------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, config: RemoteConfig, tokenizer, *, info: PersonaInfo | None = None,
                connection: RemoteConnection | None = None) -> "RemoteBackend":
        """A backend for `config`, after checking the server: its model (listed or chosen; for an adapter
        artifact `info`, the server's LoRA module for it) and its tokenizer against `tokenizer`. Raises
        `BackendError` naming both sides when they differ. `connection` (e.g. `RemoteConnection.shared`) is
        the one to share with other personas on this server; None: a connection of its own."""
        probe = cls(config, tokenizer, config.model or "", connection)
        try:
            probe.model = probe.served_model(info)
            probe.check_tokenizer()
        except BaseException:
            probe.close()
            raise
        log.info("inference server %s: serving %s with a matching tokenizer", probe.connection.shown,
                 probe.model)
        return probe

    def served_model(self, info: PersonaInfo | None = None) -> str:
        """The model to ask for: for an adapter artifact `info`, its LoRA module (see `adapter_module`;
        INFERENCE_MODEL does not apply, as it names one model for every persona of the bot); otherwise the
        configured one (INFERENCE_MODEL); else the listed model that is the artifact's directory; else the
        one model the server lists (when it lists a base and LoRA modules on it, the one entry without a
        parent); else, where it lists none or several, the directory itself if the server serves it when asked
        (`serves_by_path`: `transformers serve` started without a model)."""
        listed = self.connection.list_models()
        if info is not None and info.is_adapter:
            try:
                return adapter_module(listed, info, self.connection.shown)
            except BackendError as missing:
                return self._load_module(listed, info, missing)
        ids = [m.id for m in listed]
        if self.config.model:
            if self.config.model not in ids:
                log.warning("inference server %s does not list %s (it lists %s); asking for it anyway",
                            self.connection.shown, self.config.model, ", ".join(ids) or "nothing")
            return self.config.model
        own = listed_as(listed, info.path) if info is not None else None
        if own is not None:     # the server serves this artifact (started with its directory, or loaded it)
            return own
        # vLLM lists every LoRA module beside its base; a whole model is never one of the modules.
        whole = [m.id for m in listed if not m.is_module]
        if len(whole) != 1 and info is not None:
            # A server that loads a model by its path when asked (`transformers serve` started without one).
            try:
                if self.connection.serves_by_path(info.path):
                    return str(info.path.resolve())
            except (RemoteError, BackendError):
                pass
        if len(whole) != 1:
            raise BackendError(f"the inference server at {self.connection.shown} lists "
                               f"{', '.join(whole) or 'no models'}; set INFERENCE_MODEL to the persona's")
        return whole[0]

    def _load_module(self, listed: list[ServedModel], info: PersonaInfo, missing: BackendError) -> str:
        """The module of adapter `info`, loaded now: the server serves none for it (`missing` says so), and a
        server that loads adapters at run time gets it by its path, which the server's machine must see as
        this one does (the same MODELS_DIR on every machine). Every bot process that needs the adapter loads
        it, whichever comes first; the others find it listed."""
        directory = info.path.resolve()
        name = adapter_module_name(listed, directory)
        try:
            self.connection.load_adapter(name, directory)
        except RemoteError as e:
            if e.status == 400 and "already" in e.detail:
                pass    # another process loaded it meanwhile: it is listed now
            elif e.status in (404, 405):
                raise BackendError(f"{missing} Or start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, and the "
                                   "bot loads each adapter persona's module itself") from None
            else:
                raise BackendError(f"the inference server at {self.connection.shown} did not load the LoRA "
                                   f"adapter {directory} as {name}: {e} (its answer is in the log)") from None
        return adapter_module(self.connection.list_models(), info, self.connection.shown)

    def swap_refusal(self, info: PersonaInfo, what: str) -> str | None:
        """Why a persona like `info` cannot be swapped to a new artifact while this server serves it (`what`:
        "retrain", "roll back"), or None when it can: an adapter can where the server loads adapters at run
        time; a whole model cannot, as the server keeps the weights it was started with."""
        where = f"the inference server at {self.connection.shown}"
        try:
            if not info.is_adapter:
                return self._whole_model_refusal(info, what, where)
            if self.connection.loads_adapters():
                return None
        except (RemoteError, BackendError) as e:
            return f"cannot {what} now: {where} does not answer ({e})"
        return (f"cannot {what} here: {where} does not load LoRA adapters at run time. Start vLLM with "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true (the bot then loads each new adapter and unloads the old "
                "one), or train with `personabot train --lora --out DIR`, add --lora-modules NAME=DIR to the "
                "server and restart it")

    def _whole_model_refusal(self, info: PersonaInfo, what: str, where: str) -> str | None:
        """A whole model swaps where the server loads a model by its path when asked (`transformers serve`
        started without one): the swap is the new directory. vLLM keeps the model it was started with."""
        instead = (f"Train with `personabot train --out DIR`, serve DIR there (`vllm serve DIR`, or `transformers "
                   "serve`, which loads any directory asked for), and point the bot at it (PERSONA_MODEL=DIR, or "
                   "`personabot persona` for a registered persona); LoRA adapter personas (`personabot train "
                   "--lora`) retrain and roll back while vLLM serves them")
        if any(m.owner == "vllm" for m in self.connection.list_models()):
            return (f"cannot {what} here: {info.path.name} is a whole model, and {where} (vLLM) serves the weights "
                    f"it was started with. {instead}")
        if not self.connection.serves_by_path(info.path):
            return (f"cannot {what} here: {where} does not serve {info.path} when asked for it by its path (it "
                    f"serves the model it was started with). {instead}")
        return None

    def retire_adapter(self, directory: Path) -> list[str]:
        """Unload every LoRA module the server serves from `directory` (an adapter persona's earlier artifact,
        after a retrain or a rollback moved its persona on); the names unloaded. `RemoteError` or
        `BackendError` when the server will not."""
        directory = directory.resolve()
        names = [m.id for m in self.connection.list_models()
                 if m.is_module and m.root and _resolved(m.root) == directory]
        for name in names:
            self.connection.unload_adapter(name)
        return names

    def check_tokenizer(self) -> None:
        """Raise `BackendError` unless the server's tokenizer makes of the probe what the artifact's does."""
        marker, probe = tokenizer_probes(self.tokenizer)
        mine = self.tokenizer.encode(marker + probe, add_special_tokens=False)
        theirs = self._server_ids(marker + probe)
        where = f"the inference server at {self.connection.shown} (model {self.model})"
        if theirs is not None:
            if theirs != mine:
                raise BackendError(f"{where} tokenizes differently from the artifact: a probe with the end "
                                   f"marker and the vocabulary's last tokens is {theirs[:12]}... there, "
                                   f"{mine[:12]}... here; serve the artifact's own directory")
            return
        # A completion's prompt count holds what the server's tokenizer puts first (Llama's <s>), as ours does.
        start = len(transcript.special_prefix(self.tokenizer))
        for what, text, expected in (("the end marker", marker, 1 + start),
                                     ("a probe of its last tokens", probe, len(mine) - 1 + start)):
            counted = self._prompt_tokens(text)
            if counted != expected:
                raise BackendError(f"{where} has another tokenizer than the artifact: {what} {text[:40]!r} is "
                                   f"{counted} tokens there, {expected} here (the artifact's vocabulary has "
                                   f"{len(self.tokenizer)} tokens, end marker {marker!r}); serve the "
                                   f"artifact's own directory")

    def _server_ids(self, text: str) -> list[int] | None:
        """The server's ids for `text` from its tokenize endpoint, or None when it has none."""
        root = self.config.url[:-3] if self.config.url.endswith("/v1") else self.config.url
        body = {"model": self.model, "prompt": text, "content": text, "inputs": text, "add_special_tokens": False}
        try:
            answer = self._request("POST", "/tokenize", body, self.config.timeout_s, base=root)
        except RemoteError:
            return None
        if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
            return [int(t) for t in answer["tokens"]]       # vLLM, llama.cpp
        if isinstance(answer, list) and all(isinstance(t, dict) and "id" in t for t in answer):
            return [int(t["id"]) for t in answer]            # TGI
        return None

    def _prompt_tokens(self, prompt: str) -> int:
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1}
        try:
            answer = self._request("POST", "/completions", body, self.config.timeout_s)
            return int(answer["usage"]["prompt_tokens"])
        except (RemoteError, KeyError, TypeError, ValueError) as e:
            raise BackendError(f"cannot check the tokenizer of the inference server at {self.connection.shown}: "
                               f"the server has no tokenize endpoint and its completions report no prompt token "
                               f"count ({e})") from e

    # -- the Backend protocol ----------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
                 seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[list[int]]:
        """One reply per prompt, the rows sent together (blocking; a row the server did not answer is empty).
        The engine uses `submit` instead, so that its worker never waits on the network."""
        return [row.result() or [] for row in self.submit(prompts, settings, seeds, cancelled)]

    def submit(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
               seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[Future]:
        """One future per prompt, at once, settled from the connection's loop: the reply's ids, or None when
        the server gave no answer within the row's deadline (INFERENCE_TIMEOUT, from now), or the circuit is
        open. Asking again would wait as long again: the caller gives the fallback line instead. Raises
        `RemoteError` when the connection is closed."""
        deadline = time.monotonic() + self.config.timeout_s
        return [self.connection.submit(self._reply_ids(row, list(p), s, seed, cancelled, deadline))
                for row, (p, s, seed) in enumerate(zip(prompts, settings, seeds))]

    @property
    def healthy(self) -> bool:
        return self.breaker.state != "open"

    @property
    def health(self) -> str:
        """One line for /status and /healthz: the address without credentials, and of a failure its category
        only (the server's words go to the log)."""
        where = f"openai {self.connection.shown} model {self.model}"
        if self.breaker.state == "closed":
            return f"{where}: ok"
        since = time.strftime("%H:%M:%S", time.localtime(self.breaker.opened_wall))
        return f"{where}: circuit {self.breaker.state} since {since}, last error: {self.breaker.last_error}"

    def close(self) -> None:
        """Done with the server: the connection closes when no other backend uses it. Idempotent."""
        if not self._closed:
            self._closed = True
            self.connection.release()

    # -- one row (on the connection's loop) ----------------------------------------------------------
    async def _reply_ids(self, row: int, prompt: list[int], settings: GenerationSettings, seed: int | None,
                         cancelled: Callable[[int], bool] | None, deadline: float) -> list[int] | None:
        # The text's start (Llama's <s>) is the server tokenizer's to put back, as it does for every prompt.
        start = transcript.special_prefix(self.tokenizer)
        if start and prompt[:len(start)] == start:
            prompt = prompt[len(start):]
        prompt_text = self.tokenizer.decode(prompt) if prompt else self.tokenizer.decode(
            [transcript.end_marker_id(self.tokenizer)])
        stops = transcript.stop_strings(self.tokenizer, prompt_text)
        for attempt in range(self.config.retries + 1):
            if cancelled is not None and cancelled(row):
                return []       # nobody waits for it any more
            if not self.breaker.allow():
                return None
            try:
                text = await self._complete(prompt_text, settings, seed, stops, deadline)
            except RemoteError as e:
                self.breaker.failure(str(e))
                pause = e.retry_after_s if e.retry_after_s is not None else self.config.backoff_s * 2 ** attempt
                pause = min(pause, self.config.max_retry_after_s) * random.uniform(0.8, 1.0)
                if not e.retry or time.monotonic() + pause >= deadline or attempt == self.config.retries:
                    log.debug("row %d got no answer: %s", row, e)
                    return None
                await asyncio.sleep(pause)
                continue
            except BaseException:   # cancelled (its caller left, the connection closed) or a bug
                self.breaker.abandoned()
                raise
            self.breaker.success()
            return self._reply_from(text, stops, settings.max_new_tokens)
        return None

    def _reply_from(self, text: str, stops: list[str], max_new_tokens: int) -> list[int]:
        """The reply's ids from a completion's text: no more of it tokenised than `max_new_tokens` tokens
        could hold (a server may answer far more than it was asked for), cut at the stops, then again."""
        text = text[:(max_new_tokens + SPARE_TOKENS) * self.longest_token]
        ids = self.tokenizer.encode(transcript.cut_at_stops(text, stops), add_special_tokens=False)
        return cut_reply(ids[:max_new_tokens], self.tokenizer)[0]

    async def _complete(self, prompt: str, settings: GenerationSettings, seed: int | None, stops: list[str],
                        deadline: float) -> str:
        """The completion text for one prompt; steps down the sampling fields a server refuses."""
        cap = completion_cap_bytes(settings.max_new_tokens, self.longest_token)
        while True:
            style = self.extra_style
            body = completion_body(self.model, prompt, settings, seed, stops, style,
                                   transcript.end_marker_id(self.tokenizer))
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteError("timed out", detail=f"no time left for {self.connection.shown}/completions")
            try:
                answer = await self.connection.fetch("POST", "/completions", body, left, cap=cap)
            except RemoteError as e:
                if style != EXTRA_STYLES[-1] and _refuses_extras(e, style):
                    self.connection.step_down(style, e)
                    continue
                raise
            try:
                text = answer["choices"][0]["text"]
            except (KeyError, IndexError, TypeError):
                raise RemoteError("malformed answer", detail="no choices[0].text in the answer") from None
            if not isinstance(text, str):
                raise RemoteError("malformed answer", detail="choices[0].text is not text")
            return text

    def _request(self, method: str, path: str, body: dict | None, timeout: float, *, base: str | None = None) -> Any:
        return self.connection.request(method, path, body, timeout, base=base)


def completion_body(model: str, prompt: str, settings: GenerationSettings, seed: int | None, stops: list[str],
                    style: str, end_marker: int) -> dict[str, Any]:
    """The JSON of one completions request, with the sampling fields the API lacks sent in `style`."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": settings.max_new_tokens,
                            "temperature": settings.temperature, "top_p": settings.top_p, "stop": stops}
    if seed is not None:
        body["seed"] = int(seed)
    if style == "top-level":
        body["top_k"] = settings.top_k or -1        # vLLM's "off" is -1
        body["repetition_penalty"] = settings.repetition_penalty
    elif style == "generation_config":
        body["generation_config"] = json.dumps({
            "do_sample": True, "top_k": settings.top_k or None, "repetition_penalty": settings.repetition_penalty,
            "no_repeat_ngram_size": settings.no_repeat_ngram_size, "eos_token_id": end_marker,
            "pad_token_id": end_marker})
    return body


def adapter_module(listed: Sequence[ServedModel], info: PersonaInfo, url: str) -> str:
    """The id of the server's LoRA module serving the adapter artifact `info`, chosen in this order:
    1. the entry whose `root` is the artifact's directory (both resolved: the server on this machine);
    2. the one entry whose `root` ends with the directory's name (the server on another machine, where the
       adapter was copied elsewhere); two or more such entries say nothing, so none is taken;
    3. the entry whose id is the directory's name.
    None: `BackendError` naming what the server lists and the `--lora-modules` argument to add."""
    directory = info.path.resolve()
    for model in listed:
        if model.root and _resolved(model.root) == directory:
            return model.id
    same_name = [m for m in listed if m.root and _last_part(m.root) == directory.name]
    if len(same_name) == 1:
        return same_name[0].id
    for model in listed:
        if model.id == directory.name:
            return model.id
    modules = [m.describe() for m in listed if m.is_module]
    lists = (f"lists the LoRA modules {'; '.join(modules)}" if modules else
             f"lists {', '.join(m.id for m in listed) or 'no models'} and no LoRA module (is it started with "
             f"--enable-lora?)")
    ambiguous = (f"; {', '.join(m.id for m in same_name)} all come from a directory named {directory.name!r}, "
                 "so none is taken for it" if len(same_name) > 1 else "")
    raise BackendError(f"{info.path} is a LoRA adapter on {info.base}, and the inference server at {url} serves "
                       f"no LoRA module for it: it {lists}{ambiguous}. Start the server on that base with "
                       f"--enable-lora --lora-modules {directory.name}={directory} (the directory as the "
                       f"server's machine sees it; a module named {directory.name!r} is matched wherever it "
                       f"lies), beside the other personas' modules")


def listed_as(listed: Sequence[ServedModel], directory: Path) -> str | None:
    """The id of the listed whole model that is the artifact in `directory` (its id or root is that
    directory), or None."""
    directory = directory.resolve()
    for model in listed:
        if not model.is_module and directory in (_resolved(model.id), _resolved(model.root or "")):
            return model.id
    return None


def adapter_module_name(listed: Sequence[ServedModel], directory: Path) -> str:
    """The name to load the adapter in `directory` under: the directory's name (a retrain's output is named
    after its persona and time), with a part of its path's hash where another module has that name already."""
    taken = {m.id for m in listed}
    if directory.name not in taken:
        return directory.name
    return f"{directory.name}-{hashlib.sha1(str(directory).encode()).hexdigest()[:8]}"


def _resolved(path: str) -> Path | None:
    """`path` as an absolute path here, or None when it cannot be one (a hub id resolves harmlessly)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _last_part(path: str) -> str:
    """The last part of a path written on any machine (POSIX or Windows separators, a trailing slash)."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _text_or_none(value: object) -> str | None:
    """A model list's optional text field (vLLM writes JSON null for a base model's parent)."""
    return value if isinstance(value, str) and value else None


def _refuses_extras(error: RemoteError, style: str) -> bool:
    """Whether an error answer is the server refusing the fields `style` adds (a 400 or 422 naming one)."""
    if error.status not in (400, 422):
        return False
    named = ("top_k", "repetition_penalty") if style == "top-level" else ("generation_config",)
    return any(name in error.detail for name in named)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None   # an HTTP date: the usual backoff applies


def tokenizer_probes(tokenizer, tail: int = PROBE_TOKENS) -> tuple[str, str]:
    """(the end marker's text, a probe text): what the start check compares between the artifact's tokenizer
    and the server's. The probe holds the texts of the artifact's `tail` highest-numbered tokens that read
    back as themselves (the last merges a vocabulary learnt, where two vocabularies part first), one a line,
    then a transcript sample."""
    marker = tokenizer.decode([transcript.end_marker_id(tokenizer)])
    highest: list[str] = []
    for token in range(len(tokenizer) - 1, -1, -1):
        text = tokenizer.decode([token])
        if text.strip() and "\n" not in text and tokenizer.encode(text, add_special_tokens=False) == [token]:
            highest.append(text)
            if len(highest) == tail:
                break
    sample = (transcript.turn_text("Alice", "are you coming tonight? it's at 8, bring snacks!")
              + transcript.turn_text("Bob", "depends, who's cooking... 🍕") + "Carol:")
    return marker, "\n".join(highest) + "\n" + sample


def serve_locally(directory: str | None, port: int, *, host: str = "127.0.0.1", deadline_s: float = 120.0,
                  log_path: str | None = None):
    """Start `transformers serve DIRECTORY` (the `serving` extra of transformers) on `host:port` in a
    subprocess, offline, and wait until it lists its model; with `directory` None, a server that loads any
    directory a request names. For the tests and the benchmark; production runs vLLM or the like on its own.
    Returns the `subprocess.Popen`; the caller stops it (`terminate`, `wait`)."""

    command = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    model = [str(directory)] if directory is not None else []
    server = subprocess.Popen([str(command), "serve", *model, "--host", host, "--port", str(port),
                               "--device", "cpu", "--log-level", "warning"], env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}/v1/models"
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        if server.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {server.returncode} before answering")
        try:
            with urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return server
        except (URLError, OSError):
            pass
        time.sleep(0.1)
    server.terminate()
    server.wait()
    raise RuntimeError(f"transformers serve did not answer on {url} within {deadline_s:g} s")


__all__ = ["RemoteBackend", "RemoteConfig", "RemoteConnection", "RemoteError", "CircuitBreaker", "ServedModel",
           "adapter_module", "adapter_module_name", "completion_body", "completion_cap_bytes", "longest_token_chars", "shown_url",
           "tokenizer_probes", "serve_locally"]
