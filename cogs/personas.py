"""Several personas: /persona list|info|quiz|use|clear|add|remove.

Everyone may see which personas this server has and which one speaks where (`list`, `info`), and take a
persona's blind quiz (`quiz`, `bot.core.quiz`). A server's
admins register artifacts from MODELS_DIR for their server, remove them, and choose the persona of a channel or
of the whole server; global personas and the bot-wide choice are the bot's owners'. The rules are
`bot.core.personas`'s (this cog only translates Discord to its calls); a refusal is answered privately, saying why.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from bot.adapters.discord.bot import PersonaBot, assignment_place, guild_admins_only
from bot.core import personas
from bot.core.filters import DISCORD
from bot.core.persona_names import skeletons
from bot.core.quiz import MAX_QUIZ_ROUNDS, QUIZ_ROUNDS, QuizScore, quiz_line
from bot.core.personas import PersonaError, PersonaRef
from bot.core.store import PersonaEntry, StoreError
from bot.inference.engine import SwapError
from bot.jobs.quiz import Quiz, QuizError, prepare_quiz
from cogs.utils.personas import find_or_say, persona_names

log = logging.getLogger("personabot.personas")

# What people choose, and the scope bot/personas.py calls it.
SCOPE_CHOICES = [app_commands.Choice(name="channel", value="channel"),
                 app_commands.Choice(name="server", value="guild"),
                 app_commands.Choice(name="bot (owners only)", value="bot")]
# Personas `/persona list` shows at most: one message of Discord's 2,000 characters.
LIST_SHOWN = 40
SCOPE_WORDS = {"channel": "channel assignment", "guild": "server assignment", "bot": "bot-wide assignment"}


def owner_word(entry: PersonaEntry) -> str:
    return "global" if entry.guild_id is None else "this server"


def describe_artifact(info, models_dir: Path) -> str:
    """What kind of artifact `info` (a `training.artifact.PersonaInfo`) is, for people: a LoRA adapter on its
    base, or a whole model; directories under MODELS_DIR shown relative to it, others by their last name only
    (the bot's file system is nobody's business)."""
    if info.is_adapter:
        return f"LoRA adapter on {_shown(info.base or '?', models_dir)}"
    return "whole model" + (f" (from {_shown(info.base, models_dir)})" if info.base else "")


def _shown(path: str | Path, models_dir: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(models_dir.expanduser().resolve()))
    except ValueError:
        return path.name if path.is_absolute() else str(path)


async def member_names(guild: discord.Guild | None, name: str) -> list[str]:
    """The names of the server's members that a persona called `name` could pass for: those the bot has seen,
    and those Discord finds whose names start as `name` does, or as what it looks like ("Вob" is asked as
    "b"): a prefix query needs no members intent. A query Discord does not answer in time is left out."""
    if guild is None:
        return []
    found = set(guild.members)
    for prefix in sorted({name[:1].casefold(), *(s[:1] for s in skeletons(name) if s)} - {""}):
        try:
            found.update(await asyncio.wait_for(guild.query_members(prefix, limit=100, cache=False), 10))
        except (TimeoutError, discord.ClientException, discord.HTTPException, ValueError) as e:
            log.warning("could not ask Discord for the members of %s named like %r: %s", guild.id, prefix, e)
    return list({n for m in found for n in (m.display_name, m.name, m.global_name) if n})


class Personas(commands.Cog):
    """Which registered persona speaks where."""

    def __init__(self, bot: PersonaBot) -> None:
        self.bot = bot

    persona = app_commands.Group(name="persona", description="The personas of this server", guild_only=True)

    async def _speaking_here(self, interaction: discord.Interaction) -> tuple[PersonaEntry | None, str]:
        """The persona that speaks where `interaction` was used, and why (which assignment, or none)."""
        found = await personas.assignment_at(self.bot.store, assignment_place(interaction.channel),
                                             interaction.guild_id)
        if found is None:
            return None, "no assignment: the bot's configured persona"
        return found.persona, SCOPE_WORDS.get(found.scope, found.scope)

    @persona.command(name="list")
    async def persona_list(self, interaction: discord.Interaction) -> None:
        """The personas of this server (its own and global ones), and which one speaks in this channel."""
        speaking, why = await self._speaking_here(interaction)
        entries = await personas.listed(self.bot.store, interaction.guild_id, limit=LIST_SHOWN + 1)
        lines = [f"• **{entry.name}** ({owner_word(entry)})"
                 + (f" ← speaks here ({why})" if speaking is not None and entry.id == speaking.id else "")
                 for entry in entries[:LIST_SHOWN]] or ["No personas registered for this server: `/persona add`."]
        if len(entries) > LIST_SHOWN:
            lines.append(f"… and more: the first {LIST_SHOWN} by name are shown; `/persona info` finds any as you "
                         "type its name.")
        if speaking is None:
            lines.append(f"Speaking here: **{self.bot.engine.persona.name}**, the bot's configured persona "
                         "(no assignment).")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @persona.command(name="info")
    @app_commands.describe(name="a persona's name (default: the one speaking here)")
    @app_commands.autocomplete(name=persona_names)
    async def persona_info(self, interaction: discord.Interaction, name: str | None = None) -> None:
        """Who a persona is: its owner, its artifact, how well it learnt, how it samples."""
        from training.artifact import ArtifactError, read_persona
        from training.fidelity import fidelity_line

        if name is None:
            entry, why = await self._speaking_here(interaction)
        else:
            entry, why = await find_or_say(interaction, name), ""
            if entry is None:
                return
        models_dir = self.bot.settings.models_dir
        if entry is None:                       # the bot's configured persona, loaded already
            info, owner, generation = self.bot.engine.persona.info, "the bot's configured persona", {}
            title = info.speaker
        else:
            try:
                info = await asyncio.to_thread(read_persona, entry.artifact_path)
            except ArtifactError as e:
                await interaction.response.send_message(
                    f"**{entry.name}** ({owner_word(entry)}): its artifact cannot be read: {e}", ephemeral=True)
                return
            owner, generation, title = owner_word(entry), entry.generation, entry.name
        settings = info.generation.with_overrides(**generation)
        loss = info.trained_val_loss
        lines = [f"**{title}** ({owner}){f', speaking here ({why})' if name is None and entry else ''}",
                 f"Artifact: {describe_artifact(info, models_dir)}, trained as {info.speaker}",
                 f"Validation loss: {loss:.3f}" if loss is not None else "Validation loss: not measured",
                 f"Sounds like them: {fidelity_line(info.fidelity)}",
                 f"Generation: temperature {settings.temperature}, top_k {settings.top_k}, top_p {settings.top_p}, "
                 f"repetition penalty {settings.repetition_penalty}, up to {settings.max_new_tokens} tokens"
                 + (f" (set for this persona: {', '.join(sorted(generation))})" if generation else "")]
        try:
            score = await self.bot.store.quiz_score(await asyncio.to_thread(info.path.resolve))
        except StoreError:
            score = None
        lines.insert(4, f"Blind quiz: {quiz_line(score, title, '`/persona quiz` takes it')}")
        if entry is not None and entry.avatar_url:
            lines.append(f"Avatar: {entry.avatar_url}")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @persona.command(name="quiz")
    @app_commands.describe(name="a persona's name (default: the one speaking here)",
                           rounds=f"how many rounds (default {QUIZ_ROUNDS})")
    @app_commands.autocomplete(name=persona_names)
    @app_commands.checks.cooldown(1, 30.0, key=lambda i: i.user.id)
    async def persona_quiz(self, interaction: discord.Interaction, name: str | None = None,
                           rounds: app_commands.Range[int, 1, MAX_QUIZ_ROUNDS] = QUIZ_ROUNDS) -> None:
        """A blind quiz, just for you: can you tell the persona's lines from the real person's?"""
        if name is None:
            entry, _ = await self._speaking_here(interaction)
        else:
            entry = await find_or_say(interaction, name)
            if entry is None:
                return
        # Sampling its lines takes longer than Discord waits for an answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            quiz = await prepare_quiz(self.bot.engine, self.bot.store, PersonaRef.of(entry) if entry else None,
                                      rounds=rounds, target=DISCORD, rng=random.Random())
        except (QuizError, SwapError) as e:
            await interaction.edit_original_response(content=f"No quiz: {e}.")
            return
        view = QuizView(quiz, interaction.user.id)
        await interaction.edit_original_response(content=view.page(), view=view)
        await view.wait()
        text = f"This quiz: {view.score.summary(quiz.name)}."
        if view.score.rounds:
            try:
                kept = await self.bot.store.add_quiz_score(quiz.artifact, view.score)
                text += f"\nAll quizzes on this model: {kept.summary(quiz.name)}."
            except StoreError as e:
                log.error("could not keep a quiz result for %s: %s", quiz.artifact, e)
                text += "\n(The database is busy: this result was not kept.)"
        await interaction.edit_original_response(content=text, view=None)

    @persona.command(name="use")
    @app_commands.describe(name="the persona's name", scope="where it speaks")
    @app_commands.choices(scope=SCOPE_CHOICES)
    @app_commands.autocomplete(name=persona_names)
    @guild_admins_only()
    async def persona_use(self, interaction: discord.Interaction, name: str,
                          scope: str = "channel") -> None:
        """Make a persona speak in this channel, in this whole server, or (owners) everywhere."""
        authority = await self.bot.authority(interaction)
        try:
            entry = await personas.assign(self.bot.store, authority, name, scope,
                                          channel_id=assignment_place(interaction.channel),
                                          channel_guild_id=interaction.guild_id)
        except (PersonaError, StoreError) as e:
            await interaction.response.send_message(f"Not done: {e}.", ephemeral=True)
            return
        where = {"channel": "in this channel", "guild": "in this server", "bot": "everywhere"}[scope]
        await interaction.response.send_message(f"**{entry.name}** now speaks {where} (where nothing nearer is "
                                                "assigned).", ephemeral=True)

    @persona.command(name="clear")
    @app_commands.describe(scope="which assignment to remove")
    @app_commands.choices(scope=SCOPE_CHOICES)
    @guild_admins_only()
    async def persona_clear(self, interaction: discord.Interaction,
                            scope: str = "channel") -> None:
        """Remove the persona assignment of this channel, this server, or (owners) the whole bot."""
        authority = await self.bot.authority(interaction)
        try:
            cleared = await personas.unassign(self.bot.store, authority, scope,
                                              channel_id=assignment_place(interaction.channel),
                                              channel_guild_id=interaction.guild_id)
        except (PersonaError, StoreError) as e:
            await interaction.response.send_message(f"Not done: {e}.", ephemeral=True)
            return
        speaking, why = await self._speaking_here(interaction)
        now = (f"**{speaking.name}** speaks here ({why})" if speaking is not None
               else f"**{self.bot.engine.persona.name}**, the bot's configured persona, speaks here")
        text = f"Cleared the {SCOPE_WORDS[scope]}. " if cleared else f"There was no {SCOPE_WORDS[scope]}. "
        await interaction.response.send_message(text + f"Now {now}.", ephemeral=True)

    @persona.command(name="add")
    @app_commands.describe(name="the name it speaks under", directory="its artifact directory, inside MODELS_DIR",
                           avatar_url="an image address for its messages",
                           everywhere="owners: a global persona, for every server")
    @app_commands.rename(everywhere="global")
    @guild_admins_only()
    async def persona_add(self, interaction: discord.Interaction, name: str, directory: str,
                          avatar_url: str | None = None, everywhere: bool = False) -> None:
        """Register a trained persona artifact from MODELS_DIR under a name, for this server."""
        authority = await self.bot.authority(interaction)
        # Loading the model to check it can take longer than Discord waits for an answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        models_dir = self.bot.settings.models_dir
        # Relative to MODELS_DIR (an owner's absolute path stays absolute).
        wanted = models_dir / directory
        owner = None if everywhere else interaction.guild_id
        try:
            if everywhere and not authority.is_owner:    # before reading any file for them
                raise PersonaError("a global persona is the bot's owners' to add")
            where = await asyncio.to_thread(_inside_models_dir, wanted, models_dir, authority.is_owner)
            problem = await personas.artifact_problem(self.bot.store, authority, where, owner)
            if problem:     # another server's: nothing of it is read, nor is it said what is there
                raise PersonaError(problem)
            artifact = await asyncio.to_thread(personas.check_artifact, where)
            entry = await personas.register(self.bot.store, authority, name, artifact, guild_id=owner,
                                            models_dir=models_dir, avatar_url=avatar_url,
                                            max_per_guild=self.bot.settings.personas_per_server,
                                            taken=await member_names(interaction.guild, name))
            await self._loads(entry)
        except (PersonaError, StoreError) as e:
            # Paths as they typed them: relative to MODELS_DIR; the bot's own file system is nobody's business.
            await interaction.edit_original_response(
                content=f"Not added: {personas.shown_paths(str(e), models_dir)}.")
            return
        await interaction.edit_original_response(
            content=f"Added **{entry.name}** ({owner_word(entry)}). `/persona use name:{entry.name}` makes it speak.")

    async def _loads(self, entry: PersonaEntry) -> None:
        """Load a persona just registered, so that a model that cannot run is refused now rather than at its
        first reply; the registration is undone then (PersonaError says why)."""
        try:
            await self.bot.engine.load_persona(PersonaRef.of(entry))
        except SwapError as e:
            await self.bot.store.remove_persona(entry.id)
            raise PersonaError(f"its model does not run here ({e})") from e

    @persona.command(name="remove")
    @app_commands.describe(name="the persona's name", everywhere="owners: the global persona of that name")
    @app_commands.rename(everywhere="global")
    @app_commands.autocomplete(name=persona_names)
    @guild_admins_only()
    async def persona_remove(self, interaction: discord.Interaction, name: str, everywhere: bool = False) -> None:
        """Remove one of this server's personas (and where it was assigned)."""
        authority = await self.bot.authority(interaction)
        owner = None if everywhere else interaction.guild_id
        try:
            # Read before it goes, for its artifact; `remove` decides whether it may go (and it is this one:
            # the owner's own is found first).
            gone = await self.bot.store.find_persona(name, owner)
            dropped = await personas.remove(self.bot.store, authority, name, guild_id=owner)
        except (PersonaError, StoreError) as e:
            await interaction.response.send_message(f"Not removed: {e}.", ephemeral=True)
            return
        await interaction.response.send_message(
            f"Removed **{name}**" + (f" and its {dropped} assignment(s)." if dropped else "."), ephemeral=True)
        if gone is not None:
            await personas.unload_if_unnamed(self.bot.store, self.bot.engine.forget, gone.artifact_path)


