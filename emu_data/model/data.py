"""The training loader: corpus + feature shards -> packed Emu sequences, deterministic by seed.

1. `build_index` scans the corpus once (text and image-validity columns only, memory-mapped;
   no image bytes are read), tokenizes every text, and records per sample its shard, row,
   source, image count, first feature row, text token count and held-out flag. The held-out
   split is a hash of the key (of the video id for storyboard chunks, so one video never
   sits on both sides). The same pass counts BPE ids for the vocabulary.
2. `plan_rows` is the whole schedule as integers: sources drawn by the mixture weights, each
   source's training samples in a fresh seeded permutation per epoch, packed greedily into
   rows of `seq_len`. Batch b is rows [b*B, (b+1)*B): a function of (index, config, b) only,
   which is what makes resume exact.
3. `PackedBatches` (a torch IterableDataset) materialises batches from memory-mapped shards:
   worker w of W builds batches start+w, start+w+W, ...; torch's DataLoader hands them back
   round-robin, i.e. in order. With several training processes, process r of N builds only
   its contiguous slice `rank_rows(B, r, N)` of each batch's rows: every process plans the
   whole schedule (integers, cheap) and reads and packs only its share.

Sequence construction (Emu): a sample with one text (image-text pair, WebVid clip) puts the
text before or after its image(s) at random (seeded per draw); any other sample keeps its
stored order (MMC4 documents; storyboard frames already interleaved with subtitles by time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.ops import encoder
from emu_data.core import errors, files, manifest
from emu_data.core.corpus import refuse_export
from emu_data.model import tokenizer
from emu_data.model.config import DataConfig
from emu_data.model.tokenizer import BOS, END_IMG, EOS, IMG, PAD, Vocab
from emu_data.core.shards import ShardError, read_schema, read_shard
from emu_data import sources as registry

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_HASH_SPAN = 2 ** 32


class DataError(errors.UsageError):
    """Corpus and features that cannot be trained on together (the message says why)."""


# ---- the index ---------------------------------------------------------------------------

@dataclass
class Index:
    shards: list[str]          # relative shard paths, the same in corpus and features
    shard: np.ndarray          # per sample: int32 shard number
    row: np.ndarray            # int32 row in the shard
    source: np.ndarray         # int8 record-source id (registry.kind_id)
    images: np.ndarray         # int32 image count
    feature_row: np.ndarray    # int64 first feature row (in the feature shard)
    text_tokens: np.ndarray    # int32 BPE tokens of all its texts
    texts: np.ndarray          # int32 text positions
    heldout: np.ndarray        # bool
    feature_shape: list[int]   # per image: [tokens, width] (pooled: [1, width])
    precision: str             # bf16 | fp16 | fp32 (how the features are stored)
    identity: str              # corpus + features shards (sha256): the index is valid for these only

    def __len__(self) -> int:
        return len(self.shard)

    def lengths(self, queries: int, seq_len: int) -> np.ndarray:
        """Sequence length of each sample: <bos> texts ([IMG] z1..zQ [/IMG]) per image <eos>, capped."""
        full = 2 + self.text_tokens + self.images * (queries + 2)
        return np.minimum(full, seq_len).astype(np.int64)

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        meta = {"version": INDEX_VERSION, "shards": self.shards, "feature_shape": self.feature_shape,
                "precision": self.precision, "identity": self.identity}
        tmp = Path(path).with_suffix(".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Index":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("version") != INDEX_VERSION:
                raise DataError(f"{path}: an index of another version")
            return cls(**{k: data[k] for k in _ARRAYS}, shards=meta["shards"],
                       feature_shape=meta["feature_shape"], precision=meta["precision"], identity=meta["identity"])


_ARRAYS = ("shard", "row", "source", "images", "feature_row", "text_tokens", "texts", "heldout")


def heldout_key(key: str, fraction: float) -> bool:
    """Held out by a hash of the key; chunks of one item (yt_storyboard:ID:N) all together."""
    parts = key.split(":")
    kind = registry.kind(parts[0])
    group = ":".join(parts[:2]) if kind is not None and kind.chunked else key
    digest = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big")
    return digest < fraction * _HASH_SPAN


def identity(corpus: Path, features: Path) -> str:
    """The corpus and feature shards an index describes (their manifests' sha256 lists)."""
    listed = [[(s["path"], s["sha256"]) for s in manifest.read(d)["shards"]] for d in (corpus, features)]
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def build_index(corpus: Path, features: Path, config: DataConfig) -> tuple[Index, Counter]:
    """Scan the corpus (texts only) and check the features line up; returns the index and the
    BPE id counts of the training texts (for the vocabulary)."""
    corpus, features = Path(corpus), Path(features)
    shards = _paired_shards(corpus, features)
    feature_shape, precision = _feature_layout(features, shards)
    columns = {k: [] for k in _ARRAYS}
    counts: Counter = Counter()
    for number, name in enumerate(_progress(shards, "index")):
        try:
            _index_shard(corpus / name, features / name, number, config.holdout, columns, counts)
        except (ShardError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            if isinstance(e, DataError):
                raise
            # a shard that reads but whose values break the record (a changed byte in a string,
            # a null list): one line naming it, never a traceback
            raise DataError(f"{corpus / name}: not a usable corpus shard ({type(e).__name__}: {e}); "
                            f"run `emu-data validate {corpus}`") from None
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()}
    if not len(arrays["shard"]):
        raise DataError(f"{corpus}: the corpus has no samples")
    index = Index(shards=shards, feature_shape=feature_shape, precision=precision,
                  identity=identity(corpus, features), **arrays)
    return index, counts


def _paired_shards(corpus: Path, features: Path) -> list[str]:
    try:
        corpus_built, built = manifest.read(corpus), manifest.read(features)
    except (FileNotFoundError, manifest.ManifestError) as e:
        raise DataError(f"corpus and features must be finished emu-data directories: {e}") from None
    for directory, listed in ((corpus, corpus_built), (features, built)):
        refuse_export(directory, listed)   # its tars are not Arrow shards: say so, by name
    corpus_shards = [s["path"] for s in corpus_built["shards"]]
    if built["schema"]["name"] != "features":
        raise DataError(f"{features} is not a features directory (its manifest says {built['schema']['name']!r})")
    feature_shards = {s["path"] for s in built["shards"]}
    missing = [s for s in corpus_shards if s not in feature_shards]
    if missing:
        raise DataError(f"{features} has no features for {len(missing)} corpus shard(s), e.g. {missing[0]}: "
                        f"run `emu-data features {corpus} --out {features}`")
    return corpus_shards


def _feature_layout(features: Path, shards: list[str]) -> tuple[list[int], str]:
    layouts = set()
    for name in shards:
        meta = read_schema(features / name).metadata or {}
        layouts.add((meta.get(b"shape", b"").decode(), meta.get(b"dtype", b"").decode()))
    if len(layouts) != 1:
        raise DataError(f"{features}: feature shards disagree on shape/dtype: {sorted(layouts)}")
    shape_text, dtype = layouts.pop()
    try:
        shape = files.loads_json(shape_text or "null")
    except files.JsonError:
        shape = None
    precision = {v: k for k, v in encoder.DTYPE_NAME.items()}.get(dtype)
    if not isinstance(shape, list) or not 1 <= len(shape) <= 2 or precision is None:
        raise DataError(f"{features}: unknown feature layout shape={shape_text!r} dtype={dtype!r}")
    return (shape if len(shape) == 2 else [1, shape[0]]), precision


def _index_shard(corpus_path: Path, feature_path: Path, number: int, holdout: float,
                 columns: dict, counts: Counter) -> None:
    table = read_shard(corpus_path, "interleaved").select(["key", "source", "texts"])
    keys = table.column("key").to_pylist()
    texts = table.column("texts").to_pylist()
    try:
        kinds = [registry.kind_id(s) for s in table.column("source").to_pylist()]
    except registry.UnknownKind as e:
        raise DataError(f"{corpus_path}: {e}") from None
    images = np.array([sum(t is None for t in row) for row in texts], dtype=np.int32)
    feature_rows = read_shard(feature_path).num_rows
    if feature_rows != int(images.sum()):
        raise DataError(f"{feature_path}: {feature_rows} feature rows for {int(images.sum())} corpus images: "
                        "the features are stale, rerun `emu-data features`")
    heldout = np.array([heldout_key(k, holdout) for k in keys], dtype=bool)
    text_tokens = np.zeros(len(keys), dtype=np.int32)
    for i, row in enumerate(texts):
        for text in row:
            if text is None:
                continue
            ids = tokenizer.bpe_ids(text)
            text_tokens[i] += len(ids)
            if not heldout[i]:
                counts.update(ids)
    _check_keys(feature_path, keys, images)
    columns["shard"].append(np.full(len(keys), number, dtype=np.int32))
    columns["row"].append(np.arange(len(keys), dtype=np.int32))
    columns["source"].append(np.array(kinds, dtype=np.int8))
    columns["images"].append(images)
    columns["feature_row"].append((np.cumsum(images) - images).astype(np.int64))
    columns["text_tokens"].append(text_tokens)
    columns["texts"].append(np.array([sum(t is not None for t in row) for row in texts], dtype=np.int32))
    columns["heldout"].append(heldout)


def _check_keys(feature_path: Path, keys: list[str], images: np.ndarray) -> None:
    expected = pa.array(np.repeat(np.array(keys, dtype=object), images), pa.string())
    found = read_shard(feature_path).column("key").combine_chunks()
    if len(expected) and not pc.all(pc.equal(expected, found)).as_py():
        raise DataError(f"{feature_path}: feature rows are not in the corpus shard's image order: "
                        "the features are stale, rerun `emu-data features`")


def _progress(items, what: str):
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="shard", leave=False, disable=len(items) < 2)


