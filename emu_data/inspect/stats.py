"""`emu-data stats`: what a corpus holds, by source, and what happened to its inputs."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import corpus, files, records
from emu_data.core.shards import read_shard

# How many of the most frequent removed strings a report names.
TOP_REMOVED = 10


@dataclass
class SourceStats:
    samples: int = 0
    images: int = 0
    texts: int = 0
    image_bytes: int = 0
    text_bytes: int = 0

    def to_dict(self) -> dict:
        per = max(self.samples, 1)
        return {"samples": self.samples, "images": self.images, "texts": self.texts,
                "images_per_sample": round(self.images / per, 2),
                "texts_per_sample": round(self.texts / per, 2),
                "image_bytes": self.image_bytes, "text_bytes": self.text_bytes}


@dataclass(frozen=True)
class Cleaning:
    """What a source's cleaning took out of one kept sample (its meta's "cleaning" object):
    removed texts at their cue times, and the times of the frames it dropped. A time that is
    no finite number is None for a removed text (the text still counts) and drops the frame."""

    removed: tuple[tuple[float | None, str], ...] = ()
    words_removed: int = 0
    static_frames: tuple[float, ...] = ()
    blank_frames: tuple[float, ...] = ()


def cleaning_of(meta) -> Cleaning | None:
    """The Cleaning of a sample's parsed meta; None when it has none, or it is no JSON object.
    Entries of the wrong shape are skipped, never an error: meta is untrusted record data."""
    cleaning = meta.get("cleaning") if isinstance(meta, dict) else None
    if not isinstance(cleaning, dict):
        return None
    removed = tuple(_removed_entries(cleaning.get("removed")))
    words = cleaning.get("words_removed")
    if not _is_count(words):   # missing or malformed: count what the contract says it counts
        words = sum(len(text.split()) for _, text in removed)
    return Cleaning(removed=removed, words_removed=words,
                    static_frames=tuple(_frame_times(cleaning.get("static_frames"))),
                    blank_frames=tuple(_frame_times(cleaning.get("blank_frames"))))


def _removed_entries(value):
    for entry in value if isinstance(value, list) else ():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
            yield (float(entry[0]) if _is_time(entry[0]) else None), entry[1]


def _frame_times(value):
    return (float(t) for t in (value if isinstance(value, list) else ()) if _is_time(t))


def _is_time(value) -> bool:
    # bool is an int to Python, not a time to anyone; NaN, Infinity and a 4,000-digit integer
    # are all valid to json.loads
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:
        return False


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class FilterStats:
    """What one record source's quality filters took: whole items (a video) a filter gave a
    status reason, with the frames they had, and what cleaning dropped from kept samples."""

    declared: tuple[str, ...] = ()   # its source's filter reasons (the registry's)
    items: Counter = field(default_factory=Counter)    # filter reason -> items it took
    frames: Counter = field(default_factory=Counter)   # filter reason -> frames those items had
    static_frames: int = 0
    blank_frames: int = 0
    removed: int = 0
    words_removed: int = 0
    removed_text: Counter = field(default_factory=Counter)   # lowercased removed string -> times

    def active(self) -> bool:
        return bool(sum(self.items.values()) or self.static_frames or self.blank_frames or self.removed
                    or self.words_removed)

    def add_cleaning(self, cleaning: Cleaning) -> None:
        self.static_frames += len(cleaning.static_frames)
        self.blank_frames += len(cleaning.blank_frames)
        self.removed += len(cleaning.removed)
        self.words_removed += cleaning.words_removed
        self.removed_text.update(text.strip().lower() for _, text in cleaning.removed)

    def top_removed(self) -> list[tuple[str, int]]:
        """The most frequent removed strings, most frequent first, ties in text order."""
        return sorted(self.removed_text.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REMOVED]

    def to_dict(self) -> dict:
        return {"videos": {r: {"videos": self.items[r], "frames": self.frames[r]} for r in self.declared},
                "frames": {"static": self.static_frames, "blank": self.blank_frames},
                "text": {"removed": self.removed, "words_removed": self.words_removed,
                         "top": dict(self.top_removed())}}


class _FilterTally:
    """Counts FilterStats per record source over a corpus's shards, one table at a time."""

    def __init__(self):
        from emu_data import sources

        self.declared = sources.filters()
        self.by_source: dict[str, FilterStats] = {}
        self._reasons = sorted({r for reasons in self.declared.values() for r in reasons})

    def of(self, source: str) -> FilterStats:
        if source not in self.by_source:
            self.by_source[source] = FilterStats(declared=tuple(self.declared.get(source, ())))
        return self.by_source[source]

    def add_samples(self, table: pa.Table) -> None:
        """Count the cleaning in the samples' meta (reads only the source and meta columns)."""
        for source in pc.unique(table.column("source")).to_pylist():
            self.of(source)
        # json-parsing every meta is Python work on a large corpus: parse only those that can
        # hold a cleaning at all
        maybe = pc.fill_null(pc.match_substring(table.column("meta"), "cleaning"), False)
        picked = table.select(["source", "meta"]).filter(maybe)
        for source, meta in zip(picked.column("source").to_pylist(), picked.column("meta").to_pylist()):
            cleaning = cleaning_of(meta_object(meta))
            if cleaning is not None:
                self.of(source).add_cleaning(cleaning)

    def add_status(self, table: pa.Table) -> None:
        """Count the items each filter took, and their frames from the status message."""
        for source in pc.unique(table.column("source")).to_pylist():
            self.of(source)
        if not self._reasons:
            return
        taken = pc.fill_null(pc.is_in(table.column("status"), value_set=pa.array(self._reasons)), False)
        picked = table.select(["source", "status", "error"]).filter(taken).to_pydict()
        for source, reason, error in zip(picked["source"], picked["status"], picked["error"]):
            if reason in self.declared.get(source, ()):   # another source's filter reason is a failure here
                filters = self.of(source)
                filters.items[reason] += 1
                filters.frames[reason] += records.frames_taken(error)


