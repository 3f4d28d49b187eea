"""The corpus directory: layout, per-unit commits, resume, and the manifest written last.

    DIR/
      _config.json        resolved config of the run (written first, for crashed runs too)
      data/UNIT-NNNNN.arrow    interleaved samples
      status/UNIT-NNNNN.arrow  one row per input item
      _parts/UNIT.json    a unit's commit marker: its shards and counts
      README.md           dataset card so `datasets.load_dataset(DIR)` finds the data
      _manifest.json      written last: the directory's commit point
      .lock               writers' lock (below)

Work is split into deterministic units. A unit writes its shards under names derived from
its id, then commits them by writing `_parts/UNIT.json`. A rerun keeps committed units,
deletes whatever an interrupted unit left behind and redoes only that unit, so the result
equals an uninterrupted run.

A driver killed with kill -9 leaves Ray workers that finish (or die in) the unit they hold
for a while after it. Every unit writer holds a shared lock on `.lock` while it writes; a
run takes it exclusively while it prepares the directory, so it waits for such writers
before deciding what is committed and deleting what is not. The run also writes its id into
`.lock` then; a unit writer reads it under its shared lock and refuses to start for any other
run, so a task the killed run had queued, started after the rerun prepared, writes nothing
(it once replaced a shard the rerun had committed). Before the manifest, whatever no committed
unit claims (an attempt that died on a worker) is removed once more, so the finished
directory holds exactly the listed files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import errors, files, manifest, records, schema
from emu_data.core.shards import SHARD_SUFFIX, TMP_PREFIX, OutputError, ShardLimits, ShardWriter, file_sha256, writing

log = logging.getLogger(__name__)

DATA_DIR, STATUS_DIR, PARTS_DIR = "data", "status", "_parts"
CONFIG_NAME, CARD_NAME, LOCK_NAME = "_config.json", "README.md", ".lock"
DATA_SUFFIXES = (SHARD_SUFFIX, ".tar", ".parquet")   # what a stage writes under data/ (export's too)


class StaleRun(RuntimeError):
    """A unit writer of a run that another run has since replaced in the same directory."""


class LayoutChanged(errors.UsageError):
    """The directory holds a run made with another configuration; mixing them is refused."""


@dataclass(frozen=True)
class Unit:
    """A deterministic piece of work; `payload` must pickle (it travels to a Ray worker)."""

    id: str
    payload: object

    @property
    def digest(self) -> str:
        """What the unit holds: a committed unit whose inputs changed since is redone."""
        return hashlib.sha256(repr(self.payload).encode()).hexdigest()[:16]


class UnitWriter:
    """Everything one unit writes: samples, status rows, then its commit marker."""

    def __init__(self, out: Path, unit_id: str, limits: ShardLimits, writer=None):
        """writer(directory, prefix, record, limits, root) -> a writer of that record's rows
        with ShardWriter's contract (default: arrow_writer; export writes tar or Parquet)."""
        self.out = Path(out)
        self.unit_id = unit_id
        writer = writer or arrow_writer
        self.samples = writer(self.out / DATA_DIR, unit_id, "interleaved", limits, self.out)
        self.status_rows = writer(self.out / STATUS_DIR, unit_id, "status", limits, self.out)
        self.status_counts: Counter[str] = Counter()
        self.source_counts: Counter[str] = Counter()

    def add_sample(self, row: dict) -> None:
        records.check(row)
        self.samples.write(row)
        self.source_counts[row["source"]] += 1

    def add_status(self, row: dict) -> None:
        self.status_rows.write(row)
        self.status_counts[row["status"]] += 1

    def add_table(self, table: pa.Table) -> dict[int, str]:
        """Samples already in Arrow form and checked (batchcheck.unsound_rows): written at
        once; returns {row: why} for the rows the writer could not write."""
        refused = self.samples.write_table(table)
        sources = table.column("source")
        if refused:
            sources = sources.filter(~np.isin(np.arange(table.num_rows), list(refused)))
        self.source_counts.update(_value_counts(sources))
        return refused

    def add_status_table(self, table: pa.Table) -> None:
        self.status_rows.write_table(table)
        self.status_counts.update(_value_counts(table.column("status")))

    def commit(self, fingerprint: str, digest: str) -> dict:
        part = {
            "unit": self.unit_id,
            "fingerprint": fingerprint,
            "digest": digest,
            "shards": [s.to_dict() for s in self.samples.close()],
            "status_shards": [s.to_dict() for s in self.status_rows.close()],
            "status_counts": dict(self.status_counts),
            "source_counts": dict(self.source_counts),
        }
        parts_dir = self.out / PARTS_DIR
        with writing(parts_dir):
            parts_dir.mkdir(parents=True, exist_ok=True)
        manifest.write_json_atomic(parts_dir / f"{self.unit_id}.json", part)
        return part


