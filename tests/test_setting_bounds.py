"""Every number setting at each of its bounds: the bot starts (the terminal chat, no DISCORD_TOKEN) on a tiny
persona with a schedule armed and a missed slot to catch up, answers a line and stops cleanly. A bound the
settings check lets through must be one the code that takes the value can take.

The terminal start reads every setting but uses some only elsewhere: the cooldowns, SHARD_COUNT and RETRAIN_*
in Discord, INFERENCE_* with BACKEND=openai, DEMO_TIME_BUDGET in a demo build (tests/test_cli.py builds one
at its minimum)."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.core.config import VARIABLES, ConfigError, Number, example_value, load_settings
from training.generation import MIN_TEMPERATURE

NUMBERS = [var for var in VARIABLES if isinstance(var.read, Number)]

# The GEN_* overrides are bounded by training.generation.GenerationSettings.check (where an artifact's own
# persona.json is checked too), not by their declarations: their edges, each with a value just past it.
GENERATION_EDGES = {
    "GEN_TEMPERATURE": (f"{MIN_TEMPERATURE:g}", f"{MIN_TEMPERATURE * 0.99:g}"), "GEN_TOP_K": ("0", "-1"),
    "GEN_TOP_P": ("1", "1.01"),
    "GEN_REPETITION_PENALTY": ("1", "0.99"), "GEN_NO_REPEAT_NGRAM_SIZE": ("0", "-1"),
    "GEN_MAX_NEW_TOKENS": ("1", "0"), "CONTEXT_TOKENS": ("0", "-1"),
}


def _written(var, bound: float) -> str:
    return example_value(var.read.kind(bound))


def _cases() -> list:
    cases = []
    for var in NUMBERS:
        for bound in (var.minimum, var.maximum):
            if bound is not None:
                cases.append(pytest.param(var.name, _written(var, bound), id=f"{var.name}={_written(var, bound)}"))
        if var.name in GENERATION_EDGES:
            edge = GENERATION_EDGES[var.name][0]
            cases.append(pytest.param(var.name, edge, id=f"{var.name}={edge}"))
    return cases


def test_every_number_setting_is_bounded_here_and_its_bounds_are_where_the_check_says():
    for var in NUMBERS:
        assert var.minimum is not None or var.name in GENERATION_EDGES, f"{var.name}: which values can the code take?"
    for name, (edge, past) in GENERATION_EDGES.items():
        load_settings({name: edge}, dotenv_path=None)
        with pytest.raises(ConfigError):
            load_settings({name: past}, dotenv_path=None)
    for var in NUMBERS:
        if var.minimum is not None:
            below = var.minimum - 1 if var.read.kind is int else var.minimum / 2 if var.minimum > 0 else -1
            with pytest.raises(ConfigError, match=f"{var.name}=.* must be at least"):
                load_settings({var.name: _written(var, below)}, dotenv_path=None)
        if var.maximum is not None:
            with pytest.raises(ConfigError, match=f"{var.name}=.* must be at most"):
                load_settings({var.name: _written(var, var.maximum + 1)}, dotenv_path=None)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999"])
def test_a_number_setting_must_be_finite(text):
    # nan passes every comparison with a bound; inf overflows timedelta, int() and sleeps downstream.
    for var in NUMBERS:
        with pytest.raises(ConfigError, match="is not a"):
            load_settings({var.name: text}, dotenv_path=None)


@pytest.fixture
def torch_threads():
    """The test process's torch threads, put back after a start that set them (TORCH_THREADS)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _seed_a_missed_slot(database: Path) -> None:
    """A nightly schedule whose last run was three days ago: the start catches its latest slot up, or, past
    the grace period, records it as missed."""
    from bot.storage.sqlite import SQLiteStore as Store

    async def seed() -> None:
        async with await Store.open(database) as store:
            schedule = await store.add_schedule("nightly", cron="0 3 * * *", targets=["terminal"], mode="line")
            past = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat()
            await store._execute("UPDATE schedules SET created_at = ?, last_run = ? WHERE id = ?",
                                 (past, past, schedule))

    asyncio.run(seed())


@pytest.mark.parametrize("name, value", _cases())
def test_the_bot_starts_and_stops_cleanly_at_each_bound(name, value, bob_artifact, tmp_path, caplog, torch_threads):
    from bot.runner import StartError, serve

    env = {"PERSONA_MODEL": str(bob_artifact), "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
           "MODELS_DIR": str(tmp_path / "models"), "TRAIN_DATA_DIR": str(tmp_path / "exports"), name: value}
    settings = load_settings(env, dotenv_path=None)
    _seed_a_missed_slot(settings.database_path)
    out = io.StringIO()
    with caplog.at_level(logging.WARNING):
        try:
            code = asyncio.run(serve(settings, stdin=io.StringIO("good morrow\n"), stdout=out))
        except StartError as e:   # port 1 needs root, and a port may be taken: the one clear message, then
            assert name == "METRICS_PORT" and f":{value} " in str(e) and "choose another METRICS_PORT" in str(e)
            return
    assert code == 0
    assert "Bob> " in out.getvalue()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    if name == "POST_GRACE_MINUTES":   # 0 never catches the missed slot up; a year always does
        assert len(asyncio.run(_posts(settings.database_path))) == (0 if value == "0" else 1)


async def _posts(database: Path) -> list:
    from bot.storage.sqlite import SQLiteStore as Store

    async with await Store.open(database) as store:
        return await store.posts()
