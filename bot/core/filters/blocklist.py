"""The blocklist: words, phrases and patterns an operator forbids in replies.

A persona learnt from real chat can say things its operator does not want said in their server (slurs,
names, topics). `Blocklist` reads a plain text file of words, phrases and `re:` regular expressions and
tells whether a reply contains one; such a reply is sampled again. Matching is case-insensitive and on whole
words, and survives fullwidth letters and invisible characters. A file that cannot be used raises
`FilterConfigError`, naming the file and line, at start rather than failing on the first reply.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from training.text_forms import FORMAT_CHARS


class FilterConfigError(ValueError):
    """A filter configuration file (e.g. the blocklist) that cannot be used: names the file and line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path} line {line}"
        super().__init__(f"{where}: {message}")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Blocklist:
    """Words, phrases and regular expressions that a reply must not contain.

    One entry per line: blank lines and lines starting with `#` are ignored; `re:PATTERN` is a Python regular
    expression (case-insensitive); anything else is a word or phrase, matched case-insensitively as whole words
    ("ass" does not block "class"; the spaces inside a phrase match any run of whitespace).
    """

    def __init__(self, entries: Iterable[str] = (), *, source: str = "blocklist") -> None:
        """`entries`: lines in the file format; a bad one raises `FilterConfigError` naming `source`."""
        self.source = source
        words: list[str] = []
        patterns: list[tuple[int, str, re.Pattern[str]]] = []
        for number, raw in enumerate(entries, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                pattern = line[3:]
                if not pattern:
                    raise FilterConfigError(source, number, "empty pattern after 're:'; fix or remove the line")
                try:
                    compiled = re.compile(pattern, re.IGNORECASE)
                except re.error as e:
                    raise FilterConfigError(source, number,
                                            f"bad pattern {pattern!r}: {e}; fix or remove the line") from e
                if compiled.match(""):
                    raise FilterConfigError(source, number, f"pattern {pattern!r} matches empty text, so it "
                                                            "would block every reply; fix or remove the line")
                patterns.append((number, pattern, compiled))
            else:
                words.append(unicodedata.normalize("NFKC", line))
        self._count = len(words) + len(patterns)
        self._words = self._word_regex(words)
        self._combined, self._separate = self._pattern_regexes(patterns)

    @classmethod
    def from_file(cls, path: str | Path) -> Blocklist:
        """Read a blocklist file (UTF-8); an unreadable file or a bad line raises `FilterConfigError`."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise FilterConfigError(path, None, f"cannot read the blocklist: {e.strerror or e}") from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise FilterConfigError(path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file "
                                                "as UTF-8") from e
        return cls(text.removeprefix("\ufeff").splitlines(), source=str(path))

    @staticmethod
    def _word_regex(words: list[str]) -> re.Pattern[str] | None:
        if not words:
            return None
        # Longest first, so a phrase wins over a word it starts with and the reason names the whole phrase.
        parts = [r"\s+".join(re.escape(w) for w in word.split()) for word in sorted(set(words), key=len,
                                                                                       reverse=True)]
        # Lookarounds instead of \b: an entry may begin or end with a symbol ("c++", ":3").
        return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)

    @staticmethod
    def _pattern_regexes(patterns: list[tuple[int, str, re.Pattern[str]]]
                         ) -> tuple[re.Pattern[str] | None, list[tuple[int, re.Pattern[str]]]]:
        """One regex for every pattern that can be combined, named groups telling which matched; patterns
        with groups of their own (numbered back-references would shift) or global flags stay separate."""
        combinable: list[tuple[int, str]] = []
        separate: list[tuple[int, re.Pattern[str]]] = []
        for number, pattern, compiled in patterns:
            if compiled.groups == 0:
                try:
                    re.compile(f"(?:{pattern})")
                except re.error:  # e.g. global inline flags "(?s)...", allowed only at the very start
                    separate.append((number, compiled))
                else:
                    combinable.append((number, pattern))
            else:
                separate.append((number, compiled))
        combined = None
        if combinable:
            combined = re.compile("|".join(f"(?P<l{number}>{pattern})" for number, pattern in combinable),
                                  re.IGNORECASE)
        return combined, separate

    def check(self, text: str) -> str | None:
        """None when `text` is fine, else a short reason naming what it contains."""
        variants = [text]
        # Fullwidth letters and invisible characters must not smuggle a blocked word past the list.
        folded = FORMAT_CHARS.sub("", unicodedata.normalize("NFKC", text))
        if folded != text:
            variants.append(folded)
        for variant in variants:
            if self._words is not None and (match := self._words.search(variant)):
                what = "phrase" if len(match[0].split()) > 1 else "word"
                return f'contains a blocked {what} ("{_short(match[0])}")'
            if self._combined is not None and (match := self._combined.search(variant)):
                return f"matches a blocked pattern ({self.source} line {match.lastgroup[1:]})"
            for number, compiled in self._separate:
                if compiled.search(variant):
                    return f"matches a blocked pattern ({self.source} line {number})"
        return None

    def __len__(self) -> int:
        """The number of entries (words, phrases and patterns)."""
        return self._count
