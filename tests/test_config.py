"""Settings: `.env.example` says exactly what `bot.core.config.VARIABLES` declares, defaults included, and the
loader reads every declaration into `Settings` by name."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from bot.core.config import VARIABLES, Settings, example_value, load_settings
from bot.core.posts import PostTarget

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def _example() -> dict[str, str]:
    found = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def test_env_example_names_every_declared_variable_with_its_default_and_nothing_else():
    example = _example()
    declared = {var.name: example_value(var.default) for var in VARIABLES}
    assert sorted(set(example) - set(declared)) == []           # nothing in the example is undeclared
    assert sorted(set(declared) - set(example)) == []           # every declared variable is in the example
    assert {name: example[name] for name in declared} == declared


def test_the_example_read_as_an_environment_gives_the_defaults():
    defaults = load_settings({}, dotenv_path=None)
    assert load_settings(_example(), dotenv_path=None) == defaults
    assert defaults.post_targets == (PostTarget("terminal"),) and defaults.post_mode == "confession"
    assert defaults.generation == {} and defaults.twitter_keys is None and defaults.persona_model is None


def test_each_declaration_has_help_and_fills_a_settings_field():
    names = {f.name for f in fields(Settings)}
    assert all(var.help for var in VARIABLES)
    assert {var.group or var.field for var in VARIABLES} == names
    assert len({var.name for var in VARIABLES}) == len(VARIABLES)


def test_problems_are_reported_under_their_variable():
    import pytest

    from bot.core.config import ConfigError

    with pytest.raises(ConfigError) as error:
        load_settings({"GEN_TEMPERATURE": "hot", "TORCH_THREADS": "0", "MESSAGE_CONTENT": "Maybe",
                       "POST_MODE": "poem", "TWITTER_ACCESS_TOKEN": "x"}, dotenv_path=None)
    assert error.value.problems == [
        "TORCH_THREADS=0 must be at least 1", "GEN_TEMPERATURE='hot' is not a number",
        "MESSAGE_CONTENT='maybe' must be true or false", "POST_MODE='poem' must be confession or line",
        "Twitter needs all four keys; missing: TWITTER_CONSUMER_KEY, TWITTER_CONSUMER_SECRET, "
        "TWITTER_ACCESS_TOKEN_SECRET"]
    keys = {"TWITTER_CONSUMER_KEY": "a", "TWITTER_CONSUMER_SECRET": "b", "TWITTER_ACCESS_TOKEN": "c",
            "TWITTER_ACCESS_TOKEN_SECRET": "d", "GEN_TOP_K": "5", "ADMIN_USER_IDS": "1 2"}
    settings = load_settings(keys, dotenv_path=None)
    assert settings.twitter_keys == ("a", "b", "c", "d") and settings.generation == {"top_k": 5}
    assert settings.admin_user_ids == {1, 2} and "'a'" not in repr(settings)


def test_settings_that_only_make_sense_together_are_checked_together():
    import pytest

    from bot.core.config import ConfigError

    with pytest.raises(ConfigError) as error:
        load_settings({"BACKEND": "openai", "SHARD_IDS": "0,1"}, dotenv_path=None)
    assert error.value.problems == [
        "BACKEND=openai needs INFERENCE_URL (the server's address, e.g. http://gpu-box:8000/v1)",
        "SHARD_IDS needs SHARD_COUNT (the number of shards all processes run together)"]
    with pytest.raises(ConfigError) as error:
        load_settings({"SHARD_COUNT": "2", "SHARD_IDS": "1, 2", "INFERENCE_URL": "gpu-box:8000",
                       "METRICS_PORT": "70000"}, dotenv_path=None)
    assert error.value.problems == [
        "INFERENCE_URL='gpu-box:8000' must be an http:// or https:// address, e.g. http://gpu-box:8000/v1",
        "METRICS_PORT=70000 must be at most 65535",
        "SHARD_IDS: shard 2 does not exist with SHARD_COUNT=2 (shards are numbered 0 to 1)"]
    ok = load_settings({"BACKEND": "openai", "INFERENCE_URL": "http://127.0.0.1:8000/v1", "INFERENCE_API_KEY": "sk-1",
                        "SHARD_COUNT": "4", "SHARD_IDS": "3,1", "RUN_JOBS": "false"}, dotenv_path=None)
    assert (ok.backend, ok.shard_ids, ok.run_jobs) == ("openai", (1, 3), False)
    assert "sk-1" not in repr(ok)                                   # the key is never printed
