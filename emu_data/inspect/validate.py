"""`emu-data validate`: check every shard and manifest under a path against the schemas.

Each problem becomes one Violation naming the file, row, key and rule; nothing in the
input, however broken, escapes as a traceback. Images are opened (header parsed) one and
all, and fully decoded for a sample of each shard, or all of them with `deep`.

A features directory (`emu-data features`, manifest schema "features") is checked against
its corpus instead: one feature shard per corpus data shard, one row per non-null corpus
image in corpus order, consistent metadata, finite values. The corpus is read memory-mapped
and its image bytes are never touched (only the validity of `images` items).

How a corpus is checked, in memory that does not grow with it (2.3B LAION rows would be
~230 GB of keys in a dict, and 32 hours in one process):
  1. the driver reads each directory's manifest and lists its files (what is missing, extra,
     left over) and cuts its shards into tasks: runs of consecutive shards of one kind;
  2. each task (Ray, through engine.runtime.map_tasks; in this process without `Spread.ray`)
     checks its shards against the manifest (bytes, sha256, rows), the schema, row by row
     and image by image, and returns the violations (at most `keep_per_rule` of each rule a
     shard, all of them counted) and counts; it spills each row's key and position into one
     hash-partitioned file (unique_keys.py) in a temporary folder: under the system temp dir
     or Spread.spill_dir, never in a directory it validates (which may be read-only);
  3. one task per partition finds the keys that repeat within one directory's data shards
     (or its status shards: another namespace) and names each repeat's first occurrence.
The driver holds counts, the shard list and at most `keep_per_rule` violations of each
rule (the first ones in report order); every violation is counted, so `summary()`, `ok`
and the exit code tell the true totals.

Report order: directory by directory as one process reads them: the manifest; the data
folder's listing, then each data shard in name order; the same for status; the manifest's
totals. Then every duplicate_key, in the order of the repeat's position (directories in
order, data shards then status shards, rows in order). Which worker ran what never changes
the report: it is the same in one process, with one CPU or on a cluster.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa

from emu_data.core import corpus, errors, files, images, manifest, partitions, schema
from emu_data.inspect import unique_keys
from emu_data.ops import encoder
from emu_data.core.shards import (SHARD_SUFFIX, TMP_PREFIX, OutputError, ShardError, file_sha256, iter_batches,
                                  read_schema)

if TYPE_CHECKING:
    from emu_data.engine.runtime import RayOptions

DECODE_PER_SHARD = 32  # images fully decoded per shard unless --deep
KEEP_PER_RULE = 10_000  # violations of one rule held in a Report; the rest are counted only
ROWS_PER_TASK = 200_000  # at most, in one shard task (~10 s of checks); more tasks when fewer rows
TASKS_PER_CPU = 4
BYTES_PER_ROW_GUESS = 100  # rows of a shard the manifest does not list, from its size (task sizes only)
MIN_ROW_BYTES = 16  # Arrow offsets alone take more a row: a manifest claiming more rows is not believed
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
    violations: list[Violation] = field(default_factory=list)  # the first KEEP_PER_RULE of each rule
    counts: Counter = field(default_factory=Counter)            # every violation, by rule
    shards: int = 0
    rows: int = 0
    images: int = 0
    decoded: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return not self.total

    def summary(self) -> str:
        verdict = "clean" if self.ok else f"{self.total} violation(s)"
        by_rule = "" if self.ok else " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items())) + ")"
        return (f"{len(self.directories)} director(ies), {self.shards} shard(s), {self.rows} row(s), "
                f"{self.images} image(s) opened, {self.decoded} fully decoded: {verdict}{by_rule}")


@dataclass(frozen=True)
class Spread:
    """Where validate's tasks run and spill. None of it changes the report."""

    ray: RayOptions | None = None       # None: every task in this process, no Ray
    spill_dir: Path | None = None       # the spill folder's parent; on a cluster every node must see it
    rows_per_partition: int = partitions.DEFAULT_ROWS_PER_PARTITION


