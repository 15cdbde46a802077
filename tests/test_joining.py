"""When a persona speaks unasked (issue 23, part 1) and how much one person may ask of it (part 3): bursts,
follow-ups, wake words, quiet hours, the channel's hourly budget, and cool-downs that grow. The rules alone
(`bot.core.joining`), then the bot in simcord with a seeded channel: a real tiny persona, a real SQLite file,
simcord's virtual clock for the seconds between messages."""

from __future__ import annotations

import pytest
import simcord
from discord import app_commands

from bot.core.joining import (BURST_MAX_S, BURST_QUIET_S, ChannelTalk, JoinSettings, PersonLimits,
                              parse_quiet_hours, wakes)
from test_discord import engine, settings, simcord_bot, store, world  # noqa: F401 (fixtures)
from test_persona_discord import carol_adapter, models  # noqa: F401 (fixtures)


def test_a_burst_ends_after_quiet_or_at_most_eight_seconds_and_its_chances_repeat_with_a_seed():
    talk = ChannelTalk.seeded(1, seed=5)
    assert talk.heard(0.0) == BURST_QUIET_S
    assert talk.heard(1.5) == 1.5 + BURST_QUIET_S
    for t in (3.0, 4.5, 6.0, 7.5):                      # a steady stream: cut at eight seconds
        due = talk.heard(t)
    assert due == BURST_MAX_S
    always = JoinSettings(unasked=1.0)
    assert talk.end_burst(due, always, hour=12) == "unasked" and talk.burst_started is None
    talk.heard(20.0)
    talk.drop_burst()                                   # a mention answered it: nothing left to join
    assert talk.end_burst(30.0, always, hour=12) is None

    def decisions(seed: int | None, chance: float) -> list[str | None]:
        channel = ChannelTalk.seeded(7, seed)
        out = []
        for i in range(40):
            channel.heard(i * 100.0)
            out.append(channel.end_burst(i * 100.0 + 2, JoinSettings(unasked=chance, turns_per_hour=1000), 12))
        return out

    half = decisions(3, 0.5)
    assert half == decisions(3, 0.5) and half != decisions(4, 0.5)
    assert 8 < half.count("unasked") < 32 and set(half) == {"unasked", None}
    assert decisions(3, 0.0) == [None] * 40


def test_a_follow_up_budget_and_quiet_hours():
    talk = ChannelTalk.seeded(1, seed=1)
    follow = JoinSettings(unasked=0.0, followup=1.0, turns_per_hour=2, quiet_hours=(22, 7))
    talk.spoke(100.0, counted=False)                    # it answered a mention
    talk.heard(110.0)
    assert talk.end_burst(112.0, follow, hour=12) == "followup"
    talk.spoke(112.0, counted=True)
    talk.heard(1000.0)                                  # long after: only the unasked chance (0)
    assert talk.end_burst(1002.0, follow, hour=12) is None
    talk.heard(1003.0)
    assert talk.end_burst(1005.0, follow, hour=23) is None       # quiet hours, wrapping past midnight
    assert follow.quiet_at(3) and follow.quiet_at(22) and not follow.quiet_at(7) and not follow.quiet_at(21)
    busy = ChannelTalk.seeded(2, seed=1)
    always = JoinSettings(unasked=1.0, turns_per_hour=2)
    spoken = []
    for t in (0.0, 100.0, 200.0, 300.0):
        busy.heard(t)
        if busy.end_burst(t + 2, always, 12):
            busy.spoke(t + 2, counted=True)
            spoken.append(t)
    assert spoken == [0.0, 100.0]                      # two turns an hour
    assert busy.budget_left(3700.0, always) == 1        # the first left the hour's window
    assert parse_quiet_hours("22-7") == (22, 7) and parse_quiet_hours("none") is None
    with pytest.raises(ValueError):
        parse_quiet_hours("25-3")
    with pytest.raises(ValueError):
        JoinSettings(unasked=1.5)


def test_wake_words_are_whole_words_in_any_case():
    assert wakes("hey ALICE, you there?", ("Alice",)) and wakes("alice", ("alice",))
    assert not wakes("malice and palace", ("alice",)) and not wakes("", ("alice",))
    assert wakes("the ol' Sir John", ("sir john", "jack")) and not wakes("jackal", ("jack",))


