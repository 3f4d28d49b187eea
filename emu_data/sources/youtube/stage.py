"""`emu-data youtube`: storyboards + subtitles -> YT-Storyboard interleaved samples.

Per video: metadata (an info-json file, or yt-dlp), pick a storyboard level and a subtitle
track, download both through yt-dlp, slice the mosaics into timed tiles, parse the cues,
merge them by Emu's rule and cut the result into samples of at most N frames. Any failure
becomes the video's status row with a reason, and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from bisect import bisect_right
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from emu_data.core import align, errors, records, secrets
from emu_data import net
from emu_data import sources as registry
from emu_data.core.options import Params, option, positive_int, show_words, words
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.synthetic.site import youtube as site_youtube
from emu_data.sources import keys
from emu_data.synthetic import sample
from emu_data.sources.youtube import frames, identities, inputs, leasing, pool, quality, storyboard, subtitles, transcript, ytdl
from emu_data.core.files import UnreadableFile, read_json
from emu_data.sources.youtube.inputs import INFO_DEPTH, VIDEO_ID, VideoInput

log = logging.getLogger(__name__)
KIND = "yt_storyboard"
# The video-level quality filters' status reasons (sources/youtube/quality.py decides them).
FILTERS = ("too_short", "low_speech", "language_mismatch", "static_video")
RETRYABLE = ytdl.RETRYABLE
# A storyboard format_id or subtitle language from the info dict: yt-dlp puts both in the
# work files' names and reads them as a format selector and a language regex. Plain names only.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class VideoError(errors.ItemFailed):
    """A video that cannot become samples, with its status-table reason."""


def storyboard_level_option():
    """--storyboard-level, for every stage that reads storyboards."""
    return option(None, metavar="LEVEL", help="storyboard format (sb0, sb1, ...) or index; default the largest tiles")


def videos_per_unit_option():
    return option(8, parse=positive_int, help="videos per unit of work, the unit of resume")


def info_json_option():
    return option((), repeat=True, parse=Path, metavar="DIR",
                  help="directory of yt-dlp info dicts (yt-dlp -J), metadata collected apart; repeatable")


@dataclass(frozen=True)
class YoutubeConfig:
    langs: tuple[str, ...] = option(("en",), parse=words, show=show_words,
                                    help="subtitle languages in order of preference")
    allow_auto: bool = option(True, help="use ASR captions when no manual track exists")
    storyboard_level: str | None = storyboard_level_option()
    frames_per_sample: int = option(16, parse=positive_int, help="frames per sample")
    videos_per_unit: int = videos_per_unit_option()
    tile_quality: int | None = None   # None: each tile keeps its mosaic's own JPEG tables (storyboard.py)
    quality: quality.QualityOptions = field(default_factory=quality.QualityOptions)
    rate_limit_retries: int = 3        # rate-limit answers one video may get before it ends rate_limited

    def __post_init__(self):
        if self.frames_per_sample < 1 or self.videos_per_unit < 1:
            raise errors.UsageError("--frames-per-sample and --videos-per-unit must be at least 1")
        if not self.langs:
            raise errors.UsageError("--langs needs at least one language")


@dataclass(frozen=True)
class YoutubeUnit:
    videos: tuple[VideoInput, ...]
    config: YoutubeConfig
    ytdl: ytdl.YtdlOptions       # without cookies and proxy: those are the identities'
    net: net.NetPolicy
    # The run's identity pool (engine.runtime.SharedHandle). Not part of what the unit is:
    # a rerun with other identities keeps what was made. None: a pool of one, here.
    pool: object = field(default=None, repr=False, compare=False)


def units(videos: list[VideoInput], config: YoutubeConfig, ytdl_options: ytdl.YtdlOptions,
          net_policy: net.NetPolicy, pool_handle=None) -> list[Unit]:
    """Videos in their stable order, `videos_per_unit` to a unit."""
    ytdl.check_guardable(ytdl_options, net_policy)  # every caller, before any Ray or network work
    n = config.videos_per_unit
    unit_ytdl = replace(ytdl_options, cookies=None, proxy=None) if pool_handle is not None else ytdl_options
    return [Unit(f"yt-{i // n:06d}", YoutubeUnit(tuple(videos[i:i + n]), config, unit_ytdl, net_policy, pool_handle))
            for i in range(0, len(videos), n)]


def process(unit: YoutubeUnit, writer: UnitWriter) -> None:
    secrets.redact_log_records()   # in this worker too: its log lines reach the driver's terminal
    handle = unit.pool or leasing.local_pool(unit.ytdl)
    for video in unit.videos:
        if video.repeat:  # named earlier in the input (inputs.dedupe): processed there
            writer.add_status(keys.status(video.key, KIND, *video.repeat, input=video.ref))
            continue
        rows, status = _video_with_identities(video, unit, handle)
        for row in rows:
            writer.add_sample(row)
        writer.add_status(status)


VIDEO_FAILURES = (VideoError, quality.Filtered, ytdl.YtdlError, storyboard.StoryboardError,
                  subtitles.SubtitleError, net.FetchError, records.RecordError)


def _video_with_identities(video: VideoInput, unit: YoutubeUnit, handle) -> tuple[list[dict], dict]:
    """One video's samples and status row, on identities the pool lends (leasing.py)."""
    try:
        done = leasing.on_identities(
            handle, lambda identity, polite: video_samples(video, unit, identity, polite),
            failures=VIDEO_FAILURES, rate=unit.net.per_host_rate,
            rate_limit_retries=unit.config.rate_limit_retries, ref=video.ref)
    except leasing.Failed as e:
        return [], records.status(video.key, KIND, e.reason, input=video.ref, error=str(e), attempts=e.attempts)
    rows = done.value
    return rows, records.status(_key(video, rows), KIND, "ok", input=video.ref, attempts=done.attempts,
                                samples=len(rows), error=records.with_identity(None, done.identity))