def validate(paths: list[Path], *, deep: bool = False, corpus: Path | None = None, spread: Spread = Spread(),
             keep_per_rule: int | None = None) -> Report:
    """Check every output directory under `paths`. Features directories are checked against
    `corpus` if given, else against the corpus their manifest names. The report holds the
    first `keep_per_rule` (default KEEP_PER_RULE) violations of each rule and counts them all."""
    found = _Found(KEEP_PER_RULE if keep_per_rule is None else keep_per_rule)
    corpora = []
    for number, directory in enumerate(find_output_dirs(paths)):
        _refuse_export(directory)
        if record_name(directory) == "features":
            _FeaturesCheck(directory, found, corpus).run()
        else:
            corpora.append(_CorpusCheck(directory, found, number).plan())
    if corpora:
        _check_corpora(corpora, found, deep, spread)
    return found.report()


def _refuse_export(directory: Path) -> None:
    try:
        built = files.read_json(directory / manifest.MANIFEST_NAME)
    except files.UnreadableFile:
        return
    if isinstance(built, dict):
        corpus.refuse_export(directory, built)


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


# ---- what the driver keeps ----------------------------------------------------------------

class _Found:
    """The report being built. Violations arrive in any order, each with its place in the
    report (a tuple; `slot()` hands out places in reading order): every one is counted, and
    of each rule the first `keep` by place are held (sorted and cut whenever 2 x keep are)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.counts: Counter = Counter()
        self._held: dict[str, list] = defaultdict(list)
        self._slots = count()
        self.partial = Report()   # directories and counts of shards, rows, images

    def slot(self) -> int:
        return next(self._slots)

    def add(self, v: Violation, at: tuple | None = None, counted: bool = True) -> None:
        """Add v at place `at` (default: the next slot); counted=False: counted already."""
        if counted:
            self.counts[v.rule] += 1
        if self.keep <= 0:
            return
        held = self._held[v.rule]
        held.append((at if at is not None else (0, self.slot(), 0), v))
        if len(held) >= 2 * self.keep:
            self._cut(held)

    def _cut(self, held: list) -> None:
        held.sort(key=lambda pair: pair[0])
        del held[self.keep:]

    def report(self) -> Report:
        kept = []
        for held in self._held.values():
            self._cut(held)
            kept += held
        self.partial.violations = [v for _, v in sorted(kept, key=lambda pair: pair[0])]
        self.partial.counts = Counter(self.counts)
        return self.partial


# ---- checks of shard files, in the driver or in a task --------------------------------------

class _ShardChecks:
    """Opening shards, their columns and row counts; flag() hands each finding to put()."""

    def put(self, v: Violation) -> None:
        raise NotImplementedError

    def flag(self, path: Path, rule: str, message: str, row=None, key=None) -> None:
        self.put(Violation(str(path), row, key, rule, message))

    def _read_schema(self, path: Path) -> pa.Schema | None:
        """The shard's schema, or None (flagged) when it is no Arrow IPC file."""
        try:
            return read_schema(path)
        except _READ_ERRORS as e:
            self.flag(path, "unreadable_shard", getattr(e, "reason", None) or str(e))
            return None

    def _read_rows(self, path: Path, on_batch, listed_rows: int | None) -> int:
        """Hand every record batch to on_batch(batch, first_row); returns the rows read, up to
        a batch that cannot be read (flagged), and checks them against the manifest's."""
        rows = 0
        try:
            for batch in iter_batches(path):
                on_batch(batch, rows)
                rows += batch.num_rows
        except _READ_ERRORS as e:
            self.flag(path, "unreadable_shard", getattr(e, "reason", None) or str(e), row=rows)
        if listed_rows is not None and listed_rows != rows:
            self.flag(path, "manifest_rows", f"{rows} rows in the file, manifest says {listed_rows}")
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