# ---- the schedule -----------------------------------------------------------------------

def mixture(index: Index, weights: dict) -> tuple[list[int], np.ndarray]:
    """Sources with training samples and a positive weight, and their probabilities."""
    names = registry.kind_names()
    present = [s for s in range(len(names)) if np.any((index.source == s) & ~index.heldout)]
    chosen = [s for s in present if weights.get(names[s], 0) > 0]
    if not chosen:
        raise DataError(f"no training samples from a weighted source: corpus has "
                        f"{[names[s] for s in present]}, weights give {weights}")
    p = np.array([weights[names[s]] for s in chosen], dtype=np.float64)
    return chosen, p / p.sum()


def draws(index: Index, weights: dict, seed: int) -> Iterator[int]:
    """Training sample ids forever: a source by weight, then that source's next sample in a
    seeded permutation that is redrawn each epoch."""
    sources, p = mixture(index, weights)
    pools = [np.flatnonzero((index.source == s) & ~index.heldout) for s in sources]
    epochs, orders, cursor = [0] * len(sources), [None] * len(sources), [0] * len(sources)
    rng = np.random.default_rng([seed, 1])
    while True:
        for k in rng.choice(len(sources), size=4096, p=p):
            if orders[k] is None or cursor[k] == len(pools[k]):
                orders[k] = np.random.default_rng([seed, 2, sources[k], epochs[k]]).permutation(pools[k])
                epochs[k], cursor[k] = epochs[k] + 1, 0
            cursor[k] += 1
            yield int(orders[k][cursor[k] - 1])


