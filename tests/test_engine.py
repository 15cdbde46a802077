"""The generation engine on real tiny personas: batching, per-request settings, cancellation, hot swap, the
event loop, the filters on the way out, and the backends."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
import torch

from bot.inference.engine import Engine, SwapError
from bot.core.filters import DISCORD, Blocklist, OutputFilter
from bot.inference.persona import FALLBACK_REPLY, Persona
from loop_watch import LoopWatch
from training import transcript
from training.generation import GenerationSettings, cut_reply, decode

pytestmark = pytest.mark.slow

TURNS = [("Bob", "pizza tonight movie"), ("Carol", "rain bus late")]


def channel(i: int) -> list[tuple[str, str]]:
    words = "pizza tonight movie rain bus late coffee keys train game office beach".split()
    return [("Bob", " ".join(words[i % 12: i % 12 + 3])), ("Carol", words[(i * 5) % 12])]


def run(coro):
    return asyncio.run(coro)


# --- the decode loop -------------------------------------------------------------------------------------

def test_a_generation_warns_about_nothing(alice_artifact, caplog):
    # The terminal chat shows whatever reaches stderr: a deprecation warning at each reply is noise there.
    import logging
    import warnings

    persona = Persona.load(alice_artifact, backend="torch")
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")      # any warning fails the generation, whoever emits it
        replies = decode(persona.backend.model, persona.tokenizer, [persona.prompt(TURNS)] * 2,
                         persona.settings, seeds=1)
    assert len(replies) == 2
    assert [r.getMessage() for r in caplog.records] == []


def test_replies_stop_at_the_end_marker_or_another_speaker_exactly_where_an_unstopped_run_would_be_cut(
        alice_artifact):
    persona = Persona.load(alice_artifact, backend="torch")
    model, tok = persona.backend.model, persona.tokenizer
    greedy = GenerationSettings(top_k=1, repetition_penalty=1.0, max_new_tokens=40)
    prompts = [persona.prompt(channel(i)) for i in range(6)] + [persona.line_prompt()]
    ours = decode(model, tok, prompts, greedy)
    stopped_early = 0
    for prompt, reply in zip(prompts, ours):
        # The same greedy continuation without any stop, cache or padding, 40 tokens long, cut afterwards.
        ids = list(prompt)
        with torch.inference_mode():
            for _ in range(40):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        full = ids[len(prompt):]
        assert reply == cut_reply(full, tok)[0]
        assert tok.eos_token_id not in reply
        assert transcript.find_new_turn(tok.decode(reply)) is None
        stopped_early += len(reply) < len(full)
    assert stopped_early > 0  # the stops were exercised, not only the length limit


def test_each_row_keeps_its_own_settings_and_a_batch_answers_like_single_requests(alice_artifact):
    persona = Persona.load(alice_artifact, backend="torch")
    model, tok = persona.backend.model, persona.tokenizer
    greedy = GenerationSettings(top_k=1, repetition_penalty=1.0, max_new_tokens=30)
    short = GenerationSettings(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=3)
    prompts = [persona.prompt(channel(i)) for i in range(4)]
    settings = [greedy, short, greedy, short]
    batch = decode(model, tok, prompts, settings, seeds=[1, 2, 3, 4])
    alone = [decode(model, tok, [p], [s], seeds=[k + 1])[0] for k, (p, s) in enumerate(zip(prompts, settings))]
    assert batch[0] == alone[0] and batch[2] == alone[2]   # greedy rows: identical with or without company
    assert all(len(batch[i]) <= 3 for i in (1, 3))
    assert max(len(batch[0]), len(batch[2])) > 3           # the short rows did not cut the others short


def test_a_cancelled_row_leaves_the_batch_at_the_next_token(alice_artifact):
    persona = Persona.load(alice_artifact, backend="torch")
    model, tok = persona.backend.model, persona.tokenizer
    # Ramble on: no end marker possible before the length limit.
    endless = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=50)
    asked: dict[int, int] = {0: 0, 1: 0}

    def cancelled(row: int) -> bool:
        asked[row] += 1
        return row == 0 and asked[row] >= 3

    prompts = [persona.prompt(TURNS)] * 2
    decode(model, tok, prompts, endless, seeds=0, cancelled=cancelled)
    assert asked[0] == 3          # asked until it said yes, then never again
    assert asked[1] > asked[0]


def test_prompts_fit_the_budget_and_the_model_positions(alice_artifact):
    persona = Persona.load(alice_artifact, backend="torch", context_tokens=40)
    long_chat = [("Bob" if i % 2 else "Carol", f"message {i} pizza tonight movie") for i in range(100)]
    prompt = persona.prompt(long_chat)
    assert 30 < len(prompt) <= 40
    text = persona.tokenizer.decode(prompt)
    assert "message 99" in text and "message 0 " not in text       # the newest kept, the oldest dropped
    assert text.endswith("Alice:")
    huge = persona.settings.with_overrides(context_tokens=10_000, max_new_tokens=200)
    assert len(persona.prompt(long_chat, huge)) <= persona.max_positions - 200


# --- the engine ------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_each_gets_its_own_settings(alice_artifact):
    async def main():
        async with Engine.load(alice_artifact, batch_window_s=0.05) as engine:
            # Batching and per-row settings only: Alice's lines are all training text, and the leak guard
            # (tested on its own) would turn most of them into the fallback, which has no tokens.
            engine.persona.output_filter = OutputFilter()
            lengths = [1, 2, 3, 5, 8, 13]
            replies = await asyncio.gather(*(engine.reply(channel(i), overrides={"max_new_tokens": n}, seed=i,
                                                          target=DISCORD)
                                             for i, n in enumerate(lengths)))
            return engine, lengths, replies

    engine, lengths, replies = run(main())
    assert engine.largest_batch > 1 and engine.batches < len(lengths)
    for n, reply in zip(lengths, replies):
        assert reply.tokens <= n and (reply.text or reply.fallback)
    assert max(r.tokens for r in replies) > 3


def test_bad_settings_are_refused_before_they_reach_a_shared_batch(alice_artifact):
    async def main():
        async with Engine.load(alice_artifact) as engine:
            good = asyncio.ensure_future(engine.reply(TURNS, seed=1, target=DISCORD))
            with pytest.raises(ValueError, match="temperature"):
                await engine.reply(TURNS, overrides={"temperature": 0}, target=DISCORD)
            return await good

    assert run(main()).persona == "Alice"


def test_a_cancelled_caller_frees_its_slot_and_the_others_are_answered(alice_artifact):
    async def main():
        async with Engine.load(alice_artifact, batch_window_s=0.05) as engine:
            long = asyncio.ensure_future(engine.reply(TURNS, overrides={"max_new_tokens": 200, "top_k": 0},
                                                      target=DISCORD))
            others = [asyncio.ensure_future(engine.reply(channel(i), seed=i, target=DISCORD)) for i in range(3)]
            await asyncio.sleep(0.02)
            long.cancel()
            done = await asyncio.gather(*others)
            with pytest.raises(asyncio.CancelledError):
                await long
            # The engine is free again: a new request is answered.
            return done, await engine.reply(TURNS, seed=9, target=DISCORD)

    done, after = run(main())
    assert len(done) == 3 and all(r.persona == "Alice" for r in done) and after.persona == "Alice"


def test_a_request_cancelled_while_it_generates_leaves_its_batch_at_the_next_token(alice_artifact):
    # The test above cancels while the request may still be queued; here it is cancelled mid-generation,
    # batched with three others. The worker is held inside its third forward pass while the caller
    # cancels, so "mid-generation" does not depend on timing; the long request is recognised in each
    # forward pass by its attention mask, longer than any other row's can become.
    import threading

    persona = Persona.load(alice_artifact, backend="torch")
    persona.output_filter = OutputFilter()   # only the cancellation matters here
    long_chat = [("Bob" if i % 2 else "Carol", f"message {i} pizza tonight movie rain bus") for i in range(40)]
    endless = {"max_new_tokens": 100, "top_k": 0, "temperature": 1.0}
    threshold = len(persona.prompt(long_chat, persona.settings.with_overrides(**endless)))
    short = {"max_new_tokens": 8}
    assert max(len(persona.prompt(channel(i), persona.settings.with_overrides(**short))) for i in range(3)) + 9 \
        < threshold
    passes: list[tuple[int, bool]] = []     # (rows, whether the long request was one of them) per forward pass
    reached, resume = threading.Event(), threading.Event()

    def watch(module, args, kwargs):
        rows = kwargs["attention_mask"].sum(-1).tolist()
        passes.append((len(rows), any(n >= threshold for n in rows)))
        if len(passes) == 3:
            reached.set()
            resume.wait(timeout=300)

    persona.backend.model.register_forward_pre_hook(watch, with_kwargs=True)

    async def main():
        async with Engine(persona, max_batch=4, batch_window_s=5.0) as engine:
            long = asyncio.ensure_future(engine.reply(long_chat, overrides=endless, seed=1, target=DISCORD))
            others = [asyncio.ensure_future(engine.reply(channel(i), overrides=short, seed=i, target=DISCORD))
                      for i in range(3)]
            try:
                assert await asyncio.to_thread(reached.wait, 300)
                long.cancel()
            finally:
                resume.set()
            done = await asyncio.gather(*others)
            with pytest.raises(asyncio.CancelledError):
                await long
            return done, await engine.reply(TURNS, seed=9, target=DISCORD)

    done, after = run(main())
    assert passes[0][0] == 4                                  # the four requests went in one batch
    assert all(long for _, long in passes[:3])                # the long request was generating when cancelled
    assert not any(long for _, long in passes[3:])            # ... and left the batch at the next token
    assert len(done) == 3 and all(r.persona == "Alice" and r.tokens <= 8 for r in done)
    assert after.persona == "Alice"


def test_generated_mentions_never_ping(alice_artifact):
    persona = Persona.load(alice_artifact)
    persona.output_filter = OutputFilter()  # Alice's lines are all in her training text; only mentions here

    async def main():
        async with Engine(persona) as engine:
            return await asyncio.gather(*(engine.reply(channel(i), seed=i, target=DISCORD) for i in range(8)))

    texts = [r.text for r in run(main())]
    assert not any("@everyone" in t for t in texts)
    assert any("@\u200beveryone" in t for t in texts)   # she did say it; it was neutralised


def test_rejected_samples_are_drawn_again_a_bounded_number_of_times(alice_artifact):
    # A blocklist that refuses everything: every try is rejected, then the fallback line is used.
    persona = Persona.load(alice_artifact, blocklist=Blocklist([r"re:\w"]))

    async def main():
        async with Engine(persona, max_tries=4) as engine:
            return await engine.reply(TURNS, seed=3, target=DISCORD)

    reply = run(main())
    assert reply.fallback and reply.text == FALLBACK_REPLY and reply.tries == 4 and len(reply.rejected) == 4


def test_a_sample_the_blocklist_rejects_is_replaced_by_a_new_one(alice_artifact):
    async def first_text(persona: Persona) -> str:
        async with Engine(persona) as engine:
            return (await engine.reply(TURNS, seed=11, target=DISCORD)).text

    plain = Persona.load(alice_artifact)
    plain.output_filter = OutputFilter()
    first = run(first_text(plain))
    assert first
    # Block exactly what seed 11 produced: the engine must move on to the next sample.
    raw = first.replace("\u200b", "")   # as generated, before mentions were neutralised
    blocking = Persona.load(alice_artifact, blocklist=Blocklist(["re:^" + re.escape(raw) + "$"]))
    blocking.output_filter = OutputFilter(blocklist=blocking.output_filter.blocklist)

    async def main():
        async with Engine(blocking) as engine:
            return await engine.reply(TURNS, seed=11, target=DISCORD)

    reply = run(main())
    assert reply.tries >= 2 and reply.rejected[0].startswith("matches a blocked pattern") and reply.text != first


def test_the_leak_guard_stops_training_text_coming_back_word_for_word(alice_artifact):
    # Alice's replies in training follow one template; a persona that learnt it repeats whole training lines.
    # At her default settings nearly every sample is a training line, so every reply would be the fallback
    # and "none got out" would hold vacuously: sample more freely, so that some replies are her own.
    persona = Persona.load(alice_artifact)
    free = {"temperature": 1.5, "top_k": 0, "top_p": 1.0}

    async def main():
        async with Engine(persona, max_tries=3) as engine:
            return await asyncio.gather(*(engine.reply(channel(i), seed=i, overrides=free, target=DISCORD)
                                          for i in range(16)))

    replies = run(main())
    guard = persona.output_filter.leak_guard
    reasons = [reason for r in replies for reason in r.rejected]
    assert any("training" in reason for reason in reasons)        # leaks were caught ...
    assert all(guard.check(r.text) is None for r in replies if not r.fallback)   # ... and none got out
    assert any(not r.fallback for r in replies)     # ... and not because nothing but the fallback came out


def test_hot_swap_under_load_loses_no_request_and_the_next_reply_comes_from_the_new_model(
        alice_artifact, bob_artifact):
    async def main():
        async with Engine.load(alice_artifact, batch_window_s=0.005) as engine:
            waves = [asyncio.ensure_future(engine.reply(channel(i), seed=i, target=DISCORD)) for i in range(12)]
            swap = asyncio.ensure_future(engine.swap(bob_artifact))
            waves += [asyncio.ensure_future(engine.reply(channel(i), seed=i, target=DISCORD)) for i in range(12, 24)]
            old = await swap
            waves += [asyncio.ensure_future(engine.reply(channel(i), seed=i, target=DISCORD)) for i in range(24, 30)]
            replies = await asyncio.gather(*waves)
            return old, replies, await engine.reply(TURNS, seed=1, target=DISCORD)

    old, replies, after = run(main())
    assert old.name == "Alice"
    assert len(replies) == 30 and all(r.persona in ("Alice", "Bob") for r in replies)
    assert all(r.artifact in (alice_artifact, bob_artifact) for r in replies)
    assert {r.persona for r in replies[24:]} == {"Bob"}         # asked after the swap: the new model
    assert after.persona == "Bob" and after.artifact == bob_artifact


def test_a_failed_swap_leaves_the_old_persona_serving(alice_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(alice_artifact, broken)
    (broken / "model.safetensors").write_bytes(b"not a model")

    async def main():
        async with Engine.load(alice_artifact) as engine:
            with pytest.raises(SwapError, match="broken"):
                await engine.swap(broken)
            with pytest.raises(SwapError, match="does not exist"):
                await engine.swap(tmp_path / "nothing-here")
            return await engine.reply(TURNS, seed=2, target=DISCORD)

    reply = run(main())
    assert reply.persona == "Alice" and reply.artifact == alice_artifact


def test_a_swap_to_an_artifact_that_loads_but_cannot_generate_fails_and_the_old_one_keeps_serving(
        alice_artifact, tmp_path):
    # A tokenizer that does not match the model: every id is past the model's embeddings. The artifact
    # loads (files, weights and tokenizer are all readable); only generating finds the mismatch.
    import json

    mismatched = tmp_path / "mismatched"
    shutil.copytree(alice_artifact, mismatched)
    tokenizer = json.loads((mismatched / "tokenizer.json").read_text(encoding="utf-8"))
    past = 100_000
    tokenizer["model"]["vocab"] = {token: i + past for token, i in tokenizer["model"]["vocab"].items()}
    for added in tokenizer["added_tokens"]:
        added["id"] += past
    (mismatched / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    assert Persona.load(mismatched).name == "Alice"          # it loads

    async def main():
        async with Engine.load(alice_artifact) as engine:
            with pytest.raises(SwapError, match="mismatched"):
                await engine.swap(mismatched)
            return engine.persona, await engine.reply(TURNS, seed=2, target=DISCORD)

    serving, reply = run(main())
    assert serving.path == alice_artifact
    assert reply.persona == "Alice" and reply.artifact == alice_artifact


def test_the_event_loop_keeps_ticking_while_the_engine_generates_and_swaps(alice_artifact, bob_artifact):
    # No callback on the loop does the generating or the loading (loop_watch says why not wall-clock gaps).
    async def main():
        with LoopWatch() as watch:
            async with Engine.load(alice_artifact) as engine:
                replies = await asyncio.gather(*(engine.reply(channel(i), overrides={"max_new_tokens": 60}, seed=i,
                                                              target=DISCORD)
                                                 for i in range(16)), engine.swap(bob_artifact))
        return watch, replies

    watch, replies = run(main())
    assert len(replies) == 17
    # The loop does a few percent of the process's work; generating on it makes that most of it.
    watch.check(min_callbacks=20, max_loop_share=0.25)


def test_stand_alone_lines_report_what_the_filters_rejected(alice_artifact):
    persona = Persona.load(alice_artifact, blocklist=Blocklist(["classic"]))

    async def main():
        async with Engine(persona) as engine:
            return await engine.lines(8, start="my secret is", seed=5, target=DISCORD)

    lines = run(main())
    assert len(lines) == 8 and all(line.text.startswith("my secret is") for line in lines)
    for line in lines:
        said_nothing = line.text == "my secret is"       # an empty sample: rejected as such, never sent
        assert (line.rejected == "empty") == said_nothing
        assert (line.rejected is not None) == (said_nothing or "classic" in line.text.lower()
                                              or persona.output_filter.reject(line.text) is not None)


def test_a_closed_engine_refuses_new_work(alice_artifact):
    from bot.inference.engine import EngineClosed

    async def main():
        engine = Engine.load(alice_artifact).start()
        await engine.close()
        with pytest.raises(EngineClosed):
            await engine.reply(TURNS, target=DISCORD)

    run(main())


# --- backends --------------------------------------------------------------------------------------------

def test_int8_backend_quantises_gpt2_projections_and_stays_close_to_float32(alice_artifact):
    reference = Persona.load(alice_artifact, backend="torch")
    fast = Persona.load(alice_artifact, backend="torch-int8")
    assert fast.backend.name == "torch-int8"
    layer = fast.backend.model.transformer.h[0]
    assert "quantized" in type(layer.attn.c_attn).__module__      # Conv1D was converted, then quantised
    ids = torch.tensor([reference.prompt(TURNS)])
    with torch.inference_mode():
        a = torch.log_softmax(reference.backend.model(ids).logits[0, -1], -1)
        b = torch.log_softmax(fast.backend.model(ids).logits[0, -1], -1)
    assert torch.equal(a.topk(5).indices, b.topk(5).indices) or (a - b).abs().max() < 0.2


def test_auto_picks_int8_on_a_cpu(alice_artifact):
    from bot.inference.backends import resolve

    assert resolve("auto") == ("torch" if torch.cuda.is_available() else "torch-int8")
    assert Persona.load(alice_artifact).backend.name == resolve("auto")


def test_ctranslate2_backend_converts_once_and_answers_like_the_others(alice_artifact, tmp_path):
    pytest.importorskip("ctranslate2", reason="the optional [fast] extra is not installed")
    copy = tmp_path / "alice"
    shutil.copytree(alice_artifact, copy)
    persona = Persona.load(copy, backend="ctranslate2")
    assert (copy / "ctranslate2-int8" / "model.bin").is_file()
    stamp = (copy / "ctranslate2-int8" / "model.bin").stat().st_mtime_ns

    async def main():
        async with Engine(persona) as engine:
            return await asyncio.gather(*(engine.reply(channel(i), overrides={"max_new_tokens": 5 + i}, seed=i,
                                                       target=DISCORD)
                                          for i in range(4)))

    replies = run(main())
    assert all(r.persona == "Alice" and r.tokens <= 5 + i for i, r in enumerate(replies))
    assert any(r.text and not r.fallback for r in replies)
    Persona.load(copy, backend="ctranslate2")
    assert (copy / "ctranslate2-int8" / "model.bin").stat().st_mtime_ns == stamp   # not converted again
