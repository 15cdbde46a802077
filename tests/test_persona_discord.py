"""Several personas in Discord (simcord): /persona add|use|clear|remove|list|info, each persona speaking
under its own name through the bot's webhook of the channel (or as the bot with its name in bold where the bot
may not use webhooks), replies routed back to the persona that was replied to, and a server's admins kept to
their own server. The personas are real tiny models (two whole models and a LoRA adapter) loaded by the
engine's pool from MODELS_DIR; the database is a real SQLite file; only Discord is simulated."""

from __future__ import annotations

import shutil
from pathlib import Path

import discord
import pytest
import simcord
from discord import app_commands

from bot.core.personas import PersonaRef
from test_discord import engine, guild_b, settings, simcord_bot, store, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture
def carol_adapter(lora_personas: dict[str, Path]) -> Path:
    """A LoRA adapter persona (Carol) on Alice's model as its base."""
    return lora_personas["carol"]


@pytest.fixture
def models(settings, alice_artifact, bob_artifact, carol_adapter) -> Path:  # noqa: F811
    """MODELS_DIR holding the three artifacts, as a server's admins register them (by directory name)."""
    for name, artifact in (("alice", alice_artifact), ("bob", bob_artifact), ("carol", carol_adapter)):
        shutil.copytree(artifact, settings.models_dir / name)
    return settings.models_dir


def webhook_calls(env, channel_id: int) -> int:
    """Requests the bot made about the channel's webhooks (listing or making one)."""
    return sum(1 for r in env.http_requests if r.path == f"/channels/{channel_id}/webhooks")


def webhook_creations(env, channel_id: int) -> int:
    return sum(1 for r in env.http_requests if r.method == "POST" and r.path == f"/channels/{channel_id}/webhooks")


async def ok(who, where, command: str, **options) -> str:
    """Run a slash command that must succeed; its private answer."""
    result = await who.slash(where, command, **options)
    assert result.ephemeral, command
    return result.response.content


async def refused(env, who, where, command: str, why: str, **options) -> None:
    """Run a slash command that must be refused, privately, saying `why`."""
    result = await who.slash(where, command, **options)
    assert result.ephemeral and why in result.response.content, (command, result.response.content)
    if "admins only" in why:     # refused by the command's check: the one error handler answered
        simcord.assert_error(env, app_commands.CheckFailure)


async def test_personas_speak_in_their_channels_and_servers_under_their_own_names(world, guild_b, models):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    me = env.bot.user
    assert "Added **Alice** (this server)" in await ok(admin, general, "persona add", name="Alice", directory="alice",
                                                       avatar_url="https://example.com/alice.png")
    await ok(admin, general, "persona add", name="Robin", directory="bob")
    await ok(admin, general, "persona use", name="Alice", scope="channel")
    assert "**Robin** now speaks in this channel" in await ok(admin, other, "persona use", name="robin", scope="channel")
    # Server B's admin (not an owner) registers the LoRA adapter for B, from MODELS_DIR, and gives B to it.
    await ok(mallory, b_general, "persona add", name="Carol", directory="carol")
    assert "in this server" in await ok(mallory, b_general, "persona use", name="Carol", scope="guild")

    for channel, who, name in ((general, bob, "Alice"), (other, carol, "Robin"), (b_general, mallory, "Carol")):
        asked = await who.send(channel, f"{me.mention} pizza tonight?")
        said = channel.last_message
        assert said.id != asked.id and said.webhook_id is not None, name
        assert said.author.name == name and said.author.bot       # under the persona's name, through a webhook
        assert env.bot.memory.turns(channel.id).count((name, said.content)) == 1   # remembered once, as it
    hook = env.backend.webhooks[general.last_message.webhook_id]
    assert (hook.name, hook.creator_id, hook.channel_id) == ("personabot", me.id, general.id)

    # A second reply in a channel goes through the same webhook; the avatar went with Alice's messages.
    await carol.send(general, f"{me.mention} and the beach?")
    assert general.last_message.author.name == "Alice" and general.last_message.webhook_id == hook.id
    assert webhook_creations(env, general.id) == 1
    executed = [r.json for r in env.http_requests if r.method == "POST" and r.path.startswith(f"/webhooks/{hook.id}/")]
    assert {m["username"] for m in executed} == {"Alice"}
    assert {m["avatar_url"] for m in executed} == {"https://example.com/alice.png"}
    assert all(m["allowed_mentions"]["parse"] == [] for m in executed)

    # A channel with no assignment speaks with the bot's configured persona, as the bot itself.
    quiet = env.guild.create_text_channel("plain")
    await bob.send(quiet, f"{me.mention} hello")
    assert quiet.last_message.author.id == me.id and quiet.last_message.webhook_id is None
    assert not quiet.last_message.content.startswith("**")
    # /status counts the registered personas loaded (Alice, Bob and Carol answered), naming none of them.
    status = (await bob.slash(general, "status")).response.content
    assert "registered personas loaded: 3 · " in status and "of 2048 MB" in status and "Carol" not in status


