"""Settings from the environment and `.env`, checked at start with one clear message per problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DEMO_DIR = Path("models/demo")
# Where scheduled posts can go: "twitter", "terminal", or "discord:<channel id>".
POST_TARGET_HELP = "twitter, terminal or discord:<channel id>"


def discord_channel_id(target: str) -> int | None:
    """The channel id of a `discord:<channel id>` post target, else None (ASCII digits only: `str.isdigit`
    also accepts superscripts, which `int` refuses)."""
    digits = target[8:] if target.startswith("discord:") else ""
    return int(digits) if digits.isascii() and digits.isdigit() else None


def is_post_target(name: str) -> bool:
    return name in ("twitter", "terminal") or discord_channel_id(name) is not None


# Generation backends (bot.backends); "auto" picks the fastest on this machine.
BACKENDS = ("auto", "torch", "torch-int8", "ctranslate2")


class ConfigError(Exception):
    """One or more settings are wrong; the message lists each problem on its own line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("configuration problems:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Settings:
    persona_model: Path | None          # PERSONA_MODEL: artifact directory; unset means the demo persona
    demo_dir: Path                      # DEMO_DIR: where the demo persona is built when needed
    demo_time_budget_s: float           # DEMO_TIME_BUDGET: seconds of training for the demo persona
    discord_token: str | None = field(repr=False)  # DISCORD_TOKEN: never printed
    chat_user_name: str = "You"         # CHAT_USER_NAME: your name in the terminal chat
    torch_threads: int | None = None    # TORCH_THREADS: CPU threads for generation (default: half the cores)
    generation: dict[str, Any] = field(default_factory=dict)  # GEN_*: overrides of persona.json defaults
    backend: str = "auto"               # BACKEND: auto, torch, torch-int8 or ctranslate2
    blocklist_file: Path | None = None  # BLOCKLIST_FILE: words or re:patterns the bot must never send
    leak_ngram_words: int = 8           # LEAK_NGRAM_WORDS: a run this long shared with training text is a leak
    max_batch: int = 8                  # MAX_BATCH: requests generated together at most
    # --- the Discord bot ---
    database_path: Path = Path("data/personabot.sqlite3")  # DATABASE_PATH: the SQLite store
    train_data_dir: Path = Path("data/exports")  # TRAIN_DATA_DIR: exports that /retrain trains on
    models_dir: Path = Path("models")   # MODELS_DIR: where /retrain writes new artifacts
    admin_user_ids: frozenset[int] = frozenset()  # ADMIN_USER_IDS: the bot's owners (global powers)
    admin_role_ids: frozenset[int] = frozenset()  # ADMIN_ROLE_IDS: admins of their own server only
    message_content: bool = True        # MESSAGE_CONTENT: read channel messages for context (privileged intent)
    reply_in_dms: bool = False          # REPLY_IN_DMS: answer direct messages
    user_cooldown_s: float = 10.0       # USER_COOLDOWN: seconds between two replies to one person
    channel_cooldown_s: float = 3.0     # CHANNEL_COOLDOWN: seconds between two replies in one channel
    retention_days: float = 30.0        # MESSAGE_RETENTION_DAYS: stored channel messages are deleted after
    retrain_loss_margin: float = 0.05   # RETRAIN_LOSS_MARGIN: how much worse a retrained model may validate
    log_messages_for_training: bool = False  # LOG_MESSAGES_FOR_TRAINING: /retrain learns from stored messages
    max_upload_mb: float = 25.0         # RETRAIN_MAX_UPLOAD_MB: largest export attached to /retrain start
    # --- scheduled posts ---
    post_schedule: str | None = None    # POST_SCHEDULE: a crontab line ("0 20 * * *"), seeds the first schedule
    post_timezone: str = "UTC"          # POST_TIMEZONE: the schedule's time zone
    post_targets: tuple[str, ...] = ("terminal",)  # POST_TARGETS: twitter, discord:<channel id>, terminal
    post_mode: str = "confession"       # POST_MODE: confession (seeded line) or line
    post_grace_minutes: float = 60.0    # POST_GRACE_MINUTES: a slot missed longer ago is not caught up
    twitter_keys: tuple[str, str, str, str] | None = field(default=None, repr=False)  # TWITTER_*: never printed

    @property
    def model_dir(self) -> Path:
        return self.persona_model or self.demo_dir


_GENERATION_VARS = {
    "GEN_TEMPERATURE": ("temperature", float), "GEN_TOP_K": ("top_k", int), "GEN_TOP_P": ("top_p", float),
    "GEN_REPETITION_PENALTY": ("repetition_penalty", float),
    "GEN_NO_REPEAT_NGRAM_SIZE": ("no_repeat_ngram_size", int), "GEN_MAX_NEW_TOKENS": ("max_new_tokens", int),
    "CONTEXT_TOKENS": ("context_tokens", int),
}


def load_settings(env: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Settings:
    """Settings from `env` (default: the process environment after reading `.env`, which never overrides
    variables already set). Raises `ConfigError` listing every problem."""
    if env is None:
        if dotenv_path is not None and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            load_dotenv(dotenv_path, override=False)
        env = os.environ
    problems: list[str] = []

    def number(name: str, kind: type, default: Any, minimum: float | None = None) -> Any:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} is not {'a whole number' if kind is int else 'a number'}")
            return default
        if minimum is not None and value < minimum:
            problems.append(f"{name}={raw} must be at least {minimum}")
            return default
        return value

    model = env.get("PERSONA_MODEL", "").strip()
    persona_model = Path(model).expanduser() if model else None
    if persona_model is not None and persona_model.exists() and not persona_model.is_dir():
        problems.append(f"PERSONA_MODEL={model} is a file; it must name an artifact directory")
    demo_dir = Path(env.get("DEMO_DIR", "").strip() or DEFAULT_DEMO_DIR).expanduser()
    budget = number("DEMO_TIME_BUDGET", float, 200.0, minimum=10)
    threads = number("TORCH_THREADS", int, None, minimum=1)
    token = env.get("DISCORD_TOKEN", "").strip() or None
    user = env.get("CHAT_USER_NAME", "").strip() or "You"
    from training.generation import GenerationSettings

    generation = {}
    for var, (key, kind) in _GENERATION_VARS.items():
        value = number(var, kind, None)
        if value is None:
            continue
        # Checked alone, so that each problem is reported under the variable that causes it.
        wrong = GenerationSettings().with_overrides(**{key: value}).check()
        problems.extend(f"{var}: {p}" for p in wrong)
        if not wrong:
            generation[key] = value
    backend = env.get("BACKEND", "").strip() or "auto"
    if backend not in BACKENDS:
        problems.append(f"BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    blocklist = env.get("BLOCKLIST_FILE", "").strip()
    blocklist_file = Path(blocklist).expanduser() if blocklist else None
    if blocklist_file is not None and not blocklist_file.is_file():
        problems.append(f"BLOCKLIST_FILE={blocklist} does not exist (or is not a file)")
    elif blocklist_file is not None:
        from bot.filters import Blocklist

        try:
            Blocklist.from_file(blocklist_file)
        except ValueError as e:
            problems.append(f"BLOCKLIST_FILE: {e}")
    leak_words = number("LEAK_NGRAM_WORDS", int, 8, minimum=2)
    max_batch = number("MAX_BATCH", int, 8, minimum=1)

    def path(name: str, default: str) -> Path:
        return Path(env.get(name, "").strip() or default).expanduser()

    def ids(name: str) -> frozenset[int]:
        raw = [part.strip() for part in env.get(name, "").replace(" ", ",").split(",") if part.strip()]
        good = [part for part in raw if part.isascii() and part.isdigit()]   # isdigit alone takes "²"
        bad = [part for part in raw if part not in good]
        if bad:
            problems.append(f"{name}: {', '.join(bad)} not a Discord id (ids are numbers; enable Developer Mode "
                            "in Discord, then right-click a user or role and Copy ID)")
        return frozenset(int(part) for part in good)

    def flag(name: str, default: bool) -> bool:
        raw = env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        problems.append(f"{name}={raw!r} must be true or false")
        return default

    database = path("DATABASE_PATH", "data/personabot.sqlite3")
    if database.is_dir():
        problems.append(f"DATABASE_PATH={database} is a directory; it must name a file")
    bot_settings = dict(
        database_path=database, train_data_dir=path("TRAIN_DATA_DIR", "data/exports"),
        models_dir=path("MODELS_DIR", "models"), admin_user_ids=ids("ADMIN_USER_IDS"),
        admin_role_ids=ids("ADMIN_ROLE_IDS"), message_content=flag("MESSAGE_CONTENT", True),
        reply_in_dms=flag("REPLY_IN_DMS", False), user_cooldown_s=number("USER_COOLDOWN", float, 10.0, minimum=0),
        channel_cooldown_s=number("CHANNEL_COOLDOWN", float, 3.0, minimum=0),
        retention_days=number("MESSAGE_RETENTION_DAYS", float, 30.0, minimum=0),
        retrain_loss_margin=number("RETRAIN_LOSS_MARGIN", float, 0.05, minimum=0),
        log_messages_for_training=flag("LOG_MESSAGES_FOR_TRAINING", False),
        max_upload_mb=number("RETRAIN_MAX_UPLOAD_MB", float, 25.0, minimum=0.001),
        **_post_settings(env, problems, number))
    if problems:
        raise ConfigError(problems)
    return Settings(persona_model, demo_dir, budget, token, user, threads, generation, backend,
                    blocklist_file, leak_words, max_batch, **bot_settings)


_TWITTER_VARS = ("TWITTER_CONSUMER_KEY", "TWITTER_CONSUMER_SECRET", "TWITTER_ACCESS_TOKEN",
                 "TWITTER_ACCESS_TOKEN_SECRET")


def _post_settings(env: Mapping[str, str], problems: list[str], number) -> dict[str, Any]:
    """POST_* and TWITTER_* settings, each problem added to `problems`."""
    schedule = env.get("POST_SCHEDULE", "").strip() or None
    tz = env.get("POST_TIMEZONE", "").strip() or "UTC"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except (ValueError, KeyError, OSError):
        problems.append(f"POST_TIMEZONE={tz!r} is not a time zone (use a name like Europe/Berlin or UTC)")
        tz = "UTC"
    if schedule:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(schedule, timezone="UTC")
        except ValueError as e:
            problems.append(f"POST_SCHEDULE={schedule!r} is not a crontab line "
                            f"(minute hour day month weekday, e.g. '0 20 * * *'): {e}")
    targets = tuple(t.strip() for t in (env.get("POST_TARGETS", "") or "terminal").split(",") if t.strip())
    for target in targets:
        if not is_post_target(target):
            problems.append(f"POST_TARGETS: {target!r} is not {POST_TARGET_HELP}")
    mode = env.get("POST_MODE", "").strip() or "confession"
    if mode not in ("confession", "line"):
        problems.append(f"POST_MODE={mode!r} must be confession or line")
    keys = [env.get(name, "").strip() for name in _TWITTER_VARS]
    if any(keys) and not all(keys):
        missing = [name for name, key in zip(_TWITTER_VARS, keys) if not key]
        problems.append(f"Twitter needs all four keys; missing: {', '.join(missing)}")
    return {"post_schedule": schedule, "post_timezone": tz, "post_targets": targets, "post_mode": mode,
            "post_grace_minutes": number("POST_GRACE_MINUTES", float, 60.0, minimum=0),
            "twitter_keys": tuple(keys) if all(keys) else None}
