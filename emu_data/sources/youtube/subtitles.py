"""YouTube subtitle files (json3, WebVTT, srv1, TTML) parsed into clean timed cues.

YT-Storyboard samples interleave storyboard frames with subtitle text by time, so every
parser here yields cues sorted by start, times in seconds rounded to the millisecond, and
text that is clean (tags stripped, entities unescaped, whitespace collapsed) and, for
YouTube's ASR WebVTT, said once: those files repeat every phrase up to three times.

`choose_track` picks which of a video's tracks (yt-dlp's info dict) to download, preferring
a manual track, then the original-language ASR, never a machine translation, and json3
among formats (word times and no repetition).

Everything unparseable raises `SubtitleError` (a ValueError; `reason` is the status token).
XML is parsed with the standard library; defusedxml is not available, so documents with a
DOCTYPE or ENTITY declaration are refused before parsing (no entity expansion).
"""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import wraps
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qs, urlsplit

import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

# json3 first: it never repeats ASR text and carries word offsets; vtt needs de-duplication.
FORMAT_PREFERENCE = ("json3", "vtt", "srv1", "ttml")

# ASR VTT "hold" cues last 10 ms and only repeat the phrase just typed.
_HOLD_MS = 10
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Tags (<c.colorE5E5E5>, </c>, <i>, <v Bob>) and VTT inline timestamps (<00:00:03.500>);
# a bare "<" in text (srv1 after XML unescaping, "a < b") is not followed by a letter.
_TAG = re.compile(r"<(?:/?[A-Za-z][^<>]*|\d[\d:.]*)>")
# Hours as webvtt-py reads cue timings (at most 10 digits): int() refuses 4300+ digits.
_INLINE_TS = re.compile(r"<((?:\d{1,10}:)?\d{2}:\d{2}\.\d{3})>")
_XML_DECL = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_TTML_CLOCK = re.compile(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_TTML_OFFSET = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
_TTML_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


@dataclass(frozen=True)
class Word:
    start: float  # seconds
    text: str
    confidence: int = 0  # json3's acAsrConf, 0-255; 0 = unknown (newer tracks, other formats)


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str
    words: tuple[Word, ...] = ()


class SubtitleError(ValueError):
    """Subtitle bytes that cannot be parsed; the message says what is wrong."""

    # A class attribute, so the error pickles across process boundaries as a plain ValueError.
    reason = "malformed_subtitles"


@dataclass(frozen=True)
class Track:
    lang: str  # the info-dict key, without yt-dlp's "-orig" marker
    kind: str  # "manual" | "auto"
    ext: str
    url: str
    name: str | None


def parse(data: bytes, ext: str) -> list[Cue]:
    """Parse subtitle bytes of format `ext` (json3, vtt, srv1, ttml)."""
    parser = _PARSERS.get(ext.lower().lstrip("."))
    if parser is None:
        raise SubtitleError(f"unsupported subtitle format {ext!r}; expected one of {FORMAT_PREFERENCE}")
    return parser(data)


# ---------------------------------------------------------------- shared helpers


def _decode(data: bytes, fmt: str) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"subtitle data must be bytes, not {type(data).__name__}")
    if not data:
        raise SubtitleError(f"{fmt}: empty document")
    try:
        return bytes(data).decode("utf-8-sig")  # -sig: drop a byte order mark
    except UnicodeDecodeError as err:
        raise SubtitleError(f"{fmt}: not UTF-8 ({err.reason} at byte {err.start})") from err


def _no_deep_nesting(parser: Callable[[bytes], list[Cue]]) -> Callable[[bytes], list[Cue]]:
    """json.loads and element walks recurse: deeply nested input is malformed, not a crash."""

    @wraps(parser)
    def guarded(data: bytes) -> list[Cue]:
        try:
            return parser(data)
        except RecursionError:
            raise SubtitleError(f"{parser.__name__.removeprefix('parse_')}: nested too deeply") from None

    return guarded


