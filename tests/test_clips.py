"""`emu-data clips` end to end: a Panda-70M-layout clip list over the loopback world.

yt-dlp's real download path fetches each video's storyboard from a local server that logs
every request; every clip becomes a sample of the tiles inside its span (checked against the
scene each tile draws) or a status row with its reason, and each video's storyboard is
fetched once however many clips it has.
"""

import csv
import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emu_data import cli
from emu_data.core import errors
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.inspect.validate import validate
from emu_data.sources.youtube import clipfiles
from emu_data.synthetic import site as sample_site
from emu_data.synthetic import world
from emu_data.synthetic.site import clips as site_clips
from emu_data.synthetic.site import youtube as site_youtube

VIDEOS = [site_youtube.SiteVideo(f"clipvid{i:04d}", duration=d) for i, d in enumerate((62.0, 90.0, 31.0))]
FAULTY = {"clipvid0001"}
QUIET = ["--sleep-requests", "0", "--sleep-interval", "0", "--max-sleep-interval", "0", "--retries", "0",
         "--allow-private-addresses", "--videos-per-unit", "2"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipsite")
    requests: list[str] = []
    with sample_site.serve(root, requests=requests) as base:
        site_youtube.publish_youtube(root, base, VIDEOS)
        clips = site_clips.publish_clips(root, VIDEOS, FAULTY)
        yield root, clips, requests


def _run(root: Path, out: Path, *extra) -> int:
    return cli.main(["clips", "--input", str(root / "clips" / "clips.csv"), "--info-json", str(root / "info"),
                     "--info-json", str(root / "clips_info"), "--out", str(out), "--min-score", "0.3",
                     *QUIET, *extra])


@pytest.fixture(scope="module")
def corpus(site, tmp_path_factory, ray_session):
    root, _, requests = site
    out = tmp_path_factory.mktemp("clips") / "corpus"
    before = len(requests)
    assert _run(root, out) == 0
    return out, requests[before:]


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def test_every_clip_is_a_sample_or_a_status_row_with_its_reason(site, corpus):
    _, clips, _ = site
    status = {r["key"]: r for r in _rows(corpus[0], "status")}
    for clip in clips:
        if clip.fault in ("bad_timestamp", "empty_caption"):   # no key of its own: found by reason below
            continue
        key = f"yt_clips:{clip.video_id}:{round(clip.start * 1000)}-{round(clip.end * 1000)}"
        assert status[key]["status"] == (clip.fault or "ok"), (key, status[key])
    reasons = sorted(r["status"] for r in status.values() if r["status"] != "ok")
    assert reasons == ["bad_timestamp", "empty_caption", "low_score", "malformed_row", "past_duration",
                       "unavailable"]
    assert status[f"yt_clips:{site_clips.UNAVAILABLE}:1000-6000"]["error"].startswith("ERROR: Video unavailable")
    assert all(r["error"] for r in status.values() if r["status"] != "ok")
    assert sum(r["samples"] for r in status.values()) == len(_rows(corpus[0]))


def test_each_clip_holds_the_tiles_of_its_span_thinned_to_eight(site, corpus):
    _, clips, _ = site
    ok = {f"yt_clips:{c.video_id}:{round(c.start * 1000)}-{round(c.end * 1000)}": c for c in clips if not c.fault}
    rows = {r["key"]: r for r in _rows(corpus[0])}
    assert set(rows) == set(ok)
    for key, row in rows.items():
        clip, meta = ok[key], json.loads(row["meta"])
        frames, caption = row["times"][:-1], row["texts"][-1]
        assert caption == clip.caption and row["times"][-1] == frames[-1]
        inside = [5.0 * k for k in range(20) if clip.start <= 5.0 * k <= clip.end]
        if inside:
            assert set(frames) <= set(inside) and len(frames) == min(8, len(inside))
        else:   # shorter than the spacing: the tile nearest its middle
            assert frames == [30.0]
        assert meta["matching_score"] == clip.score and (meta["start"], meta["end"]) == (clip.start, clip.end)
        assert meta["frame_times"] == frames


def test_a_long_clip_is_thinned_evenly_to_frames(site, tmp_path, ray_session):
    root, _, _ = site
    listed = tmp_path / "long.csv"
    listed.write_text("video_id,start,end,caption\nclipvid0001,0,90,the whole video\n")
    assert cli.main(["clips", "--input", str(listed), "--info-json", str(root / "info"), "--out",
                     str(tmp_path / "out"), *QUIET]) == 0
    (row,) = _rows(tmp_path / "out")
    # 19 tiles in 0-90 s: the k-th of 8 picks the tile at the centre of its share
    assert row["times"][:-1] == [5.0 * int((k + 0.5) * 19 / 8) for k in range(8)]


def test_frames_show_the_scene_of_their_time(site, corpus):
    """Each frame is the storyboard tile of its recorded time: nearer to that tile's drawing
    than to any other tile's of the video (the tiles are colour-coded scenes)."""
    for video in VIDEOS:
        drawn = [np.asarray(world.render(s, site_youtube.TILE_W, site_youtube.TILE_H), dtype=float)
                 for s in video.tile_scenes()]
        for row in (r for r in _rows(corpus[0]) if r["key"].startswith(f"yt_clips:{video.video_id}:")):
            for t, image in zip(row["times"], row["images"][:-1]):
                pixels = np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"), dtype=float)
                nearest = min(range(len(drawn)), key=lambda k: np.abs(pixels - drawn[k]).mean())
                assert nearest == round(t / video.interval), (row["key"], t, nearest)


def test_one_storyboard_request_per_video_however_many_clips(corpus):
    _, requests = corpus
    for video in VIDEOS:
        mosaics = [p for p in requests if p.startswith(f"/yt/{video.video_id}/M")]
        assert sorted(mosaics) == sorted(set(mosaics)), mosaics   # each mosaic once
        assert len(mosaics) == video.tile_count // 25 + (video.tile_count % 25 > 0)
    assert not [p for p in requests if "subs" in p]   # no subtitle fetched: the list has the captions


def test_the_corpus_validates_and_a_rerun_skips(site, corpus, ray_session):
    report = validate([corpus[0]], deep=True)
    assert report.ok, [str(v) for v in report.violations]
    root, _, requests = site
    before = len(requests)
    assert _run(root, corpus[0]) == 0
    assert len(requests) == before   # nothing fetched again


def _sha(rows):
    return {r["key"]: [hashlib.sha256(i["bytes"]).hexdigest() for i in r["images"] if i] + [r["texts"][-1]]
            for r in rows}


def test_flat_lists_in_csv_jsonl_and_parquet_give_the_same_samples(site, corpus, tmp_path, ray_session):
    root, clips, _ = site
    good = [c for c in clips if not c.fault]
    rows = [{"yt": f"https://youtu.be/{c.video_id}", "from": c.start, "to": site_clips.clock(c.end),
             "text": c.caption, "sim": c.score} for c in good]
    flags = ["--list-layout", "flat", "--video-column", "yt", "--start-column", "from", "--end-column", "to",
             "--caption-column", "text", "--score-column", "sim"]
    lists = {"a.jsonl": lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows)),
             "b.parquet": lambda p: pq.write_table(pa.Table.from_pylist(
                 [{**r, "from": str(r["from"])} for r in rows]), p),
             "c.csv": lambda p: _write_csv(p, rows)}
    expected = _sha(_rows(corpus[0]))
    for name, write in lists.items():
        write(tmp_path / name)
        out = tmp_path / f"out-{name}"
        assert cli.main(["clips", "--input", str(tmp_path / name), "--info-json", str(root / "info"),
                         "--out", str(out), *flags, *QUIET]) == 0, name
        assert _sha(_rows(out)) == expected, name


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_clip_named_twice_is_one_sample_and_a_duplicate_row(site, tmp_path, ray_session):
    root, _, _ = site
    listed = tmp_path / "twice.csv"
    listed.write_text("video_id,start,end,caption\nclipvid0000,0,8.5,a\nclipvid0000,0:00:00,0:00:08.5,b\n"
                      "clipvid0000,0,9,c\n")
    assert cli.main(["clips", "--input", str(listed), "--info-json", str(root / "info"), "--out",
                     str(tmp_path / "out"), *QUIET]) == 0
    status = {r["key"]: r["status"] for r in _rows(tmp_path / "out", "status")}
    assert status == {"yt_clips:clipvid0000:0-8500": "ok", "yt_clips:clipvid0000:0-8500#dup1": "duplicate_key",
                      "yt_clips:clipvid0000:0-9000": "ok"}