def test_a_person_past_the_budget_cools_down_longer_each_time_and_is_told_once():
    limits = PersonLimits(budget=3, window_s=10.0, cooldown_s=60.0, max_cooldown_s=200.0)
    assert all(limits.check(1, t).allowed for t in (0.0, 1.0, 2.0))
    first = limits.check(1, 3.0)
    assert not first.allowed and first.notify and first.until == 63.0
    again = limits.check(1, 4.0)
    assert not again.allowed and not again.notify                # told once per cool-down
    assert limits.check(2, 4.0).allowed and limits.cooling(10.0) == 1      # someone else is not held
    assert all(limits.check(1, t).allowed for t in (63.0, 64.0, 65.0))
    second = limits.check(1, 66.0)
    assert second.notify and second.until == 66.0 + 120.0         # a repeat: twice as long
    for t in (186.0, 187.0, 188.0):
        limits.check(1, t)
    assert limits.check(1, 189.0).until == 189.0 + 200.0           # at most max_cooldown_s


@pytest.fixture
def talkative(world):
    """The world's bot, its general channel set to answer every burst (seeded), as its admin sets it."""
    return world


async def _set(admin, channel, **options) -> str:
    result = await admin.slash(channel, "talk set", **options)
    assert result.ephemeral, result.response.content
    return result.response.content


def _bot_said(env, channel) -> list:
    return [m for m in channel.history() if m.author.id == env.bot.user.id]


@pytest.mark.env(CHANNEL_COOLDOWN="0", USER_COOLDOWN="0")
async def test_the_persona_joins_a_burst_in_a_seeded_channel_but_never_for_the_forgotten(world):
    env, general, other, admin, bob, carol = world
    said = await _set(admin, general, unasked=100, seed=1)
    assert "unasked 100%" in said and "seed 1" in said
    # (simcord runs the bot's timers as its clock moves on: each send here is a burst that has ended.)
    await bob.send(general, "anyone up for pizza")
    joined = _bot_said(env, general)
    assert len(joined) == 1 and joined[0].reference is None    # one turn, after the burst, not a reply
    assert env.now().timestamp() - joined[0].created_at.timestamp() < 1    # it waited for the quiet
    # Another channel has no such setting: nothing unasked there.
    await bob.send(other, "pizza?")
    await env.advance_time(BURST_MAX_S)
    assert _bot_said(env, other) == []
    # Bob asks to be forgotten: his messages no longer wake it nor count.
    asked = await bob.slash(general, "forget-me")
    await bob.click(asked.response, label="Forget me")
    await env.advance_time(120)                          # past the follow-up window
    await bob.send(general, "just me talking")
    await env.advance_time(BURST_MAX_S)
    assert len(_bot_said(env, general)) == 1
    await carol.send(general, "and me")
    await env.advance_time(BURST_MAX_S)
    assert len(_bot_said(env, general)) == 2


@pytest.mark.env(CHANNEL_COOLDOWN="0", USER_COOLDOWN="0")
async def test_wake_words_follow_ups_quiet_hours_and_the_hourly_budget(world):
    env, general, other, admin, bob, carol = world
    await bob.send(general, "is alice around")           # its name wakes it, at once
    assert len(_bot_said(env, general)) == 1
    await _set(admin, general, followup=100, unasked=0, seed=2)
    await carol.send(general, "ha, she is")               # soon after it spoke: a follow-up
    await env.advance_time(BURST_QUIET_S + 0.5)
    assert len(_bot_said(env, general)) == 2
    # Quiet hours all day long (simcord's clock is at midnight UTC): its name no longer wakes it, a mention does.
    await _set(admin, general, quiet_hours="0-23", wake_words="alice, al")
    await bob.send(general, "al, are you there")
    await env.advance_time(BURST_MAX_S)
    assert len(_bot_said(env, general)) == 2
    await bob.send(general, f"{env.bot.user.mention} hello")
    assert len(_bot_said(env, general)) == 3
    # Two unasked turns an hour, whatever the chance: the follow-up was one, so one more.
    await _set(admin, general, quiet_hours="none", unasked=100, followup=100, turns_per_hour=2)
    for word in ("one", "two", "three", "four"):
        await carol.send(general, f"burst {word}")
        await env.advance_time(BURST_QUIET_S + 0.5)
    assert len(_bot_said(env, general)) == 4
    status = (await admin.slash(general, "status")).response.content
    assert "talk here: unasked 100%, follow-ups 100%, wake words: alice, al" in status
    assert "0 of 2 unasked turns left this hour" in status
    assert "talk here" not in (await bob.slash(general, "status")).response.content    # admins only
    metrics = env.bot.metrics.exposition().decode()
    assert 'personabot_unasked_turns_total{kind="followup"}' in metrics