def pack(samples: Iterator[int], lengths: np.ndarray, seq_len: int) -> Iterator[list[tuple[int, int]]]:
    """Greedy packing into rows of (draw number, sample id); a sample never straddles rows."""
    row, used = [], 0
    for draw, sample in enumerate(samples):
        n = int(lengths[sample])
        if row and used + n > seq_len:
            yield row
            row, used = [], 0
        row.append((draw, sample))
        used += n
    if row:
        yield row


def plan_rows(index: Index, config: DataConfig, queries: int, seed: int) -> Iterator[list[tuple[int, int]]]:
    return pack(draws(index, config.weights, seed), index.lengths(queries, config.seq_len), config.seq_len)


def heldout_rows(index: Index, config: DataConfig, queries: int, sources: list[int] | None = None):
    """Every held-out sample once, in index order, packed (for held-out loss)."""
    mask = index.heldout & (np.isin(index.source, sources) if sources is not None else True)
    return pack(iter(np.flatnonzero(mask).tolist()), index.lengths(queries, config.seq_len), config.seq_len)


# ---- reading samples ---------------------------------------------------------------------

class SampleReader:
    """Texts and features of one sample, from memory-mapped shards opened once per process."""

    def __init__(self, index: Index, corpus: Path, features: Path):
        self.index, self.corpus, self.features = index, Path(corpus), Path(features)
        self._tables: dict[tuple[str, int], pa.Table] = {}

    def _table(self, kind: str, shard: int) -> pa.Table:
        if (kind, shard) not in self._tables:
            root = self.corpus if kind == "corpus" else self.features
            self._tables[kind, shard] = read_shard(root / self.index.shards[shard])
        return self._tables[kind, shard]

    def key(self, sample: int) -> str:
        return self._table("corpus", int(self.index.shard[sample])).column("key")[int(self.index.row[sample])].as_py()

    def texts(self, sample: int) -> list[str | None]:
        """The sample's positions: text, or None where an image sits."""
        table = self._table("corpus", int(self.index.shard[sample]))
        return table.column("texts")[int(self.index.row[sample])].as_py()

    def image_features(self, sample: int) -> np.ndarray:
        """[images, tokens, width] float32."""
        table = self._table("features", int(self.index.shard[sample]))
        start, n = int(self.index.feature_row[sample]), int(self.index.images[sample])
        values = table.column("embedding").slice(start, n).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return encoder.as_float32(values, self.index.precision).reshape(n, *self.index.feature_shape)


