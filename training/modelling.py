"""Where models come from: a base (hub id or local directory, one `from_pretrained` path) or a fresh GPT-2
of a preset size with a byte-level BPE tokenizer trained on the corpus. Also the device and thread choice."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from training.errors import TrainingError

END_OF_TEXT = "<|endoftext|>"

# transformers' `from_pretrained` swaps functions of the whole process while it builds a model (the
# `PreTrainedModel.tie_weights` and `init_weights` of every class, torch's `nn.init` functions) and puts back
# what it found afterwards. Two builds at once can each put back the other's stand-in: from then on every model
# of the process loads untied (a random LM head) or on the meta device. Every model this process loads or
# builds holds this lock (re-entrant: an adapter's load takes it around its base's load).
MODEL_BUILD_LOCK = threading.RLock()


@dataclass(frozen=True, slots=True)
class Preset:
    """A GPT-2 shape for training from scratch."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    lr: float

    def describe(self) -> str:
        return (f"{self.n_layer} layers, {self.n_head} heads, {self.n_embd} wide, {self.n_positions} positions, "
                f"{self.vocab_size}-token vocabulary")


PRESETS: dict[str, Preset] = {
    # For tests: trains in seconds, learns little.
    "tiny": Preset(n_layer=2, n_head=2, n_embd=64, n_positions=256, vocab_size=1024, lr=2e-3),
    # The demo persona: a few minutes on two CPU cores.
    "mini": Preset(n_layer=4, n_head=4, n_embd=256, n_positions=256, vocab_size=4096, lr=1e-3),
    "small": Preset(n_layer=6, n_head=6, n_embd=384, n_positions=512, vocab_size=8192, lr=6e-4),
    # The GPT-2 small architecture (124M with GPT-2's own vocabulary): wants a GPU.
    "gpt2": Preset(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=16384, lr=3e-4),
}


def pick_device() -> torch.device:
    """A CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_threads(requested: int | None = None) -> int:
    """Threads for torch on the CPU: what was asked, else the cores this process may run on."""
    if requested:
        return max(1, requested)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast type for training and evaluation: bf16 where the hardware has it (a bf16-capable GPU,
    a CPU with AVX512-BF16 or AMX: about 1.5-1.8x faster there), full precision otherwise. Weights and
    optimiser state stay in fp32 either way; only matrix products run in bf16."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


# The layers a LoRA adapter wraps, per architecture (`config.model_type`): written into every adapter's
# adapter_config.json, which every loader (merged, shared base, an inference server) reads back.
# GPT-2: its fused query-key-value projection, as peft has always chosen for it (adapters trained before this
# table stay what they were). Llama, Mistral, Qwen2: all four attention projections rather than peft's
# default of query and value only; keys and output are cheap beside them (grouped-query attention makes the
# key projection narrow), learn noticeably more of a speaker's style in the same steps, and are the
# projections vLLM's LoRA serves for these architectures. Other architectures get peft's own defaults.
LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


def lora_target_modules(model) -> list[str] | None:
    """The layers LoRA adapts in `model` (`LORA_TARGET_MODULES`); None leaves the choice to peft."""
    targets = LORA_TARGET_MODULES.get(getattr(model.config, "model_type", ""))
    return list(targets) if targets else None


def load_base(name_or_dir: str):
    """Model and tokenizer from a hub id (`gpt2`, `microsoft/DialoGPT-small`) or a local directory.

    Both go through the same `from_pretrained` call; a missing directory or an unreachable hub is a
    `TrainingError` that says which it was."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_dir).expanduser()
    # Hub ids are `name` or `org/name`; anything else that is not on disk is a mistyped path.
    looks_local = name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1
    if looks_local and not local.exists():
        raise TrainingError(f"base model directory {name_or_dir} does not exist")
    source = str(local) if local.exists() else name_or_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with MODEL_BUILD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as e:  # no such model / no network / not a saved model (ValueError)
        where = "directory" if local.exists() else "model id"
        raise TrainingError(
            f"cannot load the base model from {where} {name_or_dir!r}: {first_line(e)}\n"
            "  hint: a hub id needs network access the first time (or HF_HUB_OFFLINE unset); "
            "a directory must hold a model saved with save_pretrained; or use --from-scratch SIZE") from e
    if tokenizer.eos_token_id is None:
        raise TrainingError(f"the tokenizer of {name_or_dir} has no end-of-text token, which personabot "
                            "uses as its end marker")
    return model, tokenizer


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on `texts`, with GPT-2's end-of-text token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=END_OF_TEXT,
                                   bos_token=END_OF_TEXT, unk_token=END_OF_TEXT, model_max_length=1 << 20)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise TrainingError(f"unknown size {name!r} for --from-scratch; choose one of: {', '.join(PRESETS)}") from None


def scratch_model(preset_name: str, tokenizer, seed: int = 0):
    """A freshly initialised GPT-2 of a preset size for `tokenizer` (seeded: the same every time)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    preset = get_preset(preset_name)
    eos = tokenizer.eos_token_id
    # No pad_token_id: nothing is padded in training (packed blocks) and generation passes it explicitly.
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=preset.n_positions, n_embd=preset.n_embd,
                        n_layer=preset.n_layer, n_head=preset.n_head, bos_token_id=eos, eos_token_id=eos)
    with MODEL_BUILD_LOCK:   # its weights are initialised by the functions a load elsewhere may have swapped
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def new_model(preset_name: str, texts: Iterable[str], seed: int = 0):
    """A fresh GPT-2 of a preset size and a byte-level BPE tokenizer trained on `texts`."""
    tokenizer = train_tokenizer(texts, get_preset(preset_name).vocab_size)
    return scratch_model(preset_name, tokenizer, seed), tokenizer


def max_positions(model) -> int:
    """Longest sequence the model accepts."""
    config = model.config
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def quiet_library_output() -> None:
    """Silence transformers' per-file progress bars and advice aimed at library users; personabot reports
    its own progress and errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def conv1d_to_linear(model) -> None:
    """Replace GPT-2's `Conv1D` projections by equivalent `nn.Linear` layers, in place."""
    from transformers.pytorch_utils import Conv1D

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, bias=child.bias is not None)
                linear.weight = torch.nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
                if child.bias is not None:
                    linear.bias = torch.nn.Parameter(child.bias.detach().clone(), requires_grad=False)
                setattr(module, name, linear)


def fuse_gelu(model) -> None:
    """Swap transformers' Python tanh-GELU for torch's fused kernel of the same formula, in place."""
    from transformers.activations import NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, torch.nn.GELU(approximate="tanh"))


def quantize_int8(model):
    """The model with its linear layers (including GPT-2's converted `Conv1D`s) dynamically quantised."""
    import warnings

    conv1d_to_linear(model)
    fuse_gelu(model)
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is marked for migration to torchao; it is what ships with torch.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
