"""`emu-data laion`: LAION-2B / LAION-COCO image-text pairs -> [image, text] samples.

Per unit (a slice of one input parquet): read the rows, turn away those the thresholds drop
or that lack a URL or a usable caption, run the address guard on the rest (img2dataset has
none), hand the survivors to img2dataset's Downloader in this worker (laion_download.py),
which passes each row's result back as it comes. A success whose stored bytes Pillow decodes
becomes a sample; everything else becomes a status row with a reason. Every input row ends in
exactly one of the two.

A row whose URL is a local path (relative to a --media-root) or a file:// URL is not fetched:
net.media reads it, confined to the roots (local_file_refused without one, outside_media_root,
missing_file, not_a_file, too_large, read_error), and img2dataset's own steps after a download
(hash check, Resizer) make its result, so it becomes the sample a download would have made.

Keys: `laion:<hash>` (`laion_coco:<hash>`) from the row's `hash` column when it holds an
integer or hex text, else `<source>:<file stem>-<row index>`. LAION's hash is the pair's own
(taken of its URL and caption), so a hash that came earlier in the input, in any file or
unit, is the same pair again: that row is a duplicate_key status row (`<key>#dupN`,
keys.py), found at planning over the hash columns of every input, and is not downloaded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from urllib3.util import parse_url

from emu_data.core import errors, images, records
from emu_data import net
from emu_data import sources as registry
from emu_data.net.media import LocalMedia, Media, is_local
from emu_data.core.options import Params, option, positive_int
from emu_data.core.images import STORED_FORMATS
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.synthetic.site import laion as site_laion
from emu_data.core.files import safe_stem
from emu_data.sources import keys, laion_download, ordered, textfiles
from emu_data.synthetic import sample

log = logging.getLogger(__name__)

SOURCES = ("laion", "laion_coco")
TEXT_COLUMN = {"laion": "TEXT", "laion_coco": "top_caption"}  # LAION-COCO: BLIP's caption
ROW_ID = "emu_row"          # our row index, carried through img2dataset (save_additional_columns)
HASH_COLUMN = "hash"
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
# Worth a --retry-failed: the server or the network may answer next time; a mirror still
# syncing, or a run without (or with the wrong) --media-root, may hold the file next time.
RETRYABLE = frozenset({"timeout", "connection_error", "truncated", "downloader_error", "http_408",
                       "http_429", "http_500", "http_502", "http_503", "http_504",
                       "missing_file", "local_file_refused"})
# Integer or hex hashes only: they can never equal a `<stem>-<index>` key.
_HASH_KEY = re.compile(r"^-?[0-9A-Fa-f]{1,64}$")
_PARSE_ONLY = net.NetPolicy(allow_private_addresses=True)  # check_url: scheme and host, no DNS


# ---- configuration ---------------------------------------------------------------------

@dataclass(frozen=True)
class ImageOptions:
    """What img2dataset stores of each image. Part of the layout: changing it changes the data."""

    # "no": keep the served bytes when they are JPEG, PNG or WebP (other formats: re-encoded as
    # encode_format); else one of img2dataset's resize modes, which re-encode as encode_format
    resize_mode: str = option("no", help="no (keep served images), border, keep_ratio, center_crop")
    image_size: int = option(256, parse=positive_int, help="target size when resizing")
    resize_only_if_bigger: bool = False
    encode_format: str = option("jpg", choices=ENCODE_FORMATS, help="format of re-encoded images")
    encode_quality: int = option(95, parse=int, help="JPEG/WebP quality; PNG: compression level 0-9")
    skip_reencode: bool = True          # resize modes: keep bytes already in encode_format when not resized
    min_image_size: int = 0             # smaller side below this: too_small
    max_image_pixels: int | None = images.pixel_limit()  # above: too_large (default: the bomb limit)
    max_aspect_ratio: float | None = None

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise errors.UsageError(f"resize mode {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            raise errors.UsageError(f"encode format {self.encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}")
        top = 9 if self.encode_format == "png" else 100
        if not 0 <= self.encode_quality <= top:
            raise errors.UsageError(f"{self.encode_format} quality must be within 0-{top}")
        if self.image_size < 1 or self.min_image_size < 0:
            raise errors.UsageError("image size must be positive and min image size non-negative")


@dataclass(frozen=True)
class DownloadOptions:
    """How img2dataset fetches. Not part of the layout: a rerun may change these freely."""

    thread_count: int = option(64, parse=positive_int,   # Ray runs units in parallel, one per CPU
                               help="download threads per unit")
    retries: int = 0                    # img2dataset's retries of a failed download
    timeout: int = 10                   # seconds per request
    user_agent_token: str | None = None
    respect_opt_out: bool = True        # honour X-Robots-Tag noai / noimageai / noindex

    def __post_init__(self):
        if min(self.thread_count, self.timeout) < 1 or self.retries < 0:
            raise errors.UsageError("threads and timeout must be at least 1, retries >= 0")


@dataclass(frozen=True)
class LaionConfig:
    source: str = option("laion", choices=SOURCES,
                         help="laion (text = TEXT) or laion_coco (text = top_caption, the BLIP caption)")
    url_col: str = option("URL", help="URL column")
    caption_col: str | None = option(None, help="caption column (default TEXT, or top_caption for laion_coco)")
    # thresholds: None = off; a row without the value fails
    min_similarity: float | None = option(None, parse=float, help="drop rows below this CLIP similarity")
    max_punsafe: float | None = option(None, parse=float, help="drop rows above this NSFW probability")
    max_pwatermark: float | None = option(None, parse=float, help="drop rows above this watermark probability")
    max_caption_chars: int = 4096       # longer captions are cut here (meta caption_truncated)
    rows_per_unit: int = option(10_000, parse=positive_int, help="rows per unit of work")
    # (column, md5|sha256|sha512) of the served bytes
    verify_hash: tuple[str, str] | None = option(None, parse=lambda text: tuple(text.split(":", 1)),
                                                 metavar="COL:TYPE",
                                                 help="check downloaded bytes against a column, e.g. sha256:sha256")
    image: ImageOptions = ImageOptions()
    # repr=False: units' digests come from repr, and download speed settings must not make a
    # rerun redo committed units.
    download: DownloadOptions = field(default=DownloadOptions(), repr=False, compare=False)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise errors.UsageError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.rows_per_unit < 1 or self.max_caption_chars < 1:
            raise errors.UsageError("rows per unit and max caption chars must be at least 1")
        if self.verify_hash and self.verify_hash[1] not in ("md5", "sha256", "sha512"):
            raise errors.UsageError(f"verify hash type {self.verify_hash[1]!r} is not md5, sha256 or sha512")

    @property
    def text_col(self) -> str:
        return self.caption_col or TEXT_COLUMN[self.source]

    def thresholds(self) -> list[tuple[str, str, float, bool]]:
        """(column, reason, limit, is_minimum) for each threshold that is on."""
        found = [("similarity", "filtered_similarity", self.min_similarity, True),
                 ("punsafe", "filtered_punsafe", self.max_punsafe, False),
                 ("pwatermark", "filtered_watermark", self.max_pwatermark, False)]
        return [t for t in found if t[2] is not None]


def layout(config: LaionConfig) -> dict:
    data = asdict(config)
    data.pop("download")
    return {"laion": data}


# ---- units -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LaionUnit:
    path: str
    file_bytes: int                     # a file replaced since its units committed is redone
    stem: str
    start: int
    stop: int
    config: LaionConfig
    net: net.NetPolicy = field(repr=False)
    repeats: tuple = ()                 # (row, N, where the first is) of rows whose key came earlier
    # repr=False: where local copies live is not what they are (a moved mirror redoes nothing)
    media: LocalMedia = field(default=LocalMedia(), repr=False)


def input_files(inputs: list[Path]) -> list[Path]:
    """Parquet files by textfiles.input_files' rule (arguments in order, a folder's *.parquet
    in name order, each file once), resolved; their stems name keys, so they must differ."""
    files = [p.resolve() for p in textfiles.input_files(inputs, ".parquet")]
    if not files:
        raise FileNotFoundError(f"no parquet files in {', '.join(map(str, inputs))}")
    stems: dict[str, Path] = {}
    for path in files:
        other = stems.setdefault(_safe_stem(path), path)
        if other != path:
            raise errors.UsageError(f"{other} and {path} have the same name; keys would collide")
    return files


def _safe_stem(path: Path) -> str:
    return safe_stem(path.stem)


def units(inputs: list[Path], config: LaionConfig, net_policy: net.NetPolicy = net.NetPolicy(),
          media: LocalMedia = LocalMedia()) -> list[Unit]:
    """Each input file in slices of rows_per_unit rows, files in sorted order."""
    files = input_files(inputs)
    for path in files:
        _check_columns(path, _parquet(pq.read_schema, path), config)
    sizes = [_parquet(pq.read_metadata, path).num_rows for path in files]
    repeats = _repeated_keys(files, sizes)
    found, n = [], config.rows_per_unit
    for path, rows in zip(files, sizes):
        size = path.stat().st_size
        for start in range(0, rows, n):
            stop = min(rows, start + n)
            payload = LaionUnit(str(path), size, _safe_stem(path), start, stop, config, net_policy,
                                keys.between(repeats.get(path, []), start, stop - 1), media)
            found.append(Unit(f"{_safe_stem(path)}-{start // n:05d}", payload))
    return found


def _check_columns(path: Path, schema: pa.Schema, config: LaionConfig) -> None:
    needed = [config.url_col, config.text_col] + [column for column, *_ in config.thresholds()]
    needed += [config.verify_hash[0]] if config.verify_hash else []
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise errors.UsageError(f"{path}: no column {', '.join(map(repr, missing))} "
                         f"(has {', '.join(schema.names)})")


def _parquet(read, path: Path):
    """read(path); a file that is no readable parquet (empty, cut short, something else) is a
    ValueError naming it, where pyarrow's own errors do not name the file."""
    try:
        return read(path)
    except (pa.ArrowException, OSError) as e:
        raise errors.UsageError(f"{path}: not a readable parquet file ({e})") from None


