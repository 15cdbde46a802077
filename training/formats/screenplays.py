"""Film and TV scripts as people find them: Kaggle's quoted tables, one-line transcripts, Fountain screenplays.

- `script-kaggle`: the Star Wars trilogy scripts as Kaggle ships them (R's `write.table` output): a header
  `"character" "dialogue"`, then `"1" "THREEPIO" "Did you hear that?"` rows of space-separated quoted fields.
- `script-transcript`: `LUKE: I want to come with you.` one turn per line, as TV/film transcript sites and
  fan scripts write them, with `(parentheticals)`, `[stage directions]` and scene headings between.
- `fountain`: the Fountain screenplay markup (https://fountain.io/syntax) that screenwriting tools export.

As in `scripts.py`, a script has no timestamps: each file is one thread keyed by its path, conversations end
only at the scenes the script marks, and speaker names are kept as written (only a cue's `(V.O.)`-style
extension is dropped). Every line is read with string methods or patterns bounded by a short prefix, so time
stays linear on any input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from training.formats.base import ImportOptions, Importer, ParseResult, Skip, Source, Thread, split_lines
from training.formats.scripts import (SPEAKER_COLUMNS, TEXT_COLUMNS, _add_break, _add_line, _finish,
                                      _thread_key)

# Skip reason this module adds to the shared `Skip` ones: a writer's note to themselves (Fountain `[[note]]`,
# `/* boneyard */`, `= synopsis`), never said by anyone.
WRITER_NOTE = "writer-note"


def _numbered_lines(source: Source) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending), read a line at a time."""
    for number, line in enumerate(source.text_lines(), start=1):
        yield number, line.rstrip("\r\n")


def _empty_file(source: Source) -> DataError:
    return DataError(source.path, "the file is empty", hint="export or save the script again")


# --- script-kaggle -----------------------------------------------------------------------------------------
_KAGGLE_HINT = ('each line must be "number" "SPEAKER" "line" in double quotes separated by spaces; a quote '
                'inside a line is written twice ("") or as \\"')


def _quoted_fields(line: str) -> tuple[list[str], str | None]:
    """The double-quoted, space-separated fields of one line and None, or the fields read so far and what is
    wrong. Inside a field `""` and `\\"` are a quote; a quote closes the field only before a space or the end
    of the line, so a stray quote is reported instead of cutting the text short."""
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i == n:
            return fields, None
        if line[i] != '"':
            return fields, f"column {i + 1}: expected a field in double quotes, found {line[i]!r}"
        opened = i
        i += 1
        parts: list[str] = []
        while True:
            quote = line.find('"', i)
            if quote < 0:
                return fields, f"column {opened + 1}: the quoted field is not closed on this line"
            if quote > i and line[quote - 1] == "\\":
                parts.append(line[i:quote - 1] + '"')  # \" : R's write.table escape
                i = quote + 1
            elif quote + 1 < n and line[quote + 1] == '"':
                parts.append(line[i:quote + 1])  # "" : a doubled quote is one quote
                i = quote + 2
            elif quote + 1 == n or line[quote + 1] in " \t":
                parts.append(line[i:quote])
                fields.append("".join(parts))
                i = quote + 1
                break
            else:
                return fields, (f"column {quote + 1}: a quote inside the field is neither doubled nor "
                                "followed by a space")


def _kaggle_header(fields: list[str]) -> bool:
    """Whether fields are the header: a speaker column name and a text column name ("character" "dialogue")."""
    folded = [f.strip().casefold() for f in fields]
    return len(folded) == 2 and folded[0] in SPEAKER_COLUMNS and folded[1] in TEXT_COLUMNS


