"""Tests for emu_data.sources.youtube.storyboard on recorded player responses (tests/data/youtube,
MIT, see LICENSE there), mosaics drawn here with Pillow, and MHTML files written the way
yt-dlp's mhtml downloader writes them (once by hand, once by yt-dlp itself from 127.0.0.1).
"""

from __future__ import annotations

import io
import json
import math
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from emu_data.sources.youtube import storyboard
from emu_data.sources.youtube.storyboard import (
    Level,
    StoryboardError,
    choose_level,
    levels_from_info,
    playability_reason,
    read_mhtml,
    slice_mosaics,
)

DATA = Path(__file__).parent / "data" / "youtube"
GJL = "youtube.innertube.json"  # GJLlxj_dtq8, 316 s, 65 tiles at 5 s
DSM = "youtube_transcripts_disabled.innertube.json"  # dsMFmonKDD4, 288 s, 146 tiles at 2 s
WW1 = "youtube_ww1_nl_en.innertube.json"  # F1xioXWb8CY, 1509 s, 152 tiles at 10 s
LIVE = "youtube_live_long.innertube.json"  # Fjg5lYqvzUs, a past live stream: 23,169 s, 2,318 tiles at 10 s


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def info_like_ytdlp(player_response: dict) -> dict:
    """An info dict with the storyboard formats built as yt-dlp's `_extract_storyboard` builds
    them (2026.10): spec reversed, fps = count / duration, one fragment per mosaic."""
    duration = float(player_response["videoDetails"]["lengthSeconds"])
    base, *entries = player_response["storyboards"]["playerStoryboardSpecRenderer"]["spec"].split("|")
    formats = []
    for i, entry in enumerate(reversed(entries)):
        w, h, count, cols, rows, _interval, name, sigh = entry.split("#")
        url = base.replace("$L", str(len(entries) - 1 - i)).replace("$N", name) + f"&sigh={sigh}"
        n = int(count) / (int(cols) * int(rows))
        formats.append({
            "format_id": f"sb{i}", "format_note": "storyboard", "ext": "mhtml", "protocol": "mhtml",
            "url": url, "width": int(w), "height": int(h), "fps": int(count) / duration,
            "rows": int(rows), "columns": int(cols),
            "fragments": [{"url": url.replace("$M", str(j)),
                           "duration": min(duration / n, duration - j * duration / n)}
                          for j in range(math.ceil(n))]})
    return {"id": player_response["videoDetails"]["videoId"], "duration": duration, "formats": formats}


# --- levels from yt-dlp's own formats for recorded responses ------------------------------

def spec_entries(response: dict) -> dict[str, list[int]]:
    """The spec's `w#h#count#cols#rows#interval_ms` per level, named as yt-dlp names them
    (entries reversed: sb0 is the last, largest). interval_ms is what yt-dlp drops: the
    truth the timing must find again."""
    _base, *entries = response["storyboards"]["playerStoryboardSpecRenderer"]["spec"].split("|")
    return {f"sb{i}": [int(x) for x in entry.split("#")[:6]] for i, entry in enumerate(reversed(entries))}


def ytdlp_info(response: dict) -> dict:
    """An info dict with the storyboard formats yt-dlp's own extractor builds from `response`."""
    youtube = pytest.importorskip("yt_dlp.extractor.youtube")
    extract = getattr(youtube.YoutubeIE, "_extract_storyboard", None)
    if extract is None:
        pytest.skip("this yt-dlp has no YoutubeIE._extract_storyboard")
    duration = float(response["videoDetails"]["lengthSeconds"])
    return {"duration": duration, "formats": list(extract(youtube.YoutubeIE(), [response], duration))}