def _hash_column(path: Path) -> pa.ChunkedArray | None:
    """The hash column as the bytes of its text, or None where there is none or its type
    never gives a hash key (see _key: integers and text only). One type for every file, so
    files that disagree compare by text; bytes, so invalid UTF-8 is never decoded here."""
    if HASH_COLUMN not in pq.read_schema(path).names:
        return None
    column = pq.read_table(path, columns=[HASH_COLUMN])[HASH_COLUMN]
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_integer(kind):
        return pc.cast(pc.cast(column, pa.string()), pa.large_binary())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.cast(column, pa.large_binary())
    return None


def _repeated_keys(files: list[Path], sizes: list[int]) -> dict[Path, list[tuple[int, int, str]]]:
    """{file: [(row, N, "name:row" of the first), ...]} for every row whose hash key an
    earlier row of the inputs has (the hash columns as bytes: ~16 bytes a row meanwhile)."""
    columns = [_parquet(_hash_column, path) for path in files]
    every = pa.chunked_array([chunk for column, rows in zip(columns, sizes)
                              for chunk in (column.chunks if column is not None
                                            else [pa.nulls(rows, pa.large_binary())])], pa.large_binary())
    # the rows _key keys by hash (integers and hex text; invalid UTF-8 never matches)
    keyed = pc.if_else(pc.match_substring_regex(every, _HASH_KEY.pattern), every, None)
    index, first, n = keys.repeats_in_column(keyed)
    starts = np.cumsum([0, *sizes])
    file_of = lambda row: int(np.searchsorted(starts, row, "right")) - 1  # noqa: E731
    found: dict[Path, list[tuple[int, int, str]]] = {}
    for i, j, k in zip(index.tolist(), first.tolist(), n.tolist()):
        fi, fj = file_of(i), file_of(j)
        found.setdefault(files[fi], []).append((i - int(starts[fi]), k, f"{files[fj].name}:{j - int(starts[fj])}"))
    return found


