"""The leak guard: keeps the training text from coming back in a reply.

`LeakGuard` is built from every text the model was trained on and rejects a candidate reply that repeats a
persona's own response word for word, shares a run of eight words with any training text, repeats a
phone-like number or a rare 4+-digit number, or is a near-verbatim copy of a training line (a word or two
inserted, dropped or replaced) that keeps what made the line someone's. A rejected reply is sampled again.

What a chat persona must still be able to say decides the rule for near-verbatim lines: a *distinctive*
word is one that at most `rare_lines` (32) training texts contain, and a reply is a near-duplicate only if
it keeps a line's distinctive words. So "yes", "lol same", "see you soon", "are you coming tonight", said by
everybody, are never blocked for being short and common, while "code is swordfish" for "gate code is
swordfish" is; replies of one or two words are never near-duplicates. The class docstring has the details,
and `bench/leak_guard.py` measures its memory and speed.

It lives in training/ because both halves apply the one rule: the bot's output filter (`bot.core.filters`)
refuses such replies, and a new persona's fidelity report (`training.fidelity`) counts how many of its
sampled lines the bot would refuse.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from training.text_forms import FORMAT_CHARS

# A reply sharing this many consecutive words with the training text is a leak (LEAK_NGRAM_WORDS).
NGRAM_WORDS = 8

# Markdown and emphasis symbols that wrap words in chat ("*really*", "~~no~~", "||spoiler||", "`code`") besides
# Unicode punctuation; emoji and currency signs are kept, they are part of what was said.
_EXTRA_STRIP = "~`|^+<>="



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
    text = FORMAT_CHARS.sub("", text)
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

    def __init__(self, texts: Iterable[tuple[str, bool]], *, ngram_words: int = NGRAM_WORDS,
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
        """The guard for a persona artifact, from its `training_text.jsonl.gz` and that of every persona
        artifact below it (an adapter's base persona, its base, ...: their text is in the weights too);
        `kwargs` go to `__init__`. A missing or damaged index is an `ArtifactError` that names it."""
        # Imported here: training.artifact pulls in torch, which the filters themselves do not need.
        from training.artifact import read_shaping_text, shaping_artifacts

        return cls(read_shaping_text(shaping_artifacts(directory)), **kwargs)

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