@pytest.mark.parametrize("name", [GJL, DSM, WW1, LIVE])
def test_levels_from_ytdlps_own_formats_find_the_specs_interval_again(name):
    """yt-dlp's extractor, on real recorded responses, keeps the spec's geometry and URLs but
    drops its interval_ms: levels_from_info finds the interval again from duration and count
    (5 s, 2 s, 10 s, and 10 s over 6.4 hours, where 1/fps would drift by minutes)."""
    response = load(name)
    info, spec = ytdlp_info(response), spec_entries(response)
    levels = {lv.format_id: lv for lv in levels_from_info(info)}
    assert set(levels) == set(spec) == {f["format_id"] for f in info["formats"]}
    for fmt in info["formats"]:
        level = levels[fmt["format_id"]]
        width, height, count, columns, rows, interval_ms = spec[fmt["format_id"]]
        assert (level.tile_width, level.tile_height, level.count, level.columns, level.rows) == \
            (width, height, count, columns, rows)
        assert level.fragment_urls == tuple(f["url"] for f in fmt["fragments"])
        if interval_ms:  # 0: the tiny "default" level, whose spacing the spec does not give
            assert (level.interval, level.interval_source) == (interval_ms / 1000, "duration")


# --- levels from a yt-dlp info dict ---------------------------------------------------------

@pytest.mark.parametrize("name, duration, count, interval", [(GJL, 316, 65, 5.0), (DSM, 288, 146, 2.0)])
def test_levels_from_info(name, duration, count, interval):
    info = info_like_ytdlp(load(name))
    levels = levels_from_info(info)
    assert [lv.format_id for lv in levels] == ["sb0", "sb1", "sb2"]  # largest tiles first
    top = levels[0]
    assert (top.count, top.interval, top.interval_source) == (count, interval, "duration")
    assert top.fragment_urls == tuple(f["url"] for f in info["formats"][0]["fragments"])
    fps = info["formats"][0]["fps"]
    assert 1 / fps != interval  # what yt-dlp's fps suggests is not the spacing


def test_one_over_fps_would_drift():
    top = levels_from_info(info_like_ytdlp(load(GJL)))[0]
    last = top.count - 1
    assert last * top.interval == 320.0
    naive = last / info_like_ytdlp(load(GJL))["formats"][0]["fps"]  # 64 * 4.86 s
    assert naive == pytest.approx(311.1, abs=0.1) and last * top.interval - naive > 8


@pytest.mark.parametrize("duration, count, interval", [
    (62, 14, 5.0),  # a short video: Emu's round(62 / 14) = 4 s, a second short
    (60, 14, 5.0),  # lengthSeconds 60 of a 60.4 s video (ceil(60.4 / 5) + 1 = 14): round gives 4
    (3600, 361, 10.0),
    (316, 100, 3.0),  # the "default" level's fixed 100 tiles: no whole second fits, Emu's rule
])
def test_interval_from_duration_and_count(duration, count, interval):
    url = "https://i.ytimg.com/sb/x/storyboard3_L2/M$M.jpg?sqp=a&sigh=b"
    fmt = {"format_id": "sb0", "format_note": "storyboard", "protocol": "mhtml", "width": 160, "height": 90,
           "columns": 5, "rows": 5, "fps": count / duration,
           "fragments": [{"url": url.replace("$M", str(m))} for m in range(math.ceil(count / 25))]}
    level = levels_from_info({"duration": duration, "formats": [fmt]})[0]
    assert (level.count, level.interval, level.interval_source) == (count, interval, "duration")


def test_levels_from_info_skips_malformed_and_other_formats():
    info = info_like_ytdlp(load(GJL))
    info["formats"][1]["fragments"] = []
    info["formats"][2]["fps"] = 0.001  # round(0.316) = 0 tiles
    info["formats"].append({"format_id": "18", "protocol": "https", "vcodec": "avc1", "url": "https://x.invalid/"})
    assert [lv.format_id for lv in levels_from_info(info)] == ["sb0"]
    del info["duration"]  # the fragments' durations add up to it
    assert levels_from_info(info)[0].interval == 5.0
    assert levels_from_info({"formats": []}) == []


# --- playability ----------------------------------------------------------------------------

