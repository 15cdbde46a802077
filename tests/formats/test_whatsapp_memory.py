"""The WhatsApp importer holds little more than the messages it returns (issue 9, item 5: 12.7x the file
size was held, 3.6 GiB for a 300 MB export).

What the returned messages take (a Message, a datetime and a str each) is the floor; everything above it is
the importer's own working memory, which used to be twelve times the file (the whole text, its lines, a
match object per line, every record at once) and must now stay a small part of it.
"""

from __future__ import annotations

import random
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

from training.formats import ImportOptions, Source, get

WORDS = ("pizza tonight movie rain bus late coffee keys train game office beach party cake dog lunch music "
         "exam phone bike window garden book ticket").split()


def _export(path: Path, size: int) -> Path:
    """An Android export of about `size` bytes: five people, 2 to 14 words a message, some emoji and some
    messages of two lines."""
    rng = random.Random(1)
    t = datetime(2019, 1, 1, 9, 0)
    lines, written = [], 0
    while written < size:
        speaker = rng.choice(["Bob", "Carol", "Alice", "Dana Okafor", "+49 151 2345678"])
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
        text += " 😂" if rng.random() < 0.05 else ""
        text += "\nand another line" if rng.random() < 0.05 else ""
        lines.append(f"{t:%d/%m/%Y, %H:%M} - {speaker}: {text}\n")
        written += len(lines[-1].encode())
        t += timedelta(seconds=rng.randint(5, 900))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_reading_an_export_holds_little_beyond_the_messages(tmp_path: Path) -> None:
    path = _export(tmp_path / "chat.txt", 3 * 1024 ** 2)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        result = get("whatsapp").parse(Source(path), ImportOptions())
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.kept > 30_000
    working = (peak - kept) / size
    assert working < 0.5, f"the importer's own memory peaked at {working:.1f}x the file size"
    # With short messages (about 75 bytes a line here) the messages themselves take about 3.1x the file.
    assert peak / size < 3.5, f"reading took {peak / size:.1f}x the file size"
