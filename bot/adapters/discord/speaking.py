"""Speaking in a channel as a persona: the one place that sends a persona's text to Discord.

A registered persona speaks through the bot's own webhook of the channel ("personabot", one per channel,
found again after a restart rather than created anew), under the persona's name and avatar, so that several
personas in one channel look like several people. A webhook message cannot be a Discord reply; it simply
follows the message it answers. What Discord said about a channel's webhooks (none is the bot's; the channel
is at Discord's webhook cap) is believed for a few minutes (`WEBHOOK_MEMORY_S`) rather than asked per reply.

Without Manage Webhooks in the channel (or when the bot's configured persona speaks) the bot sends as itself,
replying to the message it answers; a registered persona's text then opens with its name in bold
(`**Name:** text`), which is also how a reply to it is routed back to it (`persona_of`). Every message pings
nobody (`AllowedMentions.none()`).

Every message `speak` sends keeps to Discord's send limits (`send_limits.SendLimits`, the bot's): it waits its
turn in its channel's queue, and one that says how to tell it is no longer worth sending may be dropped there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import discord

from bot.adapters.discord.send_limits import SendLimits, SendTurn
from bot.core.personas import PersonaRef

log = logging.getLogger("personabot.speaking")

WEBHOOK_NAME = "personabot"
MESSAGE_LIMIT = 2000                         # Discord's limit on a message's content
MAX_WEBHOOKS_ERROR = 30007                   # Discord's error code: the channel has its 15 webhooks
# How long what Discord said about a channel's webhooks (none is ours; the channel is at the cap) is believed.
WEBHOOK_MEMORY_S = 300.0
# What `speak` puts before a registered persona's text when it cannot use a webhook.
_NAMED = re.compile(r"^\*\*(?P<name>[^*\n]{1,32}):\*\* ")


class WebhookCapReached(Exception):
    """The channel has as many webhooks as Discord allows (error 30007) and none of them is the bot's."""


