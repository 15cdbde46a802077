"""Which Discord API the bot talks to: Discord's own, or the address DISCORD_API_URL names, usually an HTTP
proxy in front of it (nirn-proxy, twilight-http-proxy) through which the processes of a sharded bot share one
set of rate limits.

discord.py builds every REST address, webhooks' included, from the class attribute `Route.BASE`. The gateway
is not behind the proxy: its address is the one the API names (`GET /gateway/bot`), which for a proxy is
Discord's own. discord.py asks for it only when it picks the shard count itself; with SHARD_COUNT set, and
whenever a shard identifies again after losing its session, it connects to `DiscordWebSocket.DEFAULT_GATEWAY`.
So the address the API names is asked for here, once at start, and set there."""

from __future__ import annotations

import asyncio

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route

# discord.py's own addresses, taken before anything changes them: what an unset DISCORD_API_URL means.
DISCORD_API = Route.BASE
DISCORD_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


async def use_api_url(url: str | None, token: str) -> None:
    """Send discord.py's REST requests to `url` (None: Discord's own API, and its default gateway) and connect
    to the gateway that API names for this bot (`token`). Process-wide: call it before the bot logs in.
    Raises what discord.py's own login raises: `discord.LoginFailure` for a refused token,
    `discord.GatewayNotFound` when the API names no gateway, `OSError` when it cannot be reached."""
    if url is None:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = DISCORD_API, DISCORD_GATEWAY
        return
    Route.BASE = url.rstrip("/")
    # A client of its own, closed here: the bot's is made when it logs in, after this.
    http = HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(token)
        _, gateway, _ = await http.get_bot_gateway()
    finally:
        await http.close()
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
