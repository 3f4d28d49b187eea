"""`emu-data validate`: check every shard and manifest under a path against the schemas.

Each problem becomes one Violation naming the file, row, key and rule; nothing in the
input, however broken, escapes as a traceback. Images are opened (header parsed) one and
all, and fully decoded for a sample of each shard, or all of them with `deep`.

A features directory (`emu-data features`, manifest schema "features") is checked against
its corpus instead: one feature shard per corpus data shard, one row per non-null corpus
image in corpus order, consistent metadata, finite values. The corpus is read memory-mapped
and its image bytes are never touched (only the validity of `images` items).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from emu_data.core import corpus, errors, files, images, manifest, schema
from emu_data.ops import encoder
from emu_data.core.shards import SHARD_SUFFIX, TMP_PREFIX, ShardError, file_sha256, iter_batches, read_schema

DECODE_PER_SHARD = 32  # images fully decoded per shard unless --deep
# Stored dtype name (shard metadata) -> Arrow storage of the embedding values.
FEATURE_STORAGE = {encoder.DTYPE_NAME[p]: encoder.STORAGE[p] for p in encoder.PRECISIONS}
# Metadata every feature shard of one directory must agree on: they describe one model run.
FEATURE_LAYOUT = ("model", "pretrained", "tokens", "shape", "dtype", "preprocess", "emu_data.fingerprint")
BF16_NAN = 0x7FC0  # a null bfloat16 value is counted as not finite, like a null float
_READ_ERRORS = (ShardError, files.UnreadableFile, OSError)


class UnusableInput(errors.UsageError):
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


def validate(paths: list[Path], *, deep: bool = False, corpus: Path | None = None) -> Report:
    """Check every output directory under `paths`. Features directories are checked against
    `corpus` if given, else against the corpus their manifest names."""
    report = Report()
    for directory in find_output_dirs(paths):
        if record_name(directory) == "features":
            _FeaturesCheck(directory, report, corpus).run()
        else:
            _CorpusCheck(directory, report, deep).run()
    return report


def record_name(directory: Path) -> str | None:
    """The record kind a directory holds: its manifest's schema name, else its first data
    shard's (so a features directory whose manifest is gone is still checked as one)."""
    try:
        return files.read_json(directory / manifest.MANIFEST_NAME)["schema"]["name"]
    except (files.UnreadableFile, TypeError, KeyError):
        pass
    for path in sorted((directory / corpus.DATA_DIR).glob(f"*{SHARD_SUFFIX}")):
        if not path.name.startswith(TMP_PREFIX):
            try:
                meta = read_schema(path).metadata or {}
            except _READ_ERRORS:
                continue
            return meta.get(b"emu_data.core.schema", b"").decode(errors="replace") or None
    return None


