"""Does a persona sound like the person? Its generated lines measured against the person's real lines.

Validation loss says how well a model predicts the corpus, not whether its lines pass for the person's. This
module compares lines a persona generated with real lines of the corpus that its model never trained on
(the validation units of the training split, found with the same seed and fraction, so they share no text
with training):

- attribution: a character n-gram classifier (scikit-learn), trained on the real training lines of the
  persona against those of the other speakers, labels the generated lines; the share it takes for the
  persona stands beside the same share for the persona's held-out real lines (the ceiling: what a perfect
  imitation would get) and for the other speakers' held-out lines (the floor: what any chat line gets).
  A single-voice corpus has no one to tell the persona from: there is no attribution, and the other
  figures are compared with the persona's held-out lines instead;
- diversity: distinct-1 and distinct-2 of the generated lines and of the held-out real lines (a persona
  repeating one line scores low however well that line is attributed);
- length: both medians in words and the Wasserstein distance between the two distributions of word counts;
- copying: the share of generated lines the bot's leak guard refuses (a check passed in by the caller,
  since `training/` never imports `bot/`): attribution is cheap to win by repeating training lines.

Everything here is deterministic for the same inputs and seed, and linear in the input size apart from
the classifier itself.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from training.errors import DataError
from training.terminal_text import shown

if TYPE_CHECKING:
    from training.conversation import Conversation

# Words as distinct-n and line lengths count them: letters and digits, with inner apostrophes ("don't").
# Punctuation and emoji are left out, so "lol" and "lol!!" are one word and an emoji-only line has none.
_WORD = re.compile(r"\w+(?:['’]\w+)*")

# Lines a persona samples for its report: enough for a share to move in steps of 2.5%, few enough to add
# seconds, not minutes, to a training run on a CPU.
FIDELITY_LINES = 40

# The most real lines of each side the classifier learns from (a seeded sample beyond it).
CLASSIFIER_LINES = 5000

# The attribution classifier's features: character n-grams within word boundaries, which carry a writer's
# spelling, casing, punctuation and emoji habits without needing much data.
_NGRAMS = (2, 4)


def words(line: str) -> list[str]:
    """The lower-cased word tokens of a line (the unit of distinct-n and of line lengths)."""
    return _WORD.findall(line.casefold())


def distinct_n(lines: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all word n-grams of `lines` (n-grams never span two lines); 0.0 for none."""
    if n < 1:
        raise ValueError("distinct_n: n must be at least 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for line in lines:
        tokens = words(line)
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i:i + n]))
            total += 1
    return len(seen) / total if total else 0.0


@dataclass(frozen=True, slots=True)
class FidelityReport:
    """How well a persona's generated lines pass for the person's (see the module docstring)."""

    persona: str                 # the name the persona speaks as
    lines: int                   # generated lines measured
    attribution: float | None    # share of generated lines the classifier takes for the persona (None: single voice)
    ceiling: float | None        # share of the persona's held-out real lines taken for it
    floor: float | None          # share of the other speakers' held-out real lines taken for it
    compared: str                # what attribution compares; for a single voice, why there is none
    distinct1: float             # generated lines: distinct word unigrams / all unigrams
    distinct2: float
    real_distinct1: float        # the persona's held-out real lines
    real_distinct2: float
    copied: float | None         # share of generated lines the leak guard refuses; None: not checked
    median_words: float          # generated
    real_median_words: float     # held-out real
    length_distance: float       # Wasserstein distance between the word counts of both sets
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "FidelityReport | None":
        """The report from its JSON form; None when missing or malformed (an older persona.json), never an
        exception: a report is something to show, and an artifact without one is still a good artifact."""
        if not isinstance(data, dict):
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            kind = _FIELD_KINDS[f.name]
            if value is None and kind.endswith("?"):
                values[f.name] = None
                continue
            kind = kind.rstrip("?")
            if kind == "str" and isinstance(value, str):
                values[f.name] = value
            elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
                values[f.name] = value
            elif (kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value)):
                values[f.name] = float(value)
            else:
                return None
        return cls(**values)

    def summary(self) -> str:
        """One line a person understands: attribution beside its ceiling and floor, then, briefly, diversity,
        length and copying (for a single voice, only those, and why)."""
        name = shown(self.persona)
        rest = (f"distinct-2 {self.distinct2:.2f} (real {self.real_distinct2:.2f}); "
                f"median {self.median_words:g} words (real {self.real_median_words:g})")
        if self.copied is not None:
            rest += f"; copied {_percent(self.copied)}"
        rest += f"; {self.lines} lines"
        if self.attribution is None:
            return f"no attribution ({self.compared}); {rest}"
        ceiling = _percent(self.ceiling) if self.ceiling is not None else "n/a"
        floor = _percent(self.floor) if self.floor is not None else "n/a"
        return (f"taken for {name} in {_percent(self.attribution)} of lines; {name}'s own real lines: {ceiling}; "
                f"others': {floor}; {rest}")


def fidelity_line(report: FidelityReport | None) -> str:
    """How a persona's report reads where the bot shows it (/status, /persona info): its summary, or how an
    older artifact, trained before reports, gets one."""
    if report is None:
        return ("not measured (trained before fidelity reports: `personabot eval DIR --data EXPORTS` measures "
                "it)")
    return report.summary()


# The JSON type of each report field ("?": may be null), checked by `from_json`.
_FIELD_KINDS = {
    "persona": "str", "lines": "int", "attribution": "float?", "ceiling": "float?", "floor": "float?",
    "compared": "str", "distinct1": "float", "distinct2": "float", "real_distinct1": "float",
    "real_distinct2": "float", "copied": "float?", "median_words": "float", "real_median_words": "float",
    "length_distance": "float", "seed": "int",
}


