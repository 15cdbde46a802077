"""The Twitter/X post target: tweepy's `Client.create_tweet` (API v2, OAuth 1.0a user context), which blocks:
callers run `TwitterTarget.post` in a thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.jobs.posting import DuplicateContent, PostError, TargetDisabled

log = logging.getLogger("personabot.posting")


class TwitterTarget:
    """Posts tweets with OAuth 1.0a user context. 429: waits for the reset Twitter gives (up to `max_wait_s`);
    5xx and network errors: retried with exponential backoff; 403 duplicate: `DuplicateContent`; 401 or another
    403: `TargetDisabled` (and stays disabled, with the reason in `disabled`)."""

    name = "twitter"

    def __init__(self, consumer_key: str, consumer_secret: str, access_token: str, access_token_secret: str,
                 *, retries: int = 3, backoff_s: float = 2.0, max_wait_s: float = 900.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import tweepy  # here: loaded only when Twitter is configured

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