async def test_without_manage_webhooks_the_bot_speaks_for_the_persona_with_its_name_in_bold(world, models):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    closed = env.guild.create_text_channel(
        "no-hooks", overwrites={me: discord.PermissionOverwrite(manage_webhooks=False)})
    await ok(admin, closed, "persona add", name="Robin", directory="bob")
    await ok(admin, closed, "persona use", name="Robin", scope="channel")
    asked = await carol.send(closed, f"{me.mention} coffee?")
    said = closed.last_message
    assert said.author.id == me.id and said.webhook_id is None and said.reference.message_id == asked.id
    assert said.content.startswith("**Robin:** ")
    assert webhook_calls(env, closed.id) == 0           # it knew from its permissions not to try
    turns = env.bot.memory.turns(closed.id)
    assert turns[-1] == ("Robin", said.content.removeprefix("**Robin:** "))   # remembered without the bold name


async def test_a_reply_to_a_persona_is_answered_by_that_persona_wherever_it_is(world, models):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    closed = env.guild.create_text_channel(
        "no-hooks", overwrites={me: discord.PermissionOverwrite(manage_webhooks=False)})
    for name, directory in (("Alice", "alice"), ("Robin", "bob")):
        await ok(admin, general, "persona add", name=name, directory=directory)
    await ok(admin, general, "persona use", name="Alice", scope="channel")
    await ok(admin, closed, "persona use", name="Robin", scope="channel")
    await bob.send(general, f"{me.mention} rain again")
    alices = general.last_message
    await bob.send(closed, f"{me.mention} rain again")
    bobs = closed.last_message
    assert alices.author.name == "Alice" and bobs.content.startswith("**Robin:** ")

    # Now Bob speaks in general and Alice in the channel without webhooks ...
    await ok(admin, general, "persona use", name="Robin", scope="channel")
    await ok(admin, closed, "persona use", name="Alice", scope="channel")
    # ... yet a reply (no mention) to Alice's webhook message is answered by Alice, and to Bob's by Bob.
    await carol.send(general, "really?", reply_to=alices)
    assert general.last_message.webhook_id is not None and general.last_message.author.name == "Alice"
    await carol.send(closed, "really?", reply_to=bobs)
    assert closed.last_message.author.id == me.id and closed.last_message.content.startswith("**Robin:** ")
    # Anything else goes to the channel's persona.
    await carol.send(general, f"{me.mention} and you?")
    assert general.last_message.author.name == "Robin"
    # A persona that is gone: its messages' replies go to the channel's persona.
    await ok(admin, general, "persona remove", name="Alice")
    await carol.send(general, "still there?", reply_to=alices)
    assert general.last_message.author.name == "Robin" and general.last_message.webhook_id == alices.webhook_id


async def test_a_deleted_webhook_is_made_again_and_a_restart_finds_its_own(world, models):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    await ok(admin, general, "persona add", name="Alice", directory="alice")
    await ok(admin, general, "persona use", name="Alice", scope="channel")
    await bob.send(general, f"{me.mention} one")
    first = general.last_message
    env.backend.delete_webhook(first.webhook_id)                 # someone deleted it in Discord
    await bob.send(general, f"{me.mention} two")
    second = general.last_message
    assert second.author.name == "Alice" and second.webhook_id not in (None, first.webhook_id)
    assert webhook_creations(env, general.id) == 2
    # After a restart (an empty cache) the bot finds its webhook instead of making another, and a reply to the
    # persona's message is still known as one to the bot.
    from bot.adapters.discord.speaking import Webhooks

    env.bot.webhooks = Webhooks()
    await carol.send(general, "what?", reply_to=second)
    assert general.last_message.author.name == "Alice" and general.last_message.webhook_id == second.webhook_id
    assert webhook_creations(env, general.id) == 2


