"""Talking in character: the bot answers when mentioned or replied to, with the channel's recent messages
as context. Admins can switch it off per channel. What the bot remembers is `bot.core.channel_memory`'s; this cog
translates between Discord and it, and tells the bot's metrics about each reply.

Who answers: a reply to a message a registered persona sent (through our webhook, or as the bot with its name
in bold) goes to that persona, as this server sees it; anything else goes to the channel's persona (the
nearest assignment, `bot.core.personas.resolve`), or the bot's configured persona when none is assigned. Every
turn is remembered under the name of whoever said it, so each persona knows its own earlier lines."""

from __future__ import annotations

import logging
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, guild_admins_only
from bot.adapters.discord.speaking import persona_of, speak
from bot.core.channel_memory import HeardMessage
from bot.core.filters import DISCORD, Target
from bot.core.personas import PersonaRef
from bot.core.store import PersonaEntry, StoreError
from bot.inference.engine import EngineClosed

log = logging.getLogger("personabot.chat")


class Chat(commands.Cog):
    """Replies to mentions and to replies, in character."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.per_user = commands.CooldownMapping.from_cooldown(1, settings.user_cooldown_s, commands.BucketType.user)
        self.per_channel = commands.CooldownMapping.from_cooldown(1, settings.channel_cooldown_s,
                                                                  commands.BucketType.channel)

    channel = app_commands.Group(name="channel", description="Where the persona talks",
                                 guild_only=True)

    async def _replied(self, message: discord.Message) -> discord.Message | None:
        """The message `message` replies to, if any and if it can still be read."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        try:
            return await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:
            return None

    async def _addressed(self, message: discord.Message, replied: discord.Message | None) -> bool:
        """Whether `message` speaks to the bot: a DM, a mention, or a reply to the bot or to one of its
        personas' webhook messages."""
        me = self.bot.user
        if message.guild is None or me in message.mentions:
            return True
        if replied is None:
            return False
        return replied.author.id == me.id or await self.bot.webhooks.is_ours(message.channel, replied.webhook_id)

    async def _speaker(self, message: discord.Message, replied: discord.Message | None) -> PersonaEntry | None:
        """The registered persona that answers `message` (None: the bot's configured persona): the one that
        sent the message replied to, when this server still sees it, else the channel's."""
        guild_id = message.guild.id if message.guild else None
        try:
            name = await persona_of(replied, self.bot.user.id, self.bot.webhooks) if replied else None
            if name is not None:
                found = await self.bot.store.find_persona(name, guild_id)
                if found is not None:
                    return found
            return await self.bot.persona_at(message.channel)
        except StoreError as e:    # the configured persona answers rather than nobody
            log.warning("cannot look up the persona of channel %s: %s", message.channel.id, e)
            return None

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
        memory = self.bot.memory
        if await memory.disabled(message.channel.id):
            return
        text = message.clean_content.strip()
        if text:
            await memory.remember(heard(message, message.author.display_name, text))
        replied = await self._replied(message)
        if not await self._addressed(message, replied) or self._on_cooldown(message):
            return
        turns = await memory.context(message.channel.id) or [(message.author.display_name, text or "...")]
        await self._answer(message, turns, await self._speaker(message, replied))

    async def _answer(self, message: discord.Message, turns: list[tuple[str, str]],
                      speaker: PersonaEntry | None) -> None:
        """Reply to `message` in character after `turns`, as `speaker` (None: the bot's configured persona),
        and count the reply (outcome, seconds from here to sent, rejected samples) in the bot's metrics."""
        metrics, began = self.bot.metrics, time.perf_counter()
        ref = PersonaRef.of(speaker) if speaker is not None else None
        try:
            async with message.channel.typing():
                reply = await self.bot.engine.reply(turns, target=discord_target(message.guild), persona=ref)
        except EngineClosed:
            return
        except Exception:  # a failed generation must not take the bot down; the user gets a word
            log.exception("generation failed in channel %s", message.channel.id)
            metrics.reply_failed(time.perf_counter() - began)
            await message.reply("(I lost my train of thought; try again in a moment.)", mention_author=False)
            return
        sent = await speak(message.channel, reply.text, persona=ref, reply_to=message, webhooks=self.bot.webhooks)
        metrics.reply_sent(reply, time.perf_counter() - began)
        # Remembered here, under the persona's name and without the bold name `speak` may put before it; when
        # the webhook's message comes back as a message event, its author is a bot and it is not read again.
        await self.bot.memory.remember(heard(sent, reply.persona, reply.text))

    @channel.command(name="disable")
    @guild_admins_only()
    async def channel_disable(self, interaction: discord.Interaction) -> None:
        """Stop the persona from talking (and listening) in this channel."""
        await self.bot.memory.set_disabled(interaction.channel_id, True)
        await interaction.response.send_message("I will keep quiet in this channel.", ephemeral=True)

    @channel.command(name="enable")
    @guild_admins_only()
    async def channel_enable(self, interaction: discord.Interaction) -> None:
        """Let the persona talk in this channel again."""
        await self.bot.memory.set_disabled(interaction.channel_id, False)
        await interaction.response.send_message("I will answer here again.", ephemeral=True)


def heard(message: discord.Message, speaker: str, text: str) -> HeardMessage:
    """`message` as channel memory keeps it, said by `speaker` (a display name) in words `text`."""
    return HeardMessage(channel_id=message.channel.id, guild_id=message.guild.id if message.guild else None,
                        message_id=message.id, author_id=message.author.id, author_name=speaker, text=text,
                        is_bot=message.author.bot, created_at=message.created_at.isoformat(timespec="seconds"))


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