class _DirCheck(_ShardChecks):
    """What the checks of every output directory share, in the driver: the manifest against
    the files; its findings go to the report in reading order."""

    def __init__(self, directory: Path, found: _Found):
        self.dir = directory
        self.found = found
        self.report = found.partial
        self.entries: dict[str, dict] = {}     # manifest entries by relative path

    def put(self, v: Violation) -> None:
        self.found.add(v)

    def _open(self, path: Path) -> pa.Schema | None:
        self.report.shards += 1
        return self._read_schema(path)

    def _scan(self, path: Path, on_batch) -> int:
        entry = self.entries.get(path.relative_to(self.dir).as_posix())
        return self._read_rows(path, on_batch, None if entry is None else entry["rows"])

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

    def _unlisted_and_leftover(self, on_disk: dict[str, Path], listed: dict[str, dict]) -> None:
        for rel, path in on_disk.items():
            if path.name.startswith(TMP_PREFIX):
                self.flag(path, "leftover_tmp", "temporary file left by an interrupted write")
            elif listed and rel not in listed:
                self.flag(path, "extra_shard", "file not listed in the manifest")

    @staticmethod
    def _to_read(on_disk: dict[str, Path], listed: dict[str, dict]) -> dict[str, Path]:
        """The shard files worth reading: listed ones, or all without a listing."""
        return {rel: p for rel, p in on_disk.items() if not p.name.startswith(TMP_PREFIX)
                and (rel in listed or not listed)}

    def _shards_on_disk(self, kind: str, listed: dict[str, dict]) -> list[Path]:
        """Compare the listing with the files; return the shard files worth reading."""
        on_disk = self._files(kind)
        self._unlisted_and_leftover(on_disk, listed)
        for rel, entry in listed.items():
            for v in listed_shard_problems(self.dir / rel, entry):
                self.put(v)
        return list(self._to_read(on_disk, listed).values())


# ---- corpus directories: planned here, checked in tasks ----------------------------------------

@dataclass(frozen=True)
class ShardJob:
    """One shard file of a corpus directory, as a task checks it."""

    path: Path
    record: str                   # interleaved | status
    ns: int                       # its keys' namespace: directory number x 2, + 1 for status
    entry: dict | None = None     # its manifest entry
    listed_at: int | None = None  # where its manifest entry's findings go (None: not listed)
    read_at: int | None = None    # where its own findings go, and its keys' positions (None: not read)

    @property
    def guessed_rows(self) -> int:
        """Its manifest's row count (no more than its size allows), else a guess from its size."""
        if self.read_at is None:
            return 0
        try:
            size = self.path.stat().st_size
        except OSError:
            return 0
        if self.entry is not None:
            return min(self.entry["rows"], size // MIN_ROW_BYTES)
        return size // BYTES_PER_ROW_GUESS


@dataclass
class ShardResult:
    """What a task found in one shard: small, whatever the shard's size."""

    listed: list[Violation]       # the file against its manifest entry
    found: list[Violation]        # its own: at most keep of each rule
    counts: Counter               # every violation of both, by rule
    opened: int = 0
    rows: int = 0
    images: int = 0
    decoded: int = 0
    sources: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)


@dataclass
class TaskResult:
    shards: list[ShardResult]
    spill: str | None = None      # its keys' spill file; None: it read no key
    spill_error: str | None = None


@dataclass(frozen=True)
class CheckShards:
    """The shard task: check a run of ShardJobs, spill their keys. Shipped once per run."""

    deep: bool
    spill_dir: str
    parts: int
    keep: int
    plugin_sources: tuple[str, ...] = ()   # registered in the driver, maybe not in a worker

    def __call__(self, item: tuple[int, tuple[ShardJob, ...]]) -> TaskResult:
        number, jobs = item
        spill = unique_keys.Spill()
        shards = [_ShardCheck(job, self, spill).run() for job in jobs]
        path = Path(self.spill_dir) / f"keys-{number:08d}.arrow"
        try:
            return TaskResult(shards, str(path) if spill.write(path, self.parts) else None)
        except OutputError as e:
            return TaskResult(shards, None, str(e))


