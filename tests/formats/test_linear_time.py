"""Every importer reads hostile text in time linear in its size (issue 9, item 5).

Each importer gets a file whose text is a pathological run (thousands of spaces, `a • ` over and over, `<` and
spaces, a date followed by spaces...) at two sizes, SMALL and SCALE times SMALL characters. A linear importer
takes about SCALE times longer on the larger file; a regex that backtracks quadratically takes SCALE² times
longer (cubically, SCALE³). The bound sits between the two with room for a loaded machine on either side:
times are the best of a few runs, and only their ratio is compared, never a number of seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from training.errors import DataError
from training.formats import ImportOptions, Source, get

SMALL = 10_000        # characters of pathological text in the smaller file
SCALE = 8             # the larger file has SCALE times as many
MAX_RATIO = 24        # linear: about 8; quadratic: about 64
RUNS = 3              # the best of RUNS timings of each size


def _csv(*cells: str) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' for c in cells) + "\n"


def _slack(folder: Path, text: str) -> Path:
    (folder / "general").mkdir()
    (folder / "users.json").write_text(json.dumps([{"id": "U1", "name": "ana", "profile": {}}]))
    (folder / "channels.json").write_text(json.dumps([{"id": "C1", "name": "general"}]))
    messages = [{"type": "message", "user": "U1", "ts": "1710147300.000100", "text": text}]
    (folder / "general" / "2024-03-11.json").write_text(json.dumps(messages))
    return folder


# importer -> how to write a file of that format around a piece of text (the text goes where the importer
# applies its patterns: message text, a date, a heading...). Each returns the path to parse.
Writer = Callable[[Path, str], Path]


def _write(name: str, make: Callable[[str], str]) -> Writer:
    def write(folder: Path, text: str) -> Path:
        path = folder / name
        path.write_text(make(text), encoding="utf-8")
        return path
    return write


WRITERS: dict[str, Writer] = {
    "whatsapp": _write("chat.txt", lambda t: "12/29/23, 8:02 PM - Dana: hi\n"
                                             f"12/29/23, 8:03 PM - Dana: {t}\n12/29/23, 8:04 PM - Eli: ok\n"),
    "discord-csv": _write("c.csv", lambda t: "AuthorID,Author,Date,Content,Attachments,Reactions\n"
                                            + _csv("1", "Ana", "2024-03-11T18:58:03+01:00", t, "", "")),
    "discord-csv date": _write("d.csv", lambda t: "AuthorID,Author,Date,Content,Attachments,Reactions\n"
                                                 + _csv("1", "Ana", "3/11/2024" + t + "6:58 PM", "hi", "", "")),
    "discord-json": _write("c.json", lambda t: json.dumps({
        "guild": {"id": "1", "name": "g"}, "channel": {"id": "2", "type": "GuildTextChat", "name": "c"},
        "messages": [{"id": "3", "type": "Default", "timestamp": "2024-01-01T00:00:00+00:00", "content": t,
                      "author": {"id": "4", "name": "Ana"}}]})),
    "telegram": _write("result.json", lambda t: json.dumps({
        "name": "c", "type": "personal_chat", "id": 1, "messages": [
            {"id": 1, "type": "message", "date": "2024-01-01T00:00:00", "date_unixtime": "1704067200",
             "from": "Ana", "from_id": "user1", "text": t, "reply_to_message_id": 3,
             "reply_to_peer_id": "1" * len(t) + "x"}]})),
    "messenger": _write("message_1.json", lambda t: json.dumps({
        "participants": [{"name": "Ana"}],
        "messages": [{"sender_name": "Ana", "timestamp_ms": 1704067200000, "content": t, "type": "Generic"}]})),
    "slack": _slack,
    "twitter": _write("tweets.js", lambda t: "window.YTD.tweets.part0 = " + json.dumps([{"tweet": {
        "id_str": "1", "full_text": t, "created_at": "Sat Dec 06 18:20:30 +0000 2025",
        "entities": {"urls": [{"url": "https://t.co/abc"}]}}}])),
    "personabot-jsonl": _write("d.jsonl", lambda t: json.dumps({
        "conversation": "c", "speaker": "Ana", "speaker_id": "1", "text": t, "timestamp": None}) + "\n"),
    "personabot-jsonl time": _write("t.jsonl", lambda t: json.dumps({
        "conversation": "c", "speaker": "Ana", "text": "hi", "timestamp": "2024-01-01" + t}) + "\n"),
    "alpaca": _write("a.json", lambda t: json.dumps([{"instruction": t, "input": "", "output": "x"}])),
    "chat-tokens": _write("c.txt", lambda t: f"<|USER|> {t} <|ASSISTANT|> ok <|End|>\n"),
    "script-table": _write("s.csv", lambda t: "Character,Line\nANA," + _csv(t)),
    "script-markdown": _write("s.md", lambda t: (
        "| Speaker | Text |\n|---|---|\n| ANA | " + t.replace("|", "\\|") + " |\n\n"
        + t + "\n\n# " + t + "\n\n| Speaker | Text |\n" + t + "\n| ANA | hi |\n")),
    "script-blocks": _write("s.txt", lambda t: "ANA:\nhi\n\nBEN:\nho\n\n" * 3 + f"ANA:\n{t}\n\nC{t}:\nx\n"),
    "script-play": _write("p.md", lambda t: f"# T\n\n## ACT I\n\n**ANA**\n{t}\n\n### {t}\n\n**BEN**\nho {t}\n"),
}

# Text that made some pattern backtrack (each was quadratic or worse somewhere before the fix). n is the
# number of characters wanted.
TEXTS: dict[str, Callable[[int], str]] = {
    "spaces": lambda n: "a" + " " * n + "b",
    "a • ": lambda n: "a • " * (n // 4),
    "< and spaces": lambda n: "< " * (n // 2),
    "< then spaces": lambda n: "<" + " " * n,
    "spaces then <": lambda n: " " * n + "<This message",
    "spaces then a marker": lambda n: " " * n + "<|e",
    "spaces then a link": lambda n: " " * n + "https://t.co/",
    "spaces then a closing #": lambda n: "a" + " " * n + "b #",
    "spaces then a dash": lambda n: " " * n + "-x",
    "_[ repeated": lambda n: "_[" * (n // 2),
    "underscores": lambda n: "_" * n + "x",
}


def _best_time(importer: str, path: Path) -> float:
    parse = get(importer).parse
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        try:
            parse(Source(path), ImportOptions())
        except DataError:
            pass  # a clear refusal is fine too (a date full of spaces): only its speed is tested here
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("case", sorted(WRITERS))
def test_every_importer_reads_pathological_text_in_linear_time(case: str, tmp_path: Path) -> None:
    importer = case.split()[0]
    slow = []
    for text_name, text in TEXTS.items():
        small = WRITERS[case](_folder(tmp_path, f"{text_name}-small"), text(SMALL))
        large = WRITERS[case](_folder(tmp_path, f"{text_name}-large"), text(SCALE * SMALL))
        # A floor of 1 ms keeps a sub-millisecond small run (timer noise) from inflating the ratio.
        ratio = _best_time(importer, large) / max(_best_time(importer, small), 1e-3)
        if ratio > MAX_RATIO:
            slow.append(f"{text_name!r}: {SCALE}x the text took {ratio:.0f}x the time")
    assert not slow, f"{case} is not linear: " + "; ".join(slow)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    return folder
