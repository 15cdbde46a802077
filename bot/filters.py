"""Output filters: every text passes here before it leaves the bot.

`OutputFilter.reject` says whether a candidate reply must be sampled again (it repeats the training data, or
it contains a blocked word); `OutputFilter.finish` makes an accepted reply safe to send: mentions cannot ping
anyone, and the text fits the target's length limit (Discord's 2,000 characters, or a tweet's 280 weighted
characters as Twitter counts them).

The leak guard (`LeakGuard`) keeps the training text from coming back: a persona's own responses word for
word, runs of eight words, phone-like numbers and rare 4+-digit numbers from anyone's messages, and
near-verbatim lines (a word or two inserted, dropped or replaced) that keep what made the line someone's.
What a chat persona must still be able to say decides the rule for near-verbatim lines: a *distinctive*
word is one that at most `rare_lines` (32) training texts contain, and a reply is a near-duplicate only if
it keeps a line's distinctive words. So "yes", "lol same", "see you soon", "are you coming tonight", said by
everybody, are never blocked for being short and common, while "code is swordfish" for "gate code is
swordfish" is; replies of one or two words are never near-duplicates. The class docstring has the details.

Only the standard library is used here: the one port of Twitter's counting rules on PyPI
(twitter-text-parser 3.0.0) imports `pkg_resources`, which current setuptools no longer ships, and its emoji
table stops at Unicode 12.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DISCORD", "DISCORD_LIMIT", "TERMINAL", "TWEET_LIMIT", "TWITTER", "Blocklist", "FilterConfigError",
    "LeakGuard", "OutputFilter", "Target", "cut_to_length", "has_link", "neutralise_mentions", "tweet_length",
]

DISCORD_LIMIT = 2000
TWEET_LIMIT = 280


class FilterConfigError(ValueError):
    """A filter configuration file (e.g. the blocklist) that cannot be used: names the file and line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path} line {line}"
        super().__init__(f"{where}: {message}")


# --- leak guard ---------------------------------------------------------------------------------------------

# Markdown and emphasis symbols that wrap words in chat ("*really*", "~~no~~", "||spoiler||", "`code`") besides
# Unicode punctuation; emoji and currency signs are kept, they are part of what was said.
_EXTRA_STRIP = "~`|^+<>="


# Invisible characters that can sit inside a word without changing how it reads.
_FORMAT_CHARS = re.compile(r"[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")


@functools.cache
def _word_edge_chars() -> str:
    """Every Unicode punctuation character (category P*) plus `_EXTRA_STRIP`, for `str.strip`.
    Built on first use (tens of milliseconds), not at import."""
    # All punctuation lies below U+20000; scanning the full range would take ten times longer.
    punct = (chr(c) for c in range(0x20000) if unicodedata.category(chr(c))[0] == "P")
    return "".join(punct) + _EXTRA_STRIP


def _words(text: str) -> list[str]:
    """Words for matching: NFKC, casefolded, split on whitespace, surrounding punctuation stripped, empty
    words dropped, so "Hello, WORLD!" and "hello world" give the same words. Invisible characters are
    removed first: a zero-width space must not hide a training line from the guard."""
    edges = _word_edge_chars()
    text = _FORMAT_CHARS.sub("", text)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return [w for w in (word.strip(edges) for word in folded.split()) if w]


def _windows(words: list[str], n: int) -> Iterator[int]:
    # hash() of a tuple of str is 64-bit and salted per process: fine, the index is built and used in-process,
    # and it is about twice as fast as a blake2b digest of the joined words.
    return (hash(window) for window in zip(*(words[k:] for k in range(n))))


# A sentence ends at a line break, or at ., !, ?, … followed by a space: a short private line inside a longer
# text (or a longer reply) is compared on its own. Splits only at whitespace, so no word is cut; line breaks
# are split by str.split, since a pattern like \s*\n would take quadratic time on a long run of spaces.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
# Sentences and texts longer than this are left to the run-of-words check: a near-duplicate of one would share
# a run of `ngram_words` words anyway unless it has an edit every few words, and the cap bounds the work.
_MAX_UNIT_WORDS = 64
# Word codes are 32-bit: half the memory of full hashes; two different words of one comparison share a code
# with odds of 1 in 4 billion.
_CODE_MASK = 0xFFFFFFFF
# Bounded work whatever the reply: the most stored lines one check looks at (their length, then how many of
# their words the reply has), and the most of those it compares in full (the edit distance).
_MAX_LOOKS = 4096
_MAX_COMPARISONS = 256

