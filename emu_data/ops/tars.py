"""A corpus sample as WebDataset tar members, and tar shards of bounded size.

One sample is the members that share its tar key (`KEY.<ext>`; WebDataset groups members by
the name up to the first dot of the base name):

    KEY.json       {"key": the corpus key, "source", "texts", "times", "meta" (an object),
                    "images": per position the member extension of its image or null}
    KEY.000.jpg    the image at position 0 (png, webp: the bytes as stored, never re-encoded)
    KEY.jpg        a pair-like source's one image (LAION-style: open_clip's loaders read
    KEY.txt        `jpg;png;webp` + `txt` as they are); "images" in the JSON names it "jpg"
    KEY.000.npy    with --features: the embedding of the image at position 0 (KEY.npy for a
                   pair); "features" in the JSON names them per position, like "images"

KEY is the corpus key when that is already safe for a tar path and a WebDataset key (letters,
digits, `_`, `-`; at most 100 characters), else a readable prefix of it, `~`, and 20 hex
digits of its sha256: `~` never occurs in a safe key, so the mapping is one-to-one (the
corpus key stays in the JSON). Members carry no time, owner or mode of this machine: the same
corpus shard gives the same tar bytes, which is what lets a resumed export equal a whole one.

Written with the standard library's tarfile, not webdataset's TarWriter: that one stamps
each member with the current time, and the bytes must depend on the corpus alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import files as files_mod
from emu_data.core.corpus import arrow_writer
from emu_data.core.shards import TMP_PREFIX, ShardInfo, ShardLimits, publish, writing

SUFFIX = ".tar"
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,100}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


class Unwritable(ValueError):
    """A sample that cannot become tar members (the message says why): a status row."""


def tar_key(key: str) -> str:
    """The corpus key as a tar/WebDataset key: itself when safe, else prefix~sha256[:20]."""
    if _SAFE.fullmatch(key):
        return key
    prefix = _UNSAFE.sub("_", key)[:60]
    return f"{prefix}~{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:20]}"


def image_extension(data: bytes) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise Unwritable("an image that is not JPEG, PNG or WebP (the interleaved record stores no other)")


def members(row: dict, pair_like: bool, feature_shape: tuple[int, ...] | None = None) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one corpus row, the JSON first, images in position order, then
    their embeddings when the row has them (row["features"]: a vector per image, in order)."""
    key = tar_key(row["key"])
    texts, images = row["texts"], row["images"]
    placed = [(i, image["bytes"]) for i, image in enumerate(images) if _holds_image(image)]
    is_pair = pair_like and len(placed) == 1 and sum(t is not None for t in texts) == 1
    width = max(3, len(str(len(images) - 1)))
    names, files = [None] * len(images), []
    for position, data in placed:
        ext = image_extension(data)
        names[position] = ext if is_pair else f"{position:0{width}d}.{ext}"
        files.append((f"{key}.{names[position]}", data))
    doc = {"key": row["key"], "source": row["source"], "texts": texts, "images": names,
           "times": row["times"], "meta": _meta(row["meta"])}
    if feature_shape is not None:
        vectors = [_npy(vector, feature_shape) for vector in row["features"]]
        doc["features"] = [None if name is None else name.rsplit(".", 1)[0] + ".npy" if "." in name else "npy"
                           for name in names]
        files += [(f"{key}.{name}", data) for name, data in zip(filter(None, doc["features"]), vectors)]
    head = [(f"{key}.json", json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass"))]
    if is_pair:
        head.append((f"{key}.txt", next(t for t in texts if t is not None).encode("utf-8", "surrogatepass")))
    return head + files


def _holds_image(image: dict | None) -> bool:
    """An image struct with bytes (a struct of nulls at a text position holds none)."""
    return image is not None and image["bytes"] is not None


def _meta(text: str) -> dict:
    try:
        meta = files_mod.loads_json(text, "meta")
    except files_mod.JsonError as e:
        raise Unwritable(str(e)) from None
    if not isinstance(meta, dict):
        raise Unwritable(f"meta is JSON {type(meta).__name__}, not an object")
    return meta


def _npy(vector, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, vector.reshape(shape), allow_pickle=False)
    return buffer.getvalue()


class TarShardWriter:
    """Samples into `DIR/PREFIX-NNNNN.tar`, a new tar before one would pass the limits (rows,
    or bytes counting tar headers and padding), each written under a temporary name and
    renamed when complete: ShardWriter's contract (write(row), close() -> [ShardInfo],
    abort()), and like it, the names depend on the prefix and the rows alone."""

    def __init__(self, directory: Path, prefix: str, limits: ShardLimits, root: Path,
                 pair_like=lambda source: False, feature_shape: tuple[int, ...] | None = None):
        self.directory, self.prefix, self.limits, self.root = Path(directory), prefix, limits, Path(root)
        self.pair_like, self.feature_shape = pair_like, feature_shape
        self.finished: list[ShardInfo] = []
        self._tar: _OpenTar | None = None
        self._rows = self._bytes = 0

    def write_table(self, table: pa.Table) -> dict[int, str]:
        """Rows in Arrow form (with a `features` column when the writer has a feature shape),
        each written as write() does; returns {row: why} for those that are Unwritable."""
        vectors = None
        if self.feature_shape is not None:
            vectors = _image_vectors(table.column("features"))
            table = table.drop_columns(["features"])
        refused, used = {}, 0
        for index, row in enumerate(_rows(table)):
            if vectors is not None:
                count = sum(map(_holds_image, row["images"]))
                row["features"], used = vectors[used:used + count], used + count
            try:
                self.write(row)
            except Unwritable as e:
                refused[index] = str(e)
        return refused

    def write(self, row: dict) -> None:
        parts = members(row, self.pair_like(row["source"]), self.feature_shape)   # Unwritable before any byte
        size = sum(_HEADER + _padded(len(data)) for _, data in parts)
        if self._rows and (self._rows + 1 > self.limits.max_rows or self._bytes + size > self.limits.max_bytes):
            self._finish()
        if self._tar is None:
            self._tar = _OpenTar(self.directory / f"{TMP_PREFIX}{self._final_path().name}")
        self._tar.add(parts)
        self._rows += 1
        self._bytes += size

    def close(self) -> list[ShardInfo]:
        """Finish the last tar; returns every tar written, in order."""
        if self._tar is not None:
            self._finish()
        return list(self.finished)

    def abort(self) -> None:
        """Drop the tar in progress, keeping finished ones; never raises (another error is
        on its way out)."""
        if self._tar is not None:
            self._tar.discard()
        self._tar, self._rows, self._bytes = None, 0, 0

    def _final_path(self) -> Path:
        return self.directory / f"{self.prefix}-{len(self.finished):05d}{SUFFIX}"

    def _finish(self) -> None:
        digest = self._tar.close()
        self.finished.append(publish(self._tar.path, self._final_path(), self._rows, self.root, sha256=digest))
        self._tar, self._rows, self._bytes = None, 0, 0


class _OpenTar:
    """A tar being written: members as tarfile encodes them (TarInfo.tobuf: the same header
    bytes TarFile.addfile writes), hashed as they are written. Not TarFile itself: its addfile
    copies every TarInfo, keeps each in a list for the life of the archive and reads the data
    through a file object, twice the time of the header itself (measured: 51 vs 26 us per
    member), and the sha256 would need the file read again."""

    def __init__(self, path: Path):
        self.path = path
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "wb", buffering=_BUFFER)
        self.sha256 = hashlib.sha256()
        self.offset = 0

    def add(self, parts: list[tuple[str, bytes]]) -> None:
        with writing(self.path):
            for name, data in parts:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                self._write(data)
                self._write(tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))

    def close(self) -> str:
        """End the archive as TarFile.close does (two zero blocks, then zeros to a whole
        record); returns the file's sha256."""
        with writing(self.path):
            self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
            self._write(tarfile.NUL * (-self.offset % tarfile.RECORDSIZE))
            self.file.close()
        return self.sha256.hexdigest()

    def discard(self) -> None:
        """Never raises: another error is on its way out."""
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.offset += len(data)


