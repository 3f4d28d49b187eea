"""`emu-data webvid`: WebVid-10M video-text pairs (CSV) -> samples of sampled frames + caption.

Per CSV row, as Emu uses WebVid: check the row, download the mp4 (net.Fetcher, size-capped)
or, where contentUrl is a path or file:// URL, read it from a local copy under --media-root
(net.media: confined to the roots, size-capped the same), decode it in memory, take N frames at the centres of N equal spans of the stream's duration
(each the first frame at or after its time, with the frame's own pts time), store them as
JPEG, and put the caption (`name`) last, at the last frame's time.

Every data row ends as one sample or one status row with a reason: malformed_row,
invalid_id, duplicate_key, missing_url, missing_caption, bad_duration, too_short, a fetch
reason (http_404, timeout, too_large, ...), a local file's reason (local_file_refused,
outside_media_root, missing_file, not_a_file, read_error), decode_error, decompression_bomb
or invalid_record.

Keys are webvid:<videoid>. A videoid is used only after it matched `\\w+` (ASCII), and only
in keys, never in a path. A row with no usable id (malformed or invalid) is keyed by file
stem and line instead: webvid:<stem>-<line>, which cannot clash with an id since ids hold
no "-". An id already seen earlier in the input is the same video again: that row is a
duplicate_key status row (webvid:<videoid>#dupN, keys.py), found at planning over all
input files, so the first occurrence keeps the id wherever the repeat lies.

Units are row ranges of the CSV files, found once by a sequential scan at planning time
(the csv module, so quoted commas and newlines inside quotes are handled); a unit reads only
its own bytes (seek + read) and checks they still hash the same.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import BinaryIO, Iterator

# PyAV rather than OpenCV: it seeks by timestamp, reports the stream's duration and
# time_base exactly (frame times are pts * time_base, not a frame index over a guessed fps),
# raises clear av.error exceptions on corrupt or truncated input instead of returning empty
# frames, decodes from bytes in memory (no temp files), and is the FFmpeg binding
# video2dataset also uses.
import av
from PIL import Image

from emu_data.core import errors, images, records
from emu_data import net
from emu_data import sources as registry
from emu_data.net.media import LocalMedia, Media
from emu_data.core.options import Params, option, positive_int
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.synthetic.site import webvid as site_webvid
from emu_data.core.files import safe_stem
from emu_data.sources import keys, textfiles
from emu_data.synthetic import sample

KIND = "webvid"
REQUIRED_COLUMNS = ("videoid", "name", "duration", "contentUrl")
VIDEO_ID = re.compile(r"\w{1,64}", re.ASCII)  # WebVid ids are digits; never a path part
# missing_file and local_file_refused too: a mirror still syncing, or a run without (or with
# the wrong) --media-root, is fixed by a rerun with --retry-failed
RETRYABLE = frozenset({"rate_limited", "timeout", "connection_error", "truncated",
                       "http_429", "http_500", "http_502", "http_503", "http_504",
                       "missing_file", "local_file_refused"})
# Config fields that change how fast a run goes, not what it writes: kept out of the layout
# fingerprint (and, by repr=False, out of unit digests) so changing them never forces a redo.
_SPEED_ONLY = ("fetch_workers",)
# A seek pays only if it jumps further than this past the last frame decoded (measured: a
# seek plus the first frame after it costs about as much as decoding 5-7 frames of 596x336
# H.264, 0.2-0.3 s at 25 fps; between 0 and 1 s the choice moved timings within noise).
_MIN_SKIP_SECONDS = Fraction(1, 4)


class VideoError(errors.ItemFailed):
    """A row that cannot become a sample, with its status-table reason."""


@dataclass(frozen=True)
class WebvidConfig:
    frames: int = option(8, parse=positive_int, help="frames per video, uniformly sampled (Emu: 8)")
    min_duration: float = option(1.0, parse=float, help="shorter videos (declared or decoded) are too_short, "
                                                        "in seconds")
    frame_size: int | None = option(512, parse=int, store=lambda size: size or None,   # never upscaled
                                    help="longest side of stored frames, 0 keeps")
    jpeg_quality: int = option(90, parse=int, help="JPEG quality of stored frames")
    rows_per_unit: int = option(256, parse=positive_int, help="CSV rows per unit of work, the unit of resume")
    max_pixels: int = 2**25           # decoded frame area guard (width x height)
    fetch_workers: int = option(8, repr=False, parse=positive_int,   # repr=False: not in unit digests
                                help="videos fetched and decoded at once per unit")

    def __post_init__(self):
        if min(self.frames, self.rows_per_unit, self.fetch_workers, self.max_pixels) < 1:
            raise errors.UsageError("--frames, --rows-per-unit, --fetch-workers and --max-pixels must be at least 1")
        if self.frame_size and self.frame_size < 16:
            raise errors.UsageError("--frame-size must be at least 16 (or 0 to keep the source size)")
        if not 1 <= self.jpeg_quality <= 95:
            raise errors.UsageError("--jpeg-quality must be in 1..95 (Pillow's useful range)")
        if not (math.isfinite(self.min_duration) and self.min_duration >= 0):
            raise errors.UsageError("--min-duration must be a non-negative number of seconds")


# ---- durations ----------------------------------------------------------------------------

# ISO-8601 durations as WebVid writes them (PT00H00M17S), and the shorter forms (PT17S,
# PT1M2.5S, P0DT00H00M17S). Years, months and weeks are refused: a clip never has them, and
# months have no fixed length.
_ISO_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?",
                           re.ASCII | re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds of an ISO-8601 duration, or VideoError(bad_duration)."""
    value = (text or "").strip()
    match = _ISO_DURATION.fullmatch(value)
    # "P" and "PT" match with every part empty; "P1DT" has a T with nothing after it.
    if not match or not any(match.groups()) or value.upper().endswith("T"):
        raise VideoError("bad_duration", f"duration {value[:40]!r} is not an ISO-8601 duration like PT00H00M17S")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if not math.isfinite(total):  # 400 digits of seconds parse as inf, which passes min_duration
        raise VideoError("bad_duration", f"duration {value[:40]!r}... is not a finite number of seconds")
    return total