# A run of digits, and further runs after short separators: spaces, dots, dashes, parentheses, as in
# "+44 (0)151 555-0199" or "0151.555.0199". \d is any Unicode decimal digit.
_NUMBER = re.compile(r"\d+(?:[\s.()\-\u2010-\u2015\u2212]{1,3}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
_NUMBER_DIGITS = 4       # a digit group this long is a number worth protecting (a PIN, an account number)
_PHONE_DIGITS = 7        # adjacent groups with this many digits together are phone-like (a phone, an IP)
_MAX_PHONE_GROUPS = 12   # bounds the sub-runs of a long sequence of numbers (12 groups: at most 78)


# A word that may be distinctive has a letter or 3+ digits in a row (a house number: a thousand values, as
# telling as a rare word): times, prices, small counts and emoji ("2:15", "£12", "20", "😂") say too little
# to make a line someone's, however rare they are.
_MAY_BE_DISTINCTIVE = re.compile(r"[^\W\d_]|\d{3}")


def _ascii_digits(group: str) -> str:
    """`group` (decimal digits of any script) as ASCII digits, leading zeros kept: "٠١٥١" gives "0151"."""
    return group if group.isascii() else "".join(str(unicodedata.decimal(c)) for c in group)


def _digit_runs(text: str) -> list[list[str]]:
    """Every run of adjacent digit groups in `text` (separated by spaces, dots, dashes or parentheses), each
    group as ASCII digits: "call +44 (0)151 555-0199 or 4711" gives [["44", "0", "151", "555", "0199"],
    ["4711"]]."""
    text = unicodedata.normalize("NFKC", text)  # fullwidth digits are digits
    return [[_ascii_digits(g) for g in _DIGIT_GROUP.findall(m[0])] for m in _NUMBER.finditer(text)]


def _phone_parts(groups: list[str]) -> Iterator[str]:
    """The digits of every run of adjacent `groups` (at most `_MAX_PHONE_GROUPS`) that is phone-like."""
    for start in range(len(groups)):
        joined = ""
        for group in groups[start:start + _MAX_PHONE_GROUPS]:
            joined += group
            if len(joined) >= _PHONE_DIGITS:
                yield joined


def _within_edits(a: Sequence[int], b: Sequence[int], limit: int) -> int | None:
    """The word-level edit distance (insert, drop or replace one word) between `a` and `b` when it is at most
    `limit`, else None. Work is O(len * limit): only the diagonal band the distance can stay within."""
    n, m = len(a), len(b)
    if abs(n - m) > limit:
        return None
    start = 0  # a shared beginning and end cost nothing: most comparisons end here
    while start < n and start < m and a[start] == b[start]:
        start += 1
    while n > start and m > start and a[n - 1] == b[m - 1]:
        n -= 1
        m -= 1
    a, b = a[start:n], b[start:m]
    n, m = n - start, m - start
    if not n or not m:
        return max(n, m) if max(n, m) <= limit else None
    over = limit + 1
    previous = [j if j <= limit else over for j in range(m + 1)]
    for i in range(1, n + 1):
        current = [i if i <= limit else over] + [over] * m
        for j in range(max(1, i - limit), min(m, i + limit) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]), over)
        if min(current) > limit:
            return None
        previous = current
    return previous[m] if previous[m] <= limit else None


