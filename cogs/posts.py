"""Scheduled posts: /schedule add|list|remove|pause|resume and /post now.

A server's admins manage that server's schedules and post to its channels; Twitter, the terminal and
schedules that belong to no server are the bot owners' (see `bot.core.tenancy`). The scheduler does the work
(`bot.jobs.scheduler.PostScheduler`); this cog only translates Discord to its calls.

`persona:` names the registered persona that writes the posts, looked up as the schedule's owner sees it: a
server's schedule may use that server's personas and global ones, a global schedule global ones only."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, guild_admins_only
from bot.core import personas
from bot.core.personas import PersonaError
from bot.core.posts import DEFAULT_MODE, MODE_HELP, MODES, POST_TARGET_HELP, PostTarget
from bot.core.store import Schedule, StoreError
from bot.core.tenancy import Authority
from bot.jobs.scheduler import PostScheduler, ScheduleError

log = logging.getLogger("personabot.posts")

NOT_RUNNING = "Posting is not running yet; try again in a moment."


def _targets(raw: str, authority: Authority, bot: PersonaBot) -> list[PostTarget] | str:
    """The target list, or what is wrong with it (including targets this person may not post to)."""
    texts = [t.strip() for t in raw.split(",") if t.strip()]
    if not texts:
        return f"targets are {POST_TARGET_HELP}, comma-separated (got {raw!r})"
    targets = []
    for text in texts:
        target = PostTarget.parse(text)
        problem = (f"`{text}` is not a post target" if target is None
                   else authority.target_problem(target, bot.guild_of_channel))
        if problem:
            return f"{problem} (targets are {POST_TARGET_HELP}, comma-separated)"
        targets.append(target)
    return targets


def _owner_of_new(targets: list[PostTarget], authority: Authority, bot: PersonaBot) -> int | None:
    return authority.owner_of_new(targets, bot.guild_of_channel)


async def _persona_id(bot: PersonaBot, name: str | None, owner: int | None) -> int | None:
    """The id of the persona `name` as a schedule or post owned by `owner` (a guild, or None: global) sees it;
    None when no name is given. PersonaError when there is none that it may use."""
    if name is None:
        return None
    try:
        return (await personas.find(bot.store, owner, name)).id
    except PersonaError as e:
        if owner is None:     # the name may well be this server's persona: say why it is not seen
            raise PersonaError(f"{e} among the global ones; a global schedule or post (to Twitter, the "
                               "terminal, or beyond this server) may use only global personas") from e
        raise


class Posts(commands.Cog):
    """Persona lines posted on a schedule."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot

    schedule = app_commands.Group(name="schedule", description="Scheduled persona posts", guild_only=True)
    post = app_commands.Group(name="post", description="Persona posts", guild_only=True)

    async def _poster(self, interaction: discord.Interaction) -> PostScheduler | None:
        """The scheduler, or None after telling the person it is not running yet."""
        if self.bot.poster is None:
            await interaction.response.send_message(NOT_RUNNING, ephemeral=True)
        return self.bot.poster

    @schedule.command(name="add")
    @app_commands.describe(name="a name for it", cron="crontab line: minute hour day month weekday, e.g. 0 20 * * *",
                           targets=f"{POST_TARGET_HELP}, comma-separated",
                           timezone="time zone name, e.g. Europe/Berlin (default UTC)",
                           mode=MODE_HELP, persona="the registered persona that writes the posts (default: the "
                                                   "one assigned where each post goes)")
    @app_commands.choices(mode=[app_commands.Choice(name=mode, value=mode) for mode in MODES])
    @guild_admins_only()
    async def schedule_add(self, interaction: discord.Interaction, name: str, cron: str, targets: str,
                           timezone: str = "UTC", mode: str = DEFAULT_MODE, persona: str | None = None) -> None:
        """Add a posting schedule."""
        authority = await self.bot.authority(interaction)
        parsed = _targets(targets, authority, self.bot)
        poster = await self._poster(interaction)
        if poster is None:
            return
        problem = parsed if isinstance(parsed, str) else None
        if problem is None:
            owner = _owner_of_new(parsed, authority, self.bot)
            try:
                await poster.add(name, cron=cron, targets=parsed, timezone_name=timezone, mode=mode,
                                 guild_id=owner, persona_id=await _persona_id(self.bot, persona, owner))
            except (ScheduleError, StoreError, PersonaError) as e:
                problem = str(e)
        if problem:
            await interaction.response.send_message(f"Not added: {problem}.", ephemeral=True)
            return
        await interaction.response.send_message(f"Schedule `{name}` added: `{cron}` ({timezone}) → "
                                                f"{', '.join(map(str, parsed))}.", ephemeral=True)

    @schedule.command(name="list")
    @guild_admins_only()
    async def schedule_list(self, interaction: discord.Interaction) -> None:
        """List the schedules and when each runs next."""
        poster = await self._poster(interaction)
        if poster is None:
            return
        schedules = await self.bot.store.schedules((await self.bot.authority(interaction)).scopes())
        names = {p.id: p.name for p in await self.bot.store.personas()}
        text = ("\n".join(poster.describe(s, names.get(s.persona_id)) for s in schedules)
                or "No schedules yet: `/schedule add`.")
        await interaction.response.send_message(text, ephemeral=True)

    @schedule.command(name="remove")
    @guild_admins_only()
    async def schedule_remove(self, interaction: discord.Interaction, name: str) -> None:
        """Remove a schedule (its past posts stay recorded)."""
        poster = await self._poster(interaction)
        if poster is None:
            return
        schedule = await self._named(interaction, poster, name)
        done = schedule is not None and await poster.remove(schedule)
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
        poster = await self._poster(interaction)
        if poster is None:
            return
        schedule = await self._named(interaction, poster, name)
        done = schedule is not None and await poster.pause(schedule, paused)
        verb = "paused" if paused else "resumed"
        await interaction.response.send_message(f"`{name}` {verb}." if done else f"No schedule `{name}`.",
                                                ephemeral=True)

    async def _named(self, interaction: discord.Interaction, poster: PostScheduler, name: str) -> Schedule | None:
        """The schedule called `name` that this person governs here: this server's first, then (for the
        bot's owners) a global one. Other servers' schedules are never found."""
        return await poster.named(name, (await self.bot.authority(interaction)).scopes())

    @post.command(name="now")
    @app_commands.describe(targets=f"{POST_TARGET_HELP} (default: POST_TARGETS for the bot's owners, this "
                                   "channel for a server's admins)",
                           persona="the registered persona that writes it (default: the one assigned there)")
    @guild_admins_only()
    async def post_now(self, interaction: discord.Interaction, targets: str | None = None,
                       persona: str | None = None) -> None:
        """Post a persona line right away."""
        authority = await self.bot.authority(interaction)
        if targets:
            parsed = _targets(targets, authority, self.bot)
        elif authority.is_owner:
            parsed = list(self.bot.settings.post_targets)
        else:   # POST_TARGETS is the owners' setting; a server's admin posts here by default
            parsed = [PostTarget("discord", interaction.channel_id)]
        if isinstance(parsed, str):
            await interaction.response.send_message(f"Not posted: {parsed}.", ephemeral=True)
            return
        owner = _owner_of_new(parsed, authority, self.bot)
        try:
            persona_id = await _persona_id(self.bot, persona, owner)
        except PersonaError as e:
            await interaction.response.send_message(f"Not posted: {e}.", ephemeral=True)
            return
        poster = await self._poster(interaction)
        if poster is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcomes = await poster.post_now(parsed, mode=self.bot.settings.post_mode, guild_id=owner,
                                         persona_id=persona_id)
        await interaction.edit_original_response(content="\n".join(o.describe() for o in outcomes))


async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Posts(bot))
