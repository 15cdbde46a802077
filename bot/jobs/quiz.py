"""Setting up a blind quiz (`bot.core.quiz`) for one persona, for the terminal and for Discord alike: its real
lines from the artifact, shown only as the privacy rules of the day allow, and lines the persona generates now.

The real lines are the person's held-out lines that training kept in the artifact (`training.artifact.
write_held_out`). They are shown only when the person behind the persona has not asked to be forgotten (by
account id, and by every name the persona was trained under), and only those that the blocklist lets out:
the rules training text is under. (The leak guard is not applied to them: it keeps training text out of what
the persona writes, while these lines are shown as the person's, on purpose; generated lines pass every
filter as replies do.) Both sides are then finished for the target the same way, so form gives nothing away.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

from bot.core.filters import Target
from bot.core.personas import PersonaRef
from bot.core.quiz import CANDIDATES_PER_ROUND, MAX_QUIZ_ROUNDS, QuizRound, pair_rounds
from bot.core.store import Store, StoreError
from bot.inference.engine import Engine
from training.artifact import ArtifactError, PersonaInfo, read_held_out
from training.dataset import normalise_name
from training.generation import attempt_seed
from training.terminal_text import shown


class QuizError(Exception):
    """No quiz can be set up; the message says why, for the person who asked."""


@dataclass(frozen=True, slots=True)
class Quiz:
    """The rounds of one quiz on the persona `name`, whose model is the artifact at `artifact` (resolved: the key
    its results are kept under)."""

    name: str
    artifact: Path
    rounds: list[QuizRound]


async def opted_out_refusal(store: Store, info: PersonaInfo) -> str | None:
    """Why the persona's real lines may not be shown (the person behind it asked to be forgotten, by account or
    by a name it was trained under), or None. A store that cannot say is a refusal: nothing of someone who may
    have asked is shown."""
    try:
        ids = {str(i) for i in await store.opted_out_ids()}
        names = {normalise_name(n) for n in await store.opted_out_names()}
    except StoreError as e:
        return f"the database cannot say who asked to be forgotten ({e}), so no real lines are shown"
    mine = {normalise_name(n) for n in (info.speaker, *info.speaker_names)}
    if ids & set(info.speaker_ids) or names & mine:
        return (f"the person {shown(info.speaker)} was trained on asked to be forgotten, so their real lines are "
                "never shown")
    return None


async def prepare_quiz(engine: Engine, store: Store, persona: PersonaRef | None, *, rounds: int, target: Target,
                       rng: random.Random, real: list[str] | None = None) -> Quiz:
    """The rounds of a quiz on `persona` (a registered one; None: the engine's own), at most `rounds`
    (`MAX_QUIZ_ROUNDS` at most), with lines finished for `target`. The real lines are the artifact's held-out
    ones, or `real` (an older artifact's, split from its exports as training split them). Raises `QuizError`
    when there is none to give."""
    rounds = max(1, min(rounds, MAX_QUIZ_ROUNDS))
    loaded = engine.persona if persona is None else await engine.load_persona(persona)
    name = persona.name if persona is not None else loaded.name
    if real is None:
        try:
            real = await asyncio.to_thread(read_held_out, loaded.path)
        except ArtifactError as e:
            raise QuizError(str(e)) from e
    if real is None:
        raise QuizError(f"{shown(name)}'s model was trained before quizzes and keeps no held-out real lines; "
                        "train it again (`/retrain`, or `personabot quiz DIR --data EXPORTS` in a terminal)")
    refusal = await opted_out_refusal(store, loaded.info)
    if refusal:
        raise QuizError(refusal)
    blocklist, check = loaded.output_filter.blocklist, loaded.output_filter
    shown_real = [check.finish(line, target) for line in real
                  if line.strip() and (blocklist is None or blocklist.check(line) is None)]
    if not shown_real:
        raise QuizError(f"none of {shown(name)}'s {len(real)} held-out real lines may be shown (the blocklist "
                        "refuses them all)")
    wanted = min(rounds, len(shown_real)) * CANDIDATES_PER_ROUND
    generated: list[str] = []
    seed = rng.randrange(2**31)
    for attempt in range(engine.max_tries):   # lines the filters refuse (a copied line) are drawn again
        todo = wanted - len(generated)
        if todo <= 0:
            break
        lines = await engine.lines(todo, target=target, persona=persona, seed=attempt_seed(seed, attempt, wanted))
        generated += [line.text for line in lines if line.rejected is None]
    paired = pair_rounds(shown_real, generated, rounds, rng)
    if not paired:
        raise QuizError(f"{shown(name)} generated no line that passes the filters; try again later")
    return Quiz(name, await asyncio.to_thread(Path(loaded.path).resolve), paired)