def find_output_dirs(paths: list[Path]) -> list[Path]:
    """Directories under `paths` that hold emu-data output (a manifest or shards)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise UnusableInput(f"{path}: no such file or directory")
        if not path.is_dir():
            raise UnusableInput(f"{path}: not a directory (give the corpus directory)")
        hits = sorted(_output_dirs_under(path))
        if not hits:
            raise UnusableInput(f"{path}: not an emu-data directory (no {manifest.MANIFEST_NAME}, no shards)")
        found += [h for h in hits if h not in found]
    return found


def _output_dirs_under(root: Path) -> set[Path]:
    """Folders holding a manifest, or a data/ folder with shards (walked without recursion:
    a hostile tree can be deeper than Python's stack)."""
    hits = set()
    for folder, _, names in files.walk(root):
        if manifest.MANIFEST_NAME in names:
            hits.add(folder)
        if folder.name == corpus.DATA_DIR and folder != root and any(n.endswith(SHARD_SUFFIX) for n in names):
            hits.add(folder.parent)
    return hits


def listed_shard_problems(path: Path, entry: dict) -> list[Violation]:
    """A shard file against its manifest entry: missing (or not a regular file: never opened),
    another size, another sha256. Also what `mix` checks of every input shard."""
    if not files.is_regular(path):
        return [Violation(str(path), None, None, "missing_shard", "listed in the manifest but not on disk")]
    found, size = [], path.stat().st_size
    if size != entry["bytes"]:
        found.append(Violation(str(path), None, None, "manifest_bytes",
                               f"{size} bytes on disk, manifest says {entry['bytes']}"))
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        found.append(Violation(str(path), None, None, "manifest_checksum",
                               f"sha256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}..."))
    return found


class _DirCheck:
    """What the checks of every output directory share: the manifest against the files,
    opening shards, their columns and row counts."""

    def __init__(self, directory: Path, report: Report):
        self.dir = directory
        self.report = report
        self.entries: dict[str, dict] = {}     # manifest entries by relative path

    def flag(self, path: Path, rule: str, message: str, row=None, key=None) -> None:
        self.report.violations.append(Violation(str(path), row, key, rule, message))

    # ---- manifest against files --------------------------------------------------
    def _manifest(self) -> dict | None:
        path = self.dir / manifest.MANIFEST_NAME
        if not path.exists():
            self.flag(path, "manifest_missing", "no manifest: the run did not finish")
            return None
        try:
            data = files.read_json(path)
        except files.UnreadableFile as e:
            self.flag(path, "manifest_unreadable", e.reason)
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

    def _files(self, kind: str) -> dict[str, Path]:
        """Every regular file in the `kind` folder, by path relative to the directory; anything
        else there (a FIFO, a device, a folder) is flagged and never opened."""
        found = {}
        for path in sorted((self.dir / kind).glob("*")):
            if files.is_regular(path):
                found[path.relative_to(self.dir).as_posix()] = path
            else:
                self.flag(path, "not_a_file", "not a regular file: never opened")
        return found

    def _shards_on_disk(self, kind: str, listed: dict[str, dict]) -> list[Path]:
        """Compare the listing with the files; return the shard files worth reading."""
        on_disk = self._files(kind)
        for rel, path in on_disk.items():
            if path.name.startswith(TMP_PREFIX):
                self.flag(path, "leftover_tmp", "temporary file left by an interrupted write")
            elif listed and rel not in listed:
                self.flag(path, "extra_shard", "file not listed in the manifest")
        for rel, entry in listed.items():
            path = self.dir / rel
            self.report.violations += listed_shard_problems(path, entry)
        return [p for rel, p in on_disk.items() if not p.name.startswith(TMP_PREFIX)
                and (rel in listed or not listed)]

    # ---- one shard --------------------------------------------------------------
    def _open(self, path: Path) -> pa.Schema | None:
        """The shard's schema, or None (flagged) when it is no Arrow IPC file."""
        self.report.shards += 1
        try:
            return read_schema(path)
        except _READ_ERRORS as e:
            self.flag(path, "unreadable_shard", getattr(e, "reason", None) or str(e))
            return None

    def _scan(self, path: Path, on_batch) -> int:
        """Hand every record batch to on_batch(batch, first_row); returns the rows read, up to
        a batch that cannot be read (flagged), and checks them against the manifest."""
        rows = 0
        try:
            for batch in iter_batches(path):
                on_batch(batch, rows)
                rows += batch.num_rows
        except _READ_ERRORS as e:
            self.flag(path, "unreadable_shard", getattr(e, "reason", None) or str(e), row=rows)
        entry = self.entries.get(path.relative_to(self.dir).as_posix())
        if entry is not None and entry["rows"] != rows:
            self.flag(path, "manifest_rows", f"{rows} rows in the file, manifest says {entry['rows']}")
        return rows

    def _check_schema(self, path: Path, actual: pa.Schema, expected: pa.Schema | list[pa.Field],
                      record: str) -> bool:
        ok = True
        for want in expected:
            if want.name not in actual.names:
                self.flag(path, "schema_missing_column", f"column {want.name!r} missing")
                ok = False
            elif not schema.field_matches(want, actual.field(want.name)):
                self.flag(path, "schema_type", f"column {want.name!r} is {actual.field(want.name).type}, "
                          f"schema {record} wants {want.type}")
                ok = False
        for extra in set(actual.names) - set(schema.record(record).names):
            self.flag(path, "schema_extra_column", f"column {extra!r} is not in schema {record}")
        return ok


class _CorpusCheck(_DirCheck):
    """All checks of one corpus (or mix) directory."""

    def __init__(self, directory: Path, report: Report, deep: bool):
        super().__init__(directory, report)
        self.deep = deep
        self.keys: dict[str, str] = {}         # key -> where first seen
        self.status_keys: dict[str, str] = {}
        self.sources: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.decoded: Counter[Path] = Counter()  # images fully decoded, per shard

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

    # ---- one shard --------------------------------------------------------------
    def _check_shard(self, path: Path, record: str) -> None:
        actual = self._open(path)
        if actual is None:
            return
        schema_ok = self._check_schema(path, actual, schema.arrow_schema(record), record)
        rows = self._scan(path, lambda batch, first: self._check_rows(path, batch, first, record, schema_ok))
        self.report.rows += rows if record == "interleaved" else 0

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
                rule, message = problem
                self.flag(path, rule, f"images[{i}]: {message}", row=row, key=key)

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


class _FeaturesCheck(_DirCheck):
    """All checks of one features directory, against the corpus it embeds."""

    def __init__(self, directory: Path, report: Report, corpus_dir: Path | None):
        super().__init__(directory, report)
        self.given_corpus = corpus_dir
        self.corpus_dir: Path | None = None
        self.layout: tuple[Path, dict] | None = None   # the first shard's layout metadata
        self.rows = 0

    def run(self) -> None:
        self.report.directories.append(str(self.dir))
        built = self._manifest()
        self.entries = self._listed(built, corpus.DATA_DIR)
        shards = self._shards_on_disk(corpus.DATA_DIR, self.entries)
        corpus_shards = self._corpus_shards(built)
        if corpus_shards is not None:
            self._check_shard_sets(corpus_shards)
        for path in shards:
            self._check_shard(path, (corpus_shards or {}).get(path.relative_to(self.dir).as_posix()))
        if built is not None and built["rows"] != self.rows:
            self.flag(self.dir / manifest.MANIFEST_NAME, "manifest_rows",
                      f"manifest says {built['rows']} rows, shards hold {self.rows}")

    # ---- the corpus -------------------------------------------------------------
    def _corpus_shards(self, built: dict | None) -> dict[str, dict] | None:
        """The corpus's data shard entries by relative path; None (flagged) when there is no
        usable corpus to check against."""
        where = self.dir / manifest.MANIFEST_NAME
        named = self.given_corpus or (built or {}).get("config", {}).get("corpus")
        if not isinstance(named, (str, Path)) or not str(named):  # absent, or not a path at all
            self.flag(where, "corpus_missing", "no corpus to check against: the manifest names none "
                      "(give one with --corpus)")
            return None
        try:
            found = manifest.read(Path(named))
        except manifest.ManifestError as e:
            self.flag(where, "corpus_missing", f"corpus {named} cannot be used: {e} (give one with --corpus)")
            return None
        if found["schema"]["name"] != "interleaved":
            self.flag(where, "corpus_missing", f"{named} holds {found['schema']['name']} records, not a corpus")
            return None
        self.corpus_dir = Path(named)
        return self._listed(found, corpus.DATA_DIR)

    def _check_shard_sets(self, corpus_shards: dict[str, dict]) -> None:
        on_disk = {rel for rel, p in self._files(corpus.DATA_DIR).items() if not p.name.startswith(TMP_PREFIX)}
        for rel in sorted(set(corpus_shards) - on_disk):
            self.flag(self.dir / rel, "features_missing_shard", f"corpus shard {self.corpus_dir / rel} "
                      "has no feature shard")
        for rel in sorted(on_disk - set(corpus_shards)):
            self.flag(self.dir / rel, "features_stray_shard", f"no corpus shard {rel} in {self.corpus_dir}")

    def _corpus_images(self, entry: dict) -> list[tuple[str, int, int]] | None:
        """(key, image index, corpus row) of every non-null image of one corpus shard, in order;
        None (flagged) when the corpus shard cannot be read. Its problems are the corpus check's."""
        path = self.corpus_dir / entry["path"]
        found, rows = [], 0
        try:
            for batch in iter_batches(path):
                found += image_positions(batch, first_row=rows)
                rows += batch.num_rows
        except (*_READ_ERRORS, KeyError) as e:
            self.flag(path, "corpus_unreadable", f"corpus shard cannot be read for alignment: {e}")
            return None
        return found

    # ---- one feature shard ------------------------------------------------------
    def _check_shard(self, path: Path, corpus_entry: dict | None) -> None:
        actual = self._open(path)
        if actual is None:
            return
        meta = self._check_metadata(path, actual)
        values_as = self._check_columns(path, actual, meta)
        self._check_source(path, meta, corpus_entry)
        positions: list[tuple[str, int]] | None = [] if _has_positions(actual) else None
        rows = self._scan(path, lambda batch, first: self._check_batch(path, batch, first, positions, values_as))
        self.rows += rows
        self.report.rows += rows
        # a shard read only in part would show its unread rows as missing: its unreadable_shard says enough
        if corpus_entry is not None and positions is not None and len(positions) == rows:
            self._check_alignment(path, positions, corpus_entry)

    def _check_columns(self, path: Path, actual: pa.Schema, meta: dict[str, str]) -> tuple[str, int] | None:
        """Columns against the schema the metadata implies; returns the embedding's (storage, size)
        when its values can be read as such, else None."""
        storage_size = _storage_and_size(meta)
        schema_ok = self._check_schema(path, actual, _expected_fields(storage_size), "features")
        if storage_size is None and "embedding" not in actual.names:  # not among the fields just checked
            self.flag(path, "schema_missing_column", "column 'embedding' missing")
        return storage_size if schema_ok else None

    def _check_batch(self, path: Path, batch: pa.RecordBatch, first: int,
                     positions: list | None, values_as: tuple[str, int] | None) -> None:
        keys = batch.column("key").to_pylist() if positions is not None else [None] * batch.num_rows
        if positions is not None:
            positions.extend(zip(keys, batch.column("image_index").to_pylist()))
        self._check_nulls(path, batch, first, keys)
        if values_as is not None:
            self._check_values(path, batch, first, keys, *values_as)

    def _check_metadata(self, path: Path, actual: pa.Schema) -> dict[str, str]:
        """The shard's metadata as text; missing or malformed required keys flagged, and the
        layout compared with the first shard's."""
        meta = {k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in (actual.metadata or {}).items()}
        for name in schema.record("features").required_metadata:
            if name not in meta:
                self.flag(path, "features_metadata_missing", f"schema metadata has no {name!r}")
        for problem in _metadata_problems(meta):
            self.flag(path, "features_metadata_invalid", problem)
        layout = {k: meta.get(k) for k in FEATURE_LAYOUT}
        if self.layout is None:
            self.layout = (path, layout)
        else:
            first, theirs = self.layout
            for k in FEATURE_LAYOUT:
                if layout[k] != theirs[k]:
                    self.flag(path, "features_inconsistent", f"{k} {layout[k]!r} here, {theirs[k]!r} in {first}")
        return meta

    def _check_source(self, path: Path, meta: dict[str, str], corpus_entry: dict | None) -> None:
        """Feature shards record which corpus bytes they embed: other bytes mean stale features."""
        if corpus_entry is None:
            return
        made_from = meta.get("emu_data.corpus_sha256")
        if made_from is not None and made_from != corpus_entry["sha256"]:
            self.flag(path, "features_stale", f"made from corpus shard bytes {made_from[:16]}..., the corpus "
                      f"now holds {corpus_entry['sha256'][:16]}...: rerun emu-data features")
        named = meta.get("emu_data.corpus_shard")
        if named is not None and named != corpus_entry["path"]:
            self.flag(path, "features_stale", f"made from corpus shard {named}, not {corpus_entry['path']}")

    def _check_nulls(self, path: Path, batch: pa.RecordBatch, first: int, keys: list) -> None:
        for f in schema.record("features").fields:
            column = batch.column(f.name) if f.name in batch.schema.names else None
            if f.nullable or column is None or not column.null_count:
                continue
            for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                self.flag(path, "not_null", f"{f.name} is null", row=first + int(i), key=keys[i])

    def _check_values(self, path: Path, batch: pa.RecordBatch, first: int, keys: list,
                      storage: str, size: int) -> None:
        embedding = batch.column("embedding")
        values = embedding.values.slice(embedding.offset * size, len(embedding) * size)  # .values ignores the slice
        if storage == "uint16":  # bfloat16 bits: the top half of a float32
            bits = values.fill_null(BF16_NAN).to_numpy()
            matrix = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            matrix = values.to_numpy(zero_copy_only=False)  # nulls become NaN
        matrix = matrix.reshape(len(embedding), size)
        finite = np.isfinite(matrix)
        bad = ~finite.all(axis=1) & embedding.is_valid().to_numpy(zero_copy_only=False)  # null rows: not_null
        for i in np.flatnonzero(bad):
            self.flag(path, "embedding_not_finite", f"{size - int(finite[i].sum())} of {size} values are "
                      "NaN, inf or null", row=first + int(i), key=keys[i])

    def _check_alignment(self, path: Path, positions: list[tuple[str, int]], corpus_entry: dict) -> None:
        """Rows must be the corpus shard's non-null images, each once, in corpus order."""
        expected = self._corpus_images(corpus_entry)
        if expected is None:
            return
        corpus_rows = {(k, i): r for k, i, r in expected}
        seen: dict[tuple[str, int], int] = {}
        for row, (key, index) in enumerate(positions):
            if (key, index) in seen:
                self.flag(path, "embedding_duplicate", f"images[{index}] already embedded at row "
                          f"{seen[key, index]}", row=row, key=key)
            elif (key, index) not in corpus_rows:
                self.flag(path, "embedding_stray", f"images[{index}] is no image of corpus shard "
                          f"{self.corpus_dir / path.relative_to(self.dir)}", row=row, key=key)
            else:
                seen[key, index] = row
        for key, index, corpus_row in expected:
            if (key, index) not in seen:
                self.flag(path, "embedding_missing", f"images[{index}] (corpus row {corpus_row}) has no "
                          "embedding", key=key)
        self._check_order(path, seen, [(k, i) for k, i, _ in expected if (k, i) in seen])

    def _check_order(self, path: Path, seen: dict[tuple[str, int], int], wanted: list[tuple[str, int]]) -> None:
        """One violation at the first row out of corpus order (the rest follow from it)."""
        at_row = {row: pair for pair, row in seen.items()}
        for (key, index), row in zip(wanted, sorted(at_row)):
            if seen[key, index] != row:
                found_key, found_index = at_row[row]
                self.flag(path, "embedding_order", f"images[{found_index}] out of corpus order: the corpus "
                          f"puts key {key} images[{index}] here", row=row, key=found_key)
                return


def image_positions(batch: pa.RecordBatch, first_row: int = 0) -> list[tuple[str, int, int]]:
    """(key, image index, row) of every non-null image of a corpus batch, in order. Only the
    list offsets and validity bitmaps are read: image bytes stay untouched on disk."""
    images = batch.column("images")
    offsets = images.offsets.to_numpy()   # of this slice, pointing into the whole .values
    lengths = np.diff(offsets)
    lengths[~images.is_valid().to_numpy(zero_copy_only=False)] = 0  # a null list holds no images
    rows = np.repeat(np.arange(len(images)), lengths)
    index = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    item_valid = images.values.is_valid().to_numpy(zero_copy_only=False)[np.repeat(offsets[:-1], lengths) + index]
    keys = batch.column("key").to_numpy(zero_copy_only=False)
    return [(keys[r], int(i), first_row + int(r)) for r, i in zip(rows[item_valid], index[item_valid])]


def _metadata_problems(meta: dict[str, str]) -> list[str]:
    found = []
    if "shape" in meta and _shape(meta["shape"]) is None:
        found.append(f"shape {meta['shape']!r} is not a JSON list of positive integers")
    if "dtype" in meta and meta["dtype"] not in FEATURE_STORAGE:
        found.append(f"dtype {meta['dtype']!r} is not one of {', '.join(FEATURE_STORAGE)}")
    if "tokens" in meta and meta["tokens"] not in encoder.TOKENS:
        found.append(f"tokens {meta['tokens']!r} is not one of {', '.join(encoder.TOKENS)}")
    if "preprocess" in meta:
        try:
            ok = isinstance(files.loads_json(meta["preprocess"]), dict)
        except files.JsonError:
            ok = False
        if not ok:
            found.append("preprocess is not a JSON object")
    return found


def _shape(text: str) -> list[int] | None:
    try:
        shape = files.loads_json(text)
    except files.JsonError:
        return None
    good = (isinstance(shape, list) and shape
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape))
    return shape if good else None


