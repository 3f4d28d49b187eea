"""The input parsers under hypothesis: hostile bytes and valid-looking-but-wrong documents.

Every reader either returns a result that keeps its contract or raises the toolkit's own
error, the one its stage turns into a status row (SubtitleError, StoryboardError,
VideoError, DocumentError), or, for a whole input file that is unusable at planning, a
UsageError naming the file (the CLI prints it, exit 2). Anything else (KeyError, TypeError,
OverflowError, UnicodeDecodeError and ArrowInvalid, which are ValueErrors too, ...) fails.
Readers of many items also turn one bad line or row into one status row and go on.

Strategies start from valid documents and mutate them (a node replaced by a hostile value
or deleted, bytes cut, flipped or inserted), so they reach past the first type check.
Runs are derandomized and bounded (the whole file takes a few seconds); no Ray.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import math
import string
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu_data.core import errors, records, schema
from emu_data import net
from emu_data.sources import keys as source_keys
from emu_data.sources import laion, mmc4, webvid
from emu_data.sources.youtube import inputs, storyboard, subtitles
from emu_data.sources.youtube import stage as youtube

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
STATUS_SCHEMA = schema.arrow_schema("status")
PARSE_ONLY = net.NetPolicy(allow_private_addresses=True)  # check_url without DNS


# ---------------------------------------------------------------- shared helpers


def outcome(call, *errors):
    """(result, None), or (None, error) for an error of exactly one of `errors`; anything
    else propagates and fails the test. Exact types: UnicodeDecodeError and ArrowInvalid
    subclass ValueError but are not the toolkit's clear error."""
    try:
        return call(), None
    except Exception as e:
        if type(e) not in errors:
            raise
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return None, e


def storable(text) -> bool:
    """Text an Arrow string column can hold (JSON escapes can spell lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_status_rows_store(rows: list[dict]) -> None:
    """The rows a stage would write: each with a reason and a message, all writable."""
    for row in rows:
        assert row["status"] and (row["status"] == "ok" or row["error"]), row
    pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)


@contextmanager
def temp_dir():
    """A fresh directory per example (pytest's tmp_path is one per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="emu-fuzz-") as tmp:
        yield Path(tmp)


# Values that break parsers: huge and non-finite numbers, lone surrogates, NUL, a BOM,
# markup, an unparsable URL, a number past Python's 4300-digit int() limit.
SURROGATE = st.sampled_from(["\ud800", "x\udc00", "\udbff\udbff", "a\ud83d"])  # JSON can spell these
HUGE_INT = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**64])
ODD_FLOAT = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0])
NASTY_TEXT = st.sampled_from(["", " ", "\x00", "\ud800", "x\udc00", "\ufeff", "<c>", "&amp;#39;",
                              "-->", "http://[::1", "9" * 5000, "1e400", "NaN", "-5", "[]"])
SCALAR = (st.none() | st.booleans() | st.integers() | HUGE_INT | st.floats() | ODD_FLOAT
          | NASTY_TEXT | st.text(max_size=12))