async def test_an_admin_of_another_server_can_do_nothing_to_this_servers_personas(world, guild_b, models,
                                                                                  alice_artifact):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    await ok(admin, general, "persona add", name="Alice", directory="alice")
    await ok(admin, general, "persona use", name="Alice", scope="guild")
    before = (await env.bot.store.personas(), await env.bot.store.assignments(guild_id=env.guild.id, bot=True))

    # From server B: A's persona is not there to use, remove or look at, and global ones are the owners'.
    await refused(env, mallory, b_general, "persona use", "no persona named 'Alice'", name="Alice", scope="guild")
    await refused(env, mallory, b_general, "persona remove", f"no persona of guild {b_general.guild.id} named 'Alice'",
                  name="Alice")
    await refused(env, mallory, b_general, "persona info", "no persona named 'Alice'", name="Alice")
    await refused(env, mallory, b_general, "persona add", "owners", name="Alice", directory="alice", **{"global": True})
    await refused(env, mallory, b_general, "persona use", "owners only", name="Alice", scope="bot")
    await refused(env, mallory, b_general, "persona remove", "owners only", name="Alice", **{"global": True})
    # Artifacts outside MODELS_DIR are the owners' to register (a real one, by path or by "../").
    for outside in (str(alice_artifact), f"../{alice_artifact.parent.name}/alice", "alice/../../nothing"):
        await refused(env, mallory, b_general, "persona add", "not inside MODELS_DIR", name="Escape",
                      directory=outside)
    assert "**Alice** (this server)" not in await ok(mallory, b_general, "persona list")
    # A's artifacts are A's: the one its persona runs (the owners gave it to A), and what A's retrains make
    # (`<name>-<time>`), under any path that leads there; none is read for B's admin.
    retrained = models / "alice-20261207-101500"
    shutil.copytree(alice_artifact, retrained)
    await env.bot.store.claim_artifact(retrained.resolve(), env.guild.id)
    for theirs in ("alice", "alice-20261207-101500", "carol/../alice", "./alice/"):
        await refused(env, mallory, b_general, "persona add", "not one this server may use", name="Spy",
                      directory=theirs)
    # In server A, where she is no admin: every change is refused by the one error handler.
    mallory_in_a = env.guild.add_member(mallory.user)
    for command, options in (("persona use", {"name": "Alice", "scope": "channel"}),
                             ("persona clear", {"scope": "guild"}),
                             ("persona add", {"name": "Mine", "directory": "bob"}),
                             ("persona remove", {"name": "Alice"})):
        await refused(env, mallory_in_a, general, command, "admins only", **options)
    after = (await env.bot.store.personas(), await env.bot.store.assignments(guild_id=env.guild.id, bot=True))
    assert after == before


async def test_persona_list_and_info_show_who_speaks_where_and_what_they_are(world, guild_b, models):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    configured = env.bot.engine.persona.name
    assert "No personas registered" in (shown := await ok(bob, general, "persona list"))
    assert f"**{configured}**, the bot's configured persona" in shown
    await ok(admin, general, "persona add", name="Alice", directory="alice")
    await ok(admin, general, "persona add", name="Robin", directory="bob", **{"global": True})     # an owner: global
    await ok(mallory, b_general, "persona add", name="Carol", directory="carol")
    await ok(admin, general, "persona use", name="Robin", scope="guild")
    await ok(admin, general, "persona use", name="Alice", scope="channel")
    # Names offered as they are typed: this server's and global ones, never another server's (Carol is B's).
    offered = [c["value"] for c in await admin.autocomplete(general, "persona info", "name", "")]
    assert sorted(offered) == ["Alice", "Robin"]
    assert [c["value"] for c in await admin.autocomplete(general, "rollback", "persona", "r")] == ["Robin"]
    assert [c["value"] for c in await mallory.autocomplete(b_general, "persona use", "name", "")] == ["Carol", "Robin"]

    here = await ok(bob, general, "persona list")
    assert "• **Alice** (this server) ← speaks here (channel assignment)" in here
    assert "• **Robin** (global)\n" in here + "\n" and "Carol" not in here
    assert "• **Robin** (global) ← speaks here (server assignment)" in await ok(bob, other, "persona list")
    seen_in_b = await ok(mallory, b_general, "persona list")
    assert "**Carol** (this server)" in seen_in_b and "**Robin** (global)" in seen_in_b and "**Alice** (this" not in seen_in_b

    alice = await ok(bob, general, "persona info")                  # the one speaking here
    assert alice.startswith("**Alice** (this server), speaking here (channel assignment)")
    assert "Artifact: whole model, trained as Alice" in alice and "Validation loss: " in alice
    assert "temperature " in alice and "not measured" not in alice
    assert "Sounds like them: taken for Alice in " in alice and "Alice's own real lines: " in alice
    carol_info = await ok(mallory, b_general, "persona info", name="carol")
    assert carol_info.startswith("**Carol** (this server)") and "Sounds like them: taken for Carol in " in carol_info
    # Its base (Alice's model, outside MODELS_DIR) is named by its directory's name: no path of the bot's machine.
    assert "Artifact: LoRA adapter on alice, trained as Carol" in carol_info and str(models.parent) not in carol_info

    # Cleared: the server's persona speaks in the channel again; cleared too, the configured one.
    assert "Now **Robin** speaks here (server assignment)" in await ok(admin, general, "persona clear", scope="channel")
    cleared = await ok(admin, general, "persona clear", scope="guild")
    assert f"Now **{configured}**, the bot's configured persona, speaks here" in cleared
    assert "There was no channel assignment" in await ok(admin, general, "persona clear", scope="channel")


