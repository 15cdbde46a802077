"""The blind quiz (issue 22, part 3): rounds of a real held-out line beside a generated one of similar length,
in the terminal (`personabot quiz`, a real subprocess on a real SQLite file) and in Discord (`/persona quiz`,
simcord, buttons); results kept per artifact and shown by /persona info; real lines only as the privacy rules
allow (nobody who used /forget-me, nothing the blocklist refuses). The personas are real tiny models."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from bot.core.quiz import QuizRound, QuizScore, pair_rounds
from test_discord import engine, settings, simcord_bot, store, world  # noqa: F401 (fixtures)
from test_persona_discord import carol_adapter, models  # noqa: F401 (fixtures)
from training.artifact import HELD_OUT_FILE, read_held_out

ROUND = re.compile(r"\nRound (\d+) of (\d+)\n  1\) (.*?)\n  2\) (.*?)\nReal one \(1/2\)\? +(.*?)\n", re.S)


def test_rounds_pair_lines_of_similar_length_and_score_picks():
    real = ["ok", "see you at the lake on sunday then", "what a day it has been honestly"]
    generated = ["yes", "we could meet at the lake on sunday", "a b c d e f g h i j k l m n o p",
                 "it has been a long day honestly", "no"]
    rounds = pair_rounds(real, generated, 3, random.Random(4))
    assert sorted(r.real for r in rounds) == sorted(real)
    partner = {r.real: r.generated for r in rounds}
    assert partner == {"ok": "no", "see you at the lake on sunday then": "we could meet at the lake on sunday",
                       "what a day it has been honestly": "it has been a long day honestly"}
    assert pair_rounds(real, generated, 3, random.Random(4)) == rounds          # seeded: the same quiz again
    assert {r.real_first for r in pair_rounds(real * 10, generated * 10, 30, random.Random(1))} == {True, False}
    assert len(pair_rounds(real, generated[:2], 3, random.Random(4))) == 2     # no more rounds than lines
    first = QuizRound("real", "made", real_first=True)
    assert first.options == ("real", "made") and not first.fooled_by(0) and first.fooled_by(1)
    second = QuizRound("real", "made", real_first=False)
    assert second.options == ("made", "real") and second.fooled_by(0) and not second.fooled_by(1)
    assert QuizScore(2, 1) + QuizScore(3, 0) == QuizScore(5, 1)
    assert "1 of 5 rounds (20%; 50% means" in QuizScore(5, 1).summary("Alice")
    for impossible in ((1, 2), (-1, 0), (2, -1)):
        with pytest.raises(ValueError):
            QuizScore(*impossible)


async def test_quiz_results_add_up_per_artifact_from_two_stores(database):
    one, two = await database.open(), await database.open()      # two processes' stores on one database
    try:
        assert await one.quiz_score("/models/alice") is None
        for store in (one, two):        # quizzes ending at once in each process: every round counts
            await asyncio.gather(*(store.add_quiz_score("/models/alice", QuizScore(3, i % 2)) for i in range(10)))
        await one.add_quiz_score("/models/bob", QuizScore(1, 1))
        assert await two.quiz_score("/models/alice") == QuizScore(60, 10)
        assert await one.quiz_score("/models/bob") == QuizScore(1, 1)
        assert await one.quiz_score("/models/carol") is None
    finally:
        await one.close()
        await two.close()


def test_training_keeps_its_held_out_lines_in_the_artifact(alice_artifact, persona_chat):
    from training.fidelity import split_lines
    from training.loader import load_corpus

    kept = read_held_out(alice_artifact)
    held = split_lines(load_corpus([str(persona_chat)]).conversations, "alice")   # training's default split
    assert kept and kept == held.persona_heldout            # lines the model never trained on
    assert all(line.startswith("@everyone") for line in kept)
    # The validation split's turns: as many as training's own count of them.
    info = json.loads((alice_artifact / "persona.json").read_text())
    assert len(kept) == info["data"]["val"]["responses"]


def _quiz_env(tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_PATH": str(tmp_path / "bot.sqlite3"), "PERSONA_MODEL": "", "DISCORD_TOKEN": ""}


def _rounds(stdout: str) -> list[tuple[str, str, str]]:
    """(option 1, option 2, verdict) of every round the terminal quiz showed."""
    return [(one, two, verdict) for _, _, one, two, verdict in ROUND.findall(stdout)]


def test_the_terminal_quiz_scores_picks_and_keeps_results_per_artifact(cli, tmp_path, bob_artifact):
    real = set(read_held_out(bob_artifact))
    env = _quiz_env(tmp_path)
    first = cli("quiz", str(bob_artifact), "--rounds", "4", "--seed", "3", env=env, input="1\n1\n1\n1\n")
    assert first.returncode == 0, first.stderr
    rounds = _rounds(first.stdout)
    assert len(rounds) == 4
    fooled = 0
    for one, two, verdict in rounds:
        assert (one in real) != (two in real)                       # one real line, one generated
        fooled += one not in real
        assert verdict.startswith("Right" if one in real else "The persona's line")
    assert f"This quiz: Bob's generated line was taken for the real one in {fooled} of 4 rounds" in first.stdout
    # Stopped after two rounds with q: two more rounds kept, six in all, on this artifact.
    again = cli("quiz", str(bob_artifact), "--rounds", "4", "--seed", "3", env=env, input="2\n2\nq\n")
    assert again.returncode == 0, again.stderr
    more = sum(two not in real for _, two, _ in _rounds(again.stdout)[:2])
    assert f"in {fooled + more} of 6 rounds" in again.stdout.split("All quizzes on this model")[1]
    # The same seed gives the same rounds (the persona samples its lines with the seed too).
    assert _rounds(again.stdout)[0][:2] == rounds[0][:2]


def test_the_quiz_shows_no_line_of_someone_forgotten_nor_one_the_blocklist_refuses(cli, tmp_path, bob_artifact):
    real = read_held_out(bob_artifact)
    # A word in many of Bob's real lines, but not in most (some must be left to ask).
    counts = {w: sum(w in line.split() for line in real)
              for w in sorted({w for line in real for w in line.split() if w.isalpha() and len(w) > 3})}
    word = max((w for w in counts if counts[w] <= len(real) // 2), key=counts.__getitem__)
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(word + "\n")
    env = {**_quiz_env(tmp_path), "BLOCKLIST_FILE": str(blocklist)}
    result = cli("quiz", str(bob_artifact), "--rounds", "25", "--seed", "1", env=env, input="1\n" * 25)
    assert result.returncode == 0, result.stderr
    shown_lines = [line for one, two, _ in _rounds(result.stdout) for line in (one, two)]
    assert len(shown_lines) >= 8 and not [line for line in shown_lines if word in line.split()]
    assert [line for line in real if word in line.split()]          # the word was in real lines to leave out

    # Bob asked to be forgotten (/forget-me, under his name): no real line of his is shown.
    from bot.storage.sqlite import SQLiteStore

    async def forget() -> None:
        async with await SQLiteStore.open(tmp_path / "bot.sqlite3") as db:
            await db.forget_user(1234, "bob")
    asyncio.run(forget())
    refused = cli("quiz", str(bob_artifact), env=env, input="1\n")
    assert refused.returncode == 2 and "asked to be forgotten" in refused.stderr
    assert "Round 1" not in refused.stdout and "Traceback" not in refused.stderr


async def test_a_person_forgotten_by_account_under_another_name_stops_their_quiz(tmp_path, bob_artifact):
    from dataclasses import replace

    from bot.jobs.quiz import opted_out_refusal
    from bot.storage.sqlite import SQLiteStore
    from training.artifact import read_persona

    # A persona trained on an export that carries accounts (Discord, Telegram): its speaker's ids are kept.
    info = replace(read_persona(bob_artifact), speaker_ids=["4242"], speaker_names=["Bob", "bobby_b"])
    async with await SQLiteStore.open(tmp_path / "bot.sqlite3") as db:
        assert await opted_out_refusal(db, info) is None
        await db.forget_user(999, "Carol")                       # someone else: still no refusal
        assert await opted_out_refusal(db, info) is None
        await db.forget_user(4242, "Robert Brown")               # his account, under a name the export never had
        assert "asked to be forgotten" in await opted_out_refusal(db, info)
    async with await SQLiteStore.open(tmp_path / "other.sqlite3") as db:
        await db.forget_user(7, "BOBBY_B")                       # one of his names, any case
        assert "asked to be forgotten" in await opted_out_refusal(db, info)


def test_an_artifact_from_before_quizzes_takes_its_lines_from_its_exports(cli, tmp_path, bob_artifact, persona_chat):
    older = tmp_path / "bob-older"
    shutil.copytree(bob_artifact, older)
    (older / HELD_OUT_FILE).unlink()
    env = _quiz_env(tmp_path)
    refused = cli("quiz", str(older), env=env, input="1\n")
    assert refused.returncode == 2 and "trained before quizzes" in refused.stderr and "--data" in refused.stderr
    result = cli("quiz", str(older), "--data", str(persona_chat), "--rounds", "5", "--seed", "2", env=env,
                 input="1\n" * 5)
    assert result.returncode == 0, result.stderr
    real = set(read_held_out(bob_artifact))        # the lines training held out, found again from the export
    assert all((one in real) != (two in real) for one, two, _ in _rounds(result.stdout))


@pytest.mark.slow
async def test_persona_quiz_in_discord_is_private_with_buttons_and_kept_for_persona_info(world, models):  # noqa: F811
    env, general, other, admin, bob, carol = world
    await admin.slash(general, "persona add", name="Robin", directory="bob")
    real = set(read_held_out(models / "bob"))
    asked = await bob.slash(general, "persona quiz", name="Robin", rounds=3)
    assert asked.ephemeral

    def options() -> tuple[str, str]:
        shown = asked.response.content
        one = re.search(r"\*\*1\.\*\* (.*?)\n\*\*2\.\*\* ", shown, re.S).group(1)
        two = shown.split("**2.** ", 1)[1]
        assert (one in real) != (two in real), shown
        return one, two

    assert "round 1 of 3" in asked.response.content and "Robin" in asked.response.content
    one, _ = options()
    await bob.click(asked.response, label="1" if one in real else "2")      # the real one
    assert "Round 1: right" in asked.response.content and "round 2 of 3" in asked.response.content
    one, _ = options()
    await bob.click(asked.response, label="2" if one in real else "1")      # the persona's
    assert "Round 2: that was the persona's line" in asked.response.content
    await bob.click(asked.response, label="Stop")
    assert "This quiz: Robin's generated line was taken for the real one in 1 of 2 rounds" in asked.response.content
    artifact = (models / "bob").resolve()
    assert await env.bot.store.quiz_score(artifact) == QuizScore(2, 1)
    info = (await bob.slash(general, "persona info", name="Robin")).response.content
    assert "Blind quiz: Robin's generated line was taken for the real one in 1 of 2 rounds (50%" in info
    alice = (await bob.slash(general, "persona info")).response.content    # the configured persona: none yet
    assert "Blind quiz: no quiz taken yet (`/persona quiz` takes it)" in alice
