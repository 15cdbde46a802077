"""When a persona speaks without being mentioned: joining a conversation, following up, its words that wake it,
quiet hours, a budget of turns per channel, and limits per person. The rules only, free of Discord; the chat cog
feeds them messages and the time, and speaks when they say so.

- A **burst** is a run of messages in a channel that nobody addressed to the persona; it ends after
  `BURST_QUIET_S` of quiet or `BURST_MAX_S` after it began (as aiuser counts them). At its end the persona
  answers it with the channel's `unasked` chance, or with its `followup` chance (when higher) if it spoke there
  within `FOLLOWUP_WINDOW_S` (a conversation it is already in).
- **Wake words** (the persona's name unless set) in a message address the persona as a mention does.
- **Quiet hours** (UTC hours, start to end) hold back what it would say unasked: bursts, follow-ups and wake
  words; mentions and replies are still answered.
- A channel's **budget** of persona turns per hour bounds what it says unasked (bursts and follow-ups) and the
  turns of scenes together.
- **Per person**: a budget of interactions in a window, then a cool-down that doubles for each repeat offence
  (`PersonLimits`), with one notice per cool-down.

Each channel draws its chances from its own random generator, seeded when its settings give a seed: a test or
a replay sees the same decisions for the same messages.
"""

from __future__ import annotations

import logging
import random
import re
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from bot.core.store import Store, StoreError

log = logging.getLogger("personabot.talk")
# A burst ends after this much quiet, or this long after its first message (aiuser's defaults).
BURST_QUIET_S = 2.0
BURST_MAX_S = 8.0
# A burst that ends within this long after the persona spoke in the channel is a follow-up's chance.
FOLLOWUP_WINDOW_S = 120.0
# The budget's window.
HOUR_S = 3600.0
# An offence older than this no longer makes the next cool-down longer.
REPEAT_MEMORY_S = 24 * HOUR_S


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """How a persona joins the talk of one channel (or, as a server's default, of its channels)."""

    unasked: float = 0.0                    # chance to answer a burst nobody addressed to it
    followup: float = 0.0                   # chance to answer a burst soon after it spoke
    wake_words: tuple[str, ...] = ()        # words that address it; empty: its name
    quiet_hours: tuple[int, int] | None = None   # (from, to) UTC hours: nothing unasked then
    turns_per_hour: int = 20                # unasked answers, follow-ups and scene turns per hour
    seed: int | None = None                 # for repeatable chances

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        for name in ("unasked", "followup"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"{name} is a chance from 0 to 1, not {value}")
        if self.quiet_hours is not None and not all(0 <= h <= 23 for h in self.quiet_hours):
            out.append("quiet hours are two hours of the day, 0 to 23")
        if self.turns_per_hour < 0:
            out.append("turns per hour cannot be negative")
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["wake_words"] = list(self.wake_words)
        data["quiet_hours"] = list(self.quiet_hours) if self.quiet_hours else None
        return data

    @classmethod
    def from_json(cls, data: Any, default: "JoinSettings | None" = None) -> "JoinSettings":
        """The settings stored as `to_json` wrote them, over `default` for what they lack; `default` (or the
        defaults) when the data is not such settings."""
        base = default or cls()
        if not isinstance(data, dict):
            return base
        try:
            return replace(base, **{f.name: _typed(f.name, data[f.name]) for f in fields(cls) if f.name in data})
        except (TypeError, ValueError):
            return base

    def words_for(self, persona: str) -> tuple[str, ...]:
        """The words that wake the persona called `persona`."""
        return self.wake_words or (persona,)

    def quiet_at(self, hour: int) -> bool:
        """Whether `hour` (UTC, 0-23) is in the quiet hours (which may wrap past midnight)."""
        if self.quiet_hours is None:
            return False
        start, end = self.quiet_hours
        return start <= hour < end if start <= end else hour >= start or hour < end

    def describe(self) -> str:
        """One line for /status."""
        quiet = f"{self.quiet_hours[0]:02d}-{self.quiet_hours[1]:02d} UTC" if self.quiet_hours else "none"
        words = ", ".join(self.wake_words) if self.wake_words else "its name"
        return (f"unasked {self.unasked:.0%}, follow-ups {self.followup:.0%}, wake words: {words}, quiet hours: "
                f"{quiet}, {self.turns_per_hour} turns an hour" + (f", seed {self.seed}" if self.seed is not None
                                                                   else ""))


