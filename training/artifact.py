"""The model artifact: a directory holding the model and tokenizer (`save_pretrained`), `persona.json`,
`loss.png` and the training-text index for the leak guard.

Two kinds: a full model, or a LoRA adapter (`lora.merged` false in persona.json) whose directory holds
peft's adapter files and the base's config.json in place of the weights, and whose persona.json names the
base (a hub id, or a local directory by its absolute path). `load_model` serves both: an adapter's base is
loaded through the one loading path of every base (`training.modelling.load_base`) and the adapter applied.

It is written into a temporary sibling and renamed into place, so a reader sees either the old artifact or
the new one, never half of one. `read_persona` checks that a directory is whole and says what is missing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training import transcript
from training.dataset import DatasetConfig
from training.fidelity import FidelityReport, at_most
from training.generation import GenerationSettings
from training.modelling import MODEL_BUILD_LOCK
from training.terminal_text import shown

ARTIFACT_VERSION = 1
PERSONA_FILE = "persona.json"
TRAINING_TEXT_FILE = "training_text.jsonl.gz"
HELD_OUT_FILE = "held_out.json"
# The most held-out real lines an artifact keeps for its blind quiz (a seeded sample beyond it): hundreds of
# rounds' worth, a few tens of kilobytes.
HELD_OUT_KEPT = 500
LOSS_PLOT = "loss.png"

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_REQUIRED_KEYS = ("personabot_artifact", "prompt_format", "speaker", "generation", "metrics")


class ArtifactError(Exception):
    """A directory that is not a whole, loadable persona artifact."""


def _known(cls, data: Any) -> dict[str, Any]:
    """The entries of a persona.json object that are fields of `cls` (an older file lacks some: defaults)."""
    if not isinstance(data, dict):
        return {}
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class _Record:
    """A part of persona.json: written as its fields, read back from whichever of them a file has."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Any:
        return cls(**_known(cls, data))


@dataclass(frozen=True, slots=True)
class LossFigures(_Record):
    """Validation loss of one model on the held-out responses (None when an older file does not say)."""

    val_loss: float | None = None
    val_perplexity: float | None = None
    val_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """The base model's and the trained model's validation figures, and the step of the kept weights."""

    base: LossFigures = field(default_factory=LossFigures)
    trained: LossFigures = field(default_factory=LossFigures)
    best_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.to_json(), "trained": self.trained.to_json(), "best_step": self.best_step}

    @classmethod
    def from_json(cls, data: Any) -> "Metrics":
        data = data if isinstance(data, dict) else {}
        return cls(LossFigures.from_json(data.get("base")), LossFigures.from_json(data.get("trained")),
                   data.get("best_step"))


@dataclass(frozen=True, slots=True)
class LoraInfo(_Record):
    """The LoRA adapter a run trained: merged into the saved weights, or saved as an adapter on the base
    (`merged` False). Artifacts written before adapters were kept always merged: a missing `merged` is True."""

    r: int
    alpha: int
    merged: bool = True


@dataclass(frozen=True, slots=True)
class DataSummary(_Record):
    """What the persona learnt from: the inputs as each was read (`FileReport.to_json`) and the counts."""

    fingerprint: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    conversations: int | None = None
    messages: int | None = None
    speaker_messages: int | None = None
    train: dict[str, Any] = field(default_factory=dict)    # the dataset's split statistics
    val: dict[str, Any] = field(default_factory=dict)
    training_text_entries: int | None = None


