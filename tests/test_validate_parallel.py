"""`emu-data validate` at scale: shards checked in tasks, keys spilled to hash partitions.

The promises: a repeated key is reported once per repeat, naming its first occurrence in
reading order, wherever the partitions fall; the report is the same line for line in one
process, on the local Ray and on a two-node cluster; the report holds at most
`keep_per_rule` violations of a rule while counting them all (the driver keeps no structure
per key or per violation); nothing is written into the validated directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from emu_data import cli
from emu_data.core import manifest, partitions, schema
from emu_data.core.shards import write_table
from emu_data.engine import runtime
from emu_data.inspect import unique_keys
from emu_data.inspect import validate as validate_module
from emu_data.inspect.validate import Spread, validate


def _shard(out: Path, rel: str, keys: list, record: str = "interleaved", bad_meta: frozenset = frozenset()) -> dict:
    """A shard of text-only samples (or ok status rows) with these keys; rows in bad_meta get
    meta "[]" (a meta_json violation each)."""
    n = len(keys)
    if record == "interleaved":
        columns = {"key": keys, "source": ["laion"] * n, "texts": [["a caption"]] * n, "images": [[None]] * n,
                   "times": [None] * n, "meta": ["[]" if i in bad_meta else "{}" for i in range(n)]}
    else:
        columns = {"key": keys, "source": ["laion"] * n, "input": [f"in:{i}" for i in range(n)],
                   "status": ["ok"] * n, "error": [None] * n, "attempts": [1] * n, "samples": [1] * n}
    return write_table(out / rel, pa.table(columns, schema=schema.arrow_schema(record)), out).to_dict()


def _corpus(out: Path, data: list[list], status: list[list] | None = None, bad_meta: frozenset = frozenset()) -> Path:
    """A finished corpus: data/laion-0000N.arrow holding data[N]'s keys (status alike)."""
    status = data if status is None else status
    shards = [_shard(out, f"data/laion-{n:05d}.arrow", keys, bad_meta=bad_meta) for n, keys in enumerate(data)]
    statuses = [_shard(out, f"status/laion-{n:05d}.arrow", keys, "status") for n, keys in enumerate(status)]
    part = {"shards": shards, "status_shards": statuses, "status_counts": {"ok": sum(map(len, status))},
            "source_counts": {"laion": sum(map(len, data))}}
    manifest.write(out, manifest.build(record="interleaved", stage="test", config={}, fingerprint="-", parts=[part]))
    return out


def _expected_repeats(directory: Path, data: list[list], status: list[list]) -> list[str]:
    """What a dict of first occurrences says, in reading order: the rule, written plainly."""
    lines = []
    for kind, shards in (("data", data), ("status", status)):
        first: dict[str, str] = {}
        for n, keys in enumerate(shards):
            path = directory / kind / f"laion-{n:05d}.arrow"
            for row, key in enumerate(keys):
                if key in first:
                    lines.append(f"{path}:{row}: [duplicate_key] key={key} key also at {first[key]}")
                else:
                    first[key] = f"{path}:{row}"
    return lines


def _lines(report) -> list[str]:
    return [str(v) for v in report.violations]


# a data key and a status key may be equal (two namespaces); "k:dup" three times, across shards
DATA = [["k:a", "k:dup", "k:b", "k:dup"], ["k:c", "k:a", "k:d"], ["k:dup", "k:e", "k:f", "k:c"], ["k:g"]]
STATUS = [["k:a", "k:b"], ["k:x", "k:y", "k:x"], ["k:b"], ["k:z"]]


def test_each_repeat_is_reported_once_naming_the_first_occurrence_across_partitions(tmp_path):
    one = _corpus(tmp_path / "one", DATA, STATUS)
    two = _corpus(tmp_path / "two", DATA[:2], STATUS[:1])   # the same keys in another directory: no repeat
    spread = Spread(rows_per_partition=4)  # 8 partitions for these 32 rows
    repeated = ["k:a", "k:dup", "k:c", "k:x", "k:b"]
    hashes = partitions.hash64(repeated, unique_keys.SALT)
    assert len(set(partitions.partition_of(hashes, 8).tolist())) > 2   # the repeats fall in several
    report = validate([one, two], spread=spread)
    assert _lines(report) == _expected_repeats(one, DATA, STATUS) + _expected_repeats(two, DATA[:2], STATUS[:1])
    assert report.counts == {"duplicate_key": 8} and report.summary().endswith("8 violation(s) (duplicate_key: 8)")
    assert _lines(validate([one, two])) == _lines(report)   # one partition: the same


def test_the_report_is_the_same_in_one_process_on_local_ray_and_on_a_two_node_cluster(tmp_path, ray_session):
    """Planted faults of every stage (listing, rows, keys, totals), the shards spread over
    tasks and the keys over partitions: the same lines, in the same order, everywhere."""
    keys = [[f"k:{s}:{i}" for i in range(12)] for s in range(6)]
    keys[4][7] = keys[1][2]
    keys[5][0] = keys[5][11] = keys[0][0]
    out = _corpus(tmp_path / "c", keys, bad_meta=frozenset({3, 9}))
    shutil.copy(out / "data" / "laion-00002.arrow", out / "data" / "stray.arrow")       # extra_shard
    (out / "status" / "laion-00003.arrow").unlink()                                   # missing_shard, totals
    spread = dict(rows_per_partition=10, spill_dir=tmp_path / "spill")
    (tmp_path / "spill").mkdir()
    here = validate([out], spread=Spread(**spread))
    local = validate([out], spread=Spread(ray=ray_session, **spread))
    runtime.shutdown()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        options = runtime.RayOptions(address=cluster.address)
        two_nodes = validate([out], spread=Spread(ray=options, **spread))
        assert len([n for n in runtime.ensure_ray(options).nodes() if n["Alive"]]) == 2
    finally:
        runtime.shutdown()
        cluster.shutdown()
        runtime.ensure_ray(ray_session)  # give the rest of the session its local Ray back
    assert _lines(here) == _lines(local) == _lines(two_nodes)
    assert here.summary() == local.summary() == two_nodes.summary()
    assert Counter(v.rule for v in here.violations) == {
        "extra_shard": 1, "missing_shard": 1, "meta_json": 12, "manifest_counts": 1, "duplicate_key": 6}
    assert list(tmp_path.joinpath("spill").iterdir()) == []   # spill folders removed


