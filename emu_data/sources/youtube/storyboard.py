"""YouTube storyboards (the seek-preview mosaics) as timed tiles.

A storyboard level is a grid of `columns x rows` tiles per mosaic JPEG; its tiles are evenly
spaced in time, row-major, and the last mosaic is cropped to the rows it uses. The level
metadata comes from a yt-dlp info dict (formats `sb0..sbN`, which yt-dlp builds from the
player response's storyboard spec; the info dict does not keep the spec itself), and the
mosaics from yt-dlp's MHTML download.

Times matter: Emu interleaves tiles with subtitles by time. yt-dlp drops the spec's
interval and gives `fps = count / duration`, but 1/fps is not the spacing (a 316 s video
with 65 tiles at 5 s has 1/fps = 4.86 s, which drifts the last tile by ~9 s). So the
spacing is the whole-second interval that reproduces the tile count (YouTube shows
ceil(duration / interval) + 1 tiles), with Emu's own rule, round(duration / count) seconds,
as the fallback (see REFERENCE.md).
"""

from __future__ import annotations

import email
import email.message
import io
import math
import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urljoin

from PIL import Image, JpegImagePlugin

from emu_data.core import images

# yt-dlp treats these playabilityStatus reasons as an age gate (extractor _is_agegated):
# a sign-in wall that retrying later will not lift, unlike the bot check.
_AGE_GATE = ("confirm your age", "age-restricted", "inappropriate")
_CONTENT_ID = re.compile(r"<?(\d+)\.[^@>]*@[^>]*>?")  # yt-dlp: <{i}.{boundary}@yt-dlp.github.io.invalid>
_STUB_CID = re.compile(rb'src="cid:(\d+)\.')  # the HTML stub names every fragment, skipped or not
# Tiles of one level past this are a broken or hostile spec, not a video (12 h at one tile a
# second is 43,200): refused before a URL per mosaic is built for them.
_MAX_TILES = 10**6


class StoryboardError(images.ImageRejected):
    """A storyboard that cannot become tiles; `reason` is a stable code for stats and retries:
    "no_storyboard", "decode_error", "decompression_bomb" or "malformed_storyboard"."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, f"{reason}: {message}")
        self.message = message


@dataclass(frozen=True)
class Level:
    format_id: str  # yt-dlp's name: "sb0" is the largest tiles
    tile_width: int
    tile_height: int
    count: int  # tiles in the whole storyboard
    columns: int  # tiles per mosaic row
    rows: int  # tile rows per full mosaic
    interval: float  # seconds between tiles
    interval_source: str  # how `interval` was found: "duration" (from duration and count, see above)
    fragment_urls: tuple[str, ...]  # one mosaic each, in order

    @property
    def tiles_per_mosaic(self) -> int:
        return self.columns * self.rows

    @property
    def mosaics(self) -> int:
        """Mosaics needed to hold `count` tiles."""
        return math.ceil(self.count / self.tiles_per_mosaic)


@dataclass(frozen=True)
class Tile:
    index: int
    time: float  # seconds: index * level.interval
    image: bytes  # encoded JPEG of one tile


def _positive_int(value) -> int | None:
    """A positive int up to 2**53, so that sums and ratios of them stay exact floats."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        return None
    return number if 0 < number <= 2**53 else None


def _positive_float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: float(10**400)
        return None
    return number if number > 0 and math.isfinite(number) else None


def _duration_interval(duration: float, count: int) -> float:
    """The tile spacing when the spec's interval is lost (yt-dlp drops it).

    YouTube spaces tiles by whole seconds and shows count = ceil(duration / interval) + 1
    tiles, so the whole-second interval that reproduces `count` is the real one. Emu's
    round(duration / count) agrees on long videos but not on short ones, where the extra
    tile weighs more (62 s with 14 tiles: 4 s by Emu's rule, 5 s in truth); it stays the
    fallback for counts no whole second explains.

    A whole-second duration is YouTube's lengthSeconds, cut down from the real one, so the
    video may be up to a second longer (288 s with 146 tiles is 288.x s at 2 s).
    """
    slack = 1 if duration == int(duration) else 0
    # Only i in [duration / (count - 1), (duration + slack) / (count - 2)] can qualify.
    low, high = int(duration / max(count - 1, 1)), math.ceil((duration + slack) / max(count - 2, 1))
    # The first bound holds from duration / (count - 1), the target, upwards and the second
    # from some i downwards, so the first i meeting the first bound is the closest candidate:
    # found in a step or two (scanning the whole range took minutes for a huge duration).
    for i in range(max(1, low), high + 1):
        if math.ceil(duration / i) <= count - 1:
            if count - 1 <= math.ceil((duration + slack) / i):
                return float(i)
            break  # the second bound fails here, so for every larger i too
    return float(max(1, round(duration / count)))


