"""Issue 17's done-when, on real material: info dicts whose storyboard formats yt-dlp's own
extractor built from real recorded player responses, with a real English ASR track (json3,
acAsrConf and all), fetched through yt-dlp's real download path from a local server.

- F1xioXWb8CY (1509 s, 152 tiles at 10 s) gets the first 1509 s of the real 50-minute ASR
  conversation; its mosaics are drawn, with a static stretch (tiles 42-59 show one picture)
  and two black tiles (a fade), in shots of three tiles.
- GJLlxj_dtq8 (316 s, 65 tiles at 5 s) gets what real ASR gives a video without speech:
  "[Music]", "a [Music]", "he" (the REFERENCE's real-world notes).
"""

import json
import math
import random

import pytest
from PIL import Image

from emu_data import cli
from emu_data.core import records
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.sources.youtube.transcript import ANNOTATION
from emu_data.synthetic import site as sample_site
from emu_data.synthetic import world
from test_youtube import QUIET
from test_youtube_quality import TRACKS
from test_youtube_storyboard import WW1, GJL, load, ytdlp_info

STILL = range(42, 60)    # tiles of the static stretch (42 opens a shot)
SHOT = 3                 # tiles per shot: a cut every 3 tiles, as in edited video
BLACK = (100, 101)       # black tiles
SPEECH_ID, MUSIC_ID = "F1xioXWb8CY", "GJLlxj_dtq8"


def _tiles(count: int, interval: float, seed: int) -> list[Image.Image]:
    """Shots of SHOT tiles, each a clip of its own; the stretch repeats its first tile."""
    tiles = []
    for k in range(count):
        shown = STILL[0] if k in STILL else k
        clip = world.random_clip(random.Random(f"{seed}:{shown // SHOT}"), SHOT * interval)
        scene = clip.scene_at(shown % SHOT * interval)
        tiles.append(Image.new("RGB", (160, 90), "black") if k in BLACK else world.render(scene, 160, 90))
    return tiles