class LeakGuard:
    """Rejects text that repeats the training data (responses and context, whoever said them):

    1. verbatim: a training response of at least `min_verbatim_words` words, whatever its case and punctuation;
    2. a run of `ngram_words` consecutive words shared with any training text (never spanning two texts);
    3. numbers: a phone-like sequence (adjacent digit groups separated by spaces, dots, dashes or parentheses,
       7+ digits in all) that is, or contains, or is a phone-like part of, one in the training text, compared
       as digits only ("0151 555 0199" == "01515550199", "555-0199" is part of it; "0151 555 0200" only
       shares its area code); or a number of 4+ digits outside such a sequence that occurs in at most
       `rare_lines` training texts (a PIN said once is private; a year or "1000" that many wrote is not);
    4. near-duplicates: a sentence (or the whole text) within `max_edits` words (inserted, dropped or replaced)
       of a training sentence or text, and within a third of its length ("pin is 4711 now" for "my pin is
       4711": one edit in four words), when the training line has at least `min_verbatim_words` words and
       the reply keeps its *distinctive* words: two of them, or all when it has fewer.

    A distinctive word occurs in at most `rare_lines` training texts and has a letter or 3+ digits in a row
    (times, prices, small counts and emoji say too little). That rule is what keeps a chat persona usable:
    "yes", "lol same", "see you soon" are said by everybody and are no one's secret, so a reply made only of
    common words is never a near-duplicate, however short; a reply that keeps a name, a place, a code that
    one person wrote is one; one that replaced them ("the shadow was fluffy" for "the shadow was ironic",
    with "shadow" and "ironic" rare) says something else, and is not. Replies shorter than
    `min_verbatim_words` words ("ok", "lol yes") are never rejected for their words, only for a number (3).
    In a small corpus nearly every word is distinctive: the model has seen each line many times, and its
    near-copies are what it is most likely to produce.

    How it scales: for each line with a distinctive word the index stores its words as 32-bit codes and
    files the line under its `max_edits + 1` rarest distinctive words (with at most `max_edits` edits one of
    them survives in any near-duplicate; the words a line is filed under are the ones a check counts as
    distinctive). A check looks only at lines sharing such a word with the reply, compares at most
    `_MAX_COMPARISONS` of them (of `_MAX_LOOKS` looked at) in a band of the edit-distance table, and never
    scans the index. Run-of-words hashes take about 70 bytes per distinct run of `ngram_words` words;
    `bench/leak_guard.py` measures bytes per training line and microseconds per check.
    """

    def __init__(self, texts: Iterable[tuple[str, bool]], *, ngram_words: int = 8,
                 min_verbatim_words: int = 3, max_edits: int = 2, rare_lines: int = 32) -> None:
        """`texts`: (text, is_response) pairs, every text the model was trained on."""
        if ngram_words < 2:
            raise ValueError(f"ngram_words must be at least 2 (got {ngram_words})")
        if min_verbatim_words < 1:
            raise ValueError(f"min_verbatim_words must be at least 1 (got {min_verbatim_words})")
        if max_edits < 0:
            raise ValueError(f"max_edits must be at least 0 (got {max_edits})")
        if rare_lines < 0:
            raise ValueError(f"rare_lines must be at least 0 (got {rare_lines})")
        self.ngram_words = ngram_words
        self.min_verbatim_words = min_verbatim_words
        self.max_edits = max_edits
        self.rare_lines = rare_lines
        self._responses: set[int] = set()
        self._ngrams: set[int] = set()
        self._phones: set[int] = set()       # whole phone-like runs of the training text
        self._phone_parts: set[int] = set()  # and every phone-like part of them
        lines_with: Counter[int] = Counter()        # word code or number -> training texts that contain it
        numbers_with: Counter[str] = Counter()
        codes = array("I")                          # every candidate line's words, one after the other
        ends = array("I")
        seen: set[int] = set()
        for text, is_response in texts:
            words = _words(text)
            if is_response and len(words) >= min_verbatim_words:
                self._responses.add(hash(tuple(words)))
            if len(words) >= ngram_words:
                self._ngrams.update(_windows(words, ngram_words))
            text_codes = [hash(w) & _CODE_MASK for w in words]
            lines_with.update({c for w, c in zip(words, text_codes) if _MAY_BE_DISTINCTIVE.search(w)})
            for unit in self._units(text, words, text_codes):
                key = hash(tuple(unit))
                if key not in seen:
                    seen.add(key)
                    codes.extend(unit)
                    ends.append(len(codes))
            numbers: set[str] = set()
            for groups in _digit_runs(text):
                if len(digits := "".join(groups)) >= _PHONE_DIGITS:
                    self._phones.add(hash(digits))
                    self._phone_parts.update(hash(part) for part in _phone_parts(groups))
                else:
                    numbers.update(g for g in groups if len(g) >= _NUMBER_DIGITS)
            numbers_with.update(numbers)
        del seen
        self._numbers = {hash(n) for n, count in numbers_with.items() if count <= rare_lines}
        self._index_lines(codes, ends, lines_with)

    def _units(self, text: str, words: list[str], text_codes: list[int]) -> list[list[int]]:
        """The word codes of `text` and of its sentences (when it has several) that the near-duplicate check
        compares: those of `min_verbatim_words` to `_MAX_UNIT_WORDS` words."""
        units = [text_codes]
        parts = [sentence for line in text.split("\n") for sentence in _SENTENCE_END.split(line)]
        if len(parts) > 1:
            units += [[hash(w) & _CODE_MASK for w in _words(part)] for part in parts]
        return [u for u in units if self.min_verbatim_words <= len(u) <= _MAX_UNIT_WORDS]

    def _index_lines(self, codes: array, ends: array, lines_with: Counter[int]) -> None:
        """Keep the lines that have a distinctive word, each filed under its `max_edits + 1` rarest ones."""
        self._codes = array("I")
        self._ends = array("I")
        self._lines_by_word: dict[int, int | list[int]] = {}  # a lone line is stored bare: most rare words
        start = 0
        for end in ends:
            unit = codes[start:end]
            start = end
            rare = sorted({c for c in unit if 0 < lines_with[c] <= self.rare_lines}, key=lines_with.__getitem__)
            if not rare:
                continue
            line = len(self._ends)
            self._codes.extend(unit)
            self._ends.append(len(self._codes))
            for code in rare[:self.max_edits + 1]:
                filed = self._lines_by_word.get(code)
                if filed is None:
                    self._lines_by_word[code] = line
                elif isinstance(filed, int):
                    self._lines_by_word[code] = [filed, line]
                else:
                    filed.append(line)

    @classmethod
    def from_artifact(cls, directory: str | Path, **kwargs) -> LeakGuard:
        """The guard for a persona artifact, from its `training_text.jsonl.gz`; `kwargs` go to `__init__`."""
        # Imported here: training.artifact pulls in torch, which the filters themselves do not need.
        from training.artifact import read_training_text

        rows = read_training_text(directory)
        return cls(((str(row["text"]), bool(row.get("response"))) for row in rows), **kwargs)

    def check(self, text: str) -> str | None:
        """None when `text` is fine, else a short reason it repeats the training data. The reason never
        quotes the training text: it goes to the log."""
        words = _words(text)
        if len(words) >= self.min_verbatim_words and hash(tuple(words)) in self._responses:
            return "repeats a training response verbatim"
        if len(words) >= self.ngram_words and any(h in self._ngrams for h in _windows(words, self.ngram_words)):
            return f"shares {self.ngram_words} consecutive words with the training text"
        for groups in _digit_runs(text):
            # Either this run is (part of) a training number, or it has a whole training number inside it;
            # a run merely sharing an area code with one ("0151 555 0200" for "0151 555 0199") is neither.
            if hash("".join(groups)) in self._phone_parts or any(hash(p) in self._phones
                                                                 for p in _phone_parts(groups)):
                return "repeats a phone-like number from the training text"
            if any(len(g) >= _NUMBER_DIGITS and hash(g) in self._numbers for g in groups):
                return "repeats a number from the training text"
        edits = self._near_duplicate(self._units(text, words, [hash(w) & _CODE_MASK for w in words]))
        if edits == 0:
            return "repeats a training line word for word"
        if edits is not None:
            return f"repeats a training line with {edits} word{'s' if edits != 1 else ''} changed"
        return None

    def _near_duplicate(self, units: list[list[int]]) -> int | None:
        """The fewest edits that turn one of `units` into a stored line close to it, or None."""
        looks, comparisons = _MAX_LOOKS, _MAX_COMPARISONS
        best: int | None = None
        for unit in units:
            words = set(unit)
            filed = [f for c in words if (f := self._lines_by_word.get(c)) is not None]
            # Rarest words first: their lines are the likeliest match, and the budget goes to them.
            filed.sort(key=lambda f: 1 if isinstance(f, int) else len(f))
            compared: set[int] = set()
            for lines in filed:
                for line in (lines,) if isinstance(lines, int) else lines:
                    if line in compared:
                        continue
                    compared.add(line)
                    if looks == 0 or comparisons == 0:
                        return best
                    looks -= 1
                    start = self._ends[line - 1] if line else 0
                    length = self._ends[line] - start
                    limit = min(self.max_edits, max(length, len(unit)) // 3)
                    if abs(length - len(unit)) > limit:
                        continue
                    stored = self._codes[start:start + length]
                    # Within `limit` edits, all but `limit` of the stored words are in the reply: a cheap count
                    # that rules out most lines before the edit distance.
                    if sum(c in words for c in stored) < length - limit:
                        continue
                    distinctive = {c for c in stored if c in self._lines_by_word}
                    if len(distinctive & words) < min(2, len(distinctive)):
                        continue  # the edits took out what made the line someone's: "the house was £53"
                    comparisons -= 1
                    edits = _within_edits(unit, stored, limit)
                    if edits is not None and (best is None or edits < best):
                        best = edits
                        if best == 0:
                            return best
        return best

    def __len__(self) -> int:
        """The number of distinct n-grams indexed (for logging)."""
        return len(self._ngrams)

    def __repr__(self) -> str:
        return (f"LeakGuard({len(self._ngrams)} {self.ngram_words}-word runs, "
                f"{len(self._responses)} responses of {self.min_verbatim_words}+ words, "
                f"{len(self._ends)} lines with a distinctive word, "
                f"{len(self._numbers)} rare numbers, {len(self._phones)} phone-like ones)")


# --- mentions -----------------------------------------------------------------------------------------------

_ZWSP = "\u200b"
# Only these forms make Discord ping: <@id>, <@!id> (old nickname form), <@&id> (role), @everyone, @here.
_MENTION = re.compile(r"<@(?P<kind>[!&]?)(?P<id>\d+)>")
_MASS_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)