def _largest_first(levels: list[Level]) -> list[Level]:
    # Stable, so yt-dlp's order (sb0 first) survives among equal tile areas.
    return sorted(levels, key=lambda level: -level.tile_width * level.tile_height)


def levels_from_info(info: dict) -> list[Level]:
    """Storyboard levels of a yt-dlp info dict, largest tiles first.

    Spacing comes from the duration and count (see _duration_interval), never 1/fps. Formats
    that cannot be timed or fetched (no fragments, count < 1, bad geometry) are skipped.
    """
    formats = info.get("formats")  # untrusted JSON: anything may stand where a list belongs
    formats = [f for f in formats if isinstance(f, dict)
               and (f.get("format_note") == "storyboard" or f.get("protocol") == "mhtml")
               ] if isinstance(formats, list) else []
    levels = [_info_level(f, _positive_float(info.get("duration"))) for f in formats]
    return _largest_first([level for level in levels if level is not None])


def _info_level(fmt: dict, duration: float | None) -> Level | None:
    fragments = fmt.get("fragments") or ()
    if not isinstance(fragments, list) or not all(isinstance(f, dict) for f in fragments):
        return None  # fragments we cannot read are fragments we cannot fetch
    if not duration:  # yt-dlp splits the video's duration over the fragments
        duration = _positive_float(sum(_positive_float(f.get("duration")) or 0 for f in fragments))
    fps = _positive_float(fmt.get("fps"))
    geometry = [_positive_int(fmt.get(k)) for k in ("width", "height", "columns", "rows")]
    if not fragments or not duration or not fps or not all(geometry):
        return None
    count = fps * duration  # yt-dlp's fps is count / duration
    if not count <= _MAX_TILES:  # inf too: round() would raise
        return None
    count = round(count)
    urls = tuple(_fragment_url(fmt, f) for f in fragments)
    width, height, columns, rows = geometry
    if count < 1 or not all(urls) or len(urls) < math.ceil(count / (columns * rows)):
        return None
    return Level(str(fmt.get("format_id")), width, height, count, columns, rows,
                 _duration_interval(duration, count), "duration", urls)


def _fragment_url(fmt: dict, fragment: dict) -> str | None:
    """The fragment's URL, or None for one that cannot be fetched: not text, not a URL
    ("https://[::1/"), or holding a lone surrogate (JSON can spell one; HTTP cannot send it)."""
    if fragment.get("url"):
        url = fragment["url"]
    else:
        base, path = fmt.get("fragment_base_url"), fragment.get("path")
        if not (isinstance(base, str) and isinstance(path, str) and base and path):
            return None
        try:
            url = urljoin(base, path)
        except ValueError:
            return None
    if not isinstance(url, str):
        return None
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return url


def _field(obj, *names):
    """obj[name][name]..., or None where a step is missing or not an object (untrusted JSON)."""
    for name in names:
        obj = obj.get(name) if isinstance(obj, dict) else None
    return obj


def playability_reason(player_response: dict) -> str | None:
    """None when playable; "bot_check" for the sign-in/bot wall (back off and retry later,
    or use cookies); "unavailable" for everything else (retrying will not help).

    A response that needs a PO token still says OK here: only its caption URLs differ.
    """
    status = _field(player_response, "playabilityStatus") or {}
    if not isinstance(status, dict):  # "OK" as a bare string is no status we can read
        status = {}
    if status.get("status") == "OK":
        return None
    reason = str(status.get("reason") or "").lower()
    if "not a bot" in reason:
        return "bot_check"
    if status.get("status") == "LOGIN_REQUIRED" and not any(a in reason for a in _AGE_GATE):
        return "bot_check"
    return "unavailable"


