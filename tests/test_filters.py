"""Output filters: the leak guard, mention neutralising, the blocklist, tweet length and cutting."""

from __future__ import annotations

import random
import re

import pytest

from bot.core.filters import (DISCORD, DISCORD_LIMIT, TERMINAL, TWEET_LIMIT, TWITTER, Blocklist, FilterConfigError,
                              LeakGuard, OutputFilter, cut_to_length, has_link, neutralise_mentions, tweet_length)
from training.artifact import write_training_text

ZWSP = "\u200b"
FAMILY = "👨\u200d👩\u200d👧\u200d👦"
FLAG = "🇫🇷"
LONG_CONTEXT = ("we should really take the night bus back home after the concert because the trains stop "
                "running at midnight on sundays")
LONG_WORDS = LONG_CONTEXT.split()


# --- leak guard ---------------------------------------------------------------------------------------------

# Forty people's names: a word in more lines than `rare_lines` (32) is common, not distinctive.
NAMES_OF_MANY = [f"{first}{last}" for first in ("al", "bo", "cy", "di", "ed") for last in "abcdefgh"]

def guard(**kwargs) -> LeakGuard:
    texts = [
        ("Honestly the pizza was terrible", True),
        ("ok lol", True),
        ("see you soon", False),
        (LONG_CONTEXT, False),
    ]
    return LeakGuard(texts, **kwargs)


def test_verbatim_response_is_rejected_whatever_its_case_and_punctuation():
    g = guard()
    assert g.check("honestly, the PIZZA was terrible!!") == "repeats a training response verbatim"
    assert g.check("“Honestly” — the pizza was… terrible") == "repeats a training response verbatim"
    assert g.check("ｈｏｎｅｓｔｌｙ the pizza was terrible") == "repeats a training response verbatim"  # NFKC


def test_short_response_may_be_repeated_unless_configured_otherwise():
    assert guard().check("OK lol!") is None
    assert guard(min_verbatim_words=2).check("OK lol!") == "repeats a training response verbatim"


def test_verbatim_check_covers_responses_only_and_common_context_lines_may_be_repeated():
    # Said by many, "see you soon" is no one's secret: as context it may come back, as a response it may not.
    many = [(f"see you soon {name}", False) for name in NAMES_OF_MANY] + [("see you soon", False)]
    assert LeakGuard(many).check("See you soon!") is None
    assert LeakGuard(many + [("see you soon", True)]).check("See you soon!") == \
        "repeats a training response verbatim"


def test_novel_line_is_accepted():
    g = guard()
    assert g.check("the pizza was great honestly") is None
    assert g.check("the pasta was terrible honestly") is None
    assert g.check("") is None


@pytest.mark.parametrize("start", [0, 5, len(LONG_WORDS) - 8])
def test_eight_words_from_a_context_message_are_rejected(start):
    shared = " ".join(LONG_WORDS[start:start + 8])
    reply = f"Well, {shared.upper()}, or so I heard"
    assert guard().check(reply) == "shares 8 consecutive words with the training text"


def test_seven_shared_words_are_accepted_and_the_threshold_is_configurable():
    seven = " ".join(LONG_WORDS[3:10])
    reply = f"Well, {seven}, or so I heard"
    assert guard().check(reply) is None
    assert guard(ngram_words=5).check(reply) == "shares 5 consecutive words with the training text"


def test_shared_words_must_be_consecutive():
    reply = " ".join(LONG_WORDS[0:4] + ["actually"] + LONG_WORDS[4:8])
    assert guard().check(reply) is None


def test_windows_do_not_span_two_training_texts():
    first, second = "one two three four", "five six seven eight nine"
    reply = "one two three four five six seven eight"
    apart = LeakGuard([(first, False), (second, False)])
    together = LeakGuard([(f"{first} {second}", False)])
    assert apart.check(reply) is None
    assert together.check(reply) == "shares 8 consecutive words with the training text"


def test_reply_shorter_than_the_window_only_gets_the_verbatim_check():
    reply = " ".join(LONG_WORDS[2:7])
    assert guard().check(reply) is None
    assert LeakGuard([(reply, True)]).check(reply) is not None


def test_index_size_and_settings_are_checked():
    assert len(guard()) == len(LONG_WORDS) - 8 + 1
    assert len(LeakGuard([])) == 0
    with pytest.raises(ValueError, match="ngram_words"):
        LeakGuard([], ngram_words=1)
    with pytest.raises(ValueError, match="min_verbatim_words"):
        LeakGuard([], min_verbatim_words=0)