_BUFFER = 1 << 20




def _rows(table: pa.Table):
    """The table's rows as dicts, a record batch at a time: never every image of a step at once."""
    for batch in table.to_batches(max_chunksize=_ROWS_AT_ONCE):
        yield from batch.to_pylist()


_ROWS_AT_ONCE = 256


def _image_vectors(column: pa.ChunkedArray) -> np.ndarray:
    """A features column (a list per row, null at text positions) as one vector per image,
    in row and position order."""
    per_image = pc.drop_null(pc.list_flatten(column)).combine_chunks()
    return per_image.flatten().to_numpy(zero_copy_only=False).reshape(len(per_image), per_image.type.list_size)


_HEADER = 512   # a ustar header block; PAX adds one more only for long or non-ASCII names


def _padded(size: int) -> int:
    return -(-size // 512) * 512


@dataclass(frozen=True)
class Writers:
    """UnitWriter's writer for a WebDataset export: samples as tars, status rows as Arrow
    (a table: `datasets.load_dataset("arrow", data_files="status/*.arrow")`)."""

    pair_like: frozenset
    feature_shape: tuple[int, ...] | None = None

    def __call__(self, directory: Path, prefix: str, record: str, limits: ShardLimits, root: Path):
        if record == "status":
            return arrow_writer(directory, prefix, record, limits, root)
        return TarShardWriter(directory, prefix, limits, root, pair_like=self.pair_like.__contains__,
                              feature_shape=self.feature_shape)


def card(body: str) -> str:
    """The dataset card: `viewer: false`, then `body`. The Hub's viewer (and `datasets`'
    webdataset builder) builds one table from the members of the first samples, and an
    interleaved export's samples differ in their members (`000.jpg` here, `jpg` + `txt`
    there, `times` null or not): it fails on them. Parquet is the export for `datasets`."""
    return "---\nviewer: false\n---\n" + body