# ---- planning -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Slice:
    """Rows of `path` in bytes [start, end), lines first_line..last_line (1-based); `repeats`
    holds (line, N, where the id was first seen) for rows whose videoid came earlier."""

    path: str
    stem: str
    start: int
    end: int
    first_line: int
    last_line: int
    rows: int
    sha1: str
    header: tuple[str, ...]
    repeats: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class WebvidUnit:
    slice: Slice
    config: WebvidConfig
    net: net.NetPolicy
    # repr=False: where the copies live is not what they are (a mirror moved to another disk
    # does not redo committed units; rows a wrong root left missing_file are --retry-failed)
    media: LocalMedia = field(default=LocalMedia(), repr=False)


def units(inputs: list[Path], config: WebvidConfig, net_policy: net.NetPolicy = net.NetPolicy(),
          media: LocalMedia = LocalMedia()) -> list[Unit]:
    """Each file's data rows in runs of `rows_per_unit`, in input order."""
    files = textfiles.input_files(inputs, ".csv")
    stems = textfiles.distinct_stems(files, _stem)
    ids = keys.Scan()
    per_file = [_slices(path, stem, config.rows_per_unit, partial(_scan_id, ids, n))
                for n, (path, stem) in enumerate(zip(files, stems))]
    repeats = ids.repeats([p.name for p in files])
    per_file = [[_with_repeats(s, repeats.get(n, [])) for s in slices] for n, slices in enumerate(per_file)]
    return [Unit(f"webvid-{s.stem}-{i:05d}", WebvidUnit(s, config, net_policy, media))
            for slices in per_file for i, s in enumerate(slices)]


def _stem(path: Path) -> str:
    """The file name without .csv, reduced to characters safe in file names and keys."""
    return safe_stem(path.name.removesuffix(".csv"))


