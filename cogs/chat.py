"""Talking in character: the bot answers when mentioned or replied to, with the channel's recent messages
as context. Admins can switch it off per channel. What the bot remembers is `bot.core.channel_memory`'s; this cog
translates between Discord and it, and tells the bot's metrics about each reply.

Who answers: a reply to a message a registered persona sent (through our webhook, or as the bot with its name
in bold) goes to that persona, as this server sees it; anything else goes to the channel's persona (the
nearest assignment, `bot.core.personas.resolve`), or the bot's configured persona when none is assigned. Every
turn is remembered under the name of whoever said it, so each persona knows its own earlier lines."""

from __future__ import annotations

import asyncio
import logging
import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, guild_admins_only
from bot.adapters.discord.speaking import people_wrote_since, persona_of, speak
from bot.core.channel_memory import HeardMessage
from bot.core.filters import DISCORD, Target
from bot.core.joining import JoinSettings, parse_quiet_hours, wakes
from bot.core.personas import PersonaRef
from bot.core.store import PersonaEntry, StoreError
from bot.inference.engine import EngineClosed

log = logging.getLogger("personabot.chat")


class Chat(commands.Cog):
    """Replies to mentions and to replies, in character."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot
        self._burst_last: dict[int, discord.Message] = {}     # channel -> the last message of its burst
        self._burst_tasks: dict[int, asyncio.Task] = {}
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
        # The store refuses the words of people who asked to be forgotten: theirs never wake the persona.
        kept = await memory.remember(heard(message, message.author.display_name, text)) if text else \
            not await memory.opted_out(message.author.id)
        replied = await self._replied(message)
        speaker = await self._speaker(message, replied)
        if not await self._addressed(message, replied):
            # Unasked: a wake word, or a burst the persona may join (never in a DM, never for the forgotten).
            if message.guild is None or not kept:
                return
            settings = await self.bot.talk.settings(message.guild.id, message.channel.id)
            name = speaker.name if speaker is not None else self.bot.engine.persona.name
            if not wakes(text, settings.words_for(name)) or settings.quiet_at(message.created_at.hour):
                self._hear(message, settings)
                return
        if not await self._within_limits(message) or self._on_cooldown(message):
            return
        talk = self.bot.talk.known_channel(message.channel.id)
        if talk is not None:        # this answer answers the burst before it too
            talk.drop_burst()
        turns = await memory.context(message.channel.id) or [(message.author.display_name, text or "...")]
        await self._answer(message, turns, speaker)

    async def _within_limits(self, message: discord.Message) -> bool:
        """Whether the person's interaction is within their budget (`bot.core.joining.PersonLimits`); past it
        they are told once, privately, how long the persona will not answer them."""
        now = message.created_at.timestamp()
        verdict = self.bot.talk.limits.check(message.author.id, now)
        if verdict.allowed:
            return True
        if verdict.notify:
            self.bot.metrics.person_cooled_down()
            try:
                await message.author.send(
                    f"You have been talking to me a lot: I will not answer you for {verdict.until - now:.0f} s "
                    "(longer each time it happens again today).")
            except discord.HTTPException as e:     # DMs closed: the silence says it
                log.info("could not tell %s about their cool-down: %s", message.author.id, e)
        return False

    def _hear(self, message: discord.Message, settings: JoinSettings) -> None:
        """`message` joins its channel's burst; a task per channel waits for the burst's end."""
        channel_id = message.channel.id
        self.bot.talk.channel(channel_id, settings.seed).heard(asyncio.get_running_loop().time())
        self._burst_last[channel_id] = message
        task = self._burst_tasks.get(channel_id)
        if task is None or task.done():
            self._burst_tasks[channel_id] = asyncio.create_task(self._burst_ends(channel_id),
                                                                name=f"burst-{channel_id}")

    async def _burst_ends(self, channel_id: int) -> None:
        """Wait for the channel's burst to end, then let the persona answer it or not (`ChannelTalk.end_burst`)."""
        loop = asyncio.get_running_loop()
        while True:
            talk = self.bot.talk.known_channel(channel_id)
            if talk is None or talk.burst_started is None:
                return
            wait = talk.burst_due() - loop.time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        message = self._burst_last.pop(channel_id)
        settings = await self.bot.talk.settings(message.guild.id, channel_id)
        talk = self.bot.talk.channel(channel_id, settings.seed)
        kind = talk.end_burst(loop.time(), settings, message.created_at.hour)
        if kind is None or await self.bot.memory.disabled(channel_id):
            return
        turns = await self.bot.memory.context(channel_id)
        if not turns:
            return
        talk.spoke(loop.time(), counted=True)      # counted before it speaks: a slow reply cannot overspend
        self.bot.metrics.spoke_unasked(kind)
        await self._answer(message, turns, await self.bot.persona_at(message.channel), unasked=True)

    async def _answer(self, message: discord.Message, turns: list[tuple[str, str]],
                      speaker: PersonaEntry | None, *, unasked: bool = False) -> None:
        """Reply to `message` in character after `turns`, as `speaker` (None: the bot's configured persona),
        and count the reply (outcome, seconds from here to sent, rejected samples) in the bot's metrics.
        `unasked`: it joins the talk on its own, after the last message rather than as a reply to it."""
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
        sent = await speak(message.channel, reply.text, persona=ref, reply_to=None if unasked else message,
                           webhooks=self.bot.webhooks, send_limits=self.bot.send_limits,
                           still_useful=lambda: not people_wrote_since(self.bot, message))
        if sent is None:    # held back by Discord's limits while people talked on: dropped, and counted
            metrics.samples_rejected(reply.rejected)
            return
        metrics.reply_sent(reply, time.perf_counter() - began)
        if message.guild is not None:    # a burst soon after is a follow-up's chance
            settings = await self.bot.talk.settings(message.guild.id, message.channel.id)
            self.bot.talk.channel(message.channel.id, settings.seed).spoke(asyncio.get_running_loop().time(),
                                                                           counted=False)
        # Remembered here, under the persona's name and without the bold name `speak` may put before it; when
        # the webhook's message comes back as a message event, its author is a bot and it is not read again.
        await self.bot.memory.remember(heard(sent, reply.persona, reply.text))

    talk = app_commands.Group(name="talk", description="When the persona joins in unasked", guild_only=True)

    @talk.command(name="set")
    @app_commands.describe(scope="this channel, or the server's default for its channels",
                           unasked="% chance to answer a burst of messages nobody addressed to it",
                           followup="% chance to answer a burst that comes soon after it spoke",
                           wake_words="comma-separated words that address it (- : its name)",
                           quiet_hours="UTC hours with nothing unasked, like 22-7 (none: no quiet hours)",
                           turns_per_hour="unasked answers, follow-ups and scene turns per hour here",
                           seed="a number that makes its chances repeat (tests, replays)")
    @app_commands.choices(scope=[app_commands.Choice(name="channel", value="channel"),
                                 app_commands.Choice(name="server", value="server")])
    @guild_admins_only()
    async def talk_set(self, interaction: discord.Interaction, scope: str = "channel",
                       unasked: app_commands.Range[int, 0, 100] | None = None,
                       followup: app_commands.Range[int, 0, 100] | None = None, wake_words: str | None = None,
                       quiet_hours: str | None = None,
                       turns_per_hour: app_commands.Range[int, 0, 3600] | None = None,
                       seed: int | None = None) -> None:
        """Set when the persona joins in unasked, here or in the whole server."""
        channel_id = interaction.channel_id if scope == "channel" else None
        given = {"unasked": None if unasked is None else unasked / 100,
                 "followup": None if followup is None else followup / 100,
                 "turns_per_hour": turns_per_hour, "seed": seed}
        changes = {key: value for key, value in given.items() if value is not None}
        try:
            if wake_words is not None:
                changes["wake_words"] = [] if wake_words.strip() == "-" else \
                    [w.strip() for w in wake_words.split(",") if w.strip()]
            if quiet_hours is not None:
                changes["quiet_hours"] = parse_quiet_hours(quiet_hours)
            now = await self.bot.talk.change(interaction.guild_id, channel_id, **changes)
        except (ValueError, StoreError) as e:
            await interaction.response.send_message(f"Not changed: {e}.", ephemeral=True)
            return
        where = "this channel" if channel_id else "this server (channels without their own settings)"
        await interaction.response.send_message(f"In {where}: {now.describe()}.", ephemeral=True)

    @talk.command(name="reset")
    @app_commands.choices(scope=[app_commands.Choice(name="channel", value="channel"),
                                 app_commands.Choice(name="server", value="server")])
    @guild_admins_only()
    async def talk_reset(self, interaction: discord.Interaction, scope: str = "channel") -> None:
        """Back to the server's settings (a channel) or the bot's (the server)."""
        channel_id = interaction.channel_id if scope == "channel" else None
        try:
            await self.bot.talk.reset(interaction.guild_id, channel_id)
            now = await self.bot.talk.settings(interaction.guild_id, interaction.channel_id)
        except StoreError as e:
            await interaction.response.send_message(f"Not changed: {e}.", ephemeral=True)
            return
        await interaction.response.send_message(f"Reset. Here now: {now.describe()}.", ephemeral=True)

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