# ---- reading a slice -------------------------------------------------------------------

@dataclass
class InputRow:
    index: int                          # the row's position in its input file
    key: str
    input: str                          # for the status table: the URL, else file:row
    url: str | None = None
    text: str | None = None
    expected_hash: str | None = None    # verify_hash's value, handed to img2dataset
    meta: dict = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # (reason, message): the row is not downloaded


def read_rows(unit: LaionUnit) -> list[InputRow]:
    try:
        table = _read_slice(unit)
        columns = {name: _pylist(table[name]) for name in table.column_names}
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the file is gone or locked, not corrupt: the unit fails and a rerun retries it
        return _unreadable(unit, e)
    repeats = {row: (n, first) for row, n, first in unit.repeats}
    return [_input_row(unit, unit.start + i, {name: values[i] for name, values in columns.items()},
                       repeats.get(unit.start + i)) for i in range(table.num_rows)]


def _unreadable(unit: LaionUnit, error: Exception) -> list[InputRow]:
    """The slice's rows when its pages do not decode behind a footer that did: one row with a
    reason each, so the unit still accounts for every row (keys by position)."""
    name = Path(unit.path).name
    message = f"rows {unit.start}..{unit.stop - 1} of {name} do not read: {error}"[:500]
    return [InputRow(i, f"{unit.config.source}:{unit.stem}-{i:08d}", f"{name}:{i}",
                     problem=("unreadable_input", message)) for i in range(unit.start, unit.stop)]