def _key(video: VideoInput, rows: list[dict]) -> str:
    return rows[0]["key"].rsplit(":", 1)[0] if rows else video.key


def video_samples(video: VideoInput, unit: YoutubeUnit, identity: identities.Identity | None = None,
                  before_request=None) -> list[dict]:
    """The samples of one video, or an exception carrying the reason it has none.
    identity: whose cookies and proxy fetch it (default: the unit's own options)."""
    if identity is not None:
        unit = replace(unit, ytdl=replace(unit.ytdl, cookies=identity.cookies, proxy=identity.proxy))
    if video.problem:
        raise VideoError(video.problem, f"{video.ref}: could not be expanded into videos")
    if video.kind == "url" and not video.video_id:  # repeats are found by id before the run
        raise VideoError("unsupported_input", f"{video.ref}: no YouTube video id in the URL (give the id, "
                                              "or a youtube.com or youtu.be link)")
    info = load_info(video, unit.ytdl, unit.net, before_request)
    video_id = checked_id(info, video)
    config, filters = unit.config, unit.config.quality
    level = storyboard.choose_level(storyboard.levels_from_info(info), config.storyboard_level)
    duration = duration_of(info, level)
    quality.check_duration(duration, level.count, filters)   # before any download
    track = subtitles.choose_track(info, config.langs, config.allow_auto)
    if track is None:
        raise VideoError("no_subtitles", f"no {'/'.join(config.langs)} subtitles"
                         + ("" if config.allow_auto else " (ASR not allowed)"))
    for url in (*level.fragment_urls, track.url):
        net.check_url(url, unit.net)  # untrusted metadata must not point us at internal hosts
    check_names(info, level, track, video)
    tiles, looks, cues = _download(info, level, track, unit, before_request)
    cleaned = transcript.clean(cues, keep_annotations=filters.keep_annotations)
    speech = transcript.speech(cleaned.cues, duration)
    quality.check_speech(speech, track.lang, level.count, filters)
    if not cleaned.cues:
        raise VideoError("no_subtitles", f"the {track.lang} {track.kind} track holds only annotations")
    judged = frames.judge(tiles, looks, difference=filters.static_difference, blank_std=filters.blank_std,
                          keep=filters.keep_static)
    quality.check_frames(judged.distinct, level.count, filters)
    positions = align.interleave([(t.time, t.image) for t in judged.kept], [(c.start, c.text) for c in cleaned.cues])
    chunks = align.chunk(positions, config.frames_per_sample)
    meta = {**_meta(info, video_id, level, track), "speech": speech.meta()}
    cleaning = _cleaning_by_chunk(chunks, cleaned.removed, judged)
    return [records.sample(f"{KIND}:{video_id}:{i}", KIND, [item for _, item in c], times=[t for t, _ in c],
                           meta={**meta, "chunk": i, "chunks": len(chunks), **cleaning[i]})
            for i, c in enumerate(chunks)]


