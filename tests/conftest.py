"""Shared test fixtures. Everything here is real: files on disk, tiny models trained in the test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatgen import chat_conversations, write_whatsapp
from databases import PostgresServer, TestDatabase

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


def _train_persona(out: Path, speaker: str, steps: int, chat: Path) -> Path:
    from training.trainer import TrainConfig, train

    train(TrainConfig(data=[str(chat)], speaker=speaker, out=out, from_scratch="tiny", max_steps=steps,
                      epochs=200, batch_size=4, threads=1, samples=1))
    return out


@pytest.fixture(scope="session")
def persona_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test chats, with Alice opening every message with @everyone (so her persona says it too)."""
    conversations = [[(s, f"@everyone {t}" if s == "Alice" else t) for s, t in conv]
                     for conv in chat_conversations(24, seed=7)]
    return write_whatsapp(tmp_path_factory.mktemp("persona-chat") / "chat.txt", conversations)


@pytest.fixture(scope="session")
def alice_artifact(tmp_path_factory: pytest.TempPathFactory, persona_chat: Path) -> Path:
    """A tiny persona of Alice, trained until it has learnt her template line (300 steps, about 15 s): it
    repeats her training lines, mentions included, which the filters must catch."""
    return _train_persona(tmp_path_factory.mktemp("artifacts") / "alice", "alice", 300, persona_chat)


@pytest.fixture(scope="session")
def bob_artifact(tmp_path_factory: pytest.TempPathFactory, persona_chat: Path) -> Path:
    """A second tiny persona (Bob), to swap in for Alice."""
    return _train_persona(tmp_path_factory.mktemp("artifacts") / "bob", "bob", 20, persona_chat)


@pytest.fixture(scope="session")
def lora_personas(tmp_path_factory: pytest.TempPathFactory, alice_artifact: Path, persona_chat: Path) -> dict[str, Path]:
    """LoRA adapter personas of one base, as several personas of one bot would be: Alice, Bob and Carol, each
    trained for a few seconds. Their base is `alice_artifact`, a model that has learnt these chats already (a
    random tiny base would teach an adapter nothing in seconds), loaded as a base from its directory."""
    from training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("lora-personas")
    out = {}
    for speaker in ("alice", "bob", "carol"):
        out[speaker] = root / speaker
        train(TrainConfig(data=[str(persona_chat)], speaker=speaker, out=out[speaker], base=str(alice_artifact),
                          lora=True, max_steps=40, epochs=100, batch_size=4, lr=3e-3, threads=1, samples=0))
    return out


@pytest.fixture
def data_dir(tmp_path: Path, persona_chat: Path) -> Path:
    """TRAIN_DATA_DIR for retraining: a folder holding the persona chat export."""
    import shutil

    folder = tmp_path / "exports"
    folder.mkdir()
    shutil.copy(persona_chat, folder / "chat.txt")
    return folder


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on a free loopback port for the whole session (about a second to start),
    stopped and removed at the end."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg(postgres_server: PostgresServer) -> TestDatabase:
    """A fresh database of its own on the session's PostgreSQL server."""
    name = postgres_server.create_database()
    return TestDatabase("postgresql", postgres_server.url(name), name, postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> TestDatabase:
    """The database a store test runs on, once per engine: a SQLite file in the test's folder, or a fresh
    database of its own on the session's PostgreSQL server. `await database.open()` opens the store."""
    if request.param == "sqlite":
        return TestDatabase("sqlite", str(tmp_path / "bot.sqlite3"))
    return request.getfixturevalue("pg")