def test_from_artifact_reads_the_training_text_index(tmp_path):
    count = write_training_text(tmp_path, ["Honestly the pizza was terrible", "ok lol"], [LONG_CONTEXT])
    assert count == 3
    g = LeakGuard.from_artifact(tmp_path)
    assert len(g) == len(LONG_WORDS) - 8 + 1
    assert g.check("HONESTLY the pizza was terrible.") == "repeats a training response verbatim"
    assert g.check(" ".join(LONG_WORDS[4:12])) is not None
    assert g.check("ok lol") is None
    assert g.check("something nobody said before") is None
    five = LeakGuard.from_artifact(str(tmp_path), ngram_words=5)
    assert five.check(" ".join(LONG_WORDS[4:9])) == "shares 5 consecutive words with the training text"


def _persona_dir(path, responses, context=(), base=None):
    """An artifact directory as far as the leak guard reads one: persona.json naming its base, and the
    training-text index."""
    import json

    path.mkdir(parents=True)
    (path / "persona.json").write_text(json.dumps({"base": None if base is None else str(base)}))
    write_training_text(path, responses, context)
    return path


def test_from_artifact_guards_the_text_of_every_persona_artifact_below_it(tmp_path):
    """An adapter (or a fine-tune) of a persona artifact carries that artifact's training text in its weights,
    and its base's, down to a hub model or a plain one, which have none of ours (issue 18, item 5)."""
    plain = tmp_path / "plain-model"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    grand = _persona_dir(tmp_path / "grand", ["the gate code at the farm is swordfish"], base=plain)
    base = _persona_dir(tmp_path / "base", ["my pin is 4711 do not tell anyone"], [LONG_CONTEXT], base=grand)
    top = _persona_dir(tmp_path / "top", ["Honestly the pizza was terrible"], ["my pin is 4711 do not tell anyone"],
                       base=base)
    g = LeakGuard.from_artifact(top)
    # A response below stays one (the verbatim rule) though the top artifact saw it as context only.
    assert g.check("HONESTLY the pizza was terrible.") == "repeats a training response verbatim"
    assert g.check("my pin is 4711, do not tell anyone") == "repeats a training response verbatim"
    assert g.check("The gate code at the farm is swordfish!") == "repeats a training response verbatim"
    assert g.check(" ".join(LONG_WORDS[4:12])) == "shares 8 consecutive words with the training text"
    assert g.check("something nobody said before") is None
    # A hub id and a base that is not (or no longer) here have no text to add.
    for other in ("gpt2", str(tmp_path / "moved-away")):
        alone = _persona_dir(tmp_path / f"on-{other.replace('/', '-')}", ["ok then"], base=other)
        assert LeakGuard.from_artifact(alone).check("my pin is 4711 do not tell anyone") is None


def test_a_cycle_of_bases_ends_and_every_artifact_in_it_is_guarded(tmp_path):
    # A persona retrained in place on an adapter of itself names, in the end, a base that names it.
    first, second = tmp_path / "first", tmp_path / "second"
    _persona_dir(first, ["the gate code at the farm is swordfish"], base=second)
    _persona_dir(second, ["my pin is 4711 do not tell anyone"], base=f"{second}/../first")  # first, spelt otherwise
    g = LeakGuard.from_artifact(first)
    assert g.check("the gate code at the farm is swordfish") and g.check("my pin is 4711 do not tell anyone")


def test_a_base_persona_artifact_without_its_training_text_is_a_clear_error(tmp_path):
    from training.artifact import TRAINING_TEXT_FILE, ArtifactError

    base = _persona_dir(tmp_path / "base", ["my pin is 4711 do not tell anyone"])
    (base / TRAINING_TEXT_FILE).unlink()
    top = _persona_dir(tmp_path / "top", ["Honestly the pizza was terrible"], base=base)
    with pytest.raises(ArtifactError, match=f"{base}.*{TRAINING_TEXT_FILE}.*leak guard"):
        LeakGuard.from_artifact(top)
    write_training_text(base, ["my pin is 4711 do not tell anyone"], [])
    (base / "persona.json").write_text('{"base": ')
    with pytest.raises(ArtifactError, match=f"{base / 'persona.json'} is damaged"):
        LeakGuard.from_artifact(top)
    (base / "persona.json").write_text('{"base": null}')
    (base / TRAINING_TEXT_FILE).write_bytes(b"not gzip")
    with pytest.raises(ArtifactError, match=f"training-text index {base / TRAINING_TEXT_FILE} is damaged"):
        LeakGuard.from_artifact(top)