def _unicode(text: str) -> bool:
    """No lone surrogates: JSON escapes can spell them, and no UTF-8 column can store them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _preview(text: str) -> str:
    return repr(text[:40])


def _clean(text: str) -> str:
    # Tags go before unescaping, so an escaped "&lt;i&gt;" stays visible text.
    return " ".join(html.unescape(_TAG.sub("", text)).split())


def _seconds(ms: int) -> float:
    return max(ms, 0) / 1000  # integer ms / 1000 is the nearest float to the ms value


def _cue(start_ms: int, end_ms: int, text: str, words: Iterable[tuple] = ()) -> Cue | None:
    """words: (ms, text) or (ms, text, confidence)."""
    if not text:
        return None
    start_ms = max(start_ms, 0)
    end_ms = max(end_ms, start_ms)
    return Cue(_seconds(start_ms), _seconds(end_ms), text, tuple(Word(_seconds(t), *rest) for t, *rest in words))


def _finish(cues: Iterable[Cue | None]) -> list[Cue]:
    return sorted((c for c in cues if c is not None), key=lambda c: c.start)


def _number_ms(value: Any, scale: int, what: str) -> int:
    """A finite JSON number or decimal string, times `scale`, as integer milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SubtitleError(f"{what} is not a number: {value!r:.60}")
    try:
        number = float(value) * scale
    except ValueError:
        raise SubtitleError(f"{what} is not a number: {value!r:.60}") from None
    except OverflowError:  # a JSON integer past the float range (10**400)
        number = math.inf
    # checked after scaling: 1e308 s is finite, its milliseconds are not, and round() raises
    if not math.isfinite(number):
        raise SubtitleError(f"{what} is not finite in milliseconds: {value!r:.60}")
    return round(number)


# ---------------------------------------------------------------- WebVTT


def parse_vtt(data: bytes) -> list[Cue]:
    """WebVTT; YouTube ASR files (inline word timestamps) are de-duplicated."""
    text = _decode(data, "vtt")
    try:
        captions = webvtt.from_string(text).captions
    except MalformedFileError as err:
        raise SubtitleError(f"vtt: no WEBVTT header, starts {_preview(text)}") from err
    except (MalformedCaptionError, ValueError) as err:
        raise SubtitleError(f"vtt: {err}") from err
    _check_vtt_blocks(text, len(captions))
    captions = sorted(captions, key=lambda c: c.start_time.in_milliseconds())
    if any(_INLINE_TS.search(c.raw_text) for c in captions):
        return _finish(_asr_vtt_cues(captions))
    return _finish(_manual_vtt_cue(c) for c in captions)


def _check_vtt_blocks(text: str, parsed: int) -> None:
    """Refuse what webvtt-py's lenient mode silently drops.

    Lenient mode skips cues with bad timings and text blocks without timings; strict mode
    would catch them but also refuses YouTube's own ASR files, where a cue timings line
    follows the previous cue's text with no blank line between.
    """
    lines = _LINE_BREAK.split(text)
    timings = sum("-->" in line for line in lines)
    if timings != parsed:
        raise SubtitleError(f"vtt: {timings - parsed} of {timings} cue(s) have malformed timings")
    blocks = "\n".join(lines).split("\n\n")
    for block in blocks[1:]:  # the first is the header (WEBVTT, Kind:, Style: ...)
        head = block.strip()
        if head and "-->" not in block and not head.startswith(("NOTE", "STYLE", "REGION")):
            raise SubtitleError(f"vtt: text without cue timings: {_preview(head)}")


def _ms(timestamp: Any) -> int:
    return timestamp.in_milliseconds()


def _manual_vtt_cue(caption: Any) -> Cue | None:
    # Lines of one cue are one utterance broken for display: join them with a space.
    return _cue(_ms(caption.start_time), _ms(caption.end_time), _clean(caption.raw_text))


def _asr_vtt_cues(captions: Sequence[Any]) -> Iterable[Cue | None]:
    """Each phrase once: YouTube types it (word timestamps), holds it 10 ms, then shows it
    again as the first line of the next cue. Drop hold cues, blank lines and a cue's first
    line when it equals the last kept line; a cue's kept lines start at the cue start. Only
    the first line can be such a repeat: a phrase said twice ("[Music]", "[Music]"; "yeah",
    "yeah") is typed on a later line and stays twice."""
    last = None
    for caption in captions:
        start, end = _ms(caption.start_time), _ms(caption.end_time)
        if end - start <= _HOLD_MS:
            continue
        texts: list[str] = []
        words: list[tuple[int, str]] = []
        clock = start
        for index, line in enumerate(caption.lines):
            segments, clock = _timed_segments(line, clock)
            text = _clean(line)
            if not text or (index == 0 and text == last):
                continue
            last = text
            texts.append(text)
            words.extend(segments)
        yield _cue(start, end, " ".join(texts), words)


def _timed_segments(line: str, clock: int) -> tuple[list[tuple[int, str]], int]:
    """Split a raw line at its inline timestamps: (ms, clean text) per timed segment.

    Text before the first timestamp starts at `clock` (the cue start, or the last
    timestamp of the line above); returns the clock after the line."""
    parts = _INLINE_TS.split(line)
    segments = []
    for i, part in enumerate(parts):
        if i % 2:
            clock = _vtt_timestamp_ms(part)
        elif _clean(part):
            segments.append((clock, _clean(part)))
    return segments, clock


