"""A fake Discord on loopback that real `personabot run` processes connect to: its REST API (v10) and its
gateway, just enough of both for discord.py 2.7. simcord drives a bot inside the test's own event loop; this
serves bots in other processes, so that sharding, standbys and stops can be tested as they run.

`FakeDiscord` runs an aiohttp server on 127.0.0.1 (a free port) in a thread of its own, so a synchronous test
drives it while bot processes talk to it. Point a process at it with DISCORD_API_URL=`fake.api_url` and any
DISCORD_TOKEN (give each process a token of its own to tell them apart: every connection and every message
records the token it came with).

It only routes, as Discord does: a guild's events go to the connections that identified the shard the guild
is on (`(guild id >> 22) % shard count`, the count each connection identified with); what a bot sends is
recorded (`sent`) and dispatched back as a gateway event; nothing is ever answered on a bot's behalf. A route
it does not know answers 404, is logged as an error and is kept in `unknown_routes`, so that a test can
insist there were none.

    with FakeDiscord(shard_count=2) as fake:
        guild = fake.add_guild("Zero", shard=0)
        general = guild.channels["general"]
        ... start a bot process with DISCORD_API_URL=fake.api_url ...
        fake.wait_for_connection(lambda c: c.shard == (0, 2))
        fake.send_message(general, fake.add_user("ann"), "hi", mentions=[fake.bot])
        reply = fake.wait_for_sent(lambda s: s.channel_id == general.id)
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import WSMsgType, web

log = logging.getLogger("fake_discord")

API_PATH = "/api/v10"
GATEWAY_PATH = "/gateway"
DISCORD_EPOCH_MS = 1420070400000
HEARTBEAT_INTERVAL_MS = 41250               # what Discord says in HELLO
NETWORK_S = 0.05                            # a gateway round trip's one way (the heartbeat's ACK)

# Gateway opcodes and close codes (Discord's developer documentation, "Opcodes and Status Codes").
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 9, 10, 11
CLOSE_DECODE_ERROR, CLOSE_AUTHENTICATION_FAILED, CLOSE_INVALID_SHARD = 4002, 4004, 4010
# Intents (bits of IDENTIFY's `intents`).
GUILD_MESSAGES, MESSAGE_CONTENT = 1 << 9, 1 << 15
# Permissions: everyone may read and write; the bot may also manage webhooks (personas speak through them).
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | (1 << 29)
MESSAGE_DEFAULT, MESSAGE_REPLY = 0, 19
_MENTION = re.compile(r"<@!?(\d+)>")

T = TypeVar("T")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(frozen=True)
class Channel:
    """A guild text channel."""

    id: int
    guild_id: int
    name: str


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    bot_role_id: int
    channels: dict[str, Channel] = field(default_factory=dict)    # by name
    members: dict[int, User] = field(default_factory=dict)        # by id, the bot included

    def shard(self, shard_count: int) -> int:
        """The shard Discord sends this guild's events to."""
        return (self.id >> 22) % shard_count


@dataclass(frozen=True)
class Sent:
    """What a bot sent: a channel message (`kind` "message"), a webhook's message ("webhook") or an edit of
    either ("edit"). `token` is the bot token of the request (None for a webhook's own address, which holds
    the webhook's token instead: `webhook_id` says which); `username` is the name it appears under (the
    bot's, or the one a webhook message was sent as); `body` is the request's JSON as sent."""

    kind: str
    channel_id: int
    guild_id: int | None
    message_id: int
    content: str
    username: str
    token: str | None
    webhook_id: int | None
    reply_to: int | None
    body: dict[str, Any]


@dataclass
class Connection:
    """One gateway connection, numbered in the order they opened. `shard`, `token`, `intents` and
    `properties` are the IDENTIFY's; `close_code` is set when it ends (either side closing it)."""

    number: int
    peer: str | None
    compress: str | None
    token: str | None = None
    shard: tuple[int, int] | None = None
    intents: int = 0
    properties: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    identified: bool = False
    closed: bool = False
    close_code: int | None = None
    _ws: web.WebSocketResponse | None = field(default=None, repr=False)
    _zlib: Any = field(default=None, repr=False)
    _send_lock: asyncio.Lock | None = field(default=None, repr=False)
    _sequence: int = field(default=0, repr=False)

    def serves(self, guild: Guild) -> bool:
        """Whether Discord would send this connection `guild`'s events."""
        return (self.identified and not self.closed and self.shard is not None
                and guild.shard(self.shard[1]) == self.shard[0])


