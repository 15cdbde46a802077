"""The terminal adapter: talk to a persona in a shell, with a running context window."""

from __future__ import annotations

import sys
from collections import deque
from typing import TextIO

from bot.persona import Persona

HELP = "commands: /reset forgets the conversation, /quit leaves (so does Ctrl-D)"
# Turns kept in memory; the prompt itself holds only what fits the persona's context budget.
MAX_TURNS = 200


def chat(persona: Persona, *, user: str = "You", stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """Read lines, answer each in the persona's voice, until /quit or end of input. Returns an exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    turns: deque[tuple[str, str]] = deque(maxlen=MAX_TURNS)
    stdout.write(f"chatting with {persona.name} ({persona.info.path}). {HELP}\n")
    stdout.flush()
    while True:
        if interactive:
            stdout.write(f"{user}> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            return 0
        if not line:
            if interactive:
                stdout.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            turns.clear()
            stdout.write("(conversation forgotten)\n")
            continue
        if text == "/help":
            stdout.write(HELP + "\n")
            continue
        turns.append((user, text))
        try:
            reply = persona.reply(list(turns))
        except KeyboardInterrupt:
            stdout.write("\n(interrupted)\n")
            continue
        turns.append((persona.name, reply))
        stdout.write(f"{persona.name}> {reply}\n")
        stdout.flush()
