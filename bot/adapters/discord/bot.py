"""The discord.py bot: a `commands.AutoShardedBot` subclass that holds the engine, the store and the channel memory,
and loads one cog per feature in `setup_hook`. Generated text can never ping anyone: every message goes out
with `AllowedMentions.none()` (and the filters have already defused mentions in the text).

It is an `AutoShardedBot`: SHARD_COUNT shards in all (default: Discord's recommendation), of which this process
runs SHARD_IDS (default: all; `none`: a jobs process without a gateway, which only posts through the REST API),
so that several processes can split the guilds. Of the processes with RUN_JOBS on, exactly one leads at a
time (`bot.jobs.leadership`): it runs the scheduled posts, /retrain and /rollback; the others are standbys
that take over when it dies. Every process follows the leader's model swaps through the shared database
(`bot.jobs.model_watch`), at once on PostgreSQL (`bot.jobs.changes`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.send_limits import SendLimits
from bot.adapters.discord.speaking import Webhooks, speak
from bot.adapters.metrics import Metrics
from bot.core import personas
from bot.core.channel_memory import ChannelMemory
from bot.core.config import Settings
from bot.core.joining import JoinSettings, PersonLimits, Talk
from bot.core.personas import PersonaRef
from bot.core.store import PersonaEntry, Store, StoreError
from bot.core.tenancy import GUILD_ADMINS_ONLY, OWNERS_ONLY, Authority
from bot.inference.engine import Engine
from bot.jobs.leadership import LEADER_CHECK_S, JobsLeadership, take_over_jobs
from bot.jobs.posting import PostError
from bot.jobs.retrain import Retrainer
from bot.jobs.scheduler import start_posting

log = logging.getLogger("personabot.discord")

EXTENSIONS = ("cogs.chat", "cogs.privacy", "cogs.admin", "cogs.posts", "cogs.personas", "cogs.scenes")
# The store setting where the jobs leader says which process it is and which shards it runs: the other
# processes point there when they refuse a job command.
JOBS_PROCESS = "jobs_process"


def intents_for(settings: Settings) -> discord.Intents:
    """Only what the bot needs: guilds and their messages, DMs when it answers them, and message content
    (privileged) when it may read channels for context; without it, it sees only messages that mention it."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = settings.reply_in_dms
    intents.message_content = settings.message_content
    return intents