class FakeDiscord:
    """The fake Discord: start it (a context manager, or `start()`/`close()`), define guilds, users and
    messages, and read what bots did. Thread-safe: the server runs in its own thread, and every wait blocks
    the calling thread only (so never wait from an event loop that runs a bot)."""

    def __init__(self, *, shard_count: int = 1, bot_name: str = "personabot", owner_name: str = "owner",
                 accepted_tokens: set[str] | None = None, heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
        self.shard_count = shard_count          # where `add_guild(shard=...)` puts guilds; what /gateway/bot advises
        self.accepted_tokens = accepted_tokens  # None: any token is the bot's
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._last_ms = 0
        self.bot = User(self._snowflake(), bot_name, bot=True)
        self.owner = User(self._snowflake(), owner_name)
        self.application_id = self.bot.id
        self.users: dict[int, User] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, dict[str, Any]] = {}       # id -> the message's payload
        self.webhooks: dict[int, dict[str, Any]] = {}       # id -> the webhook's payload (token included)
        self.commands: dict[int | None, list[dict[str, Any]]] = {}   # guild id (None: global) -> commands
        self.sent: list[Sent] = []
        self.connections: list[Connection] = []
        self.unknown_routes: list[str] = []
        self._numbers = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # --- the server ---------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """DISCORD_API_URL for a bot process."""
        return f"http://127.0.0.1:{self.port}{API_PATH}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    def start(self) -> FakeDiscord:
        started = threading.Event()
        failure: list[Exception] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except Exception as e:   # reported in the caller's thread
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shut())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-discord", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        if self.port is None:
            raise RuntimeError("the fake Discord did not start within 30 s")
        return self

    def close(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[_discord_errors])
        app.router.add_get(GATEWAY_PATH, self._gateway)
        api = [
            ("GET", "/users/@me", self._me),
            ("GET", "/users/{user_id}", self._user),
            ("GET", "/gateway/bot", self._gateway_bot),
            ("GET", "/gateway", self._gateway_bot),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/applications/{app_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("GET", "/channels/{channel_id}", self._channel),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/channels/{channel_id}/messages", self._history),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message),
            ("GET", "/channels/{channel_id}/webhooks", self._channel_webhooks),
            ("POST", "/channels/{channel_id}/webhooks", self._create_webhook),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._member),
            ("POST", "/webhooks/{webhook_id}/{webhook_token}", self._execute_webhook),
            ("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", self._edit_webhook_message),
        ]
        for method, path, handler in api:
            app.router.add_route(method, API_PATH + path, handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shut(self) -> None:
        for connection in list(self.connections):
            if connection._ws is not None and not connection._ws.closed:
                await connection._ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run `coroutine` on the server's loop from the test's thread; its result."""
        assert self._loop is not None, "start the fake Discord first"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- what a test defines ------------------------------------------------------------------------------

    def _snowflake(self, shard: tuple[int, int] | None = None) -> int:
        """A new id, later than every earlier one, of the current time; on `shard` (id, count) if given."""
        with self._lock:
            ms = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, self._last_ms + 1)
            if shard is not None:
                ms += (shard[0] - ms) % shard[1]
            self._last_ms = ms
            return ms << 22

    def add_user(self, name: str, *, bot: bool = False) -> User:
        user = User(self._snowflake(), name, bot=bot)
        with self._lock:
            self.users[user.id] = user
        return user

    def add_guild(self, name: str, *, shard: int = 0, channels: tuple[str, ...] = ("general",),
                  members: tuple[User, ...] = ()) -> Guild:
        """A guild on `shard` (of `shard_count`) with text `channels`, the owner, the bot and `members` in it.
        Connections already serving its shard get its GUILD_CREATE, as when a bot joins a guild."""
        if not 0 <= shard < self.shard_count:
            raise ValueError(f"shard {shard} does not exist with shard_count={self.shard_count}")
        guild = Guild(self._snowflake((shard, self.shard_count)), name, self.owner.id, self._snowflake())
        for channel_name in channels:
            channel = Channel(self._snowflake(), guild.id, channel_name)
            guild.channels[channel_name] = channel
        for user in (self.owner, self.bot, *members):
            guild.members[user.id] = user
        with self._lock:
            self.guilds[guild.id] = guild
            self.channels.update({channel.id: channel for channel in guild.channels.values()})
        if self._loop is not None:
            self._call(self._dispatch_to_guild(guild, "GUILD_CREATE", lambda c: self._guild_payload(guild)))
        return guild

    def add_member(self, guild: Guild, user: User) -> None:
        with self._lock:
            guild.members[user.id] = user

    def send_message(self, channel: Channel, author: User, content: str, *, mentions: tuple[User, ...] = (),
                     reply_to: int | None = None) -> int:
        """`author` says `content` in `channel` (mentioning `mentions`: each one's <@id> is put before the
        content unless it is in it already), replying to message `reply_to` if given; dispatched as
        MESSAGE_CREATE to the connections serving the channel's guild. Returns the message's id."""
        missing = [user.mention for user in mentions if user.mention not in content]
        content = " ".join([*missing, content])
        guild = self.guilds[channel.guild_id]
        if author.id not in guild.members:
            self.add_member(guild, author)
        reference = self.messages.get(reply_to) if reply_to is not None else None
        if reply_to is not None and reference is None:
            raise ValueError(f"no message {reply_to} to reply to")
        message = self._message(channel, author, content, reply_to=reference)
        return self._call(self._post(message))

    # --- what bots did --------------------------------------------------------------------------------------

    def wait_until(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """The first true value of `condition()` (called under the fake's lock, after each change), waiting
        up to `timeout` seconds; else TimeoutError naming `what`."""
        with self._changed:
            value = self._changed.wait_for(condition, timeout)
        if not value:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        return value

    def wait_for_sent(self, predicate: Callable[[Sent], bool] = lambda sent: True, *,
                      timeout: float = 60) -> Sent:
        """The first thing a bot sent that matches `predicate` (earlier sends included)."""
        return self.wait_until(lambda: next((s for s in self.sent if predicate(s)), None), timeout,
                               f"sent message matching the predicate (sent: {self.sent})")

    def sent_matching(self, predicate: Callable[[Sent], bool]) -> list[Sent]:
        with self._lock:
            return [sent for sent in self.sent if predicate(sent)]

    def wait_for_connection(self, predicate: Callable[[Connection], bool] = lambda connection: True, *,
                            timeout: float = 60) -> Connection:
        """The first identified gateway connection that matches `predicate` (closed ones included)."""
        return self.wait_until(
            lambda: next((c for c in self.connections if c.identified and predicate(c)), None), timeout,
            "identified gateway connection matching the predicate")

    def wait_for_close(self, connection: Connection, *, timeout: float = 60) -> int | None:
        """Wait until `connection` has ended; its close code."""
        self.wait_until(lambda: connection.closed, timeout, f"close of gateway connection {connection.number}")
        return connection.close_code

    def live_connections(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if c.identified and not c.closed]

    def drop(self, connection: Connection, code: int = 4000) -> None:
        """Close `connection` from Discord's side (4000, "unknown error": discord.py reconnects)."""
        async def close() -> None:
            if connection._ws is not None and not connection._ws.closed:
                connection.close_code = code
                await connection._ws.close(code=code)

        self._call(close())

    # --- payloads ---------------------------------------------------------------------------------------------

    def _user_payload(self, user: User) -> dict[str, Any]:
        return {"id": str(user.id), "username": user.name, "global_name": user.name, "discriminator": "0",
                "avatar": None, "bot": user.bot, "public_flags": 0}

    def _member_payload(self, guild: Guild, user: User, *, with_user: bool = True) -> dict[str, Any]:
        member = {"roles": [str(guild.bot_role_id)] if user.id == self.bot.id else [], "nick": None,
                  "avatar": None, "joined_at": _iso(guild.id), "premium_since": None, "deaf": False,
                  "mute": False, "flags": 0, "pending": False}
        return {**member, "user": self._user_payload(user)} if with_user else member

    def _channel_payload(self, channel: Channel) -> dict[str, Any]:
        return {"id": str(channel.id), "type": 0, "guild_id": str(channel.guild_id), "name": channel.name,
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0}

    def _guild_payload(self, guild: Guild) -> dict[str, Any]:
        roles = [{"id": str(guild.id), "name": "@everyone", "permissions": str(EVERYONE_PERMISSIONS)},
                 {"id": str(guild.bot_role_id), "name": self.bot.name, "permissions": str(BOT_PERMISSIONS),
                  "managed": True, "tags": {"bot_id": str(self.bot.id)}}]
        for position, role in enumerate(roles):
            role.update({"color": 0, "hoist": False, "position": position, "mentionable": False, "flags": 0})
            role.setdefault("managed", False)
        with self._lock:
            members = [self._member_payload(guild, user) for user in guild.members.values()]
            channels = [self._channel_payload(channel) for channel in guild.channels.values()]
        return {"id": str(guild.id), "name": guild.name, "icon": None, "splash": None, "discovery_splash": None,
                "owner_id": str(guild.owner_id), "afk_channel_id": None, "afk_timeout": 300,
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "roles": roles, "emojis": [], "stickers": [], "features": [], "mfa_level": 0,
                "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
                "rules_channel_id": None, "public_updates_channel_id": None, "vanity_url_code": None,
                "description": None, "banner": None, "premium_tier": 0, "preferred_locale": "en-US",
                "nsfw_level": 0, "premium_progress_bar_enabled": False, "joined_at": _iso(guild.id),
                "large": False, "unavailable": False, "member_count": len(members), "voice_states": [],
                "members": members, "channels": channels, "threads": [], "presences": [],
                "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": []}

    def _message(self, channel: Channel, author: User | dict[str, Any], content: str, *,
                 reply_to: dict[str, Any] | None = None, webhook_id: int | None = None) -> dict[str, Any]:
        """A new message's payload (stored by `_post`). `author` is a user, or a webhook's author object."""
        guild = self.guilds[channel.guild_id]
        message_id = self._snowflake()
        mentioned = [self.users[int(i)] for i in dict.fromkeys(_MENTION.findall(content)) if int(i) in self.users]
        message: dict[str, Any] = {
            "id": str(message_id), "channel_id": str(channel.id), "guild_id": str(guild.id),
            "author": author if isinstance(author, dict) else self._user_payload(author),
            "content": content, "timestamp": _iso(message_id), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mention_roles": [], "attachments": [], "embeds": [], "pinned": False,
            "flags": 0, "type": MESSAGE_DEFAULT,
            "mentions": [{**self._user_payload(user), "member": self._member_payload(guild, user, with_user=False)}
                         for user in mentioned if user.id in guild.members]}
        if isinstance(author, User):
            message["member"] = self._member_payload(guild, author, with_user=False)
        if webhook_id is not None:
            message["webhook_id"] = str(webhook_id)
        if reply_to is not None:
            message["type"] = MESSAGE_REPLY
            message["message_reference"] = {"type": 0, "message_id": reply_to["id"],
                                            "channel_id": reply_to["channel_id"], "guild_id": str(guild.id)}
            message["referenced_message"] = {k: v for k, v in reply_to.items() if k != "referenced_message"}
        return message

    def _event_for(self, connection: Connection, message: dict[str, Any]) -> dict[str, Any]:
        """`message` as `connection` receives it: without the MESSAGE_CONTENT intent, only messages that
        mention the bot (or are the bot's own) keep their content."""
        if connection.intents & MESSAGE_CONTENT or message["author"]["id"] == str(self.bot.id) \
                or any(user["id"] == str(self.bot.id) for user in message["mentions"]):
            return message
        return {**message, "content": "", "embeds": [], "attachments": []}

    # --- the gateway --------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compress = request.query.get("compress")
        connection = Connection(next(self._numbers), request.remote, compress, _ws=ws, _send_lock=asyncio.Lock())
        if compress == "zlib-stream":
            connection._zlib = zlib.compressobj()
        elif compress is not None:     # zstd-stream: discord.py asks for it when the zstandard module is there
            log.error("fake Discord: gateway compression %r is not supported (only zlib-stream)", compress)
            await ws.close(code=CLOSE_DECODE_ERROR)
            return ws
        with self._changed:
            self.connections.append(connection)
            self._changed.notify_all()
        try:
            await self._send(connection, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                await self._receive(connection, json.loads(frame.data))
        finally:
            with self._changed:
                connection.closed = True
                # The code of whichever side closed first (aiohttp keeps the client's echo of ours).
                if connection.close_code is None and ws.close_code is not None:
                    connection.close_code = int(ws.close_code)
                self._changed.notify_all()
        return ws

    async def _receive(self, connection: Connection, payload: dict[str, Any]) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op == HEARTBEAT:
            # As far away as a network: discord.py records a heartbeat as sent only after its send returned,
            # and an ACK read before that counts against the previous one ("websocket is 41.3s behind").
            await asyncio.sleep(NETWORK_S)
            await self._send(connection, {"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            await self._identify(connection, data)
        elif op == RESUME:
            # Sessions are not kept: "cannot resume", and the client identifies again (as Discord may say).
            await self._send(connection, {"op": INVALID_SESSION, "d": False})
        else:   # presence updates, member requests: nothing a test needs
            log.info("fake Discord: gateway op %s ignored", op)

    async def _identify(self, connection: Connection, data: dict[str, Any]) -> None:
        token = data.get("token")
        if not self._accepts(token):
            connection.close_code = CLOSE_AUTHENTICATION_FAILED
            await connection._ws.close(code=CLOSE_AUTHENTICATION_FAILED)
            return
        shard_id, count = data.get("shard") or (0, 1)
        if not 0 <= shard_id < count:
            connection.close_code = CLOSE_INVALID_SHARD
            await connection._ws.close(code=CLOSE_INVALID_SHARD)
            return
        with self._changed:
            connection.token, connection.shard = token, (shard_id, count)
            connection.intents, connection.properties = data.get("intents", 0), data.get("properties", {})
            connection.session_id = secrets.token_hex(16)
            connection.identified = True
            guilds = [guild for guild in self.guilds.values() if connection.serves(guild)]
            self._changed.notify_all()
        await self._dispatch(connection, "READY", {
            "v": 10, "user": self._user_payload(self.bot), "session_id": connection.session_id,
            "resume_gateway_url": self.gateway_url, "shard": [shard_id, count],
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "application": {"id": str(self.application_id), "flags": 0}})
        for guild in guilds:
            await self._dispatch(connection, "GUILD_CREATE", self._guild_payload(guild))

    async def _send(self, connection: Connection, payload: dict[str, Any]) -> None:
        """One gateway frame: a piece of the connection's zlib stream ending in a sync flush, or text."""
        ws = connection._ws
        async with connection._send_lock:
            if ws is None or ws.closed:
                return
            text = json.dumps(payload)
            if connection._zlib is None:
                await ws.send_str(text)
                return
            data = connection._zlib.compress(text.encode()) + connection._zlib.flush(zlib.Z_SYNC_FLUSH)
            try:
                await ws.send_bytes(data)
            except ConnectionError:     # the client went away meanwhile
                pass

    async def _dispatch(self, connection: Connection, event: str, data: dict[str, Any]) -> None:
        connection._sequence += 1
        await self._send(connection, {"op": DISPATCH, "t": event, "s": connection._sequence, "d": data})

    async def _dispatch_to_guild(self, guild: Guild, event: str,
                                 data: Callable[[Connection], dict[str, Any]]) -> None:
        """`event` to every connection serving `guild`, each with its own `data(connection)`; message events
        only to those that asked for them (the GUILD_MESSAGES intent)."""
        with self._lock:
            connections = [c for c in self.connections if c.serves(guild)
                           and (not event.startswith("MESSAGE_") or c.intents & GUILD_MESSAGES)]
        for connection in connections:
            await self._dispatch(connection, event, data(connection))

    async def _post(self, message: dict[str, Any]) -> int:
        """Store a new message and send it as MESSAGE_CREATE to its guild's connections."""
        with self._lock:
            self.messages[int(message["id"])] = message
        guild = self.guilds[int(message["guild_id"])]
        await self._dispatch_to_guild(guild, "MESSAGE_CREATE", lambda c: self._event_for(c, message))
        return int(message["id"])

    def _record(self, sent: Sent) -> None:
        with self._changed:
            self.sent.append(sent)
            self._changed.notify_all()

    # --- REST ----------------------------------------------------------------------------------------------------

    def _token(self, request: web.Request) -> str:
        """The bot token the request carries; 401, as Discord answers, without one."""
        authorization = request.headers.get("Authorization", "")
        token = authorization[4:].strip() if authorization.startswith("Bot ") else ""
        if not self._accepts(token):
            raise DiscordError(401, "401: Unauthorized", 0)
        return token

    def _accepts(self, token: str | None) -> bool:
        return bool(token) and (self.accepted_tokens is None or token in self.accepted_tokens)

    def _channel_of(self, request: web.Request) -> Channel:
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise DiscordError(404, "Unknown Channel", 10003)
        return channel

    def _message_of(self, request: web.Request, channel: Channel) -> dict[str, Any]:
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or message["channel_id"] != str(channel.id):
            raise DiscordError(404, "Unknown Message", 10008)
        return message

    async def _me(self, request: web.Request) -> web.Response:
        self._token(request)
        return _json(self._user_payload(self.bot))

    async def _user(self, request: web.Request) -> web.Response:
        self._token(request)
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise DiscordError(404, "Unknown User", 10013)
        return _json(self._user_payload(user))

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        self._token(request)
        return _json({"url": self.gateway_url, "shards": self.shard_count,
                      "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0,
                                              "max_concurrency": 1}})

    async def _application(self, request: web.Request) -> web.Response:
        self._token(request)
        return _json({"id": str(self.application_id), "name": self.bot.name, "description": "", "icon": None,
                      "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                      "owner": self._user_payload(self.owner), "team": None, "flags": 0,
                      "bot": self._user_payload(self.bot), "interactions_endpoint_url": None})

    async def _get_commands(self, request: web.Request) -> web.Response:
        self._token(request)
        guild_id = request.match_info.get("guild_id")
        return _json(self.commands.get(int(guild_id) if guild_id else None, []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        self._token(request)
        guild_id = request.match_info.get("guild_id")
        commands = [{**command, "id": str(self._snowflake()), "application_id": str(self.application_id),
                     "version": str(self._snowflake()), **({"guild_id": guild_id} if guild_id else {})}
                    for command in await request.json()]
        with self._lock:
            self.commands[int(guild_id) if guild_id else None] = commands
        return _json(commands)

    async def _channel(self, request: web.Request) -> web.Response:
        self._token(request)
        return _json(self._channel_payload(self._channel_of(request)))

    async def _member(self, request: web.Request) -> web.Response:
        self._token(request)
        guild = self.guilds.get(int(request.match_info["guild_id"]))
        user = guild.members.get(int(request.match_info["user_id"])) if guild else None
        if user is None:
            raise DiscordError(404, "Unknown Member", 10007)
        return _json(self._member_payload(guild, user))

    async def _typing(self, request: web.Request) -> web.Response:
        self._token(request)
        self._channel_of(request)
        return web.Response(status=204)

    async def _history(self, request: web.Request) -> web.Response:
        self._token(request)
        channel = self._channel_of(request)
        limit = int(request.query.get("limit", 50))
        with self._lock:
            found = [m for m in self.messages.values() if m["channel_id"] == str(channel.id)]
        return _json(sorted(found, key=lambda m: int(m["id"]), reverse=True)[:limit])

    async def _get_message(self, request: web.Request) -> web.Response:
        self._token(request)
        return _json(self._message_of(request, self._channel_of(request)))

    async def _create_message(self, request: web.Request) -> web.Response:
        token = self._token(request)
        channel = self._channel_of(request)
        body = await _body(request)
        reference = body.get("message_reference") or {}
        replied = self.messages.get(int(reference["message_id"])) if reference.get("message_id") else None
        if reference and replied is None and reference.get("fail_if_not_exists", True):
            raise DiscordError(400, "Invalid Form Body: Unknown message", 50035)
        message = self._message(channel, self.bot, body.get("content") or "", reply_to=replied)
        self._record(Sent("message", channel.id, channel.guild_id, int(message["id"]), message["content"],
                          self.bot.name, token, None, int(replied["id"]) if replied else None, body))
        await self._post(message)
        return _json(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        token = self._token(request)
        channel = self._channel_of(request)
        message = self._message_of(request, channel)
        if message["author"]["id"] != str(self.bot.id):
            raise DiscordError(403, "Cannot edit a message authored by another user", 50005)
        return _json(await self._edit(channel, message, await _body(request), token, None))

    async def _edit(self, channel: Channel, message: dict[str, Any], body: dict[str, Any], token: str | None,
                    webhook_id: int | None) -> dict[str, Any]:
        edited = {**message, "edited_timestamp": _iso(self._snowflake())}
        if "content" in body:
            edited["content"] = body["content"] or ""
        with self._lock:
            self.messages[int(message["id"])] = edited
        self._record(Sent("edit", channel.id, channel.guild_id, int(message["id"]), edited["content"],
                          edited["author"]["username"], token, webhook_id, None, body))
        await self._dispatch_to_guild(self.guilds[channel.guild_id], "MESSAGE_UPDATE",
                                      lambda c: self._event_for(c, edited))
        return edited

    async def _delete_message(self, request: web.Request) -> web.Response:
        self._token(request)
        channel = self._channel_of(request)
        message = self._message_of(request, channel)
        with self._lock:
            del self.messages[int(message["id"])]
        await self._dispatch_to_guild(self.guilds[channel.guild_id], "MESSAGE_DELETE", lambda c: {
            "id": message["id"], "channel_id": message["channel_id"], "guild_id": message["guild_id"]})
        return web.Response(status=204)

    async def _channel_webhooks(self, request: web.Request) -> web.Response:
        self._token(request)
        channel = self._channel_of(request)
        with self._lock:
            return _json([w for w in self.webhooks.values() if w["channel_id"] == str(channel.id)])

    async def _create_webhook(self, request: web.Request) -> web.Response:
        self._token(request)
        channel = self._channel_of(request)
        body = await request.json()
        webhook = {"id": str(self._snowflake()), "type": 1, "guild_id": str(channel.guild_id),
                   "channel_id": str(channel.id), "user": self._user_payload(self.bot), "name": body["name"],
                   "avatar": None, "token": secrets.token_urlsafe(32), "application_id": str(self.application_id)}
        with self._lock:
            self.webhooks[int(webhook["id"])] = webhook
        return _json(webhook)

    def _webhook_of(self, request: web.Request) -> dict[str, Any]:
        webhook = self.webhooks.get(int(request.match_info["webhook_id"]))
        if webhook is None or webhook["token"] != request.match_info["webhook_token"]:
            raise DiscordError(404, "Unknown Webhook", 10015)
        return webhook

    async def _execute_webhook(self, request: web.Request) -> web.Response:
        webhook = self._webhook_of(request)
        channel = self.channels[int(webhook["channel_id"])]
        body = await _body(request)
        username = body.get("username") or webhook["name"]
        author = {"id": webhook["id"], "username": username, "avatar": None, "discriminator": "0000", "bot": True,
                  "global_name": None, "public_flags": 0}
        message = self._message(channel, author, body.get("content") or "", webhook_id=int(webhook["id"]))
        self._record(Sent("webhook", channel.id, channel.guild_id, int(message["id"]), message["content"],
                          username, None, int(webhook["id"]), None, body))
        await self._post(message)
        if request.query.get("wait", "").lower() in ("true", "1"):     # discord.py sends wait=1
            return _json(message)
        return web.Response(status=204)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        webhook = self._webhook_of(request)
        channel = self.channels[int(webhook["channel_id"])]
        message = self._message_of(request, channel)
        if message.get("webhook_id") != webhook["id"]:
            raise DiscordError(404, "Unknown Message", 10008)
        return _json(await self._edit(channel, message, await _body(request), None, int(webhook["id"])))

    async def _unknown(self, request: web.Request) -> web.Response:
        route = f"{request.method} {request.path}"
        log.error("fake Discord: no route for %s", route)
        with self._changed:
            self.unknown_routes.append(route)
            self._changed.notify_all()
        return _json({"message": f"404: Not Found (the fake Discord has no {route})", "code": 0}, status=404)


def _iso(snowflake: int) -> str:
    """The time of an id, as Discord writes timestamps."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py reads a body as JSON only under that content type, no charset.
    return web.Response(body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})


class DiscordError(Exception):
    """Discord's error answer (HTTP `status`, JSON with its `message` and `code`), raised from a handler."""

    def __init__(self, status: int, message: str, code: int) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@web.middleware
async def _discord_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except DiscordError as e:
        return _json({"message": e.message, "code": e.code}, status=e.status)


async def _body(request: web.Request) -> dict[str, Any]:
    """A message request's JSON: the body, or its `payload_json` part when it carries files (multipart)."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        return json.loads(form["payload_json"])
    return await request.json()