def _read_slice(unit: LaionUnit) -> pa.Table:
    """Only the row groups the slice touches: a unit costs its own rows, not the whole file."""
    with pq.ParquetFile(unit.path) as file:
        wanted = [c for c in dict.fromkeys(_wanted_columns(unit.config)) if c in file.schema_arrow.names]
        groups, first, offset = [], None, 0
        for g in range(file.metadata.num_row_groups):
            rows = file.metadata.row_group(g).num_rows
            if offset < unit.stop and offset + rows > unit.start:
                groups.append(g)
                first = offset if first is None else first
            offset += rows
        table = file.read_row_groups(groups, columns=wanted)
    return table.slice(unit.start - (first or 0), unit.stop - unit.start)


def _wanted_columns(config: LaionConfig) -> list[str]:
    extra = ["TEXT", "all_captions", "all_similarities"] if config.source == "laion_coco" else []
    verify = [config.verify_hash[0]] if config.verify_hash else []
    return [config.url_col, config.text_col, HASH_COLUMN, "similarity", "punsafe", "pwatermark",
            *extra, *verify]


def _pylist(column: pa.ChunkedArray) -> list:
    """Python values, text as bytes: files do hold invalid UTF-8, and decoding it here would raise."""
    return column.cast(_bytes_type(column.type)).to_pylist()


def _bytes_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):  # decoded to its values: their strings may be invalid UTF-8 too
        return _bytes_type(t.value_type)
    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_list(t):
        return pa.list_(_bytes_type(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_bytes_type(t.value_type))
    return t


def _input_row(unit: LaionUnit, index: int, values: dict, repeat: tuple[int, str] | None) -> InputRow:
    config = unit.config
    url, url_error = _decode(values.get(config.url_col))
    url = url.strip() if url else url
    text, caption_meta, caption_problem = _caption(values.get(config.text_col), config.max_caption_chars)
    key = _key(unit, index, values.get(HASH_COLUMN))
    problem = _threshold_problem(values, config) or _url_problem(url, url_error) or caption_problem
    if repeat:  # the same pair came earlier: its status row, nothing to fetch
        key, problem = keys.repeat_key(key, repeat[0]), (keys.DUPLICATE, keys.repeat_error(key, repeat[1]))
    return InputRow(
        index, key, input=url or f"{Path(unit.path).name}:{index}", url=url, text=text,
        expected_hash=_lenient(values.get(config.verify_hash[0])) if config.verify_hash else None,
        meta={**_meta(values, config, url), **caption_meta}, problem=problem)


def _key(unit: LaionUnit, index: int, value) -> str:
    # integers and text only, as _hash_column reads them (a decimal 15 is no hash key)
    text = _lenient(value) if isinstance(value, (int, bytes, str)) and not isinstance(value, bool) else None
    if text is not None and _HASH_KEY.fullmatch(text):
        return f"{unit.config.source}:{text}"
    return f"{unit.config.source}:{unit.stem}-{index:08d}"


def _decode(raw) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) for bytes that are not UTF-8 or a cell that is not text."""
    if raw is None or isinstance(raw, str):
        return raw, None
    if not isinstance(raw, bytes):  # a number, list or struct column: str() of it is no caption
        return None, f"a {type(raw).__name__}, not text"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e})"


def _lenient(raw) -> str | None:
    """Text for meta, where a bad byte must not cost the sample."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None if raw is None else str(raw)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    return float(value)


