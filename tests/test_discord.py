"""The Discord bot in simcord (an offline Discord): mentions with channel context, replies, bots ignored,
cooldowns, mentions that ping nobody, admin commands with a real training child, privacy, restarts, and an
event loop that keeps ticking. The persona is a real tiny model; only Discord is simulated."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import discord
import pytest
import simcord
from discord import app_commands

from bot.core.config import load_settings
from bot.adapters.discord.bot import PersonaBot
from bot.inference.engine import Engine
from bot.core.filters import OutputFilter
from bot.jobs.retrain import CHILD_NICENESS, Retrainer
from bot.storage.sqlite import SQLiteStore as Store

pytestmark = pytest.mark.slow

# Retrains in seconds; without the fidelity report (about 3 s a run) except where a test reads it (MEASURED).
MEASURED = ["--max-steps", "30", "--threads", "1", "--samples", "0", "--batch-size", "4"]
FAST = [*MEASURED, "--fidelity-lines", "0"]
LONG = ["--max-steps", "100000", "--threads", "1", "--samples", "0", "--batch-size", "4"]


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path, request):
    marker = request.node.get_closest_marker("env")
    env = {"DATABASE_PATH": str(tmp_path / "bot.sqlite3"), "TRAIN_DATA_DIR": str(data_dir),
           "MODELS_DIR": str(tmp_path / "models"), "USER_COOLDOWN": "0", "CHANNEL_COOLDOWN": "0",
           # One shard: the fake gateway has no recommendation to give an AutoShardedBot.
           "SHARD_COUNT": "1",
           # simcord's messages are dated by its own clock (January 2026): the jobs leader's prune of old
           # messages when it takes over would delete them all as months old.
           "MESSAGE_RETENTION_DAYS": "0", **(marker.kwargs if marker else {})}
    return load_settings(env, dotenv_path=None)


@pytest.fixture
async def engine(alice_artifact: Path):
    # Greedy, and without the leak guard: Alice's every line is a training line, and these tests look at
    # what the bot does with her words (the guard itself is tested in test_engine.py).
    engine = Engine.load(alice_artifact, generation={"top_k": 1}).start()
    engine.persona.output_filter = OutputFilter()
    yield engine
    await engine.close()


@pytest.fixture
async def store(settings):
    store = await Store.open(settings.database_path)
    yield store
    await store.close()


# simcord settles only when no bot-owned work is left to run: a leadership check every second would keep it
# busy for ever. A simulated bot checks at connection (when it takes the lead) and then once an hour.
SIMULATED_LEADER_CHECK_S = 3600.0


def make_bot(settings, engine, store, extra_args=FAST) -> PersonaBot:
    retrainer = Retrainer(engine, store, data_dir=settings.train_data_dir, models_dir=settings.models_dir,
                          extra_args=extra_args)
    return PersonaBot(settings, engine, store, retrainer=retrainer, leader_check_s=SIMULATED_LEADER_CHECK_S)


@pytest.fixture
def simcord_bot(settings, engine, store, request):
    marker = request.node.get_closest_marker("training")
    return make_bot(settings, engine, store, marker.args[0] if marker else FAST)


@pytest.fixture
def guild_b(simcord_env):
    """A second server the bot is in, with its own admin (Manage Server there, nowhere else)."""
    env = simcord_env
    guild = env.create_guild(name="B")
    b_general = guild.create_text_channel("b-general")
    b_mods = guild.create_role("B mods", permissions=discord.Permissions(manage_guild=True))
    mallory = guild.add_member(env.create_user("mallory"), roles=[b_mods])
    return b_general, mallory


@pytest.fixture
def world(simcord_env):
    env = simcord_env
    guild = env.create_guild()
    general = guild.create_text_channel("general")
    other = guild.create_text_channel("other")
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(env.create_user("admin"), roles=[mods])
    bob = guild.add_member(env.create_user("Bob"))
    carol = guild.add_member(env.create_user("Carol"))
    # "admin" is also one of the bot's owners (ADMIN_USER_IDS): global powers such as /retrain.
    env.bot.settings = dataclasses.replace(env.bot.settings, admin_user_ids=frozenset({admin.id}))
    return env, general, other, admin, bob, carol


def sent_messages(env) -> list[dict]:
    return [r.json for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")]


async def test_a_mention_gets_an_in_character_reply_from_that_channels_context(world):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    await carol.send(other, "rain bus movie")                  # another channel's talk
    await carol.send(general, "coffee lunch beach")
    asked = await bob.send(general, f"{me.mention} tonight pizza")
    reply = general.last_message
    assert reply.author == me and reply.reference.message_id == asked.id
    assert "again? classic" in reply.content                    # her catchphrase: in character
    assert any(r.path == f"/channels/{general.id}/typing" for r in env.http_requests)
    window = env.bot.memory.turns(general.id)
    assert window.count(("Carol", "coffee lunch beach")) == 1 and ("Carol", "rain bus movie") not in window
    assert window[-1] == ("Alice", reply.content)              # its own reply is part of the context


async def test_generated_everyone_pings_nobody(world):
    env, general, other, admin, bob, carol = world
    replies = []
    for word in ("garden", "pizza", "rain", "keys", "exam"):
        await bob.send(general, f"{env.bot.user.mention} {word}")
        replies.append(general.last_message)
    assert any("@\u200beveryone" in r.content for r in replies)      # she said it (her every line opens so) ...
    assert not any("@everyone" in r.content or r.mention_everyone for r in replies)   # ... and it was defused
    assert all(m["allowed_mentions"] == {"parse": [], "replied_user": False} for m in sent_messages(env))


async def test_a_reply_names_the_roles_it_mentions_as_that_server_knows_them(world, guild_b):
    from cogs.chat import discord_target

    env, general, other, admin, bob, carol = world
    here = env.bot.get_channel(general.id).guild
    mods = next(role for role in here.roles if role.name == "Mods")
    text = f"ask <@&{mods.id}>"
    assert discord_target(here).finish(text) == "ask @\u200bMods"
    elsewhere = env.bot.get_channel(guild_b[0].id).guild          # server B has no such role
    assert discord_target(elsewhere).finish(text) == "ask @\u200brole"
    assert discord_target(None).finish(text) == "ask @\u200brole"   # a DM names nobody


async def test_replies_to_its_messages_but_never_to_bots(world):
    env, general, other, admin, bob, carol = world
    await bob.send(general, f"{env.bot.user.mention} keys")
    first = general.last_message
    await carol.send(general, "what about the exam", reply_to=first)
    assert general.last_message.author == env.bot.user and general.last_message.id != first.id
    robot = env.guild.add_member(env.create_user("otherbot", bot=True))
    loud = await robot.send(general, f"{env.bot.user.mention} beep")
    assert general.last_message.id == loud.id                   # no answer: bot loops are not allowed


@pytest.mark.env(USER_COOLDOWN="30")
async def test_a_user_cooldown_keeps_the_bot_from_being_spammed(world):
    env, general, other, admin, bob, carol = world
    await bob.send(general, f"{env.bot.user.mention} one")
    answers = len(sent_messages(env))
    flood = await bob.send(general, f"{env.bot.user.mention} two")
    assert len(sent_messages(env)) == answers and general.last_message.id == flood.id
    await carol.send(general, f"{env.bot.user.mention} three")   # someone else is not held back
    assert len(sent_messages(env)) == answers + 1
    await env.advance_time(31)
    await bob.send(general, f"{env.bot.user.mention} four")
    assert len(sent_messages(env)) == answers + 2


async def test_admins_can_switch_the_bot_off_in_a_channel(world):
    env, general, other, admin, bob, carol = world
    refused = await bob.slash(general, "channel disable")
    assert refused.ephemeral and "admins only" in refused.response.content
    simcord.assert_error(env, app_commands.CheckFailure)
    done = await admin.slash(general, "channel disable")
    assert done.ephemeral
    quiet = await bob.send(general, f"{env.bot.user.mention} hello?")
    assert general.last_message.id == quiet.id
    await admin.slash(general, "channel enable")
    await bob.send(general, f"{env.bot.user.mention} hello?")
    assert general.last_message.author == env.bot.user


async def test_only_the_bots_owners_retrain_or_roll_back(world, guild_b):
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    for who, where in ((bob, general), (mallory, b_general)):     # a member; another server's admin
        for command in ("retrain start", "retrain cancel", "rollback"):
            result = await who.slash(where, command)
            assert result.ephemeral and "owners only" in result.response.content
            simcord.assert_error(env, app_commands.CheckFailure)
    assert not env.bot.retrainer.running and await env.bot.store.runs() == []


def progress_message(env, run: dict):
    """The bot's own message that showed a retrain's progress (recorded with the run)."""
    return env.backend.get_message(run["progress_channel_id"], run["progress_message_id"])


@pytest.mark.simcord(settle_timeout=180)
@pytest.mark.training(MEASURED)
async def test_an_admin_retrain_shows_progress_swaps_and_can_be_rolled_back(world, alice_artifact, persona_chat):
    env, general, other, admin, bob, carol = world
    upload = (persona_chat.name, persona_chat.read_bytes())
    result = await admin.slash(general, "retrain start", epochs=100.0, force=True, export=upload)
    run = (await env.bot.store.runs())[0]
    shown = progress_message(env, run)
    assert shown.channel_id == general.id and str(shown.id) in result.response.content   # the answer links it
    edits = [r.json.get("content") or "" for r in env.http_requests
             if r.method == "PATCH" and r.path == f"/channels/{general.id}/messages/{shown.id}"]
    assert any("Retraining" in e for e in edits)                          # live progress
    assert shown.content.startswith("Retrained and swapped in")
    plot = general.last_message
    assert plot.attachments[0].filename == "loss.png" and plot.reference.message_id == shown.id
    new = env.bot.engine.persona.path
    assert new != alice_artifact and new.parent == env.bot.settings.models_dir
    assert len(list(env.bot.settings.train_data_dir.iterdir())) == 2      # the upload was kept for next time

    await bob.send(general, f"{env.bot.user.mention} pizza")
    assert general.last_message.author == env.bot.user                    # served by the new model
    status = await bob.slash(general, "status")
    assert new.name in status.response.content and "no retrain running" in status.response.content
    # The new model's fidelity report, measured when it was trained, in one line.
    assert "sounds like them: taken for Alice in " in status.response.content

    back = await admin.slash(general, "rollback")
    assert "Rolled back" in back.response.content and env.bot.engine.persona.path == alice_artifact


async def test_a_file_that_is_no_export_is_refused(world):
    env, general, other, admin, bob, carol = world
    result = await admin.slash(general, "retrain start", export=("notes.txt", b"just some notes\n"))
    assert "not a chat export" in result.response.content
    assert [p.name for p in env.bot.settings.train_data_dir.iterdir()] == ["chat.txt"]


@pytest.mark.training(LONG)
async def test_retrain_cancel_leaves_the_old_model_serving(world, alice_artifact):
    env, general, other, admin, bob, carol = world
    env.settle_timeout = 8.0
    with pytest.raises(TimeoutError):                     # still training: stop waiting for it
        await admin.slash(general, "retrain start", epochs=100.0)
    assert env.bot.retrainer.running
    env.settle_timeout = 60.0
    cancel = await admin.slash(general, "retrain cancel")
    assert cancel.ephemeral and "Cancelling" in cancel.response.content
    runs = await env.bot.store.runs()
    shown = progress_message(env, runs[0]).content
    assert "cancelled" in shown and "keeps serving" in shown
    assert env.bot.engine.persona.path == alice_artifact
    assert runs[0]["status"] == "cancelled"


async def test_forget_me_removes_the_callers_rows_after_confirmation(world):
    env, general, other, admin, bob, carol = world
    await bob.send(general, "bob's secret one")
    await carol.send(general, "carol talks")
    await bob.send(general, "bob's secret two")
    asked = await bob.slash(general, "forget-me")
    assert asked.ephemeral and await env.bot.store.recent_messages(general.id)   # nothing deleted yet
    await bob.click(asked.response, label="Forget me")
    rows = await env.bot.store.recent_messages(general.id)
    assert [m.author_name for m in rows] == ["Carol"]
    assert "Bob" in await env.bot.store.opted_out_names()
    assert all("secret" not in text for _, text in env.bot.memory.turns(general.id))
    await bob.send(general, "bob again")                        # never stored again
    assert [m.author_name for m in await env.bot.store.recent_messages(general.id)] == ["Carol"]


async def test_context_survives_a_restart_on_the_same_database(world, settings, engine, store):
    env, general, other, admin, bob, carol = world
    await carol.send(general, "remember the beach party")
    await env.restart_bot(make_bot(settings, engine, store))
    assert env.bot.memory.turns(general.id) == []              # a fresh process knows nothing yet...
    await bob.send(general, f"{env.bot.user.mention} cake")
    turns = env.bot.memory.turns(general.id)
    assert ("Carol", "remember the beach party") in turns      # ...until it reads the channel's history back


@pytest.mark.simcord(settle_timeout=180)
async def test_the_event_loop_keeps_ticking_during_replies_and_a_retrain(world):
    # What keeps the gateway's heartbeat going is that no callback holds the loop: measured per callback (CPU
    # and wall time inside it), not as gaps between ticks, which a loaded machine stretches (see loop_watch).
    from loop_watch import LoopWatch

    env, general, other, admin, bob, carol = world
    with LoopWatch() as watch:
        for word in ("pizza", "rain", "garden"):
            await bob.send(general, f"{env.bot.user.mention} {word}")
        await admin.slash(general, "retrain start", epochs=100.0, force=True)
    assert (await env.bot.store.runs())[0]["status"] == "done"
    assert len(sent_messages(env)) >= 3                            # every mention was answered
    watch.check(min_callbacks=200)   # the loop ran all along (a retrain streams progress for seconds)


@pytest.mark.env(RETRAIN_MAX_UPLOAD_MB="0.001")
async def test_an_export_over_the_size_limit_is_refused(world, persona_chat):
    env, general, other, admin, bob, carol = world
    result = await admin.slash(general, "retrain start", export=("big.txt", persona_chat.read_bytes()))
    assert "the limit is 0.001 MB" in result.response.content and "RETRAIN_MAX_UPLOAD_MB" in result.response.content
    assert [p.name for p in env.bot.settings.train_data_dir.iterdir()] == ["chat.txt"]
    assert not env.bot.retrainer.running


async def test_a_vanished_previous_model_is_a_clear_answer(world, tmp_path, alice_artifact):
    env, general, other, admin, bob, carol = world
    none_yet = await admin.slash(general, "rollback")
    assert "no previous model" in none_yet.response.content
    await env.bot.store.set_setting("previous_artifact", str(tmp_path / "deleted-model"))
    gone = await admin.slash(general, "rollback")
    assert "is gone" in gone.response.content and env.bot.engine.persona.path == alice_artifact


@pytest.mark.simcord(settle_timeout=30)
async def test_a_locked_database_does_not_stop_the_bot_from_answering(world, settings):
    import sqlite3

    env, general, other, admin, bob, carol = world
    holder = sqlite3.connect(settings.database_path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")      # another process holds the database
    try:
        await bob.send(general, f"{env.bot.user.mention} are you there")
        assert general.last_message.author == env.bot.user
    finally:
        holder.rollback()
        holder.close()


async def test_status_reports_schedules_and_posts_including_unknown_ones(world):
    env, general, other, admin, bob, carol = world
    store = env.bot.store
    await store.add_schedule("nightly", cron="0 20 * * *", targets=["terminal"])
    post = await store.claim_post(1, "2026-11-21T20:00:00+00:00", "twitter")
    await store.update_post(post, "pending", text="a line that may or may not be out there")
    await store.mark_pending_unknown()
    status = (await admin.slash(general, "status")).response.content
    assert "schedule nightly (0 20 * * *)" in status
    assert "twitter: unknown" in status and "may or may not" in status and "check the target" in status
    assert env.bot.poster is not None                           # the scheduler started once connected


async def test_admins_manage_schedules(world):
    env, general, other, admin, bob, carol = world
    refused = await bob.slash(general, "schedule add", name="x", cron="0 20 * * *", targets="terminal")
    assert "admins only" in refused.response.content and "this server" in refused.response.content
    simcord.assert_error(env, app_commands.CheckFailure)
    bad = await admin.slash(general, "schedule add", name="x", cron="0 25 * * *", targets="terminal")
    assert bad.response.content.startswith("Not added")
    for target in ("fax", "discord:\u00b2"):
        bad_target = await admin.slash(general, "schedule add", name="x", cron="0 20 * * *", targets=target)
        assert "targets are twitter" in bad_target.response.content
    ok = await admin.slash(general, "schedule add", name="evening", cron="0 20 * * *",
                           targets=f"discord:{other.id}", timezone="Europe/Berlin")
    assert "added" in ok.response.content
    listed = (await admin.slash(general, "schedule list")).response.content
    assert "`evening`" in listed and "next " in listed and ("CET" in listed or "CEST" in listed)
    await admin.slash(general, "schedule pause", name="evening")
    assert "paused" in (await admin.slash(general, "schedule list")).response.content
    assert env.bot.poster.next_runs() == {}
    await admin.slash(general, "schedule resume", name="evening")
    assert list(env.bot.poster.next_runs().values())[0] is not None
    gone = await admin.slash(general, "schedule remove", name="evening")
    assert "Removed" in gone.response.content and await env.bot.store.schedules() == []


async def test_post_now_posts_a_line_to_a_discord_channel_and_records_it(world, bob_artifact):
    env, general, other, admin, bob, carol = world
    await env.bot.engine.swap(bob_artifact)          # Alice's lines all open with @everyone: never postable
    persona = env.bot.engine.persona                 # sampled, not greedy: candidates must differ
    persona.settings = persona.settings.with_overrides(top_k=50)
    result = await admin.slash(general, "post now", targets=f"discord:{other.id}")
    assert result.response.content.startswith(f"discord:{other.id}: posted")
    posted = other.last_message
    assert posted.author == env.bot.user
    rows = await env.bot.store.posts()
    assert rows[0]["status"] == "posted" and rows[0]["remote_id"] == str(posted.id) and rows[0]["text"] == posted.content
    assert sent_messages(env)[-1]["allowed_mentions"]["parse"] == []      # pings nobody


async def test_a_servers_admins_govern_that_server_only(world, guild_b, bob_artifact):
    """The tenancy model: an admin of server B cannot post to, list, change or remove anything of server A,
    nor use what is global (Twitter, the terminal, POST_TARGETS)."""
    env, general, other, admin, bob, carol = world
    b_general, mallory = guild_b
    mod_a = env.guild.add_member(env.create_user("moda"),
                                 roles=[env.guild.create_role("A mods", permissions=discord.Permissions(
                                     manage_guild=True))])
    added = await mod_a.slash(general, "schedule add", name="daily", cron="0 20 * * *", targets=f"discord:{other.id}")
    assert "added" in added.response.content
    before = len(sent_messages(env))

    into_a = await mallory.slash(b_general, "post now", targets=f"discord:{general.id}")
    assert "not a channel of this server" in into_a.response.content
    for target in (f"discord:{general.id}", "twitter", "terminal"):
        refused = await mallory.slash(b_general, "schedule add", name="evil", cron="* * * * *", targets=target)
        assert refused.response.content.startswith("Not added")
    assert "daily" not in (await mallory.slash(b_general, "schedule list")).response.content
    for command in ("schedule remove", "schedule pause"):
        answer = await mallory.slash(b_general, command, name="daily")
        assert "No schedule `daily`" in answer.response.content
    assert len(sent_messages(env)) == before                                      # nothing was posted in A
    [daily] = await env.bot.store.schedules()
    assert daily.guild_id == env.guild.id and not daily.paused

    # Server B's own: the same name is free there, and /post now posts in B's channel by default.
    own = await mallory.slash(b_general, "schedule add", name="daily", cron="0 8 * * *",
                              targets=f"discord:{b_general.id}")
    assert "added" in own.response.content
    assert "discord:" + str(other.id) not in (await mallory.slash(b_general, "schedule list")).response.content
    await env.bot.engine.swap(bob_artifact)          # Alice's lines all open with @everyone: never postable
    env.bot.engine.persona.settings = env.bot.engine.persona.settings.with_overrides(top_k=50)
    posted = await mallory.slash(b_general, "post now")
    assert posted.response.content.startswith(f"discord:{b_general.id}: posted")
    assert b_general.last_message.author == env.bot.user
    assert [p["guild_id"] for p in await env.bot.store.posts()] == [b_general.guild.id]

    # /status: schedules and posts only for those who govern them.
    for who, where in ((bob, general), (mallory, b_general)):
        status = (await who.slash(where, "status")).response.content
        assert "daily (0 20" not in status and str(other.id) not in status
    assert "schedule daily (0 20 * * *)" in (await mod_a.slash(general, "status")).response.content


async def test_status_in_a_dm_shows_nothing_private(world):
    env, general, other, admin, bob, carol = world
    await env.bot.store.add_schedule("nightly", cron="0 20 * * *", targets=[f"discord:{other.id}"])
    post = await env.bot.store.claim_post(None, "2026-11-21T20:00:00+00:00", f"discord:{other.id}")
    await env.bot.store.update_post(post, "posted", text="a private line")
    status = (await bob.user.slash("status")).response.content       # in a DM with the bot
    assert "Alice" in status and "nightly" not in status and "private line" not in status


@pytest.mark.simcord(settle_timeout=1)
async def test_a_retrain_that_outlives_the_interaction_token_still_shows_how_it_ended(world, alice_artifact):
    """Discord interaction tokens die after 15 minutes; a CPU retrain takes hours. Progress and the result go
    to a message the bot owns, so they still show after the token expired."""
    env, general, other, admin, bob, carol = world
    with pytest.raises(TimeoutError):                          # the child is still training
        await admin.slash(general, "retrain start", epochs=100.0, force=True)
    # The interaction token is dead now (Discord's clock moves on while the child trains: no bot timers
    # are due, so only the simulated server's clock is moved).
    env.backend.advance_clock(16 * 60)
    expired_at = len(env.http_requests)
    await env.settle(timeout=180)                               # the retrain finishes
    run = (await env.bot.store.runs())[0]
    assert run["status"] == "done"
    assert progress_message(env, run).content.startswith("Retrained and swapped in")
    plot = general.last_message
    assert plot.attachments[0].filename == "loss.png" and plot.reference.message_id == run["progress_message_id"]
    assert env.bot.engine.persona.path != alice_artifact
    on_dead_token = [r for r in env.http_requests[expired_at:] if "/webhooks/" in r.path]
    assert len(on_dead_token) <= 1                             # at most one try on the dead token, then none


@pytest.mark.training(LONG)
async def test_stopping_the_bot_during_a_retrain_waits_for_the_child_and_says_why(world, alice_artifact):
    env, general, other, admin, bob, carol = world
    env.settle_timeout = 8.0
    with pytest.raises(TimeoutError):
        await admin.slash(general, "retrain start", epochs=100.0)
    child = env.bot.retrainer._proc
    assert child is not None and child.returncode is None
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == CHILD_NICENESS     # training never starves replies
    env.settle_timeout = 60.0
    await env.bot.retrainer.shutdown()                         # what SIGTERM runs before closing the gateway
    assert child.returncode is not None                        # reaped, not orphaned
    run = (await env.bot.store.runs())[0]
    assert run["status"] == "cancelled" and "shutting down" in run["error"]
    assert "shutting down" in progress_message(env, run).content
    out = Path(run["out_path"])
    assert not out.exists() and not (out.parent / f".{out.name}.partial").exists()
    assert env.bot.engine.persona.path == alice_artifact


async def test_a_restart_during_a_retrain_closes_the_run_and_says_so(world, settings, engine, store, tmp_path):
    """The bot died mid-retrain: the next start marks the run ended, removes its half-written folder, and
    edits the run's progress message."""
    from bot.jobs.retrain import close_interrupted_runs

    env, general, other, admin, bob, carol = world
    shown = await env.bot.get_channel(general.id).send("Retraining: step 40/900")
    out = settings.models_dir / "alice-20261130-120000"
    (out.parent / f".{out.name}.partial").mkdir(parents=True)
    run_id = await store.start_run(requested_by=admin.id, speaker="alice", epochs=None, out_path=str(out),
                                   progress_message=(general.id, shown.id))
    interrupted = await close_interrupted_runs(store, settings.models_dir)
    await env.restart_bot(PersonaBot(settings, engine, store, interrupted_runs=interrupted,
                                     retrainer=make_bot(settings, engine, store).retrainer))
    run = (await store.runs())[0]
    assert run["id"] == run_id and run["status"] == "failed"
    assert not (out.parent / f".{out.name}.partial").exists()
    assert "restarted while it was training" in env.backend.get_message(general.id, shown.id).content