@register
class ScriptKaggleImporter(Importer):
    """Space-separated double-quoted rows with a row number first (R's `write.table`), header
    `"character" "dialogue"`."""

    name = "script-kaggle"
    description = ('Kaggle Star Wars scripts: "character" "dialogue" header, rows "1" "THREEPIO" "..."; '
                   "get SW_EpisodeIV/V/VI.txt from the Kaggle data set 'Star Wars Movie Scripts'")

    def sniff(self, source: Source) -> float:
        lines = [line for line in split_lines(source.head_text()) if line.strip()]
        if len(source.head()) >= Source.HEAD_BYTES:
            lines = lines[:-1]  # the last line may be cut off
        if len(lines) < 2:
            return 0.0
        header, problem = _quoted_fields(lines[0])
        if problem is not None or not _kaggle_header(header):
            return 0.0
        rows = [_quoted_fields(line) for line in lines[1:21]]
        good = sum(problem is None and len(fields) == 3 and fields[0].strip().isdigit()
                   for fields, problem in rows)
        # The header is a strong sign: a file with a few malformed rows is still this format, so that parse
        # can name the bad line instead of detection giving up.
        return 0.95 if good >= 0.5 * len(rows) else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        items: list[Message | SceneBreak] = []
        seen_first = False
        for number, line in _numbered_lines(source):
            if not line.strip():
                continue  # a blank line holds no row
            fields, problem = _quoted_fields(line)
            if problem is None and not seen_first and _kaggle_header(fields):
                seen_first = True
                continue
            seen_first = True
            if problem is None and len(fields) not in (2, 3):
                problem = f"found {len(fields)} quoted fields, expected 3 (number, speaker, line)"
            if problem is not None:
                raise DataError(source.path, f"is not a quoted script row: {problem}", where=f"line {number}",
                                hint=_KAGGLE_HINT)
            speaker, text = fields[-2].strip(), fields[-1].strip()
            _add_line(result, items, options, speaker, text, str(number))
        if not seen_first:
            raise _empty_file(source)
        result.threads.append(Thread(_thread_key(self.name, source), source.path.stem, items))
        return result


# --- shared by transcripts and Fountain --------------------------------------------------------------------
_CLOSERS = {"(": ")", "[": "]"}
_OPENERS = {")": "(", "]": "["}


def _without_directions(text: str) -> tuple[str, int]:
    """Text with `(parentheticals)` and `[directions]` removed (nested ones too), and how many outer ones were
    removed. An unclosed bracket and what follows it stay, so a stray `(` never swallows speech. Each
    character is appended once and cut at most once: linear time."""
    out: list[str] = []
    open_at: list[tuple[str, int]] = []  # (bracket, length of `out` before it)
    removed = 0
    for char in text:
        if char in _CLOSERS:
            open_at.append((char, len(out)))
        elif char in _OPENERS and open_at and open_at[-1][0] == _OPENERS[char]:
            del out[open_at.pop()[1]:]
            if not open_at:
                removed += 1
            continue
        out.append(char)
    if not removed:
        return text.strip(), 0
    return " ".join("".join(out).split()), removed  # the spaces either side of a removed part become one


# Scene heading openers from the Fountain spec, each followed by a dot or a space (any case).
_HEADING_PREFIXES = tuple(prefix + end for prefix in ("INT./EXT", "INT/EXT", "I/E", "INT", "EXT", "EST")
                          for end in ". ")


def _is_scene_heading(line: str) -> bool:
    """Whether a (stripped) line is a scene heading: `INT. HOUSE - DAY`, `EXT ROOF`, `I/E CAR`."""
    return line[:10].upper().startswith(_HEADING_PREFIXES)


# --- script-transcript -------------------------------------------------------------------------------------
# A speaker before the colon: up to five words of letters, digits and .'&- (the first a capital letter, every
# word starting with a letter or digit): "LUKE", "Captain Orso", "MRS. ABERNATHY-COLE", "R2-D2"; not "SHOW -
# Episode 4". Only the first 40 characters are ever matched.
_TRANSCRIPT_NAME = re.compile(r"[^\W\d_][\w.'\u2019&-]*(?: [^\W_][\w.'\u2019&-]*){0,4}")
_NAME_PREFIX = 40
_RULE_CHARS = frozenset("-*=_~# ")
_TRANSITIONS = ("FADE IN:", "FADE OUT", "FADE TO BLACK", "THE END")


def _speaker_line(line: str) -> tuple[str, str] | None:
    """(speaker, text) of a `NAME: text` line (the text may be empty: `NAME:` alone), or None."""
    colon = line.find(":", 0, _NAME_PREFIX)
    if colon <= 0 or (colon + 1 < len(line) and not line[colon + 1].isspace()):
        return None
    name = line[:colon].rstrip()
    if not name or not name[0].isupper() or _TRANSCRIPT_NAME.fullmatch(name) is None:
        return None
    return name, line[colon + 1:].strip()


def _transcript_heading(line: str) -> str | None:
    """The label of a line that starts a new scene (`INT. BRIDGE`, `Scene 2`, `[Scene: a beach]`, `---`), or
    None. `line` is stripped."""
    if len(line) >= 3 and set(line) <= _RULE_CHARS:
        return ""
    inner = line
    if line[:1] in _CLOSERS and line.endswith(_CLOSERS[line[0]]):
        inner = line[1:-1].strip()
    for word in ("scene", "act"):
        after = inner[len(word):len(word) + 1]
        if inner[:len(word)].casefold() == word and (after in ("", " ", ":", ".") or after.isdigit()):
            return inner
    if _is_scene_heading(inner):
        return inner
    return None


