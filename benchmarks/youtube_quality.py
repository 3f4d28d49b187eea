"""The measurements behind the YouTube quality filters' defaults, and what the filters cost.

    python benchmarks/youtube_quality.py [--tracks DIR] [--videos 40]

Real tracks (tests/data/youtube-json3, MIT; copied from ../shared/fixtures): a ~50-minute
English ASR conversation with per-word acAsrConf, and a ~10-minute manual English track.
- speech rate: words per minute of each whole track, and of every one-minute window
  (the low_speech default must sit far below real speech, windows with pauses included);
- language ID (py3langid): the share of windows of n words of real English ASR that are
  named English, and the probability of the ones that are not (language_mismatch must not
  reject real English ASR for its noise), against German text;
- ASR confidence: the distribution of acAsrConf over the track's words.
Frames (no real storyboard images are recorded, so the sample world's renders): the largest
cell difference between consecutive tiles 5 s apart, against the same picture re-encoded
with noise (what static_difference separates), and the colour standard deviation of tiles
(what blank_std must stay under).
Cost: cleaning + language ID + frame judgement per video against slicing its mosaics, in
the same run (the filters must not halve throughput).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from emu_data.sources.youtube import frames, subtitles, transcript
from emu_data.sources.youtube.storyboard import Level, slice_mosaics
from emu_data.synthetic import world

from _timing import best_of_pair  # noqa: E402  (benchmarks/ is on sys.path as a script)

ROOT = Path(__file__).resolve().parent.parent
GERMAN = ("Der rote Kreis bewegt sich langsam von links nach rechts über das Bild, während das "
          "blaue Quadrat in der Mitte bleibt und sich nicht bewegt. Danach sieht man, wie beide "
          "Formen zusammen nach oben wandern und am Ende fast den Rand erreichen.")


def percentiles(values, points=(0, 5, 10, 25, 50, 75, 90, 100)) -> str:
    ordered = sorted(values)
    return ", ".join(f"p{p} {ordered[round(p / 100 * (len(ordered) - 1))]:.3g}" for p in points)


def windows_per_minute(cues) -> list[float]:
    """Words in each whole minute of the track (the last, partial minute left out)."""
    end = int(max(c.end for c in cues) // 60)
    counts = [0] * end
    for cue in cues:
        for word in cue.text.split():
            minute = int(cue.start // 60)
            if minute < end:
                counts[minute] += 1
    return counts


def speech_rates(tracks: dict[str, list]) -> None:
    print("## Speech rate (words per minute of track)")
    for name, cues in tracks.items():
        words = sum(len(c.text.split()) for c in cues)
        minutes = max(c.end for c in cues) / 60
        windows = windows_per_minute(cues)
        print(f"- {name}: {words} words over {minutes:.1f} min = {words / minutes:.0f} wpm; "
              f"one-minute windows: {percentiles(windows)}")


def music_rate() -> None:
    """What real ASR writes for a video without speech ("[Music]", "a [Music]", "he": the
    REFERENCE's real-world notes), a cue every 4 s, after cleaning."""
    said = ["[Music]", "[Music]", "a [Music]", "[Music]", "[Music] [Music]", "he", "[Music]", "a [Music]", "he"]
    cues = [subtitles.Cue(4.0 * i, 4.0 * i + 3.9, said[i % len(said)]) for i in range(480)]
    speech = transcript.speech(transcript.clean(cues).cues, duration=1920)
    print(f"- a 32-minute music video's ASR, cleaned: {speech.words} words = {speech.words_per_minute:.1f} wpm")


def language_windows(tracks: dict[str, list], sizes=(5, 10, 20, 50, 100)) -> None:
    print("## Language ID on windows of real English text (py3langid, normalised probabilities)")
    for name, cues in tracks.items():
        words = " ".join(c.text for c in cues).split()
        for n in sizes:
            results = [transcript.language_of(" ".join(words[i:i + n])) for i in range(0, len(words) - n, n)]
            english = [p for lang, p in results if lang == "en"]
            other = [p for lang, p in results if lang != "en"]
            line = f"- {name}, {n} words: {len(english)}/{len(results)} named en"
            if other:
                line += f"; the others' probabilities: {percentiles(other, (0, 50, 90, 100))}"
            print(line)
    lang, p = transcript.language_of(" ".join([GERMAN] * 3))
    print(f"- German narration ({len(GERMAN.split()) * 3} words): {lang} {p:.4f}")


def confidences(cues) -> None:
    values = [w.confidence for c in cues for w in c.words if w.confidence > 0]
    print(f"## acAsrConf over {len(values)} ASR words (0-255): {percentiles(values)}; "
          f"mean {statistics.mean(values):.0f} = {statistics.mean(values) / 255:.3f} of 255")


def _mosaic(tiles: list[Image.Image], quality: int = 80) -> bytes:
    mosaic = Image.new("RGB", (800, 90 * ((len(tiles) + 4) // 5)))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile, ((i % 5) * 160, (i // 5) * 90))
    return world.encode(mosaic, quality=quality)


def _level(count: int, mosaics: int) -> Level:
    return Level("sb0", 160, 90, count, 5, 5, 5.0, "duration", tuple("u" for _ in range(mosaics)))


def _noisy(image: Image.Image, seed) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-6, 7, size=(90, 160, 3))
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8))


def frame_differences(videos: int) -> None:
    """Consecutive tiles of moving clips (25 tiles 5 s apart, one mosaic) against the same
    pictures with noise at another place in a mosaic of their own (reversed: the rows fall
    on other JPEG blocks), as frames.looks sees them."""
    moving, same, spread = [], [], []
    for v in range(videos):
        clip = world.random_clip(random.Random(v), 120)
        tiles = [world.render(clip.scene_at(t), 160, 90) for t in range(0, 125, 5)]
        clean = frames.looks([_mosaic(tiles, 80)], _level(25, 1))
        noisy = frames.looks([_mosaic([_noisy(t, (v, i)) for i, t in enumerate(tiles)][::-1], 70)], _level(25, 1))
        moving += [float(np.abs(a.cells - b.cells).max()) for a, b in zip(clean, clean[1:])]
        same += [float(np.abs(a.cells - b.cells).max()) for a, b in zip(clean, noisy[::-1])]
        spread += [look.spread for look in clean]
    solid = frames.looks([_mosaic([Image.new("RGB", (160, 90), c) for c in ("black", "white", "#102030")], 80)],
                         _level(3, 1))
    print("## Frame judgements (sample-world renders, 160x90 tiles in 5x5 mosaics at JPEG q80)")
    print(f"- consecutive tiles 5 s apart, largest cell difference: {percentiles(moving, (0, 1, 5, 50, 100))}; "
          + ", ".join(f"at most {d}: {sum(m <= d for m in moving) / len(moving):.2%}" for d in (6, 8, 10, 12)))
    print(f"- the same picture with +-6 noise, re-encoded at q70: {percentiles(same, (0, 50, 90, 100))}")
    print(f"- colour standard deviation of drawn tiles: {percentiles(spread, (0, 1, 5, 50))}; "
          f"of solid black, white and dark blue tiles: {', '.join(f'{look.spread:.2f}' for look in solid)}")


def phash_differences(videos: int) -> None:
    """The perceptual hash frames.py did not take, on the same tiles (imagehash, if installed:
    it is not a dependency)."""
    try:
        import imagehash
    except ImportError:
        print("## pHash: imagehash is not installed (pip install imagehash to compare)")
        return
    moving, same = [], []
    for v in range(videos):
        clip = world.random_clip(random.Random(v), 120)
        tiles = [world.render(clip.scene_at(t), 160, 90) for t in range(0, 125, 5)]
        hashes = [imagehash.phash(_decoded(t, 80)) for t in tiles]
        noisy = [imagehash.phash(_decoded(_noisy(t, (v, i)), 70)) for i, t in enumerate(tiles)]
        moving += [a - b for a, b in zip(hashes, hashes[1:])]
        same += [a - b for a, b in zip(hashes, noisy)]
    print(f"## pHash (imagehash {imagehash.__version__}), 64 bits, same tiles")
    print(f"- consecutive tiles 5 s apart: {percentiles(moving, (0, 5, 10, 50))}; "
          f"identical hashes: {sum(m == 0 for m in moving) / len(moving):.1%}")
    print(f"- the same picture with noise: {percentiles(same, (0, 50, 90, 100))}")


def _decoded(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(world.encode(image, quality=quality)))


def mosaics_for(seed: int, count: int = 65) -> tuple[list[bytes], Level]:
    clip = world.random_clip(random.Random(seed), count * 5)
    tiles = [world.render(clip.scene_at(min(k * 5, clip.duration)), 160, 90) for k in range(count)]
    mosaics = [_mosaic(tiles[start:start + 25]) for start in range(0, count, 25)]
    return mosaics, _level(count, len(mosaics))


def costs(videos: int, track) -> None:
    sets = [mosaics_for(seed) for seed in range(videos)]
    sliced = [slice_mosaics(m, level) for m, level in sets]
    per_video_cues = track[:len(track) * 316 // 3000]   # ~316 s of the real track per video

    def slicing():
        for m, level in sets:
            slice_mosaics(m, level)

    def filtering():
        for (m, level), tiles in zip(sets, sliced):
            frames.judge(tiles, frames.looks(m, level), difference=8, blank_std=3)
            cleaned = transcript.clean(per_video_cues)
            transcript.speech(cleaned.cues, 316)

    (slice_s, _), (filter_s, _) = best_of_pair(slicing, filtering)
    print(f"## Cost per video ({videos} videos of 65 tiles, ~316 s of the real ASR track each)")
    print(f"- slicing {slice_s / videos * 1000:.1f} ms, filters {filter_s / videos * 1000:.1f} ms; "
          f"filters / slicing = {filter_s / slice_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=Path, default=ROOT / "tests" / "data" / "youtube-json3")
    parser.add_argument("--videos", type=int, default=40)
    args = parser.parse_args()
    print(f"# machine: {platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    tracks = {path.name: transcript.clean(subtitles.parse(path.read_bytes(), "json3")).cues
              for path in sorted(args.tracks.glob("*.json3"))}
    speech_rates(tracks)
    music_rate()
    language_windows(tracks)
    confidences(tracks["asr_conversation.json3"])
    frame_differences(args.videos)
    phash_differences(args.videos)
    costs(args.videos, tracks["asr_conversation.json3"])


if __name__ == "__main__":
    main()
