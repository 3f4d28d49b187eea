"""`emu-data clips`: clip lists (Panda-70M, InternVid, flat CSVs) -> video-text pairs from storyboards.

Clip lists name YouTube videos with [start, end] spans and a caption per span (Panda-70M:
70.7M clips of 3.8M videos). Emu's insight holds for them: a storyboard instead of the video
is ~20x less to store and needs no decoding. Per video: metadata (an info-json file, or
yt-dlp), one storyboard download through the youtube stage's path and identity pool, then
per clip the tiles whose times fall in [start, end], thinned evenly to --frames; each clip
is a sample of frames with their times and the caption last (pair-like, as WebVid's),
keyed `yt_clips:VIDEOID:STARTms-ENDms`.

Every clip ends as a sample or a status row: its own reason (bad_timestamp, empty_caption,
invalid_id, malformed_row, past_duration, too_few_frames, low_score, duplicate_key) or its
video's (unavailable, bot_check, http_404, no_storyboard, ...), so a video that fails takes
each of its clips to the status table with the video's reason.

Planning reads the clip lists in the driver (clipfiles.py) to group clips by video, however
the rows are ordered: measured, about 620 bytes held a clip and 20,000 clips a second on one
core. Panda-70M's 10M subset plans in ~8 minutes and ~6 GB; its full 70M set wants splitting
into several runs (or issue 20's partitioned planning).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from emu_data import net
from emu_data import sources as registry
from emu_data.core import errors, records, secrets
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.options import option, positive_int
from emu_data.sources import keys
from emu_data.sources.youtube import clipfiles, identities, inputs, leasing, storyboard, ytdl
from emu_data.sources.youtube import stage as youtube
from emu_data.sources.youtube.cliplist import Clip, ClipRejected, FlatColumns, tiles_for
from emu_data.sources.youtube.inputs import VideoInput
from emu_data.synthetic.site import clips as site_clips

KIND = "yt_clips"
FILTERS = ("low_score", "too_few_frames")
_REJECTS_PER_GROUP = 1000   # rejected rows travel in groups of this many


def _score(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class ClipsConfig:
    frames: int = option(8, parse=positive_int,
                         help="frames per clip at most (Emu's WebVid setting); a clip with more tiles is thinned evenly")
    min_frames: int = option(1, parse=positive_int,
                             help="fewer tiles than this in a clip: too_few_frames (with 1, a clip shorter than "
                                  "the tile spacing gets the tile nearest its middle)")
    min_score: float | None = option(None, parse=_score, metavar="SCORE",
                                     help="drop clips whose matching_score is below SCORE (low_score); "
                                          "Panda-70M's 10M subset uses 0.43")
    list_layout: str = option("auto", choices=clipfiles.LAYOUTS,
                              help="panda: one row per video with lists of timestamps, captions and scores; "
                                   "flat: one clip per row; auto: panda when there is a timestamp column")
    columns: FlatColumns = field(default_factory=FlatColumns)
    storyboard_level: str | None = youtube.storyboard_level_option()
    videos_per_unit: int = youtube.videos_per_unit_option()
    rate_limit_retries: int = 3        # rate-limit answers one video may get before its clips end rate_limited

    def __post_init__(self):
        if self.min_frames > self.frames:
            raise errors.UsageError(f"--min-frames {self.min_frames} is more than --frames {self.frames}")


@dataclass(frozen=True)
class Listed:
    """One clip of the input: where it came from and the clip (or its reason)."""

    ref: str
    clip: Clip | None
    key: str                       # its status key
    reason: str | None = None      # set: it ends in the status table with this reason
    message: str | None = None


@dataclass(frozen=True)
class ClipVideo:
    """The clips of one video (video None: rows no video could be read from)."""

    video: VideoInput | None
    clips: tuple[Listed, ...]


@dataclass(frozen=True)
class ClipsUnit:
    videos: tuple[ClipVideo, ...]
    config: ClipsConfig
    ytdl: ytdl.YtdlOptions
    net: net.NetPolicy
    pool: object = field(default=None, repr=False, compare=False)   # as YoutubeUnit.pool


# ---- planning (the driver) ---------------------------------------------------------------------

def resolve(given: "ClipsInputs", **_) -> list[Path]:
    """The clip-list files, then the info-json folders (units tells them apart: folders)."""
    folders = [Path(d) for d in given.info_json]
    for folder in folders:
        if not folder.is_dir():
            raise errors.UsageError(f"--info-json {folder}: not a directory")
    return clipfiles.list_files(list(given.input)) + folders


def units(items: list[Path], config: ClipsConfig, ytdl_options: ytdl.YtdlOptions, net_policy: net.NetPolicy,
          pool_handle=None) -> list[Unit]:
    """Clips grouped by video in the order videos first appear, videos_per_unit to a unit."""
    ytdl.check_guardable(ytdl_options, net_policy)
    lists = [p for p in items if not p.is_dir()]
    info = _info_files([p for p in items if p.is_dir()])
    groups = plan(lists, config, info)
    n = config.videos_per_unit
    unit_ytdl = replace(ytdl_options, cookies=None, proxy=None) if pool_handle is not None else ytdl_options
    return [Unit(f"clips-{i // n:06d}", ClipsUnit(tuple(groups[i:i + n]), config, unit_ytdl, net_policy, pool_handle))
            for i in range(0, len(groups), n)]


def _info_files(folders: list[Path]) -> dict[str, VideoInput]:
    """Video id -> its info file (the first, in sorted order, of those naming it)."""
    found: dict[str, VideoInput] = {}
    for video in inputs.from_info_files([f for d in folders for f in inputs.info_json_files(d)]):
        if video.video_id:
            found.setdefault(video.video_id, video)
    return found


def plan(lists: list[Path], config: ClipsConfig, info: dict[str, VideoInput]) -> list[ClipVideo]:
    """Every clip of every list, grouped by video; repeats of a clip (same video and span)
    and clips under --min-score are marked here, before any download."""
    by_video: dict[str, list[Listed]] = {}
    rejected: list[Listed] = []
    seen: dict[str, tuple[str, int]] = {}   # clip key -> (ref of the first, repeats so far)
    for path, stem in zip(lists, clipfiles.stems(lists)):
        for entry in clipfiles.entries(path, config.list_layout, config.columns, stem):
            if entry.clip is None:
                rejected.append(Listed(entry.ref, None, f"{KIND}:{entry.fallback}", entry.reason, entry.message))
                continue
            listed = _listed(entry, config, seen)
            by_video.setdefault(entry.clip.video_id, []).append(listed)
    groups = [ClipVideo(info.get(video_id) or VideoInput("id", video_id, video_id), tuple(clips))
              for video_id, clips in by_video.items()]
    return groups + [ClipVideo(None, tuple(rejected[i:i + _REJECTS_PER_GROUP]))
                     for i in range(0, len(rejected), _REJECTS_PER_GROUP)]


def _listed(entry: clipfiles.Entry, config: ClipsConfig, seen: dict) -> Listed:
    clip = entry.clip
    key = f"{KIND}:{clip.key}"
    if key in seen:
        first, n = seen[key]
        seen[key] = (first, n + 1)
        return Listed(entry.ref, clip, keys.repeat_key(key, n + 1), keys.DUPLICATE, keys.repeat_error(key, first))
    seen[key] = (entry.ref, 0)
    if config.min_score is not None and (clip.score is None or clip.score < config.min_score):
        said = "no matching_score" if clip.score is None else f"matching_score {clip.score:g}"
        return Listed(entry.ref, clip, key, "low_score",
                      records.filtered_message(f"{said}, under --min-score {config.min_score:g}", 0))
    return Listed(entry.ref, clip, key)


# ---- one unit (a worker) -----------------------------------------------------------------------

def process(unit: ClipsUnit, writer: UnitWriter) -> None:
    secrets.redact_log_records()   # in this worker too: its log lines reach the driver's terminal
    handle = unit.pool or leasing.local_pool(unit.ytdl)
    for group in unit.videos:
        wanted = [c for c in group.clips if c.reason is None]
        for listed in group.clips:
            if listed.reason is not None:
                writer.add_status(records.status(listed.key, KIND, listed.reason, input=listed.ref,
                                                 error=listed.message, attempts=0))
        if wanted:
            for row, status in _video_clips(group.video, wanted, unit, handle):
                if row is not None:
                    writer.add_sample(row)
                writer.add_status(status)


@dataclass(frozen=True)
class Board:
    """A video's storyboard as its clips need it."""

    tiles: list[storyboard.Tile]
    duration: float
    meta: dict


