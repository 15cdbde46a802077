"""The model artifact: a directory holding the model and tokenizer (`save_pretrained`), `persona.json`,
`loss.png` and the training-text index for the leak guard.

It is written into a temporary sibling and renamed into place, so a reader sees either the old artifact or
the new one, never half of one. `read_persona` checks that a directory is whole and says what is missing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import transcript
from training.generation import GenerationSettings
from training.terminal_text import shown

ARTIFACT_VERSION = 1
PERSONA_FILE = "persona.json"
TRAINING_TEXT_FILE = "training_text.jsonl.gz"
LOSS_PLOT = "loss.png"

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_REQUIRED_KEYS = ("personabot_artifact", "prompt_format", "speaker", "generation", "metrics")


class ArtifactError(Exception):
    """A directory that is not a whole, loadable persona artifact."""


@dataclass(frozen=True, slots=True)
class PersonaInfo:
    """What persona.json says, checked."""

    path: Path
    speaker: str
    generation: GenerationSettings
    data: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data.get("metrics", {})


def read_persona(directory: str | Path) -> PersonaInfo:
    """Validate an artifact directory and read its persona.json; `ArtifactError` names what is wrong."""
    path = Path(directory)
    if not path.exists():
        raise ArtifactError(f"no persona artifact at {path}: the directory does not exist")
    if not path.is_dir():
        raise ArtifactError(f"{path} is a file, not a persona artifact directory")
    missing = []
    if not (path / PERSONA_FILE).is_file():
        missing.append(PERSONA_FILE)
    if not (path / "config.json").is_file():
        missing.append("config.json (model configuration)")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        missing.append("model weights (model.safetensors)")
    if not ((path / "tokenizer.json").is_file() or
            ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())):
        missing.append("tokenizer (tokenizer.json)")
    if not (path / TRAINING_TEXT_FILE).is_file():
        missing.append(f"{TRAINING_TEXT_FILE} (training-text index for the leak guard)")
    if missing:
        raise ArtifactError(f"{path} is not a whole persona artifact; missing: {', '.join(missing)}. "
                            "Train it again (personabot train ... --out DIR).")
    try:
        data = json.loads((path / PERSONA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path / PERSONA_FILE} is damaged ({e}); train the persona again") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{path / PERSONA_FILE} is damaged (not a JSON object); train the persona again")
    absent = [k for k in _REQUIRED_KEYS if k not in data]
    if absent:
        raise ArtifactError(f"{path / PERSONA_FILE} lacks {', '.join(absent)}; train the persona again")
    if data["personabot_artifact"] != ARTIFACT_VERSION:
        raise ArtifactError(f"{path} is a version {data['personabot_artifact']} artifact; this personabot reads "
                            f"version {ARTIFACT_VERSION}. Train it again with this version.")
    if data["prompt_format"] != transcript.FORMAT_VERSION:
        raise ArtifactError(f"{path} was trained with prompt format {data['prompt_format']}; this personabot "
                            f"uses format {transcript.FORMAT_VERSION}. Train it again with this version.")
    if not isinstance(data["generation"], dict):
        raise ArtifactError(f"{path / PERSONA_FILE}: \"generation\" must be an object")
    generation = GenerationSettings.from_json(data["generation"])
    problems = generation.check()
    if problems:
        raise ArtifactError(f"{path / PERSONA_FILE}: bad generation defaults: {'; '.join(problems)}")
    return PersonaInfo(path, str(data["speaker"]), generation, data)


def damaged_model_error(path: Path, problem: object) -> ArtifactError:
    """The one message for a model file that cannot be read: which file, and what to do about it."""
    return ArtifactError(f"the model file {path} is damaged ({problem}); train the persona again "
                         f"(personabot train ... --out {path.parent}) or restore the artifact from a copy")


def check_weights(directory: Path) -> None:
    """Open the header of every safetensors weight file: a truncated or overwritten file fails here, named,
    instead of deep inside transformers with a traceback."""
    from safetensors import SafetensorError, safe_open

    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise damaged_model_error(weights, e) from e


def load_model(info: PersonaInfo):
    """The artifact's (model, tokenizer), in evaluation mode; a load failure is an `ArtifactError`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights(info.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        model = AutoModelForCausalLM.from_pretrained(info.path)
    except SafetensorError as e:   # damage the header check cannot see (a shard named by an index)
        raise damaged_model_error(info.path / "model.safetensors", e) from e
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load the model in {info.path}: {e}") from e
    model.eval()
    return model, tokenizer


def write_training_text(directory: Path, responses: Iterable[str], context: Iterable[str]) -> int:
    """The leak guard's index: every distinct text the model was trained on (responses and context)."""
    seen: set[str] = set()
    count = 0
    with gzip.open(directory / TRAINING_TEXT_FILE, "wt", encoding="utf-8") as f:
        for is_response, texts in ((True, responses), (False, context)):
            for text in texts:
                if text in seen:
                    continue
                seen.add(text)
                f.write(json.dumps({"text": text, "response": is_response}, ensure_ascii=False) + "\n")
                count += 1
    return count


def read_training_text(directory: str | Path) -> list[dict[str, Any]]:
    """The index written by `write_training_text`: [{"text": ..., "response": bool}, ...]."""
    with gzip.open(Path(directory) / TRAINING_TEXT_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_persona_json(directory: Path, data: dict[str, Any]) -> None:
    data = {"personabot_artifact": ARTIFACT_VERSION, "prompt_format": transcript.FORMAT_VERSION, **data}
    (directory / PERSONA_FILE).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def staging_dir(out: Path) -> Path:
    """A fresh temporary sibling of `out` to build the artifact in (same filesystem, so rename is atomic)."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir(parents=True)
    return tmp


def commit(staged: Path, out: Path) -> None:
    """Move a finished artifact into place. An existing artifact at `out` is replaced as a whole."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
        os.rename(out, old)
        try:
            os.rename(staged, out)
        except OSError:
            os.rename(old, out)  # put the previous one back: never leave `out` empty
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, out)


def plot_losses(path: Path, train: list[tuple[int, float]], val: list[tuple[int, float]], title: str) -> None:
    """loss.png: training loss per step and validation loss per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="training", linewidth=1, alpha=0.8)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], label="validation", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss on responses")
    ax.set_title(shown(title))   # a speaker's name may hold control characters: no font draws them
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