def test_playability_reason():
    assert playability_reason(load("youtube_request_blocked.innertube.json")) == "bot_check"  # LOGIN_REQUIRED
    assert playability_reason(load("youtube_video_unavailable.innertube.json")) == "unavailable"  # ERROR
    assert playability_reason(load(GJL)) is None
    # The PO-token response says OK: it differs only in its caption URLs (exp=xpe), so the
    # storyboards are as usable as in the plain response.
    po = load("youtube_po_token_required.innertube.json")
    assert po["playabilityStatus"]["status"] == "OK" and playability_reason(po) is None
    assert levels_from_info(info_like_ytdlp(po)) == levels_from_info(info_like_ytdlp(load(GJL)))


@pytest.mark.parametrize("status, expected", [
    ({"status": "LOGIN_REQUIRED"}, "bot_check"),
    ({"status": "UNPLAYABLE", "reason": "Sign in to confirm you're not a bot"}, "bot_check"),
    ({"status": "LOGIN_REQUIRED", "reason": "Sign in to confirm your age"}, "unavailable"),
    ({"status": "UNPLAYABLE", "reason": "Video unavailable"}, "unavailable"),
    ({"status": "LIVE_STREAM_OFFLINE"}, "unavailable"),
    (None, "unavailable"),
])
def test_playability_variants(status, expected):
    assert playability_reason({"playabilityStatus": status} if status else {}) == expected


# --- choose_level ---------------------------------------------------------------------------

def test_choose_level():
    levels = levels_from_info(info_like_ytdlp(load(GJL)))
    assert choose_level(levels) is levels[0]
    assert choose_level(levels, "sb1").tile_width == 80
    assert choose_level(levels, 2).format_id == "sb2"
    for wanted in ("sb7", 3, -1, True):
        with pytest.raises(StoryboardError) as caught:
            choose_level(levels, wanted)
        assert caught.value.reason == "no_storyboard" and "sb0 160x90" in caught.value.message
    with pytest.raises(StoryboardError, match="no_storyboard"):
        choose_level([])


# --- slicing --------------------------------------------------------------------------------

STEPS = (0, 64, 128, 192, 255)  # 125 colours at least 64 apart per channel: JPEG cannot confuse them


