"""LoRA adapter artifacts: `personabot train --lora` writes an adapter that names its base (a small fraction
of the base's bytes), and `chat`, `sample` and every local backend load it by loading the base and applying
the adapter. A missing base or damaged adapter files are clear errors that name the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chatgen import chat_conversations, write_whatsapp
from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """A LoRA adapter on `tiny_base`, trained through the real command (25 steps, a few seconds). The base is
    named by a path relative to where the command runs, as a user types it; the tests load it from elsewhere."""
    root = tmp_path_factory.mktemp("lora")
    chat = write_whatsapp(root / "chat.txt", chat_conversations(24, seed=7))
    out = root / "alice-lora"
    done = run_cli("train", "--data", str(chat), "--speaker", "alice", "--out", str(out),
                   "--base", f"./{tiny_base.name}", "--lora", "--max-steps", "25", "--epochs", "100",
                   "--batch-size", "4", "--lr", "3e-3", "--threads", "1", "--samples", "1", "--progress", "none",
                   cwd=tiny_base.parent)
    assert done.returncode == 0, done.stderr
    return out


def _copy(adapter: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    return copy


def test_train_lora_writes_a_small_adapter_that_names_its_base_and_learnt(adapter, tiny_base):
    files = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json", "persona.json",
            "training_text.jsonl.gz", "loss.png"} <= files
    assert "model.safetensors" not in files
    persona = json.loads((adapter / "persona.json").read_text())
    assert persona["lora"] == {"r": 8, "alpha": 16, "merged": False}
    assert persona["base"] == str(tiny_base) and Path(persona["base"]).is_absolute()
    assert persona["metrics"]["trained"]["val_loss"] < persona["metrics"]["base"]["val_loss"]
    assert persona["samples"] and persona["samples"][0].strip()
    # Megabytes, not a whole model: the adapter's weights are a small fraction of the base's.
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    base_bytes = (tiny_base / "model.safetensors").stat().st_size
    assert adapter_bytes * 10 < base_bytes, (adapter_bytes, base_bytes)
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert all("lora_" in k for k in f.keys())


def test_the_adapter_is_applied_when_loaded_merged_or_apart(adapter, tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    from training.artifact import load_model, read_persona

    info = read_persona(adapter)
    assert info.is_adapter
    merged, tokenizer = load_model(info)
    apart, _ = load_model(info, merge=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = torch.tensor([tokenizer.encode("Bob: pizza tonight?\nAlice:")])
    with torch.no_grad():
        m, a, b = (model(input_ids=ids).logits for model in (merged, apart, base))
    assert hasattr(apart, "peft_config") and not hasattr(merged, "peft_config")
    assert torch.allclose(m, a, atol=1e-4)           # merging changes nothing but speed
    assert (m - b).abs().max() > 1e-3                 # the adapter is really there: not the base's output


@pytest.mark.parametrize("backend", ["torch", "torch-int8", "ctranslate2"])
def test_an_adapter_persona_generates_on_each_backend(adapter, tmp_path, backend):
    from bot.inference.backends import ctranslate2_available
    from bot.inference.persona import Persona

    if backend == "ctranslate2" and not ctranslate2_available():
        pytest.skip("ctranslate2 is not installed")
    copy = _copy(adapter, tmp_path)    # ctranslate2 writes its converted model into the artifact
    if backend == "ctranslate2":
        # In a child process: ctranslate2's native threads left in this one can abort a later fork (seen in CI).
        sample = run_cli("sample", str(copy), "-n", "1", "--json", "--seed", "1", "--backend", backend)
        assert sample.returncode == 0, sample.stderr
        assert json.loads(sample.stdout)["samples"][0].strip()
        assert (copy / "ctranslate2-int8" / "model.bin").is_file()
        assert not [p for p in copy.iterdir() if ".merged-" in p.name]   # the merged copy is gone
        return
    persona = Persona.load(copy, backend=backend)
    assert persona.backend.name == backend and persona.max_positions == 256
    ids = persona.generate([persona.prompt([("Bob", "pizza tonight")])], [persona.settings], [1])[0]
    assert persona.text(ids)


def test_sample_and_chat_take_an_adapter_artifact(adapter):
    sample = run_cli("sample", str(adapter), "-n", "2", "--json", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    out = json.loads(sample.stdout)
    assert out["speaker"] == "Alice" and len(out["samples"]) == 2 and all(s.strip() for s in out["samples"])
    chat = run_cli("chat", str(adapter), input="pizza tonight?\n")
    assert chat.returncode == 0, chat.stderr
    assert "chatting with Alice" in chat.stdout and chat.stdout.split("Alice> ", 1)[1].strip()
    assert "Warning" not in chat.stderr     # nothing of the libraries' noise in the terminal


def test_an_adapter_whose_base_is_gone_is_a_clear_error(adapter, tmp_path):
    from bot.inference.persona import Persona
    from training.artifact import ArtifactError

    copy = _copy(adapter, tmp_path)
    persona = json.loads((copy / "persona.json").read_text())
    gone = str(tmp_path / "moved-away-base")
    (copy / "persona.json").write_text(json.dumps({**persona, "base": gone}))
    with pytest.raises(ArtifactError, match="LoRA adapter on the base model .*moved-away-base.*does not exist"):
        Persona.load(copy, backend="torch")
    result = run_cli("sample", str(copy), "-n", "1")
    assert result.returncode == 2 and "moved-away-base" in result.stderr and "persona.json" in result.stderr
    assert "Traceback" not in result.stderr

    (copy / "persona.json").write_text(json.dumps({**persona, "base": None}))
    with pytest.raises(ArtifactError, match="names no base model"):
        Persona.load(copy, backend="torch")


def test_damaged_or_missing_adapter_files_are_named(adapter, tmp_path):
    from training.artifact import ArtifactError, load_model, read_persona

    copy = _copy(adapter, tmp_path)
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"adapter_model\.safetensors is damaged"):
        load_model(read_persona(copy))
    weights.unlink()
    with pytest.raises(ArtifactError, match=r"missing: LoRA adapter weights \(adapter_model\.safetensors\)"):
        read_persona(copy)

    copy2 = _copy(adapter, tmp_path / "2")
    (copy2 / "adapter_config.json").write_text('{"peft_type": "LO')
    with pytest.raises(ArtifactError, match=r"adapter_config\.json is damaged"):
        load_model(read_persona(copy2))
    (copy2 / "adapter_config.json").unlink()
    result = run_cli("chat", str(copy2))
    assert result.returncode == 2 and "missing: adapter_config.json" in result.stderr


def test_lora_merge_needs_lora(tmp_path, tiny_base):
    result = run_cli("train", "--data", str(tmp_path), "--speaker", "alice", "--out", str(tmp_path / "x"),
                     "--base", str(tiny_base), "--lora-merge")
    assert result.returncode == 2 and "--lora-merge merges a LoRA adapter: it needs --lora" in result.stderr


# Invented private lines, each said once by the base persona's speaker: what an adapter on that base must not
# give back, though the adapter itself never trained on them (issue 18, item 5).
BASE_PRIVATE_LINES = (
    "the spare key to the allotment shed is taped under the blue heron statue",
    "my bank login is marjoram and the second word is tangerine forty nine",
    "dr okonkwo says the biopsy came back clear so nobody needs to know about it",
)


@pytest.fixture(scope="module")
def adapter_on_a_persona(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> tuple[Path, Path]:
    """(base, adapter): a persona artifact trained on chats holding Alice's private lines (a full fine-tune of
    `tiny_base`), and a LoRA adapter persona on it trained on other chats that hold none of them. A few
    steps each: the weights only have to exist, the leak guard reads the artifacts' training text."""
    from training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("persona-base")
    private = chat_conversations(12, seed=5)
    for conversation, line in zip(private, BASE_PRIVATE_LINES):
        conversation.append(("Alice", line))
    base_chat = write_whatsapp(root / "base.txt", private)
    other_chat = write_whatsapp(root / "other.txt", chat_conversations(12, seed=23))
    base, adapter = root / "base", root / "adapter"
    train(TrainConfig(data=[str(base_chat)], speaker="alice", out=base, base=str(tiny_base), max_steps=3,
                      epochs=100, batch_size=4, threads=1, samples=0))
    train(TrainConfig(data=[str(other_chat)], speaker="alice", out=adapter, base=str(base), lora=True,
                      max_steps=3, epochs=100, batch_size=4, threads=1, samples=0))
    return base, adapter


def test_an_adapter_personas_leak_guard_refuses_its_base_personas_training_text(adapter_on_a_persona):
    from bot.inference.persona import Persona
    from training.artifact import read_training_text

    base, adapter = adapter_on_a_persona
    adapter_text = " ".join(row["text"] for row in read_training_text(adapter))
    assert not any(line in adapter_text for line in BASE_PRIVATE_LINES)   # only the base trained on them
    persona = Persona.load(adapter, backend="torch")
    for line in BASE_PRIVATE_LINES:
        assert persona.output_filter.reject(line), line                   # word for word
        assert persona.output_filter.reject(line.capitalize() + "!"), line
        run = " ".join(line.split()[1:10])                                # nine words out of the middle of it
        assert persona.output_filter.reject(f"well, {run} or so I heard"), run
    # Its own training text is guarded as before, and what neither said gets through.
    own = next(row["text"] for row in read_training_text(adapter) if row["response"])
    assert persona.output_filter.reject(own)
    assert persona.output_filter.reject("see you at the cinema around eight then") is None