def _caption(raw, limit: int) -> tuple[str | None, dict, tuple[str, str] | None]:
    """(text, meta flags, problem) for a caption cell."""
    text, error = _decode(raw)
    if error:
        return None, {}, ("bad_caption", f"caption is {error}")
    if text is None or not text.strip():
        return None, {}, ("missing_caption", "no caption" if text is None else "caption is blank")
    text = text.strip()
    if len(text) <= limit:
        return text, {}, None
    # keep the pair: a long caption is still text about the image, only its tail is cut
    return text[:limit], {"caption_truncated": True, "caption_chars": len(text)}, None


def _url_problem(url: str | None, error: str | None) -> tuple[str, str] | None:
    if error:
        return "invalid_url", f"URL is {error}"
    if not url:
        return "missing_url", "no URL" if url is None else "URL is blank"
    return None


def _threshold_problem(values: dict, config: LaionConfig) -> tuple[str, str] | None:
    for column, reason, limit, is_minimum in config.thresholds():
        value = _number(values.get(column))
        if value is None:
            return reason, f"{column} is missing; the threshold {limit:g} needs a value"
        if (value < limit) if is_minimum else (value > limit):
            return reason, f"{column} {value:.4g} {'<' if is_minimum else '>'} {limit:g}"
    return None


def _cells(value) -> list:
    """A list cell's items; a cell of another type (text, a number) holds no list."""
    return value if isinstance(value, list) else []


def _meta(values: dict, config: LaionConfig, url: str | None) -> dict:
    digest = values.get(HASH_COLUMN)
    # numbers and text as they are; bytes, dates, decimals, structs as text (JSON holds no other)
    plain = digest is None or isinstance(digest, (int, float, str))
    meta = {"url": url, "hash": digest if plain else _lenient(digest)}
    meta.update({c: _number(values.get(c)) for c in ("similarity", "punsafe", "pwatermark")})
    if config.source == "laion_coco":
        meta["alt_text"] = _lenient(values.get("TEXT"))
        meta["all_captions"] = [_lenient(c) for c in _cells(values.get("all_captions"))]
        meta["all_similarities"] = [_number(s) for s in _cells(values.get("all_similarities"))]
    return meta


# ---- one unit --------------------------------------------------------------------------

def process(unit: LaionUnit, writer: UnitWriter) -> None:
    """Every row of the slice ends as one status row, and the downloaded ones also as a
    sample; written in row order (downloads finish in any order, shards must not differ)."""
    rows = read_rows(unit)
    with ordered.InputOrder(writer, (row.index for row in rows)) as out:
        ready = []
        for row in rows:
            if row.problem:
                out.put(row.index, _status(row, unit, *row.problem, attempts=0))
            else:
                ready.append(row)
        local = [row for row in ready if is_local(row.url)]
        remote = _guarded([row for row in ready if not is_local(row.url)], unit, out)
        if local:
            _read_local(local, unit, out)
        if remote:
            _fetch(remote, unit, out)


def _status(row: InputRow, unit: LaionUnit, reason: str, message: str, *, attempts: int = 1) -> dict:
    return records.status(row.key, unit.config.source, reason, input=row.input, error=message,
                          attempts=attempts)


def _guarded(rows: list[InputRow], unit: LaionUnit, out: ordered.InputOrder) -> list[InputRow]:
    """img2dataset would fetch anything: URLs at internal addresses end here, unrequested."""
    check = partial(_url_verdict, policy=unit.net, seen={})
    if unit.net.allow_private_addresses:  # scheme and host only: no DNS, no threads
        verdicts = list(map(check, (r.url for r in rows)))
    else:  # one DNS lookup per host, many hosts at once
        with ThreadPoolExecutor(min(unit.config.download.thread_count, 64)) as pool:
            verdicts = list(pool.map(check, (r.url for r in rows)))
    kept = []
    for row, error in zip(rows, verdicts):
        if error is None:
            kept.append(row)
        else:
            out.put(row.index, _status(row, unit, error.reason, error.message, attempts=0))
    return kept


