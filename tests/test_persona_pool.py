"""Several personas in one engine: registered personas load on demand within a memory budget (least recently
used out first, never one in use), LoRA personas of one base share that base and run in one batch with each
row through its own adapter, and a reply as a persona is prompted under the name its model was trained on.
Real tiny models and real adapters throughout."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from bot.inference.backends import AdapterBackend, SharedBases, model_bytes
from bot.inference.engine import Engine, SwapError, _as_trained
from bot.core.filters import TERMINAL, OutputFilter
from bot.inference.persona import Persona
from bot.core.personas import PersonaRef

pytestmark = pytest.mark.slow

TURNS = [("Bob", "pizza tonight?"), ("Carol", "who is coming")]


def ref(path: Path, name: str | None = None, **generation) -> PersonaRef:
    return PersonaRef(path, name or path.name.title(), tuple(sorted(generation.items())))


async def _engine(default: Path, *, backend: str, budget_mb: float = 2048) -> Engine:
    """A greedy engine. The leak guard is off (these tiny personas say their training lines, and these tests
    look at who answers, not at the filters, tested in test_engine.py): for the bot's persona here, and for
    registered ones by `_load` below."""
    engine = Engine.load(default, backend=backend, generation={"top_k": 1}, persona_memory_mb=budget_mb,
                         batch_window_s=0.2)
    engine.persona.output_filter = OutputFilter()
    load = engine.pool._load

    def unguarded(*args, **kwargs) -> Persona:
        persona = load(*args, **kwargs)
        persona.output_filter = OutputFilter()
        return persona

    engine.pool._load = unguarded
    return engine.start()


def _greedy_alone(path: Path, backend: str) -> str:
    """What the persona at `path` says after TURNS, greedy, loaded on its own (adapter merged into its base)."""
    persona = Persona.load(path, backend=backend, top_k=1)
    settings = persona.settings
    return persona.text(persona.generate([persona.prompt(TURNS, settings)], [settings], [0])[0])


def test_lora_personas_of_one_base_share_it_and_answer_in_one_batch_as_each_alone(lora_personas, alice_artifact):
    """Three adapters in one batch: each row gets exactly what its persona says alone, the base is loaded
    once, and the batch ran as one group (one pass over the base)."""
    refs = [ref(path) for path in lora_personas.values()]
    alone = [_greedy_alone(r.artifact, "torch") for r in refs]

    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        passes = []
        for persona_ref in refs:   # load them first, so that the three requests arrive in one window
            await engine.load_persona(persona_ref)
        shared = [engine.pool._loaded[r.key].persona.backend for r in refs]
        tokenizers = {id(engine.pool._loaded[r.key].persona.tokenizer) for r in refs}
        original = shared[0].shared.generate
        shared[0].shared.generate = lambda *a, **k: passes.append(k["adapters"]) or original(*a, **k)
        try:
            replies = await asyncio.gather(*(engine.reply(TURNS, target=TERMINAL, persona=r, seed=0,
                                                          overrides={"top_k": 1}) for r in refs))
        finally:
            await engine.close()
        return replies, shared, passes, tokenizers

    replies, backends, passes, tokenizers = asyncio.run(main())
    assert all(isinstance(b, AdapterBackend) for b in backends)
    assert len({id(b.shared) for b in backends}) == 1                 # one base for the three
    assert tokenizers == {id(backends[0].shared.tokenizer)}          # and its one tokenizer
    assert len(set(passes[0])) == 3                  # one pass, three adapters in it (then resampled empties)
    assert [r.persona for r in replies] == [r.name for r in refs]
    # Each persona's own words, not another's and not the base's: as each says alone (empty alone: the
    # engine's fallback after its tries).
    assert [("" if r.fallback else r.text) for r in replies] == [OutputFilter().finish(t, TERMINAL) for t in alone]
    assert len(set(alone)) > 1                                        # the three adapters really differ


def test_int8_shared_base_serves_adapters_and_counts_memory_once(lora_personas, alice_artifact, tiny_base):
    refs = [ref(p) for p in lora_personas.values()]

    async def main():
        engine = await _engine(alice_artifact, backend="torch-int8")
        try:
            replies = await asyncio.gather(*(engine.reply(TURNS, target=TERMINAL, persona=r, seed=1) for r in refs))
            return replies, engine.pool.memory_bytes, engine.pool.bases.memory_bytes, engine.pool.loaded()
        finally:
            await engine.close()

    replies, total, base_bytes, loaded = asyncio.run(main())
    assert [r.persona for r in replies] == [r.name for r in refs] and all(r.tries >= 1 for r in replies)
    assert sorted(path for path, _ in loaded) == sorted(r.artifact for r in refs)
    assert all(leases == 0 for _, leases in loaded)
    from transformers import AutoModelForCausalLM

    full = model_bytes(AutoModelForCausalLM.from_pretrained(tiny_base))
    assert base_bytes < full                          # part of it int8
    adapters = total - base_bytes
    assert 0 < adapters < full / 4                    # three adapters: a small fraction of one model
    assert total < 1.3 * full


def test_the_budget_unloads_the_least_recently_used_persona_and_never_one_in_use(alice_artifact, bob_artifact,
                                                                                  tmp_path):
    carol = tmp_path / "carol"
    shutil.copytree(bob_artifact, carol)   # a third whole model (a copy: its own artifact, its own load)
    size_mb = model_bytes(Persona.load(alice_artifact, backend="torch").backend.model) / 2**20

    async def main():
        # Room for two of the three whole models.
        engine = await _engine(alice_artifact, backend="torch", budget_mb=size_mb * 2.5)
        a, b, c = ref(alice_artifact, "Ally"), ref(bob_artifact), ref(carol)
        try:
            await engine.reply(TURNS, target=TERMINAL, persona=a)
            await engine.reply(TURNS, target=TERMINAL, persona=b)
            await engine.reply(TURNS, target=TERMINAL, persona=a)     # a is now the more recently used
            first = [p for p, _ in engine.pool.loaded()]
            await engine.reply(TURNS, target=TERMINAL, persona=c)     # b goes
            second = [p for p, _ in engine.pool.loaded()]
            # While c is held by a request, loading b again may unload only a, never c.
            async with engine._leased(c):
                await engine.reply(TURNS, target=TERMINAL, persona=b)
                third = [p for p, _ in engine.pool.loaded()]
            return first, second, third, engine.pool.loads, engine.pool.unloads
        finally:
            await engine.close()

    first, second, third, loads, unloads = asyncio.run(main())
    assert first == [bob_artifact, alice_artifact]
    assert second == [alice_artifact, carol]
    assert third == [carol, bob_artifact]
    assert (loads, unloads) == (4, 2)


def test_a_persona_that_does_not_load_is_refused_and_leaves_nothing_loaded(alice_artifact, lora_personas, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(lora_personas["bob"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    info = json.loads((broken / "persona.json").read_text())
    gone_base = tmp_path / "no-base"
    shutil.copytree(lora_personas["carol"], gone_base)
    (gone_base / "persona.json").write_text(json.dumps({**info, "base": str(tmp_path / "moved")}))

    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        try:
            errors = []
            for bad in (broken, gone_base):
                with pytest.raises(SwapError) as caught:
                    await engine.load_persona(ref(bad))
                errors.append(str(caught.value))
            with pytest.raises(Exception, match="damaged"):
                await engine.reply(TURNS, target=TERMINAL, persona=ref(broken))
            good = await engine.reply(TURNS, target=TERMINAL, persona=ref(lora_personas["alice"]))
            own = await engine.reply(TURNS, target=TERMINAL)
            return errors, engine.pool.loaded(), engine.pool.bases.memory_bytes, good, own
        finally:
            await engine.close()

    errors, loaded, _, good, own = asyncio.run(main())
    assert "adapter_model.safetensors is damaged" in errors[0]
    assert "moved" in errors[1] and "does not exist" in errors[1] and "persona.json" in errors[1]
    assert [p for p, _ in loaded] == [lora_personas["alice"]]     # only the good one is loaded
    assert good.persona == "Alice" and own.persona == "Alice" and own.artifact == alice_artifact


def test_the_base_goes_with_its_last_adapter(lora_personas, alice_artifact):
    refs = [ref(p) for p in lora_personas.values()]

    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        try:
            for r in refs:
                await engine.load_persona(r)
            bases = engine.pool.bases
            before = bases.memory_bytes
            assert await engine.forget(refs[0].artifact) == 1
            middle = bases.memory_bytes
            for r in refs[1:]:
                await engine.forget(r.artifact)
            return before, middle, bases.memory_bytes, engine.pool.loaded()
        finally:
            await engine.close()

    before, middle, after, loaded = asyncio.run(main())
    assert before == middle > 0 and after == 0 and loaded == []


def test_a_persona_registered_under_another_name_is_prompted_as_its_speaker(alice_artifact, monkeypatch):
    turns = [("Bob", "hi"), ("Ally", "hello Bob"), ("Bob", "pizza?")]
    assert _as_trained(turns, "Ally", "Alice") == [("Bob", "hi"), ("Alice", "hello Bob"), ("Bob", "pizza?")]
    assert _as_trained(turns, None, "Alice") is turns

    from training import transcript

    seen = []
    original = transcript.build_prompt
    monkeypatch.setattr(transcript, "build_prompt",
                        lambda tokenizer, t, name, budget: seen.append((list(t), name)) or original(tokenizer, t, name, budget))

    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        try:
            reply = await engine.reply(turns, target=TERMINAL, persona=ref(alice_artifact, "Ally"))
            return reply, seen
        finally:
            await engine.close()

    reply, seen = asyncio.run(main())
    assert reply.persona == "Ally"
    assert seen == [([("Bob", "hi"), ("Alice", "hello Bob"), ("Bob", "pizza?")], "Alice")]


def test_the_bots_own_persona_and_registered_ones_share_a_batch(alice_artifact, lora_personas):
    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        try:
            carol = ref(lora_personas["carol"])
            await engine.load_persona(carol)
            replies = await asyncio.gather(engine.reply(TURNS, target=TERMINAL),
                                           engine.reply(TURNS, target=TERMINAL, persona=carol),
                                           engine.lines(2, target=TERMINAL, persona=carol))
            return replies, engine.largest_batch
        finally:
            await engine.close()

    (own, carol, lines), largest = asyncio.run(main())
    assert own.persona == "Alice" and own.artifact == alice_artifact
    assert carol.persona == "Carol" and carol.artifact == lora_personas["carol"]
    assert len(lines) == 2
    assert largest == 4        # four rows (two groups: the bot's model, Carol's base) in one batch


def test_shared_bases_refuse_an_adapter_of_another_shape(lora_personas, tmp_path):
    """An adapter whose tensors do not fit the base named in its persona.json is refused by name."""
    from safetensors.torch import load_file, save_file

    from training.artifact import ArtifactError, read_persona

    odd = tmp_path / "odd"
    shutil.copytree(lora_personas["bob"], odd)
    tensors = load_file(odd / "adapter_model.safetensors")
    key = next(iter(tensors))
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, odd / "adapter_model.safetensors")
    bases = SharedBases()
    with pytest.raises(ArtifactError, match="does not fit the base"):
        bases.adapter_backend(read_persona(odd), "torch")
    assert bases.memory_bytes == 0


def test_metrics_show_the_personas_loaded_and_their_memory(alice_artifact, lora_personas):
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from bot.adapters.metrics import Metrics

    def read(metrics: Metrics) -> dict[str, float]:
        text = generate_latest(metrics.registry).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name.startswith("personabot_persona")}

    async def main():
        engine = await _engine(alice_artifact, backend="torch")
        metrics = Metrics().watch(engine=engine)
        try:
            before = read(metrics)
            for path in list(lora_personas.values())[:2]:
                await engine.load_persona(ref(path))
            return before, read(metrics), engine.pool.memory_bytes
        finally:
            await engine.close()

    before, after, counted = asyncio.run(main())
    assert before == {"personabot_personas_loaded": 0, "personabot_persona_memory_bytes": 0}
    assert after == {"personabot_personas_loaded": 2, "personabot_persona_memory_bytes": counted} and counted > 0


def test_an_int8_shared_base_runs_each_adapter_close_to_that_persona_in_float(lora_personas):
    """Mixed rows on the int8 base: each row's next-token scores are near its own persona's (merged, float),
    far nearer than to another persona's: the adapters are applied to their own rows only."""
    import torch

    from training.artifact import load_model, read_persona

    infos = [read_persona(p) for p in lora_personas.values()]
    bases = SharedBases()
    backends = [bases.adapter_backend(info, "torch-int8")[0] for info in infos]
    shared = backends[0].shared
    ids = torch.tensor([shared.tokenizer.encode("Bob: pizza tonight?\nCarol: who is coming\nAlice:")] * 3)
    with torch.no_grad():
        mixed = shared.model(input_ids=ids, adapter_names=[b.adapter for b in backends]).logits
        alone = [load_model(info)[0](input_ids=ids[:1]).logits[0] for info in infos]
    for row in range(3):
        own = (mixed[row] - alone[row]).abs().max()
        other = (mixed[row] - alone[(row + 1) % 3]).abs().max()
        assert own < other / 5, (row, own, other)
    wrapped = [m for n, m in shared.model.named_modules() if n.endswith("c_attn.base_layer.layer")]
    assert len(wrapped) == 2 and all(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in wrapped)