# --- mentions -----------------------------------------------------------------------------------------------

NAMES = {("user", "123"): "Alice", ("role", "5"): "mods"}


def lookup(kind: str, ident: str) -> str | None:
    return NAMES.get((kind, ident))


@pytest.mark.parametrize(("text", "plain", "named"), [
    ("hi @everyone", f"hi @{ZWSP}everyone", f"hi @{ZWSP}everyone"),
    ("@HERE look", f"@{ZWSP}HERE look", f"@{ZWSP}HERE look"),
    ("hey <@123>!", f"hey @{ZWSP}user!", f"hey @{ZWSP}Alice!"),
    ("hey <@!123>", f"hey @{ZWSP}user", f"hey @{ZWSP}Alice"),
    ("ask <@&5>", f"ask @{ZWSP}role", f"ask @{ZWSP}mods"),
    ("<@999> and <@&6>", f"@{ZWSP}user and @{ZWSP}role", f"@{ZWSP}user and @{ZWSP}role"),
])
def test_mentions_are_neutralised(text, plain, named):
    assert neutralise_mentions(text) == plain
    assert neutralise_mentions(text, names=lookup) == named


def test_names_callback_gets_kind_and_id():
    calls = []
    neutralise_mentions("<@!42> <@&7> <@8>", names=lambda kind, ident: calls.append((kind, ident)) or None)
    assert calls == [("user", "42"), ("role", "7"), ("user", "8")]


@pytest.mark.parametrize("name", ["everyone", "@here", "<@1>", "<@&2>"])
def test_a_name_that_looks_like_a_mention_cannot_ping(name):
    out = neutralise_mentions("<@123> said hi", names=lambda kind, ident: name)
    assert not re.search(r"<@[!&]?\d+>|@(everyone|here)", out)
    assert neutralise_mentions(out, names=lambda kind, ident: name) == out


def test_neutralising_is_idempotent():
    for text in ["@everyone <@1> <@!2> <@&3> @here", "@@everyone", "<@<@1>>", "@\u200beveryone"]:
        once = neutralise_mentions(text, names=lookup)
        assert neutralise_mentions(once, names=lookup) == once
        assert not re.search(r"<@[!&]?\d+>|@(everyone|here)", once, re.IGNORECASE)


@pytest.mark.parametrize("text", ["nothing to see", "mail me at bob@example.com", "see <#42>", "<@abc> < @1 >", ""])
def test_text_without_mentions_is_unchanged(text):
    assert neutralise_mentions(text, names=lookup) == text


# --- blocklist ----------------------------------------------------------------------------------------------

def test_words_match_whole_words_only():
    blocklist = Blocklist(["ass"])
    assert blocklist.check("a class act, passing by") is None
    assert blocklist.check("what an ASS.") == 'contains a blocked word ("ASS")'
    assert blocklist.check("ass") is not None


def test_phrases_match_any_whitespace_between_words():
    blocklist = Blocklist(["bad words"])
    assert blocklist.check("so many BAD\n   words here") == 'contains a blocked phrase ("BAD\n   words")'
    assert blocklist.check("badwords") is None
    assert blocklist.check("bad wordsmith") is None


def test_entries_with_symbols_and_disguised_text():
    blocklist = Blocklist(["c++", "foo"])
    assert blocklist.check("i like c++ a lot") is not None
    assert blocklist.check("i like c+ a lot") is None
    assert blocklist.check("ｆｏｏ") is not None  # fullwidth letters
    assert blocklist.check(f"f{ZWSP}oo") is not None  # an invisible character inside


def test_regex_entries_are_case_insensitive_and_keep_their_groups():
    blocklist = Blocklist(["re:fo+bar", r"re:(ab)\1", "re:(?s)x.y"], source="list.txt")
    assert blocklist.check("FOOOOBAR!") == "matches a blocked pattern (list.txt line 1)"
    assert blocklist.check("abab") == "matches a blocked pattern (list.txt line 2)"
    assert blocklist.check("abba") is None
    assert blocklist.check("x\ny") == "matches a blocked pattern (list.txt line 3)"
    assert blocklist.check("fobaz") is None