JSON = st.recursive(SCALAR, lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


def _edit(value, path, new=None, delete=False):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1 and delete:
        del copy[path[0]]
    else:
        copy[path[0]] = _edit(value[path[0]], path[1:], new, delete)
    return copy


def _lookup(value, path):
    for part in path:
        value = value[part]
    return value


def hostile_for(old):
    """A value to put where `old` was: mostly one of its own kind gone wrong (a number
    huge, non-finite, negative or spelled as text; text with a lone surrogate, NUL or
    4300+ digits; a list emptied, cut or with a stray member), now and then any JSON."""
    if isinstance(old, bool):
        kin = st.sampled_from([0, 1, "true", None])
    elif isinstance(old, (int, float)):
        kin = HUGE_INT | ODD_FLOAT | st.sampled_from([-1, 0, 2**31, True, None, str(old), "1e400", "9" * 5000])
    elif isinstance(old, str):
        kin = NASTY_TEXT | SURROGATE | st.sampled_from([None, 0, 1.5, [old], {"x": old}])
    elif isinstance(old, list):
        kin = st.sampled_from([[], old[:-1], old + old, [*old, None], [*old, "x"], {"0": old}, str(old)])
    else:
        kin = st.sampled_from([{}, [old], str(old), None])
    return st.one_of(kin, kin, kin, JSON)


@st.composite
def mutated(draw, valid, most=3, root=True):
    """A valid document with up to `most` nodes replaced (hostile_for) or deleted;
    root=False keeps the top level an object (info dicts: load_info refuses anything else
    before the readers see it)."""
    doc = draw(valid)
    for _ in range(draw(st.integers(1, most))):
        paths = list(_paths(doc))[0 if root else 1:]
        if not paths:
            break
        leaves = [p for p in paths if not isinstance(_lookup(doc, p), (dict, list))]
        # mostly a leaf: that is where a reader's number and text checks are
        path = draw(st.sampled_from(paths) if not leaves or draw(st.integers(0, 3)) == 0
                    else st.sampled_from(leaves))
        if path and draw(st.integers(0, 5)) == 0:
            doc = _edit(doc, path, delete=True)
        else:
            doc = _edit(doc, path, draw(hostile_for(_lookup(doc, path))))
    return doc


def to_json(doc) -> bytes:
    # ensure_ascii: a lone surrogate goes out as a \\ud800 escape, as hostile files spell it
    return json.dumps(doc, allow_nan=True).encode()


SPLICE = st.binary(min_size=1, max_size=4) | st.sampled_from(
    [b"\x00", b"\xff", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\r", b"\n\n", b'"', b",", b"<", b"{"])


@st.composite
def damaged(draw, base, always=False):
    """Bytes of `base`, often intact (never, if `always`), else cut short, with bytes
    inserted or flipped."""
    data = draw(base)
    how = draw(st.sampled_from(["cut", "insert", "flip"] + ([] if always else ["keep"] * 3)))
    at = draw(st.integers(0, len(data)))
    if how == "cut":
        return data[:at]
    if how == "insert":
        return data[:at] + draw(SPLICE) + data[at:]
    if how == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


# ---------------------------------------------------------------- subtitles


def assert_cues(cues) -> None:
    """parse()'s contract: cues by start, finite times in order, clean storable text."""
    assert isinstance(cues, list)
    assert [c.start for c in cues] == sorted(c.start for c in cues)
    for cue in cues:
        assert isinstance(cue, subtitles.Cue)
        assert isinstance(cue.start, float) and isinstance(cue.end, float)
        assert math.isfinite(cue.end) and 0 <= cue.start <= cue.end, cue
        assert isinstance(cue.text, str) and cue.text and storable(cue.text), cue
        for word in cue.words:
            assert isinstance(word.start, float) and math.isfinite(word.start) and word.start >= 0
            assert isinstance(word.text, str) and word.text and storable(word.text)


def parse_subtitles(data: bytes, ext: str) -> None:
    cues, error = outcome(lambda: subtitles.parse(data, ext), subtitles.SubtitleError)
    if error is None:
        assert_cues(cues)
    else:
        assert error.reason == "malformed_subtitles"


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    return f"{hours:02d}:{rest // 60_000:02d}:{rest // 1000 % 60:02d}.{ms % 1000:03d}"


def one_hostile(valid, hostile):
    """Mostly `valid`, now and then `hostile`: the first bad value stops a parser, so a
    document should hold few of them for the later ones to be reached."""
    return st.one_of(valid, valid, valid, hostile)


VTT_TIME_BAD = st.sampled_from(
    ["00:00:01", "00:01.000", "-00:00:01.000", "NaN", "99:99:99.999", "00:00:01,000", "00:00:60.000",
     "9" * 20 + ":00:00.000", "9999999999:00:00.000", "1e9", "", "00:00:01.0000", "\x0000:00:01.000"])
VTT_SEGMENT_OK = st.text(string.ascii_letters + " ", min_size=1, max_size=8) | st.sampled_from(
    ["<c>", "</c>", "<00:00:01.500>", "<c.colorE5E5E5>", "&amp;", "<v Bob>"])
VTT_SEGMENT_BAD = st.text(max_size=6) | st.sampled_from(
    ["&#xd800;", "&#0;", "\x00", "\ufeff", "-->", "NOTE", "\r", "\n\n"])
# inline (word) timestamps: out of order, out of range, past int()'s 4300-digit limit
VTT_INLINE_BAD = st.sampled_from(["<" + "9" * 5000 + ":00:00.000>", "<99999999999:00:00.000>",
                                  "<9999999999:00:00.000>", "<00:00:00.000>", "<00:99:99.999>"])
VTT_FAULTS = ["none", "header", "arrow", "time", "separator", "text", "inline", "inline", "bytes"]


@st.composite
def vtt_bytes(draw) -> bytes:
    """A WebVTT file, valid but for one kind of fault: one bad part stops the parser, so
    faults of several kinds in one file would hide all but the first."""
    fault = draw(st.sampled_from(VTT_FAULTS))

    def part(name, valid, hostile):
        return draw(st.one_of(valid, hostile) if fault == name else valid)

    blocks = [part("header", st.sampled_from(["WEBVTT", "WEBVTT\nKind: captions\nLanguage: en", "\ufeffWEBVTT"]),
                   st.sampled_from(["WEBVTT - a title", "", "WEBVT", "NOTE only", "STYLE\n::cue {}"]))]
    segment = st.one_of(VTT_SEGMENT_OK, VTT_SEGMENT_BAD) if fault == "text" else VTT_SEGMENT_OK
    for _ in range(draw(st.integers(1, 5))):
        timing = (part("time", st.integers(0, 10**7).map(_vtt_time), VTT_TIME_BAD)
                  + part("arrow", st.just(" --> "), st.sampled_from(["-->", " -> ", " -->  ", " --> --> "]))
                  + part("time", st.integers(0, 10**7).map(_vtt_time), VTT_TIME_BAD))
        cue_settings = draw(st.sampled_from(["", " align:start position:0%", " line:-1"]))
        # no blank line inside a cue unless a fault puts one there: it would end the cue
        lines = draw(st.lists(st.lists(segment, min_size=1, max_size=4).map("".join).map(
            lambda line: line if line.strip() or fault == "text" else "x"), max_size=3))
        if fault == "inline":  # one bad word timestamp in every line
            lines = [draw(VTT_INLINE_BAD) + line for line in lines]
        blocks.append(draw(st.sampled_from(["", "1\n", "cue-7\n"])) + timing + cue_settings
                      + "".join("\n" + line for line in lines))
    separator = part("separator", st.just("\n\n"), st.sampled_from(["\n", "\r\n\r\n", "\r\r", "\n \n"]))
    data = (separator.join(blocks) + "\n").encode("utf-8", "surrogatepass")
    return draw(damaged(st.just(data), always=True)) if fault == "bytes" else data


VTT_BYTES = vtt_bytes()

JSON3_SEG = st.fixed_dictionaries({"utf8": st.text(max_size=10) | st.just("\n")},
                                  optional={"tOffsetMs": st.integers(0, 5000), "acAsrConf": st.integers(0, 255)})
JSON3_EVENT = st.fixed_dictionaries(
    {"tStartMs": st.integers(0, 10**7), "dDurationMs": st.integers(0, 10**5),
     "segs": st.lists(JSON3_SEG, min_size=1, max_size=3)},
    optional={"aAppend": st.just(1), "wWinId": st.integers(0, 2)})
JSON3_DOC = st.fixed_dictionaries({"wireMagic": st.just("pb3"), "events": st.lists(JSON3_EVENT, max_size=4)})
JSON3_BYTES = one_hostile(JSON3_DOC.map(to_json) | mutated(JSON3_DOC, most=3, root=False).map(to_json),
                          damaged(mutated(JSON3_DOC, most=3).map(to_json)))

SECONDS = st.floats(0, 1e5).map(lambda x: f"{x:.3f}")
CLOCK = st.integers(0, 10**8).map(_vtt_time)
XML_TIME = st.sampled_from(
    ["-3", "nan", "inf", "", "abc", "9" * 400 + "s", "9" * 5000 + ":00:00", "9" * 400 + ":00:00", "1h",
     "01:02:03", "5f", "10t", "0.5m", "1e400ms", "9" * 400 + ".5ms"]) | st.floats().map(str) | st.sampled_from(
    ["1e308", "1.7976931348623157e+308", "9" * 400, "1e306"])  # finite seconds, infinite milliseconds
XML_TEXT = one_hostile(st.text(string.ascii_letters + " ", max_size=10),
                       st.text(max_size=6) | st.sampled_from(["&amp;#39;", "&#0;", "<b>x</b>", "&bogus;", "]]>"]))


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


@st.composite
def srv1_bytes(draw) -> bytes:
    texts = "".join(f'<text start="{_attr(draw(one_hostile(SECONDS, XML_TIME)))}" '
                    f'dur="{_attr(draw(one_hostile(SECONDS, XML_TIME)))}">{draw(XML_TEXT)}</text>'
                    for _ in range(draw(st.integers(0, 4))))
    return f'<?xml version="1.0" encoding="utf-8" ?><transcript>{texts}</transcript>'.encode("utf-8", "surrogatepass")


@st.composite
def ttml_bytes(draw) -> bytes:
    valid = CLOCK | SECONDS.map(lambda s: s + "s") | st.integers(0, 10**7).map(lambda ms: f"{ms}ms")
    paragraphs = []
    for _ in range(draw(st.integers(0, 4))):
        timing = draw(one_hostile(st.sampled_from(['begin="{}" end="{}"', 'begin="{}" dur="{}"']),
                                  st.sampled_from(['begin="{}"', 'end="{}"'])))
        times = (_attr(draw(one_hostile(valid, XML_TIME))) for _ in range(2))
        paragraphs.append(f"<p {timing.format(*times)}>"
                          f"{draw(XML_TEXT)}<br/>{draw(XML_TEXT)}<span>{draw(XML_TEXT)}</span></p>")
    return (f'<tt xmlns="http://www.w3.org/ns/ttml"><body><div>{"".join(paragraphs)}</div></body></tt>'
            .encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["json3", "vtt", "srv1", "ttml", "srv3", ".VTT"]))
def test_subtitles_random_bytes(data, ext):
    parse_subtitles(data, ext)


@settings(FUZZ, max_examples=300)
@given(VTT_BYTES)
def test_subtitles_vtt_structured(data):
    parse_subtitles(data, "vtt")


@settings(FUZZ, max_examples=400)
@given(JSON3_BYTES)
def test_subtitles_json3_structured(data):
    parse_subtitles(data, "json3")


@settings(FUZZ, max_examples=200)
@given(damaged(srv1_bytes()) | damaged(ttml_bytes()))
def test_subtitles_srv1_and_ttml_structured(data):
    parse_subtitles(data, "srv1" if b"<transcript" in data else "ttml")


REGRESSIONS_SUBTITLES = [  # (ext, bytes) that crashed a parser before
    ("json3", b'{"events":[{"tStartMs":1%s,"segs":[{"utf8":"a"}]}]}' % (b"0" * 400)),   # OverflowError
    ("json3", b'{"events":[{"tStartMs":1%s,"segs":[{"utf8":"a"}]}]}' % (b"0" * 5000)),  # int digit limit
    ("json3", b'{"events":[{"tStartMs":1,"segs":[{"utf8":"\\ud800"}]}]}'),             # lone surrogate
    ("json3", b'{"events":[{"tStartMs":1e308,"dDurationMs":1e308,"segs":[{"utf8":"a"}]}]}'),
    ("srv1", b'<transcript><text start="1e308">a</text></transcript>'),                 # inf ms
    ("ttml", b'<tt><p begin="%ss">a</p></tt>' % (b"9" * 400)),                          # inf ms
    ("ttml", b'<tt><p begin="%s:00:00">a</p></tt>' % (b"9" * 5000)),                    # int digit limit
    ("vtt", b"WEBVTT\n\n00:00:01.000 --> 00:00:05.000\nhi <%s:00:02.000><c> x</c>\n" % (b"9" * 5000)),
]


@pytest.mark.parametrize("ext,data", REGRESSIONS_SUBTITLES)
def test_subtitles_regressions(ext, data):
    parse_subtitles(data, ext)


# ---------------------------------------------------------------- yt-dlp info dicts

VIDEO_ID = "dQw4w9WgXcQ"
LANGS = ["en", "en-GB", "en-orig", "EN", "de", "de-orig", "live_chat", ""]


@st.composite
def storyboard_format(draw, i: int, duration: float) -> dict:
    columns, rows, count = draw(st.integers(1, 10)), draw(st.integers(1, 10)), draw(st.integers(1, 200))
    n = math.ceil(count / (columns * rows))
    url = f"https://i.ytimg.com/sb/{VIDEO_ID}/storyboard3_L{i}/M$M.jpg?sqp=x&sigh=y"
    if draw(st.booleans()):
        fragments = [{"url": url.replace("$M", str(j)), "duration": duration / n} for j in range(n)]
        base = {}
    else:  # yt-dlp's other spelling: a base URL and relative paths
        fragments = [{"path": f"M{j}.jpg?sigh=y", "duration": duration / n} for j in range(n)]
        base = {"fragment_base_url": f"https://i.ytimg.com/sb/{VIDEO_ID}/storyboard3_L{i}/"}
    return {"format_id": f"sb{i}", "format_note": "storyboard", "ext": "mhtml", "protocol": "mhtml",
            "url": url, "width": draw(st.integers(1, 320)), "height": draw(st.integers(1, 180)),
            "fps": count / duration, "columns": columns, "rows": rows, "fragments": fragments, **base}


TRACK_FORMAT = st.fixed_dictionaries(
    {"ext": st.sampled_from([*subtitles.FORMAT_PREFERENCE, "srv3", "json"]),
     "url": st.sampled_from(["https://www.youtube.com/api/timedtext?v=x&lang=en",
                             "https://www.youtube.com/api/timedtext?v=x&lang=en&tlang=de", "",
                             "http://[::1/timedtext", "//[x]/a"])},
    optional={"name": st.text(max_size=8)})
TRACKS = st.dictionaries(st.sampled_from(LANGS), st.lists(TRACK_FORMAT, max_size=3), max_size=3)


@st.composite
def info_dict(draw) -> dict:
    duration = draw(st.floats(1, 40_000))
    formats = [draw(storyboard_format(i, duration)) for i in range(draw(st.integers(0, 3)))]
    formats.append({"format_id": "18", "ext": "mp4", "url": "https://r.googlevideo.com/x"})
    info = {"id": VIDEO_ID, "title": draw(st.text(max_size=10)), "formats": formats,
            "subtitles": draw(TRACKS), "automatic_captions": draw(TRACKS)}
    if draw(st.booleans()):  # without it, the duration comes from the fragments
        info["duration"] = duration
    return info


def assert_level(level) -> None:
    assert isinstance(level, storyboard.Level) and isinstance(level.format_id, str)
    for n in (level.tile_width, level.tile_height, level.count, level.columns, level.rows):
        assert isinstance(n, int) and n >= 1, level
    assert math.isfinite(level.interval) and level.interval > 0, level
    assert len(level.fragment_urls) >= level.mosaics, level
    assert all(isinstance(u, str) and u and storable(u) for u in level.fragment_urls), level


def assert_track(track, info: dict) -> None:
    assert isinstance(track, subtitles.Track) and track.kind in ("manual", "auto")
    table = info["subtitles" if track.kind == "manual" else "automatic_captions"]
    assert track.lang in table and track.ext in subtitles.FORMAT_PREFERENCE
    assert isinstance(track.url, str) and track.url and storable(track.url) and "tlang" not in track.url
    assert track.name is None or isinstance(track.name, str)


def read_info(info: dict, wanted=None, langs=("en",)) -> None:
    """What the stage does with an info dict before any download: the id, a storyboard
    level, a subtitle track, the URL guard (without DNS). Each step keeps its contract or
    raises the error the stage turns into a status row."""
    video_id, error = outcome(lambda: youtube.checked_id(info, inputs.VideoInput("file", "x.json")),
                              youtube.VideoError)
    assert error is not None or inputs.VIDEO_ID.fullmatch(video_id)
    levels, _ = outcome(lambda: storyboard.levels_from_info(info))
    for level in levels:
        assert_level(level)
    level, error = outcome(lambda: storyboard.choose_level(levels, wanted), storyboard.StoryboardError)
    assert error is None or error.reason == "no_storyboard"
    track, _ = outcome(lambda: subtitles.choose_track(info, langs), subtitles.SubtitleError)
    if track is not None:
        assert_track(track, info)
    for url in ([*level.fragment_urls] if level else []) + ([track.url] if track else []):
        outcome(lambda: net.check_url(url, PARSE_ONLY), net.FetchError)


@settings(FUZZ, max_examples=300)
@given(mutated(info_dict(), most=4, root=False), st.sampled_from([None, 0, 2, "sb1", "sb9", -1]),
       st.sampled_from([("en",), ("de", "en"), ("EN",), ("",)]))
def test_info_dict_structured(info, wanted, langs):
    read_info(info, wanted, langs)


@FUZZ
@given(st.dictionaries(st.sampled_from(["id", "duration", "formats", "subtitles", "automatic_captions"]),
                       JSON, max_size=5))
def test_info_dict_any_field_of_any_type(info):
    read_info(info)


@settings(FUZZ, max_examples=120)
@given(damaged(mutated(info_dict(), most=2).map(to_json)) | st.binary(max_size=200))
def test_info_json_file_reads_or_is_malformed_info(data):
    """--info-json files: stage.load_info gives a dict or a VideoError with its reason."""
    with temp_dir() as tmp:
        path = tmp / f"{VIDEO_ID}.info.json"
        path.write_bytes(data)
        (video,) = inputs.from_info_files([path])
        info, error = outcome(lambda: youtube.load_info(video, None), youtube.VideoError)
    if error is not None:
        assert error.reason in ("malformed_info", "unsupported_input", "bot_check", "unavailable")
        return
    assert isinstance(info, dict)
    read_info(info)


def test_storyboard_interval_search_is_bounded():
    """A huge duration over few tiles once made the whole-second search loop for minutes."""
    fmt = {"format_note": "storyboard", "fps": 3e-9, "width": 10, "height": 10, "columns": 2, "rows": 2,
           "fragments": [{"url": "https://i.ytimg.com/sb/x/M0.jpg"}]}
    started = time.monotonic()
    levels = storyboard.levels_from_info({"duration": 1e9, "formats": [fmt]})
    assert time.monotonic() - started < 1
    assert [level.count for level in levels] == [3]
    assert_level(levels[0])


@pytest.mark.parametrize("fps", [10**20, 10**400, "9" * 400, 10**6 + 1])
def test_storyboard_format_with_a_huge_count_is_refused_quickly(fps):
    """count = fps x duration: a URL per mosaic of 10**20 tiles never ends; 400 digits
    overflow a float."""
    fmt = {"format_note": "storyboard", "fps": fps, "width": 80, "height": 45, "columns": 1, "rows": 1,
           "fragments": [{"url": "https://i.ytimg.com/sb/x/M0.jpg"}]}
    started = time.monotonic()
    levels = storyboard.levels_from_info({"duration": 1, "formats": [fmt]})
    assert levels == [] and time.monotonic() - started < 1


REGRESSIONS_INFO = [  # info dicts that crashed levels_from_info or choose_track before
    {"formats": {"sb0": {}}},                                          # AttributeError
    {"formats": 5},                                                    # TypeError
    {"formats": ["sb0"]},                                              # AttributeError
    {"duration": 10, "formats": [{"format_note": "storyboard", "fragments": ["x"]}]},
    {"duration": 10, "formats": [{"format_note": "storyboard", "fps": 1, "width": math.inf, "height": 1,
                                  "columns": 1, "rows": 1, "fragments": [{"url": "https://a/b"}]}]},
    {"duration": 1e300, "formats": [{"format_note": "storyboard", "fps": 1e300, "width": 1, "height": 1,
                                     "columns": 1, "rows": 1, "fragments": [{"url": "https://a/b"}]}]},
    {"duration": 10, "formats": [{"format_note": "storyboard", "fps": 0.1, "width": 1, "height": 1,
                                  "columns": 1, "rows": 1, "fragments": [{"url": 5}]}]},
    {"duration": 10, "formats": [{"format_note": "storyboard", "fps": 0.1, "width": 1, "height": 1, "columns": 1,
                                  "rows": 1, "fragment_base_url": 5, "fragments": [{"path": "a"}]}]},
    {"subtitles": {"en": [{"ext": "vtt", "url": "http://[::1/x"}]}},   # ValueError: Invalid IPv6 URL
]


@pytest.mark.parametrize("info", REGRESSIONS_INFO)
def test_info_dict_regressions(info):
    read_info(info)


DATA = Path(__file__).parent / "data" / "youtube"


def _slim_response(name: str) -> dict:
    """The parts of a recorded player response the readers look at."""
    full = json.loads((DATA / name).read_text(encoding="utf-8"))
    return {k: full[k] for k in ("playabilityStatus", "storyboards", "videoDetails") if k in full}


RESPONSES = [_slim_response(p.name) for p in sorted(DATA.glob("*.innertube.json"))]
SPEC_NUMBER = st.integers(1, 200).map(str) | st.sampled_from(
    ["0", "-1", "", "nan", "1e5", "9" * 20, "9" * 400, "9" * 5000, " 5", "5.5"])


@st.composite
def spec_entry(draw) -> str:
    """A `w#h#count#cols#rows#interval_ms#name#sigh` entry, valid but for one field or its
    number of fields."""
    fields = [str(draw(st.integers(1, 320))), str(draw(st.integers(1, 180))), str(draw(st.integers(1, 300))),
              str(draw(st.integers(1, 10))), str(draw(st.integers(1, 10))),
              draw(st.sampled_from(["0", "1000", "5000", "10000"])), "M$M", "rs$x"]
    fault = draw(st.integers(0, 9))
    if fault < 6:
        fields[fault] = draw(SPEC_NUMBER)
    elif fault == 6:
        fields = fields[:draw(st.integers(0, 7))]
    return "#".join(fields)


@st.composite
def player_response(draw) -> dict:
    response = draw(st.sampled_from(RESPONSES))
    if "storyboards" in response and draw(st.booleans()):
        base = response["storyboards"]["playerStoryboardSpecRenderer"]["spec"].split("|")[0]
        base = draw(st.sampled_from([base, "//[::1/sb/$L/$N.jpg?x", "sb/$L/$N.jpg?x", ""]))
        spec = "|".join([base, *draw(st.lists(spec_entry(), max_size=4))])
        response = _edit(response, ("storyboards", "playerStoryboardSpecRenderer", "spec"), spec)
    return draw(mutated(st.just(response), most=2, root=False)) if draw(st.booleans()) else response


@settings(FUZZ, max_examples=200)
@given(player_response())
def test_player_response_playability(response):
    assert storyboard.playability_reason(response) in (None, "bot_check", "unavailable")


# ---------------------------------------------------------------- command-line inputs

REF = st.text(max_size=30) | st.builds(
    "{}://{}{}?{}".format, st.sampled_from(["https", "http", "ftp", ""]),
    st.sampled_from(["youtube.com", "www.youtube.com", "youtu.be", "[::1", "[x]", "youtube.com:99999",
                     "example.com", "m.youtube.com"]),
    st.sampled_from(["/watch", f"/shorts/{VIDEO_ID}", "/embed/", f"/{VIDEO_ID}", "/playlist", ""]),
    st.sampled_from([f"v={VIDEO_ID}", f"v={VIDEO_ID}%0A", "v=", "list=PL1", "v=[", "", "v=%ff"]))


def _expand_fails(url):
    raise RuntimeError("yt-dlp says no")


@FUZZ
@given(st.lists(REF, max_size=5), st.sampled_from([None, _expand_fails, lambda url: [VIDEO_ID, url]]))
def test_video_refs(refs, expand):
    for video in inputs.from_refs(refs, expand):
        assert video.kind in ("id", "url", "failed")
        assert video.video_id is None or inputs.VIDEO_ID.fullmatch(video.video_id)
        assert isinstance(video.key, str) and video.key.startswith("yt_storyboard:")
    for ref in refs:
        vid = inputs.video_id_of(ref)
        assert vid is None or inputs.VIDEO_ID.fullmatch(vid)
        assert isinstance(inputs.is_list_url(ref), bool)


@FUZZ
@given(damaged(st.lists(REF, max_size=5).map(lambda refs: "\n".join(refs).encode("utf-8", "surrogatepass")))
       | st.binary(max_size=100))
def test_ids_file(data):
    with temp_dir() as tmp:
        path = tmp / "ids.txt"
        path.write_bytes(data)
        refs, error = outcome(lambda: inputs.read_ids_file(path), errors.UsageError)
    if error is not None:
        assert str(path) in str(error)
    else:
        assert all(isinstance(r, str) and r and "#" not in r for r in refs)


@FUZZ
@given(st.lists(st.text(string.printable + "[]é", max_size=30), max_size=4))
def test_info_file_names(names):
    for video in inputs.from_info_files([Path("/in") / (n or "_") for n in names]):
        assert video.kind == "file" and (video.video_id is None or inputs.VIDEO_ID.fullmatch(video.video_id))


# ---------------------------------------------------------------- MMC4 jsonl

MMC4_REASONS = ("malformed_json", "missing_field", "bad_field", "no_images")
MMC4_FILE_REASONS = MMC4_REASONS + ("duplicate_key",)  # a url seen earlier in the file


@st.composite
def mmc4_doc(draw) -> dict:
    sentences = draw(st.lists(st.text(max_size=15), min_size=1, max_size=4))
    n = len(sentences)
    images = [{"raw_url": f"https://img.example/{i}.jpg", "image_name": f"{i}.jpg",
               "matched_text_index": draw(st.integers(0, n - 1)), "matched_sim": draw(st.floats(0, 1))}
              for i in range(draw(st.integers(1, 3)))]
    return {"url": f"https://doc.example/{draw(st.integers(0, 99))}", "text_list": sentences,
            "image_info": images, "similarity_matrix": [[draw(st.floats(0, 1)) for _ in sentences] for _ in images],
            "could_have_url_duplicate": draw(st.sampled_from([0, 1]))}


MMC4_LINE = one_hostile(mmc4_doc().map(to_json) | mutated(mmc4_doc(), most=3, root=False).map(to_json),
                        damaged(mutated(mmc4_doc(), most=3).map(to_json)) | st.binary(max_size=60))


def assert_document(doc, config: mmc4.Mmc4Config) -> None:
    n = len(doc.sentences)
    assert all(isinstance(t, str) and storable(t) for t in doc.sentences)
    assert n or all(c.unplaced for c in doc.images)   # no sentence: every image is dropped (no_images)
    assert doc.images and isinstance(doc.ref, str) and storable(doc.ref)
    assert doc.url is None or (isinstance(doc.url, str) and doc.url)
    for c in doc.images:
        assert isinstance(c.url, str) and storable(c.url) and (c.name is None or storable(c.name))
        assert isinstance(c.matched, int) and (0 <= c.matched < n if c.unplaced is None else c.matched == -1)
        assert isinstance(c.sim, float) and math.isfinite(c.sim)
    if config.reassign:
        assert len(doc.similarity) == len(doc.images)
        assert all(len(row) == n and all(math.isfinite(v) for v in row) for row in doc.similarity)


CONFIGS_MMC4 = st.builds(mmc4.Mmc4Config, reassign=st.booleans(), docs_per_unit=st.integers(1, 4))
SLICE = mmc4.Slice("/in/docs.jsonl", "docs", 0, 0, 1, 1, "")


@settings(FUZZ, max_examples=400)
@given(MMC4_LINE, CONFIGS_MMC4)
def test_mmc4_line(raw, config):
    doc, error = outcome(lambda: mmc4.parse(raw, 7, SLICE, config), mmc4.DocumentError)
    if error is None:
        assert_document(doc, config)
    else:
        assert error.reason in MMC4_REASONS
        assert_status_rows_store([records.status("mmc4:docs-7", "mmc4", error.reason, error=str(error))])


@settings(FUZZ, max_examples=80)
@given(st.lists(MMC4_LINE, min_size=1, max_size=6), CONFIGS_MMC4)
def test_mmc4_file_one_status_row_per_bad_line(lines, config):
    """Every non-blank line of the file becomes one document or one status row, in order;
    keys are unique across units (a url seen earlier is a duplicate_key row)."""
    data = b"\n".join(lines) + b"\n"
    with temp_dir() as tmp:
        path = tmp / "docs.jsonl"
        path.write_bytes(data)
        per_unit = [mmc4._parse_all(unit.payload) for unit in mmc4.units([path], config)]
    parsed = [item for items in per_unit for item in items]
    keys = [item["key"] if isinstance(item, dict) else f"mmc4:{item.id}" for item in parsed]
    assert len(set(keys)) == len(keys)
    expected = [n for n, line in enumerate(data.split(b"\n")[:-1], 1) if line.strip()]
    assert len(parsed) == len(expected)
    statuses = [item for item in parsed if isinstance(item, dict)]
    docs = [item for item in parsed if not isinstance(item, dict)]
    assert [d.line for d in docs] == [n for n, item in zip(expected, parsed) if not isinstance(item, dict)]
    for doc in docs:
        assert_document(doc, config)
    assert all(row["status"] in MMC4_FILE_REASONS for row in statuses)
    assert_status_rows_store(statuses)


REGRESSIONS_MMC4 = [  # lines that crashed parse, or passed it and then sank the unit at write time
    b'{"text_list":["a"],"image_info":[{"raw_url":"u","matched_text_index":0,"matched_sim":1%s}],'
    b'"similarity_matrix":[[1]]}' % (b"0" * 400),
    b'{"text_list":["a"],"image_info":[{"raw_url":"u","matched_text_index":0,"matched_sim":1}],'
    b'"similarity_matrix":[[1%s]]}' % (b"0" * 400),
    b'{"url":"\\ud800","text_list":["a"],"image_info":[{"raw_url":"u","matched_text_index":0,"matched_sim":1}],'
    b'"similarity_matrix":[[1]]}',
    b'{"text_list":["\\udc00"],"image_info":[{"raw_url":"u","matched_text_index":0,"matched_sim":1}],'
    b'"similarity_matrix":[[1]]}',
    b'{"text_list":["a"],"image_info":[{"raw_url":"\\ud800","matched_text_index":0,"matched_sim":1}],'
    b'"similarity_matrix":[[1]]}',
]


@pytest.mark.parametrize("raw", REGRESSIONS_MMC4)
def test_mmc4_regressions(raw):
    _, error = outcome(lambda: mmc4.parse(raw, 7, SLICE, mmc4.Mmc4Config()), mmc4.DocumentError)
    assert error is not None and error.reason == "bad_field"


# ---------------------------------------------------------------- WebVid CSV

WEBVID_REASONS = ("malformed_row", "invalid_id", "duplicate_key", "missing_url", "missing_caption",
                  "bad_duration", "too_short")
COLUMNS = ("videoid", "contentUrl", "duration", "page_idx", "page_dir", "name")
CELL = st.text(max_size=10) | st.sampled_from(
    ['"', '""', ",", "\n", "\r", "\x00", "\ufeff", "PT10S", "PT00H00M17S", "PT" + "9" * 400 + "S", "P1DT", "PT",
     "PT1.5S", "P0DT00H00M03S", "-PT5S", "1234", "a-b", "../x", "https://v.example/1.mp4", "\u0661\u0662",
     "x" * 140_000])
GOOD_CELL = {"videoid": st.integers(0, 10**12).map(str), "contentUrl": st.just("https://v.example/1.mp4"),
             "duration": st.sampled_from(["PT00H00M17S", "PT5S", "PT0.5S"]), "page_idx": st.just("1"),
             "page_dir": st.just("006001_006050"), "name": st.text(min_size=1, max_size=10)}


@st.composite
def webvid_csv(draw) -> bytes:
    header = list(draw(st.permutations(COLUMNS)))
    if draw(st.integers(0, 5)) == 0:
        header.remove(draw(st.sampled_from(header)))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        row = [draw(GOOD_CELL.get(c, CELL) if draw(st.integers(0, 2)) else CELL) for c in header]
        if draw(st.integers(0, 5)) == 0:  # a field short or one too many
            row = row[:-1] if draw(st.booleans()) else [*row, draw(CELL)]
        rows.append(row)
    if draw(st.booleans()):  # quoted as an exporter would
        out = io.StringIO()
        csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows([header, *rows])
        text = out.getvalue()
    else:  # joined by hand: quotes, commas and newlines in cells break the row
        text = "".join(",".join(row) + "\n" for row in [header, *rows])
    return draw(st.sampled_from(["", "\ufeff"])).encode() + text.encode("utf-8", "surrogatepass")


def assert_video(video, config: webvid.WebvidConfig) -> None:
    assert webvid.VIDEO_ID.fullmatch(video.videoid) and video.url and video.caption
    assert math.isfinite(video.declared) and video.declared >= config.min_duration
    assert all(storable(t) for t in (video.videoid, video.url, video.caption))


def read_webvid(path: Path, config: webvid.WebvidConfig) -> list[dict] | None:
    """The status row (or None for a video to fetch) of every row, as the stage would write it;
    None for a file refused at planning (a UsageError naming it)."""
    units, error = outcome(lambda: webvid.units([path], config), errors.UsageError)
    if error is not None:
        assert str(path) in str(error)
        return None
    rows = []
    for unit in units:
        s = unit.payload.slice
        for line, fields in webvid.read_rows(s):
            key, ref = webvid.row_key(line, fields, s), webvid._ref(line, fields, s)
            repeat = next((r for r in s.repeats if r[0] == line), None)
            if repeat:  # an id seen earlier: its duplicate_key row
                rows.append(source_keys.status(key, "webvid", *repeat[1:], input=ref))
                continue
            video, error = outcome(lambda: webvid.parse_row(line, fields, s, config), webvid.VideoError)
            if error is None:
                assert_video(video, config)
                rows.append(records.status(key, "webvid", "ok", input=ref, samples=1))
            else:
                assert error.reason in WEBVID_REASONS
                rows.append(records.status(key, "webvid", error.reason, input=ref, error=str(error)[:500]))
    return rows


@settings(FUZZ, max_examples=250)
@given(damaged(webvid_csv()) | st.binary(max_size=200), st.integers(1, 3))
def test_webvid_csv_one_status_row_per_row(data, per_unit):
    config = webvid.WebvidConfig(rows_per_unit=per_unit)
    with temp_dir() as tmp:
        path = tmp / "part.csv"
        path.write_bytes(data)
        rows = read_webvid(path, config)
        if rows is None:
            return
        with open(path, "rb") as f:  # every record after the header, scanned in one go
            records_in_file = len(list(webvid.parse_rows(webvid._Lines(f, 1)))) - 1
    assert len(rows) == records_in_file
    assert_status_rows_store(rows)
    keys = [row["key"] for row in rows]
    assert len(set(keys)) == len(keys)


@FUZZ
@given(st.text(max_size=20) | st.sampled_from(["PT" + "9" * 400 + "S", "P" + "9" * 400 + "D", "PT1e5S"]))
def test_webvid_duration(text):
    seconds, error = outcome(lambda: webvid.parse_duration(text), webvid.VideoError)
    if error is None:
        assert math.isfinite(seconds) and seconds >= 0
    else:
        assert error.reason == "bad_duration"


# ---------------------------------------------------------------- LAION parquet

# Column types a LAION file may hold by mistake, with values to fill them.
_TEXT = st.text(max_size=12) | st.sampled_from(["", " ", "https://img.example/a.jpg", "ftp://x/y", "http://[::1",
                                                "0123abcd", "-42"])
ARROW_COLUMNS = {
    "string": (pa.string(), _TEXT),
    "large_string": (pa.large_string(), _TEXT),
    "binary": (pa.binary(), st.binary(max_size=8)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "null": (pa.null(), st.none()),
    "list<string>": (pa.list_(pa.string()), st.lists(_TEXT, max_size=2)),
    "list<float>": (pa.list_(pa.float64()), st.lists(st.floats(), max_size=2)),
    "timestamp": (pa.timestamp("s"), st.datetimes(datetime.datetime(1970, 1, 1), datetime.datetime(2100, 1, 1))),
    "date": (pa.date32(), st.dates(datetime.date(1970, 1, 1), datetime.date(2100, 1, 1))),
    "decimal": (pa.decimal128(12, 2), st.decimals(-(10**6), 10**6, places=2, allow_nan=False,
                                                  allow_infinity=False)),
    "struct": (pa.struct([("a", pa.int64())]), st.fixed_dictionaries({"a": st.integers(-9, 9)})),
}
LIKELY = {"URL": ["string"] * 6 + list(ARROW_COLUMNS), "TEXT": ["string"] * 6 + list(ARROW_COLUMNS),
          "top_caption": ["string"] * 6 + list(ARROW_COLUMNS),
          "hash": ["int64", "int64", "string", *ARROW_COLUMNS],
          "similarity": ["float64", "float64", *ARROW_COLUMNS], "punsafe": ["float64", *ARROW_COLUMNS],
          "pwatermark": ["float64", *ARROW_COLUMNS], "all_captions": ["list<string>", *ARROW_COLUMNS],
          "all_similarities": ["list<float>", *ARROW_COLUMNS]}


@st.composite
def arrow_column(draw, name: str, n: int) -> pa.Array:
    kind = draw(st.sampled_from(LIKELY[name]))
    arrow_type, values = ARROW_COLUMNS[kind]
    cells = draw(st.lists(st.none() | values, min_size=n, max_size=n))
    column = pa.array(cells, arrow_type)
    if kind == "string" and draw(st.integers(0, 3)) == 0:  # invalid UTF-8, as real files hold
        raw = [b"caf\xe9" if draw(st.booleans()) else c.encode() if isinstance(c, str) else c for c in cells]
        column = pa.array(raw, pa.binary()).view(pa.string())
    return column.dictionary_encode() if kind == "string" and draw(st.integers(0, 4)) == 0 else column


@st.composite
def laion_file(draw) -> bytes:
    n = draw(st.integers(0, 6))
    names = [name for name in LIKELY if name in ("URL", "TEXT", "top_caption") or draw(st.booleans())]
    names = [name for name in names if draw(st.integers(0, 9))]  # now and then a needed column is missing
    table = pa.table({name: draw(arrow_column(name, n)) for name in names}) if names else pa.table({"x": [1] * n})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=draw(st.integers(1, 4)))
    return out.getvalue()


CONFIGS_LAION = st.builds(
    laion.LaionConfig, source=st.sampled_from(laion.SOURCES), rows_per_unit=st.integers(1, 4),
    min_similarity=st.sampled_from([None, 0.3]), max_punsafe=st.sampled_from([None, 0.5]),
    max_pwatermark=st.sampled_from([None, 0.8]), max_caption_chars=st.sampled_from([4096, 5]))


def assert_input_rows(rows: list, unit, config: laion.LaionConfig) -> list[dict]:
    """read_rows' contract: one row per index of the slice, each downloadable or with a
    reason; returns the status rows the stage writes for the rows it will not fetch."""
    assert [r.index for r in rows] == list(range(unit.start, unit.stop))
    statuses = []
    for row in rows:
        assert row.key.startswith(config.source + ":") and isinstance(row.input, str) and storable(row.input)
        json.dumps(row.meta)  # records.sample serializes it
        assert row.meta.get("url") is None or storable(row.meta["url"])
        if row.problem is None:
            assert isinstance(row.url, str) and row.url.strip() and storable(row.url)
            assert isinstance(row.text, str) and row.text.strip() and storable(row.text)
            assert len(row.text) <= config.max_caption_chars
        else:
            reason, message = row.problem
            statuses.append(records.status(row.key, config.source, reason, input=row.input, error=message,
                                           attempts=0))
    return statuses


@settings(FUZZ, max_examples=150)
def _units_or_named_refusal(paths, config):
    """LAION's planning: units, or None after checking the refusal names the bad file."""
    units, error = outcome(lambda: laion.units(paths, config, PARSE_ONLY), errors.UsageError)
    if error is not None:
        assert any(str(p) in str(error) for p in paths), error
        return None
    return units


@given(st.lists(damaged(laion_file()) | st.binary(max_size=40), min_size=1, max_size=2), CONFIGS_LAION)
def test_laion_parquet(files, config):
    with temp_dir() as tmp:
        paths = []
        for i, data in enumerate(files):
            paths.append(tmp / f"part{i}.parquet")
            paths[-1].write_bytes(data)
        units = _units_or_named_refusal(paths, config)
        if units is None:
            return
        keys = []
        for unit in units:
            rows = laion.read_rows(unit.payload)
            assert_status_rows_store(assert_input_rows(rows, unit.payload, config))
            keys += [row.key for row in rows]
    assert len(set(keys)) == len(keys)


def test_laion_corrupt_pages_become_status_rows():
    """A file whose footer reads but whose pages do not: planning passes, each row of the
    slice gets a status row, and the unit goes on."""
    table = pa.table({"URL": [f"https://img.example/{i}.jpg" for i in range(50)], "TEXT": ["a cat"] * 50})
    out = io.BytesIO()
    pq.write_table(table, out, compression="none")
    data = bytearray(out.getvalue())
    for i in range(8, 400):
        data[i] ^= 0x5A
    with temp_dir() as tmp:
        path = tmp / "bad.parquet"
        path.write_bytes(bytes(data))
        (unit,) = laion.units([path], laion.LaionConfig(rows_per_unit=100), PARSE_ONLY)
        rows = laion.read_rows(unit.payload)
    statuses = assert_input_rows(rows, unit.payload, laion.LaionConfig())
    assert len(statuses) == 50 and {s["status"] for s in statuses} == {"unreadable_input"}
    assert_status_rows_store(statuses)


def _parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


_URLS = pa.array(["https://img.example/0.jpg", "https://img.example/1.jpg"])
_BAD_UTF8 = pa.array([b"caf\xe9", b"caf\xe9"], pa.binary()).view(pa.string())
REGRESSIONS_LAION = {  # files (bytes, or tables with a TEXT caption) that crashed units() or read_rows()
    "empty file": [b""],
    "not parquet": [b"PAR1 but not parquet"],
    "cut short": [_parquet_bytes(pa.table({"URL": _URLS, "TEXT": ["a", "b"]}))[:-9]],
    "timestamp hash": [pa.table({"URL": _URLS, "TEXT": ["a", "b"],
                                 "hash": pa.array([datetime.datetime(2020, 1, 1)] * 2)})],
    "decimal hash": [pa.table({"URL": _URLS, "TEXT": ["a", "b"], "hash": pa.array([decimal.Decimal("15")] * 2)})],
    "repeated invalid UTF-8 hash": [pa.table({"URL": _URLS, "TEXT": ["a", "b"], "hash": _BAD_UTF8})],
    "dictionary caption with invalid UTF-8": [pa.table({"URL": _URLS, "TEXT": _BAD_UTF8.dictionary_encode()})],
    "int caption": [pa.table({"URL": _URLS, "TEXT": [1, 2]})],
    "struct hash in one file, int in the other": [
        pa.table({"URL": _URLS, "TEXT": ["a", "b"], "hash": pa.array([{"a": 1}, {"a": 1}])}),
        pa.table({"URL": _URLS, "TEXT": ["a", "b"], "hash": [1, 1]})],
}


@pytest.mark.parametrize("name", list(REGRESSIONS_LAION))
@pytest.mark.parametrize("source", laion.SOURCES)
def test_laion_regressions(name, source):
    config = laion.LaionConfig(source=source, rows_per_unit=1)
    with temp_dir() as tmp:
        paths = []
        for i, data in enumerate(REGRESSIONS_LAION[name]):
            if isinstance(data, pa.Table):  # the caption under the source's column name
                data = _parquet_bytes(data.rename_columns(
                    [config.text_col if c == "TEXT" else c for c in data.column_names]))
            paths.append(tmp / f"part{i}.parquet")
            paths[-1].write_bytes(data)
        units = _units_or_named_refusal(paths, config)
        if units is None:
            return
        rows = [(unit, laion.read_rows(unit.payload)) for unit in units]
    statuses = [s for unit, part in rows for s in assert_input_rows(part, unit.payload, config)]
    assert_status_rows_store(statuses)
    keys = [row.key for _, part in rows for row in part]
    assert len(set(keys)) == len(keys)
    if name == "int caption":  # str(1) is no caption
        assert [s["status"] for s in statuses] == ["bad_caption", "bad_caption"]


def test_laion_coco_list_columns_of_another_type():
    table = pa.table({"URL": _URLS, "top_caption": ["a", "b"], "all_captions": [5, 6],
                      "all_similarities": ["0.5", "x"]})
    config = laion.LaionConfig(source="laion_coco")
    with temp_dir() as tmp:
        path = tmp / "coco.parquet"
        path.write_bytes(_parquet_bytes(table))
        (unit,) = laion.units([path], config, PARSE_ONLY)
        rows = laion.read_rows(unit.payload)
    assert [r.meta["all_captions"] for r in rows] == [[], []]
    assert_input_rows(rows, unit.payload, config)


# ---------------------------------------------------------------- the youtube stage's own reading


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"playabilityStatus": "OK"}',
                                  b'{"playabilityStatus": ["OK"], "videoDetails": {}}'])
def test_info_json_deep_nesting_and_odd_playability_are_malformed_info(data):
    """Too deep for read_json's depth limit; a player response whose playabilityStatus is
    no object (no status YouTube gave, so not `unavailable`): both malformed_info."""
    with temp_dir() as tmp:
        path = tmp / f"{VIDEO_ID}.info.json"
        path.write_bytes(data)
        info, error = outcome(lambda: youtube.load_info(inputs.VideoInput("file", str(path), VIDEO_ID), None),
                              youtube.VideoError)
    assert info is None and error is not None, info
    assert error.reason == "malformed_info", (error.reason, str(error))