def meta_object(meta) -> dict | None:
    """A sample's meta parsed, when it is a JSON object; None for anything else."""
    if not isinstance(meta, (str, bytes)):
        return None
    try:
        value = files.loads_json(meta)
    except files.JsonError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class CorpusStats:
    sources: dict[str, SourceStats] = field(default_factory=lambda: defaultdict(SourceStats))
    status: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    filters: dict[str, FilterStats] = field(default_factory=dict)
    shards: int = 0
    file_bytes: int = 0

    def to_dict(self) -> dict:
        total = sum(s.samples for s in self.sources.values()) or 1
        return {"shards": self.shards, "file_bytes": self.file_bytes,
                "share": {s: round(v.samples / total, 4) for s, v in sorted(self.sources.items())},
                "sources": {s: v.to_dict() for s, v in sorted(self.sources.items())},
                "status": {s: dict(sorted(c.items())) for s, c in sorted(self.status.items())},
                "filters": {s: f.to_dict() for s, f in sorted(reported_filters(self.filters).items())}}


def reported_filters(filters: dict[str, FilterStats]) -> dict[str, FilterStats]:
    """The sources of a corpus worth a filters report: those whose source declares filters,
    and any other whose samples carry cleaning."""
    return {s: f for s, f in filters.items() if f.declared or f.active()}


def compute(directory: Path) -> CorpusStats:
    """Stats of a finished corpus directory (its manifest says which shards count)."""
    stats = CorpusStats()
    tally = _FilterTally()
    for path in corpus.shard_paths(directory, corpus.DATA_DIR):
        table = read_shard(path, "interleaved")
        _add_samples(stats, table)
        tally.add_samples(table)
        stats.shards += 1
        stats.file_bytes += path.stat().st_size
    for path in corpus.shard_paths(directory, corpus.STATUS_DIR):
        table = read_shard(path, "status")
        _add_status(stats, table)
        tally.add_status(table)
    stats.filters = tally.by_source
    return stats


def compute_filters(directory: Path) -> dict[str, FilterStats]:
    """Just the filter counts of a finished corpus, by record source (those reported_filters
    keeps): of the data shards only the source and meta columns are touched (the shard is
    memory-mapped, so the images' pages are never read), and the status shards."""
    tally = _FilterTally()
    for path in corpus.shard_paths(directory, corpus.DATA_DIR):
        tally.add_samples(read_shard(path, "interleaved").select(["source", "meta"]))
    for path in corpus.shard_paths(directory, corpus.STATUS_DIR):
        tally.add_status(read_shard(path, "status"))
    return reported_filters(tally.by_source)


