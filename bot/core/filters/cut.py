"""Cutting a text to a length limit without breaking what is left.

Discord refuses a message over 2,000 characters and Twitter a tweet over 280 weighted characters, and the
model does not know either limit. `cut_to_length` shortens a text to fit any length measure: at a word
boundary where it can, never inside an emoji or between a letter and its accents, without a dangling comma
or a link glued to the ellipsis.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

_RI = range(0x1F1E6, 0x1F200)


def _joins_previous(char: str) -> bool:
    """Whether `char` belongs to the character before it (a mark, a joiner, an emoji modifier)."""
    code = ord(char)
    return (0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F
            or code in (0x200D, 0x20E3) or 0xDC00 <= code <= 0xDFFF
            or unicodedata.category(char) in ("Mn", "Mc", "Me"))


def _cut_points(text: str) -> list[int]:
    """Offsets where `text` may be cut without splitting a character from its marks or an emoji sequence."""
    points = [0]
    regional = 0  # regional indicators in a row: a flag is a pair, so cut only after an even number
    for i in range(1, len(text)):
        char, before = text[i], text[i - 1]
        regional = regional + 1 if ord(before) in _RI else 0
        if _joins_previous(char) or before == "\u200d" or (before, char) == ("\r", "\n"):
            continue
        if ord(char) in _RI and regional % 2 == 1:
            continue
        points.append(i)
    points.append(len(text))
    return points


# Left dangling at the end of a cut text, these read as a fragment; the ellipsis replaces them.
_DANGLING = ",;:-–—/\\([{«“‘.…&+"


def cut_to_length(text: str, limit: int, *, length: Callable[[str], int] = len, ellipsis: str = "…") -> str:
    """`text` unchanged when `length(text) <= limit`; otherwise cut at the last whitespace that leaves room
    for `ellipsis` (or at any character when there is none in the last ~30%), trailing whitespace and dangling
    punctuation dropped, the ellipsis appended. Never splits an emoji or a character from its accents; the
    result always satisfies `length(result) <= limit`."""
    if length(text) <= limit:
        return text
    stripped = text.rstrip()
    if length(stripped) <= limit:
        return stripped
    if limit <= 0:
        return ""
    if length(ellipsis) > limit:
        ellipsis = ""

    def fits(end: int) -> bool:
        return length(text[:end].rstrip() + ellipsis) <= limit

    # With len, nothing past limit + 1 characters can be kept: no need to scan a long text to its end.
    points = _cut_points(text if length is not len else text[:limit + 1])
    # Largest cut point that fits. `length` is not strictly monotonic for tweets (a cut URL is no longer a
    # link), so the search keeps "lo fits" as its invariant rather than assuming it.
    lo, hi = 0, len(points) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(points[mid]):
            lo = mid
        else:
            hi = mid
    hard = points[lo]
    cut = hard
    if not text[hard].isspace():
        space = max(text.rfind(" ", 0, hard), text.rfind("\n", 0, hard), text.rfind("\t", 0, hard))
        if space > 0 and space >= 0.7 * hard:
            cut = space
    body = text[:cut].rstrip()
    trimmed = body.rstrip(_DANGLING + " \t\n\u200d")  # a joiner left with nothing to join goes too
    if trimmed:
        body = trimmed
    result = body + ellipsis
    if body and "://" in body.split()[-1] and length(body + " " + ellipsis) <= limit:
        result = body + " " + ellipsis  # glued to a link, the ellipsis would become part of its address
    # Whitespace and punctuation only ever shorten the text; this loop is the guarantee, not the common path.
    while length(result) > limit and lo > 0:
        lo -= 1
        result = text[:points[lo]].rstrip() + ellipsis
    return result if length(result) <= limit else ""