@pytest.mark.parametrize("filename", ["x" * 300 + ".txt", "chat\x00.txt"])
async def test_an_upload_with_an_unusable_name_gets_a_refusal(world, persona_chat, filename):
    env, general, other, admin, bob, carol = world
    result = await admin.slash(general, "retrain start", export=(filename, persona_chat.read_bytes()))
    assert "cannot be stored under that name" in result.response.content
    assert [p.name for p in env.bot.settings.train_data_dir.iterdir()] == ["chat.txt"]
    assert not env.bot.retrainer.running


async def test_upload_refusals_name_the_upload_never_a_server_path(world):
    env, general, other, admin, bob, carol = world
    result = await admin.slash(general, "retrain start", export=("notes.json", b'{"messages": [1, 2'))
    answer = result.response.content
    assert "notes.json" in answer and "not a chat export" in answer
    assert str(env.bot.settings.train_data_dir) not in answer and ".upload" not in answer


async def test_two_uploads_with_one_name_in_one_second_are_both_kept(world, persona_chat):
    env, general, other, admin, bob, carol = world
    cog = env.bot.get_cog("Admin")

    class Upload:            # what /retrain start hands over: discord.Attachment's size, name and save()
        def __init__(self, data: bytes) -> None:
            self.filename, self.size, self.data = "chat.txt", len(data), data

        async def save(self, path: Path) -> None:
            Path(path).write_bytes(self.data)

    first, second = persona_chat.read_bytes(), persona_chat.read_bytes().replace(b"Bob", b"Rob")
    assert await asyncio.gather(cog._store_export(Upload(first)), cog._store_export(Upload(second))) == [None, None]
    stored = sorted(p.read_bytes() for p in env.bot.settings.train_data_dir.iterdir() if p.name != "chat.txt")
    assert stored == sorted([first, second])