def _copies(artifact: Path, where: Path, n: int) -> list[Path]:
    """`n` copies of an artifact: as many personas, each its own artifact and its own load."""
    return [Path(shutil.copytree(artifact, where / f"copy{i}")) for i in range(n)]


def test_personas_asked_for_at_once_all_load_and_later_loads_still_work(alice_artifact, bob_artifact, tmp_path):
    """Eight personas nobody has loaded yet, asked for at the same moment (eight channels' first messages),
    twice over: every one loads and answers, and afterwards a plain load in the process still builds a sound
    model. transformers' from_pretrained swaps process-wide functions while it loads; overlapping loads used to
    leave `tie_weights` a no-op for good (every later model with an untied, random LM head, or on meta)."""
    from transformers import PreTrainedModel

    from training.artifact import load_model, read_persona

    tie_weights, init_weights = PreTrainedModel.tie_weights, PreTrainedModel.init_weights
    copies = _copies(alice_artifact, tmp_path, 8)

    async def main():
        engine = await _engine(bob_artifact, backend="torch")
        try:
            rounds = []
            for _ in range(3):
                rounds.append(await asyncio.gather(
                    *(engine.reply(TURNS, target=TERMINAL, persona=ref(c, f"P{i}"), seed=0)
                      for i, c in enumerate(copies)), return_exceptions=True))
                for c in copies:
                    await engine.forget(c)
            return rounds
        finally:
            await engine.close()

    rounds = asyncio.run(main())
    failures = [r for replies in rounds for r in replies if isinstance(r, BaseException)]
    assert not failures, failures[:2]
    assert PreTrainedModel.tie_weights is tie_weights and PreTrainedModel.init_weights is init_weights
    model, _ = load_model(read_persona(alice_artifact))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()   # tied, as trained


