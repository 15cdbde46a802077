"""Real training runs on tiny models: the artifact, resuming after an interruption, the safety of --out."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

TINY = ["--from-scratch", "tiny", "--batch-size", "4", "--epochs", "200", "--threads", "1", "--samples", "2"]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--speaker", "alice", "--out", str(out), *extra]


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_train_from_scratch_writes_a_whole_artifact_that_samples_and_evaluates(make_chat, tmp_path, cli):
    chat = make_chat()
    out = tmp_path / "alice"
    done = cli(*train_args(chat, out, *TINY, "--max-steps", "40", "--progress", "json"), module="training")
    assert done.returncode == 0, done.stderr
    log = events(done.stdout)  # --progress json: stdout is JSON lines only
    kinds = [e["event"] for e in log]
    assert kinds[0] == "phase" and "start" in kinds and "eval" in kinds and kinds[-1] == "done"
    steps = [e for e in log if e["event"] == "step"]
    assert steps[-1]["step"] == 40 and all("loss" in e and "eta_s" in e for e in steps)

    files = {p.name for p in out.iterdir()}
    assert {"persona.json", "config.json", "model.safetensors", "tokenizer.json", "loss.png",
            "training_text.jsonl.gz"} <= files
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    persona = json.loads((out / "persona.json").read_text())
    assert persona["speaker"] == "Alice" and persona["from_scratch"] == "tiny"
    base, trained = persona["metrics"]["base"], persona["metrics"]["trained"]
    assert trained["val_loss"] < base["val_loss"] - 0.5  # training taught it something
    assert trained["val_perplexity"] < base["val_perplexity"]
    assert persona["data"]["train"]["responses"] > 50 and persona["data"]["val"]["responses"] > 5
    assert persona["data"]["files"][0]["format"] == "whatsapp"
    assert len(persona["samples"]) == 2
    # The fidelity report (training.fidelity) of lines it never trained on, typed when read back.
    from training.artifact import read_persona
    from training.fidelity import FIDELITY_LINES

    fidelity = read_persona(out).fidelity
    assert fidelity is not None and fidelity.lines == FIDELITY_LINES and fidelity.persona == "Alice"
    assert fidelity.ceiling is not None and fidelity.floor is not None and fidelity.ceiling > fidelity.floor
    assert fidelity.copied is not None and 0 <= fidelity.copied <= 1    # what the bot's leak guard refuses
    assert "measuring fidelity" in [e.get("phase") for e in log if e["event"] == "phase"]
    with gzip.open(out / "training_text.jsonl.gz", "rt") as f:
        index = [json.loads(line) for line in f]
    assert any(e["response"] and "classic" in e["text"] for e in index)
    assert not (tmp_path / ".alice.partial").exists()  # the work folder is gone once the artifact is whole

    sample = cli("sample", str(out), "-n", "3", "--json", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    lines = json.loads(sample.stdout)["samples"]
    assert len(lines) == 3 and all(line.strip() for line in lines)

    ev = cli("eval", str(out), "--data", str(chat), "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["speaker"] == "Alice" and report["responses"] > 60
    assert report["loss"] < base["val_loss"]
    # eval measures fidelity for any artifact, on the exports' held-out lines of the artifact's own split: on
    # its training exports, the same figures as at the end of training (one seed, one split, one sample).
    assert report["fidelity"] == persona["fidelity"]
    text = cli("eval", str(out), "--data", str(chat), "--fidelity-lines", "10")
    assert text.returncode == 0 and "fidelity: " in text.stdout and "Alice's own real lines:" in text.stdout
    assert "10 lines" in text.stdout


def test_fine_tune_a_local_base_in_full_and_with_lora(make_chat, tmp_path, tiny_base):
    from bot.inference.persona import Persona
    from training.trainer import TrainConfig, train

    chat = make_chat()
    results = {}
    for mode in ("full", "lora"):
        cfg = TrainConfig(data=[str(chat)], speaker="Alice", out=tmp_path / mode, base=str(tiny_base),
                          max_steps=25, epochs=100, batch_size=4, lora=mode == "lora", lora_merge=mode == "lora",
                          lr=3e-3, threads=1, samples=1)
        results[mode] = train(cfg)
        persona = Persona.load(tmp_path / mode)
        assert persona.info.base == str(tiny_base)
        ids = persona.generate([persona.prompt([("Bob", "pizza tonight")])], [persona.settings], [1])[0]
        assert persona.text(ids)
    for mode, result in results.items():
        assert result.metrics.trained.val_loss < result.metrics.base.val_loss, mode
    # With lora_merge (--lora-merge) the adapter is merged: the artifact is a plain model of the base's shape.
    from safetensors import safe_open

    with safe_open(tmp_path / "lora" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k]
    assert json.loads((tmp_path / "lora" / "persona.json").read_text())["lora"]["merged"] is True


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "step" and event["step"] >= step:
            return
    raise AssertionError("training ended before step %d: %s" % (step, proc.stderr.read()))


def test_interrupted_run_resumes_with_the_same_command_and_ends_where_an_uninterrupted_one_does(
        make_chat, tmp_path, cli):
    chat = make_chat()
    common = [*TINY, "--max-steps", "120", "--eval-every", "30", "--progress", "json", "--samples", "0"]
    straight = cli(*train_args(chat, tmp_path / "straight", *common), module="training")
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "resumed"
    args = train_args(chat, out, *common)
    proc = _start(args)
    _wait_for_step(proc, 45)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Run the same command again to continue" in err
    assert not out.exists()  # nothing half-written at the output path
    assert (tmp_path / ".resumed.partial" / "checkpoint.pt").is_file()

    again = cli(*args, module="training")
    assert again.returncode == 0, again.stderr
    log = events(again.stdout)
    resumed = [e for e in log if e["event"] == "phase" and e["phase"] == "resuming"]
    assert resumed and "from step 4" in resumed[0]["detail"]  # step 45 or a little later
    first_step = next(e["step"] for e in log if e["event"] == "step")
    assert first_step > 45
    a = json.loads((tmp_path / "straight" / "persona.json").read_text())
    b = json.loads((out / "persona.json").read_text())
    # Same data order, optimiser state and random state: the resumed run ends exactly where the other did.
    assert b["training"]["steps"] == a["training"]["steps"] == 120
    assert [s for s, _ in b["history"]["val"]] == [s for s, _ in a["history"]["val"]]
    assert [v for _, v in b["history"]["val"]] == pytest.approx([v for _, v in a["history"]["val"]], rel=1e-5)
    assert b["metrics"]["trained"]["val_loss"] == pytest.approx(a["metrics"]["trained"]["val_loss"], rel=1e-5)


def test_a_killed_run_continues_from_its_last_checkpoint(make_chat, tmp_path, cli):
    chat = make_chat()
    out = tmp_path / "killed"
    args = train_args(chat, out, *TINY, "--max-steps", "400", "--patience", "1000", "--progress", "json",
                      "--checkpoint-every", "0.2", "--samples", "0")
    proc = _start(args)
    _wait_for_step(proc, 30)
    checkpoint = tmp_path / ".killed.partial" / "checkpoint.pt"
    deadline = time.monotonic() + 30
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.communicate(timeout=60)
    assert checkpoint.exists() and not out.exists()

    # Another command must not silently reuse (or destroy) that run...
    other = cli(*train_args(chat, out, *TINY, "--max-steps", "50", "--progress", "none"), module="training")
    assert other.returncode == 2 and "--restart" in other.stderr and checkpoint.exists()
    # ...the same command picks it up.
    again = cli(*args, module="training")
    assert again.returncode == 0, again.stderr
    first = next(e for e in events(again.stdout) if e["event"] == "step")
    assert first["step"] > 1
    assert json.loads((out / "persona.json").read_text())["training"]["steps"] == 400


def test_output_path_is_never_half_written_or_silently_replaced(make_chat, tmp_path, cli):
    chat = make_chat()
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = cli(*train_args(chat, out, *TINY, "--max-steps", "5", "--progress", "none"), module="training")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert (out / "keep.txt").read_text() == "mine"

    bad_speaker = cli("--data", str(chat), "--speaker", "alise", "--out", str(tmp_path / "q"), *TINY,
                      module="training")
    assert bad_speaker.returncode == 2
    assert "no messages by a speaker called 'alise'" in bad_speaker.stderr and "Alice" in bad_speaker.stderr
    assert not (tmp_path / "q").exists() and not (tmp_path / ".q.partial").exists()

    replaced = cli(*train_args(chat, out, *TINY, "--max-steps", "5", "--progress", "none", "--overwrite"),
                   module="training")
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "keep.txt").exists() and (out / "persona.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_a_damaged_artifact_names_what_is_missing(make_chat, tmp_path, cli):
    from training.artifact import ArtifactError, read_persona
    from training.trainer import TrainConfig, train

    out = tmp_path / "p"
    train(TrainConfig(data=[str(make_chat())], speaker="alice", out=out, from_scratch="tiny", max_steps=3,
                      batch_size=4, threads=1, samples=0))
    read_persona(out)
    (out / "model.safetensors").unlink()
    (out / "training_text.jsonl.gz").unlink()
    with pytest.raises(ArtifactError, match=r"missing: model weights \(model.safetensors\), training_text"):
        read_persona(out)
    result = cli("sample", str(out), "-n", "1")
    assert result.returncode == 2 and "not a whole persona artifact" in result.stderr
    assert "Traceback" not in result.stderr

    damaged = tmp_path / "d"
    train(TrainConfig(data=[str(make_chat())], speaker="alice", out=damaged, from_scratch="tiny", max_steps=3,
                      batch_size=4, threads=1, samples=0))
    (damaged / "persona.json").write_text('{"personabot_artifact": 1, "prompt')
    result = cli("chat", str(damaged))
    assert result.returncode == 2 and "persona.json is damaged" in result.stderr
    assert cli("sample", str(tmp_path / "nowhere")).returncode == 2


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 MB tmpfs, and a way to fill it up to `leave` free bytes (root only: mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    ballast = tmp_path / "disk" / "ballast"

    def fill(leave: int) -> None:
        ballast.unlink(missing_ok=True)
        stat = os.statvfs(disk)
        ballast.write_bytes(bytes(max(0, stat.f_bavail * stat.f_frsize - leave)))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_while_saving_leaves_the_last_good_checkpoint_and_artifact(make_chat, cli, small_disk):
    from training.artifact import read_persona

    disk, fill = small_disk
    chat, out = make_chat(), disk / "alice"
    tiny = ["--from-scratch", "tiny", "--batch-size", "4", "--threads", "1", "--samples", "0", "--max-steps", "6"]
    assert cli(*train_args(chat, out, *tiny), module="training").returncode == 0
    good = (out / "persona.json").read_bytes()
    weights = (out / "model.safetensors").stat().st_size   # a checkpoint holds these and two Adam moments

    # Room for the checkpoint (and the best weights) but not for a second artifact beside the first.
    again = train_args(chat, out, *tiny, "--seed", "7", "--overwrite")
    fill(int(4.5 * weights))
    no_room = cli(*again, module="training")
    assert no_room.returncode == 2, no_room.stderr
    assert f"cannot write the artifact {out}: " in no_room.stderr and "No space left on device" in no_room.stderr
    assert "untouched" in no_room.stderr and "run the same command again" in no_room.stderr
    assert "Traceback" not in no_room.stderr
    assert (out / "persona.json").read_bytes() == good and read_persona(out)      # the old artifact, whole
    assert sorted(p.name for p in disk.iterdir()) == [".alice.partial", "alice", "ballast"]
    checkpoint = disk / ".alice.partial" / "checkpoint.pt"
    saved = checkpoint.read_bytes()

    # No room even for the checkpoint: the one saved before stays as it was, nothing half-written beside it.
    fill(weights // 4)
    no_room = cli(*again, module="training")
    assert no_room.returncode == 2 and "Traceback" not in no_room.stderr, no_room.stderr
    assert f"cannot write the checkpoint {checkpoint}" in no_room.stderr and "previous one is kept" in no_room.stderr
    assert checkpoint.read_bytes() == saved and not list(checkpoint.parent.glob("*.tmp"))

    fill(0)
    (disk / "ballast").unlink()
    finished = cli(*again, module="training")                   # continues from that checkpoint
    assert finished.returncode == 0, finished.stderr
    assert json.loads((out / "persona.json").read_text())["training"]["seed"] == 7


def test_excluded_people_are_left_out_of_the_data_by_any_of_their_names(make_chat, cli):
    chat = make_chat()
    plain = cli("data", "inspect", str(chat), "--json")
    left_out = cli("data", "inspect", str(chat), "--json", "--exclude", "CAROL, nobody")
    assert plain.returncode == 0 and left_out.returncode == 0, left_out.stderr
    before, after = json.loads(plain.stdout), json.loads(left_out.stdout)
    carol = before["speakers"]["Carol"]
    assert carol > 0 and "Carol" not in after["speakers"] and after["speakers"]["Bob"] == before["speakers"]["Bob"]
    assert after["files"][0]["skipped"]["excluded"] == carol


def _artifact_files(directory):
    """The files `read_persona` asks for, empty: persona.json is what these tests look at."""
    directory.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_text.jsonl.gz"):
        (directory / name).write_bytes(b"")
    return directory


def _persona_info(path):
    from training.artifact import DataSummary, LoraInfo, LossFigures, Metrics, PersonaInfo, TrainingSummary
    from training.dataset import DatasetConfig
    from training.generation import GenerationSettings
    from training.fidelity import FidelityReport

    return PersonaInfo(
        path=path, speaker="Alice", generation=GenerationSettings(temperature=0.7, context_tokens=128),
        metrics=Metrics(LossFigures(4.5, 90.0, 300), LossFigures(3.25, 25.8, 300), best_step=40),
        speaker_names=["Alice", "alice"], speaker_ids=["42"], base="gpt2", base_label="gpt2",
        lora=LoraInfo(8, 16), corpus_kind="conversations", created_at="2026-01-01T00:00:00+00:00",
        sources=DataSummary(fingerprint="abc", files=[{"path": "chat.txt", "format": "whatsapp"}],
                            conversations=3, messages=120, speaker_messages=60, train={"responses": 50},
                            val={"responses": 10}, training_text_entries=110),
        dataset=DatasetConfig(context_tokens=128, block_size=256),
        training=TrainingSummary(steps=40, stopped="completed", lr=5e-5, device="cpu", precision="fp32"),
        history={"train": [[1, 4.0]], "val": [[40, 3.25]]}, samples=["hi", "pizza?"],
        fidelity=FidelityReport(persona="Alice", lines=40, attribution=0.71, ceiling=0.83, floor=0.09,
                                compared="Alice against 2 other speakers", distinct1=0.3, distinct2=0.6,
                                real_distinct1=0.35, real_distinct2=0.7, copied=0.05, median_words=6.0,
                                real_median_words=7.0, length_distance=1.5, seed=0))


def test_persona_info_writes_and_reads_every_field(tmp_path):
    from training.artifact import read_persona

    out = _artifact_files(tmp_path / "p")
    info = _persona_info(out)
    info.write(out)
    assert read_persona(out) == info
    written = json.loads((out / "persona.json").read_text())
    assert list(written) == ["personabot_artifact", "prompt_format", "speaker", "speaker_names", "speaker_ids",
                             "base", "from_scratch", "base_label", "lora", "corpus_kind", "created_at", "data",
                             "dataset", "training", "metrics", "history", "generation", "samples", "fidelity"]
    assert written["metrics"]["trained"]["val_loss"] == 3.25 and written["lora"]["merged"] is True
    assert written["fidelity"]["attribution"] == 0.71 and read_persona(out).fidelity.ceiling == 0.83
    assert info.trained_val_loss == 3.25 and info.base_val_loss == 4.5


def test_an_older_persona_json_without_some_keys_still_reads(tmp_path):
    from training.artifact import read_persona

    out = _artifact_files(tmp_path / "p")
    _persona_info(out).write(out)
    written = json.loads((out / "persona.json").read_text())
    for key in ("speaker_names", "speaker_ids", "lora", "corpus_kind", "data", "dataset", "training", "history",
                "samples", "base_label", "fidelity"):
        del written[key]
    del written["metrics"]["base"]
    (out / "persona.json").write_text(json.dumps(written))
    info = read_persona(out)
    assert info.speaker == "Alice" and info.base == "gpt2" and info.dataset is None and info.lora is None
    assert info.trained_val_loss == 3.25 and info.base_val_loss is None and info.samples == []
    assert info.generation.context_tokens == 128 and info.training.steps is None and info.fidelity is None


def test_a_persona_json_of_the_wrong_shape_is_a_clear_error(tmp_path):
    from training.artifact import ArtifactError, read_persona

    out = _artifact_files(tmp_path / "p")
    _persona_info(out).write(out)
    written = json.loads((out / "persona.json").read_text())
    (out / "persona.json").write_text(json.dumps({**written, "metrics": [1, 2]}))
    with pytest.raises(ArtifactError, match=r"persona.json: \"metrics\" must be an object"):
        read_persona(out)
    (out / "persona.json").write_text(json.dumps({**written, "lora": {"rank": 8}}))
    with pytest.raises(ArtifactError, match=r"persona.json is damaged"):
        read_persona(out)
    (out / "persona.json").write_text(json.dumps({k: v for k, v in written.items() if k != "speaker"}))
    with pytest.raises(ArtifactError, match="lacks speaker"):
        read_persona(out)


def test_a_local_base_is_recorded_by_its_absolute_path_for_a_full_fine_tune_too(make_chat, tmp_path, tiny_base,
                                                                              monkeypatch):
    """A base given relative to the working directory is named by its absolute path in persona.json, so that
    the bot (started elsewhere) still finds it, and the leak guard the base persona's training text in it."""
    from training.artifact import read_persona
    from training.trainer import TrainConfig, train

    monkeypatch.chdir(tiny_base.parent)
    train(TrainConfig(data=[str(make_chat())], speaker="Alice", out=tmp_path / "full", base=tiny_base.name,
                      max_steps=2, epochs=100, batch_size=4, threads=1, samples=0))
    assert read_persona(tmp_path / "full").base == str(tiny_base)
