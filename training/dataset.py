"""Conversations -> training data for one speaker: (context, response) pairs, split, tokenised and packed.

Each turn of the target speaker (their consecutive messages merged) is a response; its context is the
preceding turns of the same conversation within a token budget, in the one transcript format. Loss falls
on the response and its end marker only (optionally, for a model trained from scratch, with a small weight
on the other turns too, so that it can learn the language at all).

Responses of one conversation that follow each other share their context: instead of repeating the
context for every response, a *window* lays a stretch of conversation out once and every response in it
carries loss. Windows are placed into fixed-length blocks as they are made (`Packer`); short stand-alone
windows fill the blocks' tails. A block-diagonal attention mask and per-window positions keep windows from
seeing each other, so a packed block computes exactly what the windows would compute alone, without the
compute that padding wastes.

The train/validation split is by conversation (long conversations are cut into units first), seeded and
deterministic, so no validation response or its context is ever trained on.
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from training import transcript
from training.conversation import Conversation, Message
from training.errors import DataError

# Loss kinds of a token (stored per token; the trainer maps them to weights).
NO_LOSS, CONTEXT, RESPONSE = 0, 1, 2

# Tokens of earlier turns before each response: what training cuts with and what a reply is prompted with.
CONTEXT_TOKENS = 256
# The longest packed sequence by default (a model with fewer positions gets as many as it has).
BLOCK_SIZE = 512


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """How examples are cut and packed. Defaults suit fine-tuning GPT-2 on chat logs."""

    context_tokens: int = CONTEXT_TOKENS  # context budget before each response
    block_size: int = BLOCK_SIZE     # packed sequence length (<= the model's n_positions)
    val_fraction: float = 0.1        # share of responses held out, whole conversations at a time
    standalone_share: float = 0.1    # share of responses also trained with no context (stand-alone lines)
    min_context_share: float = 0.125  # a window trimmed to fill a block keeps at least this share of the budget
    unit_responses: int = 32         # long conversations are cut into split units of this many responses
    min_responses: int = 20          # fewer responses than this: too little data to train on
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Turn:
    speaker: str      # label as shown in the transcript
    text: str
    is_target: bool


@dataclass(frozen=True, slots=True)
class SpeakerMatch:
    """The person the user asked for: the name the persona answers as, and how their messages are found."""

    name: str                       # prompt name: the display name they used most
    names: frozenset[str]           # normalised names and aliases that select their messages
    ids: frozenset[str]             # platform ids seen on their messages
    messages: int

    def matches(self, message: Message) -> bool:
        if message.speaker_id is not None and message.speaker_id in self.ids:
            return True
        return any(normalise_name(n) in self.names for n in message.names())


def normalise_name(name: str) -> str:
    """Forgiving form of a name: case-folded, no leading @, no #1234 discriminator, single spaces."""
    name = " ".join(name.split()).casefold().lstrip("@")
    head, sep, tail = name.rpartition("#")
    if sep and tail.isdigit() and len(tail) == 4 and head:
        name = head
    return name


def match_speaker(conversations: Sequence[Conversation], query: str) -> SpeakerMatch:
    """Find the speaker the user means (by display name, username, alias or id, any case).

    An unknown name raises `DataError` listing the closest names and the most active speakers.
    """
    wanted = normalise_name(query)
    selected = [m for c in conversations for m in c.messages
                if wanted in {normalise_name(n) for n in m.names()} or m.speaker_id == query.strip()]
    if not selected:
        counts = Counter(m.speaker for c in conversations for m in c.messages)
        every = {normalise_name(n): n for c in conversations for m in c.messages for n in m.names()}
        close = [every[n] for n in difflib.get_close_matches(wanted, list(every), n=5, cutoff=0.5)]
        top = ", ".join(f"{name} ({n})" for name, n in counts.most_common(8))
        hint = (f"did you mean: {', '.join(close)}? " if close else "") + f"most active speakers: {top}"
        raise DataError(None, f"no messages by a speaker called {query!r}", hint=hint)
    ids = frozenset(m.speaker_id for m in selected if m.speaker_id)
    names = {wanted}
    # One person seen under several names (nickname changes) is found through their id.
    for c in conversations:
        for m in c.messages:
            if m.speaker_id is not None and m.speaker_id in ids:
                names.update(normalise_name(n) for n in m.names())
    match = SpeakerMatch("", frozenset(names), ids, 0)
    mine = [m for c in conversations for m in c.messages if match.matches(m)]
    display = Counter(m.speaker for m in mine).most_common(1)[0][0]
    return SpeakerMatch(transcript.speaker_label(display), frozenset(names), ids, len(mine))


