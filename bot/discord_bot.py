"""The discord.py bot: a `commands.Bot` subclass that holds the engine, the store and the context windows,
and loads one cog per feature in `setup_hook`. Generated text can never ping anyone: every message goes out
with `AllowedMentions.none()` (and the filters have already defused mentions in the text)."""

from __future__ import annotations

import logging
import time

import discord
from discord.ext import commands

from bot.config import Settings
from bot.context import ContextWindows
from bot.engine import Engine
from bot.retrain import Retrainer
from bot.store import Store
from bot.tenancy import GUILD_ADMINS_ONLY, OWNERS_ONLY, Authority

log = logging.getLogger("personabot.discord")

EXTENSIONS = ("cogs.chat", "cogs.privacy", "cogs.admin", "cogs.posts")


def intents_for(settings: Settings) -> discord.Intents:
    """Only what the bot needs: guilds and their messages, DMs when it answers them, and message content
    (privileged) when it may read channels for context; without it, it sees only messages that mention it."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = settings.reply_in_dms
    intents.message_content = settings.message_content
    return intents


class PersonaBot(commands.Bot):
    def __init__(self, settings: Settings, engine: Engine, store: Store, *,
                 retrainer: Retrainer | None = None, interrupted_runs: list[dict] | None = None) -> None:
        # No prefix commands: everything is a slash command or a mention.
        super().__init__(command_prefix=lambda bot, message: [], intents=intents_for(settings),
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None)
        self.settings = settings
        self.engine = engine
        self.store = store
        self.contexts = ContextWindows(engine.persona.settings.context_tokens, engine.count_tokens)
        self.retrainer = retrainer or Retrainer(engine, store, data_dir=settings.train_data_dir,
                                                models_dir=settings.models_dir,
                                                loss_margin=settings.retrain_loss_margin,
                                                include_logged=settings.log_messages_for_training)
        self.started = time.time()
        self.poster = None              # the post scheduler, started once connected
        # Retrains a restart cut short (see bot.retrain.close_interrupted_runs): said in their messages.
        self.interrupted_runs = list(interrupted_runs or [])

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.tree.sync()

    async def on_ready(self) -> None:
        # Scheduled posts start once the bot is connected: their Discord targets need the gateway.
        if self.poster is None:
            from bot.scheduler import start_posting

            self.poster = await start_posting(self.engine, self.store, self.settings, discord_client=self)
        await self._announce_interrupted_runs()

    async def _announce_interrupted_runs(self) -> None:
        """Say in each interrupted retrain's progress message that it ended with the restart."""
        runs, self.interrupted_runs = self.interrupted_runs, []
        for run in runs:
            channel_id, message_id = run.get("progress_channel_id"), run.get("progress_message_id")
            if not channel_id or not message_id:
                continue
            try:
                channel = self.get_channel(channel_id) or await self.fetch_channel(channel_id)
                await channel.get_partial_message(message_id).edit(
                    content="Retrain ended: the bot restarted while it was training. Nothing was swapped; the "
                            "model that served before keeps serving. `/retrain start` runs it again.")
            except (discord.HTTPException, AttributeError) as e:
                log.warning("could not update the progress message of interrupted retrain %s: %s", run["id"], e)

    async def shutdown(self) -> None:
        """Stop for good (SIGTERM): end a running retrain first (its child waited for, its message saying
        why), then close the gateway."""
        await self.retrainer.shutdown()
        await self.close()

    async def close(self) -> None:
        if self.poster is not None:
            self.poster.stop()
        await super().close()

    async def authority(self, interaction: discord.Interaction) -> Authority:
        """What the person behind `interaction` may govern where they used it (see `bot.tenancy`)."""
        user = interaction.user
        owner = user.id in self.settings.admin_user_ids or await self.is_owner(user)
        guild_admin = False
        # Powers in a guild come from that guild's member object: its permissions and its roles only.
        if interaction.guild_id is not None and isinstance(user, discord.Member) \
                and user.guild.id == interaction.guild_id:
            guild_admin = (user.guild_permissions.manage_guild
                           or any(role.id in self.settings.admin_role_ids for role in user.roles))
        return Authority(user.id, interaction.guild_id, owner, guild_admin or owner)

    def guild_of_channel(self, channel_id: int) -> int | None:
        """The guild a channel (or thread) belongs to, when the bot knows it."""
        channel = self.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return guild.id if guild is not None else None


def owners_only():
    """An app-command check: the bot's owners only (global powers, see `bot.tenancy`)."""
    from discord import app_commands

    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if isinstance(bot, PersonaBot) and (await bot.authority(interaction)).is_owner:
            return True
        raise app_commands.CheckFailure(OWNERS_ONLY)

    return app_commands.check(predicate)


def guild_admins_only():
    """An app-command check: admins of the guild the command is used in, or the bot's owners."""
    from discord import app_commands

    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if isinstance(bot, PersonaBot) and (await bot.authority(interaction)).may_govern_guild:
            return True
        raise app_commands.CheckFailure(GUILD_ADMINS_ONLY)

    return app_commands.check(predicate)