def _is_transition(line: str) -> bool:
    """`CUT TO:`, `DISSOLVE TO:`, `FADE OUT.`: the editor's instructions between scenes (line stripped)."""
    return line.isupper() and (line.endswith("TO:") or line.startswith(_TRANSITIONS))


@register
class ScriptTranscriptImporter(Importer):
    """`NAME: text`, one turn per line; directions in brackets, scene headings and rules between turns."""

    name = "script-transcript"
    description = ("Transcript with one 'NAME: text' turn per line (TV/film transcript sites, fan scripts); "
                   "copy the page's text into a .txt file")

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if head.lstrip().startswith(("{", "<")):
            return 0.0
        lines = split_lines(head)
        if len(source.head()) >= Source.HEAD_BYTES:
            lines = lines[:-1]
        named: list[str] = []
        alone = other = 0
        for raw in lines:
            line = raw.strip()
            if (not line or _transcript_heading(line) is not None or line[0] in _CLOSERS
                    or _is_transition(line)):
                continue
            speaker = _speaker_line(line)
            if speaker is None:
                other += 1
            elif speaker[1]:
                named.append(speaker[0])
            else:
                alone += 1  # `NAME:` on a line of its own is script-blocks' layout
        total = len(named) + alone + other
        if len(named) < 5 or alone * 4 > len(named) or len(set(named)) * 2 > len(named):
            return 0.0
        share = len(named) / total
        if share >= 0.8 and len(named) >= 10:
            return 0.8
        return 0.6 if share >= 0.6 else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        items: list[Message | SceneBreak] = []
        speaker: str | None = None   # whose speech is open: continuation lines (no blank between) are theirs
        speech: list[str] = []
        speech_line = 0
        turn_was_direction = False
        turns = 0
        closer: str | None = None    # set inside a bracketed direction that spans lines
        in_orphan = False            # inside a paragraph with no speaker (counted once)
        any_line = False

        def end_speech() -> None:
            nonlocal speaker
            # A turn that was only a direction ("LUKE: (laughs)") is counted already, as a stage direction.
            if speaker is not None and (speech or not turn_was_direction):
                _add_line(result, items, options, speaker, "\n".join(speech), str(speech_line))
            speaker = None
            speech.clear()

        for number, raw in _numbered_lines(source):
            line = raw.strip()
            any_line = any_line or bool(line)
            if closer is not None:
                # A blank line also ends it, so one missing bracket cannot swallow the rest of the script.
                if not line or closer in line:
                    closer = None
                continue
            if not line:
                end_speech()
                in_orphan = False
                continue
            label = _transcript_heading(line)
            if label is not None:
                end_speech()
                in_orphan = False
                _add_break(items, label)
                continue
            if _is_transition(line):
                end_speech()
                result.skip(Skip.STAGE_DIRECTION)
                continue
            if line[0] in _CLOSERS and _CLOSERS[line[0]] not in line:
                end_speech()
                result.skip(Skip.STAGE_DIRECTION)
                closer = _CLOSERS[line[0]]
                continue
            text, directions = _without_directions(line)
            result.skip(Skip.STAGE_DIRECTION, directions)
            if not text:
                continue  # only a direction (counted above); a speech may go on after it
            turn = _speaker_line(text)
            if turn is not None:
                end_speech()
                in_orphan = False
                speaker, speech_line, turn_was_direction = turn[0], number, bool(directions) and not turn[1]
                turns += 1
                if turn[1]:
                    speech.append(turn[1])  # else `NAME:` alone: the speech may follow on the next lines
                continue
            if speaker is not None:
                speech.append(text)  # the turn goes on over a wrapped line
            elif not in_orphan:
                result.skip(Skip.NO_SPEAKER)  # narration, a title: nobody is named as saying it
                in_orphan = True
        end_speech()
        if not any_line:
            raise _empty_file(source)
        if turns == 0:
            raise DataError(source.path, "no speaker lines: no line looks like 'NAME: what they say'",
                            where="line 1", hint="each turn must start with the speaker's name and a colon, "
                                                 "e.g. LUKE: I want to come with you")
        result.threads.append(Thread(_thread_key(self.name, source), source.path.stem, _finish(items)))
        return result


# --- fountain ----------------------------------------------------------------------------------------------
FOUNTAIN_SUFFIXES = (".fountain", ".spmd")
# Title page keys from the Fountain spec (and "Date", which many tools write).
_TITLE_KEYS = frozenset({"title", "credit", "author", "authors", "source", "draft date", "date", "contact",
                         "copyright", "notes", "revision", "format"})
