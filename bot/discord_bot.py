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
                 retrainer: Retrainer | None = None) -> None:
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

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.tree.sync()

    async def on_ready(self) -> None:
        # Scheduled posts start once the bot is connected: their Discord targets need the gateway.
        if self.poster is None:
            from bot.scheduler import start_posting

            self.poster = await start_posting(self.engine, self.store, self.settings, discord_client=self)

    async def close(self) -> None:
        if self.poster is not None:
            self.poster.stop()
        await super().close()

    def is_admin(self, user: discord.abc.User) -> bool:
        """Manage Server in this guild, or a configured admin user or role."""
        if user.id in self.settings.admin_user_ids:
            return True
        if isinstance(user, discord.Member):
            if user.guild_permissions.manage_guild:
                return True
            return any(role.id in self.settings.admin_role_ids for role in user.roles)
        return False


def admin_only():
    """An app-command check: admins only (see `PersonaBot.is_admin`); others get a clear refusal."""
    from discord import app_commands

    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if isinstance(bot, PersonaBot) and bot.is_admin(interaction.user):
            return True
        raise app_commands.CheckFailure("This command is for server admins only (Manage Server, or an admin "
                                        "user or role configured for the bot).")

    return app_commands.check(predicate)
