"""Posts as the domain sees them: where a post goes (`PostTarget`), how a line starts (`MODES`), and how late a
missed slot is still caught up (`GRACE_MINUTES`). Read by the settings, the store and tenancy without the
engine or torch loaded; picking and sending lines is `bot.jobs`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.core.filters import DISCORD, TERMINAL, TWITTER, Target

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


# A slot missed longer ago than this (while the bot was down) is not caught up (POST_GRACE_MINUTES).
GRACE_MINUTES = 60.0