def _count_alive(engine: Engine) -> dict[str, int]:
    """Count the models the pool holds in this process at once (loaded and not yet released), at the peak."""
    pool, count = engine.pool, {"alive": 0, "peak": 0}
    load, release = pool._load, pool._release

    def counted_load(*args, **kwargs):
        persona = load(*args, **kwargs)
        count["alive"] += 1
        count["peak"] = max(count["peak"], count["alive"])
        return persona

    def counted_release(persona):
        count["alive"] -= 1
        release(persona)

    pool._load, pool._release = counted_load, counted_release
    return count


def test_loads_at_once_make_room_first_and_stay_within_the_budget(alice_artifact, bob_artifact, tmp_path):
    """Eight personas asked for at once with room for two and a half: each load makes room before it starts
    (by its size on disk), so no more than two are ever held; before, all eight were loaded side by side and
    the budget was only enforced afterwards."""
    copies = _copies(alice_artifact, tmp_path, 8)
    size_mb = model_bytes(Persona.load(alice_artifact, backend="torch").backend.model) / 2**20

    async def main():
        engine = await _engine(bob_artifact, backend="torch", budget_mb=size_mb * 2.5)
        count = _count_alive(engine)
        try:
            results = await asyncio.gather(*(engine.load_persona(ref(c, f"P{i}")) for i, c in enumerate(copies)),
                                           return_exceptions=True)
            return results, count["peak"], engine.pool.memory_bytes
        finally:
            await engine.close()

    results, peak, held = asyncio.run(main())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert peak <= 2, peak
    assert held <= size_mb * 2.5 * 2**20


def test_one_servers_loads_never_push_out_another_servers_persona_within_its_share(alice_artifact, bob_artifact,
                                                                                   tmp_path):
    """Room for two and a half models, two servers: server B's one persona is within its fair share (half the
    budget), so server A's three personas, loaded one after another, push out A's own least recently used
    instead of B's."""
    a1, a2, a3, b1 = _copies(alice_artifact, tmp_path, 4)
    size_mb = model_bytes(Persona.load(alice_artifact, backend="torch").backend.model) / 2**20

    def guild(path: Path, owner: int) -> PersonaRef:
        return PersonaRef(path, path.name.title(), owner=owner)

    async def main():
        engine = await _engine(bob_artifact, backend="torch", budget_mb=size_mb * 2.5)
        try:
            await engine.load_persona(guild(b1, 2))
            for path in (a1, a2, a3):
                await engine.load_persona(guild(path, 1))
            return [p for p, _ in engine.pool.loaded()]
        finally:
            await engine.close()

    assert asyncio.run(main()) == [b1, a3]