def choose_level(levels: Sequence[Level], wanted: str | int | None = None) -> Level:
    """The level asked for: None -> the first (largest tiles), "sbN" -> by format_id,
    an int -> by position. Anything else is a no_storyboard error naming what exists."""
    if not levels:
        raise StoryboardError("no_storyboard", "the video has no storyboard levels")
    if wanted is None:
        return levels[0]
    if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted < len(levels):
        return levels[wanted]
    for level in levels:
        if isinstance(wanted, str) and level.format_id == wanted:
            return level
    have = ", ".join(f"{i}: {lv.format_id} {lv.tile_width}x{lv.tile_height}" for i, lv in enumerate(levels))
    raise StoryboardError("no_storyboard", f"no storyboard level {wanted!r}; available: {have}")


def read_mhtml(data: bytes) -> list[bytes]:
    """The mosaic images of a storyboard MHTML file as yt-dlp's mhtml downloader writes it,
    in fragment order. yt-dlp leaves out a fragment it failed to fetch; the HTML stub still
    names it, so a gap (the last fragment included) is a malformed_storyboard error."""
    message = email.message_from_bytes(data)
    if not message.is_multipart():
        raise StoryboardError("malformed_storyboard", "not a multipart MHTML file")
    named: set[int] = set()
    images: dict[int, bytes] = {}
    for part in message.get_payload():
        if part.get_content_type() == "text/html":
            named.update(int(i) for i in _STUB_CID.findall(part.get_payload(decode=True) or b""))
            continue
        index, image = _mhtml_fragment(part)
        if index in images:
            raise StoryboardError("malformed_storyboard", f"fragment {index} appears twice")
        images[index] = image
    total = max(named | set(images), default=-1) + 1
    if total == 0:
        raise StoryboardError("malformed_storyboard", "no fragments in the MHTML file")
    for index in range(total):
        if index not in images:
            raise StoryboardError("malformed_storyboard", f"fragment {index} missing (of {total})")
    return [images[index] for index in range(total)]


def _mhtml_fragment(part: email.message.Message) -> tuple[int, bytes]:
    match = _CONTENT_ID.fullmatch(str(part.get("Content-ID", "")).strip())
    image = part.get_payload(decode=True)
    if not match or not isinstance(image, bytes):
        raise StoryboardError("malformed_storyboard",
                              f"MHTML part is not a storyboard fragment (Content-ID {part.get('Content-ID')!r})")
    return int(match.group(1)), image


def slice_mosaics(mosaics: Sequence[bytes], level: Level, *, quality: int | None = None) -> list[Tile]:
    """Cut `level.count` tiles, row-major, out of the level's mosaics in order; tile k is at
    k * level.interval seconds and is stored alone as a JPEG.

    quality=None (the default) keeps the source's quality: each tile is re-encoded with its
    mosaic's own quantisation tables and chroma subsampling, with optimised Huffman tables:
    1.03-1.06x its share of a textured mosaic's bytes (q90: 1.4-1.8x), ~1.35x of a flat one's,
    where each tile's own JPEG header weighs most (BENCHMARKS.md). A mosaic whose tables cannot
    be kept (not a JPEG, an unusual layout) falls back to quality _FALLBACK_QUALITY. An int
    re-encodes every tile at that JPEG quality.

    Each mosaic is decoded once. The last mosaic may be cropped to the rows it uses.
    Raises decode_error for a mosaic that does not decode, malformed_storyboard when
    mosaics are missing or one is too small for the tiles it must hold (later tiles'
    times would otherwise shift)."""
    if len(mosaics) < level.mosaics:
        missing = level.count - len(mosaics) * level.tiles_per_mosaic
        raise StoryboardError("malformed_storyboard", f"{missing} of {level.count} tiles missing: "
                              f"{len(mosaics)} of {level.mosaics} mosaics")
    tiles: list[Tile] = []
    for m in range(level.mosaics):  # extra mosaics past `count` hold no tiles of this level
        tiles += _slice_one(mosaics[m], m, level, len(tiles), quality)
    return tiles