def _vtt_timestamp_ms(stamp: str) -> int:
    *hours, minutes, seconds = stamp.split(":")
    whole, millis = seconds.split(".")
    total_s = (int(hours[0]) if hours else 0) * 3600 + int(minutes) * 60 + int(whole)
    return total_s * 1000 + int(millis)


# ---------------------------------------------------------------- json3


@_no_deep_nesting
def parse_json3(data: bytes) -> list[Cue]:
    """YouTube json3: events with tStartMs, dDurationMs and segs [{utf8, tOffsetMs}]."""
    text = _decode(data, "json3")
    try:
        doc = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of 4300+ digits
        raise SubtitleError(f"json3: not JSON ({getattr(err, 'msg', err)}), starts {_preview(text)}") from err
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        raise SubtitleError(f"json3: expected an object with an 'events' list, got {type(doc).__name__}")
    segs = [_json3_segs(event) for event in events]
    # Word offsets mark an ASR (word-timed) track; a manual track's segs are whole lines.
    word_timed = any("tOffsetMs" in seg for event_segs in segs for seg in event_segs)
    return _finish(_json3_cue(event, s, word_timed) for event, s in zip(events, segs))


def _json3_segs(event: Any) -> list[dict]:
    if not isinstance(event, dict):
        raise SubtitleError(f"json3: event is not an object: {event!r:.60}")
    segs = event.get("segs") or []
    if not isinstance(segs, list) or not all(isinstance(s, dict) for s in segs):
        raise SubtitleError(f"json3: 'segs' is not a list of objects: {segs!r:.60}")
    return segs


def _json3_cue(event: dict, segs: list[dict], word_timed: bool) -> Cue | None:
    # aAppend events only carry the line break of ASR's rolling two-line window.
    if event.get("aAppend") or not segs:
        return None
    start = _number_ms(event.get("tStartMs"), 1, "json3: tStartMs")
    end = start + _number_ms(event.get("dDurationMs", 0), 1, "json3: dDurationMs")
    pieces = [(s.get("utf8"), s.get("tOffsetMs", 0), _confidence(s.get("acAsrConf"))) for s in segs]
    if not all(isinstance(utf8, str) for utf8, _, _ in pieces):
        raise SubtitleError("json3: a seg's 'utf8' is missing or not text")
    if not all(_unicode(utf8) for utf8, _, _ in pieces):
        raise SubtitleError("json3: a seg's 'utf8' holds a lone surrogate escape (\\ud800), not text")
    # "\n" segs stay in the joined text (they separate words) but never become words.
    text = _clean("".join(utf8 for utf8, _, _ in pieces))
    words = [
        (start + _number_ms(offset, 1, "json3: tOffsetMs"), _clean(utf8), confidence)
        for utf8, offset, confidence in pieces if _clean(utf8)
    ] if word_timed else []
    return _cue(start, end, text, words)