def _video_clips(video: VideoInput, wanted: list[Listed], unit: ClipsUnit, handle):
    """(sample or None, status) per clip of one video: one storyboard for all of them."""
    try:
        done = leasing.on_identities(
            handle, lambda identity, polite: board_of(video, unit, identity, polite),
            failures=youtube.VIDEO_FAILURES, rate=unit.net.per_host_rate,
            rate_limit_retries=unit.config.rate_limit_retries, ref=video.ref)
    except leasing.Failed as e:
        return [(None, records.status(c.key, KIND, e.reason, input=c.ref, error=str(e), attempts=e.attempts))
                for c in wanted]
    return [_clip_sample(c, done, unit.config) for c in wanted]


def board_of(video: VideoInput, unit: ClipsUnit, identity: identities.Identity | None = None,
             before_request=None) -> Board:
    """The video's storyboard tiles, through yt-dlp as the youtube stage fetches them (no
    subtitles: the clip list brings the captions)."""
    options = unit.ytdl if identity is None else replace(unit.ytdl, cookies=identity.cookies, proxy=identity.proxy)
    info = youtube.load_info(video, options, unit.net, before_request)
    video_id = youtube.checked_id(info, video)
    level = storyboard.choose_level(storyboard.levels_from_info(info), unit.config.storyboard_level)
    duration = youtube.duration_of(info, level)
    for url in level.fragment_urls:
        net.check_url(url, unit.net)   # untrusted metadata must not point us at internal hosts
    youtube.check_names(info, level, None, video)
    with tempfile.TemporaryDirectory(prefix="emu-clips-") as tmp:
        files = ytdl.download(info, level.format_id, None, None, False, Path(tmp), options, unit.net, before_request)
        mosaics = storyboard.read_mhtml(files.storyboard.read_bytes())
    tiles = storyboard.slice_mosaics(mosaics, level)
    meta = {"video_id": video_id, "url": f"https://www.youtube.com/watch?v={video_id}",
            "title": info.get("title"), "channel": info.get("channel") or info.get("uploader"),
            "duration": info.get("duration"), "license": info.get("license"),
            "storyboard_level": level.format_id, "interval": level.interval,
            "tile": [level.tile_width, level.tile_height]}
    return Board(tiles, duration, meta)