class QuizView(discord.ui.View):
    """A quiz's rounds, one page at a time; only the person who asked can answer. Stops at the last round, at
    Stop, or after five quiet minutes; `score` is what was answered."""

    def __init__(self, quiz: Quiz, user_id: int) -> None:
        super().__init__(timeout=300)
        self.quiz = quiz
        self.user_id = user_id
        self.score = QuizScore()
        self.verdict = ""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    def page(self) -> str:
        """The round to answer now, after the last round's verdict."""
        round_ = self.quiz.rounds[self.score.rounds]
        name = self.quiz.name
        return "\n".join([
            *([self.verdict] if self.verdict else []),
            f"**Blind quiz on {name}**, round {self.score.rounds + 1} of {len(self.quiz.rounds)}: one line is "
            f"{name}'s own (never trained on), the other {name}'s persona wrote. Which is real?",
            *(f"**{number}.** {line}" for number, line in enumerate(round_.options, 1))])

    async def _pick(self, interaction: discord.Interaction, picked: int) -> None:
        fooled = self.quiz.rounds[self.score.rounds].fooled_by(picked)
        self.score += QuizScore(1, int(fooled))
        self.verdict = (f"Round {self.score.rounds}: " + ("that was the persona's line." if fooled
                                                          else "right, that was the real one."))
        if self.score.rounds < len(self.quiz.rounds):
            await interaction.response.edit_message(content=self.page(), view=self)
            return
        self.stop()
        await interaction.response.defer()

    @discord.ui.button(label="1", style=discord.ButtonStyle.primary)
    async def first(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._pick(interaction, 0)

    @discord.ui.button(label="2", style=discord.ButtonStyle.primary)
    async def second(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._pick(interaction, 1)

    @discord.ui.button(label="Stop", style=discord.ButtonStyle.secondary)
    async def end(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.defer()


def _inside_models_dir(directory: Path, models_dir: Path, is_owner: bool) -> Path:
    """`directory` resolved ("../" leads nowhere), and for someone not an owner only inside MODELS_DIR: nothing
    outside is read for them, nor is it said whether it exists. Touches files: run it off the event loop."""
    resolved = directory.expanduser().resolve()
    if not is_owner and not resolved.is_relative_to(models_dir.expanduser().resolve()):
        raise PersonaError("that directory is not inside MODELS_DIR: a server's admins register artifacts "
                           "from there only")
    return resolved


async def setup(bot: PersonaBot) -> None:
    await bot.add_cog(Personas(bot))