class _Lines:
    """Binary lines handed to csv.reader as text, counting bytes, lines and a running hash.

    csv.reader pulls a line only when the record it is parsing needs one and never reads
    ahead, so right after it yields a row, `offset` is the byte and `line` the line where
    that row ends."""

    def __init__(self, f: BinaryIO, first_line: int):
        self._f = f
        self.offset = 0
        self.line = first_line - 1
        self.digest = hashlib.sha1()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self._f.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        self.digest.update(raw)
        # Undecodable bytes become U+FFFD: the row still gets its status (or a sample whose
        # caption shows where the damage is) instead of sinking the whole unit.
        return raw.decode("utf-8", errors="replace")


def parse_rows(lines: _Lines) -> Iterator[tuple[int, tuple[str, ...] | str]]:
    """(first line, fields) per CSV record; fields is the csv module's complaint as a str
    for a record it cannot parse. Blank lines are no records."""
    reader = csv.reader(lines)
    start = lines.line + 1
    while True:
        try:
            fields: tuple[str, ...] | str = tuple(next(reader))
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over csv.field_size_limit(); the reader goes on
            fields = f"csv: {e}"
        if fields:
            yield start, fields
        start = lines.line + 1


def _header(path: Path, rows: Iterator) -> tuple[str, ...]:
    first = next(rows, None)
    if first is None or isinstance(first[1], str):  # str: the csv module's complaint about it
        raise errors.UsageError(f"{path}: no CSV header row" + (f" ({first[1]})" if first else ""))
    header = tuple(name.strip() for name in first[1])
    header = (header[0].removeprefix("\ufeff"), *header[1:])  # a BOM some exporters write
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise errors.UsageError(f"{path}: no column(s) {', '.join(missing)} in the header {list(header)[:10]}")
    return header


def _slices(path: Path, stem: str, per_unit: int, on_row) -> list[Slice]:
    """One sequential read: byte offsets every `per_unit` rows and each range's hash;
    on_row(line, fields, header) sees every data row (the duplicate-id scan)."""
    resolved, slices = str(path.resolve()), []
    with open(path, "rb") as f:
        lines = _Lines(f, 1)
        rows = parse_rows(lines)
        header = _header(path, rows)
        start, first, count, lines.digest = lines.offset, lines.line + 1, 0, hashlib.sha1()
        for line, fields in rows:
            on_row(line, fields, header)
            count += 1
            if count == per_unit:
                slices.append(Slice(resolved, stem, start, lines.offset, first, lines.line, count,
                                    lines.digest.hexdigest(), header))
                start, first, count, lines.digest = lines.offset, lines.line + 1, 0, hashlib.sha1()
        if count:
            slices.append(Slice(resolved, stem, start, lines.offset, first, lines.line, count,
                                lines.digest.hexdigest(), header))
    return slices


def _id_code(videoid: str) -> int:
    """A 63-bit code per id for the duplicate scan: WebVid's digit ids map to themselves
    (exact), other word ids to 61 bits of a hash above them (a clash is ~N^2/2^62)."""
    if videoid.isdigit() and len(videoid) <= 18:
        return int(videoid)
    return (1 << 62) | int.from_bytes(hashlib.blake2b(videoid.encode(), digest_size=8).digest()) >> 3


def _scan_id(ids: keys.Scan, file_no: int, line: int, fields, header: tuple[str, ...]) -> None:
    row = _as_dict(fields, header)
    videoid = row["videoid"].strip() if row else ""  # malformed rows are keyed by line, not id
    if VIDEO_ID.fullmatch(videoid):
        ids.add(file_no, line, _id_code(videoid))


def _with_repeats(s: Slice, repeats: list[tuple[int, int, str]]) -> Slice:
    """The slice with the repeats (sorted by line) that fall within its lines."""
    inside = keys.between(repeats, s.first_line, s.last_line)
    return Slice(**{**asdict(s), "repeats": inside}) if inside else s


def read_rows(s: Slice) -> list[tuple[int, tuple[str, ...] | str]]:
    """(line, fields) of one slice, read by seeking: never the rest of the file."""
    data = textfiles.read_range(s.path, s.start, s.end, s.sha1, f"rows from line {s.first_line}")
    return list(parse_rows(_Lines(io.BytesIO(data), s.first_line)))


