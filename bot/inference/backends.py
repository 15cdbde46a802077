"""Generation backends behind one seam: token ids in, reply ids out, each row with its own settings.

- `torch`: the artifact's model as trained, float32 on CPU (the reference) or on a GPU when there is one.
- `torch-int8`: the same model with its linear layers quantised to int8 on the fly (dynamic quantisation,
  `training.modelling.quantize_int8`).
- `ctranslate2`: CTranslate2 int8, an optional extra (`pip install personabot[fast]`); the artifact is
  converted once into a `ctranslate2-int8/` folder beside the model (a LoRA adapter merged into its base
  first: that folder is then a whole int8 model, about a quarter of the base's size).

A LoRA adapter artifact runs on every local backend: `training.artifact.load_model` loads its base and
merges the adapter in memory for `torch` and `torch-int8`. Several adapter personas on one base share it
instead (`SharedBases`, used by the engine's `bot.inference.persona_pool.PersonaPool`): the base is loaded once and
each adapter added beside the others, a few megabytes each; their rows run in one batch, each through its
own adapter (peft's mixed-adapter batches). `openai` asks the inference server for its LoRA module of the
adapter (vLLM `--enable-lora --lora-modules NAME=DIR`, found by the adapter's directory; see `bot.inference.remote`).

- `openai`: an OpenAI-compatible inference server (vLLM, TGI, llama.cpp, `transformers serve`) serving the
  artifact's directory; see `bot.inference.remote`.

`auto` picks the fastest available for the device: a GPU runs `torch`; a CPU runs `torch-int8`
(bench/reply_latency.py measures all of them against plain `transformers` generate).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from bot.core.config import BACKENDS
from bot.inference.backend import Backend, BackendError
from bot.inference.remote import RemoteBackend, RemoteConfig, RemoteConnection
from training import transcript
from training.artifact import ArtifactError, PersonaInfo, check_weights, load_model, read_persona
from training.errors import TrainingError
from training.generation import GenerationSettings, cut_reply, decode
from training.modelling import conv1d_to_linear, cpu_threads, first_line, fuse_gelu, load_base, quantize_int8

CT2_DIR = "ctranslate2-int8"


def model_bytes(model) -> int:
    """Bytes of a model's weights as loaded (tied tensors counted once; int8-packed layers at their packed
    size): what the engine's memory budget counts."""
    seen: set[int] = set()
    total = 0

    def count(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.is_quantized:
                value = value.int_repr()   # the stored int8 bytes (int_repr copies; the count is the same)
                total += value.numel() * value.element_size()
                return
            if value.data_ptr() in seen:
                return
            seen.add(value.data_ptr())
            total += value.numel() * value.element_size()
        elif isinstance(value, (tuple, list)):
            for item in value:
                count(item)

    for value in model.state_dict(keep_vars=True).values():
        count(value)
    return total


class TorchBackend:
    """Our decode loop (`training.generation.decode`) over a torch model."""

    def __init__(self, name: str, model, tokenizer) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.memory_bytes = model_bytes(model)

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
        self.memory_bytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
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


class SharedBase:
    """One base model serving many LoRA adapters, each added under its own name beside the others.

    Rows of different adapters run in one batch: peft's mixed-adapter batches send each row through its own
    adapter in one forward pass. On `torch-int8` every layer of the base is int8, the adapters' own float.
    Adding and removing an adapter waits for the batch running on the base (`lock`)."""

    def __init__(self, base: str, backend: str, model, tokenizer) -> None:
        self.base = base
        self.name = backend
        self.model = model              # a peft model once the first adapter is added
        self.tokenizer = tokenizer
        self.lock = threading.Lock()
        self.adapters: dict[str, Path] = {}    # adapter name -> artifact directory
        self._serial = 0
        self.base_bytes = model_bytes(model)

    @classmethod
    def load(cls, base: str, backend: str) -> "SharedBase":
        """The base named by adapter artifacts (`training.modelling.load_base`: a hub id or a directory)."""

        try:
            model, tokenizer = load_base(base)
        except TrainingError as e:
            raise ArtifactError(f"cannot load the base model {base!r} that LoRA personas name: {first_line(e)}") from e
        model.eval()
        if backend == "torch-int8":
            conv1d_to_linear(model)     # the int8 layers are nn.Linear; the adapters then wrap Linear layers
            fuse_gelu(model)
        elif torch.cuda.is_available():
            model.to("cuda")
        return cls(base, backend, model, tokenizer)

    def add(self, info: PersonaInfo) -> tuple[str, int]:
        """Add the adapter of `info` (an adapter artifact on this base): (its name here, its bytes)."""
        from peft import LoraConfig, PeftModel, get_peft_model
        from peft.utils import load_peft_weights


        check_weights(info.path)
        try:
            config = LoraConfig.from_pretrained(str(info.path))
            weights = load_peft_weights(str(info.path), device="cpu")
        except (OSError, ValueError, TypeError) as e:
            raise ArtifactError(f"cannot read the LoRA adapter in {info.path}: {e}") from e
        # GPT-2's Conv1D layers store their weights transposed; on int8 they were made Linear (see `load`).
        config.fan_in_fan_out = self.name != "torch-int8" and _has_conv1d(self.model)
        with self.lock, warnings.catch_warnings():
            # peft asks transformers 5 a question it deprecated: not the user's concern.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            self._serial += 1
            name = f"persona{self._serial}"
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, config)
            else:
                self.model = get_peft_model(self.model, config, adapter_name=name)
                self._quantise()
            try:
                added = self._copy_weights(name, weights, info)
            except ArtifactError:
                self.model.delete_adapter(name)
                raise
            self.model.eval()
            self.adapters[name] = info.path
        return name, added

    def _copy_weights(self, name: str, weights: dict, info: PersonaInfo) -> int:
        """Copy a saved adapter's tensors into the adapter `name` just added. peft's own loader cannot be used
        beside int8 layers (it loads a state dict through every module, and those refuse a partial one)."""
        params = {k: v for k, v in self.model.named_parameters() if f".{name}." in k}
        filled = set()
        for key, value in weights.items():
            # Saved: "...<layer>.lora_A.weight" (GPT-2's c_attn, Llama's q_proj...); loaded under its name:
            # "...<layer>.lora_A.<name>.weight".
            target = key.replace(".lora_A.", f".lora_A.{name}.").replace(".lora_B.", f".lora_B.{name}.")
            param = params.get(target)
            if param is None or param.shape != value.shape:
                raise ArtifactError(f"the LoRA adapter in {info.path} does not fit the base {self.base!r} "
                                    f"({key}); train the persona again on this base")
            with torch.no_grad():
                param.copy_(value)
            filled.add(target)
        if filled != set(params):
            raise ArtifactError(f"the LoRA adapter in {info.path} lacks {len(set(params) - filled)} of its "
                                "tensors; train the persona again")
        return sum(p.numel() * p.element_size() for p in params.values())

    def _quantise(self) -> None:
        """int8 for every Linear layer but the adapters' own (the layers they wrap included: see `_Int8Wrapped`)."""
        if self.name != "torch-int8":
            return
        spec = {n: torch.ao.quantization.default_dynamic_qconfig for n, m in self.model.named_modules()
                if isinstance(m, torch.nn.Linear) and ".lora_" not in n}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch.ao's eager quantisation is what ships with torch
            # A quantised copy, not in place: the model as loaded goes whole, and with it the weights file it
            # maps (in place, tensors left views of that file kept the whole float file resident beside the
            # int8 layers: 477 MB of file pages for GPT-2 small's 269 MB of int8 weights).
            self.model = torch.ao.quantization.quantize_dynamic(self.model, spec, dtype=torch.qint8)
        for module in self.model.modules():
            base = getattr(module, "base_layer", None)
            if base is not None and not isinstance(base, (torch.nn.Linear, _Int8Wrapped)):
                module.base_layer = _Int8Wrapped(base)
        self.base_bytes = model_bytes(self.model) - sum(
            p.numel() * p.element_size() for n, p in self.model.named_parameters() if ".lora_" in n)

    def remove(self, name: str) -> None:
        """Unload the adapter `name` (after the batch running now)."""
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")   # peft says which adapter is "active" now: rows name theirs
            if self.adapters.pop(name, None) is not None:
                self.model.delete_adapter(name)

    def generate(self, prompts, settings, seeds, cancelled=None, *, adapters: Sequence[str]) -> list[list[int]]:
        """One batch over the base, row `i` through the adapter `adapters[i]`."""
        with self.lock:
            return decode(self.model, self.tokenizer, prompts, settings, seeds=seeds, cancelled=cancelled,
                          adapters=adapters)


