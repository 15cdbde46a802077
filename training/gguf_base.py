"""A base model shipped as a GGUF file (llama.cpp's format: how some packages carry a small model), converted once
into an ordinary saved model directory (model and tokenizer, `save_pretrained`).

From then on that directory is a base like any other: it loads through `training.modelling.load_base`, an
adapter records it by its absolute path, and a retrain (`--lora --base=DIR`) finds it there again."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import time
from pathlib import Path

from training import artifact
from training.errors import TrainingError
from training.modelling import MODEL_BUILD_LOCK, first_line
from training.progress import Progress


def is_converted(out: Path) -> bool:
    """Whether `out` holds a finished conversion. Only a complete one is ever renamed into place, so its
    config file is enough to tell."""
    return (out / "config.json").is_file()


def convert_gguf(gguf_file: Path, out: Path, progress: Progress | None = None) -> Path:
    """Convert `gguf_file` into a saved model directory at `out` (returned as an absolute path); an `out`
    converted before is reused as it is.

    The weights are dequantised to float32: the trainer, LoRA and every backend take a plain model. The
    directory is written as a temporary sibling and renamed into place, so a conversion that is interrupted
    or fails leaves no half base behind. Raises `TrainingError` (what and where) when it cannot be done."""
    out = Path(out).expanduser().absolute()
    if is_converted(out):
        return out
    if out.exists():
        raise TrainingError(f"{out} is in the way of the base model converted from {gguf_file.name}: it is not a "
                            "saved model; move it away (or delete it), then start again")
    if importlib.util.find_spec("gguf") is None:   # transformers reads the file with it
        raise TrainingError(f"reading {gguf_file} needs the `gguf` package; run scripts/bootstrap.sh, or: "
                            "pip install gguf")
    progress = progress or Progress("none")
    started = time.monotonic()
    staged: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = artifact.staging_dir(out)
        progress.phase("converting the base model", f"{gguf_file.name} into {out} (once, about half a minute)")
        _convert(gguf_file, staged)
        artifact.commit(staged, out)
    except BaseException as e:   # Ctrl-C and SIGTERM included: nothing half-written stays
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        # A full disk is an OSError; a damaged file is whatever the reader trips on (a cut-off one: struct.error).
        if isinstance(e, Exception):
            raise TrainingError(f"cannot convert the base model {gguf_file} into {out}: {first_line(e)}\n"
                                "  hint: if the disk is full, make room; if the file is damaged, reinstall the "
                                "package that ships it") from e
        raise
    progress.phase("base model converted", f"{out} ({time.monotonic() - started:.0f} s)")
    return out


def _convert(gguf_file: Path, into: Path) -> None:
    """Load the GGUF file's tokenizer and model, dequantised, and save both into `into`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    # transformers draws a bar of its own while it unpacks the tensors (plain tqdm, which its quiet setting
    # does not reach); the caller's progress line says what is happening instead.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with MODEL_BUILD_LOCK:
            # Dequantised at load (`dequantize=True`): the model is then a plain one that `save_pretrained`
            # writes, where a model kept in GGUF blocks cannot be saved.
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32,
                quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    model.save_pretrained(into)
    tokenizer.save_pretrained(into)
