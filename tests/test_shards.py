"""Gateway sharding: two bot processes (SHARD_COUNT=2, SHARD_IDS 0 and 1) against one simulated Discord and one
SQLite file. Each answers its own guilds only; only the RUN_JOBS one posts on schedule and runs /retrain and
/rollback (the other says why not and where); a swap in the jobs process is followed by the other's
`ModelWatch`. The personas are real tiny models and the database is real; only Discord is simulated (simcord
drives one bot per event loop, so the second process is attached to the same backend by `attach_process`; the
command errors simcord records are the first process's only)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import simcord
from simcord import _dpy_internals
from simcord.backend.serializers import guild_create_payload
from simcord.gateway import ShardRouter
from simcord.http import FakeHTTPClient

from bot.core.config import load_settings
from bot.adapters.discord.bot import PersonaBot
from bot.inference.engine import Engine
from bot.core.filters import OutputFilter
from bot.jobs.model_watch import ModelWatch
from bot.jobs.retrain import CURRENT, PREVIOUS
from bot.storage.sqlite import SQLiteStore as Store
from test_discord import make_bot, sent_messages

pytestmark = pytest.mark.slow


def process_settings(tmp_path: Path, data_dir: Path, shard: int, run_jobs: bool):
    """The settings of one of the two processes: one database file, two shards, jobs in shard 0's process."""
    env = {"DATABASE_PATH": str(tmp_path / "bot.sqlite3"), "TRAIN_DATA_DIR": str(data_dir),
           "MODELS_DIR": str(tmp_path / "models"), "USER_COOLDOWN": "0", "CHANNEL_COOLDOWN": "0",
           "SHARD_COUNT": "2", "SHARD_IDS": str(shard), "RUN_JOBS": "true" if run_jobs else "false"}
    return load_settings(env, dotenv_path=None)


async def open_process(settings, artifact: Path) -> PersonaBot:
    """One bot process: its own engine (greedy, as in test_discord.py) and its own connection to the store."""
    engine = Engine.load(artifact, generation={"top_k": 1}).start()
    engine.persona.output_filter = OutputFilter()
    store = await Store.open(settings.database_path)
    return make_bot(settings, engine, store)


async def close_process(bot: PersonaBot) -> None:
    if bot.poster is not None:
        bot.poster.stop()
    await bot.engine.close()
    await bot.store.close()


@pytest.fixture
async def simcord_bot(tmp_path, data_dir, alice_artifact):
    """The jobs process (RUN_JOBS=true), serving shard 0: the bot simcord drives."""
    bot = await open_process(process_settings(tmp_path, data_dir, 0, run_jobs=True), alice_artifact)
    yield bot
    await close_process(bot)


@pytest.fixture
async def replier(tmp_path, data_dir, alice_artifact):
    """The second process (RUN_JOBS=false), serving shard 1; attached to the same Discord by the test."""
    bot = await open_process(process_settings(tmp_path, data_dir, 1, run_jobs=False), alice_artifact)
    yield bot
    await close_process(bot)


async def attach_process(env: simcord.Env, bot: PersonaBot) -> None:
    """Connect a second bot process to the env's simulated Discord, as simcord connects its own bot: the same
    application and bot user, REST on the same backend, and a gateway connection per shard it runs, which
    receives only the events of guilds on those shards. Its work runs in the env's bot scope, so that
    `env.settle()` (and every actor) waits for it as for the first process."""
    loop = asyncio.get_running_loop()
    _dpy_internals.install_http(bot, FakeHTTPClient(env.backend, loop))
    _dpy_internals.set_guild_ready_timeout(bot, 0.0)
    state = _dpy_internals.get_state(bot)
    state.shard_count, state.shard_ids = bot.shard_count, list(bot.shard_ids)
    router = ShardRouter(env.backend, state, bot.dispatch, bot.shard_count, tuple(bot.shard_ids))

    def feed(event: str, payload) -> None:
        with env._bot_scope():
            router.feed(event, payload)

    env.backend.subscribers.append(feed)
    with env._bot_scope():
        await bot.login("simcord.fake.token")
        _dpy_internals.install_shards(bot, router.shards)
        for shard_id in bot.shard_ids:
            router.identify(shard_id)
        for guild in list(env.backend.guilds.values()):
            router.feed("GUILD_CREATE", guild_create_payload(env.backend, guild))
    await env.settle()


