"""Targets and the `OutputFilter` that combines the checks: every text passes here before it leaves the bot.

`OutputFilter.reject` says whether a candidate reply must be sampled again (the leak guard, then the
blocklist); `OutputFilter.finish` makes an accepted reply safe to send to a `Target`. A target carries its
own finishing: mentions neutralised with its own name resolver (a Discord target built for a guild names
that guild's members and roles), then cut to its limit measured its way (Discord's 2,000 characters, a
tweet's 280 weighted characters, no limit in the terminal). Each adapter builds its target, so the engine
needs to know no platform.

A reason `reject` gives is a `Rejection`: the reason's text (a str, as logs and /status show it) that also
names the filter that gave it (`Rejection.filter`), so that counting rejections by filter (bot.adapters.metrics)
never parses the text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.filters.blocklist import Blocklist
from bot.core.filters.cut import cut_to_length
from training.leak_guard import LeakGuard
from bot.core.filters.mentions import neutralise_mentions
from bot.core.filters.twitter import TWEET_LIMIT, tweet_length

DISCORD_LIMIT = 2000

# The filters a sample can be rejected by (the label `rejection_filter` gives; "other" for a reason from
# outside the output filter, such as a posting rule).
LEAK_GUARD, BLOCKLIST, EMPTY_FILTER, OTHER = "leak_guard", "blocklist", "empty", "other"


class Rejection(str):
    """Why a sample was rejected (the text itself), and the filter that rejected it (`filter`)."""

    filter: str

    def __new__(cls, reason: str, filter: str) -> "Rejection":
        rejection = super().__new__(cls, reason)
        rejection.filter = filter
        return rejection


# An empty sample: the engine rejects it before the filters see it.
EMPTY = Rejection("empty", EMPTY_FILTER)


def rejection_filter(reason: str) -> str:
    """The filter that gave `reason`: its `Rejection.filter`; "empty" for the engine's plain "empty"; else
    "other" (a reason that is not the output filter's)."""
    if isinstance(reason, Rejection):
        return reason.filter
    return EMPTY_FILTER if reason == EMPTY else OTHER


# Who a mention names where the text goes: (kind "user" or "role", id) -> a display name, or None.
NameResolver = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class Target:
    """Where a text goes: its name, its length limit (None: none), how that limit is measured, and who the
    mentions in a text name there (`names(kind, id)`; None: nobody is named, see `neutralise_mentions`)."""

    name: str
    limit: int | None
    length: Callable[[str], int]
    names: NameResolver | None = None

    def with_names(self, names: NameResolver | None) -> "Target":
        """This target, with mentions resolved by `names` (e.g. the members and roles of one guild)."""
        return dataclasses.replace(self, names=names)

    def finish(self, text: str) -> str:
        """`text` ready to send here: mentions neutralised, then cut to the limit. Links are left alone."""
        # Mentions first: a name is longer than "<@123>", and the limit applies to what is sent.
        text = neutralise_mentions(text, names=self.names)
        if self.limit is not None:
            text = cut_to_length(text, self.limit, length=self.length)
        return text


DISCORD = Target("discord", DISCORD_LIMIT, len)
TWITTER = Target("twitter", TWEET_LIMIT, tweet_length)
TERMINAL = Target("terminal", None, len)


class OutputFilter:
    """Every text that leaves the bot passes here: `reject` says whether a candidate must be resampled,
    `finish` makes an accepted one safe to send to a target."""

    def __init__(self, leak_guard: LeakGuard | None = None, blocklist: Blocklist | None = None) -> None:
        self.leak_guard = leak_guard
        self.blocklist = blocklist

    def reject(self, text: str) -> Rejection | None:
        """None when `text` may be sent, else why not (naming the filter): the leak guard first, then the
        blocklist."""
        if self.leak_guard is not None and (reason := self.leak_guard.check(text)):
            return Rejection(reason, LEAK_GUARD)
        if self.blocklist is not None and (reason := self.blocklist.check(text)):
            return Rejection(reason, BLOCKLIST)
        return None

    def finish(self, text: str, target: Target) -> str:
        """`text` ready to send to `target`, finished its way (see `Target.finish`); `has_link` tells whether
        it has links."""
        return target.finish(text)
