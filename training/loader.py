"""Read what the user named (files, folders, zips) into one corpus of conversations, with a report per file.

Parts of one chat spread over several files (a partitioned Discord export, Messenger's `message_N.json`)
are merged by their thread key, put in time order, de-duplicated by message id, then split into
conversations at scene breaks and at silences longer than the configured gap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from training import formats
from training.conversation import Conversation, Message, SceneBreak, sort_key
from training.errors import DataError
from training.formats.base import ImportOptions, ParseResult, Skip, Source, Thread
from training.formats.hub import is_hub_name, read_hub

# In a folder the user named, files with these endings are tried as exports; others are listed as ignored.
EXPORT_SUFFIXES = {".json", ".csv", ".txt", ".js", ".md", ".jsonl", ".ndjson", ".zip", ".tsv", ".parquet",
                   ".fountain"}


@dataclass(slots=True)
class FileReport:
    """What one input contributed: its format, messages kept, messages skipped by reason."""

    path: str
    format: str
    messages: int
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)   # how it was read (a table's columns and their roles)

    def to_json(self) -> dict:
        return {"path": self.path, "format": self.format, "messages": self.messages,
                "skipped": dict(sorted(self.skipped.items())), "notes": list(self.notes)}


@dataclass(slots=True)
class Corpus:
    """Every conversation read from the inputs, and how each input was read."""

    conversations: list[Conversation]
    files: list[FileReport]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for files in named folders

    def messages(self) -> list[Message]:
        return [m for c in self.conversations for m in c.messages]

    def speakers(self) -> Counter[str]:
        """Messages per speaker, most active first."""
        return Counter(m.speaker for c in self.conversations for m in c.messages)

    def date_range(self) -> tuple[datetime, datetime] | None:
        stamps = [m.timestamp for c in self.conversations for m in c.messages if m.timestamp is not None]
        if not stamps:
            return None
        return min(stamps, key=sort_key), max(stamps, key=sort_key)


def load_corpus(paths: Sequence[str | Path], *, format: str | None = None,
                options: ImportOptions | None = None, protect: Sequence[str] = ()) -> Corpus:
    """Read every input into one corpus. Raises `DataError` for anything the user must fix.

    People in `options.excluded_names` are left out by every name and account id they have in an export;
    `protect` names (the persona's own speaker) are never left out, whoever else took those names."""
    options = options or ImportOptions()
    protected = frozenset(p.strip().casefold() for p in protect if p.strip())
    if not paths:
        raise DataError(None, "no input files given", hint="name one or more chat exports")
    forced = formats.get(format) if format else None
    reports: list[FileReport] = []
    ignored: list[tuple[str, str]] = []
    threads: dict[str, Thread] = {}
    thread_file: dict[str, list[FileReport]] = {}
    read: set[Path] = set()
    read_names: set[str] = set()

    def add(label: str, format_name: str, result: ParseResult) -> None:
        report = FileReport(label, format_name, result.kept, Counter(result.skipped), list(result.notes))
        reports.append(report)
        if options.excluded_names:
            _exclude(result.threads, report, options, protected)
        for thread in result.threads:
            if thread.key in threads:
                threads[thread.key].items.extend(thread.items)
            else:
                threads[thread.key] = Thread(thread.key, thread.title, list(thread.items),
                                             single_voice=thread.single_voice)
            thread_file.setdefault(thread.key, []).append(report)

    for raw in paths:
        if is_hub_name(str(raw)):           # a data set (hf:OWNER/NAME, hf:DIR), read as a table is
            if str(raw) not in read_names:
                read_names.add(str(raw))
                add(str(raw), "hf", read_hub(str(raw), options))
            continue
        path = Path(raw)
        if not path.exists():
            raise DataError(path, "no such file or folder", hint="check the path")
        for source, importer in _sources(path, forced, ignored):
            resolved = source.path.resolve()
            if resolved in read:
                continue  # the same file named twice (or inside a folder also named): read it once
            read.add(resolved)
            with source:          # a zip stays open for the parse, and no longer
                add(str(source.path), importer.name, importer.parse(source, options))

    conversations: list[Conversation] = []
    for key, thread in threads.items():
        items = _dedupe(thread.items, thread_file[key])
        conversations.extend(_split(thread, items, options))

    for report in reports:
        named_directly = any(Path(p) == Path(report.path) for p in paths)
        # A file whose messages were all seen already (named twice, overlapping exports) is not empty.
        if report.messages + report.skipped.get("duplicate", 0) == 0 and named_directly:
            skipped = ", ".join(f"{n} {why}" for why, n in report.skipped.most_common()) or "nothing at all"
            raise DataError(report.path, f"no chat messages to learn from (skipped: {skipped})",
                            hint="check that this is the export you meant; an empty chat cannot train a model")
    if not any(c.messages for c in conversations):
        raise DataError(None, "no chat messages found in " + ", ".join(str(p) for p in paths),
                        hint="run `personabot data inspect` on the files to see what was skipped")
    return Corpus(conversations, reports, ignored)


def default_speaker(paths: Sequence[str | Path], *, format: str | None = None) -> str | None:
    """The speaker every input's format names as the default persona (fine-tuning data: the assistant), or
    None when one of them names none or they differ. Detects formats only; parses nothing."""
    forced = formats.get(format) if format else None
    defaults = set()
    for raw in paths:
        if is_hub_name(str(raw)) or not Path(raw).exists():
            return None
        defaults.update(importer.default_speaker for _, importer in _sources(Path(raw), forced, []))
    return defaults.pop() if len(defaults) == 1 else None


# What a persona learnt from, as persona.json records it.
CORPUS_KINDS = ("conversations", "single-voice", "mixed")


def corpus_kind(corpus: Corpus) -> str:
    """conversations (chats, scripts), single-voice (stand-alone posts of one voice) or mixed."""
    single = {c.single_voice for c in corpus.conversations}
    return "mixed" if len(single) > 1 else "single-voice" if single == {True} else "conversations"


def single_voice_as(corpus: Corpus, speaker: str) -> Corpus:
    """The corpus with every single-voice post given to `speaker` (such data names no speaker: its voice is
    whoever the user trains)."""
    if not any(c.single_voice for c in corpus.conversations):
        return corpus
    conversations = [Conversation(c.id, [replace(m, speaker=speaker, speaker_aliases=()) for m in c.messages],
                                  c.title, single_voice=True) if c.single_voice else c
                     for c in corpus.conversations]
    return Corpus(conversations, corpus.files, corpus.ignored)


def _sources(path: Path, forced: formats.Importer | None, ignored: list[tuple[str, str]]):
    """(source, importer) pairs for one named path; folders that are not an archive format are walked."""
    source = Source(path)
    if source.is_dir or source.is_zip:
        importer = forced if forced is not None and forced.reads_archives else formats.detect(source)
        if importer is not None:
            yield source, importer
            return
        if source.is_zip:
            raise DataError(path, "this zip is not an export personabot can read as a whole",
                            hint="unzip it and name the files or the folder instead")
        found = False
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = child.relative_to(path)
            if any(part.startswith(".") for part in rel.parts):
                ignored.append((str(child), "hidden file"))
                continue
            if child.suffix.lower() not in EXPORT_SUFFIXES:
                ignored.append((str(child), "not a chat export file type"))
                continue
            child_source = Source(child)
            importer = forced or formats.detect(child_source)
            if importer is None:
                ignored.append((str(child), "format not recognised"))
                continue
            found = True
            yield child_source, importer
        if not found:
            raise DataError(path, "no chat export found in this folder",
                            hint="name the export files directly, with --format if needed")
        return
    importer = forced or formats.detect(source)
    if importer is None:
        known = ", ".join(i.name for i in formats.all_importers())
        raise DataError(path, "cannot tell which export format this is",
                        hint=f"pass --format NAME (one of: {known})")
    yield source, importer


def _exclude(threads: list[Thread], report: FileReport, options: ImportOptions,
             protected: frozenset[str]) -> None:
    """Drop every message of the people left out, whichever of their names or ids the export uses: their
    words are neither learnt as responses nor shown as context.

    An account left out by id is left out under every name. An account that appears under an excluded
    name anywhere in the file is left out under every other name it had too (an older nickname must not
    bring its words back). Names never exclude the protected speaker (the persona), whoever else took
    their name: exclusion by name skips messages under a protected name and the accounts that wrote them."""
    messages = [m for t in threads for m in t.items if isinstance(m, Message)]
    protected_accounts = {m.speaker_id for m in messages if m.speaker_id is not None
                          and any(n.casefold() in protected for n in m.names())}

    def by_id(m: Message) -> bool:
        return m.speaker_id is not None and options.is_excluded(m.speaker_id)

    def by_name(m: Message) -> bool:
        return options.is_excluded(*m.names()) and not (
            m.speaker_id in protected_accounts or any(n.casefold() in protected for n in m.names()))

    accounts = {m.speaker_id for m in messages if m.speaker_id is not None and (by_id(m) or by_name(m))}
    for thread in threads:
        kept = []
        for item in thread.items:
            if isinstance(item, Message) and (item.speaker_id in accounts or by_id(item) or by_name(item)):
                report.messages -= 1
                report.skipped[Skip.EXCLUDED] += 1
                continue
            kept.append(item)
        thread.items = kept


def _dedupe(items: list[Message | SceneBreak], reports: list[FileReport]) -> list[Message | SceneBreak]:
    """Time-order merged parts and drop messages seen twice (the same id in two overlapping exports)."""
    messages = [i for i in items if isinstance(i, Message)]
    if len(reports) > 1 and messages and all(m.timestamp is not None for m in messages) \
            and not any(isinstance(i, SceneBreak) for i in items):
        items = sorted(items, key=lambda m: sort_key(m.timestamp))  # stable: equal times keep file order
    seen: set[str] = set()
    out: list[Message | SceneBreak] = []
    duplicates = 0
    for item in items:
        if isinstance(item, Message) and item.id is not None:
            if item.id in seen:
                duplicates += 1
                continue
            seen.add(item.id)
        out.append(item)
    if duplicates:
        # Charge the duplicates to the last file that brought this thread: it repeated earlier ones.
        reports[-1].messages -= duplicates
        reports[-1].skipped["duplicate"] += duplicates
    return out


def _split(thread: Thread, items: list[Message | SceneBreak], options: ImportOptions) -> list[Conversation]:
    conversations: list[Conversation] = []
    current: list[Message] = []
    gap = options.conversation_gap.total_seconds()

    def close() -> None:
        if current:
            conversations.append(Conversation(f"{thread.key}#{len(conversations) + 1}", list(current),
                                              thread.title, single_voice=thread.single_voice))
            current.clear()

    last_time: float | None = None      # the previous message's sort key (each message's is taken once)
    for item in items:
        if isinstance(item, SceneBreak):
            close()
            last_time = None
            continue
        time = sort_key(item.timestamp) if item.timestamp is not None else None
        if last_time is not None and time is not None and time - last_time > gap:
            close()
        current.append(item)
        last_time = time
    close()
    return conversations