def duration_of(info: dict, level) -> float:
    """The info dict's duration, or the storyboard's span where it has none we can use."""
    duration = info.get("duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and math.isfinite(duration) \
            and duration > 0:
        return float(duration)
    return level.count * level.interval


def _cleaning_by_chunk(chunks, removed, judged: frames.Judged) -> list[dict]:
    """What cleaning took, told in the sample whose span holds its time, so that a sample's
    meta says what went between its own positions: {"cleaning": {...}}, or {} for a sample
    where nothing went (stats finds the others by the word)."""
    starts = [c[0][0] for c in chunks]
    told = [{"removed": [], "words_removed": 0, "static_frames": [], "blank_frames": []} for _ in chunks]

    def at(t: float) -> dict:
        return told[max(bisect_right(starts, t) - 1, 0)]

    for t, text in removed:
        at(t)["removed"].append([t, text])
        at(t)["words_removed"] += len(text.split())
    for field_name, times in (("static_frames", judged.static), ("blank_frames", judged.blank)):
        for t in times:
            at(t)[field_name].append(t)
    return [{"cleaning": c} if c["removed"] or c["static_frames"] or c["blank_frames"] else {} for c in told]


def _download(info: dict, level, track, unit: YoutubeUnit, before_request=None):
    with tempfile.TemporaryDirectory(prefix="emu-yt-") as tmp:
        files = ytdl.download(info, level.format_id, track.lang, track.ext, track.kind == "auto",
                              Path(tmp), unit.ytdl, unit.net, before_request)
        mosaics = storyboard.read_mhtml(files.storyboard.read_bytes())
        cues = subtitles.parse(files.subtitles.read_bytes(), track.ext)
    if not cues:
        raise VideoError("no_subtitles", f"the {track.lang} {track.kind} track has no text")
    tiles = storyboard.slice_mosaics(mosaics, level, quality=unit.config.tile_quality)
    return tiles, frames.looks(mosaics, level), cues


def load_info(video: VideoInput, options: ytdl.YtdlOptions, policy: net.NetPolicy | None = None,
              before_request=None) -> dict:
    """The video's yt-dlp info dict: read from its file, or asked of yt-dlp."""
    if video.kind != "file":
        url = video.ref if video.kind == "url" else f"https://www.youtube.com/watch?v={video.video_id}"
        return ytdl.extract(url, options, policy, before_request)
    try:
        data = read_json(video.ref, max_depth=INFO_DEPTH)
    except UnreadableFile as e:   # a FIFO, not JSON, nested too deep: one reason
        raise VideoError("malformed_info", f"not a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise VideoError("malformed_info", f"{video.ref}: JSON {type(data).__name__}, not an info dict")
    if "playabilityStatus" in data:  # a raw player response saved by another tool
        raise _player_response_error(video, data)
    return data


def _player_response_error(video: VideoInput, response: dict) -> VideoError:
    """A blocked or unavailable player response says why; a playable one we cannot use
    without yt-dlp's extraction, which needs the network. One whose playabilityStatus is
    no object gives no status at all: malformed, not a video YouTube called unavailable."""
    if not isinstance(response.get("playabilityStatus"), dict):
        return VideoError("malformed_info", f"{video.ref}: playabilityStatus is "
                                            f"{type(response.get('playabilityStatus')).__name__}, not an object")
    reason = storyboard.playability_reason(response)
    if reason is None:
        return VideoError("unsupported_input",
                          f"{video.ref}: a raw player response; give yt-dlp info dicts (yt-dlp -J)")
    status = response["playabilityStatus"]
    return VideoError(reason, f"{status.get('status')}: {status.get('reason') or 'no reason given'}")


def checked_id(info: dict, video: VideoInput) -> str:
    """The id names files and keys: it must be a real YouTube id, never a path."""
    video_id = str(info.get("id") or "")
    if not VIDEO_ID.fullmatch(video_id):  # fullmatch: VIDEO_ID's $ would let a trailing newline by
        raise VideoError("malformed_info", f"{video.ref}: id {video_id[:40]!r} is not a YouTube video id")
    if video.video_id and video.video_id != video_id:
        raise VideoError("malformed_info", f"{video.ref}: holds video {video_id}, named {video.video_id}")
    return video_id


def check_names(info: dict, level, track, video: VideoInput) -> None:
    """The storyboard format and subtitle language (track None: none asked for) yt-dlp is
    asked for must be plain names (never a path, a selector or a regex), and the storyboard
    an .mhtml file as we read it."""
    names = [("storyboard format_id", level.format_id)] + ([("subtitle language", track.lang)] if track else [])
    for what, name in names:
        if not _PLAIN_NAME.fullmatch(name):
            raise VideoError("malformed_info", f"{video.ref}: {what} {name[:40]!r} is not a plain name")
    formats = info.get("formats") if isinstance(info.get("formats"), list) else []
    exts = {f.get("ext") for f in formats if isinstance(f, dict) and str(f.get("format_id")) == level.format_id}
    if exts != {"mhtml"}:
        raise VideoError("malformed_info", f"{video.ref}: storyboard {level.format_id} has extension "
                         f"{', '.join(sorted(map(repr, exts)))[:60]}, not 'mhtml'")


def _meta(info: dict, video_id: str, level, track) -> dict:
    return {
        "video_id": video_id,
        "url": f"https://www.youtube.com/watch?v={video_id}",
        "title": info.get("title"), "channel": info.get("channel") or info.get("uploader"),
        "duration": info.get("duration"), "upload_date": info.get("upload_date"),
        "license": info.get("license"),
        "storyboard_level": level.format_id, "interval": level.interval,
        "interval_source": level.interval_source, "tile": [level.tile_width, level.tile_height],
        "subtitles": {"lang": track.lang, "kind": track.kind, "ext": track.ext},
    }


def layout(config: YoutubeConfig) -> dict:
    return {"youtube": asdict(config)}


def make_youtube(videos: list[VideoInput], config: YoutubeConfig, ytdl_options: ytdl.YtdlOptions,
                 net_policy: net.NetPolicy, output, ray=None, *, retry_failed: bool = False,
                 identity_pool: identities.IdentityOptions = identities.IdentityOptions()):
    """Run the stage over `videos` into output.out; resumable, every video accounted for."""
    from emu_data.engine.stage import run_source

    return run_source(SOURCE, config, videos, output, ray, retry_failed, ytdl=ytdl_options, net=net_policy,
                      identity_pool=identity_pool)


@contextlib.contextmanager
def session(videos, config, *, ray, ytdl, net, identity_pool):
    """The run's identity pool, one shared actor for every worker, while the run lasts."""
    from emu_data.engine import runtime
    from emu_data.engine.stage import Session

    from emu_data.sources.youtube import doctor

    members = identities.pool_of(identity_pool, ytdl.cookies, ytdl.proxy)
    doctor.warn_at_start(members)   # a missing JS runtime, an expired cookie: said before hours of work
    policy = pool.PoolPolicy(
        cooldown=identity_pool.cooldown, max_cooldown=identity_pool.max_cooldown,
        retire_after=identity_pool.retire_after, sleep_interval=ytdl.sleep_interval,
        max_sleep_interval=ytdl.max_sleep_interval, window=identity_pool.window, request_rate=net.per_host_rate)
    log.info("identities: %s", "; ".join(i.describe() for i in members[:20]))
    with runtime.shared(pool.IdentityPool, members, policy, options=ray) as handle:
        yield Session(units={"pool_handle": handle}, progress=lambda: pool.progress_line(handle.call("snapshot")))


@dataclass(frozen=True)
class YoutubeInputs:
    videos: tuple = option((), positional=True, many=True, metavar="VIDEO",
                           help="video ids, video URLs, playlist or channel URLs")
    ids: Path | None = option(None, parse=Path, metavar="FILE", help="file with one id or URL per line")
    info_json: tuple = info_json_option()


def _resolve(given: YoutubeInputs, ytdl: ytdl.YtdlOptions, net: net.NetPolicy, identity_pool=None) -> list[VideoInput]:
    from emu_data.sources.youtube import ytdl as yt

    return inputs.collect(list(given.videos), given.ids, list(given.info_json),
                          lambda url: yt.expand(url, ytdl, net))


def configure_ytdl(values: dict) -> dict:
    """yt-dlp retries and times out as --retries and --timeout say."""
    return {**values, "ytdl": replace(values["ytdl"], retries=values["net"].retries,
                                      socket_timeout=values["net"].read_timeout)}


SOURCE = registry.register(registry.Source(
    name="youtube",
    kinds=(registry.Kind(KIND, emu_weight=16, colour="#c4302b", chunked=True, sample=sample.storyboard),),
    help="YouTube storyboards + subtitles -> YT-Storyboard interleaved samples",
    description="Fetch storyboard mosaics and subtitles with yt-dlp, slice tiles at their real "
                "times, merge with subtitle text by Emu's rule (text since the previous frame "
                "before each frame) and cut into samples of at most --frames-per-sample frames. "
                "Every video ends in the corpus or in the status table with a reason.",
    epilog="examples:\n  emu-data youtube GJLlxj_dtq8 https://youtu.be/dsMFmonKDD4 --out runs/yt\n"
           "  emu-data youtube --ids ids.txt --out runs/yt --cookies cookies.txt\n"
           "  yt-dlp -J ID > info/ID.info.json   # collect metadata apart, then:\n"
           "  emu-data youtube --info-json info/ --out runs/yt",
    config=YoutubeConfig, inputs=YoutubeInputs, resolve=_resolve, configure=configure_ytdl,
    units=lambda videos, config, ray, ytdl, net, identity_pool, pool_handle=None:
        units(videos, config, ytdl, net, pool_handle),
    process=process, layout=layout, retryable=RETRYABLE, filters=FILTERS, session=session,
    extras=(Params("ytdl", ytdl.YtdlOptions, "yt-dlp"), Params("net", net.NetPolicy, "downloads (the HTTP policy)"),
            Params("identity_pool", identities.IdentityOptions, "identities (who fetches from YouTube)")),
    ray_options=("max_in_flight",),
    site=registry.Site(site_youtube.site_inputs, site_youtube.publish_site),
))
