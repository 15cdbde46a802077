"""Test helpers for script importers: parse one file, and lay its thread out as (speaker, text) and breaks."""

from __future__ import annotations

from pathlib import Path

from training import formats
from training.conversation import Message, SceneBreak
from training.formats.base import ImportOptions, ParseResult, Source, Thread

BREAK = "--"


def parse(format_name: str, path: Path, options: ImportOptions | None = None) -> ParseResult:
    return formats.get(format_name).parse(Source(path), options or ImportOptions())


def only_thread(result: ParseResult) -> Thread:
    [thread] = result.threads
    return thread


def layout(thread: Thread) -> list[tuple[str, str] | str]:
    """Messages as (speaker, text) and scene breaks as BREAK, in order."""
    return [(i.speaker, i.text) if isinstance(i, Message) else BREAK for i in thread.items]


def break_labels(thread: Thread) -> list[str]:
    return [i.label for i in thread.items if isinstance(i, SceneBreak)]
