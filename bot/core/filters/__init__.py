"""Output filters: every text passes here before it leaves the bot.

`OutputFilter.reject` says whether a candidate reply must be sampled again (it repeats the training data, or
it contains a blocked word); `OutputFilter.finish` makes an accepted reply safe to send: mentions cannot ping
anyone, and the text fits the target's length limit (Discord's 2,000 characters, or a tweet's 280 weighted
characters as Twitter counts them).

One module per algorithm, each with its own reasons at the top:

    leak_guard   LeakGuard: training text must not come back (verbatim, runs of words, numbers, near-copies)
    blocklist    Blocklist, FilterConfigError: words, phrases and patterns an operator forbids
    mentions     neutralise_mentions: a reply never pings anyone
    twitter      tweet_length, has_link: Twitter's weighted length and what it links
    cut          cut_to_length: shorten to a limit without breaking a word, an emoji or an accent
    output       Target (DISCORD, TWITTER, TERMINAL; each with its limit, length and mention names) and
                 OutputFilter, which combines the above

Every public name is importable from `bot.core.filters` itself, as before the split.
"""

from __future__ import annotations

from bot.core.filters.blocklist import Blocklist, FilterConfigError
from bot.core.filters.cut import cut_to_length
from training.leak_guard import LeakGuard
from bot.core.filters.mentions import neutralise_mentions
from bot.core.filters.output import DISCORD, DISCORD_LIMIT, TERMINAL, TWITTER, NameResolver, OutputFilter, Target
from bot.core.filters.twitter import TWEET_LIMIT, has_link, tweet_length

__all__ = [
    "DISCORD", "DISCORD_LIMIT", "TERMINAL", "TWEET_LIMIT", "TWITTER", "Blocklist", "FilterConfigError",
    "LeakGuard", "NameResolver", "OutputFilter", "Target", "cut_to_length", "has_link", "neutralise_mentions", "tweet_length",
]
