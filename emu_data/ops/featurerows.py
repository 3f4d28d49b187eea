"""A features directory (`emu-data features`) read beside the corpus it was made from.

Feature shards are named after the corpus shards and hold a row per corpus image, in the
corpus's order (features.py). `plan` checks, before any unit runs, that a features directory
belongs to this corpus (every corpus shard has its feature shard, made from the same bytes,
all of one shape and dtype); `ShardFeatures` walks one feature shard beside its corpus shard
a record batch at a time, checking keys and image positions as it goes, and gives each
batch its embeddings as an Arrow column parallel to `images`.

bfloat16 features (stored as their uint16 bits) come out as float32, exactly: neither
numpy's .npy nor Parquet has a bfloat16.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import errors, files, manifest
from emu_data.core.batchcheck import lengths, mask
from emu_data.core.shards import ShardError, read_schema, read_shard
from emu_data.ops import encoder

_DTYPES = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32}
_PRECISION = {name: precision for precision, name in encoder.DTYPE_NAME.items()}
ENCODER_KEYS = ("model", "pretrained", "tokens", "shape", "dtype", "preprocess")


class FeaturesMismatch(errors.UsageError):
    """Features that are not this corpus's (the message says which shard and how)."""


@dataclass(frozen=True)
class FeaturesInput:
    """A checked features directory: where, and the layout every shard has."""

    path: str
    shape: tuple[int, ...]
    dtype: str              # as stored: float16 | bfloat16 | float32

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def numpy_dtype(self):
        """What the export holds: float16, or float32 (bfloat16 widened)."""
        return _DTYPES[self.dtype]

    @property
    def storage(self) -> str:
        return np.dtype(self.numpy_dtype).name


def plan(directory: Path, corpus: Path, corpus_shards: list[dict]) -> tuple[FeaturesInput, dict, dict]:
    """Check `directory` holds the features of these corpus shards; returns the input, the
    encoder's metadata (model, weights, tokens, shape, dtype, preprocess, random init) and
    {corpus shard path: feature shard sha256}."""
    directory = Path(directory)
    built = _manifest(directory, corpus)
    listed = {s["path"]: s for s in built["shards"]}
    layouts, metadata, digests = set(), {}, {}
    for shard in corpus_shards:
        entry = listed.get(shard["path"])
        if entry is None:
            raise FeaturesMismatch(f"{directory} has no features for corpus shard {shard['path']}: "
                                   f"run `emu-data features {corpus} --out {directory}`")
        metadata = _metadata(directory / shard["path"])
        if metadata.get("emu_data.corpus_sha256") != shard["sha256"]:
            raise FeaturesMismatch(f"{directory / shard['path']} was made from other bytes than {corpus / shard['path']}: "
                                   f"the features are stale, rerun `emu-data features {corpus} --out {directory}`")
        layouts.add((metadata.get("shape"), metadata.get("dtype")))
        digests[shard["path"]] = entry["sha256"]
    if len(layouts) > 1:
        raise FeaturesMismatch(f"{directory}: feature shards disagree on shape/dtype: {sorted(map(str, layouts))}")
    shape, dtype = layouts.pop() if layouts else ("[1]", "float32")
    about = {k: metadata.get(k) for k in ENCODER_KEYS}
    about["random_init"] = "emu_data.random_init_seed" in metadata or metadata.get("pretrained") == encoder.NO_WEIGHTS
    return FeaturesInput(str(directory.resolve()), _shape(directory, shape), _dtype(directory, dtype)), about, digests


def _manifest(directory: Path, corpus: Path) -> dict:
    try:
        built = manifest.read(directory)
    except (FileNotFoundError, manifest.ManifestError) as e:
        raise FeaturesMismatch(f"--features {directory}: not a finished features directory ({e}); "
                               f"make one with `emu-data features {corpus} --out {directory}`") from None
    if built["schema"]["name"] != "features":
        raise FeaturesMismatch(f"--features {directory} holds {built['schema']['name']} records, not features")
    return built


def _metadata(path: Path) -> dict:
    try:
        raw = read_schema(path).metadata or {}
    except ShardError as e:
        raise FeaturesMismatch(str(e)) from None
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}


def _shape(directory: Path, text: str | None) -> tuple[int, ...]:
    try:
        shape = files.loads_json(text or "null", "shape")
    except files.JsonError:
        shape = None
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(type(n) is int and n > 0 for n in shape)):
        raise FeaturesMismatch(f"{directory}: unknown feature shape {text!r}")
    return tuple(shape)


