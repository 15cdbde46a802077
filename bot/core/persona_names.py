"""Which names a persona may speak under: `name_problem` says why a name cannot be one, or None.

A persona's name is what people see on its webhook messages, so besides what Discord itself refuses (a name
containing "discord" or "clyde"; "everyone" or "here") a name must not pass for something it is not: written
with look-alike letters of another script (Cyrillic "Сlyde"), drawn blank (U+3164 HANGUL FILLER), or looking
like someone already in the server (a member's display name, another persona's name).

Look-alikes are judged with Unicode's confusables data (UTS #39, as the `confusable_homoglyphs` package
ships it): two names look alike when they share a skeleton, each character replaced by the one it is
confusable with. Invisible characters are Unicode's Default_Ignorable_Code_Point property (through the
`regex` package: U+3164 is a letter by category) and the control, format, private-use, unassigned and
separator categories; a blank-looking symbol such as U+2800 is outside the allowed characters anyway.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

import regex
from confusable_homoglyphs import categories, confusables

MAX_NAME = 32
# Letters, digits, spaces and . _ ' - ; a letter or digit first.
_NAME = re.compile(r"^\w[\w .'-]*$")
# Discord refuses a webhook name containing these, so a persona could never speak under one.
WEBHOOK_FORBIDDEN = ("discord", "clyde")
# Discord refuses these as a name (they read as the @everyone and @here pings).
RESERVED = ("everyone", "here")

# A character that draws nothing, or nothing of its own: Unicode's default ignorables (U+3164 HANGUL FILLER is
# one, though a letter by category), control, format, surrogate, private use and unassigned code points, and
# separators other than the plain space (which shows as a gap).
_INVISIBLE = regex.compile(r"[[\p{Default_Ignorable_Code_Point}\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Z}]--[ ]]",
                           flags=regex.V1)
_NO_SCRIPT = frozenset({"COMMON", "INHERITED"})     # digits, punctuation, combining marks: any script's
# Scripts written together in Chinese, Japanese and Korean (UTS #39's highly restrictive level allows these
# mixes); for the mixed-script rule they are one writing system.
_EAST_ASIAN = "EAST ASIAN"
_EAST_ASIAN_SCRIPTS = frozenset({"HAN", "HIRAGANA", "KATAKANA", "BOPOMOFO", "HANGUL"})


def name_problem(name: str, *, taken: Iterable[str] = ()) -> str | None:
    """Why `name` cannot be a persona's name, or None. `taken`: names it must not look like (the server's
    members' display names, its other personas' names)."""
    if not name or len(name) > MAX_NAME:
        return f"a persona's name has 1 to {MAX_NAME} characters"
    hidden = _INVISIBLE.search(name)
    if hidden is not None:
        return (f"{name!r} contains an invisible or blank-looking character ({_describe(hidden.group())}): "
                "write the name with visible letters and digits (and plain spaces)")
    if not _NAME.match(name) or name != name.strip():
        return (f"{name!r} is not a usable persona name: letters, digits, spaces and . _ ' - only, "
                "starting with a letter or digit")
    return _discord_problem(name) or _mixed_script_problem(name) or _taken_problem(name, taken)


def skeletons(text: str) -> frozenset[str]:
    """`text` as a reader may see it: compatibility forms folded (fullwidth, mathematical letters), invisible
    characters dropped, each character replaced by its UTS #39 confusable prototype, case folded, spaces
    collapsed. Two forms, since case changes what looks alike ("I" looks like "l", "i" does not): mapped as
    written, and mapped once case is folded. Names sharing a skeleton look alike."""
    if not (text.isascii() and text.isprintable()):      # most names need neither step
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))     # NFKC makes other spaces plain
    # Mapped again once folded: Cyrillic "С" folds to "с", a look-alike of "c".
    as_written = _to_prototypes(_to_prototypes(text).casefold())
    folded = _to_prototypes(_to_prototypes(text.casefold()).casefold())
    return frozenset(" ".join(form.split()) for form in (as_written, folded))


def look_alike(a: str, b: str) -> bool:
    """Whether names `a` and `b` may be taken for each other."""
    return not skeletons(a).isdisjoint(skeletons(b))


def _discord_problem(name: str) -> str | None:
    """Why Discord would refuse `name`, written plainly or with look-alike letters, or None."""
    lowered = name.lower()
    forbidden = next((word for word in WEBHOOK_FORBIDDEN if word in lowered), None)
    if forbidden:
        return (f"{name!r} contains {forbidden!r}, which Discord does not allow in the name a message is sent under: "
                "choose a name without it")
    seen = skeletons(name)
    reserved = next((word for word in RESERVED if not skeletons(word).isdisjoint(seen)), None)
    if reserved:
        return (f"{name!r} reads as {reserved!r}, which Discord does not allow as a name (it is the @{reserved} "
                "ping): choose another name")
    forbidden = next((word for word in WEBHOOK_FORBIDDEN
                      if any(part in form for part in skeletons(word) for form in seen)), None)
    if forbidden:
        return (f"{name!r} looks like it contains {forbidden!r} (written with look-alike letters), which Discord "
                "does not allow in the name a message is sent under: choose a name without it")
    return None


def _mixed_script_problem(name: str) -> str | None:
    """A letter of a minor script in `name` that looks like one of its main script (Cyrillic "С" among Latin
    letters), or None. Names mixing scripts without look-alikes ("Lily 김") are fine, and so are the scripts
    one language writes together (Japanese: Han, Hiragana, Katakana), which count as one."""
    scripts: dict[str, set[str]] = {}           # writing system -> the scripts of it in the name
    letters: Counter[str] = Counter()
    for c in name:
        script = categories.alias(c)
        if script not in _NO_SCRIPT:
            system = _EAST_ASIAN if script in _EAST_ASIAN_SCRIPTS else script
            scripts.setdefault(system, set()).add(script)
            letters[system] += 1
    if len(letters) < 2:
        return None
    most = max(letters.values())
    for system in letters:
        others = sorted(s for main, n in letters.items() if n == most and main != system for s in scripts[main])
        if not others:
            continue
        own = "".join(c for c in name if categories.alias(c) in scripts[system])
        found = confusables.is_confusable(own, preferred_aliases=others)
        if found:
            char = found[0]["character"]
            like = next(g for h in found[0]["homoglyphs"] for g in h["c"] if categories.alias(g) in others)
            return (f"{name!r} mixes scripts so that it looks like something else: {char!r} "
                    f"({_script(categories.alias(char))}) looks like {_script(categories.alias(like))} "
                    f"{like!r}; write the name in one script")
    return None


def _taken_problem(name: str, taken: Iterable[str]) -> str | None:
    """The name in `taken` that `name` looks like, as a refusal, or None."""
    seen = skeletons(name)
    other = next((t for t in taken if not seen.isdisjoint(skeletons(t))), None)
    if other is None:
        return None
    return (f"{name!r} looks the same as {other!r}, already the name of a member or a persona of this server: "
            "choose a name nobody can take for theirs")


class _PrototypeTable(dict[int, str]):
    """Code point -> its prototype, for `str.translate`, filled in as characters are met."""

    def __missing__(self, code: int) -> str:
        self[code] = found = _prototype(chr(code))
        return found


_PROTOTYPES = _PrototypeTable()


def _to_prototypes(text: str) -> str:
    return text.translate(_PROTOTYPES)


def _prototype(char: str) -> str:
    """The character (or sequence) that UTS #39 says `char` is confusable with; `char` itself when none.
    The data lists each confusable character with its prototype, and each prototype with all its
    characters; a pair that lists only each other (one stands for the other) is written as the smaller."""
    entries = confusables.confusables_data.get(char)
    if not entries or len(entries) > 1:       # unknown, or a prototype that several characters look like
        return char
    target = entries[0]["c"]
    if len(confusables.confusables_data.get(target, ())) > 1:
        return target
    return min(char, target)


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"


def _script(alias: str) -> str:
    return alias.replace("_", " ").title()