class _Int8Wrapped(torch.nn.Module):
    """An int8 layer that an adapter wraps. peft looks at a wrapped layer's `weight` for the device and dtype of
    an adapter it adds, and an int8 layer's `weight` is a method: this one answers with an empty float tensor
    where its layer is (not saved, no bytes)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("weight", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _has_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


class AdapterBackend:
    """The `Backend` of one adapter persona on a `SharedBase`. The engine batches the rows of every adapter on
    one base together through `shared.generate`; alone, it runs its own rows the same way."""

    def __init__(self, shared: SharedBase, adapter: str, memory_bytes: int) -> None:
        self.shared = shared
        self.adapter = adapter
        self.name = shared.name
        self.memory_bytes = memory_bytes

    def generate(self, prompts, settings, seeds, cancelled=None) -> list[list[int]]:
        return self.shared.generate(prompts, settings, seeds, cancelled, adapters=[self.adapter] * len(prompts))


class SharedBases:
    """The bases that adapter personas share in this process, by (base, backend): loaded with their first
    adapter, unloaded with their last."""

    def __init__(self) -> None:
        self._bases: dict[tuple[str, str], SharedBase] = {}
        self._lock = threading.Lock()

    def serves(self, info: PersonaInfo, backend: str) -> bool:
        """Whether `info` runs on a shared base with this backend (an adapter on a local torch backend)."""
        return info.is_adapter and resolve(backend) in ("torch", "torch-int8")

    def adapter_backend(self, info: PersonaInfo, backend: str) -> tuple[AdapterBackend, object]:
        """(backend, tokenizer) for an adapter artifact, its base loaded first when no persona uses it yet."""
        from transformers import AutoTokenizer

        name = resolve(backend)
        key = (str(info.base), name)
        with self._lock:    # one load of a base even when two personas on it are asked for at once
            shared = self._bases.get(key)
            if shared is None:
                try:
                    shared = self._bases[key] = SharedBase.load(str(info.base), name)
                except ArtifactError as e:
                    raise ArtifactError(f"{info.path} is a LoRA adapter on a base named in its persona.json: "
                                        f"{e}. Put the base back where it was, or train the persona again on a "
                                        "base that is here") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(info.path)
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot load the tokenizer of {info.path}: {e}") from e
        same = tokenizer.eos_token_id == shared.tokenizer.eos_token_id
        if same and tokenizer.get_vocab() == shared.tokenizer.get_vocab():
            # The base's own, as adapters save it: one copy for every persona on the base (a tokenizer of
            # GPT-2's size takes tens of megabytes).
            tokenizer = shared.tokenizer
        try:
            adapter, size = shared.add(info)
        except ArtifactError:
            self._drop_if_unused(key, shared)
            raise
        return AdapterBackend(shared, adapter, size), tokenizer

    def release(self, backend: AdapterBackend) -> None:
        """Unload an adapter; its base goes with the last adapter on it."""
        shared = backend.shared
        shared.remove(backend.adapter)
        self._drop_if_unused((shared.base, shared.name), shared)

    def _drop_if_unused(self, key: tuple[str, str], shared: SharedBase) -> None:
        with self._lock:
            if not shared.adapters and self._bases.get(key) is shared:
                del self._bases[key]

    def has_base(self, base: str, backend: str) -> bool:
        """Whether the base `base` is loaded for `backend` (by a persona on it)."""
        with self._lock:
            return (str(base), resolve(backend)) in self._bases

    @property
    def memory_bytes(self) -> int:
        """The bytes of the bases loaded (their adapters count with their personas)."""
        with self._lock:
            return sum(shared.base_bytes for shared in self._bases.values())


def expected_bytes(directory: Path, backend: str, bases: SharedBases | None = None) -> int:
    """What loading the artifact in `directory` is expected to add to this process, before loading it: its
    weight files on disk (a float model's size as loaded, an upper bound for int8), and for a LoRA adapter the
    base's too when no persona has loaded that base yet (a hub base: unknown here, counted once loaded). An
    inference server's persona loads no weights here. Reads files: call it off the event loop; an artifact
    that cannot be read expects nothing (its load fails and says why)."""
    if resolve(backend) == "openai":
        return 0
    try:
        info = read_persona(directory)
    except ArtifactError:
        return 0
    size = _weights_on_disk(info.path)
    if info.is_adapter and info.base and not (bases is not None and bases.has_base(info.base, backend)):
        size += _weights_on_disk(Path(info.base))
    return size


def _weights_on_disk(directory: Path) -> int:
    try:
        return sum(f.stat().st_size for f in directory.iterdir() if f.suffix in (".safetensors", ".bin"))
    except OSError:    # not a directory here (a hub id), or unreadable: nothing known
        return 0


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


def check_ctranslate2_runs(info: PersonaInfo) -> None:
    """Refuse, naming the architecture, an artifact whose architecture the installed CTranslate2 cannot convert
    (it converts GPT-2, Llama, Mistral and Qwen2 among others): before its model is loaded or merged for
    nothing. An artifact's config.json is its model's (an adapter's, its base's). When CTranslate2 is missing
    or keeps no list of what it converts, nothing is said here: `CTranslate2Backend` and the conversion do."""
    try:
        from ctranslate2 import __version__ as version
        from ctranslate2.converters import transformers as converters
    except ImportError:
        return
    supported = getattr(converters, "_MODEL_LOADERS", None)   # CTranslate2's registry: config class -> converter
    if not isinstance(supported, dict):
        return
    try:
        model_type = json.loads((info.path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return   # the model's load says what is wrong with it
    from transformers import AutoConfig

    try:
        config_class = type(AutoConfig.for_model(str(model_type))).__name__
    except ValueError:   # an architecture this transformers does not know: its load says so
        return
    if config_class not in supported:
        raise BackendError(f"the ctranslate2 backend cannot run {info.path}: CTranslate2 {version} does not "
                           f"convert {model_type} models; use --backend torch-int8 (or torch), or a CTranslate2 "
                           "release that converts this architecture")


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

    return requested if requested else max(1, cpu_threads(None) // 2)


def load_backend(info: PersonaInfo, name: str = "auto", *, threads: int | None = None,
                 remote: RemoteConfig | None = None, bases: SharedBases | None = None):
    """(backend, tokenizer) for an artifact. Loading failures are `ArtifactError`s, unusable backends
    `BackendError`s. `openai` needs `remote`, a `bot.inference.remote.RemoteConfig`; it loads the tokenizer only (the
    weights stay with the inference server) and checks the server at once. With `bases`, an adapter artifact
    on a local torch backend is added to its shared base instead of being merged into a base of its own."""
    name = resolve(name)
    if name == "openai":
        return _load_remote(info, remote)
    if bases is not None and bases.serves(info, name):
        return bases.adapter_backend(info, name)
    if name == "ctranslate2":
        check_ctranslate2_runs(info)
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
           "load_backend", "quantize_int8", "resolve", "ctranslate2_available", "SharedBase", "SharedBases",
           "AdapterBackend", "model_bytes", "expected_bytes"]