# ---- one row --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Video:
    """A checked row: what the download and the sample need."""

    videoid: str
    url: str
    caption: str
    declared: float
    page_idx: str | None
    page_dir: str | None


def _as_dict(fields, header: tuple[str, ...]) -> dict[str, str] | None:
    """A well-formed row by column name; None for a record the csv module refused or one
    whose field count differs from the header's."""
    if isinstance(fields, str) or len(fields) != len(header):
        return None
    return dict(zip(header, fields))


def row_key(line: int, fields, s: Slice) -> str:
    """webvid:<videoid> for a row whose id is usable; else webvid:<stem>-<line>. (A repeated
    id's status row is keyed <key>#dupN: see _outcome.)"""
    row = _as_dict(fields, s.header)
    videoid = row["videoid"].strip() if row else ""
    if VIDEO_ID.fullmatch(videoid):
        return f"{KIND}:{videoid}"
    return f"{KIND}:{s.stem}-{line}"


def parse_row(line: int, fields, s: Slice, config: WebvidConfig) -> Video:
    """The row as a Video, or VideoError(malformed_row | invalid_id | missing_url |
    missing_caption | bad_duration | too_short). A repeated id is _outcome's to catch."""
    row = _as_dict(fields, s.header)
    if row is None:
        raise VideoError("malformed_row", fields if isinstance(fields, str) else
                         f"{len(fields)} fields where the header has {len(s.header)}")
    videoid = row["videoid"].strip()
    if not VIDEO_ID.fullmatch(videoid):
        raise VideoError("invalid_id", f"videoid {videoid[:60]!r} is not 1-64 letters, digits or _")
    url, caption = row["contentUrl"].strip(), row["name"].strip()
    if not url:
        raise VideoError("missing_url", "contentUrl is empty")
    if not caption:
        raise VideoError("missing_caption", "name (the caption) is empty")
    declared = parse_duration(row["duration"])
    if declared < config.min_duration:  # refused before spending a download on it
        raise VideoError("too_short", f"declared duration {declared:g} s < min_duration {config.min_duration:g} s")
    return Video(videoid, url, caption, declared, row.get("page_idx"), row.get("page_dir"))


def _outcome(item: tuple[int, tuple[str, ...] | str], *, s: Slice, config: WebvidConfig,
             media: Media) -> tuple[dict | None, dict]:
    """(sample or None, status row) of one CSV row."""
    line, fields = item
    key = row_key(line, fields, s)
    ref = _ref(line, fields, s)
    repeat = next((r for r in s.repeats if r[0] == line), None)
    if repeat:  # the id came earlier in the input: nothing to fetch
        return None, keys.status(key, KIND, repeat[1], repeat[2], input=ref)
    attempts = 1
    try:
        video = parse_row(line, fields, s, config)
        fetched = media.get(video.url)   # a URL, or a file under --media-root
        attempts = fetched.attempts
        sampled = sample_video(fetched.body, config)
        row = records.sample(key, KIND, [*sampled.images, video.caption],
                             times=[*sampled.times, sampled.times[-1]], meta=_meta(video, sampled, fetched))
    except (VideoError, net.FetchError) as e:
        attempts = getattr(e, "attempts", 0) or attempts
        return None, records.status(key, KIND, e.reason, input=ref, error=str(e)[:500] or e.reason,
                                    attempts=attempts)
    except records.RecordError as e:
        return None, records.status(key, KIND, "invalid_record", input=ref, error=str(e)[:500])
    return row, records.status(key, KIND, "ok", input=ref, attempts=attempts, samples=1)


def _ref(line: int, fields, s: Slice) -> str:
    """The status table's `input`: the video's URL where the row has one, else file:line."""
    row = _as_dict(fields, s.header)
    return (row["contentUrl"].strip() if row else "") or f"{s.path}:{line}"


