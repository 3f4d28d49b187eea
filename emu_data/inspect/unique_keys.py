"""validate's key uniqueness with bounded memory: keys go to disk, hash-partitioned, and each
partition is searched for repeats on its own.

A shard task adds the keys it reads to a `Spill` with their position, then writes them as one
spill file (emu_data/core/partitions.py: one record batch per partition). One `FindDuplicates`
task per partition reads that partition of every spill file, sorts it by (namespace, key,
position) and returns every later occurrence of a key with where its first one is. No process
ever holds more than one task's keys or one partition.

A position is (slot, row): `slot` numbers the shards in the order validate reads them
(directories in order, data shards then status shards, in name order), so the first occurrence
is the first in that order. A namespace is one directory's data keys, or its status keys:
keys repeat across namespaces freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import partitions

SPILL_SCHEMA = pa.schema([("ns", pa.int32()), ("key", pa.string()), ("slot", pa.int64()), ("row", pa.int64())])
SALT = "emu-data validate keys"  # partition hash apart from mix's hashes of the same keys


class Spill:
    """One task's keys with their positions, until written."""

    def __init__(self):
        self._tables: list[pa.Table] = []

    def add(self, ns: int, slot: int, first_row: int, keys: pa.Array) -> None:
        """keys: a string column of rows first_row, first_row + 1, ...; nulls are no keys."""
        rows = np.arange(first_row, first_row + len(keys), dtype=np.int64)
        valid = keys.is_valid()
        kept = keys.filter(valid)   # a copy: the shard's memory map is not held until the write
        self._tables.append(pa.table([
            pa.array(np.full(len(kept), ns, dtype=np.int32)), kept,
            pa.array(np.full(len(kept), slot, dtype=np.int64)),
            pa.array(rows[valid.to_numpy(zero_copy_only=False)])], schema=SPILL_SCHEMA))

    def write(self, path: Path, parts: int) -> bool:
        """Write the keys into `parts` partitions at `path` (OutputError if it cannot);
        False, and nothing written, when there are none."""
        table = pa.concat_tables(self._tables) if self._tables else SPILL_SCHEMA.empty_table()
        self._tables = []
        if not table.num_rows:
            return False
        hashes = partitions.hash64(table.column("key").to_pylist(), SALT)
        partitions.write(path, table, partitions.partition_of(hashes, parts), parts)
        return True


@dataclass(frozen=True)
class Duplicate:
    """A key seen at (slot, row) whose first occurrence is at (first_slot, first_row)."""

    slot: int
    row: int
    key: str
    first_slot: int
    first_row: int


@dataclass(frozen=True)
class FindDuplicates:
    """The task of partition p (its argument): the first `keep` duplicates by position, and
    how many there are in all. The spill list travels once, with the function."""

    spills: tuple[str, ...]
    keep: int

    def __call__(self, p: int) -> tuple[list[Duplicate], int]:
        missing = [s for s in self.spills if not Path(s).is_file()]
        if missing:   # a worker on a node that does not see the spill folder
            raise FileNotFoundError(f"spill file {missing[0]} not found on this node "
                                    f"({len(missing)} of {len(self.spills)} missing)")
        return duplicates(partitions.read(self.spills, p, SPILL_SCHEMA), self.keep)


def duplicates(table: pa.Table, keep: int) -> tuple[list[Duplicate], int]:
    """Every row of `table` (SPILL_SCHEMA) whose (ns, key) an earlier position has: the first
    `keep` of them by position, and their number."""
    n = table.num_rows
    if n < 2:
        return [], 0
    table = table.sort_by([("ns", "ascending"), ("key", "ascending"), ("slot", "ascending"), ("row", "ascending")])
    ns, key = table.column("ns").to_numpy(), table.column("key")
    slot, row = table.column("slot").to_numpy(), table.column("row").to_numpy()
    same = np.zeros(n, dtype=bool)   # same (ns, key) as the row before: a repeat
    same[1:] = (ns[1:] == ns[:-1]) & pc.equal(key.slice(1), key.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    first = np.maximum.accumulate(np.where(same, 0, np.arange(n)))   # where each run of a key starts
    later = np.flatnonzero(same)
    later = later[np.lexsort((row[later], slot[later]))][:keep]
    keys = key.take(pa.array(later, type=pa.int64())).to_pylist()
    found = [Duplicate(int(slot[i]), int(row[i]), k, int(slot[first[i]]), int(row[first[i]]))
             for i, k in zip(later.tolist(), keys)]
    return found, int(same.sum())