def _clip_sample(listed: Listed, done: leasing.Done, config: ClipsConfig) -> tuple[dict | None, dict]:
    board, clip = done.value, listed.clip
    try:
        picked = [board.tiles[i] for i in tiles_for([t.time for t in board.tiles], clip, config.frames,
                                                     config.min_frames, board.duration)]
        times = [t.time for t in picked]
        meta = {**board.meta, "start": clip.start, "end": clip.end, "clip_index": clip.index,
                "matching_score": clip.score, "frame_times": times}
        row = records.sample(listed.key, KIND, [*(t.image for t in picked), clip.caption],
                             times=[*times, times[-1]], meta=meta)
    except (ClipRejected, records.RecordError) as e:
        reason = getattr(e, "reason", "invalid_record")
        message = records.filtered_message(str(e), 0) if reason in FILTERS else str(e)
        return None, records.status(listed.key, KIND, reason, input=listed.ref, attempts=done.attempts,
                                    error=records.with_identity(message, done.identity))
    return row, records.status(listed.key, KIND, "ok", input=listed.ref, attempts=done.attempts, samples=1,
                               error=records.with_identity(None, done.identity))


# ---- the command -------------------------------------------------------------------------------

def layout(config: ClipsConfig) -> dict:
    return {"clips": asdict(config)}


@dataclass(frozen=True)
class ClipsInputs:
    input: list = option(many=True, required=True, parse=Path, metavar="LIST",
                         help="clip lists: CSV, parquet or jsonl files (or folders of them), in Panda-70M's "
                              "layout or one clip per row")
    info_json: tuple = youtube.info_json_option()


def make_clips(lists: list[Path], config: ClipsConfig, ytdl_options: ytdl.YtdlOptions, net_policy: net.NetPolicy,
               output, ray=None, *, info_json: tuple = (), retry_failed: bool = False,
               identity_pool: identities.IdentityOptions = identities.IdentityOptions()):
    """Run the stage over the clip lists into output.out; resumable, every clip accounted for."""
    from emu_data.engine.stage import run_source

    items = resolve(ClipsInputs(list(lists), tuple(info_json)))
    return run_source(SOURCE, config, items, output, ray, retry_failed, ytdl=ytdl_options, net=net_policy,
                      identity_pool=identity_pool)


SOURCE = registry.register(registry.Source(
    name="clips",
    kinds=(registry.Kind(KIND, emu_weight=16, colour="#b7791f", pair_rank=3, chunked=True),),
    help="clip lists (Panda-70M, flat CSVs) + YouTube storyboards -> video-text pairs, one per clip",
    description="Per video, one storyboard download (yt-dlp, the identity pool and every download option "
                "of `emu-data youtube`); per clip, the tiles whose times fall in [start, end], thinned evenly "
                "to --frames, with the clip's caption last. Every clip ends in the corpus or in the status "
                "table with a reason: its own (bad_timestamp, empty_caption, past_duration, too_few_frames, "
                "low_score, ...) or its video's (unavailable, bot_check, ...).",
    epilog="examples:\n  emu-data clips --input panda70m_training_10m.csv --min-score 0.43 --out runs/clips\n"
           "  emu-data clips --input clips.jsonl --list-layout flat --video-column youtube_id "
           "--caption-column text --out runs/clips\n"
           "  emu-data clips --input clips.csv --info-json info/ --out runs/clips   # metadata collected apart",
    config=ClipsConfig, inputs=ClipsInputs, resolve=resolve, configure=youtube.configure_ytdl,
    units=lambda items, config, ray, ytdl, net, identity_pool, pool_handle=None:
        units(items, config, ytdl, net, pool_handle),
    process=process, layout=layout, retryable=youtube.RETRYABLE, filters=FILTERS, session=youtube.session,
    extras=youtube.SOURCE.extras,
    ray_options=("max_in_flight",),
    site=registry.Site(site_clips.site_inputs, site_clips.publish_site),
))