def _confidence(value: Any) -> int:
    """acAsrConf as 0-255; anything else (absent, not a number, out of range) is 0, unknown:
    a confidence is a note on a word, never a reason to refuse the track."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 255:
        return 0
    return int(value)


# ---------------------------------------------------------------- XML: srv1 and TTML


def _load_xml(data: bytes, fmt: str, root_tag: str) -> ET.Element:
    text = _decode(data, fmt)
    # No defusedxml: a DOCTYPE is where entity bombs and external entities are declared,
    # and subtitle documents never need one (an HTML page served instead starts with one).
    if _XML_DECL.search(text):
        raise SubtitleError(f"{fmt}: DOCTYPE/ENTITY declarations are refused, starts {_preview(text)}")
    try:
        root = ET.fromstring(text)  # from str: the bytes are already checked as UTF-8
    except ET.ParseError as err:
        raise SubtitleError(f"{fmt}: not XML ({err}), starts {_preview(text)}") from err
    if _local(root.tag) != root_tag:
        raise SubtitleError(f"{fmt}: root element is <{_local(root.tag)}>, expected <{root_tag}>")
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # TTML elements carry a namespace


@_no_deep_nesting
def parse_srv1(data: bytes) -> list[Cue]:
    """srv1 (timedtext): <transcript><text start="1.2" dur="3.4">...</text></transcript>."""
    root = _load_xml(data, "srv1", "transcript")
    cues = []
    for element in root:
        if _local(element.tag) != "text":
            continue
        start = _number_ms(element.get("start"), 1000, "srv1: start")
        end = start + _number_ms(element.get("dur", "0"), 1000, "srv1: dur")
        # srv1 escapes twice ("&amp;#39;"): XML undoes one level, _clean the other.
        cues.append(_cue(start, end, _clean("".join(element.itertext()))))
    return _finish(cues)


@_no_deep_nesting
def parse_ttml(data: bytes) -> list[Cue]:
    """TTML as YouTube serves it: <p begin= end=|dur=> with clock ("00:00:01.250") or
    offset ("1.25s", "1250ms") times. Frame and tick times and nested time containers
    (times relative to a parent <div>) are not supported and raise SubtitleError."""
    root = _load_xml(data, "ttml", "tt")
    cues = []
    for p in root.iter():
        if _local(p.tag) != "p":
            continue
        start = _ttml_ms(p.get("begin"), "begin")
        end = _ttml_ms(p.get("end"), "end") if p.get("end") else start + _ttml_ms(p.get("dur", "0s"), "dur")
        cues.append(_cue(start, end, _clean(_ttml_text(p))))
    return _finish(cues)


def _ttml_ms(value: str | None, what: str) -> int:
    value = (value or "").strip()
    if clock := _TTML_CLOCK.fullmatch(value):
        hours, minutes, seconds = clock.groups()
        # through _number_ms: int() refuses 4300+ digits, and 400 of them overflow round()
        return (_number_ms(hours, 3_600_000, f"ttml: {what} hours") + int(minutes) * 60_000
                + _number_ms(seconds, 1000, f"ttml: {what} seconds"))
    if offset := _TTML_OFFSET.fullmatch(value):
        return _number_ms(offset.group(1), _TTML_UNIT_MS[offset.group(2)], f"ttml: {what} time")
    raise SubtitleError(f"ttml: unsupported {what} time {value!r:.60}")


def _ttml_text(element: ET.Element) -> str:
    # itertext() would glue "one<br/>two" into "onetwo"; a <br/> is a space here.
    parts = [element.text or ""]
    for child in element:
        parts.append(" " if _local(child.tag) == "br" else _ttml_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


_PARSERS = {"json3": parse_json3, "vtt": parse_vtt, "srv1": parse_srv1, "ttml": parse_ttml}


# ---------------------------------------------------------------- track choice


def choose_track(info: dict, langs: Sequence[str], allow_auto: bool = True) -> Track | None:
    """The track to fetch for the first wanted language that has one, or None.

    Per language: a manual track (exact code, then regional variants such as en-GB), then,
    if allowed, ASR in the original language ("{lang}-orig", then "{lang}", then regional
    variants). Machine translations (a tlang= URL) are never chosen: their text is a
    translation of ASR output, not what is said. Formats follow FORMAT_PREFERENCE.
    """
    manual = _track_table(info, "subtitles")
    auto = _track_table(info, "automatic_captions") if allow_auto else {}
    for lang in langs:
        track = _pick(manual, _lang_keys(manual, lang), "manual") or _pick(
            auto, _lang_keys(auto, f"{lang}-orig") + _lang_keys(auto, lang), "auto")
        if track is not None:
            return track
    return None


def _track_table(info: dict, field: str) -> dict:
    table = info.get(field)
    return table if isinstance(table, dict) else {}  # yt-dlp may give None


def _lang_keys(table: dict, lang: str) -> list[str]:
    """Keys for `lang`: the exact code first, then its regional variants, sorted."""
    want = lang.lower()
    exact = [key for key in table if key.lower() == want]
    variants = sorted(key for key in table if key.lower().startswith(want + "-"))
    return exact + [key for key in variants if key not in exact]


def _pick(table: dict, keys: Sequence[str], kind: str) -> Track | None:
    for key in keys:
        fmt = _best_format(table[key])
        if fmt is not None:
            name = fmt.get("name")
            # the info-dict key as is ("en-orig" too): yt-dlp's subtitleslangs needs it
            return Track(key, kind, fmt["ext"], fmt["url"], name if isinstance(name, str) else None)
    return None


def _best_format(formats: Any) -> dict | None:
    usable = [
        f for f in formats if isinstance(f, dict) and f.get("ext") in FORMAT_PREFERENCE
        and isinstance(f.get("url"), str) and f["url"] and _usable_url(f["url"])
    ] if isinstance(formats, list) else []
    return min(usable, key=lambda f: FORMAT_PREFERENCE.index(f["ext"]), default=None)


def _usable_url(url: str) -> bool:
    """A URL that parses, that HTTP can send (no lone surrogate) and that is not a machine
    translation (tlang=)."""
    try:
        query = urlsplit(url).query
    except ValueError:  # "http://[::1/...": no track can be fetched from it
        return False
    return _unicode(url) and "tlang" not in parse_qs(query, keep_blank_values=True)