def conversation_turns(conversation: Conversation, speaker: SpeakerMatch) -> list[Turn]:
    """The conversation as turns (`transcript.merge_turns`), the target always under the persona name."""
    labelled = [(speaker.name if speaker.matches(m) else transcript.speaker_label(m.speaker), m.text)
                for m in conversation.messages]
    return [Turn(label, text, transcript.same_speaker(label, speaker.name))
            for label, text in transcript.merge_turns(labelled)]


@dataclass(slots=True)
class SplitUnit:
    """A stretch of one conversation that goes wholly to training or wholly to validation."""

    id: str
    turns: list[Turn]

    @property
    def responses(self) -> int:
        return sum(t.is_target for t in self.turns)


def split_units(conversations: Sequence[Conversation], speaker: SpeakerMatch,
                unit_responses: int, *, keep_others: bool = False) -> list[SplitUnit]:
    """Conversations with the target speaker, long ones cut after every `unit_responses` responses
    (with `keep_others`, conversations without them too: language for a model trained from scratch).

    Context never crosses a unit boundary, so a held-out unit shares no text with training."""
    units: list[SplitUnit] = []
    for conversation in conversations:
        turns = conversation_turns(conversation, speaker)
        current: list[Turn] = []
        count = 0
        part = 0
        for turn in turns:
            if turn.is_target and count == unit_responses:
                units.append(SplitUnit(f"{conversation.id}/{part}", current))
                part += 1
                current, count = [], 0
            current.append(turn)
            count += turn.is_target
        if count or (keep_others and current):
            units.append(SplitUnit(f"{conversation.id}/{part}", current))
    return units


def assign_split(units: Sequence[SplitUnit], val_fraction: float, seed: int) -> tuple[list[SplitUnit],
                                                                                        list[SplitUnit]]:
    """Seeded, order-independent split: units ranked by a hash of (seed, id); validation takes units from
    the top of that ranking until it holds `val_fraction` of the responses (at least one unit)."""
    ranked = sorted((u for u in units if u.responses),
                    key=lambda u: hashlib.sha256(f"{seed}:{u.id}".encode()).hexdigest())
    total = sum(u.responses for u in units)
    val_ids: set[str] = set()
    held = 0
    for unit in ranked:
        if val_ids and held >= val_fraction * total:
            break
        if len(val_ids) == len(ranked) - 1:
            break  # keep at least one unit with responses for training
        val_ids.add(unit.id)
        held += unit.responses
    train = [u for u in units if u.id not in val_ids]
    val = [u for u in units if u.id in val_ids]
    return train, val


@dataclass(slots=True)
class Window:
    """A stretch of one conversation laid out once: token ids and each token's loss kind."""

    ids: list[int]
    kinds: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class Blocks:
    """Packed windows: [N, block] tensors of token ids, loss kinds, positions and window numbers."""

    input_ids: torch.Tensor      # int64
    kinds: torch.Tensor          # uint8: NO_LOSS / CONTEXT / RESPONSE
    positions: torch.Tensor      # int64: position inside its window (restarts at 0 for each window)
    segments: torch.Tensor       # int16: window number inside the block (-1 for padding)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def tokens(self, kind: int | None = None) -> int:
        if kind is None:
            return int((self.segments >= 0).sum())
        return int((self.kinds == kind).sum())

    def subset(self, index: torch.Tensor | slice) -> "Blocks":
        return Blocks(self.input_ids[index], self.kinds[index], self.positions[index], self.segments[index])


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask: causal, and only within the same window (padding attends to itself)."""
    t = segments.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


@dataclass(slots=True)
class Encoded:
    """Token ids of a unit's turns, ready to be cut into windows."""

    pieces: list[list[int]]          # one per turn (persona turns: prefix + response + turn end)
    kinds: list[list[int]]
    target: list[bool]               # whether the turn is a loss-bearing response
    context_kind: int = NO_LOSS      # loss kind of text that is context (CONTEXT when weighted)