async def test_scheduled_posts_speak_as_their_persona(world, models):
    env, general, other, admin, bob, carol = world
    ref = PersonaRef(models / "bob", "Robin", avatar_url="https://example.com/bob.png")
    sent = await env.bot.send_post(general.id, "a line for you", guild_id=env.guild.id, persona=ref)
    posted = general.last_message
    assert str(posted.id) == sent and posted.author.name == "Robin" and posted.webhook_id is not None
    plain = await env.bot.send_post(general.id, "and one of mine", guild_id=env.guild.id)
    assert str(general.last_message.id) == plain and general.last_message.author.id == env.bot.user.id
    from bot.jobs.posting import PostError

    with pytest.raises(PostError, match="not in the schedule's server"):
        await env.bot.send_post(general.id, "elsewhere", guild_id=env.guild.id + 1, persona=ref)


async def test_a_persona_whose_model_does_not_run_is_refused_when_added(world, models):
    """An adapter whose base has gone reads as an artifact but cannot run: /persona add loads it at once and
    refuses it, rather than registering a persona that fails at its first reply."""
    import json

    env, general, other, admin, bob, carol = world
    broken = models / "gone-base"
    shutil.copytree(models / "carol", broken)
    info = json.loads((broken / "persona.json").read_text())
    (broken / "persona.json").write_text(json.dumps({**info, "base": str(models / "moved-away")}))
    answer = await ok(admin, general, "persona add", name="Dora", directory="gone-base")
    assert answer.startswith("Not added: its model does not run here") and "moved-away" in answer, answer
    # Paths as the admin knows them (relative to MODELS_DIR), never where the bot keeps its files.
    assert str(models) not in answer and str(models.resolve()) not in answer and "gone-base" in answer, answer
    dotted = await ok(admin, general, "persona add", name="Dot", directory="carol/../nothing-here")
    assert dotted.startswith("Not added") and str(models.resolve()) not in dotted and "nothing-here" in dotted
    assert [p.name for p in await env.bot.store.personas()] == []
    assert "Added **Caroline**" in await ok(admin, general, "persona add", name="Caroline", directory="carol")
    assert [path for path, _ in env.bot.engine.pool.loaded()] == [(models / "carol").resolve()]


async def test_names_that_would_pass_for_someone_else_are_refused(world, models):
    """A persona may not be named like a member of the server (Bob is one), like Discord's own pings or its
    system names in look-alike letters, nor with blank-looking characters; an ordinary name passes."""
    env, general, other, admin, bob, carol = world
    for name, why in (("Bob", "looks the same as 'Bob'"), ("b0b", "looks the same as 'Bob'"),
                      ("everyone", "@everyone"), ("Сlyde", "clyde"), ("Dіscord", "discord"),
                      ("\u3164", "invisible or blank-looking")):
        answer = await ok(admin, general, "persona add", name=name, directory="bob")
        assert answer.startswith("Not added") and why in answer, (name, answer)
    assert [p.name for p in await env.bot.store.personas()] == []
    assert "Added **Robin**" in await ok(admin, general, "persona add", name="Robin", directory="bob")
