"""_manifest.json: the commit point of every output directory.

Written last, atomically; it lists every shard with rows, bytes and sha256, the counts by
status and source, the resolved config and the tool version. Its structure is the JSON
Schema in schemas/manifest.json.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import jsonschema

from emu_data import __version__
from emu_data.core import errors, files, schema
from emu_data.core.shards import TMP_PREFIX, fsync_dir, writing

MANIFEST_NAME = "_manifest.json"


class ManifestError(errors.UsageError):
    """A manifest is missing, unreadable or not of the manifest schema."""


def fingerprint(layout_config: dict) -> str:
    """sha256 of the configuration that decides what lands in which shard."""
    return hashlib.sha256(json.dumps(layout_config, sort_keys=True, default=str).encode()).hexdigest()


def build(*, record: str, stage: str, config: dict, fingerprint: str, parts: list[dict]) -> dict:
    """Sum the committed parts of a run into one manifest dict."""
    rec = schema.record(record)
    shards = [s for p in parts for s in p["shards"]]
    status_shards = [s for p in parts for s in p["status_shards"]]
    return {
        "schema": {"name": rec.name, "version": rec.version},
        "tool": {"name": "emu-data", "version": __version__},
        "stage": stage,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "fingerprint": fingerprint,
        "shards": sorted(shards, key=lambda s: s["path"]),
        "status_shards": sorted(status_shards, key=lambda s: s["path"]),
        "rows": sum(s["rows"] for s in shards),
        "status_counts": _sum_counts(p["status_counts"] for p in parts),
        "source_counts": _sum_counts(p["source_counts"] for p in parts),
    }


def _sum_counts(counts) -> dict:
    total: dict[str, int] = {}
    for c in counts:
        for name, n in c.items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))


def problems(manifest: object) -> list[str]:
    """Every way `manifest` breaks schemas/manifest.json, as messages (empty when valid)."""
    validator = jsonschema.Draft202012Validator(schema.load_json("manifest"))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))]


def read(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(f"{path}: no manifest (the run did not finish, or this is not an emu-data directory)")
    try:
        data = files.read_json(path)
    except files.UnreadableFile as e:
        raise ManifestError(f"{path}: unreadable manifest: {e.reason}") from None
    found = problems(data)
    if found:
        raise ManifestError(f"{path}: not a valid manifest: {found[0]}")
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary name, fsync, rename: readers see the old file or the new one.

    A write that fails (full disk, read-only) leaves the old file as it was, removes the
    temporary one and raises OutputError naming the path."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with writing(path):
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):   # a read-only disk may refuse this too
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)   # the new name survives a power cut too


def write(directory: Path, manifest: dict) -> Path:
    found = problems(manifest)
    if found:  # a bug in the writer, not in the data: refuse to commit it
        raise ManifestError(f"refusing to write an invalid manifest: {found[0]}")
    path = Path(directory) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path