class _ShardCheck(_ShardChecks):
    """All checks of one corpus shard, in a task."""

    def __init__(self, job: ShardJob, task: CheckShards, spill: unique_keys.Spill):
        self.job, self.task, self.spill = job, task, spill
        self.result = ShardResult([], [], Counter())

    def put(self, v: Violation) -> None:
        self.result.counts[v.rule] += 1
        if self.result.counts[v.rule] <= self.task.keep:
            self.result.found.append(v)

    def run(self) -> ShardResult:
        job = self.job
        if job.listed_at is not None:
            self.result.listed = listed_shard_problems(job.path, job.entry)
            self.result.counts.update(v.rule for v in self.result.listed)
        if job.read_at is not None:
            self._check_shard()
        return self.result

    def _check_shard(self) -> None:
        path, record = self.job.path, self.job.record
        self.result.opened = 1
        actual = self._read_schema(path)
        if actual is None:
            return
        schema_ok = self._check_schema(path, actual, schema.arrow_schema(record), record)
        listed_rows = None if self.job.entry is None else self.job.entry["rows"]
        self.result.rows = self._read_rows(path, lambda batch, first: self._check_batch(batch, first, schema_ok),
                                           listed_rows)

    def _check_batch(self, batch: pa.RecordBatch, first: int, schema_ok: bool) -> None:
        if "key" in batch.schema.names and pa.types.is_string(batch.schema.field("key").type):
            self.spill.add(self.job.ns, self.job.read_at, first, batch.column("key"))
        if schema_ok:  # rows of a wrong-typed shard can't be read as records; keys still can
            self._check_rows(batch, first)

    def _check_rows(self, batch: pa.RecordBatch, offset: int) -> None:
        path, interleaved = self.job.path, self.job.record == "interleaved"
        problems = schema.interleaved_problems if interleaved else schema.status_problems
        for i, row in enumerate(batch.to_pylist()):
            n = offset + i
            key = row.get("key")
            for rule, message in problems(row):
                if not (rule == "enum" and row.get("source") in self.task.plugin_sources
                        and message.startswith("source ")):
                    self.flag(path, rule, message, row=n, key=key)
            if interleaved:
                self.result.sources[row["source"]] += 1
                self._check_images(n, key, row["images"])
            else:
                self.result.statuses[row["status"]] += 1

    def _check_images(self, row: int, key: str, images: list) -> None:
        for i, cell in enumerate(images):
            if cell is None or cell.get("bytes") is None:
                continue
            self.result.images += 1
            decode = self.task.deep or self.result.decoded < DECODE_PER_SHARD
            problem = image_problem(cell["bytes"], decode=decode)
            self.result.decoded += decode
            if problem:
                rule, message = problem
                self.flag(self.job.path, rule, f"images[{i}]: {message}", row=row, key=key)