def test_file_comments_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("# ass is fine here\n\n   \nfoo\n  # indented comment\nre:ba+r\n", encoding="utf-8")
    blocklist = Blocklist.from_file(path)
    assert len(blocklist) == 2
    assert blocklist.check("ass # comment") is None
    assert blocklist.check("a foo") == 'contains a blocked word ("foo")'
    assert blocklist.check("baaar") == f"matches a blocked pattern ({path} line 6)"


def test_bad_regex_names_file_and_line(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("foo\n# comment\n\nre:a(\n", encoding="utf-8")
    with pytest.raises(FilterConfigError) as info:
        Blocklist.from_file(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line) == (str(path), 4)
    assert str(error).startswith(f"{path} line 4: bad pattern 'a(': missing ), unterminated subpattern")
    assert str(error).endswith("; fix or remove the line")


def test_pattern_matching_everything_is_refused():
    with pytest.raises(FilterConfigError, match="line 2: pattern 'x\\*' matches empty text"):
        Blocklist(["foo", "re:x*"])


def test_non_utf8_and_missing_files_are_config_errors(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("foo\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(FilterConfigError, match=r"latin1\.txt line 2: not UTF-8") as info:
        Blocklist.from_file(path)
    assert info.value.line == 2
    with pytest.raises(FilterConfigError, match="cannot read") as info:
        Blocklist.from_file(tmp_path / "missing.txt")
    assert info.value.line is None


def test_empty_blocklist_blocks_nothing():
    assert Blocklist().check("anything at all") is None
    assert len(Blocklist(["", "# only a comment"])) == 0


# --- links --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["see https://example.com", "http://x.org/a?b=c", "go to www.example.org now",
                                  "example.com/abc", "join discord.gg/abcdef", "news.bbc.co.uk", "(example.com)"])
def test_links_are_found(text):
    assert has_link(text)


@pytest.mark.parametrize("text", ["hello world", "I use node.js daily", "e.g. this", "pi is 3.14159",
                                  "the end.The start", "mail bob@example.com", "https:// nothing", "a...b"])
def test_non_links_are_not(text):
    assert not has_link(text)


# --- tweet length -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("", 0),
    ("hello world, how are you?", 25),
    ("see https://example.com/" + "a" * 100 + " now", 4 + 23 + 4),
    ("https://x.co", 23),
    ("visit example.com/abc.", 6 + 23 + 1),
    ("你好世界", 8),
    ("こんにちは", 10),
    ("😀", 2),
    (FAMILY, 2),
    (FLAG, 2),
    ("👍🏽", 2),
    ("❤️", 2),
    ("1\ufe0f\u20e3", 2),
    ("🏳️\u200d🌈", 2),
    ("e\u0301", 1),  # NFC makes one character of it
    ("\u201cquoted\u201d \u2014 yes", 14),
    ("hi 😀 你 " + FLAG + " https://example.com", 3 + 2 + 1 + 2 + 1 + 2 + 1 + 23),
])
def test_tweet_length(text, expected):
    assert tweet_length(text) == expected


def test_plain_ascii_counts_like_len():
    rng = random.Random(3)
    for _ in range(50):
        text = "".join(rng.choice("abc XYZ,!?'-\n") for _ in range(rng.randint(0, 300)))
        assert tweet_length(text) == len(text)


def test_a_bare_domain_with_an_unknown_ending_counts_its_own_length_when_that_is_more_than_a_link():
    # Twitter may not know the ending and then does not link it: it costs its own length, which a limit
    # must allow for (as 23 a tweet of them could exceed 280).
    domain = "averylongprojectname.example.unknownend"
    assert len(domain) > 23
    assert tweet_length("see " + domain) == 4 + len(domain)
    assert tweet_length("see " + domain + "/path") == 4 + len(domain) + 5
    assert tweet_length("see my.foobar") == 4 + 23      # shorter than a link: 23, in case Twitter links it
    text = " ".join([domain] * 8)
    assert len(text) > TWEET_LIMIT
    out = OutputFilter().finish(text, TWITTER)
    assert out.endswith("…") and len(out) <= TWEET_LIMIT


# --- cutting ------------------------------------------------------------------------------------------------

