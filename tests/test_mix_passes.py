"""`emu-data mix` as hash-partition passes: the same result on one partition or many, on one
node or two; resumable; the dedup rules at their edges; exact quotas when a cut falls inside
a histogram bucket."""

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from ray.cluster_utils import Cluster

from emu_data.core import corpus, manifest, partitions, records
from emu_data.core.corpus import Unit, shard_paths
from emu_data.core.shards import read_shard
from emu_data.engine import runtime, stage
from emu_data.engine.stage import OutputOptions, run_stage
from emu_data.ops import mix, mixpasses

COUNTS = {"laion": 700, "mmc4": 300, "webvid": 120}


def _png(n: int, salt: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 1), (n % 256, n // 256 % 256, salt)).save(buf, "PNG")
    return buf.getvalue()


def _write(payload, writer):
    """(source, start, count): tiny distinct samples; every 50th reuses laion's image, every
    70th laion's URL, every 90th repeats the previous key."""
    source, start, count = payload
    salt = sorted(COUNTS).index(source)
    for i in range(start, start + count):
        image = _png(i, 0 if i % 50 == 0 else salt + 1)
        url = f"https://img.invalid/{'laion' if i % 70 == 0 else source}/{i}.png"
        key = f"{source}:{i - 1 if i % 90 == 0 and i > start else i:06d}"
        writer.add_sample(records.sample(key, source, [image, f"caption {i}"], meta={"url": url}))
        writer.add_status(records.status(key, source, "ok", samples=1))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_session):
    dirs = []
    for source, n in COUNTS.items():
        out = tmp_path_factory.mktemp("in") / source
        units = [Unit(f"{source}-{s}", (source, s, min(250, n - s))) for s in range(0, n, 250)]
        run_stage("synthetic", units, _write, output=OutputOptions(out, shard_rows=100), layout={"s": source},
                  config={}, ray=ray_session)
        dirs.append(out)
    return dirs


CONFIG = mix.MixConfig(weights={"laion": 4, "mmc4": 2, "webvid": 1}, seed=3)


def _mix(inputs, out, ray, config=CONFIG, shard_rows=64):
    result, counts = mix.make_mix(inputs, config, OutputOptions(out, shard_rows=shard_rows), ray)
    return result, counts


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _digest(out):
    m = manifest.read(out)
    return sorted((s["path"], s["rows"], s["sha256"]) for s in m["shards"] + m["status_shards"])


