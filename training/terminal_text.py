"""Text from chat exports made safe to print on a terminal.

A speaker name (or a message, or a file name) in an export is whatever its author typed: an ESC [ ...
sequence in it would recolour, move or clear the terminal of whoever inspects the data, and a bidi override
(U+202E) would show the text after it reversed. What prints such text shows those characters escaped, the
way Python writes them (\\x1b, \\u202e), and leaves every other character as it is (accents, emoji and their
joiners included).
"""

from __future__ import annotations

import re

# Besides the C0 controls: DEL and the C1 controls, the bidi embeddings, overrides, isolates and marks, and
# the Unicode line and paragraph separators (which break a line like a newline does).
_OTHER_UNSAFE = r"\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_UNSAFE_CHARS = re.compile(rf"[\x00-\x1f{_OTHER_UNSAFE}]")
_UNSAFE_BUT_NEWLINES = re.compile(rf"[\x00-\x09\x0b-\x1f{_OTHER_UNSAFE}]")


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def shown(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every character that could take over a terminal escaped; newlines kept if asked (for
    messages of several lines)."""
    return (_UNSAFE_BUT_NEWLINES if keep_newlines else _UNSAFE_CHARS).sub(_escaped, text)
