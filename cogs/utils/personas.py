"""What the cogs that name a registered persona share: its autocomplete, and finding it as this server sees it
(saying so, privately, when there is none)."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core import personas
from bot.core.personas import PersonaError
from bot.core.store import PersonaEntry, StoreError

AUTOCOMPLETE_CHOICES = 25   # the most choices Discord shows


async def persona_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete: the personas this server sees whose names start with what was typed."""
    try:
        seen = await personas.listed(interaction.client.store, interaction.guild_id, prefix=current,
                                     limit=AUTOCOMPLETE_CHOICES)
    except StoreError:
        return []
    return [app_commands.Choice(name=p.name, value=p.name) for p in seen]


async def find_or_say(interaction: discord.Interaction, name: str) -> PersonaEntry | None:
    """The persona `name` as this server sees it (another server's is never found), or None after telling the
    person, privately, that there is none here (or that the database could not be read)."""
    try:
        return await personas.find(interaction.client.store, interaction.guild_id, name)
    except (PersonaError, StoreError) as e:
        text = str(e)
        await interaction.response.send_message(f"{text[:1].upper()}{text[1:]}.", ephemeral=True)
        return None
