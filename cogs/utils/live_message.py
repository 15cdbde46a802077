"""A message that shows a long job's progress, and how it ended, for as long as the job takes.

Interaction tokens expire 15 minutes after a command; a retrain on a CPU takes hours. So the progress lives
in a channel message the bot sends itself (a bot may edit its own messages for ever), and the command's
response only points to it. Where the bot may not send messages in the channel, the command's response is
used until its token expires; after that the edits stop, with one log line, instead of failing every time.
Nothing here raises: showing progress must never stop the job.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import discord

log = logging.getLogger("personabot.live")

# Discord's interaction tokens live 15 minutes; stop a little early rather than collect 401s.
TOKEN_LIFETIME = timedelta(minutes=14, seconds=30)
# Discord's error code for an expired or invalid webhook (interaction) token.
INVALID_WEBHOOK_TOKEN = 50027


class LiveMessage:
    """Open with `await LiveMessage.open(interaction, text)` after deferring the interaction."""

    def __init__(self, interaction: discord.Interaction, message: discord.Message | None) -> None:
        self.interaction = interaction
        self.message = message          # the bot's own channel message, or None: the interaction response
        self._token_dead = False

    @classmethod
    async def open(cls, interaction: discord.Interaction, text: str, *, pointer: str) -> "LiveMessage":
        """Send `text` as the bot's own message in the interaction's channel, and answer the interaction
        with `pointer` (plus a link). Falls back on the interaction response when the bot may not send."""
        channel = interaction.channel
        message = None
        if isinstance(channel, discord.abc.Messageable):
            try:
                message = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as e:
                log.warning("cannot send a progress message in channel %s (%s); showing progress in the "
                            "command's response for its first 15 minutes", interaction.channel_id, e)
        live = cls(interaction, message)
        if message is not None:
            await live._edit_response(f"{pointer} {message.jump_url}")
        else:
            await live._edit_response(text)
        return live

    @property
    def ref(self) -> tuple[int, int] | None:
        """(channel id, message id) of the bot's own message, to find it again after a restart."""
        return (self.message.channel.id, self.message.id) if self.message is not None else None

    @property
    def token_alive(self) -> bool:
        return not self._token_dead and discord.utils.utcnow() - self.interaction.created_at < TOKEN_LIFETIME

    async def edit(self, text: str) -> None:
        """Show `text`; never raises."""
        if self.message is not None:
            try:
                await self.message.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as e:
                log.warning("progress message %s not updated: %s", self.message.id, e)
        else:
            await self._edit_response(text)

    async def finish(self, text: str, file: discord.File | None = None) -> None:
        """Show how the job ended, with an optional file beside it; never raises."""
        await self.edit(text)
        if file is None:
            return
        try:
            if self.message is not None:
                await self.message.channel.send(file=file, reference=self.message, mention_author=False)
            elif self.token_alive:
                await self.interaction.followup.send(file=file)
        except discord.HTTPException as e:
            log.warning("the file %s was not sent: %s", file.filename, e)

    async def _edit_response(self, text: str) -> None:
        if not self.token_alive:
            return
        try:
            await self.interaction.edit_original_response(content=text,
                                                          allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as e:
            if getattr(e, "code", None) == INVALID_WEBHOOK_TOKEN or e.status == 401:
                self._token_dead = True
                log.info("the command's response can no longer be edited (its token expired)")
            else:
                log.warning("the command's response was not updated: %s", e)
