"""Generation backends behind one seam: token ids in, reply ids out, each row with its own settings.

- `torch`: the artifact's model as trained, float32 on CPU (the reference) or on a GPU when there is one.
- `torch-int8`: the same model with its linear layers quantised to int8 on the fly (dynamic quantisation,
  `training.modelling.quantize_int8`).
- `ctranslate2`: CTranslate2 int8, an optional extra (`pip install personabot[fast]`); the artifact is
  converted once into a `ctranslate2-int8/` folder beside the model (a LoRA adapter merged into its base
  first: that folder is then a whole int8 model, about a quarter of the base's size).

A LoRA adapter artifact runs on every local backend: `training.artifact.load_model` loads its base and
merges the adapter in memory for `torch` and `torch-int8`. `openai` asks the inference server for its LoRA
module of the adapter (vLLM `--enable-lora --lora-modules NAME=DIR`, found by the adapter's directory; see
`bot.remote`).

- `openai`: an OpenAI-compatible inference server (vLLM, TGI, llama.cpp, `transformers serve`) serving the
  artifact's directory; see `bot.remote`.

`auto` picks the fastest available for the device: a GPU runs `torch`; a CPU runs `torch-int8`
(bench/reply_latency.py measures all of them against plain `transformers` generate).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from bot.config import BACKENDS
from training import transcript
from training.artifact import ArtifactError, PersonaInfo, load_model
from training.generation import GenerationSettings, cut_reply, decode
from training.modelling import quantize_int8

if TYPE_CHECKING:
    from bot.remote import RemoteConfig

CT2_DIR = "ctranslate2-int8"


class BackendError(ArtifactError):
    """An artifact that cannot run on the chosen backend here (missing extra, failed conversion)."""


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Sequence[int]], settings: Sequence[GenerationSettings],
                 seeds: Sequence[int | None], cancelled: Callable[[int], bool] | None = None) -> list[list[int]]:
        """One reply (token ids, cut at the end of the persona's turn) per prompt."""
        ...


class TorchBackend:
    """Our decode loop (`training.generation.decode`) over a torch model."""

    def __init__(self, name: str, model, tokenizer) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer

    def generate(self, prompts, settings, seeds, cancelled=None) -> list[list[int]]:
        return decode(self.model, self.tokenizer, prompts, settings, seeds=seeds, cancelled=cancelled)


class CTranslate2Backend:
    """CTranslate2 int8. One call per distinct settings in a batch (its sampling options are per call)."""

    name = "ctranslate2"

    def __init__(self, info: PersonaInfo, tokenizer, threads: int, model=None) -> None:
        try:
            import ctranslate2
        except ImportError as e:
            raise BackendError("the ctranslate2 backend needs the optional extra: "
                               "pip install 'personabot[fast]'") from e
        self._ct2 = ctranslate2
        self.tokenizer = tokenizer
        path = convert_ctranslate2(info, model)
        self.generator = ctranslate2.Generator(str(path), device="cpu", compute_type="int8",
                                               intra_threads=threads)
        self._lock = threading.Lock()   # the random seed is global to ctranslate2

    def generate(self, prompts, settings, seeds, cancelled=None) -> list[list[int]]:
        eos = transcript.end_marker_id(self.tokenizer)
        out: list[list[int]] = [[] for _ in prompts]
        groups: dict[GenerationSettings, list[int]] = {}
        for i, s in enumerate(settings):
            groups.setdefault(s, []).append(i)
        for s, rows in groups.items():
            tokens = [self.tokenizer.convert_ids_to_tokens(list(prompts[i]) or [eos]) for i in rows]
            generated: list[list[int]] = [[] for _ in rows]

            def step(result, rows=rows, generated=generated) -> bool:
                generated[result.batch_id].append(result.token_id)
                row = rows[result.batch_id]
                text = self.tokenizer.decode(generated[result.batch_id])
                return (transcript.find_new_turn(text) is not None
                        or (cancelled is not None and cancelled(row)))

            seed = next((seeds[i] for i in rows if seeds[i] is not None), None)
            with self._lock:
                if seed is not None:
                    self._ct2.set_random_seed(int(seed))
                results = self.generator.generate_batch(
                    tokens, max_length=s.max_new_tokens, sampling_topk=s.top_k or 0, sampling_topp=s.top_p,
                    sampling_temperature=s.temperature, repetition_penalty=s.repetition_penalty,
                    no_repeat_ngram_size=s.no_repeat_ngram_size, end_token=[eos], include_prompt_in_result=False,
                    callback=step)
            for k, (i, result) in enumerate(zip(rows, results)):
                ids = result.sequences_ids[0] if result.sequences_ids else generated[k]
                out[i] = cut_reply(ids, self.tokenizer)[0]
        return out


def convert_ctranslate2(info: PersonaInfo, model=None) -> Path:
    """The artifact converted to CTranslate2 int8 (done once; written aside and renamed into place).

    The converter reads whole models only: an adapter artifact is merged into its base first (`model`, the
    merged model when the caller has it loaded already)."""
    target = info.path / CT2_DIR
    if (target / "model.bin").is_file():
        return target
    from ctranslate2.converters import TransformersConverter

    staged = info.path / f".{CT2_DIR}.tmp-{os.getpid()}"
    merged = info.path / f".{CT2_DIR}.merged-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        source = info.path
        if info.is_adapter:
            _save_merged(info, merged, model)
            source = merged
        TransformersConverter(str(source)).convert(str(staged), quantization="int8", force=True)
        # CTranslate2 wants every special token named; ours only has the end marker.
        import json

        config_path = staged / "config.json"
        config = json.loads(config_path.read_text())
        for key in ("bos_token", "unk_token", "eos_token"):
            config[key] = config.get(key) or config.get("eos_token")
        config_path.write_text(json.dumps(config))
        if target.exists():  # another process converted it meanwhile
            shutil.rmtree(staged)
        else:
            os.replace(staged, target)
    except Exception as e:  # the converter raises many kinds; each is a conversion failure to us
        shutil.rmtree(staged, ignore_errors=True)
        raise BackendError(f"cannot convert {info.path} for ctranslate2: {e}") from e
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return target


def _save_merged(info: PersonaInfo, where: Path, model=None) -> None:
    """An adapter artifact's base with the adapter merged in, saved as a whole model (for the converter)."""
    from transformers import AutoTokenizer

    if model is None:
        model, _ = load_model(info)
    model.save_pretrained(where)
    AutoTokenizer.from_pretrained(info.path).save_pretrained(where)


def ctranslate2_available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(name: str) -> str:
    """The concrete backend `name` stands for on this machine."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    return "torch" if torch.cuda.is_available() else "torch-int8"


def _load_remote(info: PersonaInfo, remote: RemoteConfig | None):
    from transformers import AutoTokenizer

    from bot.remote import RemoteBackend, RemoteConnection

    if remote is None:
        raise BackendError("BACKEND=openai needs INFERENCE_URL, the inference server serving the persona")
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot load the tokenizer of {info.path}: {e}") from e
    # The artifact tells an adapter (served as the server's LoRA module for it) from a whole model. Every
    # persona on one server shares one connection: one bound on requests in flight, one circuit breaker.
    return RemoteBackend.connect(remote, tokenizer, info=info, connection=RemoteConnection.shared(remote)), tokenizer


def generation_threads(requested: int | None = None) -> int:
    """CPU threads for generation: what was asked, else half the cores (at least one).

    Not all of them, on purpose: generating one reply is bound by memory bandwidth more than by arithmetic,
    and a thread team that spans every core collapses when another busy process takes one of them (each
    step waits for the thread that is not running). On 2 cores, GPT-2 small int8, 40 tokens: 2 threads 0.66 s
    and 1 thread 0.76 s on a quiet machine; next to one busy process 2 threads take 1.98 s, 1 thread 0.70 s.
    """
    from training.modelling import cpu_threads

    return requested if requested else max(1, cpu_threads(None) // 2)


def load_backend(info: PersonaInfo, name: str = "auto", *, threads: int | None = None,
                 remote: RemoteConfig | None = None):
    """(backend, tokenizer) for an artifact. Loading failures are `ArtifactError`s, unusable backends
    `BackendError`s. `openai` needs `remote`, a `bot.remote.RemoteConfig`; it loads the tokenizer only (the
    weights stay with the inference server) and checks the server at once."""
    name = resolve(name)
    if name == "openai":
        return _load_remote(info, remote)
    model, tokenizer = load_model(info)
    if name == "torch":
        if torch.cuda.is_available():
            model.to("cuda")
        return TorchBackend(name, model, tokenizer), tokenizer
    if name == "torch-int8":
        try:
            model = quantize_int8(model)
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"cannot quantise {info.path} to int8: {e}") from e
        return TorchBackend(name, model, tokenizer), tokenizer
    if name == "ctranslate2":
        merged = model if info.is_adapter else None   # what the converter needs of an adapter artifact
        del model
        return CTranslate2Backend(info, tokenizer, generation_threads(threads), merged), tokenizer
    raise AssertionError(name)


__all__ = ["ArtifactError", "Backend", "BackendError", "BACKENDS", "TorchBackend", "CTranslate2Backend",
           "load_backend", "quantize_int8", "resolve", "ctranslate2_available"]
