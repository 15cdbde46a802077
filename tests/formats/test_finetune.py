"""Fine-tuning formats (chat-messages, sharegpt) on hand-written files laid out as the published data sets are:
speakers are roles, each record is a conversation, system prompts are context, tool traffic is counted."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from training import formats
from training.conversation import Message
from training.dataset import conversation_turns, match_speaker, split_units
from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult, Source
from training.formats.instructions import ASSISTANT, SYSTEM, USER
from training.loader import load_corpus

FIXTURES = Path(__file__).parent.parent / "fixtures"
MESSAGES = FIXTURES / "chat-messages"
SHAREGPT = FIXTURES / "sharegpt"
FINETUNE_FORMATS = ("chat-messages", "sharegpt")
TEA_SYSTEM = "You are Juniper, the helper of the Kettle & Leaf tea shop."


def parse(format_name: str, path: Path, options: ImportOptions | None = None) -> ParseResult:
    return formats.get(format_name).parse(Source(path), options or ImportOptions())


def dialogues(result: ParseResult) -> list[list[tuple[str, str]]]:
    """Each thread as its (speaker, text) pairs, in file order."""
    return [[(m.speaker, m.text) for m in t.items if isinstance(m, Message)] for t in result.threads]


# --- chat-messages ------------------------------------------------------------------------------------------
def test_chat_messages_json_lines_read_roles_as_speakers_and_count_what_is_not_text() -> None:
    path = MESSAGES / "tea-shop-support.jsonl"
    result = parse("chat-messages", path)
    # one thread per record (the blank line holds none), keyed by position
    assert [t.key for t in result.threads] == [f"chat-messages:{path.resolve()}:{i}" for i in range(14)]
    found = dialogues(result)
    assert found[0] == [
        ("System", TEA_SYSTEM), ("User", "How long should I steep a green tea?"),
        ("Assistant", "Two minutes at about 80 \u00b0C; longer turns it bitter."),
        ("User", "And a black tea?"), ("Assistant", "Four minutes with water just off the boil.")]
    # content as parts: the text parts joined, the image counted
    assert found[2][1:3] == [("User", "What tea is in this photo?"),
                             ("Assistant", "That looks like a rolled oolong.\nThe leaves unfurl as they steep.")]
    # the tool call and the tool's answer are not words; the reply after them is
    assert found[3] == [("User", "Where is my order 5521?"),
                        ("Assistant", "It is on its way and should arrive on Thursday."),
                        ("User", "Thanks!"), ("Assistant", "Enjoy the tea when it comes.")]
    # "weight": 0 only tells OpenAI not to train on the turn: it is still the assistant's text
    assert found[4][1] == ("Assistant", "Botanically no: it comes from a South African shrub, not the tea plant.")
    # a developer message is a system prompt
    assert found[5][0] == ("System", "Answer in one sentence.")
    # the empty last answer is skipped, the question stays
    assert found[6][-1] == ("User", "What about gift cards?")
    assert found[8][:2] == [("User", "\u6211\u60f3\u4e70\u9f99\u4e95\u8336\u3002"),
                            ("Assistant", "\u6211\u4eec\u6709\u4eca\u5e74\u7684\u660e\u524d\u9f99\u4e95\u3002")]
    assert result.skipped == Counter({"tool-call": 1, "tool-result": 1, "non-text-part": 1, "empty": 1})
    speakers = Counter(m.speaker for t in result.threads for m in t.items)
    assert speakers == Counter({"Assistant": 27, "User": 28, "System": 3})


def test_chat_messages_json_array_with_a_legacy_function_call() -> None:
    path = MESSAGES / "bicycle-repair.json"
    result = parse("chat-messages", path)
    assert dialogues(result) == [
        [("System", "You are a patient bicycle mechanic."), ("User", "My chain keeps slipping."),
         ("Assistant", "A worn chain or cassette is the usual cause; measure the chain's stretch first.")],
        [("User", "How often should I oil the chain?"),
         ("Assistant", "Every few hundred kilometres, and after every wet ride."),
         ("User", "How much oil?"), ("Assistant", "One drop per link, then wipe off the excess.")],
        [("User", "What pressure for my tyres?"), ("Assistant", "About six bar for a 28 mm tyre.")],
    ]
    assert result.skipped == Counter({"tool-call": 1, "tool-result": 1})


def test_chat_messages_one_pretty_printed_record_is_read(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}, indent=2))
    assert formats.detect(Source(path)).name == "chat-messages"
    assert dialogues(parse("chat-messages", path)) == [[("User", "Hi?"), ("Assistant", "Hello.")]]


# --- sharegpt -----------------------------------------------------------------------------------------------
def test_sharegpt_json_array_reads_ids_system_prompts_and_both_spellings_of_the_roles() -> None:
    path = SHAREGPT / "lighthouse-keeper.json"
    result = parse("sharegpt", path)
    base = f"sharegpt:{path.resolve()}"
    assert [t.key for t in result.threads] == [f"{base}:0:lh-001", f"{base}:1:lh-002", f"{base}:2:3", f"{base}:3"]
    assert [t.title for t in result.threads] == ["lighthouse-keeper lh-001", "lighthouse-keeper lh-002",
                                                 "lighthouse-keeper 3", "lighthouse-keeper #3"]
    keeper = "You are Odile, keeper of the Pointe-Grise lighthouse."
    assert dialogues(result) == [
        [("System", keeper), ("User", "How many steps up to the lamp?"),
         ("Assistant", "Two hundred and twelve, and I count them every night."),
         ("User", "Doesn't it tire you?"), ("Assistant", "Only on the nights with fog: then I climb twice.")],
        # the record's "system" field comes first, as a system message in the turns does
        [("System", keeper), ("User", "What do you eat out there?"),
         ("Assistant", "Mackerel, potatoes, and whatever the supply boat forgets to take back.")],
        # "user"/"assistant" spellings; the empty human turn is skipped
        [("User", "Have you ever seen a shipwreck?"),
         ("Assistant", "One, in the winter of the great storm. Everyone was saved."),
         ("Assistant", "You went quiet. Shall I tell you more?")],
        # function_call and observation are tool traffic
        [("User", "What time is high tide tomorrow?"), ("Assistant", "At 06:42, just as the lamp goes out.")],
    ]
    assert result.skipped == Counter({"empty": 1, "tool-call": 1, "tool-result": 1})


def test_sharegpt_json_lines_keep_records_with_one_id_apart() -> None:
    path = SHAREGPT / "pottery-class.jsonl"
    result = parse("sharegpt", path)
    assert len(result.threads) == 3 and len({t.key for t in result.threads}) == 3
    assert dialogues(result) == [
        [("User", "Why did my bowl crack in the kiln?"),
         ("Assistant", "It was probably still damp; let it dry a full week.")],
        [("User", "Why did my mug handle fall off?"),
         ("Assistant", "Score and slip both surfaces before you join them.")],
        [("User", "Which clay for a beginner?"), ("Assistant", "A smooth stoneware: forgiving on the wheel."),
         ("User", "And glazes?"), ("Assistant", "Start with one clear glaze and learn how it breaks over edges.")],
    ]
    corpus = load_corpus([path])
    assert len(corpus.conversations) == 3 and corpus.files[0].messages == 8


# --- speakers and system prompts ----------------------------------------------------------------------------
def test_speakers_are_the_instruction_formats_names_and_the_assistant_is_the_default_target() -> None:
    assert (USER, ASSISTANT, SYSTEM) == ("User", "Assistant", "System")
    for name in FINETUNE_FORMATS:
        assert formats.get(name).default_speaker == ASSISTANT


def test_a_system_prompt_is_context_before_the_turns_and_never_a_response() -> None:
    corpus = load_corpus([MESSAGES / "tea-shop-support.jsonl", SHAREGPT / "lighthouse-keeper.json"])
    assert len(corpus.conversations) == 18  # each record is its own conversation
    speaker = match_speaker(corpus.conversations, formats.get("chat-messages").default_speaker)
    assert speaker.name == "Assistant" and speaker.messages == 27 + 6
    first = conversation_turns(corpus.conversations[0], speaker)
    assert (first[0].speaker, first[0].text, first[0].is_target) == ("System", TEA_SYSTEM, False)
    assert [t.is_target for t in first] == [False, False, True, False, True]
    units = split_units(corpus.conversations, speaker, unit_responses=32)
    turns = [t for u in units for t in u.turns]
    system_turns = [t for t in turns if t.speaker == "System"]
    assert len(system_turns) == 5 and not any(t.is_target for t in system_turns)
    assert sum(t.is_target for t in turns) == 32  # the two consecutive assistant messages are one turn


# --- malformed input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, name, message, where", [
    ("chat-messages", "not-an-object.jsonl", "expected an object, found an array", "line 2: $"),
    ("chat-messages", "not-an-object.json", "expected an object, found a string", "$[1]"),
    ("chat-messages", "missing-messages.jsonl", 'missing field "messages"', "line 3: $"),
    ("chat-messages", "unknown-role.jsonl",
     "unknown role 'narrator' (known: system, developer, user, assistant, tool, function)",
     "line 1: $.messages[1].role"),
    ("chat-messages", "content-number.jsonl", "expected a string, an array of content parts or null, found a number",
     "line 2: $.messages[0].content"),
    ("chat-messages", "cut-off.jsonl", "is not valid JSON Lines: Unterminated string starting at",
     "line 2, column 43"),
    ("chat-messages", "empty.jsonl", "the file is empty", None),
    ("sharegpt", "not-an-array-of-objects.json", "expected an object, found a number", "$[1]"),
    ("sharegpt", "missing-conversations.json", 'missing field "conversations"', "$[1]"),
    ("sharegpt", "unknown-from.json", "unknown \"from\" value 'narrator' (known: system, human, user, gpt, "
     "assistant, chatgpt, function_call, observation, tool)", "$[0].conversations[1].from"),
    ("sharegpt", "value-not-string.jsonl", "expected a string or null, found an array",
     "line 2: $.conversations[0].value"),
    ("sharegpt", "cut-off.jsonl", "is not valid JSON Lines: Expecting value", "line 2, column 64"),
])
def test_malformed_records_are_one_error_naming_the_file_and_place(fmt: str, name: str, message: str,
                                                                    where: str | None) -> None:
    path = FIXTURES / fmt / "bad" / name
    with pytest.raises(DataError) as err:
        parse(fmt, path)
    assert (err.value.message, err.value.where) == (message, where)
    assert err.value.path == str(path)
    assert err.value.hint


@pytest.mark.parametrize("fmt", FINETUNE_FORMATS)
def test_json_nested_too_deep_is_a_data_error_not_a_crash(fmt: str, tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}],
                       "conversations": [{"from": "human", "value": "hi"}]})
    lines = tmp_path / "deep.jsonl"
    lines.write_text(good + "\n" + '{"messages": ' + deep + "}\n")
    array = tmp_path / "deep.json"
    array.write_text("[" + good + ", " + deep + "]")
    with pytest.raises(DataError) as err:
        parse(fmt, lines)
    assert err.value.where.startswith("line 2, column") and "nested more than" in err.value.message
    with pytest.raises(DataError) as err:
        parse(fmt, array)
    assert err.value.where.startswith("line 1, column") and "nested more than" in err.value.message
    for path in (lines, array):
        assert formats.get(fmt).sniff(Source(path)) >= 0.0  # sniffing does not crash either


# --- detection ----------------------------------------------------------------------------------------------
def _fixture_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "bad" not in p.relative_to(folder).parts)


@pytest.mark.parametrize("fmt", FINETUNE_FORMATS)
def test_fine_tuning_fixtures_are_detected_as_their_format(fmt: str) -> None:
    files = _fixture_files(FIXTURES / fmt)
    assert len(files) == 2
    for path in files:
        assert formats.detect(Source(path)).name == fmt, path
        other = "sharegpt" if fmt == "chat-messages" else "chat-messages"
        assert formats.get(other).sniff(Source(path)) < formats.MIN_CONFIDENCE


def test_the_fine_tuning_importers_claim_no_other_format_s_files(tmp_path: Path) -> None:
    others = [p for folder in sorted(FIXTURES.iterdir()) if folder.is_dir() and folder.name not in FINETUNE_FORMATS
              for p in ([folder] if formats.get(folder.name).reads_archives else _fixture_files(folder))]
    assert len(others) > 30
    # JSON that holds a `messages` list (Telegram, Discord, Messenger) or turns with other keys
    telegram_without_header = tmp_path / "result.json"
    telegram_without_header.write_text(json.dumps({"messages": [{"id": 1, "type": "message", "text": "hi"}]}))
    text_rows = tmp_path / "rows.jsonl"
    text_rows.write_text(json.dumps({"text": "<|USER|> hi <|ASSISTANT|> hello"}) + "\n")
    for path in [*others, telegram_without_header, text_rows]:
        for fmt in FINETUNE_FORMATS:
            assert formats.get(fmt).sniff(Source(path)) < formats.MIN_CONFIDENCE, (fmt, path)


@pytest.mark.parametrize("fmt, record", [
    ("chat-messages", {"messages": [{"role": "user", "content": "x" * 70_000}]}),
    ("sharegpt", {"id": "long", "conversations": [{"from": "human", "value": "x" * 70_000}]}),
])
def test_a_first_record_larger_than_the_sniffed_head_is_still_detected(fmt: str, record: dict,
                                                                       tmp_path: Path) -> None:
    for path, text in ((tmp_path / "long.jsonl", json.dumps(record) + "\n"),
                       (tmp_path / "long.json", json.dumps([record]))):
        path.write_text(text)
        assert formats.detect(Source(path)).name == fmt


# --- linear time --------------------------------------------------------------------------------------------
def _best_parse_times(fmt: str, paths: list[Path], rounds: int = 3) -> list[float]:
    """The best time of each path over `rounds`, the paths taken in turn in each round (a burst of load
    from elsewhere then hits neither size alone)."""
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, path in enumerate(paths):
            start = time.perf_counter()
            parse(fmt, path)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@pytest.mark.parametrize("fmt", FINETUNE_FORMATS)
@pytest.mark.parametrize("shape", ["many records", "long hostile text"])
def test_reading_takes_time_linear_in_the_input(fmt: str, shape: str, tmp_path: Path) -> None:
    # n and 8n: linear takes about 8x as long (more with memory effects), quadratic 64x; only the ratio of
    # the best of three interleaved runs is compared, never a number of seconds.
    def write(n: int, name: str) -> Path:
        if shape == "many records":
            texts = [f"question {i}" for i in range(n)]
        else:
            # one text of megabytes (spaces, an unfinished marker, line separators, bullets): the sizes are
            # large enough for both to be out of the CPU caches, so the ratio is about the code, not the cache
            texts = [" " * (n * 200) + "<|e" + "\u2028 " * (n * 20) + "a \u2022 " * (n * 20)]
        if fmt == "chat-messages":
            records = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": t},
                                     {"role": "assistant", "content": [{"type": "text", "text": t}]}]}
                       for t in texts]
        else:
            records = [{"id": str(i), "conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": t}]}
                       for i, t in enumerate(texts)]
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return path

    small, large = _best_parse_times(fmt, [write(2_500, "small.jsonl"), write(20_000, "large.jsonl")])
    ratio = large / max(small, 1e-3)
    assert ratio < 24, f"8x the input took {ratio:.1f}x the time"


# --- the command line ---------------------------------------------------------------------------------------
def test_data_inspect_reports_both_formats_their_speakers_and_skips(cli) -> None:
    tea, keeper = MESSAGES / "tea-shop-support.jsonl", SHAREGPT / "lighthouse-keeper.json"
    result = cli("data", "inspect", str(tea), str(keeper), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(f["format"], f["messages"], f["skipped"]) for f in report["files"]] == [
        ("chat-messages", 58, {"empty": 1, "non-text-part": 1, "tool-call": 1, "tool-result": 1}),
        ("sharegpt", 13, {"empty": 1, "tool-call": 1, "tool-result": 1}),
    ]
    assert report["speakers"] == {"User": 33, "Assistant": 33, "System": 5}
    assert report["conversations"] == 18

    bad = cli("data", "inspect", str(MESSAGES / "bad" / "unknown-role.jsonl"))
    assert bad.returncode == 2
    assert "unknown-role.jsonl (line 1: $.messages[1].role): unknown role 'narrator'" in bad.stderr
    assert "hint:" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_a_tiny_persona_trains_on_chat_messages_as_the_assistant(cli, tmp_path: Path) -> None:
    out = tmp_path / "juniper"
    done = cli("--data", str(MESSAGES / "tea-shop-support.jsonl"), "--speaker", "Assistant", "--out", str(out),
               "--from-scratch", "tiny", "--max-steps", "5", "--threads", "1", "--samples", "0",
               "--batch-size", "4", "--progress", "none", module="training")
    assert done.returncode == 0, done.stderr
    persona = json.loads((out / "persona.json").read_text())
    assert persona["speaker"] == "Assistant"
    assert persona["data"]["files"][0]["format"] == "chat-messages"
    assert persona["data"]["train"]["responses"] + persona["data"]["val"]["responses"] == 27
    with gzip.open(out / "training_text.jsonl.gz", "rt") as f:
        index = [json.loads(line) for line in f]
    # the system prompt was context, never a response the persona learnt to say
    assert any(e["text"] == TEA_SYSTEM and not e["response"] for e in index)
    assert not any(e["text"] == TEA_SYSTEM and e["response"] for e in index)
    assert any(e["text"] == "Cast iron, by far." and e["response"] for e in index)
