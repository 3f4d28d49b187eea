"""Reading clip-list files: CSV, parquet or JSON lines, in Panda-70M's layout or a flat one.

Every row becomes entries: a clip, or the reason it is none, with where it came from, so
every input clip ends in the corpus or in the status table. A row that cannot be read at all
(a broken CSV quote, a JSON line that is no object, a field past the size cap) is one
`malformed_row` entry; a file that is no table of the kind its name says is a usage error
naming it, before any work starts.

Layout: `panda` (one row per video; lists of timestamps, captions, scores), `flat` (one row
per clip, columns named by FlatColumns), or `auto`: panda when the file has a `timestamp`
column, else flat.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from emu_data.core import errors
from emu_data.core.files import safe_stem
from emu_data.sources.youtube import cliplist
from emu_data.sources.youtube.cliplist import Clip, ClipRejected, FlatColumns

LAYOUTS = ("auto", "panda", "flat")
SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")
MAX_LINE = 4 * cliplist.MAX_FIELD   # a JSON line or CSV field longer than this is a malformed row
_BATCH = 4096


@dataclass(frozen=True)
class Entry:
    """One clip of the input, or why it is none. ref: FILE:ROW (and #N, the N-th clip of a
    Panda row); fallback: the status key's tail when the clip has no key of its own."""

    ref: str
    fallback: str
    clip: Clip | None = None
    reason: str | None = None
    message: str | None = None


def list_files(paths: list[Path]) -> list[Path]:
    """The clip-list files named, directories expanded to the files in them with a known
    suffix, sorted: the stable input order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise errors.UsageError(f"--input {path}: no such file or directory")
    if not found:
        raise errors.UsageError("no clip lists found: give CSV, parquet or jsonl files (or folders of them)")
    return found


def stems(paths: list[Path]) -> list[str]:
    """A name per file for the keys of its rows that have none of their own: the file's stem,
    with -2, -3 ... on later files of the same stem (a/clips.csv, b/clips.csv)."""
    found, taken = [], {}
    for path in paths:
        stem = safe_stem(path.name.rsplit(".", 1)[0])
        taken[stem] = taken.get(stem, 0) + 1
        found.append(stem if taken[stem] == 1 else f"{stem}-{taken[stem]}")
    return found


def entries(path: Path, layout: str = "auto", columns: FlatColumns = FlatColumns(),
            stem: str | None = None) -> Iterator[Entry]:
    """Every clip of one file, in file order. stem: its name in keys (default: stems([path]))."""
    stem = stem or stems([path])[0]
    rows = _rows(path)
    header = next(rows)
    kind = _layout(path, header, layout, columns)
    for number, row in rows:
        ref, fallback = f"{path}:{number}", f"{stem}-{number}"
        if isinstance(row, ClipRejected):
            yield Entry(ref, fallback, reason=row.reason, message=str(row))
        elif kind == "panda":
            found = cliplist.panda_row(row)
            for i, one in enumerate(found):
                yield _entry(one, f"{ref}#{i}" if len(found) > 1 or isinstance(one, Clip) else ref,
                             f"{fallback}-{i}" if len(found) > 1 or isinstance(one, Clip) else fallback)
        else:
            yield _entry(cliplist.flat_row(row, columns), ref, fallback)


def _entry(one, ref: str, fallback: str) -> Entry:
    if isinstance(one, Clip):
        return Entry(ref, fallback, clip=one)
    return Entry(ref, fallback, reason=one.reason, message=str(one))


def _layout(path: Path, header: tuple[str, ...], layout: str, columns: FlatColumns) -> str:
    if layout == "auto":
        layout = "panda" if "timestamp" in header else "flat"
    wanted = (("timestamp", "caption") if layout == "panda" else (columns.start, columns.end, columns.caption))
    missing = [c for c in wanted if c not in header]
    if layout == "panda" and "videoID" not in header and "url" not in header:
        missing.append("videoID or url")
    if layout == "flat" and columns.video not in header:
        missing.append(columns.video)
    if missing:
        raise errors.UsageError(f"{path}: a {layout} clip list needs column(s) {', '.join(missing)}; "
                                f"it has {', '.join(header[:20]) or 'none'}")
    return layout


def _rows(path: Path) -> Iterator:
    """First the column names, then (row number, dict or ClipRejected) per row."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix in (".jsonl", ".json"):
        return _json_rows(path)
    return _csv_rows(path, "\t" if suffix == ".tsv" else ",")


def _csv_rows(path: Path, delimiter: str) -> Iterator:
    csv.field_size_limit(MAX_LINE)   # a longer field is a csv.Error: that row's reason
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = tuple(next(reader))
        except (StopIteration, csv.Error) as e:
            raise errors.UsageError(f"{path}: no header row ({e or 'empty file'})") from None
        yield header
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield reader.line_num, ClipRejected("malformed_row", f"not a CSV row: {e}")
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                yield reader.line_num, ClipRejected("malformed_row", f"{len(fields)} fields, the header has {len(header)}")
                continue
            yield reader.line_num, dict(zip(header, fields))


def _json_rows(path: Path) -> Iterator:
    """JSON lines; the columns are the first object's keys (a flat list's rows share them)."""
    with open(path, "rb") as f:
        rows = (_json_row(number, line) for number, line in enumerate(_lines(f), 1) if line.strip())
        before = []   # rows that are no object, ahead of the first that is
        for number, row in rows:
            before.append((number, row))
            if isinstance(row, dict):
                break
        else:
            raise errors.UsageError(f"{path}: no JSON object on any line")
        yield tuple(before[-1][1])
        yield from before
        yield from rows


def _lines(f) -> Iterator[bytes]:
    """Lines, each cut at MAX_LINE + 1 bytes (the rest of an overlong line skipped, never held)."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
        yield line


def _json_row(number: int, line: bytes):
    if len(line) > MAX_LINE:
        return number, ClipRejected("malformed_row", f"a line over {MAX_LINE} bytes")
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
        return number, ClipRejected("malformed_row", f"not JSON: {str(e)[:80]}")
    if not isinstance(row, dict):
        return number, ClipRejected("malformed_row", f"a JSON {type(row).__name__}, not an object")
    return number, row


def _parquet_rows(path: Path) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise errors.UsageError(f"{path}: not a parquet file ({e})") from None
    yield tuple(table.schema_arrow.names)
    number = 0
    try:
        for batch in table.iter_batches(batch_size=_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as e:   # a corrupt page: the rest of the file is one reason
        yield number + 1, ClipRejected("malformed_row", f"rows from here on could not be read: {e}")
