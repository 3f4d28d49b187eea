"""`emu-data stats`: what a corpus holds, by source, and what happened to its inputs."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import corpus
from emu_data.core.shards import read_shard


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


@dataclass
class CorpusStats:
    sources: dict[str, SourceStats] = field(default_factory=lambda: defaultdict(SourceStats))
    status: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    shards: int = 0
    file_bytes: int = 0

    def to_dict(self) -> dict:
        total = sum(s.samples for s in self.sources.values()) or 1
        return {"shards": self.shards, "file_bytes": self.file_bytes,
                "share": {s: round(v.samples / total, 4) for s, v in sorted(self.sources.items())},
                "sources": {s: v.to_dict() for s, v in sorted(self.sources.items())},
                "status": {s: dict(sorted(c.items())) for s, c in sorted(self.status.items())}}


def compute(directory: Path) -> CorpusStats:
    """Stats of a finished corpus directory (its manifest says which shards count)."""
    stats = CorpusStats()
    for path in corpus.shard_paths(directory, corpus.DATA_DIR):
        _add_samples(stats, read_shard(path, "interleaved"))
        stats.shards += 1
        stats.file_bytes += path.stat().st_size
    for path in corpus.shard_paths(directory, corpus.STATUS_DIR):
        _add_status(stats, read_shard(path, "status"))
    return stats


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
    lines.append(f"\n{stats.shards} shard(s), {stats.file_bytes / 2**20:.1f} MB on disk")
    return "\n".join(lines)


def _row(name: str, s: SourceStats, share: float) -> str:
    d = s.to_dict()
    mb = (s.image_bytes + s.text_bytes) / 2**20
    return (f"{name:<14}{s.samples:>9}{share:>8.1%}{s.images:>9}{s.texts:>8}{d['images_per_sample']:>9}"
            f"{d['texts_per_sample']:>9}{mb:>9.2f}")