def neutralise_mentions(text: str, *, names: Callable[[str, str], str | None] | None = None) -> str:
    """`text` with no mention that Discord would ping: @everyone/@here get a zero-width space after the @,
    user and role mentions become "@name" (`names(kind, id)` with kind "user" or "role"; "@user"/"@role" when
    it gives nothing). Channel mentions stay. Idempotent."""

    def replace(match: re.Match[str]) -> str:
        kind = "role" if match["kind"] == "&" else "user"
        name = names(kind, match["id"]) if names is not None else None
        # A display name may itself look like a mention; break it so that the result cannot ping either.
        name = (name or kind).replace("<@", "<@" + _ZWSP)
        return "@" + _ZWSP + name

    text = _MENTION.sub(replace, text)
    # After the names went in, so that a user named "everyone" or "@here" is covered too.
    return _MASS_MENTION.sub("@" + _ZWSP + r"\1", text)


# --- blocklist ----------------------------------------------------------------------------------------------



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
        folded = _FORMAT_CHARS.sub("", unicodedata.normalize("NFKC", text))
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


# --- links and Twitter's weighted length --------------------------------------------------------------------

# Country-code top-level domains as twitter-text lists them (ASCII ones).
_CCTLDS = frozenset("""
ac ad ae af ag ai al am an ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bl bm bn bo bq br bs bt bv bw by
bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec ee eg eh er es et eu fi fj fk fm
fo fr ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk hm hn hr ht hu id ie il im in io iq ir is it je
jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mf mg mh mk ml mm mn mo mp
mq mr ms mt mu mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa
re ro rs ru rw sa sb sc sd se sg sh si sj sk sl sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk tl tm tn to
tp tr tt tv tz ua ug uk um us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw
""".split())
# Generic top-level domains common in chat. Twitter knows ~1,500; a bare "name.tld" with a longer ending that
# is not listed here is counted as max(23, its length) by `tweet_length`, which is right either way.
_GTLDS = frozenset("""
com net org edu gov mil int info biz name pro mobi app dev xyz online site store shop blog tech club live news
link page cloud art fun top wiki social email video game games chat zone world life today space website one
media network digital design studio agency porn sex xxx lol wtf ninja rocks tube gay travel music
""".split())