@pytest.fixture
async def two_processes(simcord_env, replier):
    """Server A on shard 0 (the jobs process's), server B on shard 1 (the replier's); "admin" is a member of
    both and one of the bot's owners (ADMIN_USER_IDS, in both processes' settings)."""
    env = simcord_env
    guild_a, guild_b = env.create_guild(name="A", shard_id=0), env.create_guild(name="B", shard_id=1)
    admin, bob = env.create_user("admin"), env.create_user("Bob")
    members = {}
    for guild in (guild_a, guild_b):
        channel = guild.create_text_channel("general")
        members[guild.name] = channel, guild.add_member(admin), guild.add_member(bob)
    for bot in (env.bot, replier):
        bot.settings = dataclasses.replace(bot.settings, admin_user_ids=frozenset({admin.id}))
    await attach_process(env, replier)
    return env, env.bot, replier, members["A"], members["B"]


async def test_each_process_answers_the_mentions_of_its_own_guilds_only(two_processes):
    env, jobs, replier, (a_general, a_admin, a_bob), (b_general, b_admin, b_bob) = two_processes
    assert jobs.running_shards() == [0] and replier.running_shards() == [1]
    assert {g.id for g in jobs.guilds} == {a_general.guild.id}          # each process sees its shard's guilds
    assert {g.id for g in replier.guilds} == {b_general.guild.id}
    for channel, bob in ((a_general, a_bob), (b_general, b_bob)):
        before = len(sent_messages(env))
        asked = await bob.send(channel, f"{env.bot.user.mention} pizza tonight")
        reply = channel.last_message
        assert reply.author == env.bot.user and reply.reference.message_id == asked.id
        assert len(sent_messages(env)) == before + 1                      # answered once, not by both
    # Who answered: each process's own channel memory holds its reply, and nothing of the other guild.
    assert jobs.memory.turns(a_general.id)[-1][0] == "Alice" and jobs.memory.turns(b_general.id) == []
    assert replier.memory.turns(b_general.id)[-1][0] == "Alice" and replier.memory.turns(a_general.id) == []


async def test_only_the_jobs_process_posts_and_runs_retrain_and_rollback(two_processes):
    env, jobs, replier, (a_general, a_admin, a_bob), (b_general, b_admin, b_bob) = two_processes
    assert jobs.poster.scheduler is not None and replier.poster.scheduler is None   # schedules fire in one
    for command in ("retrain start", "retrain cancel", "rollback"):
        refused = await b_admin.slash(b_general, command)
        answer = refused.response.content
        assert refused.ephemeral and "RUN_JOBS=true" in answer
        assert f"{jobs.leadership.holder}, serving shard 0" in answer and "this server is on shard 1" in answer.lower()
        assert "a process that only replies" in answer
    assert not jobs.retrainer.running and await jobs.store.runs() == []  # nothing started anywhere
    # Non-owners hear that the command is the owners', not where the jobs run.
    not_owner = await b_bob.slash(b_general, "retrain start")
    assert "owners only" in not_owner.response.content and "RUN_JOBS" not in not_owner.response.content
    # In the jobs process's server the same commands run.
    cancel = await a_admin.slash(a_general, "retrain cancel")
    assert cancel.response.content == "No retrain is running."
    rollback = await a_admin.slash(a_general, "rollback")
    assert "no previous model" in rollback.response.content


async def test_schedules_changed_in_a_replying_process_fire_in_the_jobs_process(two_processes):
    env, jobs, replier, (a_general, a_admin, a_bob), (b_general, b_admin, b_bob) = two_processes
    from bot.jobs.scheduler import SYNC_JOB

    assert jobs.poster.scheduler.get_job(SYNC_JOB) is not None            # it looks for others' changes
    assert await jobs.poster.sync() is False                              # nothing changed yet
    added = await b_admin.slash(b_general, "schedule add", name="evening", cron="0 20 * * *",
                                targets=f"discord:{b_general.id}")
    assert "added" in added.response.content
    assert replier.poster.next_runs() == {}                               # nothing fires in the replier
    schedule = (await jobs.store.schedules())[0]
    assert schedule.id not in jobs.poster.next_runs()
    assert await jobs.poster.sync() is True and jobs.poster.next_runs()[schedule.id] is not None
    assert await jobs.poster.sync() is False                              # re-armed once per change
    await b_admin.slash(b_general, "schedule pause", name="evening")
    assert await jobs.poster.sync() is True and schedule.id not in jobs.poster.next_runs()