def _url_verdict(url: str, *, policy: net.NetPolicy, seen: dict) -> net.FetchError | None:
    try:
        net.check_url(url, _PARSE_ONLY)
    except net.FetchError as e:
        return e
    if policy.allow_private_addresses:
        return None
    parts = parse_url(url)
    host = (parts.scheme, parts.host, parts.port)
    if host not in seen:  # the first URL of a host decides for all of them in this unit
        try:
            net.check_url(url, policy)
            seen[host] = None
        except net.FetchError as e:
            seen[host] = (url, e)
    if seen[host] is None:
        return None
    first, error = seen[host]
    return net.FetchError(error.reason, f"{url}: {error.message.removeprefix(f'{first}: ')}")


def _fetch(rows: list[InputRow], unit: LaionUnit, out: ordered.InputOrder) -> None:
    waiting = {row.index: row for row in rows}

    def handle(result: dict) -> None:
        row = waiting.pop(result.get(ROW_ID), None)
        if row is not None:  # None: a row id seen twice; the first counts
            out.put(row.index, *_outcome(row, result, unit))

    columns = {"url": [r.url for r in rows], ROW_ID: [r.index for r in rows]}
    if unit.config.verify_hash:  # img2dataset looks for it under the hash type's name
        columns[unit.config.verify_hash[1]] = [r.expected_hash for r in rows]
    try:
        laion_download.download(columns, download_job(unit.config), handle, unit.net)
        unanswered = "img2dataset returned no result for this row"
    except laion_download.DownloaderFailed as e:  # img2dataset itself stopped: the rest is lost
        unanswered = str(e)
    for row in waiting.values():   # each row ends somewhere, never as a unit that fails every rerun
        out.put(row.index, _status(row, unit, "downloader_error", unanswered))


_LOCAL_BATCH = 64   # files read ahead of the resizer: bounds the bytes held at once


def _read_local(rows: list[InputRow], unit: LaionUnit, out: ordered.InputOrder) -> None:
    """Rows naming local files (a path under --media-root, a file:// URL): no HTTP fetch, but
    the rest of img2dataset's path (hash check, its Resizer) on the bytes read, so each ends
    as the record a download of the same image would. Files are read in threads through the
    confined reader; the Resizer runs on this thread, as img2dataset's Downloader runs it."""
    resize = laion_download.local_resizer(download_job(unit.config))
    threads = min(unit.config.download.thread_count, 16)
    with Media(unit.net, unit.media) as media, ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(rows), _LOCAL_BATCH):
            batch = rows[start:start + _LOCAL_BATCH]
            for row, read in zip(batch, pool.map(partial(_read_file, media), batch)):
                if isinstance(read, net.FetchError):
                    out.put(row.index, _status(row, unit, read.reason, read.message))
                    continue
                result = resize({ROW_ID: row.index, "url": row.url}, read, row.expected_hash)
                out.put(row.index, *_outcome(row, result, unit, local=True))


def _read_file(media: Media, row: InputRow) -> bytes | net.FetchError:
    try:
        return media.get(row.url).body
    except net.FetchError as e:
        return e


def download_job(config: LaionConfig) -> laion_download.Job:
    """img2dataset's Downloader and Resizer settings for this config (the benchmark reuses them)."""
    image, fetch = config.image, config.download
    return laion_download.Job(
        thread_count=fetch.thread_count, timeout=fetch.timeout, retries=fetch.retries,
        user_agent_token=fetch.user_agent_token,
        opt_out_directives=laion_download.OPT_OUT_DIRECTIVES if fetch.respect_opt_out else (),
        encode_format=image.encode_format,
        verify_hash_type=config.verify_hash[1] if config.verify_hash else None,
        resizer=dict(
            image_size=image.image_size, resize_mode=image.resize_mode,
            resize_only_if_bigger=image.resize_only_if_bigger, encode_format=image.encode_format,
            encode_quality=image.encode_quality, skip_reencode=image.skip_reencode,
            min_image_size=image.min_image_size, max_image_area=image.max_image_pixels or math.inf,
            max_aspect_ratio=image.max_aspect_ratio or math.inf,
            # originals kept: img2dataset hands the served bytes on untouched and Pillow, which
            # must decode every stored image anyway, is the only decoder (one decode, not two)
            disable_all_reencoding=keeps_originals(image)))


