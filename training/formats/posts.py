"""Plain text of one voice: scraped posts, one per line, or one per block of lines between blank lines.

The stand-alone "confession" generator's data: thousands of posts of one account, no conversation and no
speaker named. Every post stands alone; the voice is whoever the user trains (`--speaker`), the file's stem
until then. Blocks are detected: when blank lines separate groups of lines, and some group has more than one
line, each group is a post (a post may span lines); otherwise each line is.

This reads any text, so it is a fallback: a file is taken for posts only when no chat or script format
recognises it, and only when it has enough lines to be a corpus (a short note is not one).
"""

from __future__ import annotations

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from training.formats.base import ImportOptions, Importer, ParseResult, Source, Thread, split_lines, squash

# Fewer non-blank lines than this in the sniffed head: a note, not a corpus of posts.
MIN_POSTS = 10


def split_posts(lines: list[str]) -> tuple[list[tuple[int, str]], bool]:
    """(line number, post) pairs, and whether posts are blocks between blank lines."""
    blocks: list[tuple[int, list[str]]] = []
    start, current = 0, []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    by_block = len(blocks) > 1 and any(len(block) > 1 for _, block in blocks)
    if by_block:
        return [(start, squash(block)) for start, block in blocks], True
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()], False


@register
class PostsTextImporter(Importer):
    """One voice's posts in a text file (see the module docstring)."""

    name = "posts-text"
    fallback = True
    description = ("Plain text of one voice: posts one per line, or one per block between blank lines "
                   "(scraped posts, a confession corpus)")

    def sniff(self, source: Source) -> float:
        if source.path.suffix.lower() not in (".txt", ".text", ""):
            return 0.0
        head = source.head()
        if b"\x00" in head:
            return 0.0
        lines = [line for line in split_lines(source.head_text()) if line.strip()]
        return 0.5 if len(lines) >= MIN_POSTS else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="put one post per line")
        result = ParseResult()
        posts, by_block = split_posts(split_lines(text))
        result.notes.append("one voice, " + ("a post per block of lines between blank lines" if by_block
                                             else "a post per line"))
        items: list[Message | SceneBreak] = []
        for number, post in posts:
            items.append(Message(source.path.stem, post, id=f"line {number}"))
            items.append(SceneBreak())      # every post stands alone
        result.threads.append(Thread(f"{self.name}:{source.path.resolve()}", source.path.stem, items,
                                     single_voice=True))
        return result