def _storage_and_size(meta: dict[str, str]) -> tuple[str, int] | None:
    """The embedding's Arrow storage and flat length the metadata implies, or None if it can't say."""
    shape = _shape(meta.get("shape", ""))
    if shape is None or meta.get("dtype") not in FEATURE_STORAGE:
        return None
    return FEATURE_STORAGE[meta["dtype"]], math.prod(shape)


def _expected_fields(storage_size: tuple[str, int] | None) -> list[pa.Field]:
    """The features columns; without usable shape/dtype metadata the embedding's type is unknown,
    so only its presence is checked (the metadata violation says why)."""
    if storage_size is not None:
        storage, size = storage_size
        return list(schema.arrow_schema("features", params={"storage": storage, "size": size}))
    return [pa.field(f.name, schema.parse_type(f.type)) for f in schema.record("features").fields
            if "{" not in f.type]


def _has_positions(actual: pa.Schema) -> bool:
    """Whether key and image_index can be read for alignment, whatever the embedding's state."""
    names = actual.names
    return ("key" in names and pa.types.is_string(actual.field("key").type)
            and "image_index" in names and pa.types.is_integer(actual.field("image_index").type))


def image_problem(data: bytes, *, decode: bool) -> tuple[str, str] | None:
    """(rule, why) when `data` is not a usable image, else None. decode=False parses the
    header only. Above Pillow's MAX_IMAGE_PIXELS (its warning zone too) the rule is
    decompression_bomb, found from the header and never decoded; else image_decode."""
    try:
        with images.opened(data, load=decode) as image:
            if image.format not in images.STORED_FORMATS:
                return "image_decode", f"format {image.format} is not JPEG, PNG or WebP"
    except images.ImageRejected as e:
        return ("decompression_bomb" if e.reason == "decompression_bomb" else "image_decode"), str(e)
    return None
