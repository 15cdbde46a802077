"""Retraining while serving: a real training child process on a tiny model, progress, swap, cancel, crash,
rejection of a worse model, rollback, and the exclusion of people who asked to be forgotten."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from bot.inference.engine import Engine
from bot.core.filters import DISCORD
from bot.jobs.retrain import PREVIOUS, Retrainer, RetrainError
from bot.storage.sqlite import SQLiteStore as Store

pytestmark = pytest.mark.slow

# Retrains in seconds; without the fidelity report (about 3 s a run) except where a test reads it (MEASURED).
MEASURED = ["--max-steps", "30", "--threads", "1", "--samples", "0", "--batch-size", "4"]
FAST = [*MEASURED, "--fidelity-lines", "0"]


def run(coro):
    return asyncio.run(coro)


async def _setup(alice_artifact: Path, tmp_path: Path, data_dir: Path, **kwargs):
    store = await Store.open(tmp_path / "bot.sqlite3")
    engine = Engine.load(alice_artifact).start()
    retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models",
                          extra_args=kwargs.pop("extra_args", FAST), **kwargs)
    return store, engine, retrainer


def test_a_retrain_shows_progress_swaps_the_model_and_can_be_rolled_back(alice_artifact, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir)
        seen = []

        async def progress(p):
            seen.append((p.phase, p.step, p.total_steps, p.loss))

        result = await retrainer.run(epochs=100, force=True, requested_by=42, on_progress=progress)
        after_swap = await engine.reply([("Bob", "pizza tonight")], target=DISCORD, seed=1)
        runs = await store.runs()
        previous = await store.get_setting(PREVIOUS)
        now, aside = await retrainer.rollback()
        after_rollback = engine.persona.path
        await engine.close()
        await store.close()
        return result, seen, after_swap, runs, previous, now, aside, after_rollback

    result, seen, after_swap, runs, previous, now, aside, after_rollback = run(main())
    assert result.artifact.parent == tmp_path / "models" and (result.artifact / "persona.json").is_file()
    steps = [s for s in seen if s[0] == "training"]
    assert steps and steps[-1][1] == 30 and steps[-1][2] == 30 and steps[-1][3] is not None
    assert after_swap.artifact == result.artifact          # the next reply comes from the new model
    assert runs[0]["status"] == "done" and runs[0]["requested_by"] == 42
    assert previous == str(alice_artifact) and result.previous == alice_artifact
    assert now == alice_artifact and aside == result.artifact and after_rollback == alice_artifact


def test_cancel_and_a_crashed_child_leave_the_current_model_serving(alice_artifact, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _setup(
            alice_artifact, tmp_path, data_dir, extra_args=["--max-steps", "100000", "--threads", "1",
                                                            "--samples", "0", "--batch-size", "4"])
        outcomes = []
        for how in ("cancel", "kill"):
            async def progress(p, how=how):
                if p.phase == "training" and p.step >= 2:
                    if how == "cancel":
                        await retrainer.cancel()
                    elif retrainer._proc is not None and retrainer._proc.returncode is None:
                        os.kill(retrainer._proc.pid, signal.SIGKILL)   # the child dies mid-training

            with pytest.raises(RetrainError) as caught:
                await retrainer.run(epochs=1000, force=True, on_progress=progress)
            reply = await engine.reply([("Bob", "still there?")], target=DISCORD, seed=2)
            outcomes.append((str(caught.value), reply.artifact))
        runs = await store.runs()
        await engine.close()
        await store.close()
        return outcomes, runs

    outcomes, runs = run(main())
    (cancelled, served_1), (crashed, served_2) = outcomes
    assert "cancelled" in cancelled and served_1 == alice_artifact
    assert "training failed" in crashed and served_2 == alice_artifact
    assert [r["status"] for r in runs[:2]] == ["failed", "cancelled"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "models").iterdir())   # nothing half-written left


def test_a_worse_model_is_kept_out_unless_forced_and_bad_data_is_a_clear_refusal(alice_artifact, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir, loss_margin=-100.0)
        with pytest.raises(RetrainError, match="worse than the current"):
            await retrainer.run(epochs=100)
        serving = engine.persona.path
        (data_dir / "chat.txt").write_text("not a chat export at all\n", encoding="utf-8")
        with pytest.raises(RetrainError, match="training failed: .*chat.txt"):
            await retrainer.run(epochs=100)
        (data_dir / "chat.txt").unlink()
        with pytest.raises(RetrainError, match="no exports"):
            await retrainer.run()
        await engine.close()
        await store.close()
        return serving

    assert run(main()) == alice_artifact


def test_one_retrain_at_a_time(alice_artifact, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir)
        first = asyncio.ensure_future(retrainer.run(epochs=100, force=True))
        await asyncio.sleep(0.2)
        with pytest.raises(RetrainError, match="already running"):
            await retrainer.run()
        await retrainer.cancel()
        with pytest.raises(RetrainError):
            await first
        await engine.close()
        await store.close()

    run(main())


def test_forgotten_people_are_excluded_from_the_next_training(alice_artifact, tmp_path, data_dir):
    from training.artifact import read_training_text

    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir)
        await store.forget_user(7, "Carol")
        result = await retrainer.run(epochs=100, force=True)
        await engine.close()
        await store.close()
        return result

    result = run(main())
    texts = [row["text"] for row in read_training_text(result.artifact)]
    carol_lines = [t for t in (data_dir / "chat.txt").read_text().splitlines() if " - Carol: " in t]
    assert carol_lines and texts
    assert not any(line.split(" - Carol: ", 1)[1] in texts for line in carol_lines)


def test_stored_channel_messages_become_training_data_when_enabled(alice_artifact, tmp_path, data_dir):
    from training.artifact import read_training_text

    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir, include_logged=True)
        # Five days of talk (five conversations), so that some can be held out for validation.
        lines = [f"dana says number {i} about the lighthouse" for i in range(30)]
        for i, line in enumerate(lines):
            await store.add_message(channel_id=5, author_id=11, author_name="Dana", content=line,
                                    created_at=f"2024-05-{i // 6 + 1:02d}T10:{i:02d}:00+00:00")
            await store.add_message(channel_id=5, author_id=12, author_name="Eli", content=f"and then {i}?",
                                    created_at=f"2024-05-{i // 6 + 1:02d}T10:{i:02d}:20+00:00")
            await store.add_message(channel_id=5, author_id=1, author_name="Alice", is_bot=True,
                                    content=f"bot line {i}", created_at=f"2024-05-{i // 6 + 1:02d}T10:{i:02d}:40+00:00")
        result = await retrainer.run(speaker="Dana", epochs=100, force=True)
        await engine.close()
        await store.close()
        return lines, result

    lines, result = run(main())
    texts = {row["text"] for row in read_training_text(result.artifact)}
    assert set(lines) <= texts                                   # Dana's stored lines were learnt from
    assert json.loads((result.artifact / "persona.json").read_text())["speaker"] == "Dana"
    assert not any(t.startswith("bot line") for t in texts)      # the bot's own lines were not
    assert not any(p.name.startswith(".logged") for p in (tmp_path / "models").iterdir())


def test_progress_events_read_back_what_the_child_wrote():
    """The JSON progress lines are a contract: what `Progress` writes, `ProgressState` reads."""
    import io

    from training.progress import Progress, ProgressState

    out = io.StringIO()
    child = Progress("json", stream=out)
    child.phase("reading exports", "chat.txt")
    child.start(total_steps=40)
    child.step(12, loss=2.5, lr=1e-4)
    child.evaluation(12, val_loss=2.75, best=True)
    state = ProgressState()
    seen = [state.read_line(line) for line in ["not json", "[1, 2]", *out.getvalue().splitlines()]]
    assert seen == [False, False, True, True, True, True]
    assert (state.phase, state.step, state.total_steps, state.loss, state.val_loss) == ("training", 12, 40, 2.5, 2.75)
    assert state.eta_s is not None and not state.done
    child.done(out="x")
    state.read_line(out.getvalue().splitlines()[-1])
    assert state.done


def test_a_model_whose_lines_pass_for_the_person_less_often_is_kept_out_unless_forced(alice_artifact, tmp_path,
                                                                                     data_dir):
    """The fidelity margin (RETRAIN_FIDELITY_MARGIN), with the loss out of the way: at -1 any new model's
    attribution counts as too low; forced, it is swapped in anyway; and an artifact older than fidelity
    reports (none in its persona.json) is not compared."""
    import shutil

    from training.artifact import read_persona

    assert read_persona(alice_artifact).fidelity is not None
    older = tmp_path / "older-alice"
    shutil.copytree(alice_artifact, older)
    persona = json.loads((older / "persona.json").read_text())
    persona["fidelity"] = None
    (older / "persona.json").write_text(json.dumps(persona))
    (tmp_path / "older").mkdir()

    async def main():
        store, engine, retrainer = await _setup(alice_artifact, tmp_path, data_dir, loss_margin=100.0,
                                                fidelity_margin=-1.0, extra_args=MEASURED)
        with pytest.raises(RetrainError) as refused:
            await retrainer.run(epochs=100)
        kept = engine.persona.path
        forced = await retrainer.run(epochs=100, force=True)
        await engine.close()
        await store.close()
        store, engine, retrainer = await _setup(older, tmp_path / "older", data_dir, loss_margin=100.0,
                                                fidelity_margin=-1.0, extra_args=MEASURED)
        unmeasured = await retrainer.run(epochs=100)          # nothing to compare with: swapped
        serving = engine.persona.path
        await engine.close()
        await store.close()
        return str(refused.value), kept, forced.artifact, unmeasured.artifact, serving

    message, kept, forced, unmeasured, serving = run(main())
    assert "the new model's lines are taken for Alice in " in message and "RETRAIN_FIDELITY_MARGIN" in message
    assert kept == alice_artifact and forced != alice_artifact and serving == unmeasured != older