def _outcome(row: InputRow, result: dict, unit: LaionUnit, *, local: bool = False) -> tuple[dict, dict | None]:
    """(status row, sample or None) of one row img2dataset answered (local: read from a file, once)."""
    if result.get("status") != "success":
        message = result.get("error_message") or str(result.get("status"))
        retried = result.get("status") == "failed_to_download" and not local
        tries = unit.config.download.retries + 1 if retried else 1
        return _status(row, unit, error_reason(result.get("status"), message), message, attempts=tries), None
    try:
        sample = _sample(row, result, unit.config)
    except BadImage as e:
        return _status(row, unit, e.reason, str(e)), None
    except records.RecordError as e:
        return _status(row, unit, "invalid_record", str(e)), None
    return records.status(row.key, unit.config.source, "ok", input=row.input, samples=1), sample


def _sample(row: InputRow, result: dict, config: LaionConfig) -> dict:
    served = result.get("image")
    if not served:
        raise BadImage("img2dataset reported success but stored no bytes")
    # with originals kept img2dataset decodes nothing, so the size filters are applied here
    image = stored_image(served, config.image, filters=keeps_originals(config.image))
    meta = {**row.meta, "width": image.width, "height": image.height,
            "original_width": result.get("original_width") or image.width,
            "original_height": result.get("original_height") or image.height,
            "sha256": hashlib.sha256(image.data).hexdigest()}
    if image.transcoded_from:
        meta["transcoded_from"] = image.transcoded_from
    return records.sample(row.key, config.source, [image.data, row.text], meta=meta)


class BadImage(images.ImageRejected):
    """Bytes that will not be stored, with the status reason (decode_error, too_small, ...)."""

    def __init__(self, message: str, reason: str = "decode_error"):
        super().__init__(reason, message)


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    width: int
    height: int
    transcoded_from: str | None = None  # the served format, when it was not JPEG, PNG or WebP


_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def keeps_originals(options: ImageOptions) -> bool:
    return options.resize_mode == "no"


def stored_image(data: bytes, options: ImageOptions, *, filters: bool = True) -> StoredImage:
    """What to store for these bytes once Pillow has fully decoded them; BadImage otherwise.

    JPEG, PNG and WebP are kept byte for byte; other formats Pillow reads (GIF, BMP, TIFF,
    MPO, ...) are re-encoded as options.encode_format. filters: apply the size filters."""
    try:
        with images.opened(data, load=False) as image:
            _check_pixels(image.size, options if filters else None)
            images.load_checked(image)
            if image.format in STORED_FORMATS:
                return StoredImage(data, *image.size)
            return StoredImage(_encode(image, options), *image.size, transcoded_from=image.format)
    except images.ImageRejected as e:
        raise BadImage(str(e), e.reason) from None


def _check_pixels(size: tuple[int, int], options: ImageOptions | None) -> None:
    """The size filters, applied from the header before decoding (bombs are refused by
    images.opened already, whatever the options)."""
    width, height = size
    if options is not None:
        if min(width, height) < options.min_image_size:
            raise BadImage(f"{width}x{height}: smaller than {options.min_image_size} px", "too_small")
        if options.max_image_pixels and width * height > options.max_image_pixels:
            raise BadImage(f"{width}x{height}: more than {options.max_image_pixels} pixels", "too_large")
        if options.max_aspect_ratio and max(size) / min(size) > options.max_aspect_ratio:
            raise BadImage(f"{width}x{height}: aspect ratio above {options.max_aspect_ratio:g}", "bad_aspect_ratio")


