"""Invented chat data for tests: who says what, and an export file of it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

WORDS = ("pizza tonight movie rain bus late coffee keys train game office beach party cake dog lunch "
         "music exam phone bike window garden book ticket").split()


def chat_conversations(n_conversations: int = 24, seed: int = 7) -> list[list[tuple[str, str]]]:
    """Invented chats of Bob, Carol and Alice. Alice has a style a tiny model can pick up quickly:
    she echoes the last word said to her and adds her catchphrase."""
    rng = random.Random(seed)
    conversations = []
    for _ in range(n_conversations):
        turns: list[tuple[str, str]] = []
        for _ in range(rng.randint(6, 14)):
            speaker = rng.choice(["Bob", "Carol"])
            words = rng.sample(WORDS, rng.randint(2, 5))
            turns.append((speaker, " ".join(words)))
            if rng.random() < 0.6:
                turns.append(("Alice", f"{words[-1]} again? classic {speaker.lower()}, love it"))
        conversations.append(turns)
    return conversations


def write_whatsapp(path: Path, conversations: list[list[tuple[str, str]]],
                   start: datetime = datetime(2023, 3, 14, 9, 0)) -> Path:
    """An Android WhatsApp export (en-GB: `14/03/2023, 09:00 - Name: text`), one day between chats."""
    lines = []
    t = start
    for turns in conversations:
        for speaker, text in turns:
            lines.append(f"{t:%d/%m/%Y, %H:%M} - {speaker}: {text}")
            t += timedelta(minutes=2)
        t += timedelta(days=1)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
