"""Talking in character: the bot answers when mentioned or replied to, with the channel's recent messages
as context. Admins can switch it off per channel."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import PersonaBot, guild_admins_only
from bot.engine import EngineClosed
from bot.filters import DISCORD, Target
from bot.store import StoreError

log = logging.getLogger("personabot.chat")

DISABLED = "disabled_channels"


class Chat(commands.Cog):
    """Replies to mentions and to replies, in character."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.per_user = commands.CooldownMapping.from_cooldown(1, settings.user_cooldown_s, commands.BucketType.user)
        self.per_channel = commands.CooldownMapping.from_cooldown(1, settings.channel_cooldown_s,
                                                                  commands.BucketType.channel)
        self._restored: set[int] = set()
        self._disabled: set[int] | None = None

    channel = app_commands.Group(name="channel", description="Where the persona talks",
                                 guild_only=True)

    async def disabled(self) -> set[int]:
        if self._disabled is None:
            self._disabled = set(await self.bot.store.get_setting(DISABLED, []))
        return self._disabled

    async def _window(self, channel_id: int):
        """The channel's context window, restored from the store the first time (it survives a restart)."""
        if channel_id not in self._restored:
            self._restored.add(channel_id)
            window = self.bot.contexts.window(channel_id)
            try:
                stored = await self.bot.store.recent_messages(channel_id)
            except StoreError as e:
                log.warning("cannot restore the context of channel %s: %s", channel_id, e)
                stored = []
            for message in stored:
                window.add(message.author_name, message.content)
        return self.bot.contexts.window(channel_id)

    async def _remember(self, message: discord.Message, speaker: str, text: str) -> None:
        """Into the store (which refuses people who opted out) and, if stored, the context window."""
        window = await self._window(message.channel.id)   # restored first, so this message is not in it twice
        try:
            stored = await self.bot.store.add_message(
                channel_id=message.channel.id, guild_id=message.guild.id if message.guild else None,
                message_id=message.id, author_id=message.author.id, author_name=speaker, content=text,
                is_bot=message.author.bot, created_at=message.created_at.isoformat(timespec="seconds"))
        except StoreError as e:
            log.warning("message %s not stored: %s", message.id, e)
            stored = not await self._opted_out(message.author.id)
        if stored:
            window.add(speaker, text)

    async def _opted_out(self, user_id: int) -> bool:
        try:
            return await self.bot.store.is_opted_out(user_id)
        except StoreError:
            return True   # in doubt, keep nothing of theirs

    async def _addressed(self, message: discord.Message) -> bool:
        me = self.bot.user
        if message.guild is None:
            return True
        if me in message.mentions:
            return True
        reference = message.reference
        if reference is None or reference.message_id is None:
            return False
        replied = reference.resolved if isinstance(reference.resolved, discord.Message) else None
        if replied is None:
            try:
                replied = await message.channel.fetch_message(reference.message_id)
            except discord.HTTPException:
                return False
        return replied.author.id == me.id

    def _on_cooldown(self, message: discord.Message) -> bool:
        """True when this person or this channel got a reply too recently (measured in message time)."""
        now = message.created_at.timestamp()
        user = self.per_user.get_bucket(message, now)
        channel = self.per_channel.get_bucket(message, now)
        if (user and user.get_retry_after(now)) or (channel and channel.get_retry_after(now)):
            return True
        for bucket in (user, channel):
            if bucket:
                bucket.update_rate_limit(now)
        return False

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # Never answer a bot, itself included: two persona bots would talk to each other forever.
        if message.author.bot or self.bot.user is None:
            return
        if message.guild is None and not self.bot.settings.reply_in_dms:
            return
        if message.channel.id in await self.disabled():
            return
        text = message.clean_content.strip()
        if text:
            await self._remember(message, message.author.display_name, text)
        if not await self._addressed(message) or self._on_cooldown(message):
            return
        window = await self._window(message.channel.id)
        turns = window.turns() or [(message.author.display_name, text or "...")]
        try:
            async with message.channel.typing():
                reply = await self.bot.engine.reply(turns, target=discord_target(message.guild))
        except EngineClosed:
            return
        except Exception:  # a failed generation must not take the bot down; the user gets a word
            log.exception("generation failed in channel %s", message.channel.id)
            await message.reply("(I lost my train of thought; try again in a moment.)", mention_author=False)
            return
        sent = await message.reply(reply.text, mention_author=False, allowed_mentions=discord.AllowedMentions.none())
        await self._remember(sent, reply.persona, reply.text)

    @channel.command(name="disable")
    @guild_admins_only()
    async def channel_disable(self, interaction: discord.Interaction) -> None:
        """Stop the persona from talking (and listening) in this channel."""
        await self._switch(interaction, enabled=False)
        await interaction.response.send_message("I will keep quiet in this channel.", ephemeral=True)

    @channel.command(name="enable")
    @guild_admins_only()
    async def channel_enable(self, interaction: discord.Interaction) -> None:
        """Let the persona talk in this channel again."""
        await self._switch(interaction, enabled=True)
        await interaction.response.send_message("I will answer here again.", ephemeral=True)

    async def _switch(self, interaction: discord.Interaction, *, enabled: bool) -> None:
        disabled = await self.disabled()
        if enabled:
            disabled.discard(interaction.channel_id)
        else:
            disabled.add(interaction.channel_id)
        await self.bot.store.set_setting(DISABLED, sorted(disabled))

def discord_target(guild: discord.Guild | None) -> Target:
    """Discord as a target for a reply in `guild`: its 2,000 characters, and mentions turned into the names of
    that guild's members and roles (in a DM, or for someone unknown there: "@user", "@role")."""

    def name(kind: str, ident: str) -> str | None:
        if guild is None or not ident.isdigit():
            return None
        if kind == "role":
            role = guild.get_role(int(ident))
            return role.name if role else None
        member = guild.get_member(int(ident))
        return member.display_name if member else None

    return DISCORD.with_names(name)


async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Chat(bot))
