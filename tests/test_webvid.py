"""`emu-data webvid` end to end: WebVid CSVs whose mp4s live on a local server.

A mixed batch (clean clips, a caption with quoted commas and a line break, a 404, a cut mp4,
a cut faststart mp4, HTML served as mp4, a bad duration, no URL, a path as videoid, a row
short of a field, clips too short by duration or by frames, an oversize mp4 under a small
max_bytes, one 503 before the file, a repeated videoid in another file) becomes a valid
corpus plus a status table with exactly one row per CSV row.
"""

import csv
import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from emu_data import net
from emu_data.synthetic import world
from emu_data.core.corpus import shard_paths
from emu_data.synthetic.site import serve
from emu_data.synthetic.site.webvid import FAULTS, SiteClip, publish_webvid
from emu_data.core.shards import read_shard
from emu_data.sources import webvid
from emu_data.engine.stage import OutputOptions
from emu_data.inspect.validate import validate

C = SiteClip
FAULTED = [C(f"30{i:02d}", fault=fault) for i, fault in enumerate(f for f in FAULTS if f)]
BATCH = [C("1000", quoted_caption=True), C("1001"), C("1002", duration=7.0), *FAULTED[:6]]
OTHER = [*FAULTED[6:], C("1003"), C("flaky_1"), C("1001")]  # 1001 again: a repeat across files
EXPECTED = {  # by fault
    None: "ok", "missing": "http_404", "truncated": "decode_error", "truncated_tail": "decode_error",
    "not_video": "decode_error", "bad_duration": "bad_duration", "no_url": "missing_url",
    "bad_id": "invalid_id", "malformed": "malformed_row", "short": "too_short",
    "declared_short": "too_short", "few_frames": "too_short", "oversize": "too_large",
}
# Another exporter's column order, without page_idx: columns are found by name.
OTHER_COLUMNS = ("contentUrl", "videoid", "duration", "page_dir", "name")
NET = net.NetPolicy(retries=1, backoff_base=0.01, per_host_rate=0, allow_private_addresses=True,
                    max_bytes=512 * 2**10)
CONFIG = webvid.WebvidConfig(rows_per_unit=4, fetch_workers=3)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    with serve(root, {"/webvid/flaky_1.mp4": [503]}) as base:
        published = publish_webvid(root, base, BATCH, shards=2)
        published += publish_webvid(root, base, OTHER, prefix="results_xl", columns=OTHER_COLUMNS)
        yield root, published


def _run(site, out, ray):
    return webvid.make_webvid([site[0] / "webvid"], CONFIG, NET, OutputOptions(out, shard_rows=5), ray)


@pytest.fixture(scope="module")
def corpus(site, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("webvid") / "corpus"
    _run(site, out, ray_session)
    return out


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _expected_key(p) -> str:
    """Rows without a usable id are keyed by file stem and line; a repeated id by <key>#dupN."""
    if p.clip.fault in ("bad_id", "malformed"):
        return f"webvid:{p.path.stem}-{p.line}"
    repeat = p.clip.videoid == "1001" and p.path.name.startswith("results_xl")
    return f"webvid:{p.clip.videoid}" + ("#dup1" if repeat else "")


@pytest.mark.parametrize("text, seconds", [
    ("PT00H00M17S", 17), ("PT17S", 17), ("P0DT00H00M17S", 17), ("PT1H2M3S", 3723),
    ("PT1M2.5S", 62.5), ("P1D", 86400), ("pt00h00m09s", 9), (" PT00H00M05S ", 5)])
def test_iso_durations(text, seconds):
    assert webvid.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "17", "17 seconds", "P", "PT", "P1DT", "PT-5S", "P1M", "P1Y2M",
                                  "PT5S garbage", "00:00:17", "PT1.S"])
def test_bad_durations(text):
    with pytest.raises(webvid.VideoError) as e:
        webvid.parse_duration(text)
    assert e.value.reason == "bad_duration"


def test_units_are_deterministic_slices_that_keep_quoted_rows_whole(site):
    root, published = site
    plan = webvid.units([root / "webvid"], CONFIG, NET)
    assert plan == webvid.units([root / "webvid"], CONFIG, NET)
    assert [u.digest for u in plan] == [u.digest for u in webvid.units([root / "webvid"], CONFIG, NET)]
    rows = {(u.payload.slice.stem, line): fields for u in plan for line, fields in webvid.read_rows(u.payload.slice)}
    assert sorted(rows) == sorted((p.path.stem, p.line) for p in published)
    quoted = next(p for p in published if p.clip.quoted_caption)
    fields = rows[(quoted.path.stem, quoted.line)]
    assert fields[1] == quoted.clip.caption() and "," in fields[1] and '"' in fields[1] and "\n" in fields[1]