def encode_units(units: Sequence[SplitUnit], tokenizer, persona: str, standalone: set[tuple[str, int]],
                 context_weighted: bool) -> tuple[list[Encoded], list[Window]]:
    """Tokenise every turn (in one batch call). Responses picked for stand-alone training appear in their
    conversation as context only and get a window of their own with no context."""
    prefix = transcript.encode_prefix(tokenizer, persona)
    turn_end = tokenizer.encode(transcript.TURN_END, add_special_tokens=False)
    eos = transcript.end_marker_id(tokenizer)
    texts = []
    for unit in units:
        for turn in unit.turns:
            texts.append(" " + turn.text if turn.is_target else transcript.turn_text(turn.speaker, turn.text))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    other_kind = CONTEXT if context_weighted else NO_LOSS
    encoded: list[Encoded] = []
    alone: list[Window] = []
    k = 0
    for unit in units:
        enc = Encoded([], [], [], other_kind)
        for i, turn in enumerate(unit.turns):
            piece = list(ids[k])
            k += 1
            if not turn.is_target:
                enc.pieces.append(piece)
                enc.kinds.append([other_kind] * len(piece))
                enc.target.append(False)
                continue
            response = piece + [eos]
            full = prefix + response + turn_end
            # Loss kinds of a persona turn: none on its name and turn end; `kind` on the response.
            layout = ([NO_LOSS] * len(prefix), len(response), [NO_LOSS] * len(turn_end))
            is_alone = (unit.id, i) in standalone
            if is_alone:
                alone.append(Window(full, layout[0] + [RESPONSE] * layout[1] + layout[2]))
            enc.pieces.append(full)
            enc.kinds.append(layout[0] + [other_kind if is_alone else RESPONSE] * layout[1] + layout[2])
            enc.target.append(not is_alone)
        encoded.append(enc)
    return encoded, alone


class Packer:
    """Places windows into blocks of `block_size` tokens as they are made, so that blocks fill up.

    Windows of a conversation go into the open block one after the other. When a block cannot take the
    next window, its tail is filled with the largest *fillers* that fit (stand-alone responses, text
    windows) before a new block opens; fillers left at the end go first-fit into any block with room.

    Every window is placed behind `start` (the tokenizer's `transcript.special_prefix`, no loss on it): each
    is a text of its own, and starts as one. Sizes and room here count a window's own tokens only."""

    def __init__(self, block_size: int, start: Sequence[int] = ()) -> None:
        self.block_size = block_size
        self.start = list(start)
        self.window_size = block_size - len(self.start)   # the most a window itself may hold
        self.blocks: list[list[Window]] = []
        self.rooms: list[int] = []
        self._fillers: list[Window] = []     # kept sorted by length
        self._filler_sizes: list[int] = []

    @property
    def room(self) -> int:
        """Tokens a window may still hold in the open block (its start aside)."""
        return max(0, self.rooms[-1] - len(self.start)) if self.rooms else 0

    def add_fillers(self, windows: Sequence[Window]) -> None:
        for w in windows:
            k = bisect.bisect_right(self._filler_sizes, len(w))
            self._filler_sizes.insert(k, len(w))
            self._fillers.insert(k, w)

    def place(self, window: Window) -> None:
        """Put a window in the open block, opening a new one when it does not fit."""
        if len(window) > self.room:
            self.new_block()
        self._put(len(self.blocks) - 1, window)

    def new_block(self) -> None:
        if self.blocks:
            self._fill_tail()
        self.blocks.append([])
        self.rooms.append(self.block_size)

    def finish(self) -> list[list[Window]]:
        if self.blocks:
            self._fill_tail()
        for w in reversed(self._fillers):  # longest first, into the first block with room
            b = next((b for b, free in enumerate(self.rooms) if free - len(self.start) >= len(w)), None)
            if b is None:
                self.blocks.append([])
                self.rooms.append(self.block_size)
                b = len(self.blocks) - 1
            self._put(b, w)
        self._fillers, self._filler_sizes = [], []
        return self.blocks

    def _fill_tail(self) -> None:
        while self._fillers:
            k = bisect.bisect_right(self._filler_sizes, self.room) - 1
            if k < 0:
                return
            self._filler_sizes.pop(k)
            self._put(len(self.blocks) - 1, self._fillers.pop(k))

    def _put(self, b: int, window: Window) -> None:
        if self.start:
            window = Window(self.start + window.ids, [NO_LOSS] * len(self.start) + window.kinds)
        self.blocks[b].append(window)
        self.rooms[b] -= len(window)


def _context_start(enc: Encoded, j: int, budget: int) -> tuple[int, int]:
    """(first turn, tokens) of the newest whole turns before turn `j` that fit in `budget` tokens."""
    s, used = j, 0
    while s > 0 and used + len(enc.pieces[s - 1]) <= budget:
        s -= 1
        used += len(enc.pieces[s])
    return s, used


