"""YouTube, as the sample site publishes it: yt-dlp info dicts whose storyboard fragments
are JPEG mosaics laid out as YouTube lays them out (5x5 tiles of 160x90, the last mosaic
cropped) and whose subtitles are json3 or VTT files (ASR in YouTube's rolling style).

A video can carry real YouTube's habits, for the quality filters to meet: what its track says
(`speech`: narration, ASR of a speechless music video, annotations and mojibake, German under
an English label) and what its storyboard shows (`frames`: motion, one still image, a static
stretch, blank fade tiles). The ground truth is on SiteVideo: `cues()` (what is written),
`spoken_cues()` (the words a clean-up should keep), `tile_scenes()`, `blank_tiles()` and
`repeated_tiles()`."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from emu_data.synthetic import world

TILE_W, TILE_H, COLUMNS, ROWS = 160, 90, 5, 5

SPEECH = ("narrated", "music", "annotated", "german")
FRAMES = ("moving", "still", "stretch", "blank")
# What YouTube's captions (ASR and manual) put in brackets or marks instead of words.
ANNOTATIONS = ("[Music]", "[Applause]", "[Laughter]", "♪", "(inaudible)", ">>")
BLACK, NEAR_WHITE = (0, 0, 0), (246, 246, 246)   # the solid tiles of a fade


@dataclass(frozen=True)
class SiteVideo:
    """One published video. subtitles: manual (json3+vtt) | auto (rolling ASR VTT only) |
    json3_only | vtt_only | none.

    speech, what every subtitle format of the video says:
      narrated: the world's English narration, one cue per 4 s;
      music: what YouTube's ASR writes for a video without speech: "[Music]", "[Music] [Music]",
        "a [Music]" every few seconds and a stray "he" or two;
      annotated: the narration with annotations (ANNOTATIONS) before, after or inside some
        cues, one annotation-only cue, one punctuation-only cue ("..." or "♪ ♪") and
        one word in mojibake (UTF-8 read as cp1252: "circle’s" written "circleâ€™s");
      german: the narration in German (world.narrate_german), under the same English label.
    frames, what the storyboard tiles show:
      moving: the clip at each tile's time;
      still: the first tile's scene on every tile (an album cover);
      stretch: in the middle third of the video, every tile shows the scene of the stretch's
        first tile (a slide, a paused screen), the rest moves;
      blank: as moving, but three tiles that are neither first nor last nor next to each
        other are solid colour: two BLACK, one NEAR_WHITE (a fade).
    """

    video_id: str
    duration: float = 62.0
    interval: float = 5.0
    subtitles: str = "manual"
    seed: int = 0
    speech: str = "narrated"
    frames: str = "moving"

    def __post_init__(self) -> None:
        if self.speech not in SPEECH:
            raise ValueError(f"speech must be one of {SPEECH}, not {self.speech!r}")
        if self.frames not in FRAMES:
            raise ValueError(f"frames must be one of {FRAMES}, not {self.frames!r}")

    def clip(self) -> world.Clip:
        return world.random_clip(random.Random(f"{self.seed}:{self.video_id}"), self.duration)

    def cues(self) -> list[world.Cue]:
        """The cues every subtitle file of the video is written from, annotations and all."""
        return [world.Cue(start, end, " ".join(token for token, _ in tokens)) for start, end, tokens in self._track()]

    def spoken_cues(self) -> list[world.Cue]:
        """The words a clean-up should keep: cues() without annotations, punctuation-only
        cues and annotation-only cues, mojibake repaired (to the curly apostrophe). For
        "music" that leaves only ASR's stray words ("a", "he")."""
        spoken = []
        for start, end, tokens in self._track():
            words = [said for _, said in tokens if said]
            if words:
                spoken.append(world.Cue(start, end, " ".join(words)))
        return spoken

    def _track(self) -> list[tuple[float, float, list[tuple[str, str]]]]:
        """Per cue: start, end, and (written token, spoken word or "") per token."""
        if self.speech == "music":
            return _music_track(self.duration, random.Random(f"{self.seed}:{self.video_id}:music"))
        narrate = world.narrate_german if self.speech == "german" else world.narrate
        cues = narrate(self.clip(), every=4.0, rng=random.Random(f"{self.seed}:{self.video_id}:cues"))
        track = [(c.start, c.end, [(w, w) for w in c.text.split()]) for c in cues]
        if self.speech == "annotated":
            _annotate(track, random.Random(f"{self.seed}:{self.video_id}:annotations"))
        return track

    @property
    def tile_count(self) -> int:
        return math.ceil(self.duration / self.interval) + 1  # what YouTube's specs show

    def tile_times(self) -> list[float]:
        """The clip time each storyboard tile shows (moving frames), in tile order."""
        return [min(k * self.interval, self.duration) for k in range(self.tile_count)]

    def tile_scenes(self) -> list[world.Scene | None]:
        """The scene each tile renders, in tile order; None for a blank tile (blank_tiles)."""
        clip, times = self.clip(), self.tile_times()
        scenes: list[world.Scene | None] = [clip.scene_at(t) for t in times]
        if self.frames == "still":
            scenes = [scenes[0]] * len(scenes)
        elif self.frames == "stretch":
            stretch = self.stretch_tiles()
            for k in stretch:
                scenes[k] = scenes[stretch[0]]
        for k in self.blank_tiles():
            scenes[k] = None
        return scenes

    def stretch_tiles(self) -> list[int]:
        """The tiles of the static stretch (frames="stretch": those whose time falls in the
        middle third of the video; all show the first one's scene); [] for other frames."""
        if self.frames != "stretch":
            return []
        tiles = [k for k, t in enumerate(self.tile_times()) if self.duration / 3 <= t < 2 * self.duration / 3]
        if len(tiles) < 2:
            raise ValueError(f"{self.video_id}: a static stretch needs 2+ tiles in the middle third, has {len(tiles)}")
        return tiles

    def blank_tiles(self) -> dict[int, tuple[int, int, int]]:
        """Tile index -> the solid RGB it is filled with (frames="blank"); {} otherwise."""
        if self.frames != "blank":
            return {}
        inner = list(range(1, self.tile_count - 1))
        if len(inner) < 5:
            raise ValueError(f"{self.video_id}: blank frames need 7+ tiles, has {self.tile_count}")
        rng = random.Random(f"{self.seed}:{self.video_id}:blank")
        while True:  # three tiles, no two adjacent: each blank stands alone (1, 3, 5 always fits)
            picked = sorted(rng.sample(inner, 3))
            if picked[1] - picked[0] > 1 and picked[2] - picked[1] > 1:
                black = rng.sample(picked, 2)
                return {k: BLACK if k in black else NEAR_WHITE for k in picked}

    def repeated_tiles(self) -> list[int]:
        """Tiles that render exactly what the tile before them renders (same scene, or the same
        solid colour), so they differ from it by JPEG noise only: still and stretch frames."""
        blanks, scenes = self.blank_tiles(), self.tile_scenes()
        looks = [blanks.get(k, scene) for k, scene in enumerate(scenes)]
        return [k for k in range(1, len(looks)) if looks[k] == looks[k - 1]]


