"""Tables (CSV, TSV, JSON, JSON Lines, Parquet) and plain text of posts: column roles, single-voice corpora,
conversations per row, --columns, and clean errors for bad input."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training import formats
from training.errors import DataError
from training.formats.base import ImportOptions, Source
from training.formats.tables import parse_column_mapping
from training.loader import load_corpus, single_voice_as

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_a_csv_without_a_speaker_is_one_voice_of_stand_alone_posts():
    corpus = load_corpus([FIXTURES / "table" / "confessions.csv"])
    assert set(corpus.speakers()) == {"confessions"}                  # the file's stem, until --speaker
    assert len(corpus.conversations) == 14 and all(len(c.messages) == 1 for c in corpus.conversations)
    assert all(c.single_voice for c in corpus.conversations)
    assert corpus.files[0].skipped["empty"] == 1
    assert "text=text, time=date (one voice, stand-alone posts)" in corpus.files[0].notes[0]
    commas = [m.text for m in corpus.messages() if m.text.startswith("sometimes, at night")]
    assert len(commas) == 1                                              # a quoted cell with commas
    named = single_voice_as(corpus, "Marigold")
    assert set(named.speakers()) == {"Marigold"} and len(named.messages()) == 14


def test_a_table_with_speakers_and_episodes_is_a_conversation_per_episode():
    corpus = load_corpus([FIXTURES / "table" / "dialogue.jsonl"])
    assert sorted(len(c.messages) for c in corpus.conversations) == [7, 7]
    assert set(corpus.speakers()) == {"Marlo", "Quince", "Tobiah"}
    assert not any(c.single_voice for c in corpus.conversations)
    assert "speaker=speaker" in corpus.files[0].notes[0] and "conversation=episode" in corpus.files[0].notes[0]


def test_tweets_in_a_tsv_keep_their_twitter_times():
    corpus = load_corpus([FIXTURES / "table" / "tweets.tsv"])
    first = corpus.messages()[0]
    assert first.speaker == "wrenfield" and first.timestamp.isoformat() == "2023-10-10T20:19:00+00:00"
    assert first.text == "post number 0 from wrenfield, about the pier"


def test_columns_can_be_named_and_a_missing_one_lists_those_there_are(tmp_path):
    table = tmp_path / "posts.csv"
    table.write_text("handle,body_text,posted\nkit,first words here,2024-01-01\nkit,more words,2024-01-02\n")
    options = ImportOptions.from_user(columns=parse_column_mapping("text=body_text,speaker=handle"))
    corpus = load_corpus([table], options=options)
    assert [(m.speaker, m.text) for m in corpus.messages()] == [("kit", "first words here"), ("kit", "more words")]
    wrong = ImportOptions.from_user(columns=parse_column_mapping("text=content"))
    with pytest.raises(DataError) as error:
        load_corpus([table], options=wrong)
    assert "no such column" in str(error.value) and "handle, body_text, posted" in str(error.value)
    with pytest.raises(DataError, match="is not ROLE=COLUMN"):
        parse_column_mapping("mood=body_text")


def test_parquet_rows_with_a_messages_list_or_chat_tokens_are_whole_conversations(tmp_path):
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.table({
        "messages": [[{"role": "user", "content": "how do lanterns float"},
                      {"role": "assistant", "content": "warm air, friend"}], None],
        "text": [None, "<|USER|> and the moon? <|ASSISTANT|> it floats on its own <|End|>"],
    }), path)
    source = Source(path)
    assert formats.detect(source).name == "table"
    corpus = load_corpus([path])
    turns = [[(m.speaker, m.text) for m in c.messages] for c in corpus.conversations]
    assert turns == [[("User", "how do lanterns float"), ("Assistant", "warm air, friend")],
                     [("User", "and the moon?"), ("Assistant", "it floats on its own")]]


def test_a_parquet_file_that_is_not_one_is_a_clear_error(tmp_path):
    bad = tmp_path / "posts.parquet"
    bad.write_bytes(b"this is a csv really\n")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        load_corpus([bad])


@pytest.mark.parametrize("name,content,place", [
    ("short.csv", "author,text\nann,hello\nbob\n", "row 3"),
    ("time.csv", "author,text,date\nann,hello,2024-01-01\nbob,hi,yesterday-ish\n", "row 3.date"),
    ("lines.jsonl", '{"speaker": "ann", "text": "hi"}\n{"speaker": "bob", "text": \n', "line 2"),
    ("cell.jsonl", '{"speaker": "ann", "text": "hi"}\n{"speaker": "bob", "text": {"nested": 1}}\n', "line 2.text"),
])
def test_a_malformed_row_names_the_file_and_the_row(tmp_path, name, content, place):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as error:
        load_corpus([path])
    assert error.value.path == str(path) and error.value.where.startswith(place)


def test_an_empty_text_column_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("speaker,text\nann,\nbob,\n")
    with pytest.raises(DataError, match="no chat messages to learn from .skipped: 2 empty"):
        load_corpus([path])


def test_plain_text_is_a_post_per_line_or_per_block():
    lines = load_corpus([FIXTURES / "posts-text" / "confessions.txt"])
    assert len(lines.messages()) == 12 and all(c.single_voice for c in lines.conversations)
    blocks = load_corpus([FIXTURES / "posts-text" / "diary.txt"])
    texts = [m.text for m in blocks.messages()]
    assert len(texts) == 6 and all(t.count("\n") == 2 for t in texts)
    assert "a post per block" in blocks.files[0].notes[0]


def test_a_short_note_is_not_taken_for_a_corpus(tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("just some notes\n")
    with pytest.raises(DataError, match="cannot tell which export format"):
        load_corpus([note])


@pytest.mark.parametrize("line", [" " * 10_000, '"' * 10_000, "," * 10_000, "<|" * 5_000])
def test_tables_are_read_in_linear_time(tmp_path, line):
    paths = []
    for rows in (20, 160):
        path = tmp_path / f"t{rows}.csv"
        path.write_text("author,text\n" + "".join(f'ann,"x{line}"\n'.replace('""', "'") for _ in range(rows)))
        paths.append(path)
    best = [float("inf")] * 2
    for _ in range(3):                # the sizes taken in turn: a burst of load hits neither alone
        for i, path in enumerate(paths):
            start = time.perf_counter()
            try:
                load_corpus([path])
            except DataError:
                pass
            best[i] = min(best[i], time.perf_counter() - start)
    small, large = best
    assert large / small < 24, (small, large)            # 8x the rows: linear is ~8x, quadratic ~64x


def test_data_inspect_shows_the_columns_and_their_roles(cli):
    result = cli("data", "inspect", str(FIXTURES / "table" / "tweets.tsv"))
    assert result.returncode == 0, result.stderr
    assert "text=full_text, speaker=screen_name, time=created_at" in result.stdout


def test_a_json_array_table_reads_like_the_others(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(json.dumps([{"author": "Ivo", "message": "one"}, {"author": "Pia", "message": "two"}]))
    corpus = load_corpus([path])
    assert [(m.speaker, m.text) for m in corpus.messages()] == [("Ivo", "one"), ("Pia", "two")]


@pytest.mark.slow
def test_a_single_voice_persona_trains_samples_posts_and_answers(cli, tmp_path):
    """Posts that name no speaker become the voice the user names; the persona samples lines, feeds a
    scheduled post and answers a mention like any other."""
    import asyncio

    from bot.inference.engine import Engine
    from bot.core.filters import TERMINAL
    from bot.jobs.posting import pick_line

    out = tmp_path / "marigold"
    trained = cli("train", "--data", str(FIXTURES / "table" / "confessions.csv"),
                  str(FIXTURES / "posts-text" / "confessions.txt"), "--speaker", "Marigold", "--out", str(out),
                  "--from-scratch", "tiny", "--max-steps", "5", "--threads", "1", "--samples", "0",
                  "--min-responses", "5", "--progress", "none")
    assert trained.returncode == 0, trained.stderr
    info = json.loads((out / "persona.json").read_text())
    assert info["speaker"] == "Marigold" and info["corpus_kind"] == "single-voice"
    assert info["data"]["speaker_messages"] == 26
    sampled = cli("sample", str(out), "-n", "2", "--json")
    assert sampled.returncode == 0, sampled.stderr

    async def serve():
        async with Engine.load(out) as engine:
            answer = await engine.reply([("Bob", "what is your secret")], target=TERMINAL, seed=1)
            post = await pick_line(engine, TERMINAL, start="my deepest, darkest secret is", seed=1)
            return answer, post

    answer, post = asyncio.run(serve())
    assert answer.persona == "Marigold" and answer.text
    assert post.text is not None or post.rejected                   # a line, or why none could be posted


def test_fine_tuning_data_trains_the_assistant_without_naming_it_and_others_must(cli, tmp_path):
    chat = next((FIXTURES / "sharegpt").glob("*.jsonl"))
    trained = cli("train", "--data", str(chat), "--out", str(tmp_path / "a"), "--from-scratch", "tiny",
                  "--max-steps", "2", "--threads", "1", "--samples", "0", "--min-responses", "1", "--progress", "none")
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "a" / "persona.json").read_text())["speaker"] == "Assistant"
    unnamed = cli("train", "--data", str(FIXTURES / "table" / "dialogue.jsonl"), "--out", str(tmp_path / "b"),
                  "--from-scratch", "tiny", "--max-steps", "2")
    assert unnamed.returncode == 2 and "--speaker is needed" in unnamed.stderr
    assert not (tmp_path / "b").exists()


def test_columns_can_be_named_on_the_command_line(cli, tmp_path):
    table = tmp_path / "posts.csv"
    table.write_text("handle,body_text\nkit,first words here\nkit,more words\n")
    named = cli("data", "inspect", str(table), "--columns", "text=body_text,speaker=handle")
    assert named.returncode == 0 and "text=body_text, speaker=handle" in named.stdout
    unnamed = cli("data", "inspect", str(table))
    assert unnamed.returncode == 2 and "no column holds the text (handle, body_text)" in unnamed.stderr
    assert "--columns" in unnamed.stderr and "Traceback" not in unnamed.stderr


def test_a_speaker_and_text_table_with_times_keeps_its_times_and_conversations(tmp_path):
    """Such a table once went to the script-table importer, which reads speaker and line only: a million
    rows over months became one conversation without times."""
    path = tmp_path / "posts.csv"
    path.write_text("id,date,speaker,text\n1,2024-05-01 10:00,ann,morning\n2,2024-05-01 10:02,bob,hi ann\n"
                    "3,2024-05-03 18:00,ann,two days later\n")
    corpus = load_corpus([path])
    assert corpus.files[0].format == "table"
    assert [[m.text for m in c.messages] for c in corpus.conversations] == [["morning", "hi ann"], ["two days later"]]
    assert corpus.messages()[0].timestamp.isoformat() == "2024-05-01T10:00:00"


def test_a_turn_list_cell_with_an_unknown_role_names_the_file_and_the_turn(tmp_path):
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "hi"}, {"role": "narrator", "content": "x"}]]}),
                   path)
    with pytest.raises(DataError) as error:
        load_corpus([path])
    assert error.value.path == str(path) and error.value.where == "row 2.messages[1].role"
    assert "unknown role 'narrator'" in error.value.message


# --- instruction tables: Alpaca's columns, read as the alpaca format reads them ---------------------------
ALPACA_RECORDS = FIXTURES / "alpaca" / "canal-bakery.json"


def turns_of(corpus):
    return [[(m.speaker, m.text) for m in c.messages] for c in corpus.conversations]


def write_table(records: list[dict], path: Path) -> Path:
    """The records as a table file of the kind `path` names (columns in the records' order)."""
    columns = list(records[0])
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("name,rendered", [("rows.csv", True), ("rows.csv", False), ("rows.jsonl", True),
                                           ("rows.parquet", True), ("rows.parquet", False)])
def test_an_instruction_table_gives_the_conversations_the_alpaca_format_gives(tmp_path, name, rendered):
    """vicgalle/alpaca-gpt4's shape: instruction, input, output and a pre-rendered `text`. It was read as one
    voice's posts: the whole rendered prompt as a post, or (without `text`) the outputs alone."""
    records = json.loads(ALPACA_RECORDS.read_text(encoding="utf-8"))
    if not rendered:
        records = [{k: v for k, v in r.items() if k != "text"} for r in records]
    path = write_table(records, tmp_path / name)
    alpaca = load_corpus([ALPACA_RECORDS])
    # JSON Lines of these records are detected as `alpaca`; read here as a table, they must agree.
    table = load_corpus([path], format="table")
    assert turns_of(table) == turns_of(alpaca)
    assert table.files[0].skipped == alpaca.files[0].skipped == {"empty": 2}       # counted, never dropped
    assert not any(c.single_voice for c in table.conversations)
    note = table.files[0].notes[0]
    assert "instruction=instruction (User prompt), input=input (prompt context), output=output (Assistant response)" \
        in note
    assert ("text=text (ignored)" in note) == rendered
    if path.suffix != ".jsonl":
        assert formats.detect(Source(path)).name == "table"
        assert turns_of(load_corpus([path])) == turns_of(alpaca)


def test_instruction_columns_can_be_named_and_an_explicit_text_column_still_wins(tmp_path):
    records = json.loads(ALPACA_RECORDS.read_text(encoding="utf-8"))
    renamed = write_table([{"question": r["instruction"], "details": r["input"], "answer": r["output"]}
                           for r in records], tmp_path / "qa.csv")
    options = ImportOptions.from_user(columns=parse_column_mapping("instruction=question,input=details,output=answer"))
    assert turns_of(load_corpus([renamed], options=options)) == turns_of(load_corpus([ALPACA_RECORDS]))
    dolly = write_table([{"instruction": r["instruction"], "context": r["input"], "response": r["output"],
                          "category": "open_qa"} for r in records], tmp_path / "dolly.csv")   # Dolly's names
    assert turns_of(load_corpus([dolly])) == turns_of(load_corpus([ALPACA_RECORDS]))
    rendered = write_table(records, tmp_path / "rendered.csv")
    as_posts = load_corpus([rendered], options=ImportOptions.from_user(columns={"text": "text"}))
    assert all(c.single_voice for c in as_posts.conversations)
    assert as_posts.messages()[0].text.startswith("Below is an instruction")
    no_output = ImportOptions.from_user(columns={"instruction": "question"})
    with pytest.raises(DataError, match="no output column") as error:
        load_corpus([renamed], options=no_output)
    assert "output=COLUMN" in str(error.value)


def test_an_instruction_cell_that_is_not_text_names_the_row_and_the_columns_roles(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"instruction": ["name a colour", "name a tree"], "output": [["red"], ["oak"]]}), path)
    with pytest.raises(DataError) as error:
        load_corpus([path])
    assert (error.value.path, error.value.where) == (str(path), "row 2.output")
    assert "expected text, found list" in error.value.message and "--columns instruction=" in error.value.hint


def test_data_inspect_shows_the_roles_of_an_instruction_tables_columns(cli, tmp_path):
    path = write_table(json.loads(ALPACA_RECORDS.read_text(encoding="utf-8")), tmp_path / "alpaca-gpt4.csv")
    result = cli("data", "inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "instruction=instruction (User prompt), input=input (prompt context), " \
           "output=output (Assistant response), text=text (ignored)" in result.stdout
    assert "skipped: 2 empty" in result.stdout
