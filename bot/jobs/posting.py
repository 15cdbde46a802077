"""Persona posts: picking a line that may be posted, and what a post that did not go out says
(`PostError`). Where posts go and how lines start are `bot.core.posts`'s; the Twitter/X target is
`bot.jobs.twitter`'s.

A line is sampled from the engine as stand-alone candidates (optionally seeded, "my deepest, darkest secret
is"), and the first that passes every filter wins: the persona's output filter (leak guard, blocklist), no
links, no mentions, within the target's length, not a repeat of a recent post. A slot with no such line is
skipped with the reasons; a line that failed a filter is never posted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.core.filters import TERMINAL, Target, has_link
from bot.core.personas import PersonaRef
from bot.inference.engine import Engine
from training.generation import attempt_seed

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
