"""Instruction-data importers (alpaca, chat-tokens) on hand-written files laid out as the real data sets are."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training import formats
from training.conversation import Message
from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult, Source
from training.loader import load_corpus

INSTRUCTION_FORMATS = ("alpaca", "chat-tokens")


def parse(format_name: str, path: Path, options: ImportOptions | None = None) -> ParseResult:
    return formats.get(format_name).parse(Source(path), options or ImportOptions())


def dialogues(result: ParseResult) -> list[list[tuple[str, str]]]:
    """Each thread as its (speaker, text) pairs, in file order."""
    return [[(m.speaker, m.text) for m in t.items if isinstance(m, Message)] for t in result.threads]


# --- detection ----------------------------------------------------------------------------------------------
# --- alpaca -------------------------------------------------------------------------------------------------
def test_alpaca_json_records_become_user_assistant_threads(fixtures_dir: Path) -> None:
    path = fixtures_dir / "alpaca" / "garden-and-riddles.json"
    result = parse("alpaca", path)
    assert [t.key for t in result.threads] == [f"alpaca:{path.resolve()}:{i}" for i in range(4)]
    assert dialogues(result) == [
        [("User", "Give three tips for keeping basil alive on a windowsill."),
         ("Assistant", "1. Give it at least six hours of sun.\n2. Water at the base, never the leaves.\n"
                       "3. Pinch off the flowers as soon as they appear.")],
        # a non-empty input follows the instruction after a blank line
        [("User", "Rewrite the sentence in a more formal tone.\n\nGonna grab caf\u00e9 au lait, back in 5."),
         ("Assistant", "I am going to fetch a caf\u00e9 au lait; I shall return in five minutes.")],
        # the empty output is skipped; the question stays
        [("User", "Answer the riddle.\n\nWhat has keys but opens no locks?")],
        [("User", "Name the colour of a clear daytime sky."), ("Assistant", "Blue \U0001F324")],
    ]
    assert result.skipped == Counter({"empty": 1})
    # the `text` field (prompt template + output) is not read as a message
    assert not any("### Instruction" in m.text for t in result.threads for m in t.items)


def test_alpaca_records_with_a_rendered_text_field_read_only_instruction_input_output(fixtures_dir: Path) -> None:
    """The reference the instruction tables (tests/formats/test_tables.py, test_hub.py) must match."""
    result = parse("alpaca", fixtures_dir / "alpaca" / "canal-bakery.json")
    assert dialogues(result) == [
        [("User", "Suggest a name for a bakery on a canal boat."), ("Assistant", "The Floury Lock.")],
        [("User", 'Turn the shopping list into one sentence.\n\nflour, 2 kg\neggs, "free range"\nsalt; a pinch'),
         ("Assistant", "Buy two kilos of flour, some free-range eggs and a pinch of salt.\nThat is all.")],
        [("User", "Translate the note into French.\n\nThe oven is hot.")],        # the empty output: skipped
        [("Assistant", "A reply to no question at all.")],                          # the empty prompt: skipped
        [("User", "Explain why dough rises."),                                       # blank input: no context
         ("Assistant", "Yeast eats the sugar and breathes out gas,\nwhich the gluten traps.")],
        [("User", "Write a one-line toast for the cooks."),
         ("Assistant", "To the crumbs we leave behind \u00e0 la prochaine \U0001F35E")],
    ]
    assert result.skipped == Counter({"empty": 2})


def test_alpaca_json_lines(fixtures_dir: Path) -> None:
    path = fixtures_dir / "alpaca" / "units.jsonl"
    result = parse("alpaca", path)
    assert [t.key for t in result.threads] == [f"alpaca:{path.resolve()}:{i}" for i in range(3)]
    assert dialogues(result) == [
        [("User", "Convert 5 km to miles."), ("Assistant", "5 km is about 3.11 miles (5 / 1.609).")],
        [("User", "Summarise the note.\n\nFerry leaves at 6; bring two coins."),
         ("Assistant", "Be at the ferry by six with two coins.")],
        [("Assistant", "An answer to nothing.")],
    ]
    assert result.skipped == Counter({"empty": 1})


def test_alpaca_each_record_is_its_own_conversation(fixtures_dir: Path) -> None:
    corpus = load_corpus([fixtures_dir / "alpaca" / "garden-and-riddles.json"],
                         options=ImportOptions(bot_names=frozenset({"user"})))
    assert [[m.speaker for m in c.messages] for c in corpus.conversations] == [["Assistant"]] * 3
    assert corpus.files[0].skipped == Counter({"bot": 4, "empty": 1})


@pytest.mark.parametrize("name, message, where", [
    ("missing-output.json", 'missing field "output"', "$[0]"),
    ("output-not-string.json", "expected a string or null, found an array", "$[0].output"),
    ("not-an-object.json", "expected an object, found a string", "$[0]"),
    ("truncated.json", "is not valid JSON: Unterminated string starting at", "line 5, column 19"),
    ("bad-line.jsonl", "is not valid JSON Lines: Unterminated string starting at", "line 2, column 47"),
    ("empty.json", "the file is empty", None),
])
def test_alpaca_bad_inputs(fixtures_dir: Path, name: str, message: str, where: str | None) -> None:
    path = fixtures_dir / "alpaca" / "bad" / name
    with pytest.raises(DataError) as err:
        parse("alpaca", path)
    assert (err.value.message, err.value.where) == (message, where)
    assert err.value.path == str(path)
    assert err.value.hint


def test_alpaca_json_lines_field_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction":"a","output":"b"}\n{"instruction":"c","output":7}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        parse("alpaca", path)
    assert err.value.message == "expected a string or null, found a number"
    assert err.value.where == "line 2: $.output"


# --- chat-tokens --------------------------------------------------------------------------------------------
def test_chat_tokens_one_conversation_per_line(fixtures_dir: Path) -> None:
    path = fixtures_dir / "chat-tokens" / "gardening.txt"
    result = parse("chat-tokens", path)
    assert [t.key for t in result.threads] == [f"chat-tokens:{path.resolve()}:{n}"
                                               for n in (1, 2, 4, 5, 7, 8, 9, 10, 11)]
    assert dialogues(result) == [
        [("User", "What's the best way to keep basil alive?"),
         ("Assistant", "Give it sun, water it at the base, and pinch off the flowers.")],
        [("System", "You are a patient gardening helper."), ("User", "My tomatoes split. Why?"),
         ("Assistant", "Uneven watering: a dry spell then a soak bursts the skins."),
         ("User", "So water daily?"), ("Assistant", "Steadily, not necessarily daily.")],
        [("User", "\u4f60\u597d"),
         ("Assistant", "\u4f60\u597d\uff01\u6709\u4ec0\u4e48\u53ef\u4ee5\u5e2e\u4f60\uff1f")],
        [("User", "Just say nothing.")],                         # the empty assistant turn is skipped
        [("User", "Is mint invasive?"), ("Assistant", "Very. Keep it in a pot.")],
        [("User", "Where do snails sleep?"), ("Assistant", "Under the hostas, mostly.")],  # "Q" before it skipped
        # a lower-case <|assistant|> marker
        [("User", "Should I water at noon?"), ("Assistant", "Morning is better; less evaporation.")],
        # an <|End|> inside a turn is dropped
        [("User", "What eats aphids?"), ("Assistant", "Ladybirds, lacewings and hungry sparrows.")],
        [("User", "Thanks!"), ("Assistant", "Happy growing.")],
    ]
    # line 6 has no marker at all; "Q" on line 8 comes before any marker
    assert result.skipped == Counter({"empty": 1, "no-marker": 1, "no-speaker": 1})


def test_chat_tokens_each_line_is_its_own_conversation(fixtures_dir: Path) -> None:
    corpus = load_corpus([fixtures_dir / "chat-tokens" / "gardening.txt"])
    assert len(corpus.conversations) == 9
    assert corpus.speakers() == Counter({"User": 10, "Assistant": 9, "System": 1})


@pytest.mark.parametrize("name, message, where", [
    ("no-markers.txt", "no line has a <|USER|>, <|ASSISTANT|> or <|SYSTEM|> marker", "line 1"),
    ("empty.txt", "the file is empty", None),
])
def test_chat_tokens_bad_inputs(fixtures_dir: Path, name: str, message: str, where: str | None) -> None:
    with pytest.raises(DataError) as err:
        parse("chat-tokens", fixtures_dir / "chat-tokens" / "bad" / name)
    assert (err.value.message, err.value.where) == (message, where)
    assert err.value.hint


def test_chat_tokens_sniff_ignores_json_holding_the_tokens(tmp_path: Path) -> None:
    path = tmp_path / "formatted_data.json"
    path.write_text('[{"text": "<|USER|> hi <|ASSISTANT|> hello <|End|>"}]\n', encoding="utf-8")
    assert formats.get("chat-tokens").sniff(Source(path)) < formats.MIN_CONFIDENCE
