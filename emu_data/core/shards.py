"""Arrow shard files: an atomic, size-bounded writer and a memory-mapped reader.

Shards are Arrow IPC *files* (random access, memory-mappable, read by `datasets`' arrow
builder). A shard only ever appears under its final name complete: rows go to a hidden
temporary file that is fsynced and renamed into place when the shard reaches its row or
byte bound, so a crash leaves a `.tmp` file that readers ignore, never a half shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from emu_data.core import errors, files, schema

SHARD_SUFFIX = ".arrow"
TMP_PREFIX = ".tmp-"
# Rows are handed to Arrow in batches of at most this many rows or bytes, so memory stays
# bounded by the batch, not by the (possibly 512 MB) shard.
_BATCH_ROWS = 256
_BATCH_BYTES = 32 * 2**20


class OutputError(OSError):
    """A file of the output could not be written (full disk, read-only, a file where a folder
    should be, ...): one line naming the path and the cause. Still an OSError for callers that
    catch those; pickles as itself, so it crosses from a Ray worker to the driver intact."""

    def __init__(self, path, reason: str, errno: int | None = None):
        super().__init__(errno, reason)
        self.path, self.reason, self.filename = str(path), reason, str(path)

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.errno)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"

    @classmethod
    def of(cls, path, error: OSError) -> "OutputError":
        """From an OSError (pyarrow puts its own words around strerror: keep just the cause)."""
        if isinstance(error, OutputError):
            return error
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error))
        return cls(path, reason, error.errno)


@contextlib.contextmanager
def writing(path):
    """Turn an OSError raised while writing `path` into an OutputError naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise OutputError.of(path, e) from e


@dataclass(frozen=True)
class ShardLimits:
    """When a shard is closed and the next one started."""

    max_rows: int = 10_000
    max_bytes: int = 256 * 2**20

    def __post_init__(self):
        if self.max_rows < 1 or self.max_bytes < 1:
            raise errors.UsageError("shard limits must be positive")


@dataclass(frozen=True)
class ShardInfo:
    """What a manifest records of one finished shard. `path` is relative to the directory."""

    path: str
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