# `\*` and `\_` are literal; any other `*` or `_` is emphasis markup (Fountain asks writers to escape
# literal ones). One character at a time, so no input can make this backtrack.
_EMPHASIS_MARK = re.compile(r"\\([*_\\])|[*_]")
_SCENE_NUMBER_MARK = "#"


def _plain(text: str) -> str:
    """Fountain text without emphasis markers (`*italic*`, `**bold**`, `_underline_`)."""
    return _EMPHASIS_MARK.sub(lambda m: m.group(1) or "", text).strip()


def _without_scene_number(heading: str) -> str:
    """`INT. HOUSE - DAY #1A#` without its scene number."""
    if heading.endswith(_SCENE_NUMBER_MARK):
        start = heading.rfind(_SCENE_NUMBER_MARK, 0, len(heading) - 1)
        if start >= 0:
            return heading[:start].rstrip()
    return heading


def _cue(line: str) -> tuple[str, str] | None:
    """(speaker, extension) of a character cue (`LUKE`, `OLWEN (O.S.)`, `@McGILL`, `TINKER ^`), or None.
    The name is kept as written; a cue without `@` must be in capitals and must not end in a colon."""
    forced = line.startswith("@")
    body = line[1:] if forced else line
    body = body.rstrip()
    if body.endswith("^"):  # dual dialogue: said at the same time as the cue before
        body = body[:-1].rstrip()
    paren = body.find("(")
    name, extension = (body, "") if paren < 0 else (body[:paren].strip(), body[paren:].strip())
    if extension and not extension.endswith(")"):
        return None
    if not name or not any(c.isalpha() for c in name):
        return None
    if not forced and (name != name.upper() or name.endswith(":") or _is_scene_heading(name)):
        return None
    return name, extension


def _is_continued(extension: str) -> bool:
    """Whether a cue's extension says the speech goes on: (CONT'D), (CONT’D), (CONTD), (continuing)."""
    return "cont" in extension.casefold()


def _without_notes(source: Source, result: ParseResult) -> list[tuple[int, str]]:
    """The file's lines with `[[notes]]` and `/* boneyard */` removed (each counted as a writer's note).

    A line wholly inside one is dropped rather than kept blank, so a note or a boneyard holding blank lines
    does not split the dialogue around it. An unclosed one is an error naming the line it opened on.
    """
    out: list[tuple[int, str]] = []
    closer: str | None = None
    opened_on = 0
    for number, line in _numbered_lines(source):
        kept: list[str] = []
        touched = closer is not None
        # Next position of each opener; found again only once passed, so a line is scanned a bounded
        # number of times however many notes it holds.
        next_at = {"/*": line.find("/*"), "[[": line.find("[[")}
        i = 0
        while i <= len(line):
            if closer is not None:
                end = line.find(closer, i)
                if end < 0:
                    break
                i = end + 2
                closer = None
                continue
            for opener, at in next_at.items():
                if 0 <= at < i:
                    next_at[opener] = line.find(opener, i)
            found = [(at, opener) for opener, at in next_at.items() if at >= 0]
            if not found:
                kept.append(line[i:])
                break
            at, opener = min(found)
            kept.append(line[i:at])
            closer = "*/" if opener == "/*" else "]]"
            opened_on = number
            touched = True
            result.skip(WRITER_NOTE)
            i = at + 2
        text = "".join(kept)
        if touched and not text.strip():
            continue
        out.append((number, text))
    if closer is not None:
        what = "boneyard /*" if closer == "*/" else "note [["
        raise DataError(source.path, f"the {what} opened here is never closed", where=f"line {opened_on}",
                        hint=f"close it with {closer} (or remove the opening {what.split()[-1]})")
    return out


def _fountain_cue_count(lines: list[str]) -> tuple[int, list[str]]:
    """(scene headings, character names) in some lines of a screenplay, for sniffing."""
    headings = 0
    names: list[str] = []
    for before, line, after in zip([""] + lines, lines, lines[1:] + [""]):
        stripped = line.strip()
        if before.strip() or not stripped:
            continue
        if _is_scene_heading(stripped):
            headings += 1
        elif after.strip() and (cue := _cue(stripped)) is not None:
            names.append(cue[0])
    return headings, names


