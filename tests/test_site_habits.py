"""The sample YouTube site's real-world habits (SiteVideo speech= and frames=): what each
subtitle format says and what the storyboard tiles show, checked against the ground truth
SiteVideo exposes, read back from the published files. Defaults stay byte-identical."""

import html
import json
import math
import random
import re

import numpy as np
import pytest
from PIL import Image

from emu_data.synthetic import world
from emu_data.synthetic.site import youtube as site
from emu_data.synthetic.site.youtube import ANNOTATIONS, BLACK, NEAR_WHITE, SiteVideo

SEEDS = (0, 1, 2, 3)


def _published(tmp_path, video: SiteVideo):
    site.publish_youtube(tmp_path, "http://127.0.0.1:1", [video])
    return tmp_path / "yt" / video.video_id


def _track_texts(folder) -> dict[str, list[str]]:
    """Each cue's text as each written format holds it, read without the source's parser."""
    events = json.loads((folder / "subs.json3").read_text(encoding="utf-8"))["events"]
    from_json3 = ["".join(s["utf8"] for s in e["segs"]) for e in events if not e.get("aAppend")]
    vtt_blocks = (folder / "subs.vtt").read_text(encoding="utf-8").split("\n\n")[1:]
    from_vtt = [html.unescape(b.split("\n")[1]) for b in vtt_blocks if "-->" in b]
    # ASR: each phrase typed (with word timestamps), then held 10 ms as the held cue's first line
    asr = (folder / "subs.asr.vtt").read_text(encoding="utf-8").split("\n\n")[1:]
    held = [b.split("\n") for b in asr if "-->" in b]
    from_asr = [html.unescape(lines[1]) for lines in held[1::2]]
    typed = [html.unescape(re.sub(r"<[^>]*>", "", lines[2])) for lines in held[0::2]]
    assert typed == from_asr
    return {"json3": from_json3, "vtt": from_vtt, "asr.vtt": from_asr}


