"""vLLM's CPU build on loopback for the tests: installed by `scripts/vllm.sh setup` in a virtual environment of
its own (its pins never meet the project's), started with `scripts/vllm.sh serve` as a user would start it,
in a process group of its own (the API server and its engine core process), so that a test can kill -9 the
whole server. A registry that refuses the install is a skip that says so, never a pass."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "vllm.sh"
# The first install downloads about 3.5 GB; later runs find the environment in place at once.
SETUP_TIMEOUT_S = 900
# Measured start here: about 40 s on an idle 2-core machine; the rest of the suite runs beside it.
START_DEADLINE_S = 300
INSTALL_REFUSED = 3     # scripts/vllm.sh's exit status when the registry gives no package


def vllm_python() -> str:
    """The python of vLLM's environment, set up first if need be; skips the test when it cannot be installed."""
    done = subprocess.run(["bash", str(SCRIPT), "setup"], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    if done.returncode == INSTALL_REFUSED:
        pytest.skip(f"vLLM's CPU build could not be installed, so the tests against it did not run: "
                    f"{done.stderr.strip()[-600:]}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`scripts/vllm.sh serve MODEL --enable-lora --lora-modules NAME=DIR ...` on a free loopback port, with
    runtime adapter loading on (VLLM_ALLOW_RUNTIME_LORA_UPDATING=true); its output goes to `log_path`."""

    def __init__(self, model: Path, modules: dict[str, Path], log_path: Path, *, max_loras: int = 4,
                 max_lora_rank: int = 8) -> None:
        self.model, self.modules, self.log_path = model, modules, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", "256", "--dtype",
                     "float32", "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
        if modules:
            self.args += ["--lora-modules", *(f"{name}={path}" for name, path in modules.items())]
        self.process: subprocess.Popen | None = None

    def start(self) -> "VLLMServer":
        """Start it and wait until it lists its models; fails the test with the log's tail when it does not."""
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["bash", str(SCRIPT), "serve", str(self.model), *self.args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        until = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise AssertionError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.models()
                return self
            except (URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"vLLM did not answer within {START_DEADLINE_S} s:\n{self.log_tail()}")

    def models(self) -> list[dict]:
        with urlopen(f"{self.url}/models", timeout=5) as answer:
            return json.load(answer)["data"]

    def modules_now(self) -> dict[str, str]:
        """The LoRA modules it serves now: name -> directory."""
        return {m["id"]: m["root"] for m in self.models() if m.get("parent")}

    def top_logprobs(self, model: str, prompt: str, n: int = 5) -> dict[str, float]:
        """The server's log-probabilities of the `n` likeliest first tokens after `prompt`, for `model`."""
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                           "logprobs": n}).encode()
        request = Request(f"{self.url}/completions", body, {"Content-Type": "application/json"})
        with urlopen(request, timeout=60) as answer:
            return json.load(answer)["choices"][0]["logprobs"]["top_logprobs"][0]

    def kill(self) -> None:
        """kill -9 of the whole server (its API process and its engine core)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
