"""A unit's rows written in input order, whatever order its work finishes in.

Reruns must give the same shards byte for byte, and a shard's bytes follow the order its
rows were written in. A source whose results come back in completion order (LAION:
img2dataset's fetch threads hand each row over as its download ends) puts each item's rows
here under the item's position in the input; they reach the UnitWriter in position order.

Rows that come early wait for the ones before them: in memory up to `memory_bytes`, then in
an anonymous temporary file beside the shards, so one slow download (a 10 s timeout while
64 threads go on) never holds a unit's images in memory. The file has no name once open:
a crash leaves nothing behind.
"""

from __future__ import annotations

import pickle
import tempfile
from typing import Iterable

from emu_data.core.corpus import DATA_DIR, UnitWriter
from emu_data.core.shards import TMP_PREFIX, approx_row_bytes, writing


class InputOrder:
    """put(position, status, sample) in any order; rows written in the order of `positions`.

    Use as a context manager: leaving the block without an error checks that every position
    was put (an item without rows would break "every input item ends somewhere")."""

    def __init__(self, writer: UnitWriter, positions: Iterable[int], *, memory_bytes: int = 64 * 2**20):
        self._writer = writer
        self._order = sorted(positions)
        self._awaited = set(self._order)
        if len(self._awaited) != len(self._order):
            raise ValueError("input positions repeat")
        self._next = 0                        # index into _order of the next position to write
        self._waiting: dict[int, tuple] = {}  # position -> (size, rows) in memory | (None, offset, length) spilled
        self._held = 0
        self._memory_bytes = memory_bytes
        self._spill = None

    def __enter__(self) -> "InputOrder":
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            missing = sorted(p for p in self._awaited if p not in self._waiting)
            if kind is None and missing:
                raise RuntimeError(f"no rows for input position(s) {missing[:10]} of unit {self._writer.unit_id}")
        finally:
            if self._spill is not None:
                self._spill.close()

    def put(self, position: int, status: dict, sample: dict | None = None) -> None:
        """The rows of the item at `position`: its status row, and its sample if it has one."""
        if position not in self._awaited or position in self._waiting:
            raise ValueError(f"input position {position} is not awaited (put twice, or not in the unit)")
        rows = (sample, status)
        if position != self._order[self._next]:
            self._hold(position, rows)
            return
        self._write(position, rows)
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            position = self._order[self._next]
            self._write(position, self._take(position))

    def _write(self, position: int, rows: tuple) -> None:
        sample, status = rows
        if sample is not None:
            self._writer.add_sample(sample)
        self._writer.add_status(status)
        self._awaited.discard(position)
        self._next += 1

    def _hold(self, position: int, rows: tuple) -> None:
        size = sum(approx_row_bytes(r) for r in rows if r is not None)
        if self._held + size <= self._memory_bytes:
            self._waiting[position] = (size, rows)
            self._held += size
            return
        data = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        spill = self._spill_file()
        with writing(self._writer.out / DATA_DIR):
            offset = spill.seek(0, 2)
            spill.write(data)
        self._waiting[position] = (None, offset, len(data))

    def _take(self, position: int) -> tuple:
        held = self._waiting.pop(position)
        if held[0] is not None:
            self._held -= held[0]
            return held[1]
        _, offset, length = held
        self._spill.seek(offset)
        return pickle.loads(self._spill.read(length))  # our own bytes, written above

    def _spill_file(self):
        if self._spill is None:
            folder = self._writer.out / DATA_DIR
            with writing(folder):
                folder.mkdir(parents=True, exist_ok=True)
                self._spill = tempfile.TemporaryFile(prefix=f"{TMP_PREFIX}{self._writer.unit_id}-", dir=folder)
        return self._spill
