"""The importer registry: one module per export format, each registering its importer with `@register`.

Every module in this package is imported on first use, so adding a format is adding a module.
`detect` picks the importer most sure of an input; `--format NAME` bypasses detection via `get`.
"""

from __future__ import annotations

import importlib
import pkgutil

from training.errors import DataError
from training.formats.base import Importer, ImportOptions, ParseResult, Skip, Source, Thread

__all__ = ["Importer", "ImportOptions", "ParseResult", "Skip", "Source", "Thread", "register", "get",
           "all_importers", "detect"]

_REGISTRY: dict[str, Importer] = {}
_loaded = False

# Below this score an input is "not recognised"; detection never guesses on a weak signal.
MIN_CONFIDENCE = 0.5


def register(cls: type[Importer]) -> type[Importer]:
    """Class decorator: make an importer available by its `name`."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise RuntimeError(f"two importers are named {cls.name!r}")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def all_importers() -> list[Importer]:
    """Every registered importer, sorted by name."""
    _load_all()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get(name: str) -> Importer:
    """The importer called `name`; an unknown name lists the known ones."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise DataError(None, f"unknown format {name!r}", hint=f"known formats: {known}") from None


def detect(source: Source) -> Importer | None:
    """The importer most sure that `source` is its format, or None when none is sure enough. Fallback
    importers (any table, any text of posts) are asked only when no importer of a specific format is."""
    for fallback in (False, True):
        best: tuple[float, str] | None = None
        for importer in all_importers():
            if importer.fallback != fallback or ((source.is_dir or source.is_zip) and not importer.reads_archives):
                continue
            score = importer.sniff(source)
            if score >= MIN_CONFIDENCE and (best is None or score > best[0]):
                best = (score, importer.name)
        if best:
            return _REGISTRY[best[1]]
    return None
