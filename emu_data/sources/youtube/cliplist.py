"""Clip lists: YouTube ids with [start, end] and a caption (Panda-70M, InternVid, flat CSVs).

Parsing a clip list's rows and choosing a clip's storyboard tiles, for the `clips` stage
(clips.py), which downloads one storyboard per video and cuts every clip of it from there;
clipfiles.py reads the files.

Panda-70M's CSV has one row per *video*: `videoID`, `url`, and Python-literal lists (not
JSON: single quotes, as its own loaders read them with ast.literal_eval) in `timestamp`
([['0:00:00.000', '0:00:05.005'], ...]), `caption` (['...', ...]) and `matching_score`
([0.45, ...]), one entry per clip. A flat list has one row per clip: a video id, start, end
and caption. Rows are written by strangers: every problem is a reason for that clip (or for
the row's clips), never an exception out of here.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

from emu_data.core.errors import ItemFailed
from emu_data.core.options import option
from emu_data.sources.youtube.inputs import VIDEO_ID

MAX_FIELD = 1 << 20             # a list field longer than this is refused, not parsed
MAX_CLIPS = 10_000              # clips per video row
_CLOCK = re.compile(r"(?:(\d{1,6}):)?(\d{1,2}):(\d{1,2}(?:\.\d{1,9})?)")


class ClipRejected(ItemFailed):
    """A clip (or a row of clips) that cannot become a sample, with its status reason."""


@dataclass(frozen=True)
class Clip:
    video_id: str
    start: float
    end: float
    caption: str
    score: float | None = None
    index: int = 0                 # the clip's place in its video's row

    @property
    def key(self) -> str:
        """VIDEOID:START-END, times in milliseconds (the stage puts its kind in front): stable,
        and unique per span."""
        return f"{self.video_id}:{round(self.start * 1000)}-{round(self.end * 1000)}"


def parse_time(value) -> float:
    """Seconds from '0:01:02.500', '1:02.5', '62.5' or a number; ClipRejected(bad_timestamp)."""
    if isinstance(value, bool):
        raise ClipRejected("bad_timestamp", f"time {value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (clock := _CLOCK.fullmatch(value.strip())):
        hours, minutes, secs = clock.groups()
        if int(minutes) >= 60 or float(secs) >= 60:
            raise ClipRejected("bad_timestamp", f"time {value[:40]!r}: minutes and seconds run to 59")
        seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    else:
        try:
            seconds = float(value) if isinstance(value, str) and len(value) < 40 else math.nan
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ClipRejected("bad_timestamp", f"time {str(value)[:40]!r} is not a time of day in the video")
    return seconds


def clip(video_id: str, start, end, caption, score=None, index: int = 0) -> Clip:
    """One clip, checked: a YouTube id, start before end, a caption with a letter or digit."""
    if not isinstance(video_id, str) or not VIDEO_ID.fullmatch(video_id):
        raise ClipRejected("invalid_id", f"video id {str(video_id)[:40]!r} is not a YouTube id")
    begin, finish = parse_time(start), parse_time(end)
    if finish <= begin:
        raise ClipRejected("bad_timestamp", f"clip ends at {finish:g} s, not after its start {begin:g} s")
    if not isinstance(caption, str) or not any(c.isalnum() for c in caption):
        raise ClipRejected("empty_caption", "the clip's caption holds no word")
    return Clip(video_id, begin, finish, " ".join(caption.split()), _score(score), index)


def _score(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def panda_row(row: dict) -> list[Clip | ClipRejected]:
    """The clips of one Panda-70M row, each a Clip or the reason it is none. A row whose lists
    cannot be read gives one ClipRejected for the whole row."""
    try:
        timestamps = _literal_list(row.get("timestamp"), "timestamp")
        captions = _literal_list(row.get("caption"), "caption")
        scores = (_literal_list(row.get("matching_score"), "matching_score")
                  if row.get("matching_score") not in (None, "") else None)
    except ClipRejected as e:
        return [e]
    if len(captions) != len(timestamps) or (scores is not None and len(scores) != len(timestamps)):
        return [ClipRejected("malformed_row", f"{len(timestamps)} timestamps, {len(captions)} captions"
                             + (f", {len(scores)} scores" if scores is not None else "") + ": they must pair up")]
    video_id = row.get("videoID") or _id_from_url(row.get("url"))
    found: list[Clip | ClipRejected] = []
    for i, (span, caption) in enumerate(zip(timestamps, captions)):
        try:
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ClipRejected("bad_timestamp", f"timestamp {str(span)[:60]!r} is not [start, end]")
            found.append(clip(video_id, span[0], span[1], caption, scores[i] if scores else None, i))
        except ClipRejected as e:
            found.append(e)
    return found


@dataclass(frozen=True)
class FlatColumns:
    """Where a flat list (one row per clip) keeps each field."""

    video: str = option("video_id", flag="--video-column", metavar="NAME",
                        help="flat lists: the column holding the YouTube id (or URL)")
    start: str = option("start", flag="--start-column", metavar="NAME",
                        help="flat lists: the clip's start (seconds or H:MM:SS.mmm)")
    end: str = option("end", flag="--end-column", metavar="NAME", help="flat lists: the clip's end")
    caption: str = option("caption", flag="--caption-column", metavar="NAME", help="flat lists: the caption")
    score: str = option("matching_score", flag="--score-column", metavar="NAME",
                        help="flat lists: the caption's matching score (--min-score reads it)")


def flat_row(row: dict, columns: FlatColumns = FlatColumns()) -> Clip | ClipRejected:
    """The clip of one flat row (a video id or its URL, start, end, caption), or its reason."""
    video = row.get(columns.video)
    video_id = video if isinstance(video, str) and VIDEO_ID.fullmatch(video) else _id_from_url(video) or video
    try:
        return clip(video_id, row.get(columns.start), row.get(columns.end), row.get(columns.caption),
                    row.get(columns.score))
    except ClipRejected as e:
        return e


def _literal_list(text, column: str) -> list:
    """A Python-literal list as Panda-70M writes its columns (ast.literal_eval: literals only,
    no code), bounded in length and nesting; a list a parquet or JSON file holds as one."""
    if isinstance(text, (list, tuple)):   # a parquet list column, a JSON array: already a list
        value = text
    elif not isinstance(text, str) or not text.strip():
        raise ClipRejected("malformed_row", f"no {column} list")
    else:
        value = _literal(text, column)
    if len(value) > MAX_CLIPS:
        raise ClipRejected("malformed_row", f"{column}: {len(value)} clips in one row (at most {MAX_CLIPS})")
    return list(value)


def _literal(text: str, column: str):
    if len(text) > MAX_FIELD:
        raise ClipRejected("malformed_row", f"{column}: {len(text)} characters (at most {MAX_FIELD})")
    try:
        value = _parse_literal(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise ClipRejected("malformed_row", f"{column} is not a list literal ({type(e).__name__})") from None
    if not isinstance(value, (list, tuple)):
        raise ClipRejected("malformed_row", f"{column} is a {type(value).__name__}, not a list")
    return value


# A list literal with no double quote, backslash or control character reads the same as JSON
# once its single quotes are double ones: json.loads is ~20x faster than literal_eval, whose
# compile() was two thirds of planning a Panda list. Anything else (an apostrophe in a caption
# makes repr use double quotes; JSON's own words, which Python does not read) takes literal_eval.
_JSONABLE = re.compile(r"\s*\[[^\"\\\x00-\x1f]*\]\s*")
_JSON_WORDS = re.compile(r"NaN|Infinity|true|false|null")


def _parse_literal(text: str):
    if _JSONABLE.fullmatch(text) and not _JSON_WORDS.search(text):
        try:
            return json.loads(text.replace("'", '"'))
        except ValueError:   # .5, 1_000, a tuple: Python literals JSON lacks
            pass
    return ast.literal_eval(text.strip())


def _id_from_url(url) -> str | None:
    if isinstance(url, str):
        found = re.search(r"(?:v=|youtu\.be/|/shorts/)([A-Za-z0-9_-]{11})(?![A-Za-z0-9_-])", url)
        return found.group(1) if found else None
    return None


def tiles_for(times: list[float], clip: Clip, frames: int, min_frames: int = 1,
              duration: float | None = None) -> list[int]:
    """The indices of the storyboard tiles that show `clip`: those whose times fall in
    [start, end], thinned evenly to `frames` when there are more. A clip shorter than the
    spacing gets the tile nearest its middle when min_frames allows one; fewer tiles than
    min_frames is ClipRejected(too_few_frames); a clip past the video's end, past_duration."""
    if duration is not None and clip.start >= duration:
        raise ClipRejected("past_duration", f"clip starts at {clip.start:g} s; the video is {duration:g} s")
    inside = [i for i, t in enumerate(times) if clip.start <= t <= clip.end]
    if not inside and times and min_frames <= 1:
        middle = (clip.start + clip.end) / 2
        inside = [min(range(len(times)), key=lambda i: (abs(times[i] - middle), i))]
    if len(inside) < max(min_frames, 1):
        raise ClipRejected("too_few_frames", f"{len(inside)} storyboard tile(s) in {clip.start:g}-{clip.end:g} s, "
                                             f"at least {max(min_frames, 1)} wanted")
    if len(inside) <= frames:
        return inside
    # evenly: the k-th of `frames` picks at the centre of its share of the span
    return [inside[int((k + 0.5) * len(inside) / frames)] for k in range(frames)]