# Characters of a URL's path and query as twitter-text allows them (ASCII, Latin accents, Cyrillic): a link
# ends at the first other one, e.g. at Japanese text right after "example.com/".
_URL_TAIL = r"[a-z0-9!?*'();:=+,.$/%#\[\]\-\u2013_~@|&\u00c0-\u024f\u0400-\u04ff]"
# ...and the characters it may end with; others at its end (".", ",", "!", ...) are the sentence's.
_URL_END = re.compile(r"[a-z0-9+\-=_#/&\u00c0-\u024f\u0400-\u04ff]", re.IGNORECASE)
_LABEL = r"[a-z0-9\u00c0-\u024f](?:[a-z0-9_\u00c0-\u024f-]{0,61}[a-z0-9\u00c0-\u024f])?"
_URL = re.compile(
    # With a scheme; the host may be any letters (internationalised domains).
    r"(?<![a-z0-9@$#＠＃])(?P<scheme>https?://)(?P<host>[^\W_](?:[\w.-]*[^\W_])?)"
    # A bare domain, not part of an e-mail address, a path or a longer word.
    rf"|(?<![a-z0-9@$#＠＃./_-])(?P<domain>(?:{_LABEL}\.)+(?P<tld>[a-z]{{2,63}}))(?![a-z0-9-])"
    rf"(?P<rest>(?::\d{{1,5}})?(?:[/?#]{_URL_TAIL}*)?)",
    re.IGNORECASE,
)
_SCHEME_REST = re.compile(rf"(?::\d{{1,5}})?(?:[/?#]{_URL_TAIL}*)?", re.IGNORECASE)


