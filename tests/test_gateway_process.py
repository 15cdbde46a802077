"""A real `personabot run` process against the fake Discord on loopback (tests/fake_discord.py): DISCORD_API_URL
points its REST at the fake, whose `GET /gateway/bot` names the fake's gateway. Run as one shard of two, it
identifies its own shard only, comes back after Discord drops its connection, answers a mention in a guild of
its shard in that channel, hears nothing of the other shard's guilds, and stops cleanly on SIGTERM.

Also here: the DISCORD_API_URL setting itself, and `use_api_url` in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from bot.core.config import ConfigError, load_settings
from conftest import REPO
from fake_discord import FakeDiscord

T = TypeVar("T")

# Loading torch and the model, then logging in, takes 20-40 s on a busy machine: generous bounds, never timings.
START_S = 240.0
REPLY_S = 180.0


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    """A fake Discord of two shards, running for this test."""
    with FakeDiscord(shard_count=2) as fake:
        yield fake


class BotProcess:
    """`python -m bot run` in a real subprocess with `env` over the test's environment, its output in a file
    (read with `log()`); `stop()` sends SIGTERM and returns the exit status."""

    def __init__(self, tmp_path: Path, env: dict[str, str], name: str = "bot") -> None:
        self.log_path = tmp_path / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=full_env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, fake: FakeDiscord, condition: Callable[[], T], timeout: float, what: str) -> T:
        """`fake.wait_until(condition)`, failing at once (with the process's output) if the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fake.wait_until(condition, min(2.0, max(0.1, deadline - time.monotonic())), what)
            except TimeoutError:
                if self.proc.poll() is not None:
                    pytest.fail(f"the bot process ended ({self.proc.returncode}) before {what}:\n{self.log()}")
                if time.monotonic() >= deadline:
                    pytest.fail(f"no {what} within {timeout:g} s; the bot process said:\n{self.log()}")

    def stop(self, timeout: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def shard_process_env(tmp_path: Path, fake: FakeDiscord, artifact: Path, data_dir: Path, *, token: str,
                      shard_ids: str, run_jobs: bool = True) -> dict[str, str]:
    """The settings of one bot process on the fake: its token, its shards of the fake's count, one database."""
    return {"DISCORD_TOKEN": token, "DISCORD_API_URL": fake.api_url, "PERSONA_MODEL": str(artifact),
            "DATABASE_PATH": str(tmp_path / "bot.sqlite3"), "DATABASE_URL": "", "MODELS_DIR": str(tmp_path / "models"),
            "TRAIN_DATA_DIR": str(data_dir), "SHARD_COUNT": str(fake.shard_count), "SHARD_IDS": shard_ids,
            "RUN_JOBS": "true" if run_jobs else "false", "USER_COOLDOWN": "0", "CHANNEL_COOLDOWN": "0",
            "BACKEND": "torch", "TORCH_THREADS": "1", "METRICS_PORT": ""}


@pytest.mark.slow
def test_a_shard_process_serves_its_own_guilds_through_the_api_url_and_stops_on_sigterm(
        tmp_path, fake_discord, alice_artifact, data_dir):
    fake = fake_discord
    zero, one = fake.add_guild("Zero", shard=0), fake.add_guild("One", shard=1)
    here, elsewhere = zero.channels["general"], one.channels["general"]
    ann = fake.add_user("ann")
    token = "process-a-token"
    bot = BotProcess(tmp_path, shard_process_env(tmp_path, fake, alice_artifact, data_dir, token=token,
                                                 shard_ids="0"))
    try:
        first = bot.wait_for(fake, lambda: next((c for c in fake.connections if c.identified), None), START_S,
                             "identified gateway connection")
        assert (first.shard, first.token) == ((0, 2), token)

        # Discord drops the connection: the process comes back, through the gateway its API named.
        fake.drop(first)
        again = bot.wait_for(fake, lambda: next((c for c in fake.live_connections() if c.number > first.number),
                                                None), START_S, "gateway connection after the drop")
        assert (again.shard, again.token) == ((0, 2), token) and first.close_code == 4000

        # The other shard's guild first: had it been heard, its reply would come before the one awaited below.
        fake.send_message(elsewhere, ann, "are you there?", mentions=(fake.bot,))
        asked = fake.send_message(here, ann, "who is cooking tonight?", mentions=(fake.bot,))
        reply = bot.wait_for(fake, lambda: next((s for s in fake.sent if s.channel_id == here.id), None), REPLY_S,
                             "reply in the shard-0 guild")
        assert (reply.kind, reply.reply_to, reply.token, reply.username) == ("message", asked, token, "personabot")
        assert reply.content.strip() and reply.body["allowed_mentions"]["parse"] == []   # pings nobody
        with pytest.raises(TimeoutError):
            fake.wait_for_sent(lambda sent: sent.guild_id == one.id, timeout=5)
        assert {c.shard for c in fake.connections if c.identified} == {(0, 2)}

        code = bot.stop()
        log = bot.log()
        assert code == 0, log
        assert fake.wait_for_close(again, timeout=30) == 1000, log
        assert "Traceback" not in log, log
        assert fake.unknown_routes == [], log
    finally:
        bot.kill()


def test_discord_api_url_is_an_http_address_and_unset_means_discords_own():
    assert load_settings({}, dotenv_path=None).discord_api_url is None
    proxy = load_settings({"DISCORD_API_URL": "http://nirn-proxy:8080/api/v10"}, dotenv_path=None)
    assert proxy.discord_api_url == "http://nirn-proxy:8080/api/v10"
    with pytest.raises(ConfigError) as error:
        load_settings({"DISCORD_API_URL": "nirn-proxy:8080"}, dotenv_path=None)
    assert error.value.problems == ["DISCORD_API_URL='nirn-proxy:8080' must be an http:// or https:// address, "
                                    "e.g. http://nirn-proxy:8080/api/v10"]


async def test_use_api_url_sends_rest_to_the_api_and_connects_to_the_gateway_it_names(fake_discord):
    import discord
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    from bot.adapters.discord.api import DISCORD_API, DISCORD_GATEWAY, use_api_url

    try:
        await use_api_url(fake_discord.api_url + "/", "a-token")
        assert Route.BASE == fake_discord.api_url
        assert str(DiscordWebSocket.DEFAULT_GATEWAY) == fake_discord.gateway_url
        fake_discord.accepted_tokens = {"the-token"}
        with pytest.raises(discord.LoginFailure):       # what the runner says "Discord refused" about
            await use_api_url(fake_discord.api_url, "another-token")
    finally:
        await use_api_url(None, "")
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == (DISCORD_API, DISCORD_GATEWAY)
    assert DISCORD_API == "https://discord.com/api/v10"
