"""Mentions: a reply must never ping anyone.

The model learnt from chat that contains mentions, so it can write "<@123>", "@everyone" or "@here"; sent
as they are, Discord would notify those people or a whole server. `neutralise_mentions` turns user and role
mentions into plain "@name" text and breaks mass mentions with a zero-width space, so that what the persona
says reads the same but pings no one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_ZWSP = "\u200b"
# Only these forms make Discord ping: <@id>, <@!id> (old nickname form), <@&id> (role), @everyone, @here.
_MENTION = re.compile(r"<@(?P<kind>[!&]?)(?P<id>\d+)>")
_MASS_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)


def neutralise_mentions(text: str, *, names: Callable[[str, str], str | None] | None = None) -> str:
    """`text` with no mention that Discord would ping: @everyone/@here get a zero-width space after the @,
    user and role mentions become "@name" (`names(kind, id)` with kind "user" or "role"; "@user"/"@role" when
    it gives nothing). Channel mentions stay. Idempotent."""

    def replace(match: re.Match[str]) -> str:
        kind = "role" if match["kind"] == "&" else "user"
        name = names(kind, match["id"]) if names is not None else None
        # A display name may itself look like a mention; break it so that the result cannot ping either.
        name = (name or kind).replace("<@", "<@" + _ZWSP)
        return "@" + _ZWSP + name

    text = _MENTION.sub(replace, text)
    # After the names went in, so that a user named "everyone" or "@here" is covered too.
    return _MASS_MENTION.sub("@" + _ZWSP + r"\1", text)
