"""Admin commands: /retrain start|cancel, /rollback (only in the jobs leader, `bot.jobs.leadership`), /status (the
persona, the backend and its health, this process's shards and their gateway latency).

/retrain start and /rollback act on the bot's configured persona, or with `persona:` on one registered persona
as this server sees it (its own, or a global one; never another server's). Both stay the bot's owners': a
retrain learns from TRAIN_DATA_DIR, the owners' data for every server, and runs on the bot's machine."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import datetime, timezone

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, jobs_process_only, owners_only
from bot.core.store import PersonaEntry
from bot.core.tenancy import Authority
from bot.jobs.retrain import Retrainer, RetrainError, RetrainResult
from cogs.utils.live_message import LiveMessage
from cogs.utils.personas import find_or_say, persona_names
from training.errors import DataError
from training.fidelity import fidelity_line
from training.progress import ProgressState, format_duration

log = logging.getLogger("personabot.admin")

# Discord allows about five edits per five seconds per message; progress is shown at most this often.
EDIT_EVERY_S = 2.0


# Uploads are stored under their own name (after a time stamp): longer names are refused.
MAX_UPLOAD_NAME = 120


def upload_file_name(filename: str) -> str | None:
    """The base name an upload is stored under, or None when it cannot be (too long, control characters
    such as NUL, or nothing left once path parts and leading dots are dropped)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".")
    if not name or len(name) > MAX_UPLOAD_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


def progress_text(p: ProgressState) -> str:
    """A progress bar with step, loss and ETA."""
    if not p.total_steps:
        return f"Retraining: {p.phase}..."
    done = min(1.0, p.step / p.total_steps)
    bar = "█" * round(done * 20) + "░" * (20 - round(done * 20))
    parts = [f"`{bar}` {done:.0%}", f"step {p.step}/{p.total_steps}"]
    if p.loss is not None:
        parts.append(f"loss {p.loss:.3f}")
    if p.val_loss is not None:
        parts.append(f"validation {p.val_loss:.3f}")
    if p.eta_s is not None:
        parts.append(f"ETA {format_duration(p.eta_s)}")
    return f"Retraining ({p.phase}): " + " · ".join(parts)