def test_min_frames_over_a_short_clip_is_too_few_frames(site, tmp_path, ray_session):
    root, _, _ = site
    listed = tmp_path / "short.csv"
    listed.write_text("video_id,start,end,caption\nclipvid0000,31,33,between two tiles\nclipvid0000,0,12,three tiles\n")
    assert cli.main(["clips", "--input", str(listed), "--info-json", str(root / "info"), "--out",
                     str(tmp_path / "out"), "--min-frames", "2", *QUIET]) == 0
    status = {r["key"]: r["status"] for r in _rows(tmp_path / "out", "status")}
    assert status == {"yt_clips:clipvid0000:31000-33000": "too_few_frames", "yt_clips:clipvid0000:0-12000": "ok"}


def test_a_list_without_the_columns_it_needs_is_a_usage_error(tmp_path):
    listed = tmp_path / "wrong.csv"
    listed.write_text("id,begin,finish\nx,1,2\n")
    with pytest.raises(errors.UsageError, match="needs column"):
        list(clipfiles.entries(listed))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_fuzzed_lists_give_a_clip_or_a_reason_for_every_row(tmp_path, suffix):
    """Stranger-written rows: random bytes, cells and lists; every row read is a clip or a
    reason, never an exception (a file that is no table at all is a usage error)."""
    rng = random.Random(19)
    read = 0
    pieces = ["dQw4w9WgXcQ", "'", '"', "[", "]", ",", "\n", "0:00:01.000", "-1", "1e309", "nan", "\x00", "é",
              "[['0:00:00.000', '0:00:05.000']]", "['a caption']", "[0.5]", "{", "}", "\\", " ", "1" * 50]
    for trial in range(40):
        path = tmp_path / f"f{trial}{suffix}"
        rows = [{"videoID": "".join(rng.choices(pieces, k=rng.randint(0, 3))),
                 "timestamp": "".join(rng.choices(pieces, k=rng.randint(0, 4))),
                 "caption": "".join(rng.choices(pieces, k=rng.randint(0, 3))),
                 "matching_score": "".join(rng.choices(pieces, k=rng.randint(0, 2)))} for _ in range(rng.randint(1, 8))]
        if suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif suffix == ".jsonl":
            lines = [json.dumps(r) if rng.random() < 0.8 else "".join(rng.choices(pieces, k=5)) for r in rows]
            path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        else:
            _write_csv(path, rows)
            data = bytearray(path.read_bytes())
            for _ in range(rng.randint(0, 4)):   # flip a few bytes: broken quotes, stray NULs
                data[rng.randrange(len(data))] = rng.choice(b'",\n\x00\xff')
            path.write_bytes(bytes(data))
        try:
            found = list(clipfiles.entries(path))
        except errors.UsageError:
            continue
        read += 1
        assert all((e.clip is None) != (e.reason is None) for e in found)
        assert all(e.reason is None or e.message for e in found)
    assert read >= 20   # most files are tables: the rows were really tried