def place_unit(enc: Encoded, packer: Packer, context_tokens: int, min_context: int) -> tuple[int, set[int]]:
    """Cut one encoded unit into windows and place them with `packer`.

    A window opens with the context of its first response (whole turns, newest first, within
    `context_tokens`) and grows through the following turns while the block has room, so later responses
    reuse the context already laid out. Where the open block has too little room for the full context, the
    window takes the newest turns that do fit, if that is at least `min_context` tokens (or all there is);
    otherwise a new block opens. Returns how many responses were truncated (longer than a block) and the
    indices of the turns the windows cover."""
    block_size = packer.window_size
    covered: set[int] = set()
    truncated = 0
    start = end = first = None  # the open window covers pieces[start:end]; its first response is at `first`
    size = limit = 0

    def close() -> None:
        if start is not None:
            covered.update(range(start, end))
            ids = [t for p in enc.pieces[start:end] for t in p]
            # Turns before the window's first response are its context: an earlier response of the persona
            # there was trained in its own window already and carries no response loss here.
            kinds = [enc.context_kind if k == RESPONSE else k for p in enc.kinds[start:first] for k in p]
            kinds += [k for p in enc.kinds[first:end] for k in p]
            packer.place(Window(ids, kinds))

    for j, is_target in enumerate(enc.target):
        if not is_target:
            continue
        if start is not None:
            extra = sum(len(p) for p in enc.pieces[end:j + 1])
            if size + extra <= limit:
                end, size = j + 1, size + extra
                continue
            close()
            start = None
        own = len(enc.pieces[j])
        if own > block_size:
            # A response longer than a block: keep its beginning; it loses its end marker.
            packer.place(Window(enc.pieces[j][:block_size], enc.kinds[j][:block_size]))
            covered.add(j)
            truncated += 1
            continue
        s, used = _context_start(enc, j, min(context_tokens, block_size - own))
        if own + used > packer.room:
            s_fit, used_fit = _context_start(enc, j, packer.room - own) if packer.room >= own else (j, -1)
            if used_fit >= min(used, min_context):
                s, used = s_fit, used_fit
            else:
                packer.new_block()
        start, end, first, size, limit = s, j + 1, j, used + own, packer.room
    close()
    return truncated, covered


def text_windows(enc: Encoded, covered: set[int], block_size: int) -> list[Window]:
    """Windows over the turns no response window covers, whole turns up to `block_size` tokens each
    (a longer turn keeps its beginning): the rest of the text, for learning the language."""
    windows: list[Window] = []
    ids: list[int] = []
    kinds: list[int] = []

    def close() -> None:
        if ids:
            windows.append(Window(ids[:block_size], kinds[:block_size]))
            ids.clear()
            kinds.clear()

    for i, piece in enumerate(enc.pieces):
        if i in covered:
            close()
            continue
        if ids and len(ids) + len(piece) > block_size:
            close()
        ids.extend(piece)
        kinds.extend(enc.kinds[i])
    close()
    return windows


def to_blocks(bins: Sequence[Sequence[Window]], block_size: int, pad_id: int) -> Blocks:
    """Tensors of packed blocks: windows side by side, each with its own positions and window number."""
    count = len(bins)
    input_ids = torch.full((count, block_size), pad_id, dtype=torch.long)
    kinds = torch.zeros((count, block_size), dtype=torch.uint8)
    positions = torch.zeros((count, block_size), dtype=torch.long)
    segments = torch.full((count, block_size), -1, dtype=torch.int16)
    for b, members in enumerate(bins):
        offset = 0
        for seg, w in enumerate(members):
            n = len(w)
            input_ids[b, offset:offset + n] = torch.tensor(w.ids, dtype=torch.long)
            kinds[b, offset:offset + n] = torch.tensor(w.kinds, dtype=torch.uint8)
            positions[b, offset:offset + n] = torch.arange(n)
            segments[b, offset:offset + n] = seg
            offset += n
    return Blocks(input_ids, kinds, positions, segments)


