"""vLLM's CPU build started on this machine, from the environment of its own that `scripts/vllm.sh` sets up
(its pins never meet the project's), as a user starts it (`scripts/vllm.sh serve`): the server the tests and
the benchmark run on loopback. In a process group of its own (the API server and its engine core process),
so that the whole server can be killed. Production runs vLLM its own way (`vllm serve`, on a GPU)."""

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

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vllm.sh"
# The first install downloads about 3.5 GB; later runs find the environment in place at once.
SETUP_TIMEOUT_S = 900
# Measured start here: about 40 s on an idle 2-core machine.
START_DEADLINE_S = 300
INSTALL_REFUSED = 3     # scripts/vllm.sh's exit status when the registry gives no package


class VLLMUnavailable(Exception):
    """vLLM's CPU build could not be installed here; the message says why."""


def setup_vllm() -> str:
    """The python of vLLM's environment, set up first if need be (`scripts/vllm.sh setup`). Raises
    `VLLMUnavailable` when the registry gives no package, `RuntimeError` when the setup fails otherwise."""
    done = subprocess.run(["bash", str(SCRIPT), "setup"], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    if done.returncode == INSTALL_REFUSED:
        raise VLLMUnavailable(done.stderr.strip()[-600:])
    if done.returncode != 0:
        raise RuntimeError(f"scripts/vllm.sh setup failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`scripts/vllm.sh serve MODEL --enable-lora --lora-modules NAME=DIR ...` on a free loopback port, with
    runtime adapter loading on (VLLM_ALLOW_RUNTIME_LORA_UPDATING=true); its output goes to `log_path`."""

    def __init__(self, model: Path, modules: dict[str, Path], log_path: Path, *, max_loras: int = 4,
                 max_lora_rank: int = 8, max_model_len: int = 256, dtype: str = "float32") -> None:
        self.model, self.modules, self.log_path = model, modules, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(max_model_len),
                     "--dtype", dtype, "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank",
                     str(max_lora_rank)]
        if modules:
            self.args += ["--lora-modules", *(f"{name}={path}" for name, path in modules.items())]
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> "VLLMServer":
        """Start it and wait until it lists its models; `RuntimeError` with its log's tail when it does not."""
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["bash", str(SCRIPT), "serve", str(self.model), *self.args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        until = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.models()
                return self
            except (URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM did not answer within {START_DEADLINE_S} s:\n{self.log_tail()}")

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


__all__ = ["VLLMServer", "VLLMUnavailable", "setup_vllm", "free_port"]
