"""The blind quiz: can a person tell a persona's generated line from the person's real one?

Each round shows two lines of similar length in a random order: one real line of the person that training held
out (the model never saw it) and one the persona generated. The person picks the line they think is real. The
figure is the share of rounds in which they picked the generated one: 50% means the two cannot be told apart,
0% means every generated line was spotted. This module holds the quiz's rules only (how lines pair up, how a
round is scored, how results read); getting the lines, with the privacy rules applied, is `bot.jobs.quiz`'s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from training.fidelity import words
from training.terminal_text import shown

# Rounds of one quiz unless asked otherwise, and the most one quiz may ask for (each costs generated lines).
QUIZ_ROUNDS = 10
MAX_QUIZ_ROUNDS = 25
# Generated lines sampled per round: the more there are, the closer in length each real line's partner is.
CANDIDATES_PER_ROUND = 3


@dataclass(frozen=True, slots=True)
class QuizRound:
    """Two lines to choose from: `options` in the order shown."""

    real: str
    generated: str
    real_first: bool

    @property
    def options(self) -> tuple[str, str]:
        return (self.real, self.generated) if self.real_first else (self.generated, self.real)

    def fooled_by(self, picked: int) -> bool:
        """Whether picking option `picked` (0 or 1, as `options` orders them) took the generated line for the
        real one."""
        if picked not in (0, 1):
            raise ValueError("a quiz round has options 0 and 1")
        return (picked == 0) != self.real_first


def pair_rounds(real: Sequence[str], generated: Sequence[str], rounds: int, rng: random.Random) -> list[QuizRound]:
    """Up to `rounds` rounds: real lines drawn at random, each paired with the unused generated line closest to
    it in length (words, then characters), so that length gives little away, in a random order. Fewer rounds
    when either side runs out of lines."""
    count = min(rounds, len(real), len(generated))
    pool = list(generated)
    out = []
    for line in rng.sample(list(real), count):
        size = (len(words(line)), len(line))
        best = min(range(len(pool)), key=lambda i: (abs(len(words(pool[i])) - size[0]), abs(len(pool[i]) - size[1])))
        out.append(QuizRound(line, pool.pop(best), rng.random() < 0.5))
    return out


@dataclass(frozen=True, slots=True)
class QuizScore:
    """Rounds answered, and in how many of them the generated line was taken for the real one."""

    rounds: int = 0
    fooled: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fooled <= self.rounds:
            raise ValueError(f"a quiz score of {self.fooled} fooled in {self.rounds} rounds")

    def __add__(self, other: "QuizScore") -> "QuizScore":
        return QuizScore(self.rounds + other.rounds, self.fooled + other.fooled)

    def summary(self, persona: str) -> str:
        """The result in one line a person understands."""
        if not self.rounds:
            return "no rounds answered yet"
        return (f"{shown(persona)}'s generated line was taken for the real one in {self.fooled} of {self.rounds} "
                f"round{'s' if self.rounds != 1 else ''} ({self.fooled / self.rounds:.0%}; 50% means they cannot "
                "be told apart)")


def quiz_line(score: QuizScore | None, persona: str, how: str) -> str:
    """How the kept results of an artifact read where the bot shows them (/persona info); `how` says how to take
    the quiz there."""
    if score is None or not score.rounds:
        return f"no quiz taken yet ({how})"
    return f"{score.summary(persona)}, over all quizzes on this model"