class PersonaTree(app_commands.CommandTree):
    """The bot's command tree. Its `on_error` is the one place that answers a slash command that did not run
    (the cogs have no error handlers of their own). It is a method of the tree's class, not an attribute set in
    `setup_hook`, so that whatever wraps `tree.on_error` after the bot is built (simcord records errors that
    way) still reaches it."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await refuse(interaction, error)


class PersonaBot(commands.AutoShardedBot):
    def __init__(self, settings: Settings, engine: Engine, store: Store, *,
                 retrainer: Retrainer | None = None, interrupted_runs: list[dict] | None = None,
                 metrics: Metrics | None = None, leader_check_s: float = LEADER_CHECK_S) -> None:
        # No prefix commands: everything is a slash command or a mention.
        super().__init__(command_prefix=lambda bot, message: [], intents=intents_for(settings),
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None,
                         tree_cls=PersonaTree, shard_count=settings.shard_count,
                         shard_ids=list(settings.shard_ids) if settings.shard_ids is not None else None)
        self.settings = settings
        self.engine = engine
        self.store = store
        self.memory = ChannelMemory(store, engine.persona.settings.context_tokens, engine.count_tokens)
        # When personas speak unasked, and how much one person may ask of them (bot.core.joining).
        self.talk = Talk(store, JoinSettings(unasked=settings.unasked_chance, followup=settings.followup_chance,
                                             turns_per_hour=settings.channel_turns_per_hour),
                         PersonLimits(settings.user_interactions, settings.user_interaction_window_s,
                                      settings.user_timeout_s, settings.user_timeout_max_s))
        self.retrainer = retrainer or Retrainer(engine, store, data_dir=settings.train_data_dir,
                                                models_dir=settings.models_dir,
                                                loss_margin=settings.retrain_loss_margin,
                                                fidelity_margin=settings.retrain_fidelity_margin,
                                                include_logged=settings.log_messages_for_training)

        self.started = time.time()
        self.poster = None              # the post scheduler, started once connected
        self.webhooks = Webhooks()      # the webhook each channel's registered personas speak through
        # Retrains a restart cut short (see bot.jobs.retrain.close_interrupted_runs): said in their messages.
        self.interrupted_runs = list(interrupted_runs or [])
        # RUN_JOBS: a candidate for the jobs leadership, which it takes once connected (and checks every
        # `leader_check_s`).
        self.leadership = JobsLeadership(store, on_lead=self._take_over_jobs, on_lose=self._drop_jobs,
                                         check_s=leader_check_s) if settings.run_jobs else None
        self.metrics = (metrics or Metrics()).watch(engine=engine, retrainer=self.retrainer, gateway=self,
                                                    leadership=self.leadership)
        # Discord's send limits per channel and webhook, which every message `speak` sends waits for.
        self.send_limits = SendLimits(metrics=self.metrics)
        self._closed_event = asyncio.Event()

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.tree.sync()

    async def on_ready(self) -> None:
        # Scheduled posts start once the bot is connected (their Discord targets need the gateway), and fire
        # only in the jobs leader: with several processes, each would post every scheduled line once. The
        # others manage schedules and post now; the leader follows their changes.
        log.info("connected to Discord: shard%s %s, %d server(s)", "" if len(self.running_shards()) == 1 else "s",
                 ", ".join(map(str, self.running_shards())) or "none (REST only)", len(self.guilds))
        if self.poster is None:
            self.poster = await start_posting(self.engine, self.store, self.settings,
                                              discord_sender=self.send_post,
                                              outcome_observers=[self.metrics.post_made],
                                              run_schedules=False, channel_persona=self.persona_of_channel)
            if self.leadership is not None:
                await self.leadership.check_once()     # a lone jobs process leads before it goes on
                self.leadership.start()
        await self._announce_interrupted_runs()

    async def _take_over_jobs(self) -> None:
        """This process leads the jobs now: take them over, say so in the database, and tell the retrains a
        dead leader left running how they ended."""
        self.interrupted_runs += await take_over_jobs(self.store, self.settings, self.poster)
        try:
            await self.store.set_setting(JOBS_PROCESS, {"holder": self.leadership.holder,
                                                        "shards": self.running_shards()})
        except StoreError as e:
            log.warning("could not record this process as the jobs leader (other processes cannot point to "
                        "it): %s", e)
        await self._announce_interrupted_runs()

    async def _drop_jobs(self) -> None:
        """This process no longer leads: stop firing schedules and end a running retrain (its run is the new
        leader's to mark failed)."""
        if self.poster is not None:
            self.poster.stop()
        await self.retrainer.cancel()

    async def jobs_leader(self) -> str:
        """Which process leads the jobs, for people: this one, or another (with its shards), or none."""
        if self.leadership is not None and self.leadership.leading:
            return f"this process ({self.leadership.holder})"
        try:
            holder = await self.store.leader()
            jobs = await self.store.get_setting(JOBS_PROCESS) if holder else None
        except StoreError:
            return "unknown (the database cannot say)"
        if holder is None:
            return "no process (none with RUN_JOBS=true is running)"
        shards = jobs.get("shards") if isinstance(jobs, dict) and jobs.get("holder") == holder else None
        if shards is None:
            return holder
        if not shards:
            return f"{holder}, serving no shard"
        return f"{holder}, serving shard{'' if len(shards) == 1 else 's'} {', '.join(map(str, shards))}"

    async def jobs_elsewhere(self, guild_id: int | None) -> str | None:
        """Why a job command (/retrain, /rollback) cannot run in this process, and where it can; None when
        this process leads the jobs."""
        if self.leadership is not None and self.leadership.leading:
            return None
        here = f"shard {self.shard_of_guild(guild_id)}" if guild_id is not None else "shard 0"
        role = "a standby for the jobs" if self.leadership is not None else "a process that only replies"
        return (f"Retrains and rollbacks run only in the jobs leader (of the processes with RUN_JOBS=true), which "
                f"is {await self.jobs_leader()}: use the command in a server on a shard it serves. This server is "
                f"on {here}, served by {role}.")

    def running_shards(self) -> list[int]:
        """The gateway shards this process runs (all of them unless SHARD_IDS names some)."""
        if self.shard_ids is not None:
            return sorted(self.shard_ids)
        return list(range(self.shard_count or 1))

    def shard_of_guild(self, guild_id: int) -> int:
        """The shard Discord sends a guild's events to (its id's timestamp part modulo the shard count)."""
        return (guild_id >> 22) % (self.shard_count or 1)

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
        why), give the jobs leadership up for a standby, then close the gateway."""
        await self.retrainer.shutdown()
        await self.close()

    async def serve_without_gateway(self, token: str) -> None:
        """SHARD_IDS=none: log in to the REST API only (no gateway shard, so no server's events or commands
        come here), then do the jobs when this process leads (posting through the API), until closed."""
        await self.login(token)
        await self.on_ready()
        await self._closed_event.wait()

    async def close(self) -> None:
        self._closed_event.set()
        if self.leadership is not None:
            await self.leadership.stop()
        if self.poster is not None:
            self.poster.stop()
        await super().close()

    async def authority(self, interaction: discord.Interaction) -> Authority:
        """What the person behind `interaction` may govern where they used it (see `bot.core.tenancy`)."""
        user = interaction.user
        owner = user.id in self.settings.admin_user_ids or await self.is_owner(user)
        guild_admin = False
        # Powers in a guild come from that guild's member object: its permissions and its roles only.
        if interaction.guild_id is not None and isinstance(user, discord.Member) \
                and user.guild.id == interaction.guild_id:
            guild_admin = (user.guild_permissions.manage_guild
                           or any(role.id in self.settings.admin_role_ids for role in user.roles))
        return Authority(user.id, interaction.guild_id, owner, guild_admin or owner)

    async def send_post(self, channel_id: int, text: str, guild_id: int | None = None,
                        persona: PersonaRef | None = None) -> str:
        """The scheduler's Discord sender: post `text` in a channel as `persona` (None: the bot's configured
        persona), pinging nobody; returns the message id. A guild's post (`guild_id`) never goes outside that
        guild, whatever its stored targets say."""

        channel = self.get_channel(channel_id)
        try:
            if channel is None:
                channel = await self.fetch_channel(channel_id)
            channel_guild = getattr(getattr(channel, "guild", None), "id", None)
            if guild_id is not None and channel_guild != guild_id:
                raise PostError(f"channel {channel_id} is not in the schedule's server")
            message = await speak(channel, text, persona=persona, webhooks=self.webhooks,
                                send_limits=self.send_limits)
        except discord.HTTPException as e:
            raise PostError(f"Discord refused the post in channel {channel_id}: {e}") from e
        return str(message.id)

    async def persona_at(self, channel: discord.abc.Messageable) -> PersonaEntry | None:
        """The registered persona that speaks in `channel` (None: the bot's configured persona). Looked up in
        the store each time, not cached: another bot process may change an assignment, and a look-up costs
        little beside the reply it is for."""

        guild = getattr(channel, "guild", None)
        return await personas.resolve(self.store, assignment_place(channel), guild.id if guild else None)

    async def persona_of_channel(self, channel_id: int) -> PersonaEntry | None:
        """`persona_at` for a channel known by its id (where a scheduled post goes): its server and, for a
        thread, its parent channel come from Discord, so that a global schedule sees a server's assignment."""
        channel = self.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.fetch_channel(channel_id)
            except discord.HTTPException:
                return await personas.resolve(self.store, channel_id, None)
        return await self.persona_at(channel)

    def guild_of_channel(self, channel_id: int) -> int | None:
        """The guild a channel (or thread) belongs to, when the bot knows it."""
        channel = self.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return guild.id if guild is not None else None


def assignment_place(channel: discord.abc.Messageable | None) -> int | None:
    """The channel id whose persona assignment holds in `channel`: a thread follows its parent channel."""
    if channel is None:
        return None
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return channel.id


async def refuse(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """The command tree's error handler: tell the user, privately, why a command did not run. Never raises:
    an interaction older than 15 minutes has a dead token, and answering it fails (logged, once)."""
    if isinstance(error, app_commands.CommandOnCooldown):
        text = f"Slow down: try again in {error.retry_after:.0f} s."
    elif isinstance(error, app_commands.CheckFailure):
        text = str(error) or "You cannot use this command here."
    else:
        log.error("command %s failed", _command_name(interaction), exc_info=error)
        text = "Something went wrong; the bot's log has the details."
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as e:     # the token expired (or Discord is down): nobody to tell any more
        log.warning("could not tell %s why command %s did not run: %s", interaction.user.id,
                    _command_name(interaction), e)


def _command_name(interaction: discord.Interaction) -> str | None:
    command = interaction.command
    return command.qualified_name if command is not None else None


def _power_check(refusal: str, holds: Callable[[Authority], bool]):
    """An app-command check: passes when the user's `Authority` `holds`, else refuses with `refusal`."""
    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if isinstance(bot, PersonaBot) and holds(await bot.authority(interaction)):
            return True
        raise app_commands.CheckFailure(refusal)

    return app_commands.check(predicate)


def owners_only():
    """An app-command check: the bot's owners only (global powers, see `bot.core.tenancy`)."""
    return _power_check(OWNERS_ONLY, lambda authority: authority.is_owner)


def jobs_process_only():
    """An app-command check: the command runs only in the jobs process (RUN_JOBS=true); elsewhere it is refused
    with where to use it. Put it above `owners_only()`, so that others hear "owners only" first."""
    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        refusal = await bot.jobs_elsewhere(interaction.guild_id) if isinstance(bot, PersonaBot) else None
        if refusal:
            raise app_commands.CheckFailure(refusal)
        return True

    return app_commands.check(predicate)


def guild_admins_only():
    """An app-command check: admins of the guild the command is used in, or the bot's owners."""
    return _power_check(GUILD_ADMINS_ONLY, lambda authority: authority.may_govern_guild)