def test_text_that_fits_is_unchanged():
    text = "short and sweet " + FAMILY
    assert cut_to_length(text, 100) == text
    assert cut_to_length(text, len(text)) == text
    assert cut_to_length("你" * 140, TWEET_LIMIT, length=tweet_length) == "你" * 140


def test_cut_at_a_word_boundary_with_an_ellipsis():
    assert cut_to_length("the quick brown fox jumps", 12) == "the quick…"
    assert cut_to_length("one, two, three, four", 12) == "one, two…"  # no dangling comma
    assert cut_to_length("the quick brown fox jumps", 12, ellipsis="...") == "the quick..."
    # No space in the last 30% of the room: a hard cut rather than losing most of it.
    assert cut_to_length("the quick brown fox jumps", 11, ellipsis="...") == "the quic..."
    assert cut_to_length("ab\u200d.cdefgh", 5) == "ab…"  # nor a dangling joiner
    assert cut_to_length("hello", 0) == ""
    assert cut_to_length("hello", 1) == "…"


def test_cut_respects_weighted_length_for_tweets():
    text = "你好 " * 100
    out = cut_to_length(text, TWEET_LIMIT, length=tweet_length)
    assert tweet_length(out) <= TWEET_LIMIT
    assert tweet_length(out) >= TWEET_LIMIT - 6
    assert len(out) < 200  # "你好 " weighs 5 for 3 characters
    assert out.endswith("你好…")


def test_hard_cut_of_an_unbroken_string():
    assert cut_to_length("a" * 5000, DISCORD_LIMIT) == "a" * (DISCORD_LIMIT - 1) + "…"
    families = cut_to_length(FAMILY * 100, 50)
    assert families.endswith("…") and len(families) <= 50
    assert families[:-1] == FAMILY * (len(families[:-1]) // len(FAMILY))


def test_ellipsis_is_not_glued_to_a_link():
    text = "see https://example.com/abcdef and more words"
    assert cut_to_length(text, 32) == "see https://example.com/abcdef …"


JOINING = ("\ufe0f", "\u0301", "🏽")
PIECES = ["a", "b", "x", " ", " ", "\n", ".", ",", "你", "é", "e\u0301", "😀", "👍🏽", FLAG, FAMILY, "❤️",
          " https://example.com/path ", "example.com", "\u200d", "\U0001F1EB"]


def test_cut_result_always_fits_and_is_a_clean_prefix():
    rng = random.Random(12345)
    for _ in range(600):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60)))
        length = rng.choice([len, tweet_length])
        limit = rng.randint(0, 80)
        out = cut_to_length(text, limit, length=length)
        assert length(out) <= limit, (text, limit, out)
        if length(text) <= limit:
            assert out == text
            continue
        body = out.removesuffix("…").rstrip()
        assert text.startswith(body), (text, limit, out)
        rest = text[len(body):]
        if not body:
            continue
        # No mark, selector or skin tone torn from its character (a dangling joiner may be dropped).
        assert not rest.lstrip("\u200d").startswith(JOINING), (text, limit, out)
        if rest.startswith("\U0001F1EB") or rest.startswith("🇷"):
            run = len(body) - len(body.rstrip("".join(chr(c) for c in range(0x1F1E6, 0x1F200))))
            assert run % 2 == 0, (text, limit, out)  # never half a flag


# --- output filter ------------------------------------------------------------------------------------------

def test_reject_asks_the_leak_guard_first_then_the_blocklist():
    leak = LeakGuard([("Honestly the pizza was terrible", True)])
    blocklist = Blocklist(["pizza"])
    both = OutputFilter(leak, blocklist)
    assert both.reject("honestly the pizza was terrible") == "repeats a training response verbatim"
    assert both.reject("pizza again?") == 'contains a blocked word ("pizza")'
    assert both.reject("pasta again?") is None
    assert OutputFilter(blocklist=blocklist).reject("honestly the pizza was terrible") == \
        'contains a blocked word ("pizza")'
    assert OutputFilter().reject("honestly the pizza was terrible") is None


def test_finish_for_discord_neutralises_mentions_then_cuts():
    text = "<@123> @everyone " + "blah " * 600
    out = OutputFilter().finish(text, DISCORD.with_names(lookup))
    assert out.startswith(f"@{ZWSP}Alice @{ZWSP}everyone blah")
    assert len(out) <= DISCORD_LIMIT and out.endswith("blah…")
    assert OutputFilter().finish("<@1> hi", DISCORD) == f"@{ZWSP}user hi"