def _dtype(directory: Path, name: str | None) -> str:
    if name not in _DTYPES:
        raise FeaturesMismatch(f"{directory}: unknown feature dtype {name!r}")
    return name


class ShardFeatures:
    """One feature shard, consumed batch by batch alongside its corpus shard."""

    def __init__(self, features: FeaturesInput, shard: str):
        self.features, self.shard = features, shard
        self.path = Path(features.path) / shard
        self.table = read_shard(self.path)
        self.used = 0
        names, embedding = self.table.schema.names, self.table.schema.field("embedding").type \
            if "embedding" in self.table.schema.names else None
        if not {"key", "image_index"} <= set(names) or not pa.types.is_fixed_size_list(embedding) \
                or embedding.list_size != features.size:
            raise FeaturesMismatch(f"{self.path}: not a feature shard of {features.size} values per image")

    def column(self, batch: pa.Table, keep: np.ndarray) -> pa.ListArray:
        """The embeddings of this batch's images (the next feature rows, checked against the
        batch's keys and image positions), for the rows kept: a list per row parallel to its
        images, null where a position holds text."""
        images = batch.column("images")   # chunked as it is: only validity and lengths are read
        flat = pc.list_flatten(images)
        holds = mask(pc.is_valid(flat))   # what `features` encoded: every image struct
        rows = np.repeat(np.arange(batch.num_rows), lengths(images))
        vectors = self._take(batch.column("key"), rows, holds, _within(images, rows))
        kept = keep[rows]
        place = np.full(len(rows), -1, dtype=np.int64)
        place[holds] = np.arange(int(holds.sum()))
        has_image = holds & mask(pc.is_valid(pc.struct_field(flat, "bytes")))
        place[~has_image] = -1
        place = place[kept]
        values = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.features.size)
        per_position = values.take(pa.array(place, mask=place < 0))
        sizes = lengths(images)[keep]
        offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
        return pa.ListArray.from_arrays(offsets, per_position)

    def close(self) -> None:
        if self.used != self.table.num_rows:
            raise FeaturesMismatch(f"{self.path}: {self.table.num_rows} feature rows for {self.used} corpus images: "
                                   "the features are stale, rerun `emu-data features`")

    def _take(self, keys: pa.ChunkedArray, rows: np.ndarray, holds: np.ndarray, within: np.ndarray) -> np.ndarray:
        n = int(holds.sum())
        if self.used + n > self.table.num_rows:
            raise FeaturesMismatch(f"{self.path}: fewer feature rows than the corpus shard has images: "
                                   "the features are stale, rerun `emu-data features`")
        part = self.table.slice(self.used, n)
        expected_keys = keys.combine_chunks().take(pa.array(rows[holds]))
        if n and not (pc.all(pc.equal(part.column("key").combine_chunks(), expected_keys)).as_py()
                      and np.array_equal(part.column("image_index").to_numpy(), within[holds])):
            raise FeaturesMismatch(f"{self.path}: feature rows {self.used}..{self.used + n} are not the corpus "
                                   "shard's images in order: the features are stale, rerun `emu-data features`")
        self.used += n
        return self._as_numpy(part.column("embedding").combine_chunks())

    def _as_numpy(self, embedding: pa.FixedSizeListArray) -> np.ndarray:
        flat = embedding.flatten().to_numpy(zero_copy_only=False)
        if self.features.dtype == "bfloat16":
            flat = encoder.as_float32(flat, _PRECISION["bfloat16"])
        return np.asarray(flat, dtype=self.features.numpy_dtype).reshape(len(embedding), self.features.size)


def _within(lists, rows: np.ndarray) -> np.ndarray:
    """Each flattened element's position in its own list."""
    sizes = lengths(lists)
    return np.arange(len(rows)) - (np.cumsum(sizes) - sizes)[rows]


def short(about: dict) -> str:
    """The encoder in a few words: model (a config file by its name), shape, weights."""
    model = str(about.get("model"))
    model = Path(model).name if model.endswith(".json") else model
    weights = "RANDOM INIT" if about.get("random_init") else about.get("pretrained")
    return f"{model} {about.get('shape')} {weights}"


def describe(about: dict) -> str:
    """The encoder's metadata as the dataset card states it."""
    weights = "random init (NOT pretrained: for tests and speed runs only)" if about.get("random_init") \
        else about.get("pretrained")
    preprocess = json.loads(about["preprocess"]) if about.get("preprocess") else {}
    return (f"model {about.get('model')}, weights {weights}, tokens {about.get('tokens')}, shape per image "
            f"{about.get('shape')}, stored as {about.get('dtype')}, preprocessing {json.dumps(preprocess, sort_keys=True)}")