@pytest.mark.env(RETRAIN_MAX_UPLOAD_MB="50")
@pytest.mark.simcord(settle_timeout=180)
async def test_checking_a_big_upload_never_holds_the_event_loop(world, tmp_path):
    """Reading a multi-megabyte export takes seconds of CPU: on the loop it would stop the gateway's
    heartbeat, so it runs in a worker thread."""
    from chatgen import chat_conversations, write_whatsapp
    from loop_watch import LoopWatch

    env, general, other, admin, bob, carol = world
    big = write_whatsapp(tmp_path / "big.txt", chat_conversations(1500, seed=3))
    assert big.stat().st_size > 1_000_000
    with LoopWatch() as watch:
        result = await admin.slash(general, "retrain start", export=("big.txt", big.read_bytes()), force=True)
    assert "progress" in result.response.content                    # it was read and accepted...
    assert (await env.bot.store.runs())[0]["status"] == "done"
    print(watch)
    watch.check()                                                    # ...and no callback held the loop


async def test_a_command_that_fails_inside_gets_a_private_answer_and_one_log_line(world, caplog):
    """One error handler on the command tree: a command that raises (here the database is closed under
    /schedule list) tells the caller privately, and the bot's log gets the traceback exactly once."""
    import logging

    env, general, other, admin, bob, carol = world
    await env.bot.store.close()
    with caplog.at_level(logging.WARNING):
        failed = await admin.slash(general, "schedule list")
    assert failed.ephemeral and "Something went wrong; the bot's log has the details" in failed.response.content
    error = simcord.assert_error(env, app_commands.CommandInvokeError)
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1 and "schedule list" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is error      # with the traceback