def mojibake(text: str) -> str:
    """UTF-8 bytes read as cp1252, as a careless pipeline writes them: "don’t" -> "donâ€™t"."""
    return text.encode("utf-8").decode("cp1252")


def _music_track(duration: float, rng: random.Random) -> list[tuple[float, float, list[tuple[str, str]]]]:
    """YouTube's ASR of a video with no speech: a cue every 2.5-6 s, mostly "[Music]", some
    "[Music] [Music]", one or two "a [Music]" and one or two stray "he"."""
    times, start = [], 0.0
    while start < duration:
        end = round(min(start + rng.uniform(2.5, 6.0), duration), 3)
        if end > start:
            times.append((start, end))
        start = end
    texts = ["a [Music]", "[Music] [Music]", "he"] + rng.sample(["he", "a [Music]"], rng.randint(0, 1))
    texts += [rng.choice(("[Music]", "[Music]", "[Music] [Music]")) for _ in range(len(times) - len(texts))]
    texts = texts[:len(times)]
    rng.shuffle(texts)
    return [(s, e, [(w, "" if w in ANNOTATIONS else w) for w in text.split()]) for (s, e), text in zip(times, texts)]


def _annotate(track: list[tuple[float, float, list[tuple[str, str]]]], rng: random.Random) -> None:
    """Mix real-style annotations into narrated cues, in place (see SiteVideo: "annotated")."""
    if len(track) < 3:
        raise ValueError(f"annotated speech needs 3+ cues, has {len(track)}")
    only, punctuation, broken = rng.sample(range(len(track)), 3)
    track[only][2][:] = [(rng.choice(ANNOTATIONS[:3]), "")]
    track[punctuation][2][:] = [(rng.choice(("...", "♪ ♪")), "")]
    tokens = track[broken][2]   # every narration cue says "the <thing> is ...": contract the first "is"
    i = next(i for i, (w, _) in enumerate(tokens) if w == "is" and i > 0)
    contracted = tokens[i - 1][1] + "’s"
    tokens[i - 1:i + 1] = [(mojibake(contracted), contracted)]
    spoken = [k for k in range(len(track)) if k not in (only, punctuation)]
    cues = rng.sample(spoken, min(len(spoken), max(len(ANNOTATIONS), len(spoken) // 2)))
    kinds = rng.sample(ANNOTATIONS, len(ANNOTATIONS))
    kinds += [rng.choice(ANNOTATIONS) for _ in range(len(cues) - len(kinds))]
    for j, kind in enumerate(kinds):
        tokens = track[cues[j % len(cues)]][2]
        if kind == ">>":             # a speaker change: before the words
            tokens.insert(0, (kind, ""))
        elif kind == "♪":           # sung: around the words
            tokens[:] = [(kind, ""), *tokens, (kind, "")]
        elif kind == "(inaudible)":  # words missed: inside the cue
            tokens.insert(rng.randint(1, len(tokens) - 1) if len(tokens) > 1 else 1, (kind, ""))
        else:
            tokens.insert(0 if rng.random() < 0.5 else len(tokens), (kind, ""))


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
    per, blanks = COLUMNS * ROWS, video.blank_tiles()
    tiles = [world.render(scene, TILE_W, TILE_H) if scene is not None else Image.new("RGB", (TILE_W, TILE_H), blanks[k])
             for k, scene in enumerate(video.tile_scenes())]
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


def _vtt_text(text: str) -> str:
    """WebVTT escapes as YouTube's files do (">>" is written "&gt;&gt;")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(cues: list[world.Cue]) -> str:
    body = "".join(f"{_ms(c.start)} --> {_ms(c.end)}\n{_vtt_text(c.text)}\n\n" for c in cues)
    return "WEBVTT\nKind: captions\nLanguage: en\n\n" + body


def asr_vtt(cues: list[world.Cue]) -> str:
    """YouTube's rolling ASR style: each phrase typed with word times, held 10 ms, then
    repeated as the first line of the next cue. A naive parser triples the text."""
    out, previous = ["WEBVTT\nKind: captions\nLanguage: en\n"], ""
    for c in cues:
        text = _vtt_text(c.text)
        words = text.split()
        step = (c.end - c.start - 0.01) / max(len(words), 1)
        typed = words[0] + "".join(f"<{_ms(c.start + i * step)}><c> {w}</c>" for i, w in enumerate(words[1:], 1))
        out.append(f"{_ms(c.start)} --> {_ms(c.end - 0.01)} align:start position:0%\n{previous or ' '}\n{typed}\n")
        out.append(f"{_ms(c.end - 0.01)} --> {_ms(c.end)} align:start position:0%\n{text}\n \n")
        previous = text
    return "\n".join(out) + "\n"


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

NO_SUBTITLES = ("none",)   # one video in fault_every has no subtitles: no_subtitles
# Every HABIT_EVERY-th video carries one of real YouTube's habits, in turn, so a run on the
# site meets the quality filters: three that cleaning handles and a music video low_speech takes.
HABIT_EVERY = 3
HABITS = ({"speech": "annotated"}, {"frames": "stretch"}, {"frames": "blank"}, {"speech": "music", "subtitles": "auto"})


def site_inputs(root: Path) -> dict[str, Path]:
    return {"youtube": root / "info"}


def publish_site(root: Path, base_url: str, config) -> None:
    from emu_data.synthetic.site.bundle import fault

    publish_youtube(root, base_url, [site_video(i, config, fault(i, config, NO_SUBTITLES)) for i in range(config.videos)])


def site_video(i: int, config, fault: str | None) -> SiteVideo:
    habit = HABITS[i // HABIT_EVERY % len(HABITS)] if i % HABIT_EVERY == HABIT_EVERY - 1 else {}
    return SiteVideo(f"video{i:06d}", seed=config.seed, **{"subtitles": "manual", **habit,
                                                           **({"subtitles": fault} if fault else {})})
