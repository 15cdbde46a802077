"""Persona posts: where they go (`PostTarget`), how a line starts (`MODES`), picking a line that may be posted,
and the Twitter/X target.

A line is sampled from the engine as stand-alone candidates (optionally seeded, "my deepest, darkest secret
is"), and the first that passes every filter wins: the persona's output filter (leak guard, blocklist), no
links, no mentions, within the target's length, not a repeat of a recent post. A slot with no such line is
skipped with the reasons; a line that failed a filter is never posted.

Twitter/X goes through tweepy's `Client.create_tweet` (API v2, OAuth 1.0a user context), which blocks:
callers run `TwitterTarget.post` in a thread.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from bot.filters import DISCORD, TERMINAL, TWITTER, Target, has_link

if TYPE_CHECKING:        # the engine (and torch) load only where posts are made, not where targets are read
    from bot.engine import Engine
    from bot.persona import PersonaRef

log = logging.getLogger("personabot.posting")

# How each post mode starts its line: "confession" posts are seeded, "line" posts start from nothing.
MODES = {"confession": "my deepest, darkest secret is", "line": ""}
DEFAULT_MODE = "confession"
MODE_HELP = "confession (seeded lines) or line"

# Where posts can go, as written in POST_TARGETS and /schedule add.
POST_TARGET_HELP = "twitter, terminal or discord:<channel id>"


@dataclass(frozen=True, slots=True)
class PostTarget:
    """One place a post goes: Twitter, the terminal, or one Discord channel. Parsed once from its text
    (`twitter`, `terminal`, `discord:<channel id>`) and written back the same way by `str`."""

    kind: Literal["twitter", "terminal", "discord"]
    channel_id: int | None = None

    @classmethod
    def parse(cls, text: str) -> "PostTarget | None":
        """The target `text` names, or None. Channel ids are ASCII digits only (`str.isdigit` also accepts
        superscripts, which `int` refuses)."""
        if text in ("twitter", "terminal"):
            return cls(text)
        digits = text[8:] if text.startswith("discord:") else ""
        return cls("discord", int(digits)) if digits.isascii() and digits.isdigit() else None

    def __str__(self) -> str:
        return f"discord:{self.channel_id}" if self.kind == "discord" else self.kind

    @property
    def output(self) -> Target:
        """How a line's length is measured and limited there."""
        return {"twitter": TWITTER, "discord": DISCORD}.get(self.kind, TERMINAL)

# A mention in any form, defused or not: "@name", "@\u200beveryone".
_MENTION = re.compile(r"(?<![\w@])@\u200b?\w")


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass
class Choice:
    text: str | None                                   # None: nothing may be posted for this slot
    rejected: list[str] = field(default_factory=list)  # why the other candidates were not used


async def pick_line(engine: Engine, target: Target, *, start: str = "", recent: Iterable[str] = (),
                    candidates: int = 6, rounds: int = 3, seed: int | None = None,
                    persona: PersonaRef | None = None) -> Choice:
    """The first sampled line of `persona` (a registered one; None: the bot's own) that passes every filter
    for `target`, or None with every reason."""
    from training.generation import attempt_seed   # here: targets and modes are read without torch loaded

    seen = {_key(t) for t in recent}
    rejected: list[str] = []
    for round_ in range(rounds):
        lines = await engine.lines(candidates, start=start, target=TERMINAL, persona=persona,
                                   seed=attempt_seed(seed, round_, stride=candidates))
        for line in lines:
            reason = line.rejected or _post_problem(line.text, target, seen)
            if reason is None:
                return Choice(line.text, rejected)
            rejected.append(reason)
    return Choice(None, rejected)


def _post_problem(text: str, target: Target, recent: set[str]) -> str | None:
    if has_link(text):
        return "contains a link"
    if _MENTION.search(text):
        return "contains a mention"
    if target.limit is not None and target.length(text) > target.limit:
        return f"too long for {target.name} ({target.length(text)} > {target.limit})"
    if _key(text) in recent:
        return "repeats a recent post"
    return None


class PostError(Exception):
    """The post did not go out; the message says why."""


class DuplicateContent(PostError):
    """Twitter refused the text as a duplicate of an earlier tweet: sample another line."""


class TargetDisabled(PostError):
    """The credentials were refused: the target stays off until they are fixed."""


class TwitterTarget:
    """Posts tweets with OAuth 1.0a user context. 429: waits for the reset Twitter gives (up to `max_wait_s`);
    5xx and network errors: retried with exponential backoff; 403 duplicate: `DuplicateContent`; 401 or another
    403: `TargetDisabled` (and stays disabled, with the reason in `disabled`)."""

    name = "twitter"

    def __init__(self, consumer_key: str, consumer_secret: str, access_token: str, access_token_secret: str,
                 *, retries: int = 3, backoff_s: float = 2.0, max_wait_s: float = 900.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import tweepy

        self._tweepy = tweepy
        self.client = tweepy.Client(consumer_key=consumer_key, consumer_secret=consumer_secret,
                                    access_token=access_token, access_token_secret=access_token_secret,
                                    wait_on_rate_limit=False)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.disabled: str | None = None

    def post(self, text: str) -> str:
        """The new tweet's id. Blocking: run it in a thread."""
        errors = self._tweepy.errors
        if self.disabled:
            raise TargetDisabled(self.disabled)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.client.create_tweet(text=text, user_auth=True)
                return str(response.data["id"])
            except errors.TooManyRequests as e:
                wait = max(1.0, (e.reset_time or time.time() + 60) - time.time() + 1)
                if wait > self.max_wait_s or last:
                    raise PostError(f"rate limited by Twitter for {wait:.0f} s more; this slot is skipped") from e
                log.warning("Twitter rate limit: waiting %.0f s for the reset", wait)
                self.sleep(wait)
            except errors.TwitterServerError as e:
                if last:
                    raise PostError(f"Twitter kept failing ({_status(e)}) after {self.retries + 1} tries") from e
                self.sleep(self.backoff_s * 2 ** attempt)
            except errors.Forbidden as e:
                if _is_duplicate(e):
                    raise DuplicateContent("Twitter refused a duplicate of an earlier tweet") from e
                self._disable(f"Twitter refused the credentials or the app's permissions (403: {_api_message(e)})")
                raise TargetDisabled(self.disabled) from e
            except errors.Unauthorized as e:
                self._disable("Twitter refused the credentials (401); check TWITTER_* in .env and restart")
                raise TargetDisabled(self.disabled) from e
            except errors.HTTPException as e:
                raise PostError(f"Twitter refused the tweet ({_status(e)}: {_api_message(e)})") from e
            except self._tweepy.errors.requests.RequestException as e:   # network trouble: like a 5xx
                if last:
                    raise PostError(f"cannot reach Twitter ({type(e).__name__})") from e
                self.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _disable(self, reason: str) -> None:
        if not self.disabled:
            log.error("Twitter target disabled: %s", reason)
        self.disabled = reason


def _status(error) -> str:
    response = getattr(error, "response", None)
    return str(getattr(response, "status_code", "?"))


def _api_message(error) -> str:
    messages = getattr(error, "api_messages", None) or []
    return "; ".join(messages)[:200] or "no details"


def _is_duplicate(error) -> bool:
    text = " ".join([*(getattr(error, "api_messages", None) or []), str(error)]).casefold()
    return 187 in (getattr(error, "api_codes", None) or []) or "duplicate" in text
