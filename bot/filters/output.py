"""Targets and the `OutputFilter` that combines the checks: every text passes here before it leaves the bot.

`OutputFilter.reject` says whether a candidate reply must be sampled again (the leak guard, then the
blocklist); `OutputFilter.finish` makes an accepted reply safe to send to a `Target`: mentions neutralised,
then cut to the target's limit measured its way (Discord's 2,000 characters, a tweet's 280 weighted
characters, no limit in the terminal). A target is data, so the engine needs to know no platform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.filters.blocklist import Blocklist
from bot.filters.cut import cut_to_length
from bot.filters.leak_guard import LeakGuard
from bot.filters.mentions import neutralise_mentions
from bot.filters.twitter import TWEET_LIMIT, tweet_length

DISCORD_LIMIT = 2000


@dataclass(frozen=True)
class Target:
    """Where a text goes: its name, its length limit (None: none) and how that limit is measured."""

    name: str
    limit: int | None
    length: Callable[[str], int]


DISCORD = Target("discord", DISCORD_LIMIT, len)
TWITTER = Target("twitter", TWEET_LIMIT, tweet_length)
TERMINAL = Target("terminal", None, len)


class OutputFilter:
    """Every text that leaves the bot passes here: `reject` says whether a candidate must be resampled,
    `finish` makes an accepted one safe to send to a target."""

    def __init__(self, leak_guard: LeakGuard | None = None, blocklist: Blocklist | None = None) -> None:
        self.leak_guard = leak_guard
        self.blocklist = blocklist

    def reject(self, text: str) -> str | None:
        """None when `text` may be sent, else why not: the leak guard first, then the blocklist."""
        if self.leak_guard is not None and (reason := self.leak_guard.check(text)):
            return reason
        if self.blocklist is not None and (reason := self.blocklist.check(text)):
            return reason
        return None

    def finish(self, text: str, target: Target = DISCORD, *,
               names: Callable[[str, str], str | None] | None = None) -> str:
        """`text` ready to send to `target`: mentions neutralised (see `neutralise_mentions`), then cut to the
        target's limit. Links are left alone; `has_link` tells whether there are any."""
        # Mentions first: a name is longer than "<@123>", and the limit applies to what is sent.
        text = neutralise_mentions(text, names=names)
        if target.limit is not None:
            text = cut_to_length(text, target.limit, length=target.length)
        return text