def _meta(video: Video, sampled: "SampledVideo", fetched: net.FetchResult) -> dict:
    return {
        "url": video.url, "videoid": video.videoid, "page_idx": video.page_idx, "page_dir": video.page_dir,
        "duration": sampled.duration, "declared_duration": video.declared,
        "fps": sampled.fps, "width": sampled.width, "height": sampled.height, "codec": sampled.codec,
        "frame_size": list(sampled.frame_size), "frame_times": sampled.times, "frames": len(sampled.times),
        "bytes": len(fetched.body),
    }


def process(unit: WebvidUnit, writer: UnitWriter) -> None:
    """Read the unit's rows in order, fetch (or read) and decode in parallel, write in row order."""
    rows = read_rows(unit.slice)
    with Media(unit.net, unit.media) as media, ThreadPoolExecutor(unit.config.fetch_workers) as pool:
        build = partial(_outcome, s=unit.slice, config=unit.config, media=media)
        for row, status in pool.map(build, rows):
            if row is not None:
                writer.add_sample(row)
            writer.add_status(status)


# ---- decoding -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampledVideo:
    images: list[bytes]                # JPEG, one per sampled frame
    times: list[float]                 # each frame's own pts time, seconds from the stream start
    duration: float                    # the stream's, as decoded
    fps: float | None
    width: int                         # source frame size
    height: int
    frame_size: tuple[int, int]        # stored frame size
    codec: str


@dataclass(frozen=True)
class _Stream:
    """What sampling needs of the video stream, in its own time_base units (exact)."""

    start: int
    length: Fraction
    time_base: Fraction
    fps: float | None

    def seconds(self, pts: int | Fraction) -> float:
        return float((pts - self.start) * self.time_base)


def sample_video(data: bytes, config: WebvidConfig) -> SampledVideo:
    """N frames of an mp4 held in memory, or VideoError(decode_error | too_short)."""
    try:
        # format: only FFmpeg's mp4/mov demuxer reads these untrusted bytes (WebVid serves
        # mp4); left to probing, a playlist-shaped body could reach demuxers that open URLs
        # of their own (HLS, concat), around net.Fetcher's address guard. metadata_errors:
        # a non-UTF-8 tag must not fail a video whose frames are fine.
        with av.open(io.BytesIO(data), mode="r", format="mp4", metadata_errors="ignore") as container:
            stream = _video_stream(container, config)
            info = _stream_info(container, stream)
            duration = info.seconds(info.start + info.length)
            if duration < config.min_duration:
                raise VideoError("too_short", f"decoded duration {duration:.3f} s < min_duration "
                                              f"{config.min_duration:g} s")
            source = (stream.codec_context.width, stream.codec_context.height)
            codec, images, times, size = stream.codec_context.name, [], [], source
            for frame in sample_frames(container, stream, info, config.frames):
                image, size = _encode(frame, config)
                images.append(image)
                times.append(info.seconds(frame.pts))
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpegError (corrupt, truncated) and whatever else
        # PyAV or a frame's conversion raises on hostile bytes: this video's decode_error
        raise VideoError("decode_error", f"{getattr(e, 'strerror', None) or e} ({type(e).__name__})") from None
    _check_count(times, info, config)
    return SampledVideo(images, times, duration, info.fps, *source, size, codec)


