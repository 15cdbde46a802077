"""Several personas in one bot: the rules of the registry and of which persona speaks where, in one place.

* Registering: a name (what people and webhooks see) and a readable persona artifact
  (`training.artifact.read_persona`: a whole model or a LoRA adapter on a named base), owned by a guild or
  global. A guild's admins register personas for their guild from MODELS_DIR only (never any directory of the
  bot's machine); global personas, and any directory, are the bot's owners' (and the `personabot persona`
  command's, run by whoever runs the bot).
* Seeing: a guild sees its own personas and the global ones, never another guild's; a name is looked up the
  same way (the guild's own first).
* Assigning: a persona for the whole bot (owners, global personas only), for a guild, or for a channel; a
  guild's admins govern their guild's assignments only. `resolve` gives the persona at a place: the nearest
  assignment wins (channel, then guild, then the bot's), None meaning "the bot's configured persona".

Who someone is comes from bot/tenancy.py's `Authority`; the rows live in bot/store.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from bot.core.persona_names import name_problem
from bot.core.store import Assignment, PersonaEntry, Store, StoreError
from bot.core.tenancy import GUILD_ADMINS_ONLY, OWNERS_ONLY, Authority

log = logging.getLogger("personabot.personas")

Scope = Literal["bot", "guild", "channel"]
SCOPES: tuple[Scope, ...] = ("channel", "guild", "bot")    # nearest first
@dataclass(frozen=True, slots=True)
class PersonaRef:
    """A registered persona as a request names it: the artifact to run, the name it
    speaks under (a webhook's name; prompts keep the speaker name the artifact was trained on), and default
    sampling settings over the artifact's own."""

    artifact: Path
    name: str
    generation: tuple[tuple[str, Any], ...] = ()
    avatar_url: str | None = field(default=None, compare=False)   # what its webhook messages show
    owner: int | None = field(default=None, compare=False)   # its guild (None: global): whose memory share it uses

    @classmethod
    def of(cls, entry: PersonaEntry) -> "PersonaRef":
        """The ref of a registered persona."""
        return cls(Path(entry.artifact_path), entry.name, tuple(sorted(entry.generation.items())),
                   entry.avatar_url, entry.guild_id)

    @property
    def key(self) -> tuple[Path, tuple[tuple[str, Any], ...]]:
        """What a loaded persona is shared by: two names of one artifact with one set of settings share it."""
        return self.artifact, self.generation


class PersonaError(Exception):
    """A persona request that cannot be done; the message says why, for the person who asked."""


def check_generation(overrides: dict[str, Any]) -> dict[str, Any]:
    """Default sampling settings for a persona (only those given), checked; PersonaError names the problems."""
    from training.generation import GenerationSettings  # here: it loads torch, which the registry's rules need not

    known = {f.name for f in fields(GenerationSettings)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise PersonaError(f"unknown generation settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    problems = GenerationSettings().with_overrides(**given).check()
    if problems:
        raise PersonaError(f"bad generation settings: {'; '.join(problems)}")
    return given


def check_artifact(directory: str | Path) -> Path:
    """The artifact directory, absolute, when it holds a readable persona artifact; PersonaError names it and
    what is wrong otherwise. Reads files: call it off the event loop."""
    from training.artifact import ArtifactError, read_persona  # here: it loads torch (see check_generation)

    path = Path(directory).expanduser().resolve()
    try:
        read_persona(path)
    except ArtifactError as e:
        raise PersonaError(f"cannot register {directory}: {e}") from e
    return path


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/])/[^\s'\"`,;:()\[\]]+")


def shown_paths(text: str, models_dir: Path) -> str:
    """`text` (an error for people) with every absolute path of the bot's machine made relative to MODELS_DIR,
    or cut to its last part when outside it: where the bot keeps its files is nobody's business."""
    roots = [Path(models_dir).expanduser().absolute(), Path(models_dir).expanduser().resolve()]

    def shown(match: re.Match) -> str:
        path = Path(match[0].rstrip("."))
        tail = match[0][len(match[0].rstrip(".")):]
        for root in roots:
            if path == root:
                return "MODELS_DIR" + tail
            if path.is_relative_to(root):
                return str(path.relative_to(root)) + tail
        return f"…/{path.name}{tail}"

    return _ABSOLUTE_PATH.sub(shown, text)


def _owner_problem(authority: Authority, guild_id: int | None) -> str | None:
    """Why `authority` may not govern what `guild_id` owns (None: global), or None."""
    if authority.is_owner:
        return None
    if guild_id is None:
        return OWNERS_ONLY
    if not authority.is_guild_admin or authority.guild_id != guild_id:
        return GUILD_ADMINS_ONLY
    return None


def _within(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder.expanduser().resolve())


NOT_THIS_SERVERS = ("that artifact is not one this server may use: a server's admins register their own server's "
                    "artifacts (what its persona retrains produced) and those no server owns")


async def artifact_problem(store: Store, authority: Authority, artifact: Path, guild_id: int | None) -> str | None:
    """Why `authority` may not register the artifact at `artifact` (absolute, resolved) for `guild_id`, or None.
    An artifact a server owns (`Store.artifact_owner`) is that server's alone; one no server owns is the owners'
    to share; the owners may register any. Asks the store only: call it before any file of it is read for them."""
    if authority.is_owner:
        return None
    owner = await store.artifact_owner(artifact)
    return NOT_THIS_SERVERS if owner is not None and owner != guild_id else None


async def register(store: Store, authority: Authority, name: str, artifact: Path, *,
                   guild_id: int | None, models_dir: Path | None = None,
                   generation: dict[str, Any] | None = None, avatar_url: str | None = None,
                   max_per_guild: int | None = None, taken: Iterable[str] = ()) -> PersonaEntry:
    """Register the artifact at `artifact` (checked by `check_artifact`, off the event loop, first) as
    `name`, owned by `guild_id` (None: global), its webhook messages showing `avatar_url` (http or https).
    Someone not an owner may register for their own guild only, only an artifact inside `models_dir` that no
    other server owns, and no more than `max_per_guild` personas for it. The owners registering an artifact no
    server owns for a guild give it to that guild (unless a global persona runs it: that one is shared). The
    name must not look like one of `taken` (the server's members' names) nor like a persona the guild sees."""
    # A persona of the same name is the store's to refuse (the guild's own) or one it hides (a global one);
    # one that only looks like it would pass for it.
    personas_seen = [p.name for p in await listed(store, guild_id) if p.name.casefold() != name.casefold()]
    # Off the event loop: a big server's members are thousands of names to compare.
    problem = _owner_problem(authority, guild_id) or await asyncio.to_thread(
        name_problem, name, taken=[*taken, *personas_seen])
    if problem:
        raise PersonaError(problem)
    if avatar_url is not None and not avatar_url.startswith(("https://", "http://")):
        raise PersonaError(f"{avatar_url!r} is not an image address (http:// or https://)")
    if not artifact.is_absolute():
        raise PersonaError(f"{artifact}: give the artifact directory as checked (absolute)")
    if not authority.is_owner and (models_dir is None or not _within(artifact, models_dir)):
        raise PersonaError(f"{artifact} is not inside MODELS_DIR ({models_dir}): a server's admins register "
                           "artifacts from there only")
    problem = await artifact_problem(store, authority, artifact, guild_id)
    if problem:
        raise PersonaError(problem)
    if guild_id is not None and max_per_guild is not None and await store.count_personas(guild_id) >= max_per_guild:
        raise PersonaError(f"this server has {max_per_guild} personas, the most one server may register "
                           "(PERSONAS_PER_SERVER); remove one first")
    try:
        entry = await store.add_persona(name, artifact, guild_id=guild_id,
                                        generation=check_generation(generation or {}), avatar_url=avatar_url)
    except StoreError as e:
        if "exists already" in str(e):
            raise PersonaError(str(e)) from e
        raise
    if authority.is_owner and guild_id is not None and await store.artifact_owner(artifact) is None:
        if not any(p.artifact_path == artifact for p in await store.personas([None])):
            await store.claim_artifact(artifact, guild_id)
    return entry


async def listed(store: Store, guild_id: int | None, *, prefix: str = "",
                 limit: int | None = None) -> list[PersonaEntry]:
    """The personas seen from `guild_id` (its own, then global ones with a name it does not use itself), by
    name; with `prefix`, those whose name starts with it; at most `limit`. Only these rows are read."""
    owners = [None] if guild_id is None else [guild_id, None]
    # A global persona hidden by one of the guild's own names takes a place in the query's limit: ask for more.
    seen = await store.personas(owners, prefix=prefix, limit=None if limit is None else 2 * limit)
    own = {p.name.casefold() for p in seen if p.guild_id is not None}
    shown = [p for p in seen if p.guild_id is not None or p.name.casefold() not in own]
    return shown if limit is None else shown[:limit]


async def find(store: Store, guild_id: int | None, name: str) -> PersonaEntry:
    """The persona `name` as seen from `guild_id`; PersonaError when there is none there."""
    found = await store.find_persona(name, guild_id)
    if found is None:
        where = "for this bot" if guild_id is None else "in this server"
        raise PersonaError(f"there is no persona named {name!r} {where}")
    return found


async def remove(store: Store, authority: Authority, name: str, *, guild_id: int | None) -> int:
    """Remove the persona `name` owned by `guild_id` (None: the global one): how many assignments went
    with it. Only that owner's persona is looked at, never a global one from a guild or the reverse."""
    problem = _owner_problem(authority, guild_id)
    if problem:
        raise PersonaError(problem)
    entry = await store.find_persona(name, guild_id)
    if entry is None or entry.guild_id != guild_id:
        owned = "global persona" if guild_id is None else f"persona of guild {guild_id}"
        raise PersonaError(f"there is no {owned} named {name!r}")
    dropped = await store.remove_persona(entry.id)
    return dropped or 0


def _place(authority: Authority, scope: Scope, channel_id: int | None,
           channel_guild_id: int | None) -> tuple[int | None, int | None]:
    """(scope id, guild id) of the place `authority` means, checked against what they govern."""
    if scope == "bot":
        if not authority.is_owner:
            raise PersonaError(OWNERS_ONLY)
        return None, None
    guild_id = authority.guild_id if scope == "guild" else channel_guild_id
    if guild_id is None:
        raise PersonaError("a server or channel assignment is made in a server (this is not one)"
                           if scope == "guild" else "that channel belongs to no server known here")
    problem = _owner_problem(authority, guild_id)
    if problem:
        raise PersonaError(problem if authority.guild_id == guild_id else
                           "that is not a channel of this server")
    if scope == "channel" and channel_id is None:
        raise PersonaError("a channel assignment needs the channel")
    return (guild_id if scope == "guild" else channel_id), guild_id


async def assign(store: Store, authority: Authority, name: str, scope: Scope, *, channel_id: int | None = None,
                 channel_guild_id: int | None = None) -> PersonaEntry:
    """Make `name` the persona at `scope`: the bot (owners; a global persona), `authority`'s guild, or the
    channel `channel_id` of guild `channel_guild_id`. The persona is looked up as that guild sees it."""
    scope_id, guild_id = _place(authority, scope, channel_id, channel_guild_id)
    entry = await find(store, guild_id, name)
    await store.assign_persona(entry.id, scope, scope_id, guild_id)
    return entry


async def unassign(store: Store, authority: Authority, scope: Scope, *, channel_id: int | None = None,
                   channel_guild_id: int | None = None) -> bool:
    """Clear the assignment at `scope` (checked as in `assign`); False when there was none."""
    scope_id, _ = _place(authority, scope, channel_id, channel_guild_id)
    return await store.unassign_persona(scope, scope_id)


def nearest(assignments: list[Assignment], channel_id: int | None, guild_id: int | None) -> Assignment | None:
    """The assignment that decides who speaks in `channel_id` of `guild_id`: the channel's, else the guild's,
    else the bot's; None when none of them is set."""
    wanted = {"channel": channel_id, "guild": guild_id, "bot": None}
    for scope in SCOPES:
        if scope != "bot" and wanted[scope] is None:
            continue
        match = next((a for a in assignments if a.scope == scope and a.scope_id == wanted[scope]), None)
        if match is not None:
            return match
    return None


async def assignment_at(store: Store, channel_id: int | None, guild_id: int | None) -> Assignment | None:
    """The assignment that decides who speaks in `channel_id` of `guild_id` (None in a DM); None when none
    does (the bot's configured persona speaks)."""
    places = [("channel", channel_id)] * (channel_id is not None) + [("guild", guild_id)] * (guild_id is not None)
    return nearest(await store.assignments(bot=True, places=places), channel_id, guild_id)


async def resolve(store: Store, channel_id: int | None, guild_id: int | None) -> PersonaEntry | None:
    """The persona that speaks in `channel_id` of `guild_id` (None in a DM): the nearest assignment's, or
    None meaning the bot's configured persona (PERSONA_MODEL)."""
    found = await assignment_at(store, channel_id, guild_id)
    return found.persona if found else None


async def unload_if_unnamed(store: Store, forget: Callable[[Path], Awaitable[int]], artifact: Path) -> None:
    """Unload `artifact`'s loaded personas with `forget` (the engine's) when no registered persona names it any
    more (after a removal, a retrain or a rollback). Never raises: the pool's own budget frees the memory later
    anyway."""
    try:
        if any(p.artifact_path == artifact for p in await store.personas()):
            return
        await forget(artifact)
    except Exception:
        log.exception("could not unload %s, which no persona names any more", artifact)


def operator(guild_id: int | None = None) -> Authority:
    """Whoever runs the `personabot persona` command on the bot's machine: an owner (global powers)."""
    return Authority(user_id=0, guild_id=guild_id, is_owner=True, is_guild_admin=True)