def _typed(name: str, value: Any) -> Any:
    """A stored value as the field `name` holds it (ValueError/TypeError when it cannot be)."""
    if name in ("unasked", "followup"):
        return float(value)
    if name == "wake_words":
        return tuple(str(w) for w in value)
    if name == "quiet_hours":
        return None if value is None else (int(value[0]), int(value[1]))
    if name == "turns_per_hour":
        return int(value)
    if name == "seed":
        return None if value is None else int(value)
    raise ValueError(name)


def parse_quiet_hours(text: str) -> tuple[int, int] | None:
    """"22-7" as (22, 7); "" or "none" as None. Raises ValueError for anything else."""
    text = text.strip().casefold()
    if text in ("", "none", "off"):
        return None
    match = re.fullmatch(r"(\d{1,2})\s*-\s*(\d{1,2})", text)
    if not match:
        raise ValueError(f"quiet hours are written FROM-TO in UTC hours, like 22-7, not {text!r}")
    hours = (int(match[1]), int(match[2]))
    if not all(0 <= h <= 23 for h in hours):
        raise ValueError("quiet hours are hours of the day, 0 to 23")
    return hours


def wakes(text: str, words: tuple[str, ...]) -> bool:
    """Whether `text` holds one of `words` as a word of its own, in any case ("Alice?" does; "Malice" not)."""
    folded = text.casefold()
    for word in words:
        word = word.strip().casefold()
        if word and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", folded):
            return True
    return False


@dataclass
class ChannelTalk:
    """One channel's state: the burst under way, when the persona last spoke, its turns of the last hour, and
    the generator its chances come from."""

    rng: random.Random
    burst_started: float | None = None
    burst_last: float | None = None
    burst_messages: int = 0
    last_spoke: float | None = None
    turns: deque[float] = field(default_factory=deque)

    @classmethod
    def seeded(cls, channel_id: int, seed: int | None) -> "ChannelTalk":
        """A channel's state, its chances seeded by `seed` and the channel (random when no seed)."""
        return cls(random.Random(f"{seed}:{channel_id}") if seed is not None else random.Random())

    def heard(self, now: float) -> float:
        """A message nobody addressed to the persona, at `now`: part of the burst (begun if none); returns when
        the burst ends unless more comes."""
        if self.burst_started is None:
            self.burst_started = now
        self.burst_last = now
        self.burst_messages += 1
        return self.burst_due()

    def burst_due(self) -> float:
        """When the burst under way ends unless more comes."""
        assert self.burst_started is not None and self.burst_last is not None
        return min(self.burst_last + BURST_QUIET_S, self.burst_started + BURST_MAX_S)

    def drop_burst(self) -> None:
        """Forget the burst under way: the persona answers a message addressed to it, which answers the talk
        before it too (else it would speak twice in a row)."""
        self.burst_started = self.burst_last = None
        self.burst_messages = 0

    def end_burst(self, now: float, settings: JoinSettings, hour: int) -> str | None:
        """Close the burst (when it is due by `now`) and decide: "unasked" or "followup" when the persona
        answers it, else None. `hour` is the UTC hour now (quiet hours)."""
        if self.burst_started is None:
            return None
        self.drop_burst()
        if settings.quiet_at(hour) or self.budget_left(now, settings) <= 0:
            return None
        following = self.last_spoke is not None and now - self.last_spoke <= FOLLOWUP_WINDOW_S
        # Soon after it spoke, the follow-up chance, unless the plain one is higher (a follow-up window never
        # makes the persona quieter than it is).
        chance, kind = ((settings.followup, "followup") if following and settings.followup >= settings.unasked
                        else (settings.unasked, "unasked"))
        # Drawn even at a chance of 0, so that a changed chance leaves the sequence of draws as it was.
        return kind if self.rng.random() < chance else None

    def spoke(self, now: float, *, counted: bool) -> None:
        """The persona spoke in the channel at `now`; `counted`: a turn of its hourly budget (unasked ones)."""
        self.last_spoke = now
        if counted:
            self.turns.append(now)

    def budget_left(self, now: float, settings: JoinSettings) -> int:
        """Turns left of the channel's budget in the hour before `now`."""
        while self.turns and self.turns[0] <= now - HOUR_S:
            self.turns.popleft()
        return max(0, settings.turns_per_hour - len(self.turns))


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """Whether a person's interaction is taken; when not, until when, and whether to tell them (once)."""

    allowed: bool
    until: float = 0.0
    notify: bool = False