def colour(k: int) -> tuple[int, int, int]:
    return STEPS[k % 5], STEPS[k // 5 % 5], STEPS[k // 25 % 5]


def level(count: int = 65, mosaics: int | None = None) -> Level:
    n = math.ceil(count / 25) if mosaics is None else mosaics
    return Level("sb0", 160, 90, count, 5, 5, 5.0, "spec", tuple(f"https://x.invalid/M{m}.jpg" for m in range(n)))


def draw_mosaics(count: int, crop_last: bool = True) -> list[bytes]:
    """5x5 mosaics of 160x90 tiles, tile k filled with colour(k) row-major; the last one
    cropped to the rows it uses, as YouTube serves it."""
    mosaics = []
    for start in range(0, count, 25):
        used = min(25, count - start)
        image = Image.new("RGB", (800, 90 * (math.ceil(used / 5) if crop_last else 5)), (255, 255, 255))
        for j in range(used):
            r, c = divmod(j, 5)
            image.paste(colour(start + j), (c * 160, r * 90, (c + 1) * 160, (r + 1) * 90))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        mosaics.append(buffer.getvalue())
    return mosaics


def assert_tile_is(tile_jpeg: bytes, k: int):
    image = Image.open(io.BytesIO(tile_jpeg))
    assert image.format == "JPEG" and image.size == (160, 90)
    for xy in ((3, 3), (156, 3), (3, 86), (156, 86), (80, 45)):  # corners: the crop is not shifted
        assert all(abs(a - b) < 24 for a, b in zip(image.getpixel(xy), colour(k))), (k, xy)


def test_slice_mosaics_row_major_times_and_cropped_last():
    mosaics = draw_mosaics(65)
    assert Image.open(io.BytesIO(mosaics[-1])).size == (800, 270)  # 15 tiles: 3 rows
    tiles = slice_mosaics(mosaics, level(65))
    assert [t.index for t in tiles] == list(range(65))
    assert [t.time for t in tiles] == [5.0 * k for k in range(65)] and tiles[-1].time == 320.0
    for tile in tiles:
        assert_tile_is(tile.image, tile.index)


def test_slice_mosaics_uncropped_last_and_extra_mosaics():
    mosaics = draw_mosaics(65, crop_last=False) + draw_mosaics(25)
    tiles = slice_mosaics(mosaics, level(65))
    assert len(tiles) == 65
    assert_tile_is(tiles[-1].image, 64)
    one_row = slice_mosaics(draw_mosaics(3), level(3))  # a lone short row, cropped to 1 row
    assert [t.time for t in one_row] == [0.0, 5.0, 10.0]


def test_slice_mosaics_decode_error():
    mosaics = draw_mosaics(65)
    for broken in (mosaics[1][: len(mosaics[1]) // 2], b"not a jpeg", b""):
        with pytest.raises(StoryboardError) as caught:
            slice_mosaics([mosaics[0], broken, mosaics[2]], level(65))
        assert caught.value.reason == "decode_error" and "mosaic 1" in caught.value.message


def test_slice_mosaics_missing_or_short_mosaic():
    mosaics = draw_mosaics(65)
    with pytest.raises(StoryboardError) as caught:
        slice_mosaics(mosaics[:2], level(65))
    assert caught.value.reason == "malformed_storyboard" and "15 of 65 tiles missing" in caught.value.message
    short = draw_mosaics(65)[2]  # a 3-row mosaic where a full 5-row one belongs
    with pytest.raises(StoryboardError, match="malformed_storyboard: mosaic 1 is 800x270"):
        slice_mosaics([mosaics[0], short, mosaics[2]], level(65))


# --- tiles at the source's quality ----------------------------------------------------------

def textured_mosaic(seed: int = 0, rows: int = 5, quality: int = 80, subsampling: int = 2,
                    size: tuple[int, int] = (160, 90), mode: str = "RGB") -> bytes:
    """A mosaic with what costs a JPEG bytes, unlike draw_mosaics' flat colours: every tile its
    own smooth random colours plus grain, saved as YouTube serves storyboards (q75-85, 4:2:0)."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", (5 * w, rows * h))
    for j in range(5 * rows):
        coarse = Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        image.paste(coarse, (j % 5 * w, j // 5 * h))
    pixels = np.clip(np.asarray(image) + rng.normal(0, 4.0, (rows * h, 5 * w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def tables_of(data: bytes) -> tuple[dict, int]:
    image = opened(data)
    return image.quantization, JpegImagePlugin.get_sampling(image)


def alone(mosaic: bytes, box, **options) -> Image.Image:
    """The crop of the decoded mosaic encoded alone (Pillow's own way), decoded again."""
    buffer = io.BytesIO()
    opened(mosaic).crop(box).save(buffer, "JPEG", **options)
    return opened(buffer.getvalue())


def box(k: int, size: tuple[int, int] = (160, 90)) -> tuple[int, int, int, int]:
    r, c = divmod(k % 25, 5)
    return c * size[0], r * size[1], (c + 1) * size[0], (r + 1) * size[1]


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / mse) if mse else math.inf


ONE = Level("sb0", 160, 90, 25, 5, 5, 5.0, "spec", ("https://x.invalid/M0.jpg",))


@pytest.mark.parametrize("subsampling", [2, 1, 0])  # 4:2:0 as YouTube's, 4:2:2, 4:4:4
def test_default_tiles_keep_the_mosaics_tables_and_pixels(subsampling):
    """By default a tile carries its mosaic's quantisation tables and subsampling, and its
    pixels are exactly those of the crop encoded alone with them: the tiles of a mosaic row
    are encoded as one strip and dealt out by restart markers, which changes no coefficient."""
    mosaic = textured_mosaic(subsampling=subsampling)
    tables, sampling = tables_of(mosaic)
    assert sampling == subsampling
    tiles = slice_mosaics([mosaic], ONE)
    for tile in tiles:
        image = opened(tile.image)
        assert (image.format, image.size, image.mode) == ("JPEG", (160, 90), "RGB")
        assert (image.quantization, JpegImagePlugin.get_sampling(image)) == (tables, sampling)
        reference = alone(mosaic, box(tile.index), qtables=tables, subsampling=sampling)
        assert np.array_equal(np.asarray(image), np.asarray(reference)), tile.index


def test_default_tiles_are_whole_jpegs_with_restarts_in_order():
    """Each tile is a baseline JPEG of its own: one restart interval per MCU row of the tile
    (6 for 90 rows of 16), markers RST0, RST1... from the tile's start, one DQT and one DHT."""
    for tile in slice_mosaics([textured_mosaic()], ONE):
        data = tile.image
        assert data[:4] == b"\xff\xd8\xff\xdb" and data.endswith(b"\xff\xd9")
        scan = data[data.index(b"\xff\xda"):]
        markers = [scan[i + 1] for i in range(len(scan) - 1) if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7]
        assert markers == [0xD0, 0xD1, 0xD2, 0xD3, 0xD4]
        assert data.count(b"\xff\xdb") == data.count(b"\xff\xc4") == data.count(b"\xff\xdd") == 1


@pytest.mark.parametrize("quality", [75, 85])
def test_default_tiles_cost_about_the_mosaics_bytes(quality):
    """On a realistic mosaic the tiles together cost about the mosaic (~1.05x measured; q90
    re-encoding cost 1.5-1.9x), with high PSNR against the same crop of the decoded mosaic:
    ~37 dB median here, where the grain and random colours cost 4:2:0 re-encoding more than
    real video does (q90 tiles: 38.5 dB at 1.5-1.9x the bytes)."""
    mosaic = textured_mosaic(quality=quality)
    decoded = opened(mosaic).convert("RGB")
    new = slice_mosaics([mosaic], ONE)
    old = slice_mosaics([mosaic], ONE, quality=90)
    assert sum(len(t.image) for t in new) <= 1.1 * len(mosaic)
    assert sum(len(t.image) for t in old) >= 1.4 * len(mosaic)
    scores = [psnr(opened(t.image), decoded.crop(box(t.index))) for t in new]
    assert min(scores) > 34 and float(np.median(scores)) > 36


def test_default_tiles_of_a_partial_last_row_and_a_grey_mosaic():
    """A last mosaic with a short last row (63 tiles: 3 of 5 in it) and a greyscale JPEG
    mosaic (one table, 8x8 MCUs) keep their tables too."""
    mosaics = draw_mosaics(65)
    tiles = slice_mosaics(mosaics, level(63))
    assert len(tiles) == 63
    for tile in tiles[50:]:
        assert_tile_is(tile.image, tile.index)
        assert tables_of(tile.image) == tables_of(mosaics[2])
    grey = textured_mosaic(mode="L")
    for tile in slice_mosaics([grey], ONE):
        image = opened(tile.image)
        assert image.mode == "L" and image.quantization == opened(grey).quantization
        assert np.array_equal(np.asarray(image), np.asarray(alone(grey, box(tile.index), qtables=image.quantization)))


def test_default_tiles_whose_width_is_not_whole_mcus_are_encoded_alone():
    """Tiles 100 pixels wide do not fall on 16-pixel MCUs: no strip can be split at their
    edges, so each is encoded alone, with the mosaic's tables still."""
    mosaic = textured_mosaic(size=(100, 60))
    tables, sampling = tables_of(mosaic)
    tiles = slice_mosaics([mosaic], Level("sb0", 100, 60, 25, 5, 5, 5.0, "spec", ("x",)))
    for tile in tiles:
        assert tables_of(tile.image) == (tables, sampling)
        reference = alone(mosaic, box(tile.index, (100, 60)), qtables=tables, subsampling=sampling)
        assert np.array_equal(np.asarray(opened(tile.image)), np.asarray(reference))


def test_a_strip_that_does_not_split_is_encoded_tile_by_tile(monkeypatch):
    """A strip without the restart layout (a Pillow that ignores restart_marker_blocks) is
    not dealt: its tiles are encoded alone, with the same tables and pixels."""
    mosaic = textured_mosaic()
    dealt = slice_mosaics([mosaic], ONE)
    plain = io.BytesIO()
    opened(mosaic).crop((0, 0, 800, 90)).save(plain, "JPEG", qtables=opened(mosaic).quantization, subsampling=2)
    assert storyboard._deal_strip(plain.getvalue(), 5, 6, 160, 90) is None  # no DRI
    monkeypatch.setattr(storyboard, "_deal_strip", lambda *args: None)
    alone_tiles = slice_mosaics([mosaic], ONE)
    for a, b in zip(dealt, alone_tiles, strict=True):
        assert tables_of(a.image) == tables_of(b.image)
        assert np.array_equal(np.asarray(opened(a.image)), np.asarray(opened(b.image)))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_mosaic_that_is_not_a_jpeg_falls_back_to_q90(fmt):
    """A PNG or WebP mosaic has no tables to keep: its tiles are JPEGs at quality 90, as
    before, and slice as any mosaic does."""
    jpeg = draw_mosaics(65)
    other = io.BytesIO()
    opened(jpeg[0]).save(other, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    tiles = slice_mosaics([other.getvalue(), *jpeg[1:]], level(65))
    q90 = tables_of(_jpeg_at(90))
    for tile in tiles[:25]:
        assert_tile_is(tile.image, tile.index)
        assert tables_of(tile.image) == q90
    assert tables_of(tiles[25].image) == tables_of(jpeg[1])  # the JPEG mosaics keep theirs


def test_an_int_quality_still_reencodes_at_that_quality():
    mosaic = textured_mosaic()
    for quality in (90, 60):
        expected = tables_of(_jpeg_at(quality))
        for tile in slice_mosaics([mosaic], ONE, quality=quality):
            assert tables_of(tile.image) == expected
            assert tile.image[:4] == b"\xff\xd8\xff\xe0"  # encoded alone, as Pillow writes it


def _jpeg_at(quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# --- MHTML ----------------------------------------------------------------------------------

def mhtml(fragments: list[bytes | None], urls: list[str] | None = None, title: str = "sb0") -> bytes:
    """A storyboard MHTML file written as yt-dlp's MhtmlFD writes it (downloader/mhtml.py):
    header, the HTML stub naming every fragment, then one part per fetched fragment; a None
    fragment is one the downloader failed to fetch and skipped."""
    boundary = uuid.uuid4().hex
    urls = urls or [f"https://i.ytimg.com/sb/x/storyboard3_L2/M{i}.jpg?sqp=a&sigh=b" for i in range(len(fragments))]
    cid = [f"{i}.{boundary}@yt-dlp.github.io.invalid" for i in range(len(fragments))]
    stub = ("<!DOCTYPE html><html><head><meta name=\"generator\" content=\"yt-dlp 2026.10.26\">"
            f"<title>{title}</title><style>html,body{{margin:0}}</style><body>"
            + "".join(f'<figure><figcaption>Slide #{i + 1}</figcaption><img src="cid:{c}"></figure>'
                      for i, c in enumerate(cid))).encode()
    out = io.BytesIO()
    out.write((
        "MIME-Version: 1.0\r\nFrom: <nowhere@yt-dlp.github.io.invalid>\r\nTo: <nowhere@yt-dlp.github.io.invalid>\r\n"
        f"Subject: =?utf-8?Q?{title}?=\r\n"
        f'Content-type: multipart/related; boundary="{boundary}"; type="text/html"\r\n'
        "X.yt-dlp.Origin: https://i.ytimg.com/sb/x/storyboard3_L2/M$M.jpg?sqp=a&sigh=b\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(stub)}\r\n\r\n"
    ).encode() + stub + b"\r\n")
    for i, content in enumerate(fragments):
        if content is None:
            continue
        out.write(f"--{boundary}\r\nContent-ID: <{cid[i]}>\r\nContent-type: image/jpeg\r\n"
                  f"Content-length: {len(content)}\r\nContent-location: {urls[i]}\r\n"
                  f"X.yt-dlp.Duration: {125.0:f}\r\n\r\n".encode() + content + b"\r\n")
    out.write(f"--{boundary}--\r\n\r\n".encode())
    return out.getvalue()


def test_read_mhtml_round_trip():
    mosaics = draw_mosaics(65)
    images = read_mhtml(mhtml(mosaics))
    assert images == mosaics  # byte-exact, CR and LF bytes inside the JPEGs included
    assert len(slice_mosaics(images, level(65))) == 65
    tricky = [b"\r\n--not-the-boundary\r\n\r", b"\n\n\xff\xd9\r"]
    assert read_mhtml(mhtml(tricky)) == tricky


@pytest.mark.parametrize("skipped", [0, 1, 2])
def test_read_mhtml_missing_fragment(skipped):
    fragments: list[bytes | None] = list(draw_mosaics(65))
    fragments[skipped] = None  # the last one too: the stub still names it
    with pytest.raises(StoryboardError) as caught:
        read_mhtml(mhtml(fragments))
    assert caught.value.reason == "malformed_storyboard" and f"fragment {skipped} missing" in caught.value.message


@pytest.mark.parametrize("garbage", [b"\x00\xffgarbage\r\n\r\nmore", b"", mhtml([])])
def test_read_mhtml_garbage(garbage):
    with pytest.raises(StoryboardError, match="malformed_storyboard"):
        read_mhtml(garbage)


class _Mosaics(BaseHTTPRequestHandler):
    """Serves /M{m}.jpg from the server's `mosaics`; 404 for the rest."""

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        body = self.server.mosaics.get(name)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


def test_read_mhtml_of_a_real_ytdlp_download(tmp_path):
    """yt-dlp's own mhtml downloader fetches three mosaics from 127.0.0.1 and writes the file."""
    yt_dlp = pytest.importorskip("yt_dlp")
    mosaics = draw_mosaics(65)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mosaics)
    server.mosaics = {f"M{m}.jpg": data for m, data in enumerate(mosaics)}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sb/storyboard3_L2/M$M.jpg?sqp=a&sigh=b"
    fmt = {"format_id": "sb0", "format_note": "storyboard", "ext": "mhtml", "protocol": "mhtml", "url": url,
           "width": 160, "height": 90, "fps": 65 / 316, "rows": 5, "columns": 5, "acodec": "none", "vcodec": "none",
           "fragments": [{"url": url.replace("$M", str(m)), "duration": 125.0} for m in range(3)]}
    info = {"id": "GJLlxj_dtq8", "title": "t", "duration": 316, "formats": [fmt],  # no webpage_url:
            "extractor": "youtube", "extractor_key": "Youtube"}                      # no re-extraction
    params = {"format": "sb0", "outtmpl": str(tmp_path / "%(id)s.%(ext)s"), "quiet": True, "no_warnings": True,
              "proxy": "", "retries": 0, "fragment_retries": 0, "noprogress": True}
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            ydl.process_ie_result(info, download=True)
    finally:
        server.shutdown()
        server.server_close()
    images = read_mhtml((tmp_path / "GJLlxj_dtq8.mhtml").read_bytes())
    assert images == mosaics
    tiles = slice_mosaics(images, levels_from_info(info)[0])
    assert len(tiles) == 65 and tiles[-1].time == 320.0