class Webhooks:
    """The bot's webhook of each channel, cached by channel id (a thread uses its parent's), and the ids of
    every webhook of ours seen, so that a message one of them sent is known as a persona's.

    What Discord said about a channel is remembered for `WEBHOOK_MEMORY_S`: that none of its webhooks is ours
    (so replies to another app's webhook messages, PluralKit's for instance, do not list them again each
    time), and that it is at Discord's webhook cap (so a persona there speaks as the bot at once, without
    asking for a webhook on every reply). After that the channel is asked again: a webhook of ours may have
    been made there by another of the bot's processes, or a slot freed."""

    def __init__(self) -> None:
        self._by_channel: dict[int, discord.Webhook] = {}
        self._ids: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        # channel id -> time.monotonic() until which the answer holds
        self._none_until: dict[int, float] = {}
        self._capped_until: dict[int, float] = {}

    async def get(self, channel: discord.abc.GuildChannel) -> discord.Webhook:
        """The bot's webhook of `channel` (not a thread): cached, else the one the bot made earlier, else a new
        one. One lock per channel, so that two replies at once do not make two webhooks. WebhookCapReached
        while the channel is known to be at Discord's webhook cap; discord.HTTPException when Discord refuses."""
        async with self._locks.setdefault(channel.id, asyncio.Lock()):
            if _fresh(self._capped_until, channel.id):
                raise WebhookCapReached(f"channel {channel.id} is at Discord's webhook cap")
            webhook = await self._look_up(channel)
            if webhook is not None:
                return webhook
            try:
                webhook = await channel.create_webhook(name=WEBHOOK_NAME, reason="personas speak through it")
            except discord.HTTPException as e:
                if e.code == MAX_WEBHOOKS_ERROR:
                    self._capped_until[channel.id] = time.monotonic() + WEBHOOK_MEMORY_S
                    log.warning("channel %s has Discord's most webhooks (%s); personas there speak as the bot, "
                                "asking again in %d s", channel.id, e.text, WEBHOOK_MEMORY_S)
                    raise WebhookCapReached(f"channel {channel.id} is at Discord's webhook cap ({e.text})") from e
                raise
            self._remember(channel.id, webhook)
            return webhook

    def drop(self, channel_id: int) -> None:
        """Forget the cached webhook of a channel (it was deleted in Discord)."""
        self._by_channel.pop(channel_id, None)

    async def is_ours(self, channel: discord.abc.Messageable, webhook_id: int | None) -> bool:
        """Whether `webhook_id` is a webhook of ours (after a restart: the bot's webhooks of the channel, looked
        up when the bot may see the channel's webhooks, and not again for a while when none is ours)."""
        if webhook_id is None:
            return False
        if webhook_id in self._ids:
            return True
        parent = _webhook_channel(channel)
        if parent is None or not _may_use_webhooks(channel):
            return False
        async with self._locks.setdefault(parent.id, asyncio.Lock()):
            try:
                await self._look_up(parent)
            except discord.HTTPException as e:
                log.warning("cannot list the webhooks of channel %s: %s", parent.id, e)
                self._none_until[parent.id] = time.monotonic() + WEBHOOK_MEMORY_S   # nor ask again at once
        return webhook_id in self._ids

    async def _look_up(self, channel: discord.abc.GuildChannel) -> discord.Webhook | None:
        """The bot's webhook of `channel`: cached, else listed (unless a listing found none of ours lately).
        Call it holding the channel's lock."""
        cached = self._by_channel.get(channel.id)
        if cached is not None or _fresh(self._none_until, channel.id):
            return cached
        me = channel.guild.me
        mine = [w for w in await channel.webhooks()
                if w.user is not None and w.user.id == me.id and w.token is not None]
        self._ids.update(w.id for w in mine)       # an older one of ours still has messages in the channel
        # Its name first, should there be several.
        webhook = next((w for w in mine if w.name == WEBHOOK_NAME), mine[0] if mine else None)
        if webhook is None:
            self._none_until[channel.id] = time.monotonic() + WEBHOOK_MEMORY_S
        else:
            self._remember(channel.id, webhook)
        return webhook

    def _remember(self, channel_id: int, webhook: discord.Webhook) -> None:
        self._by_channel[channel_id] = webhook
        self._ids.add(webhook.id)
        self._none_until.pop(channel_id, None)
        self._capped_until.pop(channel_id, None)


def _fresh(until: dict[int, float], channel_id: int) -> bool:
    """Whether what `until` remembers of the channel still holds (dropping it once it does not)."""
    deadline = until.get(channel_id)
    if deadline is None:
        return False
    if time.monotonic() < deadline:
        return True
    del until[channel_id]
    return False


async def persona_of(message: discord.Message, bot_user_id: int, webhooks: Webhooks) -> str | None:
    """The name of the registered persona that sent `message`: a webhook of ours (the name it was sent under
    is the persona's), or the bot's own message opening with a name in bold. None for anything else."""
    if message.webhook_id is not None:
        return message.author.name if await webhooks.is_ours(message.channel, message.webhook_id) else None
    if message.author.id == bot_user_id:
        named = _NAMED.match(message.content)
        return named.group("name").strip() if named else None
    return None


def people_wrote_since(client: discord.Client, message: discord.Message) -> bool:
    """Whether someone other than a bot (the personas are bots) wrote in `message`'s channel after it, as far
    as the client's message cache knows: the conversation moved on. A `still_useful` check for a reply to
    `message` (`not people_wrote_since(...)`). Newest first, so it stops at `message`."""
    for cached in reversed(client.cached_messages):
        if cached.id <= message.id:
            return False
        if cached.channel.id == message.channel.id and not cached.author.bot:
            return True
    return False