@dataclass(frozen=True, slots=True)
class TrainingSummary(_Record):
    """How the run went and the settings it ran with."""

    steps: int | None = None
    planned_steps: int | None = None
    stopped: str | None = None
    best_step: int | None = None
    epochs: float | None = None
    max_steps: int | None = None
    time_budget_s: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    warmup: float | None = None
    weight_decay: float | None = None
    clip: float | None = None
    patience: int | None = None
    seed: int | None = None
    context_loss_weight: float | None = None
    device: str | None = None
    precision: str | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class PersonaInfo:
    """persona.json, typed: the one writer (`write`, `to_json`) and reader (`read_persona`) of every field.

    Fields an older artifact lacks read as None or empty; `speaker`, `generation` and `metrics` are required."""

    path: Path
    speaker: str
    generation: GenerationSettings
    metrics: Metrics
    speaker_names: list[str] = field(default_factory=list)
    speaker_ids: list[str] = field(default_factory=list)
    base: str | None = None               # the pretrained base; None from scratch
    from_scratch: str | None = None       # the from-scratch preset
    base_label: str | None = None
    lora: LoraInfo | None = None
    corpus_kind: str | None = None
    created_at: str | None = None
    sources: DataSummary = field(default_factory=DataSummary)        # persona.json's "data"
    dataset: DatasetConfig | None = None  # how examples were cut; None in an older file
    training: TrainingSummary = field(default_factory=TrainingSummary)
    history: dict[str, list] = field(default_factory=dict)          # {"train": [[step, loss]], "val": ...}
    samples: list[str] = field(default_factory=list)
    fidelity: FidelityReport | None = None   # how much its lines sound like the speaker's; None in older files

    @property
    def is_adapter(self) -> bool:
        """A LoRA adapter on `base` rather than a whole model."""
        return self.lora is not None and not self.lora.merged

    @property
    def trained_val_loss(self) -> float | None:
        return self.metrics.trained.val_loss

    @property
    def base_val_loss(self) -> float | None:
        return self.metrics.base.val_loss

    def to_json(self) -> dict[str, Any]:
        """persona.json's content, keys in the order written since version 1."""
        return {
            "personabot_artifact": ARTIFACT_VERSION, "prompt_format": transcript.FORMAT_VERSION,
            "speaker": self.speaker, "speaker_names": list(self.speaker_names), "speaker_ids": list(self.speaker_ids),
            "base": self.base, "from_scratch": self.from_scratch, "base_label": self.base_label,
            "lora": self.lora.to_json() if self.lora else None, "corpus_kind": self.corpus_kind,
            "created_at": self.created_at, "data": self.sources.to_json(),
            "dataset": self.dataset.to_json() if self.dataset else None, "training": self.training.to_json(),
            "metrics": self.metrics.to_json(), "history": self.history, "generation": self.generation.to_json(),
            "samples": list(self.samples), "fidelity": self.fidelity.to_json() if self.fidelity else None,
        }

    def write(self, directory: Path) -> None:
        """Write persona.json into `directory` (an artifact being built)."""
        (directory / PERSONA_FILE).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")

    @classmethod
    def from_json(cls, path: Path, data: dict[str, Any]) -> "PersonaInfo":
        """The typed form of a persona.json object already checked by `read_persona`."""
        lora = data.get("lora")
        dataset = data.get("dataset")
        return cls(
            path=path, speaker=str(data["speaker"]), generation=GenerationSettings.from_json(data["generation"]),
            metrics=Metrics.from_json(data["metrics"]), speaker_names=list(data.get("speaker_names") or []),
            speaker_ids=list(data.get("speaker_ids") or []), base=data.get("base"),
            from_scratch=data.get("from_scratch"), base_label=data.get("base_label"),
            lora=LoraInfo.from_json(lora) if isinstance(lora, dict) else None,
            corpus_kind=data.get("corpus_kind"), created_at=data.get("created_at"),
            sources=DataSummary.from_json(data.get("data")),
            dataset=DatasetConfig(**_known(DatasetConfig, dataset)) if isinstance(dataset, dict) else None,
            training=TrainingSummary.from_json(data.get("training")),
            history=data.get("history") if isinstance(data.get("history"), dict) else {},
            samples=list(data.get("samples") or []), fidelity=FidelityReport.from_json(data.get("fidelity")))


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
    if _says_adapter(path):
        if not (path / ADAPTER_CONFIG).is_file():
            missing.append(f"{ADAPTER_CONFIG} (the LoRA adapter's configuration)")
        if not any((path / name).is_file() for name in _ADAPTER_WEIGHT_FILES):
            missing.append("LoRA adapter weights (adapter_model.safetensors)")
    elif not any((path / name).is_file() for name in _WEIGHT_FILES):
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
    for key in ("generation", "metrics"):
        if not isinstance(data[key], dict):
            raise ArtifactError(f"{path / PERSONA_FILE}: \"{key}\" must be an object; train the persona again")
    try:
        info = PersonaInfo.from_json(path, data)
    except (TypeError, ValueError) as e:    # a field of the wrong shape (a list where an object belongs)
        raise ArtifactError(f"{path / PERSONA_FILE} is damaged ({e}); train the persona again") from e
    problems = info.generation.check()
    if problems:
        raise ArtifactError(f"{path / PERSONA_FILE}: bad generation defaults: {'; '.join(problems)}")
    if info.is_adapter and not info.base:
        raise ArtifactError(f"{path / PERSONA_FILE} describes a LoRA adapter but names no base model "
                            "(\"base\"); train the persona again")
    return info


