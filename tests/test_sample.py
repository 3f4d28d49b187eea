"""The sample corpus: every source kind, learnable text, deterministic."""

import json
import re

from emu_data.synthetic import world
from emu_data.core.shards import read_shard
from emu_data.core.corpus import shard_paths


def _rows(directory):
    return [r for p in shard_paths(directory) for r in read_shard(p).to_pylist()]


def test_every_source_kind_is_present_with_its_shape(sample_dir):
    rows = _rows(sample_dir)
    by = {}
    for r in rows:
        by.setdefault(r["source"], []).append(r)
    assert set(by) == {"yt_storyboard", "laion", "laion_coco", "mmc4", "webvid"}
    for r in by["laion"] + by["laion_coco"]:
        assert r["texts"][0] is None and r["images"][1] is None and r["times"] is None
    for r in by["webvid"]:
        assert sum(i is not None for i in r["images"]) == 8 and r["texts"][-1]
    for r in by["yt_storyboard"]:
        frames = sum(i is not None for i in r["images"])
        assert 1 <= frames <= 8 and r["times"] == sorted(r["times"])
        assert re.fullmatch(r"yt_storyboard:[A-Za-z0-9_-]{11}:\d+", r["key"])
    for r in by["mmc4"]:
        assert any(i is not None for i in r["images"]) and any(t for t in r["texts"])


def test_storyboard_chunks_of_a_video_are_contiguous_in_time(sample_dir):
    rows = [r for r in _rows(sample_dir) if r["source"] == "yt_storyboard"]
    videos = {}
    for r in rows:
        meta = json.loads(r["meta"])
        videos.setdefault(meta["video_id"], []).append((meta["chunk"], r["times"]))
    for chunks in videos.values():
        chunks.sort()
        flat = [t for _, times in chunks for t in times]
        assert flat == sorted(flat)
        assert [c for c, _ in chunks] == list(range(len(chunks)))


def test_text_names_what_is_drawn(sample_dir):
    for r in _rows(sample_dir):
        if r["source"] in ("laion", "laion_coco", "webvid"):
            text = " ".join(t for t in r["texts"] if t).lower()
            assert any(c in text for c in world.COLOURS) and any(s in text for s in world.SHAPES)


def test_sample_is_deterministic(tmp_path, sample_dir, ray_session):
    from emu_data.synthetic import sample
    from emu_data.engine.stage import OutputOptions

    config = sample.SampleConfig(n=6, per_unit=3, frames_per_sample=8)
    again = sample.make_sample(config, OutputOptions(tmp_path / "again", shard_rows=8), ray_session)
    first = json.loads((sample_dir / "_manifest.json").read_text())
    assert [s["sha256"] for s in again.manifest["shards"]] == [s["sha256"] for s in first["shards"]]