def _publish_real(root: Path, base: str, response: dict, seed: int) -> str:
    """A real response's info dict (yt-dlp's extractor) with its sb0 mosaics drawn at the
    spec's own tile size and served from `base`; no subtitles (clips need none)."""
    from test_youtube_storyboard import ytdlp_info

    info = ytdlp_info(response)
    video_id = response["videoDetails"]["videoId"]
    sb0 = next(f for f in info["formats"] if f["format_id"] == "sb0")
    width, height, per = sb0["width"], sb0["height"], sb0["columns"] * sb0["rows"]
    count = round(sb0["fps"] * info["duration"])
    clip = world.random_clip(random.Random(seed), info["duration"])
    folder = root / "yt" / video_id
    folder.mkdir(parents=True)
    for j, fragment in enumerate(sb0["fragments"]):
        tiles = range(j * per, min((j + 1) * per, count))
        mosaic = Image.new("RGB", (sb0["columns"] * width, -(-len(tiles) // sb0["columns"]) * height))
        for i, k in enumerate(tiles):
            tile = world.render(clip.scene_at(min(k * info["duration"] / count, info["duration"])), width, height)
            mosaic.paste(tile, ((i % sb0["columns"]) * width, (i // sb0["columns"]) * height))
        mosaic.save(folder / f"M{j}.jpg", quality=80)
        fragment["url"] = f"{base}/yt/{video_id}/M{j}.jpg"
    info.update(id=video_id, title=response["videoDetails"]["title"], extractor="youtube",
                extractor_key="Youtube", _type="video", subtitles={}, automatic_captions={})
    (root / "info").mkdir(exist_ok=True)
    (root / "info" / f"{video_id}.info.json").write_text(json.dumps(info))
    return video_id


def test_panda_length_clips_on_real_storyboard_specs(tmp_path, ray_session):
    """Real recorded player responses (yt-dlp's own extractor builds their storyboard formats):
    tiles every 2 s (288 s), 5 s (316 s) and 10 s (1509 s). Clips of Panda-70M's average
    length (~8.5 s) get 4-5 tiles at 2 s, 1-2 at 5 s and the nearest tile at 10 s, every one
    on the real spacing and inside its clip unless the clip falls between two tiles."""
    from test_youtube_storyboard import DSM, GJL, WW1, load

    spacing = {"dsMFmonKDD4": 2.0, "GJLlxj_dtq8": 5.0, "F1xioXWb8CY": 10.0}
    rng = random.Random(7)
    listed = ["video_id,start,end,caption"]
    with sample_site.serve(tmp_path / "site") as base:
        for seed, name in enumerate((DSM, GJL, WW1)):
            video_id = _publish_real(tmp_path / "site", base, load(name), seed)
            start = 3.3
            for _ in range(12):
                length = round(rng.uniform(6.0, 11.0), 3)
                listed.append(f"{video_id},{start},{start + length},a clip of {video_id}")
                start = round(start + length + rng.uniform(1.0, 9.0), 3)
        (tmp_path / "list.csv").write_text("\n".join(listed) + "\n")
        assert cli.main(["clips", "--input", str(tmp_path / "list.csv"), "--info-json", str(tmp_path / "site" / "info"),
                         "--out", str(tmp_path / "out"), *QUIET]) == 0
    rows = _rows(tmp_path / "out")
    assert len(rows) == 36
    for row in rows:
        meta = json.loads(row["meta"])
        step, frames = spacing[meta["video_id"]], row["times"][:-1]
        assert meta["interval"] == step and all(t % step == 0 for t in frames)
        inside = [t for t in frames if meta["start"] <= t <= meta["end"]]
        if step == 2.0:
            assert len(frames) == len(inside) in (3, 4, 5, 6)
        elif inside != frames:   # between two tiles: the one nearest its middle
            middle = (meta["start"] + meta["end"]) / 2
            assert len(frames) == 1 and abs(frames[0] - middle) <= step / 2