def _slice_one(data: bytes, m: int, level: Level, first: int, quality: int | None) -> list[Tile]:
    """Tiles of mosaic m, numbered from `first`. The decoded mosaic dies on return: holding
    it while the next one decodes made slicing ~17% slower (fresh pages for every mosaic).
    Decoding, cropping and encoding all run inside the image boundary: whatever a decoder
    raises on a hostile mosaic is this video's decode_error, never the unit's."""
    want = min(level.tiles_per_mosaic, level.count - first)
    try:
        with images.opened(data) as image:
            boxes = _tile_boxes(image.size, level, want, m)
            source = _source_encoding(image) if quality is None else None
            rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
            if source is not None:
                encoded = _source_tiles(rgb, boxes, level, *source)
            else:
                options = {"quality": _FALLBACK_QUALITY if quality is None else quality}
                encoded = [_jpeg(rgb.crop(box), options) for box in boxes]
            return [Tile(k, k * level.interval, jpeg) for k, jpeg in enumerate(encoded, first)]
    except StoryboardError:
        raise
    except images.ImageRejected as error:
        raise StoryboardError(error.reason, f"mosaic {m}: {error}") from None


def _tile_boxes(size: tuple[int, int], level: Level, want: int, m: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes of the first `want` tiles, row-major; the image must hold them all."""
    width, height = size
    w, h, columns = level.tile_width, level.tile_height, level.columns
    rows_needed = math.ceil(want / columns)
    columns_needed = min(want, columns)
    if height // h < rows_needed or width // w < columns_needed:
        raise StoryboardError("malformed_storyboard", f"mosaic {m} is {width}x{height}, too small for "
                              f"{want} tiles of {w}x{h} in {columns} columns")
    return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r, c in (divmod(k, columns) for k in range(want))]


# --- encoding tiles at the source's quality -------------------------------------------------
#
# Re-encoding a tile at q90 over YouTube's own JPEG (roughly q75-85) cost ~1.6x its share of
# the mosaic's bytes. Re-encoding it with the mosaic's own quantisation tables and chroma
# subsampling keeps the source's quality at about its bytes, but a tile alone then still pays
# a JPEG header (~620 bytes with libjpeg's standard Huffman tables, a quarter of a textured
# 160x90 tile). Optimised Huffman tables shrink that header to ~330 bytes and the scan by ~6%,
# but cost libjpeg a second pass (+75% time for a tile encoded alone). So the tiles of one
# mosaic row are encoded together, as one strip with a restart marker at every tile edge of
# every MCU row: one save and one table build per row instead of per tile. The strip's
# entropy-coded segments are then dealt out to the tiles: each becomes a whole baseline JPEG
# (restart interval: one tile-wide MCU row) whose coefficients are those of the tile encoded
# alone (libjpeg pads the strip's bottom MCU row as it pads a lone tile's, and chroma never
# mixes across an MCU edge), with the strip's optimised Huffman tables. Numbers: BENCHMARKS.md,
# "Storyboard slicing + alignment".

_FALLBACK_QUALITY = 90  # a mosaic whose own tables cannot be kept: what slicing always used
_MCU = {0: (8, 8), 1: (16, 8), 2: (16, 16)}  # Pillow's subsampling code (4:4:4, 4:2:2, 4:2:0): MCU w, h
_RST = re.compile(rb"\xff[\xd0-\xd7]")  # in entropy-coded data 0xff is followed by 0 or a marker
_RST_MARKERS = tuple(bytes((0xFF, 0xD0 + n)) for n in range(8))


def _source_encoding(image: Image.Image) -> tuple[dict, tuple[int, int]] | None:
    """The save options that re-encode at `image`'s own quality (its quantisation tables, its
    chroma subsampling, optimised Huffman tables) and its MCU size; None for an image that is
    not a JPEG or whose tables and layout Pillow cannot write back (CMYK, 4:1:1, 16-bit...)."""
    tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    if not isinstance(tables, dict) or not tables:
        return None
    qtables = [list(tables[k]) for k in sorted(tables)]
    if not all(len(t) == 64 and min(t) >= 1 and max(t) <= 255 for t in qtables):  # baseline: 8-bit
        return None
    if image.mode == "L" and len(qtables) == 1:
        return {"qtables": qtables, "optimize": True}, (8, 8)
    sampling = JpegImagePlugin.get_sampling(image)
    if image.mode != "RGB" or sampling not in _MCU or len(qtables) > 3:
        return None
    return {"qtables": qtables, "subsampling": sampling, "optimize": True}, _MCU[sampling]


def _source_tiles(image: Image.Image, boxes: list[tuple[int, int, int, int]], level: Level,
                  options: dict, mcu: tuple[int, int]) -> list[bytes]:
    """The tiles in `boxes` (row-major, `level.columns` a row) encoded with `options`: one
    strip encode per mosaic row, dealt out by restart segments (see above); alone when the
    tile width is not whole MCUs or the strip does not split as expected."""
    mcu_width, mcu_height = mcu
    if level.tile_width % mcu_width:
        return [_jpeg(image.crop(box), options) for box in boxes]
    restart = {**options, "restart_marker_blocks": level.tile_width // mcu_width}
    rows = -(-level.tile_height // mcu_height)  # MCU rows a tile spans
    tiles: list[bytes] = []
    for start in range(0, len(boxes), level.columns):
        row = boxes[start:start + level.columns]
        strip = _jpeg(image.crop((row[0][0], row[0][1], row[-1][2], row[-1][3])), restart)
        dealt = _deal_strip(strip, len(row), rows, level.tile_width, level.tile_height)
        tiles += dealt if dealt is not None else [_jpeg(image.crop(box), options) for box in row]
    return tiles


def _deal_strip(data: bytes, columns: int, rows: int, width: int, height: int) -> list[bytes] | None:
    """Split a strip of `columns` tiles, each `rows` MCU rows high and one restart interval
    wide, into one JPEG per tile: the strip's header with the tile's size (its tables merged
    into one DQT and one DHT segment, JFIF APP0 dropped: 34 bytes a tile), then the tile's
    segments renumbered RST0, RST1... None when the strip is not laid out that way (a Pillow
    that ignores restart_marker_blocks writes no DRI)."""
    header, scan = _strip_header(data, width, height)
    if header is None or not scan.endswith(b"\xff\xd9"):
        return None
    segments = _RST.split(scan[:-2])
    if len(segments) != columns * rows:
        return None
    layout = [header, *[b""] * (2 * rows - 1), b"\xff\xd9"]  # header, part, RST0, part, RST1... EOI
    layout[2:-1:2] = [_RST_MARKERS[n % 8] for n in range(rows - 1)]
    tiles = []
    for column in range(columns):
        layout[1:-1:2] = segments[column::columns]  # this tile's slice of each MCU row
        tiles.append(b"".join(layout))
    return tiles


def _strip_header(data: bytes, width: int, height: int) -> tuple[bytes | None, bytes]:
    """(the header a tile of width x height needs, the scan after it) from a strip as libjpeg
    writes it: SOI, APP0, DQT..., SOF0, DHT..., DRI, SOS; (None, b"") for anything else."""
    qt, ht, frame, restart, pos, end = [], [], b"", b"", 2, len(data) - 4
    while pos < end and data[pos] == 0xFF:
        marker, after = data[pos + 1], pos + 2 + (data[pos + 2] << 8 | data[pos + 3])
        if marker == 0xDA:
            if not (frame and restart and qt and ht):
                break
            return b"".join((b"\xff\xd8\xff\xdb", (2 + sum(map(len, qt))).to_bytes(2, "big"), *qt,
                             frame[:5], height.to_bytes(2, "big"), width.to_bytes(2, "big"), frame[9:],
                             b"\xff\xc4", (2 + sum(map(len, ht))).to_bytes(2, "big"), *ht,
                             restart, data[pos:after])), data[after:]
        if marker == 0xDB:
            qt.append(data[pos + 4:after])
        elif marker == 0xC4:
            ht.append(data[pos + 4:after])
        elif marker == 0xC0:
            frame = data[pos:after]
        elif marker == 0xDD:
            restart = data[pos:after]
        elif marker != 0xE0:
            break
        pos = after
    return None, b""


def _jpeg(image: Image.Image, options: dict) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()
