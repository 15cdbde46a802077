"""Script importers for the shapes people find scripts in (issue 10): Kaggle's quoted Star Wars tables,
one-line `NAME: text` transcripts, and Fountain screenplays; on hand-written fixtures of invented scripts."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from script_layout import BREAK, break_labels, layout, only_thread, parse

from training import formats
from training.conversation import Message
from training.errors import DataError
from training.formats.base import Source

FIXTURES_DIR = Path(__file__).parent.parent / "fixtures"
NEW_FORMATS = ("script-kaggle", "script-transcript", "fountain")


# --- script-kaggle ------------------------------------------------------------------------------------------
def test_kaggle_rows_with_doubled_and_escaped_quotes(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-kaggle" / "salt-flats.txt"
    result = parse("script-kaggle", path)
    thread = only_thread(result)
    assert thread.key == f"script-kaggle:{path.resolve()}" and thread.title == "salt-flats"
    assert layout(thread) == [
        ("MIRA", "Did you hear that?  The condenser just stopped."),   # the double spaces stay as written
        ("DOBBS", "I heard nothing.  I was asleep, like a sensible droid."),
        ("MIRA", "Droids don't sleep."),
        ("DOBBS", 'Then I was "resting my eyes", as you say.'),        # "" is one quote
        ("CAPTAIN VELL", "Quiet, both of you. Something's on the ridge."),
        ("MIRA", "It's just a sand hopper.  Probably."),
        ("CAPTAIN VELL", 'She said "probably". I heard it.'),          # \" is one quote
        ("MIRA", "Fine. It's a very large sand hopper."),
        ("DOBBS", '"Very large" is generous.'),                        # \" opening and closing a field
        ("CAPTAIN VELL", 'He means "thank you."'),
    ]
    assert result.skipped == Counter({"empty": 1, "no-speaker": 1})
    assert all(m.timestamp is None for m in thread.items if isinstance(m, Message))


def test_kaggle_with_crlf_blank_lines_and_unicode(fixtures_dir: Path) -> None:
    result = parse("script-kaggle", fixtures_dir / "script-kaggle" / "dry-well-crlf.txt")
    assert layout(only_thread(result)) == [
        ("OLD KESS", "The well\u2019s dry again."),
        ("TAMSIN", "Then we dig the next one."),
        ("OLD KESS", "With what, our teeth?"),
        ("TAMSIN", 'With the "borrowed" shovel.'),
    ]
    assert result.skipped == Counter()


def test_kaggle_rows_without_row_numbers_or_header_and_too_many_fields(tmp_path: Path) -> None:
    path = tmp_path / "no-header.txt"
    path.write_text('"MIRA" "Hello."\n"DOBBS" "Hello yourself."\n', encoding="utf-8")
    assert layout(only_thread(parse("script-kaggle", path))) == [("MIRA", "Hello."), ("DOBBS", "Hello yourself.")]
    path.write_text('"character" "dialogue"\n"1" "MIRA" "Hello." "extra"\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        parse("script-kaggle", path)
    assert caught.value.where == "line 2" and "found 4 quoted fields" in caught.value.message


@pytest.mark.parametrize("name,line,says", [
    ("stray-quote.txt", 3, "neither doubled nor followed by a space"),
    ("unclosed-quote.txt", 3, "not closed on this line"),
])
def test_kaggle_malformed_line_names_file_and_line(fixtures_dir: Path, name: str, line: int, says: str) -> None:
    path = fixtures_dir / "script-kaggle" / "bad" / name
    with pytest.raises(DataError) as caught:
        parse("script-kaggle", path)
    error = caught.value
    assert error.path == str(path) and error.where == f"line {line}" and says in error.message
    assert 'written twice ("")' in (error.hint or "")


# --- script-transcript --------------------------------------------------------------------------------------
def test_transcript_turns_directions_and_scene_headings(fixtures_dir: Path) -> None:
    path = fixtures_dir / "script-transcript" / "harbour-watch.txt"
    result = parse("script-transcript", path)
    thread = only_thread(result)
    assert thread.key == f"script-transcript:{path.resolve()}"
    assert layout(thread) == [
        ("NELL", "Morning, Captain. The fog's rolled in again."),
        ("CAPTAIN ORSO", "It always does on a Tuesday."),          # "(yawning)" is not speech
        ("NELL", "That's not how fog works."),
        ("CAPTAIN ORSO", "Tell that to the fog."),                 # nor "[He pours coffee.]"
        ("PIP", "Captain! Captain! The bell buoy's gone quiet!"),
        ("CAPTAIN ORSO", "Quiet how?"),
        ("PIP", "Quiet like... not ringing, sir."),
        ("NELL", "I'll fetch the lantern."),
        BREAK,                                                     # "---" then "EXT. THE PIER": one break
        ("PIP", "It was right there yesterday."),
        ("NELL", "Buoys don't walk off, Pip."),
        ("PIP", "This one might. It had a look about it."),
        ("CAPTAIN ORSO", "Right. Rowboat. Everyone in."),          # "CAPTAIN ORSO: (laughs)" is no turn
        BREAK,
        ("MRS. ABERNATHY-COLE", "You three are late for tea."),
        ("NELL", "We found the buoy, Mrs. Abernathy-Cole."),
        ("MRS. ABERNATHY-COLE", "Where?"),
        ("PIP", "On the roof of the chandlery.\nIt was wearing a hat."),  # a wrapped line goes on the turn
        ("NELL", "Don't ask."),
    ]
    assert break_labels(thread) == ["EXT. THE PIER - CONTINUOUS", "Scene 3"]
    # (yawning), [He pours coffee.], [Nell rolls her eyes.], (quietly), (laughs), the two-line [The three...],
    # CUT TO:; and the title paragraph nobody says.
    assert result.skipped == Counter({"stage-direction": 7, "no-speaker": 1})


def test_transcript_mixed_case_names_and_rules(fixtures_dir: Path) -> None:
    result = parse("script-transcript", fixtures_dir / "script-transcript" / "night-shift-podcast.txt")
    thread = only_thread(result)
    assert [(s, t) for s, t in (x for x in layout(thread) if x != BREAK)][4] == (
        "Juno", "Tonight: why do owls look so smug?")              # the first colon names the speaker
    assert layout(thread).index(BREAK) == 5 and layout(thread).count(BREAK) == 1   # "***"
    assert Counter(s for s, _ in (x for x in layout(thread) if x != BREAK)) == Counter(
        {"Juno": 5, "Theo": 4, "Beatrix": 3})
    assert layout(thread)[-1] == ("Theo", "Of course it is.")
    assert result.skipped == Counter({"stage-direction": 2})


def test_transcript_scene_headings_are_not_speakers() -> None:
    from training.formats.screenplays import _speaker_line, _transcript_heading

    assert _transcript_heading("[Scene: The bridge]") == "Scene: The bridge"
    assert _transcript_heading("Scene 2") == "Scene 2" and _transcript_heading("INT. BRIDGE - DAY") is not None
    assert _transcript_heading("***") == "" and _transcript_heading("Scenery: nice") is None
    assert _speaker_line("LUKE: I want to come with you to Alderaan.") == (
        "LUKE", "I want to come with you to Alderaan.")
    assert _speaker_line("note: lower case is prose") is None
    assert _speaker_line("HARBOUR WATCH - Episode 4: title") is None
    assert _speaker_line("12/29/23, 8:02 PM - Dana: hi") is None      # a WhatsApp line is not a transcript


def test_transcript_name_alone_takes_the_next_lines_and_an_empty_turn_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("ANA: hi\nBEN:\n\nANA: (waves)\nANA:\nwell then\n", encoding="utf-8")
    result = parse("script-transcript", path)
    assert layout(only_thread(result)) == [("ANA", "hi"), ("ANA", "well then")]
    assert result.skipped == Counter({"empty": 1, "stage-direction": 1})   # BEN says nothing; (waves)


@pytest.mark.parametrize("name,where,says", [
    ("latin1.txt", "line 3", "is not UTF-8"),
    ("no-speakers.txt", "line 1", "no speaker lines"),
])
def test_transcript_bad_input_names_file_and_line(fixtures_dir: Path, name: str, where: str, says: str) -> None:
    path = fixtures_dir / "script-transcript" / "bad" / name
    with pytest.raises(DataError) as caught:
        parse("script-transcript", path)
    assert caught.value.path == str(path) and caught.value.where == where and says in caught.value.message
    assert caught.value.hint


# --- fountain -----------------------------------------------------------------------------------------------
def test_fountain_screenplay(fixtures_dir: Path) -> None:
    path = fixtures_dir / "fountain" / "the-tin-comet.fountain"
    result = parse("fountain", path)
    thread = only_thread(result)
    assert thread.key == f"fountain:{path.resolve()}"
    assert thread.title == "THE TIN COMET"                         # from the title page, emphasis stripped
    assert layout(thread) == [
        ("TINKER", "Big bolt. Small bolt. Very small bolt."),      # (to itself) and *emphasis* dropped
        ("OLWEN", "Tinker! Are you out there again?"),             # OLWEN (O.S.): the extension is not the name
        ("TINKER", "No."),
        ("OLWEN", 'You said "no" out loud, which means yes.'),
        ("TINKER", "It means I am busy.\nThat one was important."),  # (CONT'D) goes on the same speech
        BREAK,                                                     # the boneyard's OLWEN never speaks
        ("OLWEN", "Look at this.\nIt came down last night."),      # the two-space line and the [[note]]
        ("McGILL", "Is that a comet in my workshop?"),             # @ forces a cue in mixed case
        ("OLWEN", "A small one."),
        ("TINKER", "A tin one."),                                  # ^ dual dialogue
        BREAK,
        ("McGILL", "Nobody touch it."),
        ("TINKER", "I touched it."),
    ]
    # The scene number #2# is dropped; "# ACT TWO" then ".ROOFTOP" is one break named by the scene.
    assert break_labels(thread) == ["INT. WORKSHOP - CONTINUOUS", "ROOFTOP"]
    # Stage directions: FADE IN:, 3 action paragraphs in the junkyard, (to itself), (proudly), > CUT TO:,
    # 2 action paragraphs on the roof, > THE END <. Writer's notes: 2 [[notes]], the boneyard, the synopsis.
    assert result.skipped == Counter({"stage-direction": 10, "writer-note": 4})


@pytest.mark.parametrize("name,where,says", [
    ("open-boneyard.fountain", "line 8", "boneyard /* opened here is never closed"),
    ("no-dialogue.fountain", "line 1", "no dialogue"),
])
def test_fountain_bad_input_names_file_and_line(fixtures_dir: Path, name: str, where: str, says: str) -> None:
    path = fixtures_dir / "fountain" / "bad" / name
    with pytest.raises(DataError) as caught:
        parse("fountain", path)
    assert caught.value.path == str(path) and caught.value.where == where and says in caught.value.message
    assert caught.value.hint


def test_fountain_without_its_suffix_is_still_read_from_its_content(fixtures_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "the-tin-comet.txt"
    copy.write_bytes((fixtures_dir / "fountain" / "the-tin-comet.fountain").read_bytes())
    detected = formats.detect(Source(copy))
    assert detected is not None and detected.name == "fountain"


# --- detection ----------------------------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "bad" not in p.relative_to(folder).parts)


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_new_fixtures_are_detected_as_their_format(fixtures_dir: Path, fmt: str) -> None:
    paths = _files(fixtures_dir / fmt)
    assert paths
    for path in paths:
        detected = formats.detect(Source(path))
        assert detected is not None and detected.name == fmt, path.name
        for other in NEW_FORMATS:
            if other != fmt:
                assert formats.get(other).sniff(Source(path)) < formats.MIN_CONFIDENCE, (path.name, other)


def test_no_older_fixture_is_claimed_by_a_new_importer(fixtures_dir: Path) -> None:
    """The new sniffs stay below the detection threshold on every other format's fixtures (bad ones too):
    detection of the older formats cannot change because of them."""
    older = [p for p in sorted(fixtures_dir.rglob("*"))
             if p.is_file() and p.relative_to(fixtures_dir).parts[0] not in NEW_FORMATS]
    assert len(older) > 40
    claimed = [(p.relative_to(fixtures_dir).as_posix(), fmt) for p in older for fmt in NEW_FORMATS
               if formats.get(fmt).sniff(Source(p)) >= formats.MIN_CONFIDENCE]
    assert claimed == []


def test_script_blocks_text_is_not_a_transcript(tmp_path: Path) -> None:
    """tinyshakespeare's layout (`Name:` alone, then the speech) stays script-blocks' even when some speeches
    hold a `Word: text` line."""
    speeches = ["First Citizen:\nBefore we proceed any further, hear me speak.",
                "All:\nSpeak, speak.", "MENENIUS:\nNote: the belly answer'd.",
                "First Citizen:\nYou are all resolved rather to die than to famish?"] * 4
    path = tmp_path / "input.txt"
    path.write_text("\n\n".join(speeches) + "\n")
    assert formats.get("script-transcript").sniff(Source(path)) < formats.MIN_CONFIDENCE
    detected = formats.detect(Source(path))
    assert detected is not None and detected.name == "script-blocks"


# --- linear time --------------------------------------------------------------------------------------------
# Each importer gets hostile text where its scanners look (a quoted field, a speaker line, a direction, a
# cue, a note) at sizes N and SCALE*N. Linear code takes about SCALE times longer; quadratic code SCALE²
# times. Only the ratio of the best of a few runs is compared, never seconds.
N = 20_000
SCALE = 8
MAX_RATIO = 24     # linear: about 8; quadratic: about 64 (a wide margin: CI may share the cores)

PATHOLOGICAL: dict[str, Callable[[int], str]] = {
    "spaces": lambda n: "a" + " " * n + "b",
    "quotes": lambda n: '"' * n,
    "( repeated": lambda n: "(" * n,
    "[ repeated": lambda n: "[" * n,
    "[[a]] repeated": lambda n: "[[a]]" * (n // 5),
    "/* repeated": lambda n: "/*" * (n // 2),
    "*a then space": lambda n: "*a " * (n // 3),
    "escaped quotes": lambda n: '\\"' * (n // 2),
    "NAME: repeated": lambda n: "A: " * (n // 3),
}

WRITERS: dict[str, tuple[str, Callable[[str], str]]] = {
    "script-kaggle": ("k.txt", lambda t: '"character" "dialogue"\n"1" "ANA" "hi"\n"2" "ANA" "'
                      + t.replace('"', '""') + '"\n"3" "BEN" "' + t + '"\n'),
    "script-transcript": ("t.txt", lambda t: "ANA: hi\nBEN: ho\n" * 3 + f"ANA: {t}\n{t}\n\n{t}\nA{t}: x\n[{t}\n"),
    "fountain": ("f.fountain", lambda t: f"Title: {t}\n\nINT. A - DAY\n\nANA\n{t}\n\n{t}\n\nBEN ({t})\nho {t}\n\n"
                 f".{t}\n"),
}


def _best_times(fmt: str, paths: list[Path], rounds: int = 3) -> list[float]:
    """The best time of each path over `rounds`, taken in turn (a burst of load hits neither size alone)."""
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, path in enumerate(paths):
            start = time.perf_counter()
            try:
                parse(fmt, path)
            except DataError:
                pass  # a clear refusal is fine too: only its speed is tested here
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_pathological_text_is_read_in_linear_time(fmt: str, tmp_path: Path) -> None:
    name, write = WRITERS[fmt]
    slow = []
    for text_name, text in PATHOLOGICAL.items():
        paths = []
        for size in (N, SCALE * N):
            folder = tmp_path / f"{len(paths)}-{text_name.replace(' ', '_').replace('/', 'slash')}"
            folder.mkdir()
            path = folder / name
            path.write_text(write(text(size)), encoding="utf-8")
            formats.get(fmt).sniff(Source(path))  # the sniff sees the same text
            paths.append(path)
        times = _best_times(fmt, paths)
        # A floor of 1 ms keeps a sub-millisecond small run (timer noise) from inflating the ratio.
        ratio = times[1] / max(times[0], 1e-3)
        if ratio > MAX_RATIO:
            slow.append(f"{text_name!r}: {SCALE}x the text took {ratio:.0f}x the time")
    assert not slow, f"{fmt} is not linear: " + "; ".join(slow)


# --- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,speakers", [
    ("fountain/the-tin-comet.fountain", ("TINKER", "OLWEN", "McGILL")),
    ("script-kaggle/salt-flats.txt", ("MIRA", "DOBBS", "CAPTAIN VELL")),
    ("script-transcript/harbour-watch.txt", ("NELL", "PIP", "CAPTAIN ORSO", "MRS. ABERNATHY-COLE")),
])
def test_data_inspect_shows_the_speakers(fixtures_dir: Path, cli, path: str, speakers: tuple[str, ...]) -> None:
    result = cli("data", "inspect", str(fixtures_dir / path))
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in speakers), result.stdout
    assert path.split("/")[0] in result.stdout  # the format it was read as


def test_data_inspect_of_a_malformed_kaggle_file_exits_2_naming_the_line(fixtures_dir: Path, cli) -> None:
    path = fixtures_dir / "script-kaggle" / "bad" / "stray-quote.txt"
    result = cli("data", "inspect", str(path))  # still detected: the header says what it is
    assert result.returncode == 2
    assert f"{path} (line 3)" in result.stderr and "Traceback" not in result.stderr


def _long_screenplay(path: Path, scenes: int) -> Path:
    """A Fountain screenplay with enough turns to train on: the fixture's title page and opening, then
    `scenes` short invented scenes of Tinker and Olwen counting bolts."""
    opening = (FIXTURES_DIR / "fountain" / "the-tin-comet.fountain").read_text(encoding="utf-8")
    body = "".join(f"\nINT. WORKSHOP - DAY {i}\n\nTinker holds up bolt {i}.\n\nTINKER\nBolt number {i} is "
                   f"ready.\n\nOLWEN\n(checking)\nThen fetch bolt number {i + 1}, and mind the {i % 7}th "
                   f"shelf.\n\nTINKER (CONT'D)\nI always mind the shelves.\n" for i in range(scenes))
    path.write_text(opening + body, encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_tiny_model_trains_on_a_fountain_screenplay(tmp_path: Path, cli) -> None:
    script = _long_screenplay(tmp_path / "counting-bolts.fountain", scenes=40)
    out = tmp_path / "olwen"
    done = cli("--data", str(script), "--speaker", "olwen", "--out", str(out), "--from-scratch", "tiny",
               "--max-steps", "5", "--threads", "1", "--samples", "0", "--batch-size", "2", module="training")
    assert done.returncode == 0, done.stderr
    persona = json.loads((out / "persona.json").read_text())
    assert persona["speaker"] == "OLWEN"
    assert persona["data"]["files"][0]["format"] == "fountain"