def _says_adapter(path: Path) -> bool:
    """Whether persona.json, if it reads at all, describes a LoRA adapter (its damage is reported later)."""
    try:
        lora = json.loads((path / PERSONA_FILE).read_text(encoding="utf-8")).get("lora")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False
    return isinstance(lora, dict) and lora.get("merged") is False


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


def load_model(info: PersonaInfo, *, merge: bool = True):
    """The artifact's (model, tokenizer), in evaluation mode; a load failure is an `ArtifactError`.

    An adapter artifact loads its base and applies the adapter: merged into the base's weights in memory
    (`merge`, the fastest to run alone; the artifact on disk stays an adapter), or as a peft model that keeps
    the adapter apart (`merge=False`, for serving several adapters on one base)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights(info.path)
    weights = info.path / ("adapter_model.safetensors" if info.is_adapter else "model.safetensors")
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        with MODEL_BUILD_LOCK:   # one model built at a time in a process (see training.modelling)
            model = _load_adapter(info, merge) if info.is_adapter else AutoModelForCausalLM.from_pretrained(info.path)
    except SafetensorError as e:   # damage the header check cannot see (a shard named by an index)
        raise damaged_model_error(weights, e) from e
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load the model in {info.path}: {e}") from e
    model.eval()
    return model, tokenizer


def _load_adapter(info: PersonaInfo, merge: bool):
    """The base named in persona.json with the artifact's LoRA adapter applied (see `load_model`)."""
    from peft import PeftModel

    from training.errors import TrainingError
    from training.modelling import first_line, load_base

    config_path = info.path / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"the LoRA adapter configuration {config_path} is damaged ({e}); train the persona "
                            "again or restore the artifact from a copy") from e
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ArtifactError(f"the LoRA adapter configuration {config_path} is damaged (not a peft adapter "
                            "configuration); train the persona again or restore the artifact from a copy")
    try:
        base, _ = load_base(str(info.base))
    except TrainingError as e:
        raise ArtifactError(f"{info.path} is a LoRA adapter on the base model {info.base!r} (named in "
                            f"{info.path / PERSONA_FILE}), which cannot be loaded: {first_line(e)}. Put the base "
                            "back where it was, or train the persona again on a base that is here") from e
    try:
        with warnings.catch_warnings():   # peft asks transformers 5 a question it deprecated: not the user's concern
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            model = PeftModel.from_pretrained(base, str(info.path))
    except RuntimeError as e:    # weights of another shape: an adapter trained on another base
        raise ArtifactError(f"the LoRA adapter in {info.path} does not fit its base {info.base!r} "
                            f"({first_line(e)}); train the persona again on this base") from e
    return model.merge_and_unload() if merge else model


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


def write_held_out(directory: Path, lines: Sequence[str], seed: int) -> int:
    """The persona's real lines that training held out (the validation split's, never trained on), kept for
    its blind quiz (`personabot quiz`, `/persona quiz`): at most `HELD_OUT_KEPT`, a seeded sample. Whoever
    shows them applies the privacy rules of the day (who opted out, the blocklist) when showing them, since
    those change after training. Returns how many were kept."""
    kept = at_most(list(lines), seed, HELD_OUT_KEPT)
    (directory / HELD_OUT_FILE).write_text(json.dumps({"lines": kept}, ensure_ascii=False), encoding="utf-8")
    return len(kept)