def feature_statistics(index: Index, reader: "SampleReader", max_images: int = 4096,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per token and dimension mean and std of the training features, from a seeded subset."""
    candidates = np.flatnonzero(~index.heldout & (index.images > 0))
    if not len(candidates):
        raise DataError("no training sample has an image")
    order = np.random.default_rng([seed, 4]).permutation(candidates)
    picked, held = [], 0
    for sample in order.tolist():
        picked.append(reader.image_features(sample))
        held += len(picked[-1])
        if held >= max_images:
            break
    features = np.concatenate(picked).astype(np.float64)
    std = features.std(0)
    return features.mean(0).astype(np.float32), np.maximum(std, 1e-3 * std.mean() + 1e-8).astype(np.float32)


@dataclass
class Sequence:
    tokens: list[int]
    slots: list[tuple[int, int]]   # per position: (image number in the sample, query) or (-1, 0)
    images: int                    # images placed (a truncated sample may place fewer)


def build_sequence(texts: list[str | None], vocab: Vocab, queries: int, max_len: int,
                   rng: np.random.Generator | None, *, close: bool = True) -> Sequence:
    """Emu's sequence for one sample (see the module docstring), at most max_len positions."""
    items = [("text", t) if isinstance(t, str) else ("image", t) for t in _image_numbers(texts)]
    text_positions = [k for k, (kind, _) in enumerate(items) if kind == "text"]
    if rng is not None and len(text_positions) == 1 and len(items) > 1 and rng.random() < 0.5:
        text = items.pop(text_positions[0])   # a pair: its text goes first half of the time
        items = [text] + items if text_positions[0] else items + [text]
    seq = Sequence([BOS], [(-1, 0)], 0)
    for kind, value in items:
        room = max_len - len(seq.tokens)
        if kind == "text":
            ids = vocab.encode(value)[:room]
            seq.tokens += ids
            seq.slots += [(-1, 0)] * len(ids)
        elif room >= queries + 2:
            seq.tokens += [IMG] + [PAD] * queries + [END_IMG]
            seq.slots += [(-1, 0)] + [(value, q) for q in range(queries)] + [(-1, 0)]
            seq.images += 1
        if len(seq.tokens) >= max_len:
            break
    if close and len(seq.tokens) < max_len:
        seq.tokens.append(EOS)
        seq.slots.append((-1, 0))
    return seq


def _image_numbers(texts: list[str | None]) -> list[str | int]:
    """Texts as they are, each image position replaced by its number among the images."""
    out, n = [], 0
    for t in texts:
        out.append(t if t is not None else n)
        n += t is None
    return out


# ---- batches -----------------------------------------------------------------------------

def collate(rows: list[list[tuple[int, int]]], reader: SampleReader, vocab: Vocab, queries: int,
            seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Packed rows -> arrays: tokens/slot_image/slot_query [B, seq_len], features [N, T, E]."""
    tokens = np.full((len(rows), seq_len), PAD, dtype=np.int64)
    slot_image = np.full((len(rows), seq_len), -1, dtype=np.int64)
    slot_query = np.zeros((len(rows), seq_len), dtype=np.int64)
    features = []
    for b, row in enumerate(rows):
        at = 0
        for draw, sample in row:
            seq = build_sequence(reader.texts(sample), vocab, queries, seq_len - at,
                                 np.random.default_rng([seed, 3, draw]))
            image_base = sum(len(f) for f in features)
            if seq.images:
                features.append(reader.image_features(sample)[:seq.images])
            n = len(seq.tokens)
            tokens[b, at:at + n] = seq.tokens
            slot_image[b, at:at + n] = [image_base + i if i >= 0 else -1 for i, _ in seq.slots]
            slot_query[b, at:at + n] = [q for _, q in seq.slots]
            at += n
    width = reader.index.feature_shape
    stacked = np.concatenate(features) if features else np.zeros((0, *width), dtype=np.float32)
    return {"tokens": tokens, "slot_image": slot_image, "slot_query": slot_query, "features": stacked,
            "samples": np.array(sum(len(row) for row in rows))}


def batches_of(rows: Iterator[list], batch_size: int) -> Iterator[list[list]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def rank_rows(batch_size: int, rank: int, ranks: int) -> slice:
    """The rows of a global batch that process `rank` of `ranks` trains on: contiguous, sizes
    differing by at most one, every row in exactly one slice."""
    return slice(rank * batch_size // ranks, (rank + 1) * batch_size // ranks)


class PackedBatches:
    """Training batches from `start` on, as numpy dicts; a torch IterableDataset when wrapped
    by `loader` (kept free of torch here so the plan can be inspected without it). `part`
    (rank, ranks): only that process's slice of each batch (see `rank_rows`)."""

    def __init__(self, index: Index, corpus: Path, features: Path, vocab: Vocab, config: DataConfig,
                 queries: int, seed: int, start: int = 0, part: tuple[int, int] = (0, 1)):
        self.index, self.corpus, self.features, self.vocab = index, corpus, features, vocab
        self.config, self.queries, self.seed, self.start, self.part = config, queries, seed, start, part

    def iterate(self, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        reader = SampleReader(self.index, self.corpus, self.features)
        rows = plan_rows(self.index, self.config, self.queries, self.seed)
        mine = rank_rows(self.config.batch_size, *self.part)
        for b, batch in enumerate(batches_of(rows, self.config.batch_size)):
            if b >= self.start and (b - self.start) % workers == worker:
                yield collate(batch[mine], reader, self.vocab, self.queries, self.config.seq_len, self.seed)


def loader(batches: PackedBatches, *, pin_memory: bool = False):
    """A torch DataLoader over `batches` with config.workers processes, in batch order."""
    import torch

    class _Dataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            for arrays in batches.iterate(worker, workers):
                yield {k: torch.from_numpy(v) for k, v in arrays.items()}

    workers = batches.config.workers
    return torch.utils.data.DataLoader(_Dataset(), batch_size=None, num_workers=workers,
                                       pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                                       persistent_workers=False)
