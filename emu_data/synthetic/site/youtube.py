"""YouTube, as the sample site publishes it: yt-dlp info dicts whose storyboard fragments
are JPEG mosaics laid out as YouTube lays them out (5x5 tiles of 160x90, the last mosaic
cropped) and whose subtitles are json3 or VTT files (ASR in YouTube's rolling style)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from emu_data.synthetic import world

TILE_W, TILE_H, COLUMNS, ROWS = 160, 90, 5, 5


@dataclass(frozen=True)
class SiteVideo:
    """One published video. subtitles: manual (json3+vtt) | auto (rolling ASR VTT only) |
    json3_only | vtt_only | none."""

    video_id: str
    duration: float = 62.0
    interval: float = 5.0
    subtitles: str = "manual"
    seed: int = 0

    def clip(self) -> world.Clip:
        return world.random_clip(random.Random(f"{self.seed}:{self.video_id}"), self.duration)

    def cues(self) -> list[world.Cue]:
        return world.narrate(self.clip(), every=4.0, rng=random.Random(f"{self.seed}:{self.video_id}:cues"))

    @property
    def tile_count(self) -> int:
        return math.ceil(self.duration / self.interval) + 1  # what YouTube's specs show


def publish_youtube(root: Path, base_url: str, videos: list[SiteVideo]) -> list[dict]:
    """Write each video's mosaics, subtitles and info dict under root; return the info dicts."""
    infos = []
    for video in videos:
        folder = Path(root) / "yt" / video.video_id
        folder.mkdir(parents=True, exist_ok=True)
        fragments = _write_mosaics(folder, video)
        info = _info_dict(video, f"{base_url}/yt/{video.video_id}", fragments)
        info.update(_write_subtitles(folder, video, f"{base_url}/yt/{video.video_id}"))
        (Path(root) / "info").mkdir(exist_ok=True)
        (Path(root) / "info" / f"{video.video_id}.info.json").write_text(json.dumps(info, indent=1))
        infos.append(info)
    return infos


def _write_mosaics(folder: Path, video: SiteVideo) -> int:
    clip, per = video.clip(), COLUMNS * ROWS
    tiles = [world.render(clip.scene_at(min(k * video.interval, video.duration)), TILE_W, TILE_H)
             for k in range(video.tile_count)]
    for j, start in enumerate(range(0, len(tiles), per)):
        group = tiles[start:start + per]
        rows_used = math.ceil(len(group) / COLUMNS)  # YouTube crops the last mosaic to its rows
        mosaic = Image.new("RGB", (COLUMNS * TILE_W, rows_used * TILE_H), "black")
        for i, tile in enumerate(group):
            mosaic.paste(tile, ((i % COLUMNS) * TILE_W, (i // COLUMNS) * TILE_H))
        (folder / f"M{j}.jpg").write_bytes(world.encode(mosaic, quality=85))
    return math.ceil(len(tiles) / per)


def _info_dict(video: SiteVideo, base: str, fragments: int) -> dict:
    """Shaped as yt-dlp's YouTube extractor shapes it (no webpage_url: no re-extraction)."""
    count, per = video.tile_count, COLUMNS * ROWS
    fragment_duration = video.duration / (count / per)
    return {
        "id": video.video_id, "title": f"Sample video {video.video_id}", "duration": video.duration,
        "channel": "emu-data sample world", "uploader": "emu-data", "upload_date": "20260101",
        "extractor": "youtube", "extractor_key": "Youtube", "_type": "video",
        "formats": [{
            "format_id": "sb0", "format_note": "storyboard", "ext": "mhtml", "protocol": "mhtml",
            "acodec": "none", "vcodec": "none", "url": f"{base}/M$M.jpg",
            "width": TILE_W, "height": TILE_H, "fps": count / video.duration,
            "rows": ROWS, "columns": COLUMNS,
            "fragments": [{"url": f"{base}/M{j}.jpg?sigh=sample",
                           "duration": min(fragment_duration, video.duration - j * fragment_duration)}
                          for j in range(fragments)],
        }],
        "subtitles": {}, "automatic_captions": {},
    }


def _write_subtitles(folder: Path, video: SiteVideo, base: str) -> dict:
    cues = video.cues()
    files = {"json3": json3(cues), "vtt": vtt(cues), "asr.vtt": asr_vtt(cues)}
    for ext, text in files.items():
        (folder / f"subs.{ext}").write_text(text, encoding="utf-8")
    track = lambda ext, name: {"ext": ext.split(".")[-1], "url": f"{base}/subs.{name}", "name": "English"}  # noqa: E731
    kinds = {
        "manual": {"subtitles": {"en": [track("json3", "json3"), track("vtt", "vtt")]}},
        "json3_only": {"subtitles": {"en": [track("json3", "json3")]}},
        "vtt_only": {"subtitles": {"en": [track("vtt", "vtt")]}},
        "auto": {"automatic_captions": {"en-orig": [track("vtt", "asr.vtt")]}},
        "none": {},
    }
    return kinds[video.subtitles]


def _ms(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def json3(cues: list[world.Cue]) -> str:
    events = []
    for c in cues:
        words = c.text.split()
        step = (c.end - c.start) * 1000 / max(len(words), 1)
        events.append({"tStartMs": round(c.start * 1000), "dDurationMs": round((c.end - c.start) * 1000),
                       "segs": [{"utf8": (" " if i else "") + w, "tOffsetMs": round(i * step)}
                                for i, w in enumerate(words)]})
        events.append({"tStartMs": round(c.end * 1000), "aAppend": 1, "segs": [{"utf8": "\n"}]})
    return json.dumps({"wireMagic": "pb3", "events": events})


def vtt(cues: list[world.Cue]) -> str:
    body = "".join(f"{_ms(c.start)} --> {_ms(c.end)}\n{c.text}\n\n" for c in cues)
    return "WEBVTT\nKind: captions\nLanguage: en\n\n" + body


def asr_vtt(cues: list[world.Cue]) -> str:
    """YouTube's rolling ASR style: each phrase typed with word times, held 10 ms, then
    repeated as the first line of the next cue. A naive parser triples the text."""
    out, previous = ["WEBVTT\nKind: captions\nLanguage: en\n"], ""
    for c in cues:
        words = c.text.split()
        step = (c.end - c.start - 0.01) / max(len(words), 1)
        typed = words[0] + "".join(f"<{_ms(c.start + i * step)}><c> {w}</c>" for i, w in enumerate(words[1:], 1))
        out.append(f"{_ms(c.start)} --> {_ms(c.end - 0.01)} align:start position:0%\n{previous or ' '}\n{typed}\n")
        out.append(f"{_ms(c.end - 0.01)} --> {_ms(c.end)} align:start position:0%\n{c.text}\n \n")
        previous = c.text
    return "\n".join(out) + "\n"


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

NO_SUBTITLES = ("none",)   # one video in fault_every has no subtitles: no_subtitles


def site_inputs(root: Path) -> dict[str, Path]:
    return {"youtube": root / "info"}


def publish_site(root: Path, base_url: str, config) -> None:
    from emu_data.synthetic.site.bundle import fault

    publish_youtube(root, base_url, [SiteVideo(f"video{i:06d}", seed=config.seed,
                                               subtitles=fault(i, config, NO_SUBTITLES) or "manual")
                                     for i in range(config.videos)])
