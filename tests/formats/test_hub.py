"""hf: data sets, built here (save_to_disk, Parquet folders, the datasets cache): never the hub itself."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.errors import DataError
from training.formats.base import ImportOptions
from training.formats.hub import parse_hub_name
from training.loader import load_corpus

ALPACA_RECORDS = Path(__file__).parent.parent / "fixtures" / "alpaca" / "canal-bakery.json"
SCRIPT = {"character": ["VESNA", "ORLO", "VESNA", "ORLO"],
          "dialogue": ["the tide is late", "tides are never late", "this one is", "then we wait"],
          "scene": [1, 1, 2, 2]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A datasets cache of this test's own, and no hub."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")   # read at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_data_set_saved_to_disk_reads_with_its_columns_roles(tmp_path):
    folder = tmp_path / "script"
    datasets.Dataset.from_dict(SCRIPT).save_to_disk(str(folder))
    corpus = load_corpus([f"hf:{folder}"])
    assert [[(m.speaker, m.text) for m in c.messages] for c in corpus.conversations] == [
        [("VESNA", "the tide is late"), ("ORLO", "tides are never late")],
        [("VESNA", "this one is"), ("ORLO", "then we wait")]]
    assert corpus.files[0].format == "hf" and "conversation=scene" in corpus.files[0].notes[0]


def test_an_alpaca_shaped_data_set_gives_the_conversations_the_alpaca_format_gives(tmp_path):
    """As vicgalle/alpaca-gpt4 ships: instruction, input, output and a pre-rendered `text`, which was read
    as one voice's posts (the whole rendered prompt each)."""
    records = json.loads(ALPACA_RECORDS.read_text(encoding="utf-8"))
    folder = tmp_path / "alpaca-gpt4"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    table, alpaca = load_corpus([f"hf:{folder}"]), load_corpus([ALPACA_RECORDS])
    assert [[(m.speaker, m.text) for m in c.messages] for c in table.conversations] == \
        [[(m.speaker, m.text) for m in c.messages] for c in alpaca.conversations]
    assert table.files[0].skipped == alpaca.files[0].skipped == {"empty": 2}
    assert "output=output (Assistant response), text=text (ignored)" in table.files[0].notes[0]


def test_splits_are_chosen_and_an_unknown_one_lists_those_there_are(tmp_path):
    folder = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a first post", "a second post"]}),
                          "test": datasets.Dataset.from_dict({"text": ["a held-out post"]})}).save_to_disk(str(folder))
    assert [m.text for m in load_corpus([f"hf:{folder}:test"]).messages()] == ["a held-out post"]
    assert len(load_corpus([f"hf:{folder}"]).messages()) == 2                     # train by default
    with pytest.raises(DataError, match="has no split 'validation'") as error:
        load_corpus([f"hf:{folder}:validation"])
    assert "train" in str(error.value) and "test" in str(error.value)


def test_a_folder_of_parquet_files_loads_through_load_dataset_and_its_cache(tmp_path, monkeypatch):
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"author": ["pim", "jol"], "message": ["one", "two"]}), folder / "train.parquet")
    first = load_corpus([f"hf:{tmp_path / 'repo'}"])
    assert [(m.speaker, m.text) for m in first.messages()] == [("pim", "one"), ("jol", "two")]
    assert any((tmp_path / "cache").iterdir())                     # it went through the datasets cache


def test_column_mapping_applies_to_data_sets(tmp_path):
    folder = tmp_path / "tweets"
    datasets.Dataset.from_dict({"handle": ["kit", "kit"], "body": ["hello pier", "bye pier"]}).save_to_disk(str(folder))
    options = ImportOptions.from_user(columns={"text": "body", "speaker": "handle"})
    assert [m.speaker for m in load_corpus([f"hf:{folder}"], options=options).messages()] == ["kit", "kit"]
    with pytest.raises(DataError, match="no such column") as error:
        load_corpus([f"hf:{folder}"], options=ImportOptions.from_user(columns={"text": "tweet"}))
    assert "handle, body" in str(error.value)


def test_a_hub_id_that_is_not_cached_offline_is_one_clear_error():
    with pytest.raises(DataError, match="cannot load this data set") as error:
        load_corpus(["hf:nobody-here/no-such-set"])
    assert "HF_HUB_OFFLINE" in str(error.value)


@pytest.mark.parametrize("name,parsed", [
    ("hf:vicgalle/alpaca-gpt4", ("vicgalle/alpaca-gpt4", None, None, "train")),
    ("hf:owner/set/fr@v1.2:test", ("owner/set", "fr", "v1.2", "test")),
    ("hf:owner/set:validation", ("owner/set", None, None, "validation")),
])
def test_hub_names_are_parsed(name, parsed):
    where = parse_hub_name(name)
    assert (where.repo, where.config, where.revision, where.split) == parsed


def test_a_malformed_hub_name_or_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="neither a hub data set id nor a folder"):
        parse_hub_name("hf:just-a-name")
    with pytest.raises(DataError, match="no such folder"):
        parse_hub_name(f"hf:{tmp_path / 'missing'}")


def test_data_inspect_of_a_missing_hub_set_exits_2_without_a_traceback(cli, tmp_path):
    result = cli("data", "inspect", "hf:nobody-here/no-such-set",
                 env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hf:nobody-here/no-such-set" in result.stderr