def test_finish_for_twitter_uses_the_weighted_length():
    text = "@here " + "你好 " * 200 + "https://example.com"
    out = OutputFilter().finish(text, TWITTER)
    assert out.startswith(f"@{ZWSP}here 你好")
    assert tweet_length(out) <= TWEET_LIMIT < len(out) * 2
    assert out.endswith("…")


def test_finish_for_the_terminal_does_not_cut():
    text = "<@&5> " + "word " * 1000
    out = OutputFilter().finish(text, TERMINAL.with_names(lookup))
    assert out == f"@{ZWSP}mods " + "word " * 1000


def test_leak_guard_sees_through_zero_width_characters():
    guard = LeakGuard([("meet me at the old mill after dark tonight", True)])
    assert guard.check("meet\u200b me at the old mill after dark tonight") is not None
    assert guard.check("@\u200beveryone meet me at the old mill after dark tonight ok") is not None


# --- leak guard: near-verbatim lines and numbers (issue 9) --------------------------------------------------

def private_guard(**kwargs) -> LeakGuard:
    """Private lines among the everyday chatter of forty people: what the common words are is learnt from it."""
    rng = random.Random(5)
    chatter = ("lol yes same ok are you coming to the game party tonight i think so see soon what time "
               "is it now haha no way that was fun at").split()
    texts = [(" ".join(rng.choice(chatter) for _ in range(rng.randint(3, 9))), rng.random() < 0.3)
             for _ in range(600)]
    texts += [(f"{line} {name}", False) for name in NAMES_OF_MANY
              for line in ("lol yes same", "are you coming to the game tonight", "ok", "see you in 2024")]
    texts += [
        ("my pin is 4711", True),
        ("call me on 0151 555 0199", False),
        ("the spare key is under the blue flowerpot", True),
        ("gate code is swordfish", False),
        ("the shadow was ironic lol", False),
        ("the party is at 12:15 tonight £20", False),
        ("Long day. Meet me behind the old watermill at dusk. Bring the rope", False),
    ]
    rng.shuffle(texts)
    return LeakGuard(texts, **kwargs)


@pytest.mark.parametrize("reply", [
    "my pin is 4711 key key",             # words added
    "pin is 4711",                        # a word dropped
    "call me on 0151 555 0199 after",     # a word added to a context line
])
def test_the_lines_that_leaked_in_issue_9_are_caught(reply):
    assert private_guard().check(reply) is not None


@pytest.mark.parametrize("reply, edits", [
    ("the spare key is under the big blue flowerpot", 1),      # a word inserted
    ("spare key is under the blue flowerpot", 1),              # a word dropped
    ("the spare key is under the red flowerpot", 1),           # a word replaced
    ("the spare key is probably under the red flowerpot", 2),  # two edits in a line of eight words
    ("THE gate code is swordfish!", 1),                        # short lines too: four words, one added
    ("code is swordfish", 1),                                  # ... one dropped
    ("gate code was swordfish", 1),                            # ... one replaced
    ("meet me behind the old watermill", 2),                   # a sentence of a longer training text
    ("ok. meet me behind the old mill at dusk. lol", 1),       # ... inside a longer reply
])
def test_training_words_with_a_word_or_two_changed_are_caught(reply, edits):
    plural = "s" if edits > 1 else ""
    assert private_guard().check(reply) == f"repeats a training line with {edits} word{plural} changed"


def test_a_context_line_with_a_distinctive_word_may_not_come_back_word_for_word():
    assert private_guard().check("Gate code is swordfish.") == "repeats a training line word for word"


def test_more_edits_than_a_third_of_the_line_is_a_different_line():
    g = private_guard()
    assert g.check("gate key was swordfish") is None                          # two edits in four words
    assert g.check("the spare key is not under any green flowerpot") is None  # three edits
    assert g.check("behind the old watermill") is None                      # a fragment, not the line


def test_a_near_duplicate_must_keep_the_lines_distinctive_words():
    g = private_guard()
    # "shadow" and "ironic" are the line's distinctive words; the others are everyday chatter.
    assert g.check("the shadow was ironic haha") == "repeats a training line with 1 word changed"
    assert g.check("the shadow was fluffy lol") is None  # says something else
    assert g.check("the shadow was ok lol") is None