def _value_counts(column) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()}


def arrow_writer(directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path) -> ShardWriter:
    """A corpus's own shards: Arrow IPC files of the record's schema."""
    return ShardWriter(directory, prefix, schema.arrow_schema(record), limits, root=root)


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class _Lock:
    """The open `.lock` file: its content is the id of the run that last prepared the directory."""

    def __init__(self, fd: int):
        self.fd = fd

    def owner(self) -> str:
        return os.pread(self.fd, 256, 0).decode("ascii", "replace").strip()

    def claim(self, run_id: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, run_id.encode("ascii"), 0)


@contextlib.contextmanager
def unit_writing(out: Path, run_id: str | None):
    """Held by a unit writer: the shared lock, for the run that prepared `out` (run_id), only.
    None skips the check (a writer outside any run, as in tests of the commit protocol)."""
    with writers_lock(out, exclusive=False) as lock:
        if run_id is not None and lock.owner() != run_id:
            raise StaleRun(f"{out} was prepared by another run since this unit was handed out; "
                           "it is not written (a task of a stopped run)")
        yield


@contextlib.contextmanager
def writers_lock(out: Path, *, exclusive: bool):
    """Hold `out/.lock`: shared by every unit writer, exclusive while a run prepares `out`.

    A filesystem without POSIX locks gets a warning and no lock (the protection is lost,
    nothing else changes)."""
    path = Path(out) / LOCK_NAME
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            try:
                fcntl.lockf(fd, kind | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if exclusive:
                    holder = _lock_holder(fd)
                    log.warning("%s: waiting for %s to finish the unit it is writing (a worker of an "
                                "earlier run that was stopped?)", out,
                                f"process {holder}" if holder else "another process")
                fcntl.lockf(fd, kind)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("%s: no file locks on this filesystem (%s); a rerun must not start while "
                        "workers of a killed run may still be writing", out, os.strerror(e.errno))
        yield _Lock(fd)
    finally:
        os.close(fd)   # releases the lock


def _lock_holder(fd: int) -> int | None:
    """The pid of a process holding a lock on fd's file (Linux's struct flock), else None."""
    if not sys.platform.startswith("linux"):
        return None
    layout = "hhqqi4x"   # l_type, l_whence, l_start, l_len, l_pid
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, 0, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack(layout, got)
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def prepare(out: Path, config: dict, fingerprint: str, units: list[Unit], *,
            overwrite: bool = False, redo=None, run_id: str | None = None) -> dict[str, dict]:
    """Make `out` ready for a run; return the committed parts that can be kept, by unit id.

    Kept: parts of the given units whose inputs are unchanged (same digest) and that
    `redo(part)` does not ask to run again (e.g. they hold retryable failures).
    run_id: from now on only unit writers of this run may write (`unit_writing`).
    """
    out = Path(out)
    with writing(out):
        if out.exists() and not out.is_dir():
            raise OutputError(out, "not a directory")
        out.mkdir(parents=True, exist_ok=True)
    # waits for writers a killed run left behind: what they commit meanwhile counts
    with writers_lock(out, exclusive=True) as lock, writing(out):
        if run_id is not None:
            lock.claim(run_id)
        if overwrite:
            clear(out)
        _refuse_other_layout(out, fingerprint)
        digests = {u.id: u.digest for u in units}
        parts = {uid: p for uid, p in committed_parts(out).items()
                 if p.get("digest") == digests.get(uid) and not (redo and redo(p))}
        _remove_uncommitted(out, parts)
        manifest.write_json_atomic(out / CONFIG_NAME, config)
    return parts


def _refuse_other_layout(out: Path, fingerprint: str) -> None:
    found = []
    if (out / manifest.MANIFEST_NAME).exists():
        found.append(manifest.read(out)["fingerprint"])
    found += [p["fingerprint"] for p in committed_parts(out, verify=False).values()]
    if any(f != fingerprint for f in found):
        raise LayoutChanged(
            f"{out} holds a run made with a different configuration; use another --out, "
            "or --overwrite to replace it")


def committed_parts(out: Path, *, verify: bool = True) -> dict[str, dict]:
    """Committed units by id; verify: only those whose every shard still hashes to its commit."""
    parts = {}
    for path in sorted((Path(out) / PARTS_DIR).glob("*.json")):
        if path.name.startswith(TMP_PREFIX):
            continue  # a marker still being written (or never renamed): not a commit
        try:
            part = files.read_json(path)
        except files.UnreadableFile:
            continue  # a marker that never finished writing: the unit is redone
        try:
            if not verify or all(_intact(out, s) for s in part["shards"] + part["status_shards"]):
                parts[part["unit"]] = part
        except (KeyError, TypeError):
            continue  # not a marker this tool wrote: the unit is redone
    return parts


def _intact(out: Path, shard: dict) -> bool:
    """A committed shard is still what its unit wrote: same size (a quick no), same sha256. Sizes
    alone once let a rerun call a corrupted directory complete (two runs had written the same
    shard names); hashing costs one read of what is kept, at the read rate of the disk."""
    path = Path(out) / shard["path"]
    try:
        return (files.is_regular(path) and path.stat().st_size == shard["bytes"]
                and file_sha256(path) == shard["sha256"])
    except (OSError, files.UnreadableFile):
        return False


def _remove_uncommitted(out: Path, parts: dict[str, dict]) -> None:
    """Delete temporary files and shards that no committed unit claims: they get rewritten."""
    claimed = {s["path"] for p in parts.values() for s in p["shards"] + p["status_shards"]}
    for sub in (DATA_DIR, STATUS_DIR):
        for path in (out / sub).glob("*"):
            rel = path.relative_to(out).as_posix()
            if path.name.startswith(TMP_PREFIX) or (path.suffix in DATA_SUFFIXES and rel not in claimed):
                path.unlink(missing_ok=True)
    for path in (out / PARTS_DIR).glob("*.json"):
        if path.stem not in parts:
            path.unlink(missing_ok=True)
    for name in (manifest.MANIFEST_NAME, TMP_PREFIX + manifest.MANIFEST_NAME,
                 TMP_PREFIX + CONFIG_NAME, TMP_PREFIX + CARD_NAME):
        (out / name).unlink(missing_ok=True)


def clear(out: Path) -> None:
    """Remove what an earlier run wrote (only our own names: never a user's other files)."""
    out = Path(out)
    for sub in (DATA_DIR, STATUS_DIR, PARTS_DIR):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in (manifest.MANIFEST_NAME, CONFIG_NAME, CARD_NAME):
        (out / name).unlink(missing_ok=True)


def finalize(out: Path, *, stage: str, config: dict, fingerprint: str, parts: list[dict],
             card=None) -> dict:
    """Write the dataset card, then the manifest: the run is complete once it exists.
    card(manifest) -> the card's text (default: the Arrow corpus's)."""
    out = Path(out)
    parts = sorted(parts, key=lambda p: p["unit"])
    with writing(out):   # what attempts that died on a worker left: nothing unlisted stays
        _remove_uncommitted(out, {p["unit"]: p for p in parts})
    built = manifest.build(record="interleaved", stage=stage, config=config,
                           fingerprint=fingerprint, parts=parts)
    manifest.write_text_atomic(out / CARD_NAME, card(built) if card is not None else dataset_card(stage))
    manifest.write(out, built)
    return built


def is_complete(out: Path, fingerprint: str) -> bool:
    path = Path(out) / manifest.MANIFEST_NAME
    return path.exists() and manifest.read(out)["fingerprint"] == fingerprint


def dataset_card(stage: str) -> str:
    """A Hugging Face dataset card whose YAML tells `datasets` where the data and status are."""
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        f"  data_files: \"{DATA_DIR}/*{SHARD_SUFFIX}\"\n"
        "  default: true\n"
        "- config_name: status\n"
        f"  data_files: \"{STATUS_DIR}/*{SHARD_SUFFIX}\"\n"
        "---\n"
        f"# emu-data corpus ({stage})\n\n"
        "Interleaved image-text samples in the `interleaved` record (schemas/interleaved.json),\n"
        "one row per input item in the `status` config. Load with\n"
        "`datasets.load_dataset(\"arrow\", data_dir=...)` or `datasets.load_dataset(DIR)`.\n"
    )


EXPORT_STAGE = "export"


class AnExport(errors.UsageError):
    """A directory `emu-data export` wrote (tar or Parquet shards): what reads corpora
    cannot read it."""

    def __init__(self, out: Path, form: str):
        super().__init__(f"{out} is an export ({form}), not a corpus of Arrow shards: run this on the "
                         "corpus it was made from, or read it as README's 'emu-data export' shows")


def refuse_export(out: Path, built: dict) -> None:
    if built.get("stage") == EXPORT_STAGE:
        config = built.get("config")
        form = config.get("export", {}).get("format") if isinstance(config, dict) else None
        raise AnExport(out, form if isinstance(form, str) else "unknown format")


def shard_paths(out: Path, kind: str = DATA_DIR) -> list[Path]:
    """Shards of a finished directory, as its manifest lists them."""
    built = manifest.read(out)
    refuse_export(out, built)
    listed = built["shards"] if kind == DATA_DIR else built["status_shards"]
    return [Path(out) / s["path"] for s in listed]
