"""Hash partitions spilled to disk: how the passes after ingest keep a driver's memory
independent of the corpus size (mix's dedup and selection, validate's key uniqueness).

A pass task writes its rows to ONE Arrow IPC file holding one record batch per partition (an
empty batch where it has none), so a pass over N inputs into P partitions makes N files, not
N*P; partition p's task then reads batch p of every file, memory-mapped (only those bytes).
Everything a partition's task sees is a function of the inputs alone, never of which worker
or node ran what, so results are the same on one machine or many.

Hashes are xxh3-64 (stable across processes, Python versions and machines, unlike hash()),
seeded by a salt so that the partition hash, a selection hash and an order hash of the same
value are independent.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import xxhash

from emu_data.core.shards import TMP_PREFIX, writing

DEFAULT_ROWS_PER_PARTITION = 2_000_000   # ~100-200 MB of partition rows in a task's memory
MAX_PARTITIONS = 4096


def hash64(values: Iterable[str | bytes | None], salt: str = "") -> np.ndarray:
    """A uint64 per value (None hashes as the empty string: callers mask what they skip).
    A str hashes as its UTF-8 bytes (xxhash 4 refuses str)."""
    seed = xxhash.xxh3_64_intdigest(salt.encode()) if salt else 0
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(v.encode() if isinstance(v, str) else (v or b""), seed) for v in values),
                       dtype=np.uint64)


def partition_of(hashes: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each hash: its top bits (a range of the hash space per partition, so
    partitions in order are the hash order)."""
    if parts == 1:
        return np.zeros(len(hashes), dtype=np.int64)
    return ((hashes >> np.uint64(32)).astype(np.int64) * parts) >> 32


def partitions_for(rows: int, per_partition: int | None = None) -> int:
    """How many partitions a pass over `rows` rows uses (a function of the input alone)."""
    return max(1, min(MAX_PARTITIONS, -(-rows // (per_partition or DEFAULT_ROWS_PER_PARTITION))))


def write(path: Path, table: pa.Table, partition: np.ndarray, parts: int) -> None:
    """Write `table` split by `partition` (one int per row, 0 <= p < parts) into one file with
    one record batch per partition; rows keep their order within a partition. Atomic: the
    file appears whole or not at all (a pass skips files that exist when it resumes)."""
    order = np.argsort(partition, kind="stable")
    counts = np.bincount(partition, minlength=parts) if len(partition) else np.zeros(parts, dtype=np.int64)
    columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
               for c in table.take(pa.array(order, type=pa.int64())).columns]
    with _atomic(path, table.schema) as out:
        start = 0
        for count in counts.tolist():
            out.write_batch(pa.record_batch([c.slice(start, count) for c in columns], schema=table.schema))
            start += count


def write_table(path: Path, table: pa.Table, batch_rows: int = 4096) -> None:
    """Write `table` as it is (no copy), in record batches of at most batch_rows; atomic."""
    with _atomic(path, table.schema) as out:
        out.write_table(table, max_chunksize=batch_rows)


@contextlib.contextmanager
def _atomic(path: Path, schema: pa.Schema):
    path = Path(path)
    # a unique temporary name: a worker a killed run left may write the same file meanwhile
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
            yield out
        os.replace(tmp, path)


def read(paths: Iterable[Path], p: int, schema: pa.Schema) -> pa.Table:
    """Partition p of every file, concatenated in the order the files are given."""
    batches = []
    for path in paths:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        batches.append(reader.get_batch(p))
    return pa.Table.from_batches(batches, schema=schema)


def count(path: Path) -> int:
    """How many partitions a spill file holds."""
    return pa.ipc.open_file(pa.memory_map(str(path))).num_record_batches
