"""Keys read from the input: the first item with a key keeps it, every later one is a duplicate.

The rule for each source whose key comes from its input (a LAION hash, an MMC4 document url,
a WebVid videoid, a YouTube video id): over all inputs in their sorted order, the first item
with a key keeps it; each later item with that key ends as one `duplicate_key` status row,
keyed `KEY#dupN` (N = 1, 2, ... in input order, as `emu-data mix` names its own dropped
repeats), whose error names where the first one is. Nothing is fetched for a repeat.

It is decided at planning, in the driver, over every input file: units run apart on Ray
workers and cannot see each other, so each unit's payload carries the repeats that fall in
it. What planning holds is a number per keyed item (a code, its file and its place), never
the items themselves.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import records

DUPLICATE = "duplicate_key"


def repeats_of(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, index of the first, N) of every entry whose code an earlier entry has,
    in index order. Equal codes are equal keys."""
    order = np.argsort(codes, kind="stable")  # stable: equal codes stay in input order
    ranked = codes[order]
    starts = np.r_[True, ranked[1:] != ranked[:-1]] if len(ranked) else np.zeros(0, bool)
    group = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    n = np.arange(len(order)) - group
    later = n > 0
    index, first, n = order[later], order[group[later]], n[later]
    by_index = np.argsort(index, kind="stable")
    return index[by_index], first[by_index], n[by_index]


def repeats_in_column(keys: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """repeats_of for a column of keys (any type Arrow hashes; null: the row has no key);
    indices are rows of the column."""
    rows = np.flatnonzero(pc.is_valid(keys).to_numpy(zero_copy_only=False))
    if not len(rows):
        return rows, rows, rows
    present = keys.filter(pc.is_valid(keys))
    codes = pc.index_in(present, value_set=pc.unique(present)).to_numpy()
    index, first, n = repeats_of(codes)
    return rows[index], rows[first], n


class Scan:
    """Keyed items of every input file, in input order, as a 64-bit code each (equal codes
    must mean equal keys), the file's number and the item's place in it: 20 bytes an item."""

    def __init__(self):
        self.codes, self.files, self.items = array("Q"), array("i"), array("q")

    def add(self, file: int, item: int, code: int) -> None:
        self.codes.append(code)
        self.files.append(file)
        self.items.append(item)

    def repeats(self, names: list[str]) -> dict[int, list[tuple[int, int, str]]]:
        """{file: [(item, N, "name:item" of the first), ...] sorted by item}."""
        index, first, n = repeats_of(np.frombuffer(self.codes, dtype=np.uint64))
        found: dict[int, list[tuple[int, int, str]]] = {}
        for i, j, k in zip(index.tolist(), first.tolist(), n.tolist()):
            found.setdefault(self.files[i], []).append((self.items[i], k, f"{names[self.files[j]]}:{self.items[j]}"))
        return found


def between(repeats: list[tuple[int, int, str]], first: int, last: int) -> tuple[tuple[int, int, str], ...]:
    """The repeats (sorted by item) whose item lies in first..last: one unit's share."""
    lo = bisect_left(repeats, first, key=lambda r: r[0])
    hi = bisect_left(repeats, last + 1, key=lambda r: r[0])
    return tuple(repeats[lo:hi])


def repeat_key(key: str, n: int) -> str:
    """The status key of the N-th repeat of `key` (input keys hold no "#")."""
    return f"{key}#dup{n}"


def repeat_error(key: str, first: str) -> str:
    return f"{key} already at {first}"


def status(key: str, source: str, n: int, first: str, *, input: str | None) -> dict:
    """The status row of the N-th repeat of `key`; `first`: where the item that kept it is."""
    return records.status(repeat_key(key, n), source, DUPLICATE, input=input,
                          error=repeat_error(key, first), attempts=0)
