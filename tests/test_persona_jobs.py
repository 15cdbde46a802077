"""Jobs per persona: a retrain of one registered persona (a real training child on a tiny model, a LoRA adapter
retrained as an adapter on the same base) swaps only that persona while the others and the bot's own keep
serving, its rollback, and their refusals; schedules and posts that name their persona, or fall back to the
persona of the channel they post in, to the terminal, a Discord sender, and simcord's Discord. Real SQLite,
real tiny models; only Discord is simulated."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
import simcord
from discord import app_commands

from bot.core import personas
from bot.inference.engine import Engine
from bot.core.filters import DISCORD
from bot.core.personas import PersonaRef
from bot.core.posts import PostTarget
from bot.jobs.twitter import TwitterTarget
from bot.jobs.retrain import Retrainer, RetrainError
from bot.jobs.scheduler import PostScheduler, Senders
from bot.storage.sqlite import SQLiteStore as Store
from test_discord import engine, guild_b, settings, simcord_bot, store, world  # noqa: F401 (fixtures)
from training.artifact import read_persona

pytestmark = pytest.mark.slow

FAST = ["--max-steps", "30", "--threads", "1", "--samples", "0", "--batch-size", "4", "--fidelity-lines", "0"]
GUILD = 1001
OWNER = personas.operator()
# Bob's tiny model says varied lines when sampled; Alice's every line opens with @everyone or repeats a training
# line, so the bot's own persona (Alice, below) can never write a post: a post that went out was written by a
# registered persona.
VARIED = {"top_k": 50}


@pytest.fixture
def dana_adapter(lora_personas: dict[str, Path]) -> Path:
    """A LoRA adapter persona (Dana, learning Carol's voice) on Alice's model as its base."""
    return lora_personas["carol"]


async def _open(alice_artifact: Path, tmp_path: Path, data_dir: Path):
    store = await Store.open(tmp_path / "bot.sqlite3")
    engine = Engine.load(alice_artifact).start()
    retrainer = Retrainer(engine, store, data_dir=data_dir, models_dir=tmp_path / "models", extra_args=FAST)
    return store, engine, retrainer


async def _reply(engine: Engine, entry=None):
    return await engine.reply([("Dan", "pizza tonight?")], target=DISCORD, seed=1,
                              persona=PersonaRef.of(entry) if entry is not None else None)


def _loaded(engine: Engine) -> set[Path]:
    return {path for path, _ in engine.pool.loaded()}


# -- retrain and rollback per persona -----------------------------------------------------------------------
def test_a_persona_retrain_swaps_only_that_persona_and_its_rollback_only_it(alice_artifact, bob_artifact,
                                                                            dana_adapter, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _open(alice_artifact, tmp_path, data_dir)
        bob = await personas.register(store, OWNER, "Bob", bob_artifact, guild_id=None)
        dana = await personas.register(store, OWNER, "Dana", dana_adapter, guild_id=GUILD)
        before = await _reply(engine, bob)              # the old Bob is loaded: the swap must unload it
        during = []

        async def progress(p):
            if p.step and not during:                   # another persona answers while Bob trains
                during.append(await _reply(engine, dana))

        result = await retrainer.run(persona=bob, epochs=100, force=True, requested_by=7, on_progress=progress)
        entry = await store.persona(bob.id)
        after = {"bob": await _reply(engine, entry), "dana": await _reply(engine, dana),
                 "own": await _reply(engine), "loaded": _loaded(engine), "runs": await store.runs()}
        now, aside = await retrainer.rollback(entry)
        back = await store.persona(bob.id)
        rolled = {"bob": await _reply(engine, back), "loaded": _loaded(engine), "own": engine.persona.path}
        await engine.close()
        await store.close()
        return before, during, result, entry, after, now, aside, back, rolled

    before, during, result, entry, after, now, aside, back, rolled = asyncio.run(main())
    assert before.artifact == bob_artifact
    assert during and during[0].persona == "Dana" and during[0].artifact == dana_adapter
    assert result.persona == "Bob" and result.previous == bob_artifact
    assert result.artifact.parent == tmp_path / "models" and result.artifact.name.startswith("bob-")
    assert entry.artifact_path == result.artifact and entry.previous_artifact_path == bob_artifact
    assert after["bob"].persona == "Bob" and after["bob"].artifact == result.artifact
    assert after["dana"].artifact == dana_adapter and after["own"].artifact == alice_artifact
    assert bob_artifact not in after["loaded"]               # the replaced artifact was unloaded
    run = after["runs"][0]
    assert run["status"] == "done" and run["requested_by"] == 7 and run["speaker"] == read_persona(bob_artifact).speaker
    assert Path(run["out_path"]) == result.artifact
    # The rollback: Bob only, back to the artifact before, the retrained one kept for the next rollback.
    assert (now, aside) == (bob_artifact, result.artifact)
    assert back.artifact_path == bob_artifact and back.previous_artifact_path == result.artifact
    assert rolled["bob"].artifact == bob_artifact and result.artifact not in rolled["loaded"]
    assert rolled["own"] == alice_artifact


def test_a_lora_persona_is_retrained_as_an_adapter_on_the_same_base(alice_artifact, dana_adapter, tmp_path,
                                                                    data_dir):
    async def main():
        store, engine, retrainer = await _open(alice_artifact, tmp_path, data_dir)
        dana = await personas.register(store, OWNER, "Dana", dana_adapter, guild_id=GUILD)
        result = await retrainer.run(persona=dana, epochs=100, force=True)
        reply = await _reply(engine, await store.persona(dana.id))
        own = engine.persona.path
        # The server's artifacts: the one the owners gave it and what its retrain made; nobody else's.
        owners = [await store.artifact_owner(p.resolve()) for p in (dana_adapter, result.artifact, alice_artifact)]
        await engine.close()
        await store.close()
        return result, reply, own, owners

    result, reply, own, owners = asyncio.run(main())
    assert owners == [GUILD, GUILD, None]
    old, new = read_persona(dana_adapter), read_persona(result.artifact)
    assert new.is_adapter and old.base and new.base == old.base
    assert new.speaker == old.speaker                          # the persona's own speaker, from its persona.json
    assert (result.artifact / "adapter_model.safetensors").is_file()
    assert not (result.artifact / "model.safetensors").exists()      # not a whole model
    assert reply.persona == "Dana" and reply.artifact == result.artifact and own == alice_artifact


def test_a_persona_removed_while_it_trains_is_a_rejected_run_that_changes_nothing(alice_artifact, bob_artifact,
                                                                                  tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _open(alice_artifact, tmp_path, data_dir)
        bob = await personas.register(store, OWNER, "Bob", bob_artifact, guild_id=None)

        async def remove_it(p):
            if p.step and await store.persona(bob.id) is not None:
                await store.remove_persona(bob.id)

        with pytest.raises(RetrainError, match="removed meanwhile") as refused:
            await retrainer.run(persona=bob, epochs=100, force=True, on_progress=remove_it)
        runs = await store.runs()
        leftovers = list((tmp_path / "models").iterdir())
        own = engine.persona.path
        await engine.close()
        await store.close()
        return refused.value, runs, leftovers, own

    error, runs, leftovers, own = asyncio.run(main())
    assert runs[0]["status"] == "rejected" and "removed meanwhile" in runs[0]["error"]
    assert leftovers == [] and own == alice_artifact        # its output removed, the bot's own untouched


def test_persona_rollback_and_retrain_refusals_change_nothing(alice_artifact, bob_artifact, tmp_path, data_dir):
    async def main():
        store, engine, retrainer = await _open(alice_artifact, tmp_path, data_dir)
        bob = await personas.register(store, OWNER, "Bob", bob_artifact, guild_id=None)
        answers = []
        for previous in (None, tmp_path / "deleted-model", data_dir):   # none; gone; a folder that is no model
            if previous is not None:
                await store.set_persona_artifact(bob.id, bob_artifact, previous_path=previous)
            with pytest.raises(RetrainError) as refused:
                await retrainer.rollback(await store.persona(bob.id))
            answers.append((str(refused.value), await store.persona(bob.id)))
        gone = tmp_path / "gone"
        shutil.copytree(bob_artifact, gone)
        lost = await personas.register(store, OWNER, "Lost", gone, guild_id=None)
        shutil.rmtree(gone)
        with pytest.raises(RetrainError, match="cannot be read") as unreadable:
            await retrainer.run(persona=lost)
        runs = await store.runs()
        await engine.close()
        await store.close()
        return answers, unreadable.value, runs

    answers, unreadable, runs = asyncio.run(main())
    (none, e0), (gone, e1), (bad, e2) = answers
    assert "Bob has no previous model" in none and e0.artifact_path == bob_artifact
    assert "deleted-model" in gone and "is gone; nothing was changed" in gone
    assert e1.artifact_path == bob_artifact and e1.previous_artifact_path == tmp_path / "deleted-model"
    assert "did not load" in bad and e2.artifact_path == bob_artifact and e2.previous_artifact_path == data_dir
    assert "Lost" in str(unreadable) and runs == []          # refused before a run was recorded


# -- schedules that name their persona -------------------------------------------------------------------------
class DiscordSender:
    """The Discord adapter's channel sender, recorded: (channel id, text, guild id, persona)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, int | None, PersonaRef | None]] = []

    async def __call__(self, channel_id: int, text: str, guild_id: int | None, persona: PersonaRef | None) -> str:
        self.sent.append((channel_id, text, guild_id, persona))
        return f"message-{len(self.sent)}"


def test_a_schedule_posts_its_personas_lines_to_the_terminal_and_discord(alice_artifact, bob_artifact, tmp_path):
    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(alice_artifact) as engine:
            bob = await personas.register(store, OWNER, "Bob", bob_artifact, guild_id=GUILD, generation=VARIED)
            out, discord = io.StringIO(), DiscordSender()
            senders = Senders(lambda: engine.persona.name, out=out)
            senders.register_discord(discord)
            scheduler = PostScheduler(engine, store, senders, seed=3)
            named = await scheduler.add("bob", cron="0 20 * * *", targets=[PostTarget("terminal"),
                                        PostTarget("discord", 111)], mode="line", guild_id=GUILD, persona_id=bob.id)
            unnamed = await scheduler.add("own", cron="0 21 * * *", targets=[PostTarget("terminal")], mode="line")
            slot = datetime.now(timezone.utc)
            fired = await scheduler.fire(named.id, slot), await scheduler.fire(unnamed.id, slot)
            described = scheduler.describe(named, "Bob"), scheduler.describe(unnamed)
            return fired, out.getvalue(), discord.sent, described, await store.posts()

    (named, unnamed), printed, sent, described, posts = asyncio.run(main())
    assert [o.status for o in named] == ["posted", "posted"]
    assert printed.startswith(f"[post] Bob: {named[0].text}\n")
    [(channel, text, guild, persona)] = sent
    assert (channel, text, guild) == (111, named[1].text, GUILD)
    assert persona.name == "Bob" and persona.artifact == bob_artifact and dict(persona.generation) == VARIED
    # The bot's own persona (Alice) writes nothing postable (her lines mention @everyone, or repeat her
    # training lines word for word).
    assert unnamed[0].status == "skipped" and unnamed[0].error.startswith("no line passed the filters")
    assert "as **Bob**" in described[0] and "as the persona where it posts" in described[1]
    assert {p["status"] for p in posts} == {"posted", "skipped"}


def test_without_its_persona_a_post_is_written_by_the_channels_persona(alice_artifact, bob_artifact, tmp_path):
    async def main():
        async with await Store.open(tmp_path / "bot.sqlite3") as store, Engine.load(alice_artifact) as engine:
            bob = await personas.register(store, OWNER, "Bob", bob_artifact, guild_id=GUILD, generation=VARIED)
            await personas.register(store, OWNER, "Robin", bob_artifact, guild_id=None, generation=VARIED)
            await personas.assign(store, personas.operator(GUILD), "Robin", "channel", channel_id=111,
                                  channel_guild_id=GUILD)
            discord = DiscordSender()
            senders = Senders(lambda: engine.persona.name)
            senders.register_discord(discord)
            scheduler = PostScheduler(engine, store, senders, seed=5)
            to_111 = [PostTarget("discord", 111)]
            removed = await scheduler.add("bob", cron="0 20 * * *", targets=to_111, guild_id=GUILD, persona_id=bob.id)
            await personas.remove(store, personas.operator(GUILD), "Bob", guild_id=GUILD)
            stored = await store.schedule(removed.id)
            slot = datetime.now(timezone.utc)
            outcomes = {"removed": await scheduler.fire(removed.id, slot),
                        "unassigned": await scheduler.post_now([PostTarget("discord", 222)], mode="line",
                                                               guild_id=GUILD)}
            asked = []

            async def adapter_says(channel_id: int):        # the Discord adapter's own look-up wins
                asked.append(channel_id)
                return await store.find_persona("Robin", None)

            hooked = PostScheduler(engine, store, senders, seed=5, channel_persona=adapter_says)
            outcomes["hooked"] = await hooked.post_now([PostTarget("discord", 333)], mode="line")
            return stored, outcomes, discord.sent, asked

    stored, outcomes, sent, asked = asyncio.run(main())
    assert stored.persona_id is None                          # the store cleared the removed persona
    assert outcomes["removed"][0].status == "posted" and sent[0][0] == 111 and sent[0][3].name == "Robin"
    # No persona named and none assigned in channel 222: the bot's own (Alice) writes, and nothing passes.
    assert outcomes["unassigned"][0].status == "skipped" and all(s[0] != 222 for s in sent)
    assert outcomes["hooked"][0].status == "posted" and asked == [333] and sent[-1][3].name == "Robin"


def test_twitter_ignores_the_persona_and_the_terminal_names_it(tmp_path):
    ref = PersonaRef(tmp_path, "Bob")
    out = io.StringIO()
    bare = Senders(lambda: "Alice", out=out)

    async def main():
        await bare.get(PostTarget("twitter"), persona=ref)("no credentials")
        await bare.get(PostTarget("discord", 5))("no discord")
        return out.getvalue()

    assert asyncio.run(main()) == "[post] Bob: no credentials\n[post] Alice: no discord\n"
    tweeting = Senders(lambda: "Alice", twitter=TwitterTarget("ck", "cs", "at", "ats"))
    assert tweeting.get(PostTarget("twitter"), persona=ref) == tweeting._tweet    # one account, whoever writes


# -- through Discord (simcord) --------------------------------------------------------------------------------
@pytest.mark.simcord(settle_timeout=180)
async def test_retrain_and_rollback_of_one_persona_from_discord(world, guild_b, alice_artifact, bob_artifact):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    store, me = env.bot.store, env.bot.user
    robin = await personas.register(store, OWNER, "Robin", bob_artifact, guild_id=env.guild.id)
    await personas.assign(store, personas.operator(env.guild.id), "Robin", "channel", channel_id=other.id,
                          channel_guild_id=env.guild.id)
    refused = await mallory.slash(b_general, "retrain start", persona="Robin")     # B's admin, not an owner
    assert "owners only" in refused.response.content
    simcord.assert_error(env, app_commands.CheckFailure)      # refused by the command's check
    # Even an owner does not reach a server's persona from another server: it is not seen there.
    env.bot.settings = dataclasses.replace(env.bot.settings, admin_user_ids=frozenset({admin.id, mallory.id}))
    for command in ("retrain start", "rollback"):
        unseen = await mallory.slash(b_general, command, persona="Robin")
        assert unseen.ephemeral and "no persona named 'Robin' in this server" in unseen.response.content
    assert await store.runs() == []

    await admin.slash(general, "retrain start", persona="Robin", epochs=100.0, force=True)
    new = (await store.persona(robin.id)).artifact_path
    assert new.parent == env.bot.settings.models_dir and new.name.startswith("robin-")
    shown = env.backend.get_message(general.id, (await store.runs())[0]["progress_message_id"]).content
    assert "**Robin**" in shown and "/rollback persona:Robin" in shown
    assert env.bot.engine.persona.path == alice_artifact                  # the bot's own persona untouched
    for channel, name in ((other, "Robin"), (general, None)):
        await bob.send(channel, f"{me.mention} pizza tonight?")
        said = channel.last_message
        assert said.author.name == name if name else said.author == me   # Robin by webhook; the bot itself

    back = await admin.slash(general, "rollback", persona="Robin")
    assert f"**Robin** now speaks with `{bob_artifact.name}`" in back.response.content
    entry = await store.persona(robin.id)
    assert entry.artifact_path == bob_artifact and entry.previous_artifact_path == new
    assert env.bot.engine.persona.path == alice_artifact


async def test_schedules_and_posts_name_their_persona_in_discord(world, guild_b, bob_artifact):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    store = env.bot.store
    robin = await personas.register(store, OWNER, "Robin", bob_artifact, guild_id=env.guild.id, generation=VARIED)
    added = await admin.slash(general, "schedule add", name="robin", cron="0 20 * * *",
                              targets=f"discord:{other.id}", persona="Robin")
    assert "added" in added.response.content
    [schedule] = await store.schedules()
    assert schedule.persona_id == robin.id
    assert "as **Robin**" in (await admin.slash(general, "schedule list")).response.content
    # Server B's admin does not see server A's persona; a global schedule may use global personas only.
    theirs = await mallory.slash(b_general, "schedule add", name="x", cron="0 20 * * *",
                                 targets=f"discord:{b_general.id}", persona="Robin")
    assert theirs.response.content.startswith("Not added") and "no persona named" in theirs.response.content
    global_one = await admin.slash(general, "schedule add", name="y", cron="0 20 * * *", targets="terminal",
                                   persona="Robin")
    assert "Not added" in global_one.response.content and "global personas" in global_one.response.content
    assert len(await store.schedules()) == 1

    posted = await admin.slash(general, "post now", targets=f"discord:{other.id}", persona="Robin")
    assert posted.response.content.startswith(f"discord:{other.id}: posted")
    said = other.last_message
    assert said.author.name == "Robin" and said.webhook_id is not None
    [outcome] = await env.bot.poster.fire(schedule.id, datetime.now(timezone.utc))
    assert outcome.status == "posted" and other.last_message.author.name == "Robin"
    assert str(other.last_message.id) == outcome.remote_id
    # Without `persona:`, a post in a channel goes out as the persona assigned there.
    await personas.assign(store, personas.operator(env.guild.id), "Robin", "channel", channel_id=general.id,
                          channel_guild_id=env.guild.id)
    here = await admin.slash(general, "post now", targets=f"discord:{general.id}")
    assert here.response.content.startswith(f"discord:{general.id}: posted")
    assert general.last_message.author.name == "Robin" and general.last_message.webhook_id is not None
    # A global schedule sees a server's assignment where it posts (the Discord adapter looks the channel up).
    await personas.assign(store, personas.operator(env.guild.id), "Robin", "guild")
    everywhere = await store.add_schedule("global", cron="0 21 * * *", targets=[f"discord:{other.id}"])
    before = other.last_message.id
    [outcome] = await env.bot.poster.fire(everywhere, datetime.now(timezone.utc))
    assert outcome.status == "posted" and other.last_message.id != before
    assert other.last_message.author.name == "Robin" and other.last_message.webhook_id is not None
