"""The terminal adapter: talk to a persona in a shell, through the same engine, filters and context window
as the Discord bot."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from bot.core.context import ContextWindow
from bot.core.filters import TERMINAL
from bot.inference.engine import Engine
from training.terminal_text import shown

HELP = "commands: /reset forgets the conversation, /quit leaves (so does Ctrl-D)"


def _read_lines(stdin: TextIO, loop: asyncio.AbstractEventLoop, lines: asyncio.Queue) -> None:
    """Feed stdin into `lines` from a daemon thread: a blocked read must never keep the process alive."""
    while True:
        try:
            line = stdin.readline()
        except (OSError, ValueError):
            line = ""
        loop.call_soon_threadsafe(lines.put_nowait, line or None)
        if not line:
            return


async def chat_async(engine: Engine, *, user: str = "You", stdin: TextIO | None = None,
                     stdout: TextIO | None = None) -> int:
    """Read lines, answer each in the persona's voice, until /quit or end of input. Returns an exit code."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    persona = engine.persona
    window = ContextWindow(persona.settings.context_tokens, engine.count_tokens)
    lines: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=_read_lines, args=(stdin, asyncio.get_running_loop(), lines),
                     name="personabot-stdin", daemon=True).start()
    # The persona's name and what the model says come from chat data: never raw control sequences.
    stdout.write(f"chatting with {shown(persona.name)} ({shown(str(persona.path))}, {persona.backend.name}). {HELP}\n")
    stdout.flush()
    async with engine:
        while True:
            if interactive:
                stdout.write(f"{user}> ")
                stdout.flush()
            line = await lines.get()
            if line is None:
                if interactive:
                    stdout.write("\n")
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return 0
            if text == "/reset":
                window.clear()
                stdout.write("(conversation forgotten)\n")
                continue
            if text == "/help":
                stdout.write(HELP + "\n")
                continue
            window.add(user, text)
            reply = await engine.reply(window.turns(), target=TERMINAL)
            window.add(reply.persona, reply.text)
            stdout.write(f"{shown(reply.persona)}> {shown(reply.text, keep_newlines=True)}\n")
            stdout.flush()


def chat(engine: Engine, *, user: str = "You", stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`chat_async` in its own event loop; Ctrl-C leaves quietly."""
    try:
        return asyncio.run(chat_async(engine, user=user, stdin=stdin, stdout=stdout))
    except KeyboardInterrupt:
        (stdout or sys.stdout).write("\n")
        return 0
