"""`emu-data mix`: proportions, dedup, determinism, and every input accounted for."""

import contextlib
import io
import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from emu_data import cli
from emu_data.core import manifest, records
from emu_data.ops import mix, mixpasses
from emu_data.core.corpus import Unit, shard_paths
from emu_data.synthetic import sample
from emu_data.core.shards import read_shard
from emu_data.engine.stage import OutputOptions, run_stage
from emu_data.inspect.validate import Violation, validate

COUNTS = {"laion": 3000, "laion_coco": 3000, "mmc4": 1500, "webvid": 400, "yt_storyboard": 400}


def _png(n: int, salt: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 1), (n % 256, n // 256 % 256, salt)).save(buf, "PNG")
    return buf.getvalue()


def _write_source(payload, writer):
    """payload: (source, start, count, planted) -> tiny distinct samples; planted duplicates."""
    source, start, count, planted = payload
    salt = sorted(COUNTS).index(source)
    for i in range(start, start + count):
        image, url = _png(i, salt), f"https://img.invalid/{source}/{i}.png"
        if (source, i) in planted:  # reuse laion's image i or URL i: a cross-source duplicate
            kind = planted[(source, i)]
            image = _png(i, sorted(COUNTS).index("laion")) if kind == "image" else image
            url = f"HTTPS://IMG.invalid/laion/{i}.png?utm_source=x" if kind == "url" else url
        meta = {"url": url, **({"chunk": 0} if source == "yt_storyboard" else {})}
        key = f"{source}:{i:06d}"
        writer.add_sample(records.sample(key, source, [image, f"caption {i}"], meta=meta))
        writer.add_status(records.status(key, source, "ok", samples=1))


PLANTED = {("laion_coco", 5): "image", ("laion_coco", 6): "url", ("mmc4", 7): "image"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, ray_session):
    dirs = []
    for source, n in COUNTS.items():
        out = tmp_path_factory.mktemp("src") / source
        units = [Unit(f"{source}-{s}", (source, s, min(1000, n - s), PLANTED)) for s in range(0, n, 1000)]
        run_stage("synthetic", units, _write_source, output=OutputOptions(out), layout={"s": source},
                  config={}, ray=ray_session)
        dirs.append(out)
    return dirs


@pytest.fixture(scope="module")
def mixed(sources, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("mix") / "out"
    assert cli.main(["mix", *map(str, sources), "--out", str(out), "--shard-rows", "2000", "--seed", "7"]) == 0
    return out


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def test_proportions_follow_emus_weights(mixed):
    counts = Counter(r["source"] for r in _rows(mixed))
    builtin = ("yt_storyboard", "laion", "laion_coco", "mmc4", "webvid")   # a test may register more
    total, weights = sum(counts.values()), {s: mix.presets()["emu"][s] for s in builtin}
    assert total > 8000
    for source, weight in weights.items():
        assert abs(counts[source] / total - weight / sum(weights.values())) < 0.02, (source, counts)


def test_every_input_sample_is_accounted_for_once(mixed):
    status = _rows(mixed, "status")
    assert len(status) == sum(COUNTS.values())
    assert len({r["key"] for r in status}) == len(status)
    reasons = Counter(r["status"] for r in status)
    assert reasons["dedup_image"] == 2 and reasons["dedup_url"] == 1
    assert reasons["ok"] == len(_rows(mixed)) and reasons["over_quota"] > 0


def test_output_validates_with_no_duplicate_images(mixed):
    assert validate([mixed], deep=True).ok
    images = [r["images"][0]["bytes"] for r in _rows(mixed)]
    assert len(set(images)) == len(images)


def test_the_shuffle_is_deterministic_and_seeded(sources, mixed, tmp_path, ray_session):
    again = tmp_path / "again"
    assert cli.main(["mix", *map(str, sources), "--out", str(again), "--shard-rows", "2000", "--seed", "7"]) == 0
    assert [r["key"] for r in _rows(again)] == [r["key"] for r in _rows(mixed)]
    other = tmp_path / "other"
    assert cli.main(["mix", *map(str, sources), "--out", str(other), "--shard-rows", "2000", "--seed", "8"]) == 0
    assert [r["key"] for r in _rows(other)] != [r["key"] for r in _rows(mixed)]
    sources_in_order = [r["source"] for r in _rows(mixed)[:200]]
    assert len(set(sources_in_order)) >= 4  # shuffled across sources, not concatenated


def test_weights_override_and_a_rerun_skips(sources, mixed, tmp_path, capsys):
    out = tmp_path / "w"
    assert cli.main(["mix", *map(str, sources[:2]), "--out", str(out), "--weights", "laion=3,laion_coco=1"]) == 0
    counts = Counter(r["source"] for r in _rows(out))
    assert counts["laion"] == 3 * counts["laion_coco"]
    capsys.readouterr()
    assert cli.main(["mix", *map(str, sources[:2]), "--out", str(out), "--weights", "laion=3,laion_coco=1"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("url, same", [
    ("HTTPS://Example.invalid:443/a/?b=2&a=1&utm_campaign=x#top", "https://example.invalid/a?a=1&b=2"),
    ("http://example.invalid:8080/x", "http://example.invalid:8080/x"),
])
def test_url_normalization(url, same):
    assert mix.normalize_url(url) == same


def test_bad_weights_are_clear_errors(sources, tmp_path, capsys):
    assert cli.main(["mix", str(sources[0]), "--out", str(tmp_path / "x"), "--weights", "laion=lots"]) == 2
    assert "SOURCE=NUMBER" in capsys.readouterr().err
    assert cli.main(["mix", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 2


# ---- issue 15 (7): a corrupted input is refused, nothing written ---------------------

def _flip_a_byte_inside_a_jpeg(shard):
    """One byte changed in the middle of the first JPEG's scan data: the Arrow file still
    parses and the image still decodes; only the manifest's sha256 can tell."""
    data = bytearray(shard.read_bytes())
    scan = data.index(b"\xff\xda", data.index(b"\xff\xd8\xff"))
    i = (scan + data.index(b"\xff\xd9", scan)) // 2
    while data[i - 1] == 0xFF or data[i] >= 0xFE:  # no marker made or broken
        i += 1
    data[i] ^= 0x01
    shard.write_bytes(data)


CORRUPTIONS = {  # how the shard is damaged (given a shard of the other input), the rule it breaks
    "changed_byte": (lambda shard, other: _flip_a_byte_inside_a_jpeg(shard), "manifest_checksum"),
    "size_differs": (lambda shard, other: shard.write_bytes(other.read_bytes()), "manifest_bytes"),
    "missing": (lambda shard, other: shard.unlink(), "missing_shard"),
    "fifo": (lambda shard, other: (shard.unlink(), os.mkfifo(shard)), "missing_shard"),  # never opened
}


@pytest.fixture(scope="module")
def pristine_corpora(tmp_path_factory, ray_session):
    """Two tiny corpora as `emu-data sample` writes them: mmc4 documents, laion pairs."""
    root = tmp_path_factory.mktemp("two-corpora")
    dirs = [root / "mmc4", root / "laion"]
    for out in dirs:
        sample.make_sample(sample.SampleConfig(n=4, sources=(out.name,)), OutputOptions(out), ray_session)
    return dirs


@pytest.fixture
def two_corpora(pristine_corpora, tmp_path):
    """A private copy of both, to damage."""
    return [Path(shutil.copytree(d, tmp_path / d.name)) for d in pristine_corpora]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_input_is_refused_before_anything_is_written(two_corpora, corruption, tmp_path, capsys):
    damage, rule = CORRUPTIONS[corruption]
    shard = shard_paths(two_corpora[1])[0]
    damage(shard, shard_paths(two_corpora[0])[0])
    found = validate([two_corpora[1]], deep=True).violations
    seen = [v for v in found if v.rule in ("missing_shard", "manifest_bytes", "manifest_checksum")]
    assert rule in {v.rule for v in seen}
    if corruption == "changed_byte":
        assert found == seen  # every image still decodes: only the checksum tells
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(["mix", *map(str, two_corpora), "--out", str(out), "--weights", "laion=1,mmc4=1"]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err
    for v in seen:  # the lines emu-data validate prints for the same shard
        assert str(v) in err
    assert not (out / manifest.MANIFEST_NAME).exists() and not out.exists()


# ---- issue 15 (8): planning is linear in the number of duplicates ---------------------

def _key_duplicates(n: int):
    """n entries of 10 keys in input order: all but 10 are dropped as duplicate_key."""
    import pyarrow as pa
    return pa.table({"pos": list(range(n)), "key": [f"k{i % 10}" for i in range(n)], "source": ["laion"] * n,
                     "url": [None] * n, "image": [bytes([i % 256]) * 32 for i in range(n)], "size": [1] * n},
                    schema=mixpasses.ENTRY)


@contextlib.contextmanager
def _cpu_budget(seconds: float):
    """Fail once this process has spent `seconds` more CPU time: a quadratic plan fails in
    seconds here instead of running for hours."""
    def stop(signum, frame):
        raise AssertionError(f"planning took over {seconds:.2f} CPU seconds: superlinear in duplicates")

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def _cpu_seconds(fn, *args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def test_planning_is_linear_in_duplicates():
    """10x the duplicates may cost at most 30x the CPU time, measured in the same run
    (linear is ~10x; rescanning the dropped list per duplicate was ~100x: 20k took 34 s)."""
    small, large = _key_duplicates(10_000), _key_duplicates(100_000)
    base = min(_cpu_seconds(mixpasses.first_occurrences, small, "key") for _ in range(3))
    with _cpu_budget(30 * base):
        keep, dropped = mixpasses.first_occurrences(large, "key")
    assert keep.sum() == 10 and set(dropped.column("reason").to_pylist()) == {"duplicate_key"}
    keys = dropped.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 99_990
    assert keys[:11] == [f"k{i}#dup1" for i in range(10)] + ["k0#dup2"] and keys[-1] == "k9#dup9999"


def test_a_refusal_shows_the_first_problems_and_counts_the_rest():
    problems = [Violation(f"/in/data/{i}.arrow", None, None, "missing_shard", "gone")
                for i in range(mix.SHOWN_PROBLEMS + 2)]
    with pytest.raises(ValueError) as refused:
        mix._refuse_corrupted(problems)
    lines = str(refused.value).splitlines()
    assert lines[:mix.SHOWN_PROBLEMS] == [str(v) for v in problems[:mix.SHOWN_PROBLEMS]]
    assert lines[mix.SHOWN_PROBLEMS] == "... and 2 more" and "nothing was written" in lines[-1]
