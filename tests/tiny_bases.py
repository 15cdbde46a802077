"""Tiny random bases of the Llama family (Llama, Mistral, Qwen2), built here without a download: a byte-level
BPE tokenizer trained on the test chats with each family's special tokens (and its habits: Llama and Mistral
add a beginning-of-text token when asked for special tokens and have no padding token; Qwen2 has no
beginning-of-text token and pads with its end-of-text token), and a randomly initialised model of the family's
class, both saved with save_pretrained as a hub model would be; and the personas the tests train on them
(`Families`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chatgen import chat_conversations


@dataclass(frozen=True, slots=True)
class Family:
    """How one family's tokenizer and config look (the parts personabot must cope with)."""

    name: str
    bos: str | None
    eos: str
    unk: str | None
    pad: str | None
    adds_bos: bool           # the tokenizer puts `bos` first when special tokens are added
    tie_embeddings: bool


FAMILIES = {
    # Llama 2 / SmolLM2-like: <s> ... </s>, no padding token, untied output layer.
    "llama": Family("llama", bos="<s>", eos="</s>", unk="<unk>", pad=None, adds_bos=True, tie_embeddings=False),
    "mistral": Family("mistral", bos="<s>", eos="</s>", unk="<unk>", pad=None, adds_bos=True,
                      tie_embeddings=False),
    # Qwen2.5 base models: no <s>, <|endoftext|> ends a text and pads, tied embeddings.
    "qwen2": Family("qwen2", bos=None, eos="<|endoftext|>", unk=None, pad="<|endoftext|>", adds_bos=False,
                    tie_embeddings=True),
}


def family_tokenizer(family: Family, texts: list[str], vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on `texts` with `family`'s special tokens."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(t for t in (family.bos, family.eos, family.unk, family.pad) if t))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                            show_progress=False)
    inner = bpe._tokenizer
    if family.adds_bos:
        bos_id = inner.token_to_id(family.bos)
        inner.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
                                          special_tokens=[(family.bos, bos_id)])])
    named = {f"{kind}_token": token for kind, token in
             (("bos", family.bos), ("eos", family.eos), ("unk", family.unk), ("pad", family.pad)) if token}
    return PreTrainedTokenizerFast(tokenizer_object=inner, model_max_length=256, **named)


def family_config(family: Family, tokenizer):
    """A tiny config of the family: 2 layers, 64 wide, 2 heads sharing 1 key-value head, 256 positions. The
    heads are 32 wide: vLLM's CPU attention takes 32 and up (it stopped at 16: `Unsupported CPU attention
    configuration: head_dim=16`)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    shape = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": family.tie_embeddings}
    if family.name == "llama":
        return LlamaConfig(**shape)
    if family.name == "mistral":
        return MistralConfig(**shape, sliding_window=4096)   # Mistral 7B v0.1's window: wider than a block
    return Qwen2Config(**shape, use_sliding_window=False)


def build_tiny_base(name: str, out: Path, seed: int = 1) -> Path:
    """The tiny random base of family `name` saved in `out` (model and tokenizer); returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.modelling import MODEL_BUILD_LOCK

    family = FAMILIES[name]
    texts = [f"{s}: {t}\n" for conv in chat_conversations(40, seed=1) for s, t in conv]
    tokenizer = family_tokenizer(family, texts * 3)
    config = family_config(family, tokenizer)
    with MODEL_BUILD_LOCK:    # random weights come from functions a load elsewhere may swap (training.modelling)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@dataclass(frozen=True, slots=True)
class Trained:
    """One family's models: the random base, a persona trained whole from it (Alice), and LoRA adapter personas
    (Alice, Bob, ...) on that persona, which has learnt the chats already (a random base would teach an adapter
    nothing in a few steps)."""

    base: Path
    full: Path
    adapters: dict[str, Path]     # speaker -> the adapter persona of that speaker

    @property
    def alice_lora(self) -> Path:
        return self.adapters["alice"]

    @property
    def bob_lora(self) -> Path:
        return self.adapters["bob"]


class Families:
    """Builds and trains each family's models once, when a test first asks for them: adapters of `speakers`
    (Alice's through the command a user types, the others' through `training.trainer.train`)."""

    def __init__(self, root: Path, chat: Path, speakers: tuple[str, ...] = ("alice", "bob")) -> None:
        self.root, self.chat, self.speakers = root, chat, speakers
        self._done: dict[str, Trained] = {}

    def __call__(self, family: str) -> Trained:
        if family not in self._done:
            self._done[family] = self._train(family)
        return self._done[family]

    def _train(self, family: str) -> Trained:
        from conftest import run_cli

        from training.trainer import TrainConfig, train

        folder = self.root / family
        base = build_tiny_base(family, folder / "base")
        full = folder / "alice"
        adapters = {speaker: folder / f"{speaker}-lora" for speaker in self.speakers}
        fast = ["--epochs", "100", "--batch-size", "4", "--threads", "1", "--progress", "none", "--lr", "3e-3"]
        # Whole, through the command a user types; the random base learns the language from the context too.
        done = run_cli("--data", str(self.chat), "--speaker", "alice", "--out", str(full), "--base", str(base),
                       "--max-steps", "60", "--context-loss-weight", "0.5", "--samples", "1", *fast,
                       module="training")
        assert done.returncode == 0, done.stderr
        for speaker, out in adapters.items():
            if speaker == "alice":
                done = run_cli("--data", str(self.chat), "--speaker", "alice", "--out", str(out), "--base",
                               str(full), "--lora", "--max-steps", "25", "--samples", "1", *fast, module="training")
                assert done.returncode == 0, done.stderr
            else:
                train(TrainConfig(data=[str(self.chat)], speaker=speaker, out=out, base=str(full), lora=True,
                                  max_steps=25, epochs=100, batch_size=4, lr=3e-3, threads=1, samples=0))
        return Trained(base, full, adapters)
