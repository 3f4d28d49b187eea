"""`emu-data validate`: check every shard and manifest under a path against the schemas.

Each problem becomes one Violation naming the file, row, key and rule; nothing in the
input, however broken, escapes as a traceback. Images are opened (header parsed) one and
all, and fully decoded for a sample of each shard, or all of them with `deep`.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from PIL import Image

from emu_data import corpus, manifest, schema
from emu_data.shards import SHARD_SUFFIX, TMP_PREFIX, file_sha256, iter_batches

DECODE_PER_SHARD = 32  # images fully decoded per shard unless --deep


class UnusableInput(ValueError):
    """The path is missing or holds no emu-data output at all (exit 2)."""


@dataclass(frozen=True)
class Violation:
    path: str
    row: int | None
    key: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.row is None else f"{self.path}:{self.row}"
        key = f" key={self.key}" if self.key is not None else ""
        return f"{where}: [{self.rule}]{key} {self.message}"


@dataclass
class Report:
    directories: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    images: int = 0
    decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        verdict = "clean" if self.ok else f"{len(self.violations)} violation(s)"
        rules = Counter(v.rule for v in self.violations)
        by_rule = "" if self.ok else " (" + ", ".join(f"{r}: {n}" for r, n in sorted(rules.items())) + ")"
        return (f"{len(self.directories)} director(ies), {self.shards} shard(s), {self.rows} row(s), "
                f"{self.images} image(s) opened, {self.decoded} fully decoded: {verdict}{by_rule}")


def validate(paths: list[Path], *, deep: bool = False) -> Report:
    report = Report()
    for directory in find_output_dirs(paths):
        _CorpusCheck(directory, report, deep).run()
    return report


def find_output_dirs(paths: list[Path]) -> list[Path]:
    """Directories under `paths` that hold emu-data output (a manifest or shards)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise UnusableInput(f"{path}: no such file or directory")
        if not path.is_dir():
            raise UnusableInput(f"{path}: not a directory (give the corpus directory)")
        hits = sorted({p.parent for p in path.rglob(manifest.MANIFEST_NAME)}
                      | {p.parent.parent for p in path.rglob(f"{corpus.DATA_DIR}/*{SHARD_SUFFIX}")})
        if not hits:
            raise UnusableInput(f"{path}: not an emu-data directory (no {manifest.MANIFEST_NAME}, no shards)")
        found += [h for h in hits if h not in found]
    return found


