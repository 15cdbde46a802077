"""Shared test fixtures. Everything here is real: files on disk, tiny models trained in the test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chatgen import chat_conversations, write_whatsapp

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def fixtures_dir() -> Path:
    """tests/fixtures: hand-written exports of invented people, one folder per format."""
    return FIXTURES


@pytest.fixture
def make_chat(tmp_path: Path) -> Callable[..., Path]:
    """Write an invented WhatsApp export: make_chat(name="chat.txt", n_conversations=24, seed=7)."""

    def make(name: str = "chat.txt", n_conversations: int = 24, seed: int = 7) -> Path:
        return write_whatsapp(tmp_path / name, chat_conversations(n_conversations, seed))

    return make


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 saved with save_pretrained, with a byte-level BPE tokenizer trained on the test chats:
    stands in for a hub model (`--base DIR` goes through the same from_pretrained path as `gpt2`)."""
    from training.modelling import scratch_model, train_tokenizer

    texts = [f"{s}: {t}\n" for conv in chat_conversations(40, seed=1) for s, t in conv]
    tokenizer = train_tokenizer(texts * 3, vocab_size=400)
    model = scratch_model("tiny", tokenizer, seed=1)
    out = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
            module: str = "bot", input: str = "") -> subprocess.CompletedProcess:
    """Run `python -m bot ARGS` (the personabot command) in a real subprocess, `input` on its stdin."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli
