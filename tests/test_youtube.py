"""`emu-data youtube` end to end: yt-dlp's real download path against a local server.

A mixed batch (good, ASR-only, json3-only, no subtitles, 404 mosaic, bot check, broken
subtitles, truncated mosaic, one rate-limit answer) becomes a valid corpus plus a status
table that accounts for every video.
"""

import json
import shutil
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import records
from emu_data.sources.youtube.transcript import ANNOTATION
from emu_data.synthetic import site as sample_site
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.inspect.validate import validate

DATA = Path(__file__).parent / "data" / "youtube"
V = sample_site.SiteVideo
BATCH = [
    V("good0000001"),
    V("asr00000001", subtitles="auto", duration=90),
    V("json3000001", subtitles="json3_only", duration=200),   # 41 tiles: a cropped last mosaic
    V("nosubs00001", subtitles="none"),
    V("missing0001", duration=200),                           # mosaic M1 answers 404
    V("badvtt00001", subtitles="vtt_only"),
    V("htmlsub0001", subtitles="json3_only"),
    V("truncjpg001"),
    V("ratelim0001"),                                         # one 429, then served
    V("ratelim0002"),                                         # 429 on every attempt of the first run
    V("nostory0001"),                                         # no storyboard formats at all
    # real YouTube's habits, for the quality filters (issue 17)
    V("music000001", subtitles="auto", speech="music"),       # ASR of a video without speech
    V("german00001", speech="german"),                        # a German track labelled English
    V("still000001", frames="still"),                         # one picture throughout
    V("short000001", duration=8),
    V("stretch0001", frames="stretch", duration=120),         # a static stretch in the middle
    V("blank000001", frames="blank"),                         # a fade: black and white tiles
    V("annotated01", subtitles="json3_only", speech="annotated"),
]
EXPECTED = {
    "good0000001": "ok", "asr00000001": "ok", "json3000001": "ok", "ratelim0001": "ok",
    "nosubs00001": "no_subtitles", "missing0001": "http_404", "badvtt00001": "malformed_subtitles",
    "htmlsub0001": "malformed_subtitles", "truncjpg001": "decode_error", "botcheck001": "bot_check",
    "ratelim0002": "rate_limited", "nostory0001": "no_storyboard", "gone0000001": "unavailable",
    "music000001": "low_speech", "german00001": "language_mismatch", "still000001": "static_video",
    "short000001": "too_short", "stretch0001": "ok", "blank000001": "ok", "annotated01": "ok",
}
QUIET = ["--sleep-requests", "0", "--sleep-interval", "0", "--sleep-subtitles", "0", "--retries", "0",
         "--cooldown", "0.01", "--allow-private-addresses", "--videos-per-unit", "3"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    # ratelim0002: the first run tries 1 + 3 times (rate_limit_retries), then gives up
    faults = {"/yt/missing0001/M1.jpg": [404] * 5, "/yt/ratelim0001/M0.jpg": [429],
              "/yt/ratelim0002/M0.jpg": [429] * 4}
    with sample_site.serve(root, faults) as base:
        sample_site.publish_youtube(root, base, BATCH)
        (root / "yt" / "badvtt00001" / "subs.vtt").write_text("this is not WEBVTT\n00:01 --> nonsense\n")
        (root / "yt" / "htmlsub0001" / "subs.json3").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
        mosaic = root / "yt" / "truncjpg001" / "M0.jpg"
        mosaic.write_bytes(mosaic.read_bytes()[:2000])
        shutil.copy(DATA / "youtube_request_blocked.innertube.json", root / "info" / "botcheck001.json")
        shutil.copy(DATA / "youtube_video_unavailable.innertube.json", root / "info" / "gone0000001.json")
        info = root / "info" / "nostory0001.info.json"
        info.write_text(json.dumps({**json.loads(info.read_text()), "formats": []}))
        yield root


@pytest.fixture(scope="module")
def corpus(site, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("yt") / "corpus"
    assert cli.main(["youtube", "--info-json", str(site / "info"), "--out", str(out), *QUIET]) == 0
    return out


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def test_every_video_is_accounted_for_with_its_reason(corpus):
    status = {r["key"].split(":")[1]: r for r in _rows(corpus, "status")}
    assert {vid: r["status"] for vid, r in status.items()} == EXPECTED
    assert status["ratelim0001"]["attempts"] == 2  # paused, then retried
    assert all(r["error"] for r in status.values() if r["status"] != "ok")
    assert "not a bot" in status["botcheck001"]["error"] or "LOGIN_REQUIRED" in status["botcheck001"]["error"]


def test_the_corpus_validates(corpus):
    report = validate([corpus], deep=True)
    assert report.ok, [str(v) for v in report.violations]


def test_tiles_sit_on_the_real_spacing_and_text_precedes_its_frame(corpus):
    for row in _rows(corpus):
        times, images = row["times"], row["images"]
        frames = [t for t, i in zip(times, images) if i is not None]
        assert all(t % 5.0 == 0 for t in frames), frames  # 5 s interval, never 1/fps drift
        for i, (t, image) in enumerate(zip(times, images)):
            if image is None and i + 1 < len(times):  # text before a frame came before it
                assert t < times[i + 1]
            if image is None and i > 0:               # ...and after the frame before it
                assert t >= times[i - 1]


def test_chunks_cover_the_whole_video(corpus):
    rows = sorted((r for r in _rows(corpus) if r["key"].startswith("yt_storyboard:json3000001:")),
                  key=lambda r: int(r["key"].rsplit(":", 1)[1]))
    frames = [t for r in rows for t, i in zip(r["times"], r["images"]) if i is not None]
    assert frames == [5.0 * k for k in range(41)]  # ceil(200/5)+1 tiles, the last mosaic cropped
    assert all(sum(i is not None for i in r["images"]) <= 16 for r in rows)
    assert json.loads(rows[0]["meta"])["chunks"] == len(rows) == 3


def test_asr_text_comes_out_once(corpus):
    video = V("asr00000001", subtitles="auto", duration=90)
    text = " ".join(t for r in _rows(corpus) if r["key"].startswith("yt_storyboard:asr00000001:")
                    for t in r["texts"] if t)
    cues = [c.text for c in video.cues()]
    assert text == " ".join(cues)  # every phrase, in order, once: no rolling repeats


def _video(out, video_id):
    return sorted((r for r in _rows(out) if r["key"].startswith(f"yt_storyboard:{video_id}:")),
                  key=lambda r: int(r["key"].rsplit(":", 1)[1]))


def _frames(rows):
    return [t for r in rows for t, i in zip(r["times"], r["images"]) if i is not None]


def _cleaning(rows, field):
    return sorted(x for r in rows for x in json.loads(r["meta"]).get("cleaning", {}).get(field, []))


def test_filtered_videos_say_how_many_frames_they_had(corpus):
    status = {r["key"].split(":")[1]: r for r in _rows(corpus, "status")}
    for video in BATCH:
        if EXPECTED[video.video_id] in ("low_speech", "language_mismatch", "static_video", "too_short"):
            assert records.frames_taken(status[video.video_id]["error"]) == video.tile_count
            assert _video(corpus, video.video_id) == []


def test_annotations_leave_the_text_and_every_spoken_word_stays(corpus):
    video = next(v for v in BATCH if v.video_id == "annotated01")
    rows = _video(corpus, "annotated01")
    texts = [t for r in rows for t in r["texts"] if t]
    assert " ".join(texts).split() == " ".join(c.text for c in video.spoken_cues()).split()
    assert not any(ANNOTATION.search(t) for t in texts)
    removed = [text for _, text in (x for r in rows for x in json.loads(r["meta"]).get("cleaning", {}).get("removed", []))]
    assert set(removed) >= set(sample_site.youtube.ANNOTATIONS)


def test_a_static_stretch_and_blank_tiles_leave_their_frames_in_meta(corpus):
    stretch = next(v for v in BATCH if v.video_id == "stretch0001")
    rows = _video(corpus, "stretch0001")
    repeated = [k * stretch.interval for k in stretch.repeated_tiles()]
    assert stretch.stretch_tiles()[0] * stretch.interval in _frames(rows)   # the stretch's first frame stays
    assert not set(repeated) & set(_frames(rows)) and set(_cleaning(rows, "static_frames")) >= set(repeated)
    assert len(_frames(rows)) + len(_cleaning(rows, "static_frames")) == stretch.tile_count
    blank = next(v for v in BATCH if v.video_id == "blank000001")
    rows = _video(corpus, "blank000001")
    assert _cleaning(rows, "blank_frames") == sorted(k * blank.interval for k in blank.blank_tiles())
    assert len(_frames(rows)) + len(_cleaning(rows, "blank_frames")) + len(_cleaning(rows, "static_frames")) \
        == blank.tile_count


def test_rerun_skips_and_retry_failed_reruns_only_retryable_units(corpus, site, capsys):
    args = ["youtube", "--info-json", str(site / "info"), "--out", str(corpus), *QUIET]
    assert cli.main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli.main(args + ["--retry-failed"]) == 0
    # only ratelim0002's and botcheck001's units hold a retryable reason; the server now
    # answers ratelim0002, and botcheck001's file still says LOGIN_REQUIRED
    assert "2 unit(s) run" in capsys.readouterr().out
    status = {r["key"].split(":")[1]: r["status"] for r in _rows(corpus, "status")}
    assert status == {**EXPECTED, "ratelim0002": "ok"}
    assert validate([corpus]).ok

