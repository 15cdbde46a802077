"""Every fixture is detected as its own format, and by no other importer with a higher score."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import formats
from training.formats.base import Source

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture_inputs() -> list[tuple[str, Path]]:
    """(format, path) for every file directly in a format's fixture folder, and for folders that an
    archive format claims as a whole (a Slack export, a Twitter archive)."""
    found = []
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for entry in sorted(folder.iterdir()):
            if entry.name == "bad":
                continue
            if entry.is_file() or formats.get(folder.name).reads_archives:
                found.append((folder.name, entry))
    return found


def test_every_format_has_fixtures():
    names = {i.name for i in formats.all_importers()}
    assert names == {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert len(names) == 13


@pytest.mark.parametrize("fmt,path", fixture_inputs(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_fixture_is_detected_as_its_own_format(fmt, path):
    source = Source(path)
    detected = formats.detect(source)
    assert detected is not None and detected.name == fmt
    mine = formats.get(fmt).sniff(source)
    for importer in formats.all_importers():
        if importer.name != fmt and (importer.reads_archives or not (source.is_dir or source.is_zip)):
            assert importer.sniff(source) < mine, importer.name