class _CorpusCheck:
    """All checks of one output directory."""

    def __init__(self, directory: Path, report: Report, deep: bool):
        self.dir = directory
        self.report = report
        self.deep = deep
        self.keys: dict[str, str] = {}         # key -> where first seen
        self.status_keys: dict[str, str] = {}
        self.sources: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.entries: dict[str, dict] = {}     # manifest entries by relative path
        self.decoded: Counter[Path] = Counter()  # images fully decoded, per shard

    def flag(self, path: Path, rule: str, message: str, row=None, key=None) -> None:
        self.report.violations.append(Violation(str(path), row, key, rule, message))

    def run(self) -> None:
        self.report.directories.append(str(self.dir))
        built = self._manifest()
        for kind, record in ((corpus.DATA_DIR, "interleaved"), (corpus.STATUS_DIR, "status")):
            listed = self._listed(built, kind)
            self.entries.update(listed)
            for path in self._shards_on_disk(kind, listed):
                self._check_shard(path, record)
        if built is not None:
            self._check_counts(built)

    # ---- manifest against files --------------------------------------------------
    def _manifest(self) -> dict | None:
        path = self.dir / manifest.MANIFEST_NAME
        if not path.exists():
            self.flag(path, "manifest_missing", "no manifest: the run did not finish")
            return None
        try:
            data = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.flag(path, "manifest_unreadable", str(e))
            return None
        found = manifest.problems(data)
        for problem in found:
            self.flag(path, "manifest_schema", problem)
        return None if found else data

    def _listed(self, built: dict | None, kind: str) -> dict[str, dict]:
        if built is None:
            return {}
        entries = built["shards" if kind == corpus.DATA_DIR else "status_shards"]
        return {e["path"]: e for e in entries}

    def _shards_on_disk(self, kind: str, listed: dict[str, dict]) -> list[Path]:
        """Compare the listing with the files; return the shard files worth reading."""
        folder = self.dir / kind
        on_disk = {p.relative_to(self.dir).as_posix(): p for p in sorted(folder.glob("*"))
                   if p.is_file()}
        for rel, path in on_disk.items():
            if path.name.startswith(TMP_PREFIX):
                self.flag(path, "leftover_tmp", "temporary file left by an interrupted write")
            elif listed and rel not in listed:
                self.flag(path, "extra_shard", "file not listed in the manifest")
        for rel, entry in listed.items():
            path = self.dir / rel
            if rel not in on_disk:
                self.flag(path, "missing_shard", "listed in the manifest but not on disk")
            else:
                self._check_entry(path, entry)
        return [p for rel, p in on_disk.items() if not p.name.startswith(TMP_PREFIX)
                and (rel in listed or not listed)]

    def _check_entry(self, path: Path, entry: dict) -> None:
        size = path.stat().st_size
        if size != entry["bytes"]:
            self.flag(path, "manifest_bytes", f"{size} bytes on disk, manifest says {entry['bytes']}")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            self.flag(path, "manifest_checksum", f"sha256 {digest[:16]}... does not match the manifest's "
                      f"{entry['sha256'][:16]}...")

    # ---- one shard --------------------------------------------------------------
    def _check_shard(self, path: Path, record: str) -> None:
        self.report.shards += 1
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (pa.ArrowException, OSError, ValueError) as e:
            self.flag(path, "unreadable_shard", f"not an Arrow IPC file (empty, truncated or not a shard): {e}")
            return
        schema_ok = self._check_schema(path, reader.schema, record)
        rows = 0
        try:
            for batch in iter_batches(path):
                self._check_rows(path, batch, rows, record, schema_ok)
                rows += batch.num_rows
        except (pa.ArrowException, OSError, ValueError) as e:
            self.flag(path, "unreadable_shard", f"a record batch cannot be read: {e}", row=rows)
        self.report.rows += rows if record == "interleaved" else 0
        self._check_row_count(path, rows)

    def _check_row_count(self, path: Path, rows: int) -> None:
        entry = self.entries.get(path.relative_to(self.dir).as_posix())
        if entry is not None and entry["rows"] != rows:
            self.flag(path, "manifest_rows", f"{rows} rows in the file, manifest says {entry['rows']}")

    def _check_schema(self, path: Path, actual: pa.Schema, record: str) -> bool:
        expected = schema.arrow_schema(record)
        ok = True
        for want in expected:
            if want.name not in actual.names:
                self.flag(path, "schema_missing_column", f"column {want.name!r} missing")
                ok = False
            elif not schema.field_matches(want, actual.field(want.name)):
                self.flag(path, "schema_type", f"column {want.name!r} is {actual.field(want.name).type}, "
                          f"schema {record} wants {want.type}")
                ok = False
        for extra in set(actual.names) - set(expected.names):
            self.flag(path, "schema_extra_column", f"column {extra!r} is not in schema {record}")
        return ok

    def _check_rows(self, path: Path, batch: pa.RecordBatch, offset: int, record: str,
                    schema_ok: bool) -> None:
        if not schema_ok:  # rows of a wrong-typed shard can't be read as records; keys still can
            self._check_keys_only(path, batch, offset, record)
            return
        problems = schema.interleaved_problems if record == "interleaved" else schema.status_problems
        for i, row in enumerate(batch.to_pylist()):
            n = offset + i
            key = row.get("key")
            for rule, message in problems(row):
                self.flag(path, rule, message, row=n, key=key)
            self._note_key(path, n, key, record)
            if record == "interleaved":
                self.sources[row["source"]] += 1
                self._check_images(path, n, key, row["images"])
            else:
                self.statuses[row["status"]] += 1

    def _check_keys_only(self, path: Path, batch: pa.RecordBatch, offset: int, record: str) -> None:
        if "key" not in batch.schema.names or not pa.types.is_string(batch.schema.field("key").type):
            return
        for i, key in enumerate(batch.column("key").to_pylist()):
            self._note_key(path, offset + i, key, record)

    def _note_key(self, path: Path, row: int, key: str | None, record: str) -> None:
        if key is None:
            return
        seen = self.keys if record == "interleaved" else self.status_keys
        where = f"{path}:{row}"
        if key in seen:
            self.flag(path, "duplicate_key", f"key also at {seen[key]}", row=row, key=key)
        else:
            seen[key] = where

    def _check_images(self, path: Path, row: int, key: str, images: list) -> None:
        for i, cell in enumerate(images):
            if cell is None or cell.get("bytes") is None:
                continue
            self.report.images += 1
            decode = self.deep or self.decoded[path] < DECODE_PER_SHARD
            problem = image_problem(cell["bytes"], decode=decode)
            if decode:
                self.decoded[path] += 1
                self.report.decoded += 1
            if problem:
                self.flag(path, "image_decode", f"images[{i}]: {problem}", row=row, key=key)

    # ---- totals ------------------------------------------------------------------
    def _check_counts(self, built: dict) -> None:
        path = self.dir / manifest.MANIFEST_NAME
        actual_rows = sum(self.sources.values())
        if built["rows"] != actual_rows:
            self.flag(path, "manifest_rows", f"manifest says {built['rows']} rows, shards hold {actual_rows}")
        if dict(self.sources) != built["source_counts"]:
            self.flag(path, "manifest_counts", f"source counts {dict(self.sources)} != manifest {built['source_counts']}")
        if dict(self.statuses) != built["status_counts"]:
            self.flag(path, "manifest_counts", f"status counts {dict(self.statuses)} != manifest {built['status_counts']}")


def image_problem(data: bytes, *, decode: bool) -> str | None:
    """Why `data` is not a usable image, or None. decode=False parses the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG", "WEBP"):
                return f"format {image.format} is not JPEG, PNG or WebP"
            if decode:
                image.load()
    except Image.DecompressionBombError as e:
        return f"decompression bomb: {e}"
    except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "not an image"
        return f"does not decode: {e}"
    return None