def _add_samples(stats: CorpusStats, table: pa.Table) -> None:
    table = table.combine_chunks()
    sources = table.column("source").cast(pa.string())
    for source in pc.unique(sources).to_pylist():
        part = table.filter(pc.equal(sources, source))
        # struct_field, unlike StructArray.field, keeps the nulls of text positions
        image_bytes = pc.struct_field(pc.list_flatten(part.column("images")), "bytes")
        texts = pc.list_flatten(part.column("texts"))
        s = stats.sources[source]
        s.samples += part.num_rows
        s.images += len(image_bytes) - image_bytes.null_count
        s.texts += len(texts) - texts.null_count
        s.image_bytes += int(pc.sum(pc.binary_length(image_bytes)).as_py() or 0)
        s.text_bytes += int(pc.sum(pc.binary_length(texts)).as_py() or 0)


def _add_status(stats: CorpusStats, table: pa.Table) -> None:
    for source, status in zip(table.column("source").to_pylist(), table.column("status").to_pylist()):
        stats.status[source][status] += 1


def format_table(stats: CorpusStats) -> str:
    """A plain-text report a person reads in a terminal."""
    head = f"{'source':<14}{'samples':>9}{'share':>8}{'images':>9}{'texts':>8}{'img/smp':>9}{'txt/smp':>9}{'MB':>9}"
    lines = [head, "-" * len(head)]
    total = SourceStats()
    all_samples = sum(s.samples for s in stats.sources.values()) or 1
    for name, s in sorted(stats.sources.items()):
        lines.append(_row(name, s, s.samples / all_samples))
        for f in ("samples", "images", "texts", "image_bytes", "text_bytes"):
            setattr(total, f, getattr(total, f) + getattr(s, f))
    lines += ["-" * len(head), _row("total", total, 1.0), "", "status by reason:"]
    for source, counts in sorted(stats.status.items()):
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        lines.append(f"  {source:<14}{reasons}")
    lines += _filter_lines(stats.filters)
    lines.append(f"\n{stats.shards} shard(s), {stats.file_bytes / 2**20:.1f} MB on disk")
    return "\n".join(lines)


def _filter_lines(filters: dict[str, FilterStats]) -> list[str]:
    """The filters section: per source whose filters or cleaning took anything, one line per
    filter, one for dropped frames and one for removed text (the last two when not zero)."""
    active = {s: f for s, f in sorted(filters.items()) if f.active()}
    if not active:
        return []
    lines = ["", "filters:"]
    for source, f in active.items():
        lines.append(f"  {source}")
        for reason in f.declared:
            lines.append(f"    {reason:<20}{_plural(f.items[reason], 'video')} ({_plural(f.frames[reason], 'frame')})")
        if f.static_frames or f.blank_frames:
            lines.append(f"    {'dropped frames':<20}{f.static_frames} static, {f.blank_frames} blank")
        if f.removed or f.words_removed:
            top = ", ".join(f"{_printable(text)} {n}" for text, n in f.top_removed()[:5])
            lines.append(f"    {'removed text':<20}{f.removed} ({_plural(f.words_removed, 'word')})"
                         + (f": {top}" if top else ""))
    return lines


def describe_filters(f: FilterStats) -> str:
    """One compact line of what a source's filters took, for a table cell ("" when nothing):
    "low_speech 1 video (13 frames), static_video 1 (20), static frames 6, blank 2,
    annotations 14 (17 words)"; the first filter names its units, the others reuse them."""
    taken = [r for r in f.declared if f.items[r]]
    parts = [f"{r} {_plural(f.items[r], 'video')} ({_plural(f.frames[r], 'frame')})" if i == 0
             else f"{r} {f.items[r]} ({f.frames[r]})" for i, r in enumerate(taken)]
    if f.static_frames or f.blank_frames:
        parts.append(f"static frames {f.static_frames}, blank {f.blank_frames}")
    if f.removed or f.words_removed:
        parts.append(f"annotations {f.removed} ({_plural(f.words_removed, 'word')})")
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _printable(text: str, limit: int = 30) -> str:
    """A record's string made safe for one terminal line: control characters (an escape
    sequence, a newline) are shown escaped, long strings cut."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _row(name: str, s: SourceStats, share: float) -> str:
    d = s.to_dict()
    mb = (s.image_bytes + s.text_bytes) / 2**20
    return (f"{name:<14}{s.samples:>9}{share:>8.1%}{s.images:>9}{s.texts:>8}{d['images_per_sample']:>9}"
            f"{d['texts_per_sample']:>9}{mb:>9.2f}")