def _tiles(folder, video: SiteVideo) -> list[np.ndarray]:
    per, tiles = site.COLUMNS * site.ROWS, []
    for k in range(video.tile_count):
        mosaic = np.asarray(Image.open(folder / f"M{k // per}.jpg").convert("RGB"), dtype=float)
        row, col = divmod(k % per, site.COLUMNS)
        tiles.append(mosaic[row * site.TILE_H:(row + 1) * site.TILE_H, col * site.TILE_W:(col + 1) * site.TILE_W])
    return tiles


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels that differ by more than JPEG noise does (a moved edge, not ringing)."""
    return int((np.abs(a - b).max(axis=2) > 48).sum())


def _words(text: str) -> list[str]:
    return [w for w in text.split() if w not in ANNOTATIONS]


# ---- defaults: what the site published before the habits ----------------------------------


def test_default_video_publishes_what_it_did_before(tmp_path):
    video = SiteVideo("plain000001", seed=3)
    assert (video.speech, video.frames) == ("narrated", "moving")
    folder = _published(tmp_path, video)
    clip = world.random_clip(random.Random("3:plain000001"), 62.0)
    cues = world.narrate(clip, every=4.0, rng=random.Random("3:plain000001:cues"))
    assert video.cues() == cues and video.spoken_cues() == cues
    assert (folder / "subs.json3").read_text(encoding="utf-8") == site.json3(cues)
    assert (folder / "subs.vtt").read_text(encoding="utf-8") == site.vtt(cues)
    assert (folder / "subs.asr.vtt").read_text(encoding="utf-8") == site.asr_vtt(cues)
    # the mosaics as the site drew them before frames= existed
    tiles = [world.render(clip.scene_at(min(k * 5.0, 62.0)), site.TILE_W, site.TILE_H) for k in range(14)]
    for j in range(math.ceil(len(tiles) / 25)):
        group = tiles[j * 25:(j + 1) * 25]
        mosaic = Image.new("RGB", (5 * site.TILE_W, math.ceil(len(group) / 5) * site.TILE_H), "black")
        for i, tile in enumerate(group):
            mosaic.paste(tile, ((i % 5) * site.TILE_W, (i // 5) * site.TILE_H))
        assert (folder / f"M{j}.jpg").read_bytes() == world.encode(mosaic, quality=85)
    assert video.tile_scenes() == [clip.scene_at(t) for t in video.tile_times()]
    assert video.blank_tiles() == {} and video.repeated_tiles() == [] and video.stretch_tiles() == []


def test_unknown_habits_are_refused():
    with pytest.raises(ValueError, match="speech"):
        SiteVideo("x", speech="silent")
    with pytest.raises(ValueError, match="frames"):
        SiteVideo("x", frames="frozen")


# ---- speech ---------------------------------------------------------------------------------


@pytest.mark.parametrize("speech", ["narrated", "music", "annotated", "german"])
def test_every_format_is_written_from_the_same_cues(tmp_path, speech):
    video = SiteVideo("habit000001", speech=speech, seed=1)
    texts = _track_texts(_published(tmp_path, video))
    want = [c.text for c in video.cues()]
    assert texts == {"json3": want, "vtt": want, "asr.vtt": want}
    cues = video.cues()
    assert cues[0].start == 0 and cues[-1].end == video.duration
    assert all(a.end == b.start for a, b in zip(cues, cues[1:])) and all(c.end > c.start for c in cues)


@pytest.mark.parametrize("seed", SEEDS)
def test_music_track_is_asr_of_no_speech(seed):
    video = SiteVideo("music000001", speech="music", seed=seed)
    texts = [c.text for c in video.cues()]
    tokens = " ".join(texts).split()
    words = _words(" ".join(texts))
    assert len(words) <= 4 and len(words) <= 0.15 * len(tokens), texts
    assert set(words) <= {"a", "he"} and "he" in words
    assert {"[Music]", "a [Music]", "[Music] [Music]"} <= set(texts)
    assert len(texts) >= video.duration / 6   # a cue every few seconds
    assert " ".join(c.text for c in video.spoken_cues()).split() == words


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("duration", [62.0, 10.0])
def test_annotated_track_keeps_the_narration_under_its_annotations(seed, duration):
    video = SiteVideo("annot000001", speech="annotated", seed=seed, duration=duration)
    narrated = SiteVideo("annot000001", seed=seed, duration=duration).cues()
    cues = video.cues()
    assert [(c.start, c.end) for c in cues] == [(c.start, c.end) for c in narrated]
    tokens = " ".join(c.text for c in cues).split()
    assert set(ANNOTATIONS) <= set(tokens)
    assert sum(c.text in ("[Music]", "[Applause]", "[Laughter]") for c in cues) >= 1      # annotation-only
    assert sum(c.text in ("...", "♪ ♪") for c in cues) == 1                               # punctuation-only
    broken = [w for w in tokens if "â€™" in w]
    assert len(broken) == 1 and broken[0].encode("cp1252").decode("utf-8").endswith("’s")
    assert broken[0] == site.mojibake(broken[0].encode("cp1252").decode("utf-8"))
    # the spoken words are the narration's, but for two replaced cues and one contraction
    spoken = {(c.start, c.end): c.text for c in video.spoken_cues()}
    assert len(spoken) == len(narrated) - 2
    contracted = 0
    for cue in narrated:
        if (cue.start, cue.end) in spoken and spoken[cue.start, cue.end] != cue.text:
            contracted += 1
            assert spoken[cue.start, cue.end] == re.sub(r" is ", "’s ", cue.text, count=1)
    assert contracted == 1
    said = [c for c in cues if _words(c.text)]
    annotated = [c for c in said if set(ANNOTATIONS) & set(c.text.split())]
    assert annotated and (len(annotated) < len(said) or duration < 30)  # some, not all, on a full video


@pytest.mark.parametrize("seed", SEEDS)
def test_german_track_is_german_under_an_english_label(tmp_path, seed):
    video = SiteVideo("german00001", speech="german", seed=seed)
    text = " ".join(c.text for c in video.cues())
    words = re.findall(r"\w+", text.lower())
    assert len(words) >= 100
    assert {"ist", "und", "nach", "hier", "sehen", "wir", "hintergrund", "auf", "einem"} <= set(words)
    assert {"der", "das"} & set(words) and {"er", "es"} & set(words)
    assert not {"the", "is", "moves", "left", "right"} & set(words)
    english = SiteVideo("german00001", seed=seed).cues()
    assert [(c.start, c.end) for c in video.cues()] == [(c.start, c.end) for c in english]
    info = site.publish_youtube(tmp_path, "http://127.0.0.1:1", [video])[0]
    assert list(info["subtitles"]) == ["en"] and info["subtitles"]["en"][0]["name"] == "English"
    assert "Language: en" in (tmp_path / "yt" / "german00001" / "subs.vtt").read_text(encoding="utf-8")
    langid = pytest.importorskip("py3langid")
    assert langid.classify(text)[0] == "de"


def test_german_narration_is_grammatical_for_every_shape_and_colour():
    """Gender agreement: der/er with Kreis and Stern, das/es with Quadrat and Dreieck."""
    for shape, (noun, gender) in world._DE_SHAPES.items():
        for colour in world.COLOURS:
            mover = world.Mover(world.Thing(shape, colour, 0.2, 0.5, 0.2), 0.02, 0.0)
            first, second = world.narrate_german(world.Clip(6.0, "beige", (mover,)), 3.0)
            article, pronoun = ("der", "er") if gender == "m" else ("das", "es")
            stem = world._DE_COLOURS[colour]
            opening = f"einen {stem}en {noun}" if gender == "m" else f"ein {stem}es {noun}"
            said = f"{stem}e {noun} ist links, und {pronoun} bewegt sich nach rechts."
            seen = f"Hier sehen wir {opening} auf einem beigefarbenen Hintergrund."
            assert first.text == f"{seen} {article.title()} {said}"
            assert second.text == f"Jetzt ist {article} {stem}e {noun} links, und {pronoun} bewegt sich nach rechts."


# ---- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_still_frames_are_one_image(tmp_path, seed):
    video = SiteVideo("still000001", frames="still", seed=seed)
    tiles = _tiles(_published(tmp_path, video), video)
    assert video.repeated_tiles() == list(range(1, video.tile_count))
    assert len(set(video.tile_scenes())) == 1 and video.blank_tiles() == {}
    for a, b in zip(tiles, tiles[1:]):
        assert np.abs(a - b).mean() < 1 and _changed_pixels(a, b) == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_static_stretch_repeats_only_inside_the_middle_third(tmp_path, seed):
    video = SiteVideo("stretch0001", frames="stretch", seed=seed)
    tiles = _tiles(_published(tmp_path, video), video)
    stretch, times = video.stretch_tiles(), video.tile_times()
    assert len(stretch) >= 2 and all(video.duration / 3 <= times[k] < 2 * video.duration / 3 for k in stretch)
    assert video.repeated_tiles() == stretch[1:]
    for k in range(1, len(tiles)):
        if k in video.repeated_tiles():
            assert np.abs(tiles[k] - tiles[k - 1]).mean() < 1 and _changed_pixels(tiles[k], tiles[k - 1]) == 0
        else:
            assert _changed_pixels(tiles[k], tiles[k - 1]) > 20, k


@pytest.mark.parametrize("seed", SEEDS)
def test_blank_tiles_are_a_solid_fade(tmp_path, seed):
    video = SiteVideo("blank000001", frames="blank", seed=seed)
    tiles = _tiles(_published(tmp_path, video), video)
    blanks = video.blank_tiles()
    assert sorted(blanks.values()) == sorted([BLACK, BLACK, NEAR_WHITE])
    ks = sorted(blanks)
    assert 0 < ks[0] and ks[-1] < video.tile_count - 1 and all(b - a > 1 for a, b in zip(ks, ks[1:]))
    assert [k for k, s in enumerate(video.tile_scenes()) if s is None] == ks
    assert video.repeated_tiles() == []
    for k, tile in enumerate(tiles):
        if k in blanks:
            assert tile.std() < 2 and np.abs(tile.mean(axis=(0, 1)) - blanks[k]).max() < 2
        else:
            assert tile.std() > 4   # a drawn scene: a shape on a background


def test_short_videos_refuse_habits_they_cannot_hold():
    with pytest.raises(ValueError, match="7\\+ tiles"):
        SiteVideo("x", duration=20.0, frames="blank").blank_tiles()
    with pytest.raises(ValueError, match="3\\+ cues"):
        SiteVideo("x", duration=6.0, speech="annotated").cues()