async def test_the_replier_follows_a_rollback_in_the_jobs_process(two_processes, alice_artifact, bob_artifact,
                                                                    tmp_path):
    env, jobs, replier, (a_general, a_admin, a_bob), (b_general, b_admin, b_bob) = two_processes
    watch = ModelWatch(replier.engine, replier.store, interval_s=0.05).start()
    try:
        await jobs.store.set_setting(PREVIOUS, str(bob_artifact))    # as a retrain to Bob and back left it
        done = await a_admin.slash(a_general, "rollback")
        assert "Rolled back" in done.response.content and jobs.engine.persona.path == bob_artifact
        assert await replier.store.get_setting(CURRENT) == str(bob_artifact)
        for _ in range(600):                                         # the watch polls every 0.05 s
            if replier.engine.persona.path == bob_artifact:
                break
            await asyncio.sleep(0.05)
        assert replier.engine.persona.path == bob_artifact
    finally:
        await watch.stop()
    assert not watch.running
    await b_bob.send(b_general, f"{env.bot.user.mention} pizza")
    assert b_general.last_message.author == env.bot.user
    assert replier.memory.turns(b_general.id)[-1][0] == "Bob"        # the new persona answers there


async def test_a_record_that_does_not_load_keeps_the_old_model_until_the_next_change(
        tmp_path, data_dir, alice_artifact, bob_artifact, caplog):
    bot = await open_process(process_settings(tmp_path, data_dir, 1, run_jobs=False), alice_artifact)
    try:
        watch = ModelWatch(bot.engine, bot.store)
        assert not await watch.check_once()                          # nothing recorded yet: nothing to do
        broken = tmp_path / "half-copied-model"
        broken.mkdir()
        await bot.store.set_setting(CURRENT, str(broken))
        assert not await watch.check_once()
        assert bot.engine.persona.path == alice_artifact             # the old model keeps serving
        assert any("half-copied-model" in r.getMessage() for r in caplog.records)
        logged = len(caplog.records)
        assert not await watch.check_once() and len(caplog.records) == logged   # not retried, not re-logged
        await bot.store.set_setting(CURRENT, str(bob_artifact))      # the next change is followed
        assert await watch.check_once() and bot.engine.persona.path == bob_artifact
        assert not await watch.check_once()                          # once
    finally:
        await close_process(bot)


async def test_status_shows_this_processs_shards_and_the_backend(two_processes):
    env, jobs, replier, (a_general, a_admin, a_bob), (b_general, b_admin, b_bob) = two_processes
    here = (await b_bob.slash(b_general, "status")).response.content
    assert "gateway: shard 1 " in here and "(2 in all)" in here
    assert f"jobs led by {jobs.leadership.holder}, serving shard 0" in here
    there = (await a_bob.slash(a_general, "status")).response.content
    assert "gateway: shard 0 " in there and f"jobs led by this process ({jobs.leadership.holder})" in there
    assert f"({jobs.engine.persona.backend.name})" in there
    jobs.engine.persona.backend.health = "answering"                 # what a remote backend reports
    assert f"({jobs.engine.persona.backend.name}: answering)" in (
        await a_bob.slash(a_general, "status")).response.content


def test_without_shard_ids_a_process_runs_every_shard(tmp_path, data_dir, alice_artifact):
    settings = load_settings({"DATABASE_PATH": str(tmp_path / "db"), "SHARD_COUNT": "3"}, dotenv_path=None)
    bot = PersonaBot(settings, Engine.load(alice_artifact), store=None)      # never started: no store needed
    assert bot.running_shards() == [0, 1, 2] and bot.shard_of_guild(5 << 22) == 2
    unset = PersonaBot(load_settings({"DATABASE_PATH": str(tmp_path / "db")}, dotenv_path=None),
                       Engine.load(alice_artifact), store=None)
    assert unset.shard_count is None and unset.shard_ids is None           # Discord's recommendation