class Admin(commands.Cog):
    """Rebuild, roll back and inspect the persona."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot
        self.retrainer: Retrainer = bot.retrainer

    retrain = app_commands.Group(name="retrain", description="Rebuild the persona from the exports",
                                 guild_only=True)

    async def _named_persona(self, interaction: discord.Interaction,
                             name: str | None) -> tuple[bool, PersonaEntry | None]:
        """(found, the persona `name` as this server sees it); (False, None) after telling the person there
        is none here; (True, None) when no name was given."""
        if name is None:
            return True, None
        entry = await find_or_say(interaction, name)
        return entry is not None, entry

    @retrain.command(name="start")
    @app_commands.describe(speaker="whose voice to learn (default: the persona's own)",
                           epochs="passes over the data (default: the trainer's)",
                           export="a chat export to add to the training data first",
                           force="swap in the new model even if its validation loss is worse",
                           persona="a registered persona to rebuild (default: the bot's configured persona)")
    @app_commands.autocomplete(persona=persona_names)
    @jobs_process_only()
    @owners_only()
    async def retrain_start(self, interaction: discord.Interaction, speaker: str | None = None,
                            epochs: app_commands.Range[float, 0.1, 100.0] | None = None,
                            export: discord.Attachment | None = None, force: bool = False,
                            persona: str | None = None) -> None:
        """Retrain the persona from the exports in TRAIN_DATA_DIR (the bot's owners only)."""
        if self.retrainer.running:
            await interaction.response.send_message("A retrain is already running; `/retrain cancel` stops it.",
                                                    ephemeral=True)
            return
        found, entry = await self._named_persona(interaction, persona)
        if not found:
            return
        await interaction.response.defer(thinking=True)
        if export is not None:
            problem = await self._store_export(export)
            if problem:
                await interaction.edit_original_response(content=problem)
                return
        # Progress goes to a message the bot owns: the interaction's token dies after 15 minutes.
        live = await LiveMessage.open(interaction, "Retraining: starting...",
                                      pointer=f"Retrain started by {interaction.user.mention}; progress:")
        last_edit = 0.0

        async def show(progress: ProgressState) -> None:
            nonlocal last_edit
            # Wall-clock time: Discord's rate limit is in real seconds.
            if time.time() - last_edit >= EDIT_EVERY_S:
                last_edit = time.time()
                await live.edit(progress_text(progress))

        try:
            result = await self.retrainer.run(speaker=speaker, epochs=epochs, force=force,
                                              requested_by=interaction.user.id, on_progress=show,
                                              progress_message=live.ref, persona=entry)
        except RetrainError as e:
            log.warning("retrain by %s ended without a swap: %s", interaction.user.id, e)
            await live.finish(f"Retrain stopped: {e}. The current model keeps serving.")
            return
        plot = discord.File(result.loss_plot, filename="loss.png") if result.loss_plot is not None else None
        await live.finish(self._retrained(result), file=plot)

    def _retrained(self, result: RetrainResult) -> str:
        """What a retrain that swapped says: whose model, its losses, and how to undo it."""
        base, trained = result.metrics.base, result.metrics.trained
        name = result.persona or self.bot.engine.persona.name
        undo = f"`/rollback persona:{result.persona}`" if result.persona else "`/rollback`"
        return (f"Retrained and swapped in: **{name}** from `{result.artifact.name}`. "
                f"Validation loss {_num(base.val_loss)} → {_num(trained.val_loss)} "
                f"(perplexity {_num(trained.val_perplexity)}). {undo} restores the previous one.")

    async def _store_export(self, export: discord.Attachment) -> str | None:
        """Save an attached export into TRAIN_DATA_DIR after checking it (in a worker thread: a big export
        must not stall the gateway); the problem, or None. Problems name the upload, never a server path."""
        from training.loader import load_corpus

        shown = discord.utils.escape_markdown(export.filename[:100])
        limit = self.bot.settings.max_upload_mb * 1e6
        if export.size > limit:
            return (f"`{shown}` is {export.size / 1e6:.2f} MB; the limit is {limit / 1e6:g} MB "
                    "(RETRAIN_MAX_UPLOAD_MB). Put big exports in TRAIN_DATA_DIR on the server instead.")
        name = upload_file_name(export.filename)
        if name is None:
            return (f"`{shown}` cannot be stored under that name (it is over {MAX_UPLOAD_NAME} characters or "
                    "holds control characters); rename the file and upload it again.")
        data_dir = self.retrainer.data_dir
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        # A random part: two uploads with one name in one second are both kept.
        final = data_dir / f"{stamp}-{secrets.token_hex(3)}-{name}"
        staged = data_dir / f".upload-{final.name}"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            await export.save(staged)
            try:
                await asyncio.to_thread(load_corpus, [str(staged)])
            except DataError as e:
                problem = str(e).replace(str(staged), shown).replace(str(data_dir), "")
                return (f"`{shown}` is not a chat export personabot can read: {problem}. "
                        "`personabot data formats` lists the formats.")
            staged.rename(final)
        except OSError as e:
            log.error("storing the upload %r failed: %s", export.filename, e)
            return f"Could not store `{shown}` on the server ({e.strerror or type(e).__name__})."
        except discord.HTTPException as e:
            return f"Could not download `{shown}` from Discord ({e.status}); try again."
        finally:
            staged.unlink(missing_ok=True)
        return None

    @retrain.command(name="cancel")
    @jobs_process_only()
    @owners_only()
    async def retrain_cancel(self, interaction: discord.Interaction) -> None:
        """Stop the running retrain; the current model keeps serving."""
        stopped = await self.retrainer.cancel()
        await interaction.response.send_message("Cancelling the retrain." if stopped else "No retrain is running.",
                                                ephemeral=True)

    @app_commands.command(name="rollback")
    @app_commands.describe(persona="a registered persona to roll back (default: the bot's configured persona)")
    @app_commands.autocomplete(persona=persona_names)
    @app_commands.guild_only()
    @jobs_process_only()
    @owners_only()
    async def rollback(self, interaction: discord.Interaction, persona: str | None = None) -> None:
        """Go back to the model that served before the last swap (the bot's owners only)."""
        found, entry = await self._named_persona(interaction, persona)
        if not found:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            now, aside = await self.retrainer.rollback(entry)
        except RetrainError as e:
            await interaction.edit_original_response(content=f"Rollback not done: {e}.")
            return
        whose = f"**{entry.name}** now speaks with" if entry is not None else "now serving"
        await interaction.edit_original_response(content=f"Rolled back: {whose} `{now.name}` "
                                                         f"(`{aside.name}` is kept as the previous one).")

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """The persona, its model and metrics, uptime, latency, queue and training state."""
        persona = self.bot.engine.persona
        trained = persona.info.metrics.trained
        p = self.retrainer.progress
        training = progress_text(p) if self.retrainer.running and p else "no retrain running"
        health = getattr(persona.backend, "health", None)
        lines = [
            f"**{persona.name}** · model `{persona.path.name}` ({persona.backend.name}"
            f"{': ' + health if health else ''})",
            f"validation loss {_num(trained.val_loss)} · perplexity {_num(trained.val_perplexity)}",
            f"sounds like them: {fidelity_line(persona.info.fidelity)}",
            f"up {format_duration(time.time() - self.bot.started)} · queue {self.bot.engine.queue_depth}",
            self._personas_line(),
            await self._shard_line(),
            f"training: {training}",
        ]
        # Schedules and posts are private: a server's admins see that server's, the bot's owners the
        # global ones too; anyone else (and a DM) sees none of them.
        authority = await self.bot.authority(interaction)
        if authority.scopes():
            lines += await self._posting_lines(authority)
        if interaction.guild_id is not None and authority.may_govern_guild:   # this server's admins only
            lines.append(await self._talk_line(interaction.guild_id, interaction.channel_id))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    async def _talk_line(self, guild_id: int, channel_id: int) -> str:
        """When the persona joins in here (`/talk`), what is left of this channel's hourly budget, and how many
        people are in a cool-down."""
        talk = self.bot.talk
        settings = await talk.settings(guild_id, channel_id)
        state = talk.known_channel(channel_id)
        now = asyncio.get_running_loop().time()
        left = state.budget_left(now, settings) if state else settings.turns_per_hour
        return (f"talk here: {settings.describe()} · {left} of {settings.turns_per_hour} unasked turns left this "
                f"hour · people in a cool-down: {talk.limits.cooling(time.time())}")

    def _personas_line(self) -> str:
        """How many registered personas are loaded and their memory against the budget (no names: which
        personas a server has is that server's business)."""
        pool = self.bot.engine.pool
        return (f"registered personas loaded: {len(pool.loaded())} · {pool.memory_bytes / 2**20:.0f} of "
                f"{self.bot.settings.persona_memory_mb:.0f} MB (PERSONA_MEMORY_MB)")

    async def _shard_line(self) -> str:
        """The shards this process runs, of how many, each with its gateway latency; and which process leads
        the jobs (posts, retrains)."""
        shards = self.bot.shards
        each = [f"shard {shard_id} {_ms(shards[shard_id].latency) if shard_id in shards else 'not connected'}"
                for shard_id in self.bot.running_shards()]
        return f"gateway: {', '.join(each)} ({self.bot.shard_count or '?'} in all) · jobs led by " \
               f"{await self.bot.jobs_leader()}"

    async def _posting_lines(self, authority: Authority) -> list[str]:
        """Each schedule's next run, Twitter trouble, and the last posts (unknown ones included), of the
        schedules and posts this person governs."""
        from bot.core.store import StoreError

        lines = []
        poster = self.bot.poster
        try:
            schedules = await self.bot.store.schedules(authority.scopes())
            posts = await self.bot.store.posts(3, owners=authority.scopes())
        except StoreError as e:
            return [f"posts: cannot read the database ({e})"]
        runs = poster.next_runs() if poster is not None else {}
        for schedule in schedules:
            nxt = runs.get(schedule.id)
            when = "paused" if schedule.paused else f"next {nxt:%Y-%m-%d %H:%M %Z}" if nxt else "not scheduled"
            lines.append(f"schedule {schedule.name} ({schedule.cron or schedule.interval_s}): {when}")
        twitter = getattr(poster, "twitter", None)
        if authority.is_owner and twitter is not None and twitter.disabled:
            lines.append(f"Twitter is disabled: {twitter.disabled}")
        for post in posts:
            text = (post["text"] or "")[:60]
            lines.append(f"post {post['slot'] or ''} → {post['target']}: {post['status']}"
                         f"{' ' + repr(text) if text else ''}{' (' + post['error'] + ')' if post['error'] else ''}")
        return lines

def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "?"


def _ms(latency: float) -> str:
    """A gateway latency in milliseconds; "?" before the first heartbeat (discord.py says inf or nan)."""
    return "?" if latency != latency or latency == float("inf") else f"{latency * 1000:.0f} ms"


async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Admin(bot))
