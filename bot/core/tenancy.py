"""Who may do what, and over which part of the bot: the tenancy model, in one place.

* A guild's admins (Manage Server in that guild, or one of ADMIN_ROLE_IDS there) govern that guild only: the
  channels the persona talks in, the guild's schedules, posts to the guild's own channels.
* What is global belongs to the bot's owners (the Discord application's owner or team, plus ADMIN_USER_IDS):
  the persona itself (retrain, rollback), the Twitter and terminal targets, schedules that belong to no
  guild, and every guild's settings.
* Everyone else may talk to the persona, see its public status, and make it forget them.

Cogs ask `PersonaBot.authority(interaction)` for an `Authority` and check with it; nothing here knows
Discord beyond the ids it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.core.posts import PostTarget

# What a refusal says, for each power (shown to the person who tried).
OWNERS_ONLY = ("This command is for the bot's owners only (the application's owner or team, or ADMIN_USER_IDS): "
               "it changes the persona for every server.")
GUILD_ADMINS_ONLY = ("This command is for this server's admins only (Manage Server here, or an admin role "
                     "configured for the bot).")


@dataclass(frozen=True, slots=True)
class Authority:
    """What one person may govern where they used a command."""

    user_id: int
    guild_id: int | None      # the guild the command was used in (None: a DM)
    is_owner: bool            # one of the bot's owners: global powers
    is_guild_admin: bool      # an admin of `guild_id` (owners count as one everywhere)

    @property
    def may_govern_guild(self) -> bool:
        return self.guild_id is not None and (self.is_owner or self.is_guild_admin)

    def scopes(self) -> tuple[int | None, ...]:
        """Owners of schedules and posts this person sees and governs here: the guild's own, and for the
        bot's owners the global ones too (None)."""
        scopes: list[int | None] = []
        if self.may_govern_guild:
            scopes.append(self.guild_id)
        if self.is_owner:
            scopes.append(None)
        return tuple(scopes)

    def owner_of_new(self, targets: list[PostTarget], guild_of: Callable[[int], int | None]) -> int | None:
        """Who owns a schedule or post with these targets: this guild when all of them are its channels,
        else nobody's guild (global, which `target_problem` allows the bot's owners only)."""
        if all(t.channel_id is not None and guild_of(t.channel_id) == self.guild_id for t in targets):
            return self.guild_id
        return None

    def target_problem(self, target: PostTarget, guild_of: Callable[[int], int | None]) -> str | None:
        """Why this person may not post to `target` from here, or None. `guild_of(channel id)` is the
        guild a channel belongs to (None when the bot does not know the channel)."""
        channel_id = target.channel_id
        if channel_id is None:          # twitter, terminal: global
            return None if self.is_owner else f"`{target}` is global: only the bot's owners may post there"
        if self.is_owner:
            return None
        if not self.is_guild_admin or self.guild_id is None or guild_of(channel_id) != self.guild_id:
            return f"channel {channel_id} is not a channel of this server"
        return None