def test_violations_over_the_cap_are_counted_not_kept(tmp_path, ray_session, capsys):
    """More repeated keys and bad rows than a report keeps: the first ones are kept, in
    order; the summary, the counts and the exit code tell them all."""
    rows = 60
    data = [[f"k:{i % 25}" for i in range(s * rows, (s + 1) * rows)] for s in range(3)]   # 155 repeats
    out = _corpus(tmp_path / "c", data, status=[[f"s:{i}" for i in range(5)]],
                  bad_meta=frozenset(range(0, rows, 3)))                                # 60 meta_json
    report = validate([out], keep_per_rule=7, spread=Spread(rows_per_partition=20))
    assert report.counts == {"duplicate_key": 155, "meta_json": 60}
    assert report.summary().endswith("215 violation(s) (duplicate_key: 155, meta_json: 60)")
    assert not report.ok
    full = validate([out], spread=Spread(rows_per_partition=20))
    assert len(full.violations) == 215
    kept = [v for v in full.violations if v.rule == "meta_json"][:7] + \
        [v for v in full.violations if v.rule == "duplicate_key"][:7]
    assert report.violations == kept   # the first of each rule, in report order

    capsys.readouterr()
    assert cli.main(["validate", str(out), "--max-lines", "10"]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[10] == "... and 205 more" and printed[-1] == full.summary()
    assert cli.main(["validate", str(out), "--json"]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["counts"] == {"duplicate_key": 155, "meta_json": 60} and len(as_json["violations"]) == 215


def test_the_validated_directory_is_never_written(tmp_path, ray_session, capsys):
    out = _corpus(tmp_path / "c", DATA, STATUS)

    def snapshot() -> list:
        return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.joinpath("c").rglob("*"))

    before = snapshot()
    assert cli.main(["validate", str(out), "--spill-dir", str(tmp_path)]) == 1
    assert snapshot() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]   # the spill folder is gone too
    capsys.readouterr()
    assert cli.main(["validate", str(out), "--spill-dir", str(out / "data")]) == 2
    assert "which validate only reads" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert cli.main(["validate", str(out), "--spill-dir", str(tmp_path / "a-file")]) == 2
    assert "cannot make a spill folder" in capsys.readouterr().err
    assert snapshot() == before


class _DiesOnShardOne(validate_module.CheckShards):
    """The shard task, whose worker dies (as when killed, out of memory) on data shard 1."""

    def __call__(self, item):
        if any(job.path.name == "laion-00001.arrow" and job.record == "interleaved" for job in item[1]):
            os._exit(1)
        return super().__call__(item)


def test_a_task_whose_worker_dies_leaves_its_shards_unchecked_and_said(tmp_path, ray_session, monkeypatch):
    out = _corpus(tmp_path / "c", DATA, STATUS)
    monkeypatch.setattr(validate_module, "CheckShards", _DiesOnShardOne)
    lines = _lines(validate([out], spread=Spread(ray=ray_session)))
    died = out / "data" / "laion-00001.arrow"
    assert lines[0].startswith(f"{died}: [unreadable_shard] not checked: its task failed: ")
    assert lines[1:3] == [f"{out / manifest.MANIFEST_NAME}: [manifest_rows] manifest says 12 rows, shards hold 9",
                          f"{out / manifest.MANIFEST_NAME}: [manifest_counts] source counts {{'laion': 9}} "
                          "!= manifest {'laion': 12}"]
    unchecked = [line for line in _expected_repeats(out, DATA, STATUS) if str(died) not in line]
    assert lines[3:] == [line for line in unchecked if "also at " + str(died) not in line]


def test_duplicates_of_a_partition_keep_the_first_by_position():
    rows = [(0, "b", 5, 1), (0, "a", 2, 0), (1, "a", 1, 0), (0, "a", 1, 3), (0, "b", 5, 0), (0, "a", 2, 7)]
    table = pa.table([pa.array(np.array(c, dtype=t)) if t else pa.array(c, pa.string())
                      for c, t in zip(zip(*rows), (np.int32, None, np.int64, np.int64))],
                     schema=unique_keys.SPILL_SCHEMA)
    found, total = unique_keys.duplicates(table, keep=2)
    assert total == 3   # ("a" at 2:0 and 2:7 repeat 1:3; "b" at 5:1 repeats 5:0); namespace 1 stands apart
    assert found == [unique_keys.Duplicate(2, 0, "a", 1, 3), unique_keys.Duplicate(2, 7, "a", 1, 3)]


@pytest.mark.parametrize("values", [["a", "ü", ""], [b"a", "ü".encode(), None]])
def test_a_str_hashes_as_its_utf8_bytes(values):
    assert partitions.hash64(values, "s").tolist() == partitions.hash64([b"a", "ü".encode(), b""], "s").tolist()