def test_times_prices_and_short_numbers_do_not_make_a_line_distinctive():
    # Said once, but "12:15" and "£20" say too little: the rest of the line is everyday chatter.
    assert private_guard().check("the party is at 12:15 tonight £20 lol") is None


def test_a_held_out_line_of_common_words_is_not_rejected():
    g = private_guard()
    # One word away from "are you coming to the game tonight", said by forty people: common words only.
    assert g.check("are you coming to the party tonight") is None
    assert g.check("lol yes same here") is None       # "lol yes same" plus a word
    assert g.check("i think the game was fun haha") is None


@pytest.mark.parametrize("reply", ["ok", "lol", "yes", "same", "lol yes", "ok!!", "lol yes same"])
def test_short_common_replies_are_not_rejected(reply):
    assert private_guard().check(reply) is None


@pytest.mark.parametrize("reply", [
    "ring 01515550199",
    "it's 0151-555-0199",
    "(0151) 555.0199 is the number",
    "５５５ ０１９９",                      # fullwidth digits, a phone-like part of the number
    "0151 555 0199 23",                    # the whole number inside a longer run of digits
    "the code 4711 works",
])
def test_numbers_from_the_training_text_are_caught_whatever_their_separators(reply):
    reason = private_guard().check(reply)
    assert reason is not None and "number from the training text" in reason
    assert "4711" not in reason and "0199" not in reason  # the log must not get the secret either


def test_numbers_not_in_the_training_text_or_said_by_many_are_not_rejected():
    g = private_guard()
    assert g.check("the bus leaves at 1845") is None
    assert g.check("call 0161 444 0200 instead") is None       # another phone number
    assert g.check("call 0151 555 0200 instead") is None       # ... with the same area code and exchange
    assert g.check("my new number starts 555 01") is None       # 5 digits of a phone number: too little
    assert g.check("see you in 2024") is None                  # forty people wrote 2024
    assert g.check("see you in 4711") is not None              # one person wrote 4711


def test_a_check_compares_a_bounded_number_of_lines(monkeypatch):
    import itertools

    import training.leak_guard as filters

    comparisons = []
    real = filters._within_edits

    def counting(a, b, limit):
        comparisons.append(limit)
        return real(a, b, limit)

    monkeypatch.setattr(filters, "_within_edits", counting)
    # A hostile index: thousands of lines made of the reply's own eight words, each too shuffled to be a
    # near-duplicate, every word distinctive: each line passes every cheap test and needs the edit distance.
    words = tuple("alpha bravo charlie delta echo foxtrot golf hotel".split())
    shuffled = [p for p in itertools.permutations(words) if real(p, words, 2) is None]
    reply = " ".join(words)
    for size in (1000, 10000):
        g = filters.LeakGuard([(" ".join(p), False) for p in shuffled[:size]], rare_lines=10**6)
        comparisons.clear()
        assert g.check(reply) is None
        assert len(comparisons) == filters._MAX_COMPARISONS  # the same work for ten times the lines
    comparisons.clear()
    longer = reply + "".join(f" other{i}" for i in range(60))  # far longer than any stored line: none compared
    assert g.check(longer) is None and comparisons == []


def test_near_duplicate_settings_are_checked():
    with pytest.raises(ValueError, match="max_edits"):
        LeakGuard([], max_edits=-1)
    with pytest.raises(ValueError, match="rare_lines"):
        LeakGuard([], rare_lines=-1)
    exact = LeakGuard([("gate code is swordfish", False)], max_edits=0)
    assert exact.check("gate code is swordfish") is not None and exact.check("code is swordfish") is None
    off = LeakGuard([("gate code is swordfish", False), ("pin 4711", False)], rare_lines=0)
    assert off.check("the gate code is swordfish") is None and off.check("4711") is None


@pytest.mark.parametrize("unit", [" ", ". ", "1 ", "1.", "a. ", " \n", "4711 "])
def test_a_check_takes_linear_time_on_pathological_text(unit):
    import time

    g = private_guard()

    def seconds(n: int) -> float:
        text = "x" + unit * n + "x"
        best = float("inf")
        for _ in range(3):  # the best of three: what the code costs, not what the machine was busy with
            start = time.perf_counter()
            g.check(text)
            best = min(best, time.perf_counter() - start)
        return best

    small, large = seconds(4000), seconds(32000)
    # Eight times the text: about eight times the time when linear, sixty-four when quadratic.
    assert large < 24 * small + 0.05, (small, large)
