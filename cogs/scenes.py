"""Scenes: two personas of a server talking to each other in a channel, for a bounded number of turns.

`/scene start persona_a persona_b [topic] [turns]` (the server's admins) runs one scene per channel: the two
take turns through the channel's webhook, each reading the channel's recent talk (anyone's message joins in,
as it would in any conversation) and, when given, the topic as the admin's opening line; at least
`SCENE_GAP_S` apart. The scene ends at its turns, when the channel's hourly budget of unasked turns
(`bot.core.joining`) runs out, or with `/scene stop`. Outside a scene personas never answer one another or any
bot (the chat cog's rule).
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, guild_admins_only
from bot.adapters.discord.speaking import speak
from bot.core.personas import PersonaRef
from bot.core.store import PersonaEntry
from bot.inference.engine import EngineClosed
from cogs.chat import discord_target, heard
from cogs.utils.personas import find_or_say, persona_names

log = logging.getLogger("personabot.scenes")

# Seconds between two turns of a scene at least (Character Engine's floor): readable, and far inside
# Discord's send limits.
SCENE_GAP_S = 5.0
SCENE_TURNS = 8
MAX_SCENE_TURNS = 50


class Scenes(commands.Cog):
    """Two personas in a conversation of their own."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot
        self.running: dict[int, asyncio.Task] = {}      # channel id -> its scene

    async def cog_unload(self) -> None:
        for task in self.running.values():
            task.cancel()

    scene = app_commands.Group(name="scene", description="Two personas talking to each other here",
                               guild_only=True)

    @scene.command(name="start")
    @app_commands.describe(persona_a="who speaks first", persona_b="who answers",
                           topic="an opening line for them to talk about", turns=f"turns in all (default {SCENE_TURNS})")
    @app_commands.autocomplete(persona_a=persona_names, persona_b=persona_names)
    @guild_admins_only()
    async def scene_start(self, interaction: discord.Interaction, persona_a: str, persona_b: str,
                          topic: str | None = None,
                          turns: app_commands.Range[int, 1, MAX_SCENE_TURNS] = SCENE_TURNS) -> None:
        """Two of this server's personas talk to each other in this channel for a few turns."""
        channel_id = interaction.channel_id
        if channel_id in self.running and not self.running[channel_id].done():
            await interaction.response.send_message("A scene is already running here: `/scene stop` ends it.",
                                                    ephemeral=True)
            return
        if await self.bot.memory.disabled(channel_id):
            await interaction.response.send_message("The personas keep quiet in this channel (`/channel enable`).",
                                                    ephemeral=True)
            return
        first = await find_or_say(interaction, persona_a)
        if first is None:
            return
        second = await find_or_say(interaction, persona_b)
        if second is None:
            return
        if first.id == second.id:
            await interaction.response.send_message("A scene takes two different personas.", ephemeral=True)
            return
        opening = (interaction.user.display_name, topic.strip()) if topic and topic.strip() else None
        self.running[channel_id] = asyncio.create_task(
            self._run(interaction.channel, (first, second), opening, turns), name=f"scene-{channel_id}")
        await interaction.response.send_message(
            f"Scene: **{first.name}** and **{second.name}**, up to {turns} turns, at least {SCENE_GAP_S:g} s apart. "
            "Anyone may join in; `/scene stop` ends it.", ephemeral=True)

    @scene.command(name="stop")
    @guild_admins_only()
    async def scene_stop(self, interaction: discord.Interaction) -> None:
        """End the scene running in this channel."""
        task = self.running.pop(interaction.channel_id, None)
        if task is None or task.done():
            await interaction.response.send_message("No scene is running here.", ephemeral=True)
            return
        task.cancel()
        await interaction.response.send_message("Scene stopped.", ephemeral=True)

    async def _run(self, channel: discord.abc.Messageable, cast: tuple[PersonaEntry, PersonaEntry],
                   opening: tuple[str, str] | None, turns: int) -> None:
        """The scene: turns in alternation until its end (see the module docstring)."""
        loop = asyncio.get_running_loop()
        guild = channel.guild
        spoken = 0
        try:
            for turn in range(turns):
                settings = await self.bot.talk.settings(guild.id, channel.id)
                talk = self.bot.talk.channel(channel.id, settings.seed)
                if talk.budget_left(loop.time(), settings) <= 0:
                    log.info("scene in %s ends at the channel's hourly budget after %d turns", channel.id, spoken)
                    break
                if await self.bot.memory.disabled(channel.id):
                    break
                persona = PersonaRef.of(cast[turn % 2])
                context = await self.bot.memory.context(channel.id)
                turns_so_far = ([opening] if opening else []) + context
                talk.spoke(loop.time(), counted=True)       # counted before it speaks: a slow reply cannot overspend
                reply = await self.bot.engine.reply(turns_so_far or [(cast[(turn + 1) % 2].name, "...")],
                                                    target=discord_target(guild), persona=persona)
                sent = await speak(channel, reply.text, persona=persona, webhooks=self.bot.webhooks,
                                   send_limits=self.bot.send_limits)
                spoken += 1
                self.bot.metrics.scene_turn()
                if sent is not None:
                    await self.bot.memory.remember(heard(sent, reply.persona, reply.text))
                if turn + 1 < turns:
                    await asyncio.sleep(SCENE_GAP_S)
        except EngineClosed:
            return
        except asyncio.CancelledError:
            log.info("scene in %s stopped after %d turns", channel.id, spoken)
            raise
        except Exception:   # a failed turn ends the scene, not the bot
            log.exception("scene in %s failed after %d turns", channel.id, spoken)
        finally:
            if self.running.get(channel.id) is asyncio.current_task():
                del self.running[channel.id]


async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Scenes(bot))
