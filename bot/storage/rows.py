"""What both stores write and read the same way: the time stamp they store, a schedule's targets and a
persona's row as stored (`bot.storage.sqlite`, `bot.storage.postgres`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.core.posts import PostTarget
from bot.core.store import PersonaEntry


def now() -> str:
    """The time stamp stored with rows: ISO 8601 in UTC, to the second (compared as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def targets(stored: str) -> tuple[PostTarget, ...]:
    """A schedule's targets as stored (a JSON list of their texts); one no longer understood is left out."""
    parsed = (PostTarget.parse(text) for text in json.loads(stored))
    return tuple(target for target in parsed if target is not None)


PERSONA_COLUMNS = "id, guild_id, name, artifact_path, generation, created_at, previous_artifact_path, avatar_url"


def persona(row: Sequence[Any]) -> PersonaEntry:
    """A `personas` row (columns as `PERSONA_COLUMNS`) as a typed entry."""
    return PersonaEntry(row[0], row[1], row[2], Path(row[3]), json.loads(row[4]), row[5],
                        Path(row[6]) if row[6] else None, row[7])