def _video_stream(container, config: WebvidConfig):
    if not container.streams.video:
        raise VideoError("decode_error", "no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # PyAV gives no context where FFmpeg has no decoder
        raise VideoError("decode_error", f"no decoder for the video stream ({stream.codec_tag or 'unknown'})")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width < 1 or height < 1:
        raise VideoError("decode_error", f"video stream without a frame size ({width}x{height})")
    _refuse_bomb(width, height, config)
    return stream


def _refuse_bomb(width: int, height: int, config: WebvidConfig) -> None:
    """VideoError(decompression_bomb) for frames above max_pixels or Pillow's MAX_IMAGE_PIXELS
    (each stored frame becomes a Pillow image, which never passes Pillow's own check)."""
    try:
        images.check_pixels(width, height, config.max_pixels, option="max_pixels")
    except images.ImageRejected as e:
        raise VideoError(e.reason, str(e)) from None


def _stream_info(container, stream) -> _Stream:
    """Start and length in stream time_base: the stream's own, else the container's."""
    time_base = Fraction(stream.time_base)
    if stream.duration:
        length = Fraction(stream.duration)
    elif container.duration:  # AV_TIME_BASE (microsecond) units
        length = Fraction(container.duration, av.time_base) / time_base
    else:
        raise VideoError("decode_error", "neither the stream nor the container states a duration")
    if length <= 0:
        raise VideoError("decode_error", f"non-positive duration {float(length * time_base)} s")
    rate = stream.average_rate or stream.guessed_rate
    return _Stream(stream.start_time or 0, length, time_base, round(float(rate), 3) if rate else None)


def _check_count(times: list[float], info: _Stream, config: WebvidConfig) -> None:
    """Fewer frames than wanted: too_short if decoding reached the stream's end (the video
    has too few frames for N distinct samples), decode_error if it stopped well before."""
    if len(times) == config.frames:
        return
    duration = info.seconds(info.start + info.length)
    interval = 1 / info.fps if info.fps else duration / config.frames
    if times and times[-1] + 1.5 * interval >= duration:
        raise VideoError("too_short", f"only {len(times)} of {config.frames} frames: the video has too few")
    reached = f"{times[-1]:.3f}" if times else "0"
    raise VideoError("decode_error", f"frames stop at {reached} s of a declared {duration:.3f} s (truncated?)")


def sample_frames(container, stream, info: _Stream, n: int) -> Iterator:
    """The first frame at or after each of n times, the centres of n equal spans of the
    stream, each after the one before (so times strictly increase); stops early if the
    frames run out.

    Seek only where a keyframe lies well ahead of the last frame decoded and at or before
    the next time: a seek lands on the keyframe at or before its target, so without one in
    between it would re-decode what is already behind us (x264's default GOP is 250 frames,
    longer than many WebVid clips), and each seek costs a few frames' decoding to refill
    the decoder's reorder delay, so a short skip is cheaper decoded through."""
    keyframes = _keyframes(container, stream)
    min_skip = _MIN_SKIP_SECONDS / info.time_base
    decoded, position, wanted = None, None, [info.start]
    for i in range(n):
        target = info.start + info.length * (2 * i + 1) / (2 * n)
        wanted[0] = target   # what the decoder may skip: see _frames
        k = bisect_right(keyframes, target) - 1  # the last keyframe at or before the target
        keyframe = keyframes[k] if k >= 0 else None
        if decoded is None or (keyframe is not None and keyframe > position + min_skip):
            container.seek(int(keyframe if keyframe is not None else target), stream=stream, backward=True)
            decoded = _frames(container, stream, wanted)
        # after `position` too: a damaged stream's pts can step back, times must not
        frame = next((f for f in decoded if f.pts >= target and (position is None or f.pts > position)), None)
        if frame is None:
            return
        position = frame.pts
        yield frame


def _keyframes(container, stream) -> list[int]:
    """Keyframe pts, from one demux pass (packets only, no decoding: ~3 ms for a 15 s clip)."""
    return sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)


def _frames(container, stream, wanted: list) -> Iterator:
    """Decoded frames from the current position on, in presentation order; a non-reference
    frame shown before wanted[0] (the time looked for now, which only grows) is not decoded.

    Such a frame can never be picked, and no other frame is predicted from it, so FFmpeg's
    skip_frame=NONREF for its packet leaves every frame that is decoded bit for bit the same
    (measured over the benchmark's 16 x264 clips: 0 of 4,167 frames differ) while it saves
    20-50% of the decoding (x264's B-frames that are not references: 8-50% of the frames)."""
    context = stream.codec_context
    for packet in container.demux(stream):   # what container.decode(stream) does, per packet
        before = packet.pts is not None and packet.pts < wanted[0]
        context.skip_frame = "NONREF" if before else "DEFAULT"
        for frame in packet.decode():
            if frame.pts is not None:
                yield frame