def _trim_url(url: str, keep: int) -> str:
    """`url` without the trailing characters a link may not end with (down to `keep` characters); a closing
    parenthesis stays when the link opened one, as in Wikipedia links."""
    while len(url) > keep:
        last = url[-1]
        if _URL_END.match(last) or (last == ")" and url.count("(") >= url.count(")")):
            break
        url = url[:-1]
    return url


def _urls(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of every URL-like span: kind "link" (Twitter links it) or "maybe" (it may: a bare
    domain whose ending is not in `_GTLDS`, or a scheme with a host that has no dot)."""
    pos = 0
    while (match := _URL.search(text, pos)) is not None:
        start = match.start()
        if match["scheme"]:
            head = match.end()
            rest = _SCHEME_REST.match(text, head)
            end = start + len(_trim_url(text[start:rest.end()], head - start))
            kind = "link" if "." in match["host"] else "maybe"
        else:
            head = start + len(match["domain"])
            end = start + len(_trim_url(match[0], head - start))
            tld = match["tld"].lower()
            if tld in _CCTLDS or tld in _GTLDS:
                kind = "link"
            elif len(tld) > 2:
                kind = "maybe"
            else:  # a two-letter ending that is no country code ("node.js") is just text
                kind = ""
        if kind:
            yield start, end, kind
        pos = max(end, start + 1)


_WWW = re.compile(r"(?<![\w.])www\.[^\s.]+\.\S", re.IGNORECASE)


def has_link(text: str) -> bool:
    """Whether `text` contains a link: http(s)://..., www.name.tld, or a bare domain that Twitter would link
    ("example.com/abc", "discord.gg/x"). Like Twitter, this counts any name ending in a country code, so a
    file name such as "notes.md" (Moldova) or a missing space as in "yeah.so" (Somalia) are links too."""
    if _WWW.search(text):
        return True
    return any(kind == "link" for _, _, kind in _urls(text))


# twitter-text v3: weight 100 (one character) for these code points, 200 (two) for all others; scale 100.
_LIGHT = re.compile("[\u0000-\u10ff\u2000-\u200d\u2010-\u201f\u2032-\u2037]")
# Emoji count two each however many code points they take: a pictograph with its variation selector or skin
# tone, further pictographs joined by ZWJ, a flag (two regional indicators), a keycap, a subdivision flag.
# Pictographs below U+1F000 mostly default to text and take U+FE0F ("❤️"); above, only some do, so there
# a selector merges only inside a ZWJ sequence ("🏳️‍🌈"). In doubt a sequence counts as several emoji: that
# can make a text look longer than Twitter counts it, never shorter.
_PICTO_LOW = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u25fe\u2600-\u27bf"
              "\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299")
_PICTO_HIGH = "\U0001F000-\U0001F1E5\U0001F200-\U0001FAFF"  # not the regional indicators (flags)
_SKIN = "[\U0001F3FB-\U0001F3FF]?"
_FIRST = f"(?:[{_PICTO_LOW}][\ufe0e\ufe0f]?|[{_PICTO_HIGH}](?:[\ufe0e\ufe0f](?=\u200d))?){_SKIN}"
_NEXT = f"[{_PICTO_LOW}{_PICTO_HIGH}][\ufe0e\ufe0f]?{_SKIN}"
_EMOJI = re.compile(
    "[\U0001F1E6-\U0001F1FF]{2}"
    "|[0-9#*]\ufe0f?\u20e3"
    "|\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F"
    f"|{_FIRST}(?:\u200d{_NEXT})*"
)
_URL_WEIGHT = 23


def _plain_weight(text: str) -> int:
    """Weighted length of text without URLs: emoji 2, light code points 1, others 2."""
    total = 0
    pos = 0
    for match in _EMOJI.finditer(text):
        chunk = text[pos:match.start()]
        total += 2 * len(chunk) - len(_LIGHT.findall(chunk)) + 2
        pos = match.end()
    chunk = text[pos:]
    return total + 2 * len(chunk) - len(_LIGHT.findall(chunk))


def tweet_length(text: str) -> int:
    """Twitter's weighted length of `text` (twitter-text v3 rules): NFC-normalised; every link counts 23;
    every emoji, however many code points, counts 2; CJK and most other non-Latin characters count 2; Latin,
    general punctuation and the like count 1. A tweet may weigh at most `TWEET_LIMIT`."""
    text = unicodedata.normalize("NFC", text)
    total = 0
    pos = 0
    for start, end, kind in _urls(text):
        total += _plain_weight(text[pos:start])
        own = _plain_weight(text[start:end])
        # "maybe": Twitter may know the ending (23) or not (its own length); the larger is safe for a limit.
        total += _URL_WEIGHT if kind == "link" else max(_URL_WEIGHT, own)
        pos = end
    return total + _plain_weight(text[pos:])


# --- cutting to a length ------------------------------------------------------------------------------------

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


# --- targets and the filter ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where a text goes: its name, its length limit (None: none) and how that limit is measured."""

    name: str
    limit: int | None
    length: Callable[[str], int]


DISCORD = Target("discord", DISCORD_LIMIT, len)
TWITTER = Target("twitter", TWEET_LIMIT, tweet_length)
TERMINAL = Target("terminal", None, len)


class OutputFilter:
    """Every text that leaves the bot passes here: `reject` says whether a candidate must be resampled,
    `finish` makes an accepted one safe to send to a target."""

    def __init__(self, leak_guard: LeakGuard | None = None, blocklist: Blocklist | None = None) -> None:
        self.leak_guard = leak_guard
        self.blocklist = blocklist

    def reject(self, text: str) -> str | None:
        """None when `text` may be sent, else why not: the leak guard first, then the blocklist."""
        if self.leak_guard is not None and (reason := self.leak_guard.check(text)):
            return reason
        if self.blocklist is not None and (reason := self.blocklist.check(text)):
            return reason
        return None

    def finish(self, text: str, target: Target = DISCORD, *,
               names: Callable[[str, str], str | None] | None = None) -> str:
        """`text` ready to send to `target`: mentions neutralised (see `neutralise_mentions`), then cut to the
        target's limit. Links are left alone; `has_link` tells whether there are any."""
        # Mentions first: a name is longer than "<@123>", and the limit applies to what is sent.
        text = neutralise_mentions(text, names=names)
        if target.limit is not None:
            text = cut_to_length(text, target.limit, length=target.length)
        return text