def file_sha256(path: Path) -> str:
    """sha256 of a regular file (files.UnreadableFile for a FIFO, device, ...)."""
    digest = hashlib.sha256()
    with os.fdopen(files.open_regular(path), "rb") as f:
        for chunk in iter(lambda: f.read(4 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def approx_row_bytes(row: dict) -> int:
    """A cheap size estimate of one row: the bytes and characters it holds.

    Rows are flat (scalars, lists of scalars, lists of image structs), so one level of
    looping covers them; this runs once per row on the write path, so it stays plain.
    """
    size = 16
    for value in row.values():
        if isinstance(value, (str, bytes)):
            size += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, (str, bytes)):
                    size += len(item)
                elif isinstance(item, dict):
                    size += len(item.get("bytes") or b"")
                else:
                    size += 8
        else:
            size += 8
    return size


class ShardWriter:
    """Writes rows of one schema to `directory/{prefix}-{n:05d}.arrow`, n = 0, 1, ...

    Names depend only on the prefix and the order of rows, so a rerun of the same unit of
    work writes the same names. The file format is `suffix` and `_open_format` (a subclass
    writes Parquet: ops/parquets.py); batches of `batch_rows` / `batch_bytes` rows.
    """

    suffix = SHARD_SUFFIX
    batch_rows, batch_bytes = _BATCH_ROWS, _BATCH_BYTES

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, limits: ShardLimits,
                 root: Path | None = None):
        self.directory = Path(directory)
        self.prefix = prefix
        self.schema = schema
        self.limits = limits
        self.root = Path(root) if root else self.directory
        self.finished: list[ShardInfo] = []
        self._batch: list[dict] = []       # rows from write()
        self._tables: list[pa.Table] = []   # rows from write_table(), and earlier rows as one table
        self._batch_rows = self._batch_bytes = 0
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._rows = 0
        self._bytes = 0

    def write(self, row: dict) -> None:
        size = approx_row_bytes(row)
        if self._rows and (self._rows + 1 > self.limits.max_rows
                           or self._bytes + size > self.limits.max_bytes):
            self._finish_shard()
        self._batch.append(row)
        self._count(1, size)

    def write_table(self, table: pa.Table) -> dict[int, str]:
        """Rows already in Arrow form (this schema's columns), placed as write() would place
        them, by the same limits, with the table's average row size standing in for each
        row's: no Python object per row. Returns {row: why} for rows it could not write
        (none: the tar writer's answer can differ)."""
        table = table.select(self.schema.names).cast(self.schema)
        row_bytes = max(1, table.nbytes // max(1, table.num_rows))
        start = 0
        while start < table.num_rows:
            room = min(self.limits.max_rows - self._rows, (self.limits.max_bytes - self._bytes) // row_bytes)
            if room < 1 and self._rows:
                self._finish_shard()
                continue
            part = table.slice(start, max(1, room))
            self._tables_from_rows()
            self._tables.append(part)
            start += part.num_rows
            self._count(part.num_rows, part.num_rows * row_bytes)
        return {}

    def _count(self, rows: int, size: int) -> None:
        self._rows += rows
        self._bytes += size
        self._batch_rows += rows
        self._batch_bytes += size
        if self._batch_rows >= self.batch_rows or self._batch_bytes >= self.batch_bytes:
            self._flush_batch(whole=False)

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; returns every shard written, in order."""
        if self._rows:
            self._finish_shard()
        return list(self.finished)

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file), keeping finished ones. Never raises
        for a write that fails again (a full disk): it runs while another error propagates."""
        if self._writer is not None or self._sink is not None:
            for closable in (self._writer, self._sink):
                if closable is not None:
                    with contextlib.suppress(Exception):   # closing again after a failed close
                        closable.close()
            with contextlib.suppress(OSError):
                self._tmp_path.unlink(missing_ok=True)
        self._writer = self._sink = None
        self._batch, self._tables, self._rows, self._bytes = [], [], 0, 0
        self._batch_rows = self._batch_bytes = 0

    @property
    def _final_path(self) -> Path:
        return self.directory / f"{self.prefix}-{len(self.finished):05d}{self.suffix}"

    @property
    def _tmp_path(self) -> Path:
        final = self._final_path
        return final.with_name(TMP_PREFIX + final.name)

    def _tables_from_rows(self) -> None:
        if self._batch:
            self._tables.append(pa.Table.from_pylist(self._batch, schema=self.schema))
            self._batch = []

    def _flush_batch(self, whole: bool = True) -> None:
        """Write what is pending as batches of at most batch_rows rows and about batch_bytes
        (a Parquet row group each); all of it when whole, else whole batches only."""
        self._tables_from_rows()
        if not self._tables:
            return
        pending = pa.concat_tables(self._tables) if len(self._tables) > 1 else self._tables[0]
        per_batch = min(self.batch_rows, max(1, pending.num_rows * self.batch_bytes // max(1, self._batch_bytes)))
        end = pending.num_rows if whole else pending.num_rows - pending.num_rows % per_batch
        with writing(self._final_path):
            if self._writer is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._sink = pa.OSFile(str(self._tmp_path), "wb")
                self._writer = self._open_format(self._sink)
            for start in range(0, end, per_batch):
                self._writer.write_table(pending.slice(start, min(per_batch, end - start)))
        left = pending.slice(end)
        self._tables = [left] if left.num_rows else []
        self._batch_bytes = self._batch_bytes * left.num_rows // max(1, pending.num_rows)
        self._batch_rows = left.num_rows

    def _open_format(self, sink):
        """A writer of tables into sink (write_table, close)."""
        return pa.ipc.new_file(sink, self.schema)

    def _finish_shard(self) -> None:
        self._flush_batch()
        with writing(self._final_path):
            self._writer.close()
            self._sink.close()
        self.finished.append(publish(self._tmp_path, self._final_path, self._rows, self.root))
        self._writer = self._sink = None
        self._rows = self._bytes = 0


def publish(tmp: Path, final: Path, rows: int, root: Path, sha256: str | None = None) -> ShardInfo:
    """A shard finished under its temporary name: made durable, renamed into place, described
    (path relative to root, rows, bytes, sha256: read back, unless the writer hashed what it
    wrote). Every shard writer ends a shard here."""
    with writing(final):
        _fsync(tmp)
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return ShardInfo(final.relative_to(root).as_posix(), rows, final.stat().st_size, sha256 or file_sha256(final))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: without it a power cut can forget the new name."""
    try:
        _fsync(path)
    except OSError:  # some filesystems refuse fsync on directories; the rename still happened
        pass


class ShardError(errors.UsageError):
    """A file that is not a readable, valid Arrow IPC shard: one line naming it and why. A
    reader given it cannot work with it (exit 2); still a ValueError for its callers."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# A memory-mapped Arrow file is trusted by pyarrow: offsets, lengths and dictionary indices
# are followed as written, so one changed byte can read outside the map (SIGSEGV, SIGBUS)
# or raise SystemError. Every reader of a shard therefore goes through these three, which
# open regular files only and validate each record batch in full before its values are used.
_ARROW_ERRORS = (pa.ArrowException, ValueError, OSError, SystemError, IndexError, OverflowError)


def _open(path: Path) -> pa.ipc.RecordBatchFileReader:
    try:
        reader = pa.ipc.open_file(pa.py_buffer(files.map_regular(path)))
    except files.UnreadableFile as e:
        raise ShardError(path, e.reason) from None
    except _ARROW_ERRORS as e:
        raise ShardError(path, f"not an Arrow IPC file (empty, truncated or not a shard): {e}") from None
    try:
        _check_text(reader.schema)
    except UnicodeDecodeError as e:
        raise ShardError(path, f"the schema's names or metadata are not UTF-8: {e}") from None
    return reader


def _check_text(schema_: pa.Schema) -> None:
    """Decode every field name (nested ones too) and the metadata: pyarrow decodes them
    lazily, so a changed byte there would otherwise fail wherever a reader first looks."""
    fields = list(schema_)
    while fields:
        field = fields.pop()
        _ = field.name
        kind = field.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            fields.append(kind.value_field)
        elif pa.types.is_struct(kind):
            fields += [kind.field(i) for i in range(kind.num_fields)]
    for key, value in (schema_.metadata or {}).items():
        key.decode()
        value.decode()


def read_schema(path: Path) -> pa.Schema:
    """The shard's schema (with its metadata), from the footer; no data is read."""
    return _open(path).schema


def iter_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Every record batch of the shard, each fully validated (ShardError, naming the batch,
    for one that is not); memory-mapped, no copy."""
    return _validated(path, _open(path))


def _validated(path: Path, reader: pa.ipc.RecordBatchFileReader) -> Iterator[pa.RecordBatch]:
    for i in range(reader.num_record_batches):
        try:
            batch = reader.get_batch(i)
            batch.validate(full=True)
        except _ARROW_ERRORS as e:
            raise ShardError(path, f"record batch {i} is corrupt: {e}") from None
        yield batch


def read_shard(path: Path, record: str | None = None) -> pa.Table:
    """Memory-map one shard, every batch validated: no copy, pages load as columns are touched.
    record: the columns of that record (schemas/) must be there with their types, else ShardError."""
    reader = _open(path)
    table = pa.Table.from_batches(list(_validated(path, reader)), schema=reader.schema)
    if record is not None:
        _check_columns(path, table.schema, record)
    return table


def _check_columns(path: Path, actual: pa.Schema, record: str) -> None:
    for want in schema.arrow_schema(record):
        if want.name not in actual.names or not schema.field_matches(want, actual.field(want.name)):
            found = actual.field(want.name).type if want.name in actual.names else "missing"
            raise ShardError(path, f"not a {record} shard: column {want.name!r} is {found}, wants {want.type}")


def write_table(path: Path, table: pa.Table, root: Path) -> ShardInfo:
    """Write one whole table as one shard, atomically."""
    shard = OneShard(path, table.schema, root)
    shard.write(table)
    return shard.close()


class OneShard:
    """One shard of a known name, written batch by batch to a temporary file and renamed into
    place (fsynced) by close(): memory stays bounded by a batch, never a half shard on disk."""

    def __init__(self, path: Path, schema: pa.Schema, root: Path):
        self.path, self.root, self.schema = Path(path), Path(root), schema
        self.tmp = self.path.with_name(TMP_PREFIX + self.path.name)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.tmp), "wb")
            self._writer = pa.ipc.new_file(self._sink, schema)
        self.rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        with writing(self.path):
            self._writer.write(data)
        self.rows += data.num_rows

    def close(self) -> ShardInfo:
        with writing(self.path):
            self._writer.close()
            self._sink.close()
        return publish(self.tmp, self.path, self.rows, self.root)

    def abort(self) -> None:
        for closable in (self._writer, self._sink):
            with contextlib.suppress(Exception):   # closing again after a failed close
                closable.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)