async def speak(channel: discord.abc.Messageable, text: str, *, persona: PersonaRef | None,
                reply_to: discord.Message | None = None, webhooks: Webhooks | None = None,
                send_limits: SendLimits | None = None,
                still_useful: Callable[[], bool] | None = None) -> discord.Message | None:
    """Send `text` to `channel` as the registered `persona`, under its name and avatar (None: the bot's
    configured persona, as the bot itself), answering `reply_to` when given; returns the message sent.
    `webhooks` is the bot's cache (without it, the channel's webhook is looked up each time). A deleted webhook
    is made again once; a webhook that cannot be used otherwise falls back to the bot's own message.

    The message keeps to `send_limits` (the bot's; without it, to a fresh one that knows of no earlier send),
    waiting its turn in the channel's queue. With `still_useful` (called when the message was held back there:
    False when it is no longer worth sending), a held-back message may be dropped, not sent: None is returned
    then, and the drop is counted. Without `still_useful` a message is never dropped and never None."""
    send_limits = send_limits if send_limits is not None else SendLimits()
    async with send_limits.turn(channel.id, still_useful) as turn:
        return await _speak_in_turn(channel, text, persona, reply_to, webhooks, turn)


async def _speak_in_turn(channel: discord.abc.Messageable, text: str, persona: PersonaRef | None,
                         reply_to: discord.Message | None, webhooks: Webhooks | None,
                         turn: SendTurn) -> discord.Message | None:
    persona_name = persona.name if persona is not None else None
    avatar_url = persona.avatar_url if persona is not None else None
    if persona_name is not None and _may_use_webhooks(channel):
        webhooks = webhooks if webhooks is not None else Webhooks()
        for attempt in (1, 2):
            try:
                return await _through_webhook(channel, text, persona_name, avatar_url, webhooks, turn)
            except discord.NotFound:      # deleted in Discord since we cached it: make it again, once
                webhooks.drop(_webhook_channel(channel).id)
                if attempt == 2:
                    log.warning("the webhook of channel %s vanished twice; sending as the bot", channel.id)
            except WebhookCapReached:      # said once, when Discord told us: speak as the bot
                break
            except discord.HTTPException as e:   # speak as the bot instead
                log.warning("cannot speak through a webhook in channel %s (%s); sending as the bot", channel.id, e)
                break
    if persona_name is not None:
        text = f"**{persona_name}:** {text}"
    text = text[:MESSAGE_LIMIT]
    if not await turn.clear():
        return None
    if reply_to is not None:
        return await reply_to.reply(text, mention_author=False, allowed_mentions=discord.AllowedMentions.none())
    return await channel.send(text, allowed_mentions=discord.AllowedMentions.none())


async def _through_webhook(channel: discord.abc.Messageable, text: str, name: str, avatar_url: str | None,
                           webhooks: Webhooks, turn: SendTurn) -> discord.Message | None:
    """The message sent through the channel's webhook once the send limits let it go; None: dropped."""
    parent = _webhook_channel(channel)
    webhook = await webhooks.get(parent)
    if not await turn.clear(webhook_channel_id=parent.id):
        return None
    thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
    return await webhook.send(text[:MESSAGE_LIMIT], username=name, avatar_url=avatar_url or discord.utils.MISSING,
                              allowed_mentions=discord.AllowedMentions.none(), wait=True, thread=thread)


def _webhook_channel(channel: discord.abc.Messageable) -> discord.abc.GuildChannel | None:
    """The channel whose webhook speaks in `channel`: itself, or a thread's parent (threads have none)."""
    if isinstance(channel, discord.Thread):
        return channel.parent
    return channel if isinstance(channel, discord.abc.GuildChannel) else None


def _may_use_webhooks(channel: discord.abc.Messageable) -> bool:
    """Whether the bot may make and use webhooks in `channel` (never in a DM)."""
    guild = getattr(channel, "guild", None)
    if guild is None or guild.me is None or _webhook_channel(channel) is None:
        return False
    return channel.permissions_for(guild.me).manage_webhooks
