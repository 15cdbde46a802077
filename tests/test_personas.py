"""The persona registry and its assignments on both engines (a real SQLite file, a real PostgreSQL database):
migrations 4 to 6, names per owner, tenancy
(a guild's admins see and govern their guild's personas only), the nearest assignment winning, and the
`personabot persona` command on a real trained artifact."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.core import personas
from bot.core.personas import PersonaError
from bot.storage.schema import migrations
from bot.core.tenancy import Authority

GUILD_A, GUILD_B = 100, 200
CHANNEL_A1, CHANNEL_A2, CHANNEL_B1 = 101, 102, 201
OWNER = Authority(user_id=1, guild_id=GUILD_A, is_owner=True, is_guild_admin=True)
ADMIN_A = Authority(user_id=2, guild_id=GUILD_A, is_owner=False, is_guild_admin=True)
ADMIN_B = Authority(user_id=3, guild_id=GUILD_B, is_owner=False, is_guild_admin=True)
MEMBER_A = Authority(user_id=4, guild_id=GUILD_A, is_owner=False, is_guild_admin=False)


def run(coro):
    return asyncio.run(coro)


def test_a_version_3_database_gains_the_registry_and_keeps_its_rows(database, alice_artifact):
    async def main():
        async with await database.open(upto=3) as old:
            assert old.version == 3
            await old.add_message(channel_id=CHANNEL_A1, author_id=7, author_name="Bob", content="still here")
            # Written as version 3 wrote it (the Store of today writes columns a later migration added).
            await database.execute(old, "INSERT INTO schedules (guild_id, name, cron, targets, created_at) "
                                   "VALUES (?, 'nightly', '0 20 * * *', '[\"terminal\"]', 'then')", (GUILD_A,))
        async with await database.open() as new:
            before = await new.personas()
            entry = await personas.register(new, OWNER, "Alice", alice_artifact, guild_id=None)
            return (new.version, await new.recent_messages(CHANNEL_A1), await new.schedules(), before,
                    await new.personas(), entry)

    version, messages, schedules, before, after, entry = run(main())
    assert version == len(migrations()) > 3          # migrated to the latest
    assert [m.content for m in messages] == ["still here"]
    assert [(s.name, s.guild_id, s.persona_id) for s in schedules] == [("nightly", GUILD_A, None)]
    assert before == [] and after == [entry]
    assert (entry.name, entry.guild_id, entry.artifact_path, entry.generation) == ("Alice", None, alice_artifact, {})
    assert (entry.previous_artifact_path, entry.avatar_url) == (None, None)
    if database.engine == "sqlite":         # foreign keys hold after SQLite's table rebuilds (checked again here)
        with sqlite3.connect(database.where) as db:
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_add_list_and_remove_with_generation_defaults_and_assignments_going_along(database, alice_artifact):
    async def main():
        async with await database.open() as store:
            calm = await personas.register(store, OWNER, "Calm Alice", alice_artifact, guild_id=None,
                                           generation={"temperature": 0.5, "top_k": None})
            await personas.register(store, ADMIN_A, "alice-a", alice_artifact, guild_id=GUILD_A,
                                    models_dir=alice_artifact.parent)
            await personas.assign(store, ADMIN_A, "calm alice", "channel", channel_id=CHANNEL_A1,
                                  channel_guild_id=GUILD_A)
            await personas.assign(store, ADMIN_A, "ALICE-A", "guild")
            listed = [(p.name, p.guild_id) for p in await personas.listed(store, GUILD_A)]
            dropped = await personas.remove(store, OWNER, "Calm Alice", guild_id=None)
            left = await store.assignments(guild_id=GUILD_A)
            with pytest.raises(PersonaError, match="no global persona named 'Calm Alice'"):
                await personas.remove(store, OWNER, "Calm Alice", guild_id=None)
            return calm, listed, dropped, left, await store.personas()

    calm, listed, dropped, left, remaining = run(main())
    assert calm.generation == {"temperature": 0.5}
    assert listed == [("alice-a", GUILD_A), ("Calm Alice", None)]
    assert dropped == 1
    assert [(a.scope, a.scope_id, a.persona.name) for a in left] == [("guild", GUILD_A, "alice-a")]
    assert [p.name for p in remaining] == ["alice-a"]


def test_a_name_is_unique_per_owner_not_across_servers(database, alice_artifact):
    async def main():
        async with await database.open() as store:
            for guild in (GUILD_A, GUILD_B, None):
                await personas.register(store, OWNER, "Nova", alice_artifact, guild_id=guild)
            with pytest.raises(PersonaError, match=f"'NOVA' exists already in guild {GUILD_A}"):
                await personas.register(store, OWNER, "NOVA", alice_artifact, guild_id=GUILD_A)
            with pytest.raises(PersonaError, match="'nova' exists already globally"):
                await personas.register(store, OWNER, "nova", alice_artifact, guild_id=None)
            return ([p.guild_id for p in await store.personas()], await personas.find(store, GUILD_B, "nova"),
                    await personas.find(store, 999, "Nova"), await personas.listed(store, GUILD_A))

    owners, seen_from_b, seen_elsewhere, listed_in_a = run(main())
    assert sorted(owners, key=str) == sorted([GUILD_A, GUILD_B, None], key=str)
    assert seen_from_b.guild_id == GUILD_B            # a guild's own comes before the global one
    assert seen_elsewhere.guild_id is None            # a guild with none of its own sees the global one
    assert [p.guild_id for p in listed_in_a] == [GUILD_A]   # the global one it shadows is not listed twice


def test_a_guild_admin_cannot_see_assign_or_remove_another_guilds_personas(database, tmp_path, alice_artifact):
    async def main():
        async with await database.open() as store:
            await personas.register(store, ADMIN_A, "Secret", alice_artifact, guild_id=GUILD_A,
                                    models_dir=alice_artifact.parent)
            refusals = []
            for attempt in (
                personas.find(store, GUILD_B, "Secret"),
                personas.assign(store, ADMIN_B, "Secret", "guild"),
                personas.assign(store, ADMIN_B, "Secret", "channel", channel_id=CHANNEL_B1, channel_guild_id=GUILD_B),
                personas.assign(store, ADMIN_B, "Secret", "channel", channel_id=CHANNEL_A1, channel_guild_id=GUILD_A),
                personas.unassign(store, ADMIN_B, "channel", channel_id=CHANNEL_A1, channel_guild_id=GUILD_A),
                personas.remove(store, ADMIN_B, "Secret", guild_id=GUILD_A),
                personas.remove(store, ADMIN_B, "Secret", guild_id=GUILD_B),
                personas.register(store, ADMIN_B, "Mine", alice_artifact, guild_id=GUILD_A,
                                  models_dir=alice_artifact.parent),
                personas.register(store, ADMIN_B, "Everyones", alice_artifact, guild_id=None),
                personas.assign(store, ADMIN_B, "Secret", "bot"),
                personas.register(store, MEMBER_A, "Member", alice_artifact, guild_id=GUILD_A,
                                  models_dir=alice_artifact.parent),
                personas.register(store, ADMIN_B, "Elsewhere", alice_artifact, guild_id=GUILD_B,
                                  models_dir=tmp_path / "models"),
            ):
                with pytest.raises(PersonaError) as caught:
                    await attempt
                refusals.append(str(caught.value))
            return refusals, await personas.listed(store, GUILD_B), await store.personas()

    refusals, seen_by_b, every = run(main())
    assert seen_by_b == []
    assert [p.name for p in every] == ["Secret"]              # nothing was added, nothing removed
    assert "no persona named 'Secret' in this server" in refusals[0] == refusals[1] == refusals[2]
    assert refusals[3] == refusals[4] == "that is not a channel of this server"
    assert "server's admins only" in refusals[5] and "no persona of guild 200 named 'Secret'" in refusals[6]
    assert "server's admins only" in refusals[7] and "owners only" in refusals[8] and "owners only" in refusals[9]
    assert "server's admins only" in refusals[10] and "is not inside MODELS_DIR" in refusals[11]


def test_the_nearest_assignment_wins(database, alice_artifact):
    async def main():
        async with await database.open() as store:
            for name, guild in (("Everywhere", None), ("Server", GUILD_A), ("Room", GUILD_A)):
                await personas.register(store, OWNER, name, alice_artifact, guild_id=guild)
            nobody = await personas.resolve(store, CHANNEL_A1, GUILD_A)
            await personas.assign(store, OWNER, "Everywhere", "bot")
            await personas.assign(store, ADMIN_A, "Server", "guild")
            await personas.assign(store, ADMIN_A, "Room", "channel", channel_id=CHANNEL_A1, channel_guild_id=GUILD_A)
            places = [(CHANNEL_A1, GUILD_A), (CHANNEL_A2, GUILD_A), (CHANNEL_B1, GUILD_B), (None, None)]
            first = [(await personas.resolve(store, c, g)).name for c, g in places]
            await personas.assign(store, ADMIN_A, "Everywhere", "channel", channel_id=CHANNEL_A1,
                                  channel_guild_id=GUILD_A)       # replaces the channel's persona
            replaced = (await personas.resolve(store, CHANNEL_A1, GUILD_A)).name
            assert await personas.unassign(store, ADMIN_A, "channel", channel_id=CHANNEL_A1,
                                           channel_guild_id=GUILD_A)
            assert not await personas.unassign(store, ADMIN_A, "channel", channel_id=CHANNEL_A1,
                                               channel_guild_id=GUILD_A)
            after_unassign = (await personas.resolve(store, CHANNEL_A1, GUILD_A)).name
            await personas.unassign(store, OWNER, "bot")
            return nobody, first, replaced, after_unassign, await personas.resolve(store, CHANNEL_B1, GUILD_B)

    nobody, first, replaced, after_unassign, nothing_left = run(main())
    assert nobody is None and nothing_left is None            # None: the bot's configured persona
    assert first == ["Room", "Server", "Everywhere", "Everywhere"]
    assert replaced == "Everywhere" and after_unassign == "Server"


@pytest.mark.parametrize("name, problem", [
    ("", "1 to 32 characters"), ("x" * 33, "1 to 32 characters"), (" Alice", "not a usable persona name"),
    ("Al/ice", "not a usable persona name"), ("Discord Alice", "contains 'discord'"), ("ClydeBot", "'clyde'")])
def test_names_discord_could_not_show_are_refused(name, problem):
    assert problem in personas.name_problem(name)


def test_names_that_work_pass():
    assert [personas.name_problem(n) for n in ("Alice", "Nova 2", "o'Brien", "Zoë-bot")] == [None] * 4


def test_bad_generation_defaults_are_named():
    with pytest.raises(PersonaError, match="unknown generation settings: temprature"):
        personas.check_generation({"temprature": 1.0})
    with pytest.raises(PersonaError, match="top_p must be in"):
        personas.check_generation({"top_p": 2.0})


def test_an_incomplete_artifact_is_named_with_what_it_lacks(tmp_path, alice_artifact):
    broken = tmp_path / "half"
    broken.mkdir()
    (broken / "persona.json").write_text((alice_artifact / "persona.json").read_text())
    with pytest.raises(PersonaError, match=r"cannot register .*half.*missing: config\.json"):
        personas.check_artifact(broken)
    assert personas.check_artifact(alice_artifact) == alice_artifact.resolve()


def test_the_persona_command_on_a_real_artifact_and_a_bad_directory(cli, database, tmp_path, alice_artifact):
    """On the store the settings name: DATABASE_PATH (SQLite), or DATABASE_URL (PostgreSQL)."""
    env = {**database.env, "HF_HUB_OFFLINE": "1"}
    added = cli("persona", "add", "Alice", str(alice_artifact), "--temperature", "0.6", env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert cli("persona", "add", "Alice", str(alice_artifact), "--guild", "5", env=env, cwd=tmp_path).returncode == 0
    listed = cli("persona", "list", env=env, cwd=tmp_path)
    assert listed.stdout.splitlines() == [f"Alice\tglobal\t{alice_artifact}", f"Alice\tguild 5\t{alice_artifact}"]
    again = cli("persona", "add", "alice", str(alice_artifact), env=env, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr == "personabot: error: a persona named 'alice' exists already globally\n"

    missing = tmp_path / "no such persona"
    bad = cli("persona", "add", "Ghost", str(missing), env=env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and f"cannot register {missing}" in bad.stderr
    assert "does not exist" in bad.stderr

    removed = cli("persona", "remove", "Alice", "--guild", "5", env=env, cwd=tmp_path)
    assert removed.returncode == 0 and "removed Alice (guild 5)" in removed.stdout
    gone = cli("persona", "remove", "Alice", "--guild", "5", env=env, cwd=tmp_path)
    assert gone.returncode == 2 and "no persona of guild 5 named 'Alice'" in gone.stderr
    assert cli("persona", "list", env=env, cwd=tmp_path).stdout.splitlines() == [f"Alice\tglobal\t{alice_artifact}"]

    async def stored():
        async with await database.open() as store:
            return [p.generation for p in await store.personas()]

    assert run(stored()) == [{"temperature": 0.6}]


def test_a_version_5_database_gives_each_artifact_to_the_one_server_whose_personas_named_it(database, tmp_path):
    """Migration 6: an artifact that only one server's personas named (as their artifact, or the one before
    their last retrain) is that server's from then on; one that two servers or a global persona named stays
    unowned (the owners')."""
    only_a, retrained_a, shared, published = (tmp_path / n for n in ("only-a", "only-a-2", "shared", "published"))

    async def main():
        async with await database.open(upto=5) as old:
            a = await old.add_persona("Ann", only_a, guild_id=GUILD_A)
            await old.set_persona_artifact(a.id, retrained_a, only_a)
            await old.add_persona("Sam", shared, guild_id=GUILD_A)
            await old.add_persona("Sam", shared, guild_id=GUILD_B)
            await old.add_persona("Pub", published, guild_id=GUILD_B)
            await old.add_persona("Pub", published, guild_id=None)
        async with await database.open() as new:
            owners = [await new.artifact_owner(p) for p in (only_a, retrained_a, shared, published)]
            refused = await personas.artifact_problem(new, ADMIN_B, retrained_a, GUILD_B)
            allowed = await personas.artifact_problem(new, ADMIN_B, published, GUILD_B)
            return owners, refused, allowed

    owners, refused, allowed = run(main())
    assert owners == [GUILD_A, GUILD_A, None, None]
    assert refused == personas.NOT_THIS_SERVERS and allowed is None


def test_a_server_registers_its_own_artifacts_and_unowned_ones_up_to_its_cap(database, alice_artifact):
    """A server's admins may not register another server's artifact (nor may they learn what it is), and no
    more than their cap of personas; other servers and the owners' global personas are not counted."""
    models = alice_artifact.parent

    async def main():
        async with await database.open() as store:
            await store.claim_artifact(alice_artifact, GUILD_A)
            with pytest.raises(PersonaError, match="not one this server may use"):
                await personas.register(store, ADMIN_B, "Spy", alice_artifact, guild_id=GUILD_B, models_dir=models)
            for i in range(3):
                await personas.register(store, ADMIN_A, f"A{i}", alice_artifact, guild_id=GUILD_A,
                                        models_dir=models, max_per_guild=3)
            with pytest.raises(PersonaError, match="3 personas, the most one server may register"):
                await personas.register(store, ADMIN_A, "A3", alice_artifact, guild_id=GUILD_A, models_dir=models,
                                        max_per_guild=3)
            await personas.register(store, OWNER, "Zed", alice_artifact, guild_id=None, max_per_guild=3)
            return [p.name for p in await personas.listed(store, GUILD_A)], await store.count_personas(GUILD_A)

    names, count = run(main())
    assert names == ["A0", "A1", "A2", "Zed"] and count == 3


def test_another_servers_thousands_of_personas_cost_a_listing_nothing_on_the_event_loop(database):
    """20,000 personas of one server (from before the cap): another server's autocomplete and list, and the
    crowded server's own autocomplete, read only the rows they show; the loop does no more than a callback's
    worth of work for each (CPU time on the loop thread, see loop_watch)."""
    from loop_watch import LoopWatch

    async def create():
        async with await database.open() as store:
            await database.insert_many(
                store, "INSERT INTO personas (guild_id, name, artifact_path, generation, created_at) "
                "VALUES (?, ?, '/models/x', '{}', 'then')", [(GUILD_A, f"crowd{i:05d}") for i in range(20_000)])
            await database.insert_many(
                store, "INSERT INTO personas (guild_id, name, artifact_path, generation, created_at) "
                "VALUES (?, 'Mine', '/models/m', '{}', 'then')", [(GUILD_B,)])

    run(create())

    async def main():
        async with await database.open() as store:
            with LoopWatch() as watch:
                for _ in range(5):
                    listed_b = await personas.listed(store, GUILD_B)
                    typed_b = await personas.listed(store, GUILD_B, prefix="mi", limit=25)
                    typed_a = await personas.listed(store, GUILD_A, prefix="crowd1", limit=25)
            return watch, listed_b, typed_b, typed_a

    watch, listed_b, typed_b, typed_a = run(main())
    assert [p.name for p in listed_b] == [p.name for p in typed_b] == ["Mine"]
    assert [p.name for p in typed_a] == [f"crowd1{i:04d}" for i in range(25)]
    watch.check(min_callbacks=30)