def _publish(root, base, response: dict, track: dict, interval: float, seed: int) -> None:
    info = ytdlp_info(response)
    video_id = response["videoDetails"]["videoId"]
    sb0 = next(f for f in info["formats"] if f["format_id"] == "sb0")
    folder = root / "yt" / video_id
    folder.mkdir(parents=True)
    count = round(sb0["fps"] * info["duration"])
    tiles = _tiles(count, interval, seed)
    per = sb0["columns"] * sb0["rows"]
    for j, fragment in enumerate(sb0["fragments"]):
        group = tiles[j * per:(j + 1) * per]
        mosaic = Image.new("RGB", (sb0["columns"] * 160, math.ceil(len(group) / sb0["columns"]) * 90))
        for i, tile in enumerate(group):
            mosaic.paste(tile, ((i % sb0["columns"]) * 160, (i // sb0["columns"]) * 90))
        mosaic.save(folder / f"M{j}.jpg", quality=80)
        fragment["url"] = f"{base}/yt/{video_id}/M{j}.jpg"
    (folder / "asr.json3").write_text(json.dumps(track))
    info.update(id=video_id, title=response["videoDetails"]["title"], extractor="youtube", extractor_key="Youtube",
                _type="video", subtitles={},
                automatic_captions={"en-orig": [{"ext": "json3", "url": f"{base}/yt/{video_id}/asr.json3",
                                                 "name": "English (auto-generated)"}]})
    (root / "info").mkdir(exist_ok=True)
    (root / "info" / f"{video_id}.info.json").write_text(json.dumps(info))


def _speech_track() -> dict:
    track = json.loads((TRACKS / "asr_conversation.json3").read_text())
    return {**track, "events": [e for e in track["events"] if e["tStartMs"] < 1_509_000]}


def _music_track() -> dict:
    said = ["[Music]", "[Music]", "a [Music]", "[Music]", "[Music] [Music]", "he", "[Music]", "a [Music]", "he"]
    events = [{"tStartMs": 0, "dDurationMs": 316_000, "id": 1, "wpWinPosId": 1, "wsWinStyleId": 1}]
    for i, t in enumerate(range(2_000, 316_000, 4_000)):
        text = said[i % len(said)].split(" ")
        events.append({"tStartMs": t, "dDurationMs": 3_900, "wWinId": 1,
                       "segs": [{"utf8": (" " if k else "") + w, "tOffsetMs": 300 * k, "acAsrConf": 0}
                                for k, w in enumerate(text)]})
        events.append({"tStartMs": t + 3_900, "dDurationMs": 100, "wWinId": 1, "aAppend": 1, "segs": [{"utf8": "\n"}]})
    return {"wireMagic": "pb3", "events": events}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("real")
    out = tmp_path_factory.mktemp("real-out") / "corpus"
    with sample_site.serve(root) as base:
        _publish(root, base, load(WW1), _speech_track(), interval=10.0, seed=1)
        _publish(root, base, load(GJL), _music_track(), interval=5.0, seed=2)
        assert cli.main(["youtube", "--info-json", str(root / "info"), "--out", str(out), *QUIET]) == 0
    return out


def _rows(out, kind):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _samples(out, video_id):
    rows = [r for r in _rows(out, "data") if r["key"].startswith(f"yt_storyboard:{video_id}:")]
    return sorted(rows, key=lambda r: int(r["key"].rsplit(":", 1)[1]))


def test_a_music_only_video_ends_in_the_status_table_with_its_reason(corpus):
    status = {r["key"]: r for r in _rows(corpus, "status")}
    music = status[f"yt_storyboard:{MUSIC_ID}"]
    assert music["status"] == "low_speech" and records.frames_taken(music["error"]) == 65
    assert _samples(corpus, MUSIC_ID) == []
    assert status[f"yt_storyboard:{SPEECH_ID}"]["status"] == "ok"


def test_every_spoken_word_once_in_order(corpus):
    events = _speech_track()["events"]
    spoken = [w for e in events if not e.get("aAppend")
              for w in "".join(s["utf8"] for s in e.get("segs") or []).split()]
    texts = [t for r in _samples(corpus, SPEECH_ID) for t in r["texts"] if t is not None]
    assert " ".join(texts).split() == spoken
    assert len(spoken) > 3000


def test_no_text_position_holds_only_an_annotation_or_punctuation(corpus):
    for row in _samples(corpus, SPEECH_ID):
        for text in filter(None, row["texts"]):
            assert any(ch.isalnum() for ch in text) and not ANNOTATION.search(text)


def test_each_text_sits_between_the_frames_that_bracket_its_time(corpus):
    positions = [(t, text is None) for r in _samples(corpus, SPEECH_ID) for t, text in zip(r["times"], r["texts"])]
    frame_times = [t for t, is_frame in positions if is_frame]
    assert frame_times == sorted(frame_times)
    for i, (t, is_frame) in enumerate(positions):
        if is_frame:
            continue
        before = [ft for ft, f in positions[:i] if f]
        after = [ft for ft, f in positions[i + 1:] if f]
        assert (not before or before[-1] <= t) and (not after or t <= after[0])


def test_a_static_stretch_keeps_one_frame_at_its_true_time_and_black_tiles_go(corpus):
    rows = _samples(corpus, SPEECH_ID)
    frame_times = [t for r in rows for t, text in zip(r["times"], r["texts"]) if text is None]
    assert 420.0 in frame_times                                       # the stretch's first tile, at its time
    assert not {k * 10.0 for k in STILL[1:]} & set(frame_times)       # the rest of it is gone
    assert not {k * 10.0 for k in BLACK} & set(frame_times)
    cleaning = [json.loads(r["meta"]).get("cleaning", {}) for r in rows]
    static = sorted(t for c in cleaning for t in c.get("static_frames", []))
    blank = sorted(t for c in cleaning for t in c.get("blank_frames", []))
    assert set(static) >= {k * 10.0 for k in STILL[1:]}
    assert blank == [1000.0, 1010.0]
    assert len(frame_times) + len(static) + len(blank) == 152          # every tile accounted for
    speech = json.loads(rows[0]["meta"])["speech"]
    assert speech["language"] == "en" and 0.8 < speech["asr_confidence"] < 0.95
