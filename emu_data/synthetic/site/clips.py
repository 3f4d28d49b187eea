"""Clip lists, as the sample site publishes them: a Panda-70M-layout CSV over the site's
YouTube videos (site/youtube.py), for `emu-data clips`.

Panda-70M's CSV has one row per video: `videoID`, `url`, then Python-literal lists (single
quotes, as its loaders read them with ast.literal_eval) of `timestamp` [start, end] clock
times, `caption`s and `matching_score`s, one entry per clip. Each site video gets clips of
Panda-like lengths (a few seconds to ~20 s), one shorter than the storyboard spacing among
them, captioned with what the world draws at the clip's middle; `SiteClip` keeps the ground
truth a test compares with.

Faults (when the site plants them): in every fault_every-th video's row one clip ends before
it starts (bad_timestamp), one lies past the video's end (past_duration), one has an empty
caption (empty_caption) and one a matching score under LOW_SCORE (low_score under
--min-score); one more row names a video YouTube calls unavailable (its info file, under
clips_info/, is a player response saying so) and one row's timestamp list is not a literal
(malformed_row).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from emu_data.synthetic import world
from emu_data.synthetic.site.youtube import SiteVideo

COLUMNS = ("videoID", "url", "timestamp", "caption", "matching_score")
UNAVAILABLE = "gone0clips0"          # the row of a video YouTube calls unavailable
MALFORMED = "badrow0clip"            # the row whose timestamp list is no literal
LOW_SCORE = 0.2                      # under the smoke recipe's --min-score
# (start, end) of each site video's clips: Panda's clips run from ~2 s to ~20 s; 31-33 s lies
# between two tiles 5 s apart, so it gets the one nearest its middle (30 s)
SPANS = ((0.0, 8.5), (10.0, 21.3), (31.0, 33.0), (40.0, 58.75))


@dataclass(frozen=True)
class SiteClip:
    video_id: str
    start: float
    end: float
    caption: str
    score: float
    fault: str | None = None      # the status reason the clip should end with; None: ok


def clock(seconds: float) -> str:
    """Panda-70M's clock times: H:MM:SS.mmm."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{round((seconds - whole) * 1000):03d}"


def clips_of(video: SiteVideo, faulty: bool) -> list[SiteClip]:
    """The clips the list gives one site video (faults appended to a faulty video's row)."""
    rng = random.Random(f"{video.seed}:{video.video_id}:clips")
    clip = video.clip()
    found = [SiteClip(video.video_id, a, b, world.caption(clip.scene_at((a + b) / 2)), round(rng.uniform(0.35, 0.6), 4))
             for a, b in SPANS if b <= video.duration]
    if faulty:
        found += [SiteClip(video.video_id, 20.0, 12.0, "a clip that ends before it starts", 0.5, "bad_timestamp"),
                  SiteClip(video.video_id, video.duration + 5, video.duration + 9, "after the end", 0.5,
                           "past_duration"),
                  SiteClip(video.video_id, 22.0, 26.0, "  ", 0.5, "empty_caption"),
                  SiteClip(video.video_id, 45.0, 50.0, world.caption(clip.scene_at(47.5)), LOW_SCORE, "low_score")]
    return found


def panda_row(video_id: str, clips: list[SiteClip]) -> dict:
    return {"videoID": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
            "timestamp": repr([[clock(c.start), clock(c.end)] for c in clips]),
            "caption": repr([c.caption for c in clips]),
            "matching_score": repr([c.score for c in clips])}


def publish_clips(root: Path, videos: list[SiteVideo], faulty: set[str], faults: bool = True) -> list[SiteClip]:
    """Write root/clips/clips.csv over `videos` (published already by publish_youtube) and,
    with faults, root/clips_info/ holding the unavailable video's player response; return
    every clip of a real video (the malformed and unavailable rows are not clips)."""
    folder = Path(root) / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    every = {v.video_id: clips_of(v, v.video_id in faulty) for v in videos}
    rows = [panda_row(video_id, clips) for video_id, clips in every.items()]
    info = Path(root) / "clips_info"
    info.mkdir(exist_ok=True)   # a recipe names it whether or not it holds a fault
    if faults:
        rows.append(panda_row(UNAVAILABLE, [SiteClip(UNAVAILABLE, 1.0, 6.0, "a video that is gone", 0.5)]))
        rows.append({**panda_row(MALFORMED, [SiteClip(MALFORMED, 1.0, 6.0, "a broken row", 0.5)]),
                     "timestamp": "[['0:00:01.000', '0:00:06"})
        (info / f"{UNAVAILABLE}.json").write_text(json.dumps(_unavailable()))
    with open(folder / "clips.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return [c for clips in every.values() for c in clips]


def _unavailable() -> dict:
    """A player response as YouTube answers for a removed video."""
    return {"playabilityStatus": {"status": "ERROR", "reason": "Video unavailable"},
            "videoDetails": {"videoId": UNAVAILABLE}}


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

def site_inputs(root: Path) -> dict:
    return {"clips": Path(root) / "clips" / "clips.csv",
            "clips_info": [Path(root) / "info", Path(root) / "clips_info"]}


def publish_site(root: Path, base_url: str, config) -> None:
    """Clips over the YouTube part's videos (the same SiteVideos it publishes)."""
    from emu_data.synthetic.site import youtube
    from emu_data.synthetic.site.bundle import fault

    videos = [youtube.site_video(i, config, fault(i, config, youtube.NO_SUBTITLES)) for i in range(config.videos)]
    faulty = {v.video_id for i, v in enumerate(videos) if fault(i, config, ("clips",))}
    publish_clips(root, videos, faulty, faults=bool(config.fault_every))