def _fit(width: int, height: int, longest: int | None) -> tuple[int, int]:
    """Scaled so the longest side is at most `longest`, aspect kept; never upscaled."""
    if not longest or max(width, height) <= longest:
        return width, height
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode(frame, config: WebvidConfig) -> tuple[bytes, tuple[int, int]]:
    """JPEG of the frame: scaled and converted to RGB in one swscale pass (AREA averages
    the pixels each output pixel covers: the right filter for shrinking)."""
    _refuse_bomb(frame.width, frame.height, config)  # a stream may change its frame size midway
    size = _fit(frame.width, frame.height, config.frame_size)
    if size == (frame.width, frame.height):
        rgb = frame.reformat(format="rgb24")
    else:
        rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    # The pixels to_image() would give, read straight from the plane (its stride skipped by
    # Pillow's raw decoder): to_image copies row by row through Python bytes, which cost
    # more than the swscale pass itself (measured at 596x336 -> 512x289: 5.2 ms a frame,
    # 2.5 ms this way).
    plane = rgb.planes[0]
    image = Image.frombuffer("RGB", size, plane, "raw", "RGB", plane.line_size, 1)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), size


# ---- the stage --------------------------------------------------------------------------------

def layout(config: WebvidConfig) -> dict:
    return {"webvid": {k: v for k, v in asdict(config).items() if k not in _SPEED_ONLY}}


def input_files(inputs: list[Path]) -> list[Path]:
    files = textfiles.input_files(inputs, ".csv")
    if not files:
        raise errors.UsageError("no .csv input: give WebVid CSV files or directories holding them")
    return files


def make_webvid(inputs: list[Path], config: WebvidConfig, net_policy: net.NetPolicy, output, ray=None,
                *, retry_failed: bool = False, media: LocalMedia = LocalMedia()):
    """Run the stage over the CSV `inputs` (files or directories of *.csv) into output.out;
    resumable, every row accounted for. retry_failed reruns committed units holding a
    retryable reason (timeout, 5xx, rate limits, cut-off bodies, files missing under the
    media roots). Each video is cut at the net policy's max_bytes (--max-bytes) and reported
    too_large; contentUrl values that are paths or file:// URLs are read under media's roots."""
    from emu_data.engine.stage import run_source

    return run_source(SOURCE, config, input_files(inputs), output, ray, retry_failed, net=net_policy,
                      media=media)


@dataclass(frozen=True)
class WebvidInputs:
    input: list = option(many=True, required=True, parse=Path, metavar="CSV",
                         help="WebVid CSV files, or directories of them")


SOURCE = registry.register(registry.Source(
    name="webvid",
    kinds=(registry.Kind(KIND, emu_weight=16, colour="#dd6b20", pair_rank=2, sample=sample.webvid_clip),),
    help="WebVid CSV -> N uniformly sampled frames (with times) + caption per video",
    description="Each mp4 downloaded (cut at --max-bytes), or read from a local copy where contentUrl is a "
                "path or file:// URL (--media-root), decoded with PyAV, N frames sampled at the "
                "centres of N equal spans with their real times, caption from `name`. Short, corrupt, "
                "too large, missing or undecodable videos get status reasons.",
    epilog="examples:\n  emu-data webvid --input results_2M_train.csv --out runs/webvid --frames 8\n"
           "  emu-data webvid --input local.csv --media-root /data/webvid --out runs/webvid"
           "   # contentUrl: videos/1234.mp4",
    config=WebvidConfig, inputs=WebvidInputs,
    resolve=lambda given, net, media: input_files(given.input),
    units=lambda files, config, ray, net, media: units(files, config, net, media),
    process=process, layout=layout, retryable=RETRYABLE,
    extras=(Params("net", net.NetPolicy, "downloads (the HTTP policy)"),
            Params("media", LocalMedia, "local copies (WebVid's URLs were withdrawn in 2024)", only=("media_root",))),
    site=registry.Site(site_webvid.site_inputs, site_webvid.publish_site),
))
