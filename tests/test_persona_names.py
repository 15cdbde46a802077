"""The names a persona may speak under (bot/core/persona_names.py): what Discord refuses, written plainly or with
look-alike letters; blank-looking and invisible characters; letters of another script passing for this one's;
a name that looks like a member's or another persona's. Ordinary names of any script pass."""

from __future__ import annotations

import pytest

from bot.core.persona_names import look_alike, name_problem


@pytest.mark.parametrize("name", ["Alice", "Dr. Who", "Zoë", "李雷", "O'Brien", "Nova 2", "Zoë-bot", "Борис",
                                  "Ελένη", "Lily 김", "ロボット田口", "Nowhere", "Thereafter", "x" * 32])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None
    assert name_problem(name, taken=["Bob", "Carol", "Mallory"]) is None


@pytest.mark.parametrize("name, problem", [
    ("", "1 to 32 characters"), ("x" * 33, "1 to 32 characters"),
    (" Alice", "not a usable persona name"), ("Al/ice", "not a usable persona name"),
    ("@Alice", "not a usable persona name"), ("\u2800", "not a usable persona name"),    # braille blank
])
def test_names_of_other_characters_are_refused(name, problem):
    assert problem in name_problem(name)


@pytest.mark.parametrize("name, word", [
    ("Discord Alice", "'discord'"), ("ClydeBot", "'clyde'"), ("Сlyde", "'clyde'"), ("Dіscord", "'discord'"),
    ("𝓒𝓵𝔂𝓭𝓮", "'clyde'"), ("My Dіscord Pal", "'discord'"),
])
def test_names_containing_what_discord_refuses_are_refused_even_in_look_alike_letters(name, word):
    problem = name_problem(name)
    assert problem is not None and word in problem and "Discord does not allow" in problem, problem


@pytest.mark.parametrize("name, word", [
    ("everyone", "everyone"), ("Everyone", "everyone"), ("HERE", "here"), ("here", "here"),
    ("ｅｖｅｒｙｏｎｅ", "everyone"), ("еveryone", "everyone"), ("hеrе", "here"),
])
def test_everyone_and_here_are_refused_in_any_case_and_form(name, word):
    problem = name_problem(name)
    assert problem is not None and f"reads as '{word}'" in problem and "choose another name" in problem, problem


@pytest.mark.parametrize("name, shown", [
    ("\u3164", "U+3164 HANGUL FILLER"), ("\u115f", "U+115F HANGUL CHOSEONG FILLER"),
    ("Al\u200bice", "U+200B ZERO WIDTH SPACE"), ("Alice\u2060", "U+2060 WORD JOINER"),
    ("Ann\u00a0Lee", "U+00A0 NO-BREAK SPACE"), ("Bob\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("Bob\ufe0f", "U+FE0F VARIATION SELECTOR-16"), ("A\u3164B", "U+3164 HANGUL FILLER"),
])
def test_invisible_and_blank_looking_characters_are_refused_and_named(name, shown):
    problem = name_problem(name)
    assert problem is not None and "invisible or blank-looking" in problem and shown in problem, problem
    assert "visible letters and digits" in problem


@pytest.mark.parametrize("name, char", [("Аlice", "'А' (Cyrillic) looks like Latin 'A'"),
                                        ("Alicе Bob", "'е' (Cyrillic) looks like Latin 'e'"),
                                        ("Pαul", "'α' (Greek) looks like Latin 'a'")])
def test_a_letter_of_another_script_passing_for_this_ones_is_refused(name, char):
    problem = name_problem(name)
    assert problem is not None and "mixes scripts" in problem and char in problem, problem
    assert "write the name in one script" in problem


@pytest.mark.parametrize("name, taken", [
    ("Alice", "Alice"), ("alice", "ALICE"), ("AIice", "Alice"), ("Аlice", "Alice"), ("Ａｌｉｃｅ", "alice"),
    ("Bob", "B\u200bob"),                       # a member's name with an invisible character in it
])
def test_a_name_that_looks_like_a_member_or_persona_is_refused(name, taken):
    problem = name_problem(name, taken=["Carol", taken, "Mallory"])
    assert problem is not None, name
    if "mixes scripts" not in problem:          # "Аlice" is refused for that first
        assert f"looks the same as {taken!r}" in problem and "choose a name" in problem, problem


def test_look_alikes_are_told_and_different_names_kept_apart():
    for a, b in (("Сlyde", "clyde"), ("𝓒𝓵𝔂𝓭𝓮", "Clyde"), ("CLYDE", "clyde"), ("AIice", "Alice"), ("ALICE", "alice"),
                 ("ｅｖｅｒｙｏｎｅ", "everyone"), ("Al\u200bice  Smith", "Alice Smith"), ("DІSCORD", "discord")):
        assert look_alike(a, b), (a, b)
    names = ("Alice", "Alicia", "Bob", "Bobby", "李雷", "李", "Zoë", "Zoe", "Ann Lee", "Annlee")
    assert [(a, b) for a in names for b in names if a != b and look_alike(a, b)] == []