def make_blocks(units: Sequence[SplitUnit], tokenizer, persona: str, config: DatasetConfig,
                standalone: set[tuple[str, int]] = frozenset(), context_weighted: bool = False,
                all_text: bool = False) -> tuple[Blocks, dict]:
    """Tokenise, window and pack `units`; returns the blocks and a few numbers about them.

    With `all_text` (and `context_weighted`), turns outside every response window get windows of their own,
    so that a model learning the language from scratch sees all of the text."""
    encoded, alone = encode_units(units, tokenizer, persona, set(standalone), context_weighted)
    packer = Packer(config.block_size, transcript.special_prefix(tokenizer))
    longest = packer.window_size
    # A stand-alone response longer than a block keeps its beginning (and loses its end marker).
    packer.add_fillers([Window(w.ids[:longest], w.kinds[:longest]) for w in alone])
    truncated = sum(len(w) > longest for w in alone)
    min_context = int(config.context_tokens * config.min_context_share)
    for enc in encoded:
        t, covered = place_unit(enc, packer, config.context_tokens, min_context)
        truncated += t
        if all_text and context_weighted:
            packer.add_fillers(text_windows(enc, covered, longest))
    bins = packer.finish()
    blocks = to_blocks(bins, config.block_size, transcript.end_marker_id(tokenizer))
    info = {"responses": sum(u.responses for u in units), "windows": sum(len(b) for b in bins),
            "blocks": len(blocks), "tokens": blocks.tokens(), "response_tokens": blocks.tokens(RESPONSE),
            "truncated_responses": truncated,
            "packing_efficiency": round(blocks.tokens() / max(1, len(blocks) * config.block_size), 4)}
    return blocks, info


@dataclass(slots=True)
class PersonaDataset:
    """Everything the trainer needs for one speaker, and the numbers worth reporting about it."""

    speaker: SpeakerMatch
    config: DatasetConfig
    train: Blocks
    val: Blocks
    train_units: list[SplitUnit]
    val_units: list[SplitUnit]
    stats: dict = field(default_factory=dict)

    def responses(self) -> list[str]:
        """Every response text of the speaker (train and validation), for the leak guard's index."""
        return [t.text for u in (*self.train_units, *self.val_units) for t in u.turns if t.is_target]

    def context_texts(self) -> list[str]:
        return [t.text for u in (*self.train_units, *self.val_units) for t in u.turns if not t.is_target]


def build_dataset(conversations: Sequence[Conversation], speaker_query: str, tokenizer,
                  config: DatasetConfig = DatasetConfig(), *, context_weighted: bool = False) -> PersonaDataset:
    """Examples for `speaker_query` from `conversations`, split and packed.

    Raises `DataError` for an unknown speaker or too little data."""
    if config.block_size < 16:
        raise ValueError("block_size must be at least 16 tokens")
    speaker = match_speaker(conversations, speaker_query)
    units = split_units(conversations, speaker, config.unit_responses, keep_others=context_weighted)
    total = sum(u.responses for u in units)
    if total < config.min_responses:
        raise DataError(None, f"too little data for {speaker.name}: {total} turns "
                        f"({speaker.messages} messages) where at least {config.min_responses} are needed",
                        hint="add more exports with this speaker (a good persona wants a thousand turns or more)")
    if sum(1 for u in units if u.responses) < 2:
        raise DataError(None, f"all of {speaker.name}'s turns are in one short conversation, so none can be "
                        "held out for validation", hint="add more exports with this speaker")
    train_units, val_units = assign_split(units, config.val_fraction, config.seed)
    rng = random.Random(config.seed)
    standalone = {(u.id, i) for u in units for i, t in enumerate(u.turns)
                  if t.is_target and rng.random() < config.standalone_share}

    train, train_info = make_blocks(train_units, tokenizer, speaker.name, config, standalone, context_weighted,
                                    all_text=True)
    val, val_info = make_blocks(val_units, tokenizer, speaker.name, config, standalone, context_weighted)
    stats = {"speaker": speaker.name, "speaker_messages": speaker.messages, "units": len(units),
             "train": train_info, "val": val_info,
             "conversations": len({u.id.rsplit("/", 1)[0] for u in units if u.responses})}
    return PersonaDataset(speaker, config, train, val, train_units, val_units, stats)


def fingerprint(conversations: Sequence[Conversation]) -> str:
    """A short stable hash of the normalised data (speakers, texts, timestamps, conversation cuts)."""
    h = hashlib.sha256()
    for c in conversations:
        h.update(b"\x1e" + c.id.encode())
        for m in c.messages:
            h.update(f"\x1f{m.speaker}\x00{m.text}\x00{m.timestamp.isoformat() if m.timestamp else ''}".encode())
    return h.hexdigest()[:16]
