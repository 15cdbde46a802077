"""Data sets from the Hugging Face hub, or saved locally, named `hf:...` wherever a file can be named.

    hf:OWNER/NAME[/CONFIG][@REVISION][:SPLIT]     a hub data set (default split: train)
    hf:DIR[:SPLIT]                                a folder written by `save_to_disk`, or of data files

Read through `datasets` with the user's own cache and token, so `HF_HUB_OFFLINE=1` works from the cache; a
local folder and a hub id go through the same `load_dataset` call. The columns get their roles as a table's
do (`training.formats.tables`: detected from their names, or `--columns`). `datasets` is an optional extra;
without it, the error gives the install command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult
from training.formats.tables import find_roles, rows_to_threads

PREFIX = "hf:"
INSTALL = 'pip install "datasets>=3"'
_HUB_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<config>[\w.-]+))?(?:@(?P<revision>[\w./-]+?))?"
                     r"(?::(?P<split>[\w.\[\]:%+-]+))?")


@dataclass(frozen=True, slots=True)
class HubName:
    """What `hf:...` names: a hub repository (with config and revision) or a local folder, and a split."""

    repo: str | None = None
    folder: Path | None = None
    config: str | None = None
    revision: str | None = None
    split: str = "train"


def is_hub_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def parse_hub_name(name: str) -> HubName:
    """`hf:OWNER/NAME/CONFIG@REV:SPLIT` or `hf:DIR:SPLIT`; anything else is a `DataError`."""
    rest = name[len(PREFIX):]
    if Path(rest).is_dir():
        return HubName(folder=Path(rest))
    head, sep, split = rest.rpartition(":")
    if sep and Path(head).is_dir():
        return HubName(folder=Path(head), split=split or "train")
    if rest.startswith(("/", ".", "~")):
        raise DataError(name, "no such folder", hint="check the path of the saved data set")
    match = _HUB_ID.fullmatch(rest)
    if match is None:
        raise DataError(name, "is neither a hub data set id nor a folder",
                        hint="name a hub data set as hf:OWNER/NAME (optionally /CONFIG, @REVISION, :SPLIT), "
                             "or a folder written by save_to_disk as hf:DIR")
    return HubName(repo=match["repo"], config=match["config"], revision=match["revision"],
                   split=match["split"] or "train")


def read_hub(name: str, options: ImportOptions) -> ParseResult:
    """Read a hub or local data set into threads, as a table is read."""
    where = parse_hub_name(name)
    dataset = _load(name, where)
    roles = find_roles(dataset.column_names, options.columns, name)
    result = ParseResult()
    result.notes.append(f"columns: {roles.describe()}")
    rows = _rows(dataset.select_columns(roles.columns()))
    voice = (where.repo or where.folder.name).rsplit("/", 1)[-1]
    rows_to_threads(rows, roles, name, f"hf:{where.repo or where.folder.resolve()}:{where.split}", voice, options,
                    result)
    return result


def _rows(dataset) -> Iterator[tuple[str, dict[str, Any]]]:
    """(place, row) pairs, converted a batch of columns at a time (a dict per row from Arrow costs more)."""
    number = 0
    for batch in dataset.iter(batch_size=4096):
        names = list(batch)
        for values in zip(*batch.values()):
            number += 1
            yield f"row {number}", dict(zip(names, values))


def _load(name: str, where: HubName):
    try:
        import datasets
    except ImportError as e:
        raise DataError(name, "reading data sets needs the `datasets` package", hint=f"install it: {INSTALL}") from e
    datasets.disable_progress_bars()
    try:
        if where.folder is not None and _saved_to_disk(where.folder):
            loaded = datasets.load_from_disk(str(where.folder))
            if isinstance(loaded, datasets.DatasetDict):
                if where.split not in loaded:
                    raise DataError(name, f"has no split {where.split!r}", hint="its splits: " + ", ".join(loaded))
                loaded = loaded[where.split]
            return loaded
        return datasets.load_dataset(str(where.folder) if where.folder is not None else where.repo, where.config,
                                     revision=where.revision, split=where.split)
    except DataError:
        raise
    except Exception as e:   # datasets and huggingface_hub raise many types for "not there", "not cached"...
        raise DataError(name, f"cannot load this data set: {_reason(e)}",
                        hint="check the id, config and split; offline (HF_HUB_OFFLINE=1) only data sets already "
                             "in your Hugging Face cache can be read") from e


def _saved_to_disk(folder: Path) -> bool:
    """Whether `folder` was written by `save_to_disk` (a data set or a dictionary of splits)."""
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file() or \
        (folder / "state.json").is_file()


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
