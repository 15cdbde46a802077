"""What the bot asks Discord about a channel's webhooks, and how often (simcord counts every REST call): a
channel's webhook listing is remembered for a while, so that replies to another app's webhook messages
(PluralKit, for instance) do not list the channel's webhooks again each time, and a channel at Discord's
webhook cap (error 30007) is not asked for a new webhook on every reply; the persona then speaks as the bot,
its name in bold. The persona is a real tiny model; only Discord is simulated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import simcord

from bot.adapters.discord.speaking import WEBHOOK_MEMORY_S
from test_discord import engine, sent_messages, settings, simcord_bot, store, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def listings(env, channel_id: int) -> int:
    return sum(1 for r in env.http_requests if r.method == "GET" and r.path == f"/channels/{channel_id}/webhooks")


def creations(env, channel_id: int) -> int:
    return sum(1 for r in env.http_requests if r.method == "POST" and r.path == f"/channels/{channel_id}/webhooks")


@pytest.fixture
def alice_registered(settings, alice_artifact: Path) -> Path:  # noqa: F811
    """MODELS_DIR holding Alice's artifact, for a server's admin to register as a persona."""
    shutil.copytree(alice_artifact, settings.models_dir / "alice")
    return settings.models_dir / "alice"


async def test_replies_to_another_apps_webhook_messages_list_the_channels_webhooks_once_for_a_while(world):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    # PluralKit's webhook: made by another app (not the bot), so none of its messages is a persona's.
    pluralkit = env.create_user("PluralKit", bot=True)
    hook = simcord.WebhookHandle(env, env.backend.create_webhook(general.id, "PluralKit", pluralkit.id))
    proxied = await hook.send("hi all, it's Sam", username="Sam")
    for i in range(10):       # half of them also mention the bot, which then answers as itself
        await bob.send(general, f"{me.mention} reply {i}" if i % 2 else f"reply {i}", reply_to=proxied)
    assert len(sent_messages(env)) == 5
    assert listings(env, general.id) <= 1, listings(env, general.id)
    assert creations(env, general.id) == 0

    # After a while the channel is looked at again (one listing), in case the bot's webhook appeared there.
    await env.advance_time(WEBHOOK_MEMORY_S + 1)
    before = listings(env, general.id)
    await bob.send(general, "again", reply_to=proxied)
    await bob.send(general, "and again", reply_to=proxied)
    assert listings(env, general.id) == before + 1


async def test_a_channel_at_discords_webhook_cap_is_not_asked_again_on_every_reply(world, alice_registered):
    env, general, other, admin, bob, carol = world
    me = env.bot.user
    await admin.slash(general, "persona add", name="Alice", directory="alice")
    await admin.slash(general, "persona use", name="Alice", scope="channel")
    # The channel already has Discord's 15 webhooks, none of them the bot's.
    env.inject_error("POST", f"/channels/{general.id}/webhooks", status=400, code=30007,
                     message="Maximum number of webhooks reached (15)", times=None)
    for i in range(5):
        await bob.send(general, f"{me.mention} question {i}")
        said = general.last_message
        assert said.author.id == me.id and said.webhook_id is None and said.content.startswith("**Alice:** ")
    assert creations(env, general.id) == 1 and listings(env, general.id) == 1
    # A reply to one of Alice's bold messages still reaches Alice, without asking Discord anything more.
    await carol.send(general, "really?", reply_to=said)
    assert general.last_message.content.startswith("**Alice:** ")
    assert creations(env, general.id) == 1 and listings(env, general.id) == 1

    # Once the time is up the bot tries again; a slot was freed meanwhile, so Alice gets her webhook.
    env.backend.faults.clear()
    await env.advance_time(WEBHOOK_MEMORY_S + 1)
    await bob.send(general, f"{me.mention} now?")
    said = general.last_message
    assert said.webhook_id is not None and said.author.name == "Alice"
    assert creations(env, general.id) == 2