def test_every_row_is_accounted_for_once_with_its_reason(site, corpus):
    _, published = site
    status = {r["key"]: r for r in _rows(corpus, "status")}
    assert len(status) == len(_rows(corpus, "status")) == len(published)
    expected = {_expected_key(p): EXPECTED[p.clip.fault] for p in published}
    expected[_expected_key(published[-1])] = "duplicate_key"
    assert {k: r["status"] for k, r in status.items()} == expected
    assert status["webvid:flaky_1"]["attempts"] == 2  # one 503, then served
    assert all(r["error"] for r in status.values() if r["status"] != "ok")
    assert "results_0.csv:" in status[_expected_key(published[-1])]["error"]  # names the first row
    csv_rows = sum(1 for f in (site[0] / "webvid").glob("*.csv") for _ in list(csv.reader(f.open(newline="")))[1:])
    assert csv_rows == len(status)


def test_samples_are_eight_frames_at_increasing_times_then_the_caption(site, corpus):
    clips = {p.clip.videoid: p.clip for p in site[1] if p.clip.fault is None}
    rows = _rows(corpus)
    assert sorted(r["key"] for r in rows) == sorted(f"webvid:{v}" for v in clips)
    for row in rows:
        clip, meta = clips[row["key"].split(":")[1]], json.loads(row["meta"])
        frames = row["times"][:-1]
        assert len(frames) == 8 and all(i is not None for i in row["images"][:-1])
        assert all(0 < a < b < clip.duration for a, b in zip(frames, frames[1:]))
        assert row["times"][-1] == frames[-1] and row["texts"][-1] == clip.caption()
        assert meta["frame_times"] == frames and meta["duration"] == meta["declared_duration"] == clip.duration
        assert (meta["width"], meta["height"], meta["fps"]) == (128, 128, 10)


def test_each_frame_shows_the_scene_of_its_recorded_time(site, corpus):
    clip = next(p.clip for p in site[1] if p.clip.videoid == "1002").clip()
    row = next(r for r in _rows(corpus) if r["key"] == "webvid:1002")
    right, wrong = [], []
    for t, image in zip(row["times"], row["images"][:-1]):
        pixels = np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"), dtype=float)
        for out, when in ((right, t), (wrong, min(t + 0.6, clip.duration))):
            out.append(np.abs(pixels - np.asarray(world.render(clip.scene_at(when), 128, 128))).mean())
    assert np.mean(right) < 0.6 * np.mean(wrong), (right, wrong)


def test_the_corpus_validates_and_a_rerun_skips(site, corpus, ray_session):
    report = validate([corpus], deep=True)
    assert report.ok, [str(v) for v in report.violations]
    assert _run(site, corpus, ray_session).reused


def test_the_command_cuts_videos_at_max_bytes(site, tmp_path, ray_session):
    """Before, `emu-data webvid` overwrote --max-bytes with its own --max-video-bytes: the cap
    a user gave was silently ignored. Now there is one option, the net policy's."""
    from emu_data import cli

    out = tmp_path / "cut"
    clips = tmp_path / "clips.csv"   # two good videos of the site, nothing else
    clips.write_text("\n".join(site[1][0].path.read_text().splitlines()[:3]))
    assert cli.main(["webvid", "--input", str(clips), "--out", str(out), "--allow-private-addresses",
                     "--retries", "0", "--max-bytes", "2000", "--rows-per-unit", "4"]) == 0
    statuses = [r["status"] for r in _rows(out, "status")]
    assert statuses and set(statuses) == {"too_large"}, statuses


def test_frame_size_caps_the_longest_side_and_never_upscales():
    assert webvid._fit(596, 336, 512) == (512, 289)
    assert webvid._fit(128, 128, 512) == (128, 128)
    assert webvid._fit(336, 596, None) == (336, 596)


def test_only_the_mp4_demuxer_reads_downloaded_bytes():
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://169.254.169.254/seg.ts\n#EXT-X-ENDLIST\n"
    with pytest.raises(webvid.VideoError) as e:  # never handed to FFmpeg's HLS demuxer, which fetches
        webvid.sample_video(playlist, webvid.WebvidConfig())
    assert e.value.reason == "decode_error"


def test_frames_left_undecoded_change_no_output(site, monkeypatch):
    """sample_video has the decoder skip non-reference frames shown before the time it looks
    for (the clip has 27 in 70): its frames, times and JPEG bytes are those of decoding every
    frame."""
    data = (site[0] / "webvid" / "1002.mp4").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        assert sum(1 for _ in container.decode(video=0)) < 70   # the clip has frames to skip
    for config in (webvid.WebvidConfig(), webvid.WebvidConfig(frames=3), webvid.WebvidConfig(frames=30)):
        skipping = webvid.sample_video(data, config)
        with monkeypatch.context() as patch:
            patch.setattr(webvid, "_frames", lambda container, stream, wanted: (
                f for f in container.decode(stream) if f.pts is not None))
            every = webvid.sample_video(data, config)
        assert (skipping.times, skipping.images) == (every.times, every.images)