@pytest.mark.env(CHANNEL_COOLDOWN="0", USER_COOLDOWN="0", USER_INTERACTIONS="3", USER_TIMEOUT="60")
async def test_a_flood_from_one_member_ends_in_a_cool_down_told_once_in_private(world):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    for n in range(6):
        await bob.send(general, f"{me.mention} question {n}")
    assert len(_bot_said(env, general)) == 3                # three answered, then silence
    await carol.send(general, f"{me.mention} and me?")       # others are still answered
    assert len(_bot_said(env, general)) == 4
    await env.advance_time(61)
    await bob.send(general, f"{me.mention} back again")
    assert len(_bot_said(env, general)) == 5
    assert 'personabot_person_cool_downs_total 1.0' in env.bot.metrics.exposition().decode()
    notices = [r for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")
               and "talking to me a lot" in ((r.json or {}).get("content") or "")]
    assert len(notices) == 1 and not notices[0].path.startswith(f"/channels/{general.id}/")   # once, in private


@pytest.mark.env(CHANNEL_COOLDOWN="0", USER_COOLDOWN="0")
async def test_a_scene_alternates_two_personas_apart_and_ends_at_its_turns_or_the_budget(world, models):  # noqa: F811
    env, general, other, admin, bob, carol = world
    for name, directory in (("Alice", "alice"), ("Robin", "bob")):
        await admin.slash(general, "persona add", name=name, directory=directory)
    refused = await bob.slash(general, "scene start", persona_a="Alice", persona_b="Robin")
    assert refused.ephemeral and "admins only" in refused.response.content
    simcord.assert_error(env, app_commands.CheckFailure)      # refused by the one error handler
    started = await admin.slash(general, "scene start", persona_a="Alice", persona_b="Robin", topic="the beach",
                                turns=4)
    assert started.ephemeral and "**Alice** and **Robin**, up to 4 turns" in started.response.content
    await env.advance_time(30)
    scene = [m for m in general.history() if m.webhook_id is not None]
    assert [m.author.name for m in scene] == ["Alice", "Robin", "Alice", "Robin"]      # ended at its turns
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in zip(scene, scene[1:])]
    assert min(gaps) >= 5.0
    assert 'personabot_unasked_turns_total{kind="scene"} 4.0' in env.bot.metrics.exposition().decode()
    assert "No scene is running here" in (await admin.slash(general, "scene stop")).response.content
    # The channel's hourly budget bounds scenes too: 3 an hour, 4 used already, so another scene says nothing;
    # in another channel it runs to the budget.
    await admin.slash(general, "talk set", turns_per_hour=3)
    await admin.slash(general, "scene start", persona_a="Robin", persona_b="Alice", turns=6)
    await env.advance_time(30)
    assert len([m for m in general.history() if m.webhook_id is not None]) == 4
    await admin.slash(other, "talk set", turns_per_hour=3)
    await admin.slash(other, "scene start", persona_a="Robin", persona_b="Alice", turns=6)
    await env.advance_time(30)
    assert [m.author.name for m in other.history() if m.webhook_id is not None] == ["Robin", "Alice", "Robin"]
    # Outside a scene a persona's message never wakes another, even with every chance at 100%.
    await admin.slash(other, "talk set", unasked=100, followup=100, turns_per_hour=100)
    before = len(other.history())
    await env.advance_time(60)
    assert len(other.history()) == before