def _encode(image: Image.Image, options: ImageOptions) -> bytes:
    """Re-encode a decoded image: its first frame, transparency onto white (as img2dataset does)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
    else:
        flat = image.convert("RGB")
    fmt, out = _PIL_FORMAT[options.encode_format], io.BytesIO()
    level = {"compress_level": options.encode_quality} if fmt == "PNG" else {"quality": options.encode_quality}
    flat.save(out, fmt, **level)
    return out.getvalue()


# ---- img2dataset's verdicts ---------------------------------------------------------

# Ordered: the first pattern that matches img2dataset's error message names the status.
_DOWNLOAD_REASONS = (
    (r"^(?:<urlopen error )?(blocked_address|too_large|timeout|truncated):", r"\1"),  # net_guard's own verdicts
    (r"redirect error that would lead to an infinite loop", "too_many_redirects"),
    (r"HTTP Error (\d{3})", r"http_\1"),
    (r"timed out|timeout", "timeout"),
    (r"X-Robots-Tag", "opted_out"),
    (r"hash mismatch", "hash_mismatch"),
    (r"unknown url type|no host given|nonnumeric port|control characters|codec can't encode|Invalid URL",
     "invalid_url"),
    (r"IncompleteRead", "truncated"),
    (r"urlopen error|Connection|Errno|Remote end closed|SSL|certificate|BadStatusLine", "connection_error"),
)
_RESIZE_REASONS = (
    (r"image too small", "too_small"),
    (r"image area too large", "too_large"),
    (r"aspect ratio too large", "bad_aspect_ratio"),
    (r"decod|cannot identify image|truncated|corrupt|premature|unsupported", "decode_error"),
)


def error_reason(status: str | None, message: str | None) -> str:
    """A status-table reason for one of img2dataset's failures."""
    rules, fallback = ((_DOWNLOAD_REASONS, "download_error") if status == "failed_to_download"
                       else (_RESIZE_REASONS, "resize_error"))
    for pattern, reason in rules:
        match = re.search(pattern, message or "", re.IGNORECASE)
        if match:
            return match.expand(reason)
    return fallback


# ---- the stage -------------------------------------------------------------------------

def make_laion(inputs: list[Path], config: LaionConfig, net_policy: net.NetPolicy, output, ray=None, *,
               retry_failed: bool = False, media: LocalMedia = LocalMedia()):
    """Run the stage over the input parquet files (or folders of them) into output.out.

    Resumable: committed units are kept. retry_failed reruns units holding retryable reasons.
    """
    from emu_data.engine.stage import run_source

    return run_source(SOURCE, config, input_files(inputs), output, ray, retry_failed, net=net_policy,
                      media=media)


@dataclass(frozen=True)
class LaionInputs:
    input: list = option(many=True, required=True, parse=Path, metavar="PARQUET",
                         help="LAION parquet files, or directories of them")


def _configure(values: dict) -> dict:
    """img2dataset retries and times out as --retries and --timeout say."""
    config, policy = values["config"], values["net"]
    download = replace(config.download, retries=policy.retries, timeout=max(1, int(policy.read_timeout)))
    return {**values, "config": replace(config, download=download)}


SOURCE = registry.register(registry.Source(
    name="laion",
    kinds=(registry.Kind("laion", emu_weight=128, colour="#2b6cb0", pair_rank=1, sample=sample.laion_pair),
           registry.Kind("laion_coco", emu_weight=128, colour="#2f855a", pair_rank=0, sample=sample.coco_pair)),
    help="LAION-2B / LAION-COCO parquet -> [image, text] samples, downloaded by img2dataset",
    description="Image URLs downloaded with img2dataset (the field's downloader), its per-row "
                "results converted to [image, text] samples and status rows. Threshold flags drop "
                "rows with a reason; every URL is checked against the address guard first.",
    epilog="examples:\n  emu-data laion --input laion2B-en/part-0000*.parquet --out runs/laion --min-similarity 0.28\n"
           "  emu-data laion --input laion-coco/ --source laion_coco --out runs/coco   # text = top_caption",
    config=LaionConfig, inputs=LaionInputs,
    resolve=lambda given, net, media: input_files(given.input),
    configure=_configure,
    units=lambda files, config, ray, net, media: units(files, config, net, media),
    process=process, layout=layout, retryable=RETRYABLE,
    extras=(Params("net", net.NetPolicy, "downloads (the HTTP policy)"),
            Params("media", LocalMedia, "local copies (a mirror, an earlier img2dataset run)",
                   only=("media_root",))),
    site=registry.Site(site_laion.site_inputs, site_laion.publish_site),
))