class PersonLimits:
    """A budget of `budget` interactions per `window_s` per person; past it, a cool-down of `cooldown_s`,
    doubled for each repeat offence within `REPEAT_MEMORY_S`, at most `max_cooldown_s`."""

    def __init__(self, budget: int, window_s: float, cooldown_s: float, max_cooldown_s: float) -> None:
        self.budget, self.window_s = budget, window_s
        self.cooldown_s, self.max_cooldown_s = cooldown_s, max_cooldown_s
        self._seen: dict[int, deque[float]] = {}
        self._until: dict[int, float] = {}
        self._offences: dict[int, tuple[int, float]] = {}    # person -> (offences, time of the last)

    def check(self, person: int, now: float) -> LimitVerdict:
        """Count an interaction of `person` at `now` and say whether it is taken."""
        until = self._until.get(person, 0.0)
        if now < until:
            return LimitVerdict(False, until)
        seen = self._seen.setdefault(person, deque())
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        if len(seen) < self.budget:
            seen.append(now)
            return LimitVerdict(True)
        count, last = self._offences.get(person, (0, 0.0))
        count = count + 1 if now - last <= REPEAT_MEMORY_S else 1
        self._offences[person] = (count, now)
        until = now + min(self.max_cooldown_s, self.cooldown_s * 2 ** (count - 1))
        self._until[person] = until
        seen.clear()
        return LimitVerdict(False, until, notify=True)

    def cooling(self, now: float) -> int:
        """People in a cool-down at `now` (for /status)."""
        return sum(until > now for until in self._until.values())


def _key(guild_id: int, channel_id: int | None) -> str:
    """The store setting that holds a server's default (no channel) or one channel's settings."""
    return f"talk:{guild_id}" if channel_id is None else f"talk:{guild_id}:{channel_id}"


class Talk:
    """The bot's service for all of the above: the settings of each server and channel (kept in the store, so
    every process of the bot reads the same; a channel's override its server's, a server's the bot's
    `default`), each channel's state (this process's), and the limits per person."""

    def __init__(self, store: Store, default: JoinSettings, limits: PersonLimits) -> None:
        self.store = store
        self.default = default
        self.limits = limits
        self._channels: dict[int, tuple[int | None, ChannelTalk]] = {}

    async def settings(self, guild_id: int, channel_id: int) -> JoinSettings:
        """The settings in force in a channel of a server. A store that cannot say gives the bot's default."""
        try:
            return JoinSettings.from_json(await self.store.get_setting(_key(guild_id, channel_id)),
                                          await self._server(guild_id))
        except StoreError as e:
            log.warning("cannot read the talk settings of channel %s: %s", channel_id, e)
            return self.default

    async def _server(self, guild_id: int) -> JoinSettings:
        return JoinSettings.from_json(await self.store.get_setting(_key(guild_id, None)), self.default)

    async def own(self, guild_id: int, channel_id: int | None) -> dict[str, Any]:
        """What is set for exactly this server (no channel) or channel, as stored (empty: nothing)."""
        stored = await self.store.get_setting(_key(guild_id, channel_id))
        return stored if isinstance(stored, dict) else {}

    async def change(self, guild_id: int, channel_id: int | None, **changes: Any) -> JoinSettings:
        """Set `changes` (fields of `JoinSettings`, in their JSON form) for a server (no channel) or a channel,
        over what is set there: the settings now in force there (a server's, for its channels without their
        own). Raises ValueError for a bad value (nothing is changed then) and `StoreError`."""
        own = await self.own(guild_id, channel_id)
        base = self.default if channel_id is None else await self._server(guild_id)
        merged = {**own, **changes}
        checked = replace(base, **{k: _typed(k, v) for k, v in merged.items()})    # raises ValueError
        stored = {k: v for k, v in checked.to_json().items() if k in merged}
        await self.store.set_setting(_key(guild_id, channel_id), stored)
        return checked

    async def reset(self, guild_id: int, channel_id: int | None) -> None:
        """Forget what is set for a server (its channels' own settings stay) or a channel."""
        await self.store.set_setting(_key(guild_id, channel_id), {})

    def channel(self, channel_id: int, seed: int | None) -> ChannelTalk:
        """The channel's state; its generator reseeded when its seed changed (the rest kept)."""
        known = self._channels.get(channel_id)
        if known is None:
            known = self._channels[channel_id] = (seed, ChannelTalk.seeded(channel_id, seed))
        elif known[0] != seed:
            known[1].rng = ChannelTalk.seeded(channel_id, seed).rng
            known = self._channels[channel_id] = (seed, known[1])
        return known[1]

    def known_channel(self, channel_id: int) -> ChannelTalk | None:
        known = self._channels.get(channel_id)
        return known[1] if known else None