@pytest.fixture(scope="module")
def mixed(inputs, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("mixed") / "out"
    _mix(inputs, out, ray_session)
    return out


def test_every_input_sample_has_one_status_and_the_work_files_are_gone(inputs, mixed):
    status = _rows(mixed, "status")
    assert len(status) == sum(COUNTS.values()) and len({r["key"] for r in status}) == len(status)
    reasons = Counter(r["status"] for r in status)
    assert reasons["ok"] == len(_rows(mixed)) and {"duplicate_key", "dedup_image", "dedup_url"} <= set(reasons)
    assert not (mixed / mixpasses.WORK).exists()


def test_quotas_are_exact_and_the_lowest_selection_hashes_win(inputs, mixed):
    data = _rows(mixed)
    counts = Counter(r["source"] for r in data)
    assert counts["laion"] == 4 * counts["webvid"] and counts["mmc4"] == 2 * counts["webvid"]
    status = {r["key"]: r["status"] for r in _rows(mixed, "status")}
    for source in ("laion", "mmc4"):   # subsampled: the chosen are the lowest hashes of the unique
        unique = [k for k, s in status.items() if k.startswith(source) and s in ("ok", "over_quota")]
        ranked = sorted(unique, key=lambda k: partitions.hash64([f"{source}\0{k}"], f"select:{CONFIG.seed}")[0])
        assert {r["key"] for r in data if r["source"] == source} == set(ranked[:counts[source]])


def test_many_partitions_give_the_same_order_and_statuses_as_one(inputs, mixed, tmp_path, ray_session,
                                                                 monkeypatch):
    monkeypatch.setattr(partitions, "DEFAULT_ROWS_PER_PARTITION", 150)   # 8 partitions, each pass
    out = tmp_path / "parts"
    _mix(inputs, out, ray_session)
    assert len({s["path"].split("-")[1] for s in manifest.read(out)["shards"]}) > 1   # units of several
    assert [r["key"] for r in _rows(out)] == [r["key"] for r in _rows(mixed)]
    assert sorted(map(str, _rows(out, "status"))) == sorted(map(str, _rows(mixed, "status")))


def test_a_run_stopped_after_its_passes_resumes_them_and_ends_the_same(inputs, mixed, tmp_path, ray_session,
                                                                      monkeypatch):
    out = tmp_path / "stopped"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt("stopped before the output units")

    with monkeypatch.context() as patch:
        patch.setattr(stage, "run_held", stop)
        with pytest.raises(KeyboardInterrupt):
            _mix(inputs, out, ray_session)
    assert list((out / mixpasses.WORK / "scan").glob("*.npz")) and (out / mixpasses.WORK / "rows").is_dir()
    _mix(inputs, out, ray_session)
    assert _digest(out) == _digest(mixed)
    assert not (out / mixpasses.WORK).exists()


def test_units_read_only_the_gather_files_however_the_inputs_are_grouped(inputs, mixed, tmp_path, ray_session,
                                                                        monkeypatch):
    """One gather group per input shard (the memory bound at its smallest) gives the same bytes;
    the units never open an input shard: they run with every input's data/ moved away (each
    input is read once, by its gather task, not once per unit)."""
    monkeypatch.setattr(mixpasses, "GATHER_BYTES", 1)
    run_held = stage.run_held

    def without_inputs(*args, **kwargs):
        moved = [d.rename(d.with_name("data-away")) for d in (i / "data" for i in inputs)]
        try:
            return run_held(*args, **kwargs)
        finally:
            for d in moved:
                d.rename(d.with_name("data"))

    monkeypatch.setattr(stage, "run_held", without_inputs)
    out = tmp_path / "groups"
    _mix(inputs, out, ray_session)
    sizes = [s["bytes"] for i in inputs for s in manifest.read(i)["shards"]]
    assert mixpasses.gather_groups(sizes) == list(range(len(sizes)))
    assert _digest(out) == _digest(mixed)


def test_a_rerun_of_a_finished_mix_plans_nothing(inputs, mixed, ray_session, monkeypatch):
    monkeypatch.setattr(mix, "_plan", lambda *a, **k: pytest.fail("planned again"))
    result, _ = _mix(inputs, mixed, ray_session)
    assert result.reused


@pytest.mark.slow
def test_two_nodes_write_the_same_bytes_as_one(inputs, mixed, tmp_path, ray_session):
    runtime.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        options = runtime.RayOptions(address=cluster.address)
        _mix(inputs, tmp_path / "two", options)
        assert len([n for n in runtime.ensure_ray(options).nodes() if n["Alive"]]) == 2
    finally:
        runtime.shutdown()
        cluster.shutdown()
        runtime.ensure_ray(ray_session)
    assert _digest(tmp_path / "two") == _digest(mixed)


# ---- the rules at their edges ----------------------------------------------------------

def _entries(rows):
    """rows: (key, image, url) in input order -> an ENTRY table."""
    return pa.table({"pos": list(range(len(rows))), "key": [k for k, _, _ in rows],
                     "source": ["laion"] * len(rows), "url": [u for _, _, u in rows],
                     "image": [None if i is None else hashlib.sha256(i.encode()).digest() for _, i, _ in rows],
                     "size": [1] * len(rows)}, schema=mixpasses.ENTRY)


def test_first_occurrence_wins_and_image_less_samples_are_never_image_duplicates():
    table = _entries([("a", "x", "u1"), ("b", "x", "u2"), ("c", None, "u3"), ("d", None, "u4"),
                      ("a", "y", "u5"), ("a", "z", "u6")])
    keep, dropped = mixpasses.first_occurrences(table, "key")
    assert keep.tolist() == [True, True, True, True, False, False]
    assert dropped.column("key").to_pylist() == ["a#dup1", "a#dup2"]
    assert set(dropped.column("message").to_pylist()) == {"same key as a"}
    keep, dropped = mixpasses.first_occurrences(table.filter(pa.array(keep)), "image")
    assert keep.tolist() == [True, False, True, True]   # c and d have no images: both stay
    assert dropped.to_pylist()[0] | {"pos": 1} == {"pos": 1, "key": "b", "source": "laion",
                                                   "reason": "dedup_image", "message": "same image as a"}


def test_a_quota_cut_inside_a_bucket_takes_exactly_the_lowest(tmp_path, ray_session):
    """Selection hashes crowded into a few buckets (real corpora at 65,536 buckets put
    thousands in each): the cut is found among the bucket's entries, ties broken by position."""
    n = 500
    rng = np.random.default_rng(0)
    bucket = np.uint64(7) << np.uint64(64 - mixpasses.BUCKET_BITS)
    select = bucket + rng.integers(0, 50, n).astype(np.uint64)   # many equal hashes
    select[:100] -= bucket   # 100 in bucket 0
    where = mixpasses.Pass(str(tmp_path / "work"), 1)
    table = pa.table({"pos": np.arange(n, dtype=np.int64), "key": [f"k{i}" for i in range(n)],
                      "source": ["laion"] * n, "url": [None] * n, "image": [None] * n, "size": [1] * n,
                      "select": select, "order": np.arange(n, dtype=np.uint64)}, schema=mixpasses.UNIQUE)
    partitions.write(where.file("url", 0), table, np.zeros(n, dtype=np.int64), 1)
    hist = np.zeros(1 << mixpasses.BUCKET_BITS, dtype=np.int64)
    np.add.at(hist, (select >> np.uint64(64 - mixpasses.BUCKET_BITS)).astype(np.int64), 1)
    config = mix.MixConfig(weights={"laion": 1, "webvid": 1})
    other = np.zeros_like(hist)
    other[0] = 237   # webvid has 237: laion keeps 237 of 500, 100 below the bucket and 137 in it
    cuts, wanted = mix._cuts({"laion": hist, "webvid": other}, config, where, ray_session)
    assert wanted == {"laion": 237, "webvid": 237}
    chosen = cuts["laion"].selects(select, np.arange(n))
    expected = np.lexsort((np.arange(n), select))[:237]
    assert chosen.sum() == 237 and set(np.flatnonzero(chosen)) == set(expected.tolist())
    assert cuts["webvid"].selects(np.zeros(3, np.uint64), np.arange(3)).all()


def test_an_input_with_nothing_left_after_dedup_is_still_accounted(tmp_path, ray_session):
    out = tmp_path / "in" / "laion"
    run_stage("synthetic", [Unit("u", ("laion", 0, 3))], _write, output=OutputOptions(out), layout={"s": 1},
              config={}, ray=ray_session)
    twice = tmp_path / "twice"
    result, counts = _mix([out, out], twice, ray_session, config=mix.MixConfig(weights={"laion": 1}))
    assert counts["left_out"] == {"duplicate_key": 3} and counts["selected"] == {"laion": 3}
    assert Counter(r["status"] for r in _rows(twice, "status")) == {"ok": 3, "duplicate_key": 3}
    assert corpus.committed_parts(twice)
