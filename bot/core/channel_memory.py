"""Channel memory: what the bot remembers of each channel's talk (the context of its replies), and what it must
forget. One service, free of Discord, that the chat cog and /forget-me call:

- a context window per channel (`bot.core.context.ContextWindows`), read back from the store the first time a
  channel is used after a restart;
- remembering a message: into the store, which refuses people who opted out, then (only if stored) into the
  channel's window; when the store fails, into the window only if its author has not opted out;
- forgetting a person: their stored messages deleted and their opt-out recorded (`Store.forget_user`), then
  their turns dropped from every window;
- the channels where the persona neither talks nor listens (the store setting `disabled_channels`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from bot.core.context import ContextWindow, ContextWindows, TokenCounter
from bot.core.store import Store, StoreError

log = logging.getLogger("personabot.memory")

DISABLED_CHANNELS = "disabled_channels"   # the store setting: ids of channels where the persona keeps quiet


@dataclass(frozen=True, slots=True)
class HeardMessage:
    """A message the bot saw (or sent), as channel memory keeps it."""

    channel_id: int
    guild_id: int | None       # None in a DM
    message_id: int
    author_id: int
    author_name: str           # the speaker's name in the context, as the persona will read it
    text: str
    is_bot: bool
    created_at: str            # ISO 8601, to the second


class ChannelMemory:
    """The bot's memory of its channels: context windows, the store behind them, opt-outs, quiet channels."""

    def __init__(self, store: Store, budget: int, count: TokenCounter) -> None:
        self.store = store
        self.windows = ContextWindows(budget, count)
        self._restored: set[int] = set()
        self._disabled: set[int] | None = None

    def turns(self, channel_id: int) -> list[tuple[str, str]]:
        """The channel's context as held in memory now, oldest first (nothing is read back from the store)."""
        return self.windows.turns(channel_id)

    async def context(self, channel_id: int) -> list[tuple[str, str]]:
        """The channel's context, oldest first, read back from the store the first time after a restart."""
        return (await self._window(channel_id)).turns()

    async def remember(self, message: HeardMessage) -> bool:
        """Store `message` (refused when its author opted out) and add it to its channel's context; returns
        whether it went into the context."""
        window = await self._window(message.channel_id)   # restored first, so this message is not in it twice
        try:
            stored = await self.store.add_message(
                channel_id=message.channel_id, guild_id=message.guild_id, message_id=message.message_id,
                author_id=message.author_id, author_name=message.author_name, content=message.text,
                is_bot=message.is_bot, created_at=message.created_at)
        except StoreError as e:
            log.warning("message %s not stored: %s", message.message_id, e)
            stored = not await self.opted_out(message.author_id)
        if stored:
            window.add(message.author_name, message.text)
        return stored

    async def opted_out(self, user_id: int) -> bool:
        """Whether the person asked to be forgotten; True when the store cannot tell (keep nothing of theirs)."""
        try:
            return await self.store.is_opted_out(user_id)
        except StoreError:
            return True

    async def forget(self, user_id: int, names: Iterable[str]) -> int:
        """Delete what is stored of the person, keep them out of storage and (under each of `names`) out of
        training, and drop their turns from every context window; returns the stored messages deleted.
        Raises `StoreError` (and forgets nothing) when the store cannot do it."""
        names = sorted(set(names))
        deleted = await self.store.forget_user(user_id, *names)
        for name in names:
            self.windows.forget_speaker(name)
        return deleted

    async def disabled(self, channel_id: int) -> bool:
        """Whether the persona keeps quiet in the channel (and does not listen there either)."""
        return channel_id in await self._disabled_channels()

    async def set_disabled(self, channel_id: int, disabled: bool) -> None:
        """Switch the persona off (`disabled`) or back on in the channel; kept in the store."""
        channels = await self._disabled_channels()
        if disabled:
            channels.add(channel_id)
        else:
            channels.discard(channel_id)
        await self.store.set_setting(DISABLED_CHANNELS, sorted(channels))

    async def _disabled_channels(self) -> set[int]:
        if self._disabled is None:
            self._disabled = set(await self.store.get_setting(DISABLED_CHANNELS, []))
        return self._disabled

    async def _window(self, channel_id: int) -> ContextWindow:
        """The channel's context window, restored from the store the first time (it survives a restart)."""
        if channel_id not in self._restored:
            self._restored.add(channel_id)
            window = self.windows.window(channel_id)
            try:
                stored = await self.store.recent_messages(channel_id)
            except StoreError as e:
                log.warning("cannot restore the context of channel %s: %s", channel_id, e)
                stored = []
            for message in stored:
                window.add(message.author_name, message.content)
        return self.windows.window(channel_id)