class _CorpusCheck(_DirCheck):
    """One corpus (or mix) directory in the driver: its listing, its shards cut into jobs,
    and at the end its manifest's totals against what the tasks counted."""

    def __init__(self, directory: Path, found: _Found, number: int):
        super().__init__(directory, found)
        self.number = number
        self.built: dict | None = None
        self.jobs: list[ShardJob] = []
        self.totals_at = -1                  # where the manifest's totals' findings go
        self.sources: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()

    def plan(self) -> _CorpusCheck:
        """The manifest and the listing checked here; the shards made into jobs."""
        self.report.directories.append(str(self.dir))
        self.built = self._manifest()
        for kind_number, (kind, record) in enumerate(((corpus.DATA_DIR, "interleaved"),
                                                       (corpus.STATUS_DIR, "status"))):
            self._plan_kind(kind, record, 2 * self.number + kind_number)
        self.totals_at = self.found.slot()
        return self

    def _plan_kind(self, kind: str, record: str, ns: int) -> None:
        listed = self._listed(self.built, kind)
        on_disk = self._files(kind)
        self._unlisted_and_leftover(on_disk, listed)
        jobs: dict[str, dict] = {}
        for rel, entry in listed.items():
            path = self.dir / rel
            if files.is_regular(path):   # its bytes and sha256 are the task's
                jobs[rel] = {"path": path, "entry": entry, "listed_at": self.found.slot()}
            else:
                self.flag(path, "missing_shard", "listed in the manifest but not on disk")
        for rel, path in self._to_read(on_disk, listed).items():
            jobs.setdefault(rel, {"path": path})["read_at"] = self.found.slot()
        self.jobs += sorted((ShardJob(record=record, ns=ns, **job) for job in jobs.values()),
                            key=lambda j: (j.read_at is None, j.read_at, j.listed_at))

    def take(self, job: ShardJob, result: ShardResult) -> None:
        for n, v in enumerate(result.listed):
            self.found.add(v, (0, job.listed_at, n), counted=False)
        for n, v in enumerate(result.found):
            self.found.add(v, (0, job.read_at, n), counted=False)
        self.found.counts.update(result.counts)
        self.report.shards += result.opened
        self.report.rows += result.rows if job.record == "interleaved" else 0
        self.report.images += result.images
        self.report.decoded += result.decoded
        self.sources.update(result.sources)
        self.statuses.update(result.statuses)

    def failed(self, job: ShardJob, error: str) -> None:
        """A task that died (its worker killed, out of memory): its shards are unchecked."""
        at = job.read_at if job.read_at is not None else job.listed_at
        self.found.add(Violation(str(job.path), None, None, "unreadable_shard", f"not checked: its task failed: "
                                 f"{error}"), (0, at, 0))

    def check_totals(self) -> None:
        if self.built is None:
            return
        path, built = self.dir / manifest.MANIFEST_NAME, self.built

        def flag(rule: str, message: str, n: int) -> None:
            self.found.add(Violation(str(path), None, None, rule, message), (0, self.totals_at, n))

        actual_rows = sum(self.sources.values())
        if built["rows"] != actual_rows:
            flag("manifest_rows", f"manifest says {built['rows']} rows, shards hold {actual_rows}", 0)
        if dict(self.sources) != built["source_counts"]:
            flag("manifest_counts", f"source counts {dict(self.sources)} != manifest {built['source_counts']}", 1)
        if dict(self.statuses) != built["status_counts"]:
            flag("manifest_counts", f"status counts {dict(self.statuses)} != manifest {built['status_counts']}", 2)


def _check_corpora(corpora: list[_CorpusCheck], found: _Found, deep: bool, spread: Spread) -> None:
    """Every shard job in tasks, then the key partitions; then each directory's totals."""
    jobs = [job for c in corpora for job in c.jobs]
    if jobs:
        guessed = sum(job.guessed_rows for job in jobs)
        parts = partitions.partitions_for(guessed, spread.rows_per_partition)
        with _spill_folder(spread.spill_dir, [c.dir for c in corpora]) as folder:
            task = CheckShards(deep, str(folder), parts, found.keep, _plugin_sources())
            by_ns = {job.ns: c for c in corpora for job in c.jobs}
            spills = _check_shards(task, _runs(jobs, _rows_per_task(guessed, spread)), by_ns, spread)
            if spills:
                _find_duplicates(spills, parts, found, {j.read_at: str(j.path) for j in jobs}, spread)
    for c in corpora:
        c.check_totals()


