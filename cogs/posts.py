"""Scheduled posts: /schedule add|list|remove|pause|resume and /post now.

A server's admins manage that server's schedules and post to its channels; Twitter, the terminal and
schedules that belong to no server are the bot owners' (see `bot.tenancy`)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import POST_TARGET_HELP
from bot.discord_bot import PersonaBot, guild_admins_only
from bot.store import StoreError
from bot.tenancy import Authority

log = logging.getLogger("personabot.posts")


def _targets(raw: str, authority: Authority, bot: PersonaBot) -> list[str] | str:
    """The target list, or what is wrong with it (including targets this person may not post to)."""
    targets = [t.strip() for t in raw.split(",") if t.strip()]
    if not targets:
        return f"targets are {POST_TARGET_HELP}, comma-separated (got {raw!r})"
    for target in targets:
        problem = authority.target_problem(target, bot.guild_of_channel)
        if problem:
            return f"{problem} (targets are {POST_TARGET_HELP}, comma-separated)"
    return targets


class Posts(commands.Cog):
    """Persona lines posted on a schedule."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot

    schedule = app_commands.Group(name="schedule", description="Scheduled persona posts", guild_only=True)
    post = app_commands.Group(name="post", description="Persona posts", guild_only=True)

    async def _reload(self) -> None:
        if self.bot.poster is not None:
            await self.bot.poster.reload()

    @schedule.command(name="add")
    @app_commands.describe(name="a name for it", cron="crontab line: minute hour day month weekday, e.g. 0 20 * * *",
                           targets="twitter, terminal or discord:<channel id>, comma-separated",
                           timezone="time zone name, e.g. Europe/Berlin (default UTC)",
                           mode="confession (seeded lines) or line")
    @app_commands.choices(mode=[app_commands.Choice(name="confession", value="confession"),
                                app_commands.Choice(name="line", value="line")])
    @guild_admins_only()
    async def schedule_add(self, interaction: discord.Interaction, name: str, cron: str, targets: str,
                           timezone: str = "UTC", mode: str = "confession") -> None:
        """Add a posting schedule."""
        from zoneinfo import ZoneInfo

        from apscheduler.triggers.cron import CronTrigger

        problem = None
        authority = await self.bot.authority(interaction)
        parsed = _targets(targets, authority, self.bot)
        try:
            ZoneInfo(timezone)
            CronTrigger.from_crontab(cron, timezone=timezone)
        except (ValueError, KeyError, OSError) as e:
            problem = f"`{cron}` in `{timezone}` is not a schedule I can use: {e}"
        if isinstance(parsed, str):
            problem = parsed
        if problem is None:
            try:
                owner = authority.owner_of_new(parsed, self.bot.guild_of_channel)
                await self.bot.store.add_schedule(name, cron=cron, targets=parsed, timezone_name=timezone, mode=mode,
                                                  guild_id=owner)
            except StoreError as e:
                problem = str(e)
        if problem:
            await interaction.response.send_message(f"Not added: {problem}.", ephemeral=True)
            return
        await self._reload()
        await interaction.response.send_message(f"Schedule `{name}` added: `{cron}` ({timezone}) → "
                                                f"{', '.join(parsed)}.", ephemeral=True)

    @schedule.command(name="list")
    @guild_admins_only()
    async def schedule_list(self, interaction: discord.Interaction) -> None:
        """List the schedules and when each runs next."""
        schedules = await self.bot.store.schedules((await self.bot.authority(interaction)).scopes())
        runs = self.bot.poster.next_runs() if self.bot.poster is not None else {}
        if not schedules:
            await interaction.response.send_message("No schedules yet: `/schedule add`.", ephemeral=True)
            return
        lines = []
        for s in schedules:
            nxt = runs.get(s["id"])
            when = "paused" if s["paused"] else f"next {nxt:%Y-%m-%d %H:%M %Z}" if nxt else "not running"
            scope = " (global)" if s["guild_id"] is None else ""
            lines.append(f"`{s['name']}`{scope}: `{s['cron'] or str(s['interval_s']) + ' s'}` ({s['timezone']}) → "
                         f"{', '.join(s['targets'])}, {s['mode']}; {when}")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @schedule.command(name="remove")
    @guild_admins_only()
    async def schedule_remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove a schedule (its past posts stay recorded)."""
        schedule = await self._named(interaction, name)
        done = schedule is not None and await self.bot.store.remove_schedule(schedule["id"])
        await self._reload()
        await interaction.response.send_message(f"Removed `{name}`." if done else f"No schedule `{name}`.",
                                                ephemeral=True)

    @schedule.command(name="pause")
    @guild_admins_only()
    async def schedule_pause(self, interaction: discord.Interaction, name: str) -> None:
        """Pause a schedule."""
        await self._set_paused(interaction, name, True)

    @schedule.command(name="resume")
    @guild_admins_only()
    async def schedule_resume(self, interaction: discord.Interaction, name: str) -> None:
        """Resume a paused schedule."""
        await self._set_paused(interaction, name, False)

    async def _set_paused(self, interaction: discord.Interaction, name: str, paused: bool) -> None:
        schedule = await self._named(interaction, name)
        done = schedule is not None and await self.bot.store.set_paused(schedule["id"], paused)
        await self._reload()
        verb = "paused" if paused else "resumed"
        await interaction.response.send_message(f"`{name}` {verb}." if done else f"No schedule `{name}`.",
                                                ephemeral=True)

    async def _named(self, interaction: discord.Interaction, name: str) -> dict | None:
        """The schedule called `name` that this person governs here: this server's first, then (for the
        bot's owners) a global one. Other servers' schedules are never found."""
        scopes = (await self.bot.authority(interaction)).scopes()
        for scope in scopes:
            for schedule in await self.bot.store.schedules([scope]):
                if schedule["name"] == name:
                    return schedule
        return None

    @post.command(name="now")
    @app_commands.describe(targets="twitter, terminal or discord:<channel id> (default: POST_TARGETS for the "
                                   "bot's owners, this channel for a server's admins)")
    @guild_admins_only()
    async def post_now(self, interaction: discord.Interaction, targets: str | None = None) -> None:
        """Post a persona line right away."""
        authority = await self.bot.authority(interaction)
        if targets:
            parsed = _targets(targets, authority, self.bot)
        elif authority.is_owner:
            parsed = list(self.bot.settings.post_targets)
        else:   # POST_TARGETS is the owners' setting; a server's admin posts here by default
            parsed = [f"discord:{interaction.channel_id}"]
        if isinstance(parsed, str):
            await interaction.response.send_message(f"Not posted: {parsed}.", ephemeral=True)
            return
        if self.bot.poster is None:
            await interaction.response.send_message("Posting is not running yet; try again in a moment.",
                                                    ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcomes = await self.bot.poster.post_now(parsed, mode=self.bot.settings.post_mode,
                                                  guild_id=authority.owner_of_new(parsed, self.bot.guild_of_channel))
        lines = []
        for o in outcomes:
            detail = o.get("text") or o.get("error") or ""
            lines.append(f"{o['target']}: {o['status']}" + (f" — {detail[:150]}" if detail else ""))
        await interaction.edit_original_response(content="\n".join(lines))

async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Posts(bot))