def read_held_out(directory: str | Path) -> list[str] | None:
    """The lines `write_held_out` kept; None for an artifact trained before quizzes (no file). Raises
    `ArtifactError` for a damaged file."""
    path = Path(directory) / HELD_OUT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"the quiz lines {path} cannot be read ({e}); train the persona again or restore "
                            "the artifact from a copy") from e
    lines = data.get("lines") if isinstance(data, dict) else None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ArtifactError(f"the quiz lines {path} are not a list of lines; train the persona again or restore "
                            "the artifact from a copy")
    return lines


def read_training_text(directory: str | Path) -> list[dict[str, Any]]:
    """The index written by `write_training_text`: [{"text": ..., "response": bool}, ...]."""
    return list(_training_text_rows(directory))


def _training_text_rows(directory: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of the index, read a line at a time."""
    with gzip.open(Path(directory) / TRAINING_TEXT_FILE, "rt", encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def shaping_artifacts(directory: str | Path) -> list[Path]:
    """The artifacts whose training text is in this one's weights, nearest first: the artifact itself, then
    its base when that base is a persona artifact directory (an adapter's base, or the model a fine-tune
    started from), then that one's base, and so on. A hub id, a plain model directory or a base that is not
    here ends the chain: none has training text of ours (an adapter whose base is gone fails to load, and says
    so). A chain that comes back to an artifact already in it ends there."""
    chain = [Path(directory)]
    seen = {chain[0].resolve()}
    while (base := _persona_base(chain[-1])) is not None and base.resolve() not in seen:
        if not (base / TRAINING_TEXT_FILE).is_file():
            raise ArtifactError(f"{base}, the base of the persona {chain[-1]}, is a persona artifact without its "
                                f"{TRAINING_TEXT_FILE}: the leak guard cannot keep the text it was trained on out "
                                "of replies. Restore that artifact whole, or train the persona again")
        seen.add(base.resolve())
        chain.append(base)
    return chain


def _persona_base(directory: Path) -> Path | None:
    """The base `directory`'s persona.json names, when that base is a persona artifact directory. A relative
    base is found from the working directory, as `training.modelling.load_base` finds it."""
    persona = directory / PERSONA_FILE
    if not persona.is_file():    # a bare training-text index (a benchmark's): nothing is below it
        return None
    try:
        data = json.loads(persona.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{persona} is damaged ({e}); train the persona again") from e
    base = data.get("base") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        return None
    path = Path(base).expanduser()
    return path if (path / PERSONA_FILE).is_file() else None


def read_shaping_text(directories: Sequence[Path]) -> Iterator[tuple[str, bool]]:
    """(text, is_response) for every text in the training-text indexes of `directories` (`shaping_artifacts`),
    each text once: a response when any of them trained on it as one. A damaged index is an `ArtifactError`
    that names it."""
    if len(directories) == 1:   # one index: its writer kept each text once already
        yield from _index_rows(directories[0], None)
        return
    # Responses first, then context, index after index: two passes over the files instead of every text held
    # at once. A text given already is known by its 64-bit hash (two texts share one with odds of about
    # n**2 / 2**65: one in ten million for a million texts).
    given: set[int] = set()
    for responses in (True, False):
        for directory in directories:
            for text, is_response in _index_rows(directory, responses):
                if (key := hash(text)) not in given:
                    given.add(key)
                    yield text, is_response


def _index_rows(directory: Path, responses: bool | None) -> Iterator[tuple[str, bool]]:
    """(text, is_response) of one index: all of it, or only its responses (True) or its context (False)."""
    try:
        for row in _training_text_rows(directory):
            is_response = bool(row.get("response"))
            if responses is None or is_response is responses:
                yield str(row["text"]), is_response
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"the training-text index {Path(directory) / TRAINING_TEXT_FILE} is damaged ({e}); "
                            "train the persona again or restore the artifact from a copy") from e


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
