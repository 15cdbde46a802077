"""Seconds each importer takes on the hostile inputs of issue 9 (item 5), one fresh process per case.

The cases are the ones the issue reported (a 73 KB WhatsApp message of `a • `, a 2.2 KB Markdown heading full
of spaces, a DiscordChatExporter CSV date followed by 40,000 spaces) and the others found while fixing them.
Each runs in its own process with a time limit, so a case that backtracks for minutes is reported as
"> LIMIT" instead of stalling the run.

    .venv/bin/python bench/import_pathological.py                 # this checkout
    .venv/bin/python bench/import_pathological.py --root OLD_TREE  # e.g. `git archive` of an older commit

The last line printed is one JSON object: case -> seconds (or null past the limit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _csv(*cells: str) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' for c in cells) + "\n"


# case -> (importer, file name, file text)
CASES: dict[str, tuple[str, str, str]] = {
    "whatsapp: 73 KB message of 'a • '": (
        "whatsapp", "chat.txt", "12/29/23, 8:02 PM - Dana: " + "a • " * 12_160 + "\n"),
    "whatsapp: 73 KB of spaces then '<'": (
        "whatsapp", "chat.txt", "12/29/23, 8:02 PM - Dana: " + " " * 73_000 + "<x\n"),
    "script-markdown: 2.2 KB heading of spaces": (
        "script-markdown", "s.md", "| Speaker | Text |\n|---|---|\n| ANA | hi |\n\n# a" + " " * 2_200 + "b\n"),
    "discord-csv: a date and 40,000 spaces": (
        "discord-csv", "c.csv", "AuthorID,Author,Date,Content,Attachments,Reactions\n"
        + _csv("1", "Ana", "3/11/2024" + " " * 40_000 + "x", "hi", "", "")),
    "chat-tokens: 73 KB of spaces": (
        "chat-tokens", "c.txt", "<|USER|> a" + " " * 73_000 + "b <|ASSISTANT|> ok <|End|>\n"),
    "twitter: 73 KB of spaces": (
        "twitter", "tweets.js", "window.YTD.tweets.part0 = " + json.dumps([{"tweet": {
            "id_str": "1", "full_text": "a" + " " * 73_000 + "b",
            "created_at": "Sat Dec 06 18:20:30 +0000 2025"}}])),
    "script-play: 73 KB of spaces in a verse": (
        "script-play", "p.md", "# T\n\n## ACT I\n\n**ANA**\na" + " " * 73_000 + "b\n"),
}

_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from training.errors import DataError
from training.formats import ImportOptions, Source, get
importer = get(sys.argv[2])
start = time.perf_counter()
try:
    importer.parse(Source(sys.argv[3]), ImportOptions())
except DataError:
    pass
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the tree whose training/ is measured")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before a case is given up")
    args = parser.parse_args()
    results: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (importer, name, text) in CASES.items():
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            try:
                done = subprocess.run([sys.executable, "-c", _CHILD, str(args.root), importer, str(path)],
                                      capture_output=True, text=True, timeout=args.limit, check=True)
                results[case] = round(float(done.stdout.split()[-1]), 4)
                shown = f"{results[case]:.4f} s"
            except subprocess.TimeoutExpired:
                results[case] = None
                shown = f"> {args.limit:.0f} s"
            print(f"{case:48s} {len(text.encode()):>7,} bytes  {shown}", flush=True)
            path.unlink()
    print(json.dumps({"root": str(args.root), "measured": time.strftime("%Y-%m-%d %H:%M"), **results}))


if __name__ == "__main__":
    main()