def _percent(share: float) -> str:
    return f"{share:.0%}"


@dataclass(frozen=True, slots=True)
class HeldOutLines:
    """Real lines of a corpus for measuring one persona, split as its training split them."""

    persona_train: list[str]     # the persona's turns in training units
    others_train: list[str]      # other speakers' turns in those units
    persona_heldout: list[str]   # the persona's turns in validation units (never trained on)
    others_heldout: list[str]
    others: int                  # number of other speakers in those units


def split_lines(conversations: Sequence[Conversation], speaker_query: str, *, val_fraction: float | None = None,
                seed: int | None = None, unit_responses: int | None = None) -> HeldOutLines:
    """The corpus' real lines for measuring the persona of `speaker_query`, split exactly as training splits
    them (`training.dataset`: the same speaker match, units and seeded assignment), so held-out lines are
    ones a model trained with that fraction and seed never saw. Settings left out are training's defaults
    (`DatasetConfig`); for an artifact, pass those its persona.json records.

    Raises `DataError` for an unknown speaker or when none of the persona's turns can be held out."""
    # training.dataset brings torch with it: imported here, so that measuring alone stays light.
    from training.dataset import DatasetConfig, assign_split, match_speaker, split_units

    defaults = DatasetConfig()
    speaker = match_speaker(conversations, speaker_query)
    units = split_units(conversations, speaker,
                        defaults.unit_responses if unit_responses is None else unit_responses)
    train, val = assign_split(units, defaults.val_fraction if val_fraction is None else val_fraction,
                              defaults.seed if seed is None else seed)

    def lines(part, target: bool) -> list[str]:
        return [t.text for u in part for t in u.turns if t.is_target == target]

    held = HeldOutLines(lines(train, True), lines(train, False), lines(val, True), lines(val, False),
                        len({t.speaker.casefold() for u in units for t in u.turns if not t.is_target}))
    if not held.persona_heldout:
        raise DataError(None, f"all of {speaker.name}'s turns are in one short conversation, so none can be "
                        "held out to measure the persona against", hint="add more exports with this speaker")
    return held


def measure_fidelity(generated: Sequence[str], lines: HeldOutLines, *, persona: str, seed: int = 0,
                     copied: Callable[[str], bool] | None = None) -> FidelityReport:
    """Measure `generated` (lines the persona wrote; empty ones count as lines said, with no words) against
    the real lines of `lines`. `copied` is the leak guard's refusal test, when the caller has one."""
    if not generated:
        raise ValueError("measure_fidelity: no generated lines to measure")
    if not lines.persona_heldout:
        raise ValueError("measure_fidelity: no held-out real lines of the persona to measure against")
    generated = list(generated)
    attribution, ceiling, floor, compared = _attribution(generated, lines, persona, seed)
    counts = [len(words(line)) for line in generated]
    real_counts = [len(words(line)) for line in lines.persona_heldout]
    from scipy.stats import wasserstein_distance  # scipy is slow to import; only measuring needs it

    return FidelityReport(
        persona=persona, lines=len(generated), attribution=attribution, ceiling=ceiling, floor=floor,
        compared=compared, distinct1=distinct_n(generated, 1), distinct2=distinct_n(generated, 2),
        real_distinct1=distinct_n(lines.persona_heldout, 1), real_distinct2=distinct_n(lines.persona_heldout, 2),
        copied=sum(map(copied, generated)) / len(generated) if copied is not None else None,
        median_words=float(statistics.median(counts)), real_median_words=float(statistics.median(real_counts)),
        length_distance=float(wasserstein_distance(counts, real_counts)), seed=seed)


def at_most(texts: list[str], seed: int, limit: int = CLASSIFIER_LINES) -> list[str]:
    """`texts`, or a seeded sample of `limit` of them (in their order): the classifier's time and memory, and an
    artifact's quiz lines, stay bounded on a corpus of years of chat."""
    if len(texts) <= limit:
        return texts
    import random

    keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[i] for i in keep]


def _attribution(generated: list[str], lines: HeldOutLines, persona: str,
                 seed: int) -> tuple[float | None, float | None, float | None, str]:
    """(attribution, ceiling, floor, what was compared): shares the classifier takes for the persona."""
    name = shown(persona)
    if not lines.others or not lines.others_train or not lines.persona_train:
        why = ("the corpus has no other speaker" if not lines.others
               else "the training part has no lines of the other speakers" if not lines.others_train
               else f"the training part has no lines of {name}")
        compared = (f"single voice: {why}, so no classifier can tell {name} from anyone; diversity, length and "
                    f"copying are compared with {name}'s {len(lines.persona_heldout)} held-out real lines instead")
        return None, None, None, compared
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    classifier = Pipeline([
        ("ngrams", TfidfVectorizer(analyzer="char_wb", ngram_range=_NGRAMS, sublinear_tf=True)),
        # Balanced: the persona is usually a minority of the lines, and its share must not set the threshold.
        ("linear", LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)),
    ])
    mine, theirs = at_most(lines.persona_train, seed), at_most(lines.others_train, seed)
    classifier.fit(mine + theirs, [1] * len(mine) + [0] * len(theirs))

    def share(texts: list[str]) -> float | None:
        return float(classifier.predict(texts).mean()) if texts else None

    speakers = "speaker" if lines.others == 1 else "speakers"
    compared = (f"{name} against {lines.others} other {speakers} ({len(lines.persona_train)} and "
                f"{len(lines.others_train)} real lines to learn from; {len(lines.persona_heldout)} and "
                f"{len(lines.others_heldout)} held out)")
    return share(generated), share(lines.persona_heldout), share(lines.others_heldout), compared
