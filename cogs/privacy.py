"""Privacy: /forget-me deletes what the bot stored of you and keeps you out of every future training run.
The forgetting is `bot.core.channel_memory`'s; this cog asks, confirms and answers."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot
from bot.core.store import StoreError

log = logging.getLogger("personabot.privacy")


class ConfirmForget(discord.ui.View):
    """Two buttons; only the person who asked can press them."""

    def __init__(self, user_id: int) -> None:
        super().__init__(timeout=120)
        self.user_id = user_id
        self.confirmed: bool | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Forget me", style=discord.ButtonStyle.danger)
    async def forget(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.confirmed = True
        self.stop()
        await interaction.response.defer()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.confirmed = False
        self.stop()
        await interaction.response.defer()


class Privacy(commands.Cog):
    """What the bot keeps about you, and how to make it forget."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot

    @app_commands.command(name="forget-me")
    @app_commands.checks.cooldown(1, 30.0, key=lambda i: i.user.id)
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Delete every message of yours the bot stored, and never train on your words again."""
        view = ConfirmForget(interaction.user.id)
        await interaction.response.send_message(
            "This deletes every message of yours that the bot stored and keeps your words (by your account and "
            f"by your name, {interaction.user.display_name}) out of every future training run. Go ahead?",
            view=view, ephemeral=True)
        await view.wait()
        if not view.confirmed:
            await interaction.edit_original_response(content="Nothing was deleted.", view=None)
            return
        try:
            deleted = await self.bot.memory.forget(interaction.user.id,
                                                   (interaction.user.name, interaction.user.display_name))
        except StoreError as e:
            log.error("forget-me for %s failed: %s", interaction.user.id, e)
            await interaction.edit_original_response(
                content="The database is busy; nothing was deleted yet. Please try again in a minute.", view=None)
            return
        log.info("forgot user %s: %d stored messages deleted", interaction.user.id, deleted)
        await interaction.edit_original_response(
            content=f"Done: {deleted} stored message(s) deleted, and you are excluded from future training.",
            view=None)

async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Privacy(bot))