def _check_shards(task: CheckShards, runs: list[tuple[ShardJob, ...]], by_ns: dict[int, _CorpusCheck],
                  spread: Spread) -> list[str]:
    """The shard tasks, each shard's findings handed to its directory; returns the spill files."""
    spills = []
    for (_, run), result in _map(task, list(enumerate(runs)), spread, "validate: shards"):
        if not isinstance(result, TaskResult):   # a runtime.TaskFailure: the worker died, or a bug
            for job in run:
                by_ns[job.ns].failed(job, result.error)
            continue
        if result.spill_error is not None:
            raise errors.UsageError(f"cannot spill keys into {task.spill_dir}: {result.spill_error} "
                                    "(give --spill-dir a folder with room)")
        for job, shard in zip(run, result.shards):
            by_ns[job.ns].take(job, shard)
        if result.spill is not None:
            spills.append(result.spill)
    return sorted(spills)


def _find_duplicates(spills: list[str], parts: int, found: _Found, path_at: dict[int, str], spread: Spread) -> None:
    task = unique_keys.FindDuplicates(tuple(spills), found.keep)
    for p, result in _map(task, list(range(parts)), spread, "validate: keys"):
        if not isinstance(result, tuple):
            raise errors.UsageError(f"the duplicate-key pass failed on partition {p}: {result.error} (on a "
                                    "cluster, --spill-dir must be a folder every node sees)")
        repeats, total = result
        found.counts["duplicate_key"] += total
        for d in repeats:
            found.add(Violation(path_at[d.slot], d.row, d.key, "duplicate_key",
                                f"key also at {path_at[d.first_slot]}:{d.first_row}"), (1, d.slot, d.row), counted=False)


def _runs(jobs: list[ShardJob], rows: int) -> list[tuple[ShardJob, ...]]:
    """Consecutive jobs of one namespace, up to `rows` guessed rows a run (one job at least).
    Fewer spill files: a partition's task opens every one of them."""
    runs: list[list[ShardJob]] = []
    held = 0
    for job in jobs:
        if not runs or runs[-1][-1].ns != job.ns or held + job.guessed_rows > rows:
            runs.append([])
            held = 0
        runs[-1].append(job)
        held += job.guessed_rows
    return [tuple(run) for run in runs]


def _rows_per_task(rows: int, spread: Spread) -> int:
    """ROWS_PER_TASK, or fewer so that every CPU gets TASKS_PER_CPU tasks."""
    cpus = 1
    if spread.ray is not None:
        from emu_data.engine import runtime

        cpus = runtime.cluster_cpus(runtime.ensure_ray(spread.ray))
    return max(1, min(ROWS_PER_TASK, math.ceil(rows / (TASKS_PER_CPU * cpus))))


def _map(fn: Callable, items: list, spread: Spread, desc: str) -> Iterator[tuple[object, object]]:
    """(item, fn(item)) in Ray tasks (a runtime.TaskFailure for one that failed), or here."""
    if spread.ray is None:
        for item in items:
            yield item, fn(item)
        return
    from emu_data.engine import runtime

    yield from runtime.map_tasks(fn, items, options=spread.ray, desc=desc, total=len(items))


@contextlib.contextmanager
def _spill_folder(parent: Path | None, checked: list[Path]) -> Iterator[Path]:
    """A new temporary folder under `parent` (default: the system temp dir), removed after;
    never inside a directory being validated."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    for directory in checked:
        if parent.resolve().is_relative_to(directory.resolve()):
            raise errors.UsageError(f"spill folder {parent} is inside {directory}, which validate only reads: "
                                    "give --spill-dir another folder")
    try:
        folder = Path(tempfile.mkdtemp(prefix="emu-data-validate-", dir=parent))
    except OSError as e:
        raise errors.UsageError(f"cannot make a spill folder in {parent}: {e.strerror or e} "
                                "(give --spill-dir a writable folder)") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plugin_sources() -> tuple[str, ...]:
    from emu_data import sources

    return sources.registered_kind_names()


class _FeaturesCheck(_DirCheck):
    """All checks of one features directory, against the corpus it embeds."""

    def __init__(self, directory: Path, found: _Found, corpus_dir: Path | None):
        super().__init__(directory, found)
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
