"""The prompt format, in one place: a transcript of named turns.

    Alice: are you coming tonight?
    Bob: depends, who's cooking
    Persona: <response><end marker>

Training and inference both build token ids through `encode_context` and `encode_response`, piece by
piece, so the ids the model learns from are exactly the ids it is prompted with. The end marker is the
tokenizer's end-of-text token; every turn ends with a newline. A text (a training window, a prompt) starts
as the base's tokenizer starts one, with `special_prefix`: the beginning-of-text token that Llama and
Mistral were pretrained with before every text, nothing for GPT-2 or Qwen2. Loss falls on the persona's
response and its end marker only (see `training.dataset`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

FORMAT_VERSION = 1
TURN_END = "\n"

_NAME_UNSAFE = re.compile(r"[:\n\r\t]+")
_SPACES = re.compile(r"[ \u00a0\u202f\u2009]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class TokenizerLike(Protocol):
    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def speaker_label(name: str) -> str:
    """A name as it appears before the colon: no colons or line breaks, which would break the format."""
    label = _SPACES.sub(" ", _NAME_UNSAFE.sub(" ", name)).strip()
    return label or "Someone"


def clean_text(text: str) -> str:
    """Message text as the model sees it: Unix newlines, no runs of blank lines, no outer whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def turn_text(speaker: str, text: str) -> str:
    """One context turn: `Name: text` and the turn end."""
    return f"{speaker_label(speaker)}: {clean_text(text)}{TURN_END}"


def encode_turn(tokenizer: TokenizerLike, speaker: str, text: str) -> list[int]:
    return tokenizer.encode(turn_text(speaker, text), add_special_tokens=False)


def encode_prefix(tokenizer: TokenizerLike, persona: str) -> list[int]:
    """`Persona:`, the cue after which the model writes the persona's turn."""
    return tokenizer.encode(f"{speaker_label(persona)}:", add_special_tokens=False)


def encode_line_prompt(tokenizer: TokenizerLike, persona: str, start: str = "") -> list[int]:
    """The prompt for a stand-alone line (no context): the persona's cue, then `start` when it has words."""
    ids = special_prefix(tokenizer) + encode_prefix(tokenizer, persona)
    if start.strip():
        ids = ids + tokenizer.encode(" " + start.strip(), add_special_tokens=False)
    return ids


def join_line(start: str, said: str) -> str:
    """A stand-alone line as read: `start` (when it has words) and what the model said after it."""
    return f"{start.strip()} {said}".strip() if start.strip() else said


def encode_response(tokenizer: TokenizerLike, text: str) -> list[int]:
    """The persona's words (with the space after the colon) and the end marker."""
    return tokenizer.encode(" " + clean_text(text), add_special_tokens=False) + [end_marker_id(tokenizer)]


def encode_persona_turn(tokenizer: TokenizerLike, persona: str, text: str) -> list[int]:
    """A finished persona turn inside a context: prefix, response, end marker, turn end."""
    return (encode_prefix(tokenizer, persona) + encode_response(tokenizer, text)
            + tokenizer.encode(TURN_END, add_special_tokens=False))


def special_prefix(tokenizer: TokenizerLike) -> list[int]:
    """The ids a tokenizer puts before a text when it adds its special tokens (Llama's and Mistral's `<s>`;
    none for GPT-2 or Qwen2): what every training window and every prompt starts with. Turns are encoded
    without special tokens, piece by piece; only the start of a whole text has them."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    with_special = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start]
    return []


def end_marker_id(tokenizer: TokenizerLike) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text token; personabot needs one as its end marker")
    return int(tokenizer.eos_token_id)


def merge_turns(messages: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive messages of one speaker as one turn (lines joined), empty messages dropped: a turn is
    what one person said before someone else spoke, in training and at inference alike."""
    turns: list[tuple[str, str]] = []
    for speaker, text in messages:
        text = clean_text(text)
        if not text:
            continue
        if turns and same_speaker(turns[-1][0], speaker):
            turns[-1] = (turns[-1][0], turns[-1][1] + "\n" + text)
        else:
            turns.append((speaker, text))
    return turns


def encode_context(tokenizer: TokenizerLike, messages: Sequence[tuple[str, str]], persona: str,
                   budget: int) -> list[int]:
    """The newest turns that fit in `budget` tokens (oldest dropped first, whole turns only), oldest first.

    A turn by the persona itself is encoded as it was trained: with its end marker.
    """
    pieces: list[list[int]] = []
    used = 0
    for speaker, text in reversed(merge_turns(messages)):
        ids = (encode_persona_turn(tokenizer, persona, text) if same_speaker(speaker, persona)
               else encode_turn(tokenizer, speaker, text))
        if used + len(ids) > budget:
            break
        pieces.append(ids)
        used += len(ids)
    return [t for piece in reversed(pieces) for t in piece]


def build_prompt(tokenizer: TokenizerLike, messages: Sequence[tuple[str, str]], persona: str,
                 budget: int) -> list[int]:
    """The text's start (`special_prefix`), context within `budget` tokens in all, then the persona's cue:
    what the model continues."""
    start = special_prefix(tokenizer)
    prefix = encode_prefix(tokenizer, persona)
    return start + encode_context(tokenizer, messages, persona, max(0, budget - len(start) - len(prefix))) + prefix


def same_speaker(a: str, b: str) -> bool:
    return speaker_label(a).casefold() == speaker_label(b).casefold()


# A line that starts another speaker's turn: a newline, a short name (no sentence punctuation, so that
# "Hal, I say: hear me" inside a speech is not taken for a name), a colon, a space.
_NEW_TURN = re.compile(r"\n[^\s:,;!?][^:\n,;!?]{0,39}: ")


def find_new_turn(text: str) -> int | None:
    """Where generated text starts another speaker's turn (the index of its newline), or None."""
    match = _NEW_TURN.search(text)
    return match.start() if match else None


# Stops a server may be sent (OpenAI's API and TGI take at most four).
MAX_STOPS = 4
_SPEAKER_LINE = re.compile(r"^([^\s:,;!?][^:\n,;!?]{0,39}): ", re.MULTILINE)


def stop_strings(tokenizer: TokenizerLike, prompt: str, limit: int = MAX_STOPS) -> list[str]:
    """Stop strings for a server continuing `prompt` (a transcript ending in the persona's cue), from the
    format: the end marker, then `\\nName:` for the speakers of the transcript, the latest first (the
    persona's own cue included). They cannot name every possible speaker: `find_new_turn` and `cut_reply`
    cut the text again when it comes back."""
    names: list[str] = []
    last_line = prompt.rsplit(TURN_END, 1)[-1]
    cue = [last_line[:-1].strip()] if last_line.endswith(":") else []
    for label in reversed(_SPEAKER_LINE.findall(prompt) + cue):
        if label and label not in names:
            names.append(label)
    marker = tokenizer.decode([end_marker_id(tokenizer)])
    return [marker] + [f"{TURN_END}{name}:" for name in names[:max(0, limit - 1)]]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` (servers differ on whether they return the stop they hit)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]
