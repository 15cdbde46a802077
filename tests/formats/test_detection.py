"""Every fixture is detected as its own format, and by no other importer with a higher score."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import formats
from training.formats.base import Source

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture_inputs() -> list[tuple[str, Path]]:
    """(format, path) for every fixture file of a format (at any depth, outside bad/), and for every folder
    directly in the fixtures of an archive format (a Slack export, a Twitter archive), which is read as a
    whole: the files inside such a folder are its members, not exports of their own."""
    found = []
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        archive = formats.get(folder.name).reads_archives
        for entry in sorted(folder.iterdir()):
            if entry.name == "bad":
                continue
            if entry.is_file():
                found.append((folder.name, entry))
            elif archive:
                found.append((folder.name, entry))
            else:
                found.extend((folder.name, p) for p in sorted(entry.rglob("*")) if p.is_file())
    return found


def test_every_format_has_fixtures():
    names = {i.name for i in formats.all_importers()}
    assert names == {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert {fmt for fmt, _ in fixture_inputs()} == names


@pytest.mark.parametrize("fmt,path", fixture_inputs(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_fixture_is_detected_as_its_own_format_and_by_no_other(fmt, path):
    source = Source(path)
    detected = formats.detect(source)
    assert detected is not None and detected.name == fmt
    for importer in formats.all_importers():
        # A fallback (any table, any text of posts) may also recognise a specific format's file; it is only
        # asked when no specific importer claims a file.
        if importer.name != fmt and not importer.fallback and (importer.reads_archives
                                                               or not (source.is_dir or source.is_zip)):
            # Not merely lower: below the detection threshold, so no other importer could ever claim it.
            assert importer.sniff(source) < formats.MIN_CONFIDENCE, importer.name
