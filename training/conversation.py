"""The normalised form every importer produces: conversations of messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message or script line.

    `speaker` is the name people saw; `speaker_aliases` are other names of the same person in this export
    (a Discord username behind a nickname, a Slack handle behind a real name) so a user can ask for either.
    `speaker_id` is the platform's stable id where the format has one (used to honour opt-outs).
    """

    speaker: str
    text: str
    timestamp: datetime | None = None
    reply_to: str | None = None
    id: str | None = None
    speaker_id: str | None = None
    speaker_aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every name this message's author goes by here, display name first."""
        return (self.speaker, *self.speaker_aliases)


@dataclass(frozen=True, slots=True)
class SceneBreak:
    """A marker an importer puts between messages that must not share a conversation (a new scene)."""

    label: str = ""


@dataclass(slots=True)
class Conversation:
    """Messages that belong together in time; the unit of context and of the train/validation split."""

    id: str
    messages: list[Message] = field(default_factory=list)
    title: str = ""
    # A stand-alone post of a single-voice corpus (no speaker named in the data; see formats.tables).
    single_voice: bool = False


def sort_key(ts: datetime | None) -> float:
    """A comparable number for aware and naive timestamps alike (naive ones are read as UTC)."""
    if ts is None:
        return float("-inf")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.timestamp()


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 text of a timestamp (keeping its offset, or none when the export gave none)."""
    return ts.isoformat() if ts is not None else None
