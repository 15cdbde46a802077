"""`personabot eval`: how well a trained persona predicts a speaker's turns in given exports, and how much its
own lines sound like that speaker's (`training.fidelity`: measured on the exports' held-out split, cut with the
artifact's own seed and fraction, so on the artifact's training exports these are lines it never saw)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.artifact import load_model, read_persona
from training.dataset import DatasetConfig, make_blocks, match_speaker, split_units
from training.errors import DataError
from training.fidelity import FIDELITY_LINES, HeldOutLines, measure_fidelity, split_lines
from training.formats.base import ImportOptions
from training.loader import load_corpus, single_voice_as
from training.modelling import cpu_threads, pick_device, quantize_int8
from training.generation import sample_lines
from training.leak_guard import LeakGuard
from training.trainer import evaluate, perplexity


def evaluate_artifact(directory: str | Path, data: Sequence[str], *, fmt: str | None = None,
                      options: ImportOptions | None = None, speaker: str | None = None,
                      threads: int | None = None, batch_size: int = 8, int8: bool = True,
                      fidelity_lines: int = FIDELITY_LINES) -> dict[str, Any]:
    """Loss and perplexity of the artifact on every turn of its speaker (or `speaker`) in `data`,
    each with its preceding context as the artifact was trained to see it; with `int8`, also through the
    int8-quantised model that the bot serves on a CPU by default; with `fidelity_lines`, the fidelity report
    of that many lines sampled with the persona's own settings (`training.fidelity`; 0: none)."""
    info = read_persona(directory)
    corpus = load_corpus(data, format=fmt, options=options)
    torch.set_num_threads(cpu_threads(threads))
    model, tokenizer = load_model(info)
    # An artifact older than the stored dataset settings was cut at its generation context, default blocks.
    stored = info.dataset or DatasetConfig(context_tokens=info.generation.context_tokens)
    config = DatasetConfig(context_tokens=stored.context_tokens, block_size=stored.block_size, min_responses=1)
    query = speaker or info.speaker
    corpus = single_voice_as(corpus, query)
    match = match_speaker(corpus.conversations, query)
    units = split_units(corpus.conversations, match, config.unit_responses)
    if not units:
        raise DataError(None, f"no turns of {match.name} in {', '.join(data)}")
    # The persona answers under its own name, whatever the speaker is called in these exports.
    blocks, stats = make_blocks(units, tokenizer, info.speaker, config)
    device = pick_device()
    model.to(device)
    # float32 throughout (no autocast): this is the reference the int8 figures are compared with.
    loss, tokens = evaluate(model, blocks, batch_size, device, None)
    report = {"artifact": str(info.path), "speaker": info.speaker, "data_speaker": match.name,
              "responses": stats["responses"], "response_tokens": tokens, "loss": loss,
              "perplexity": perplexity(loss), "artifact_val_loss": info.trained_val_loss}
    if fidelity_lines:
        # Sampled before the int8 copy replaces nothing: the float32 model, with the persona's own settings.
        held_out = _held_out(corpus.conversations, query, stored)
        generated = sample_lines(model, tokenizer, info.speaker, fidelity_lines, info.generation, seed=stored.seed)
        guard = LeakGuard.from_artifact(info.path)      # the bot's own guard for this artifact
        report["fidelity"] = measure_fidelity(generated, held_out, persona=info.speaker, seed=stored.seed,
                                              copied=lambda line: guard.check(line) is not None).to_json()
    if int8:
        # The quality cost of the CPU's fast backend: the same responses through the int8 model, in float32
        # arithmetic elsewhere (no autocast), against the float32 model's figures above.
        quantized = quantize_int8(model.to("cpu"))
        loss8, _ = evaluate(quantized, blocks, batch_size, torch.device("cpu"), None)
        report["int8"] = {"loss": loss8, "perplexity": perplexity(loss8),
                          "perplexity_change_pct": 100 * (perplexity(loss8) / perplexity(loss) - 1)}
    return report


def held_out_lines(directory: str | Path, data: Sequence[str], *, fmt: str | None = None,
                   options: ImportOptions | None = None) -> list[str]:
    """The artifact's speaker's real lines in `data` that its training held out, split as its training split
    them (its own seed and fraction): on its training exports, lines it never saw. For the blind quiz of an
    artifact trained before artifacts kept them (`training.artifact.write_held_out`)."""
    info = read_persona(directory)
    corpus = single_voice_as(load_corpus(data, format=fmt, options=options), info.speaker)
    stored = info.dataset or DatasetConfig(context_tokens=info.generation.context_tokens)
    return _held_out(corpus.conversations, info.speaker, stored).persona_heldout


def _held_out(conversations, query: str, stored: DatasetConfig) -> HeldOutLines:
    """The held-out lines of `query` as training with `stored`'s settings split them."""
    return split_lines(conversations, query, val_fraction=stored.val_fraction, seed=stored.seed,
                       unit_responses=stored.unit_responses)