@register
class FountainImporter(Importer):
    """Fountain screenplays: scene headings, character cues, dialogue, parentheticals, transitions."""

    name = "fountain"
    description = ("Fountain screenplay (.fountain): export it from Beat, Highland, Slugline, Fade In or "
                   "Trelby (File > Export > Fountain)")

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if head.lstrip().startswith(("{", "[", "<")) and not head.lstrip().startswith("[["):
            return 0.0
        if source.path.suffix.lower() in FOUNTAIN_SUFFIXES:
            return 0.95 if head.strip() else 0.0
        lines = split_lines(head)
        if len(source.head()) >= Source.HEAD_BYTES:
            lines = lines[:-1]
        headings, names = _fountain_cue_count(lines)
        if headings >= 1 and len(names) >= 3 and len(set(names)) < len(names):
            return 0.7
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        result = ParseResult()
        lines = _without_notes(source, result)
        if not any(text.strip() for _, text in lines):
            raise _empty_file(source)
        items: list[Message | SceneBreak] = []
        i = 0
        while i < len(lines) and not lines[i][1].strip():
            i += 1
        title, i = _title_page(lines, i)
        cues = 0
        previous_blank = True
        in_action = False
        while i < len(lines):
            number, raw = lines[i]
            line = raw.strip()
            i += 1
            if not line:
                previous_blank, in_action = True, False
                continue
            was_blank, previous_blank = previous_blank, False
            following = lines[i][1] if i < len(lines) else ""
            if len(line) >= 3 and set(line) == {"="}:
                continue  # a page break
            if line.startswith("="):
                result.skip(WRITER_NOTE)  # a synopsis
                continue
            if line.startswith("#"):
                _add_break(items, _plain(line.lstrip("#")))  # a section (act, sequence)
                continue
            if was_blank and ((line.startswith(".") and not line.startswith("..") and len(line) > 1)
                              or _is_scene_heading(line)):
                heading = line[1:] if line.startswith(".") else line
                _add_break(items, _plain(_without_scene_number(heading.strip())))
                in_action = False
                continue
            if line.startswith(">") or (was_blank and _is_transition(line)):
                result.skip(Skip.STAGE_DIRECTION)  # a transition, or >centered text<
                in_action = False
                continue
            cue = _cue(line) if was_blank and following.strip() and not line.startswith("!") else None
            if cue is not None:
                i = self._read_dialogue(lines, i, cue, items, result, options)
                cues += 1
                previous_blank, in_action = False, False
                continue
            if not in_action:
                result.skip(Skip.STAGE_DIRECTION)  # an action paragraph (or lyrics outside dialogue)
                in_action = True
        if cues == 0:
            raise DataError(source.path, "no dialogue: no character name in capitals on a line of its own, "
                            "after a blank line and before the speech", where="line 1",
                            hint="Fountain dialogue is a blank line, the name (LUKE), then the lines said")
        result.threads.append(Thread(_thread_key(self.name, source), title or source.path.stem,
                                     _finish(items)))
        return result

    def _read_dialogue(self, lines: list[tuple[int, str]], i: int, cue: tuple[str, str],
                       items: list[Message | SceneBreak], result: ParseResult, options: ImportOptions) -> int:
        """Read the dialogue after a cue (up to a blank line; a line of exactly two spaces continues it), add
        it as one message, and return the index of the first line after it."""
        speaker, extension = cue
        said: list[str] = []
        first = lines[i][0]
        while i < len(lines) and (lines[i][1].strip() or lines[i][1] == "  "):
            line = lines[i][1].strip()
            i += 1
            if line.startswith("(") and line.endswith(")"):
                result.skip(Skip.STAGE_DIRECTION)  # a parenthetical: how it is said, not what
            elif line:
                said.append(_plain(line.removeprefix("~")))
        text = "\n".join(part for part in said if part)
        last = items[-1] if items else None
        if (_is_continued(extension) and text and isinstance(last, Message) and last.speaker == speaker):
            # (CONT'D): the same speech, interrupted by action, goes on.
            items[-1] = Message(speaker=speaker, text=f"{last.text}\n{text}", id=last.id)
        else:
            _add_line(result, items, options, speaker, text, str(first))
        return i


def _title_page(lines: list[tuple[int, str]], i: int) -> tuple[str, int]:
    """(title, index after the title page) when the script opens with a `Title:`/`Author:` block, else
    ("", i). Values may go on over indented lines; the block ends at the first blank line."""
    first = lines[i][1] if i < len(lines) else ""
    colon = first.find(":")
    if colon <= 0 or first[:colon].strip().casefold() not in _TITLE_KEYS:
        return "", i
    title_parts: list[str] = []
    key = ""
    while i < len(lines) and lines[i][1].strip():
        line = lines[i][1]
        i += 1
        colon = line.find(":")
        if not line[:1].isspace() and colon > 0:
            key, value = line[:colon].strip().casefold(), line[colon + 1:].strip()
        else:
            value = line.strip()  # an indented value line of the key above
        if key == "title" and value:
            title_parts.append(_plain(value))
    return " ".join(title_parts), i
