"""`emu-data features`: EVA-CLIP embeddings of every corpus image, in shards aligned with the corpus.

    OUT/
      _config.json             resolved config (model, weights, tokens, precision, preprocessing)
      data/<corpus shard>      one feature shard per corpus shard, same relative name: a row per
                               image (key, image_index, embedding), in the corpus's order
      _manifest.json           written last

The CPU half (read the corpus shard memory-mapped, decode, resize, crop) runs as Ray Data
tasks; the GPU half (normalise, encode) in a pool of encoder actors, one model per GPU
(encoder.py). With no GPU the same pipeline runs one CPU encoder actor, slowly but the same.

Resumable per shard: a feature shard whose metadata names the same layout fingerprint and
the same corpus shard sha256 is kept; the others are recomputed. A rerun with another
model, weights, token layout, precision or preprocessing is refused (LayoutChanged).

Every corpus image gets a feature row (alignment is the contract), so an image that does not
decode, or is a decompression bomb (above Pillow's MAX_IMAGE_PIXELS), stops the run with a
FeatureError naming the shard, key and image; ingest never stores one, and
`emu-data validate --deep` lists any that got in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from emu_data.ops import encoder
from emu_data.core import errors, files, images, manifest, schema
from emu_data.engine import runlock, runtime
from emu_data.core.options import option, positive_int
from emu_data.core.corpus import CONFIG_NAME, DATA_DIR, LayoutChanged
from emu_data.core.shards import SHARD_SUFFIX, TMP_PREFIX, OneShard, ShardError, ShardInfo, file_sha256, read_schema, read_shard

log = logging.getLogger(__name__)

STAGE = "features"
META_PREFIX = "emu_data."


class FeatureError(errors.UsageError):
    """The features stage cannot run on this input (the message says why)."""


@dataclass(frozen=True)
class RunOptions:
    """How fast, not what: changing these never changes the features (fp32) or the layout."""

    batch_size: int = option(256, parse=positive_int, help="images per encoder call")
    gpus: int | None = option(None, parse=int,
                              help="encoder actors, one GPU each (default: every GPU Ray sees; 0: encode on CPU)")
    encoder_cpus: int | None = option(None, parse=positive_int,
                                      help="CPUs of the CPU encoder when there is no GPU (default: half the CPUs)")
    images_per_read: int = option(64, parse=positive_int, help="images per CPU decode task")

    def __post_init__(self):
        if self.batch_size < 1 or self.images_per_read < 1 or (self.gpus or 0) < 0:
            raise errors.UsageError("batch size and images per read must be positive, gpus >= 0")


# ---- plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one corpus shard: the work of one decode task."""

    shard: str      # relative path in the corpus (and in the output)
    start: int
    stop: int


def image_counts(path: Path) -> list[int]:
    """Non-null images per row of a corpus shard (validity bitmaps only: no image bytes read)."""
    images = read_shard(path).column("images")
    return [sum(1 for item in row.values.is_valid().to_pylist() if item) if row.is_valid else 0
            for row in images]


def chunks_of(shard: str, counts: list[int], per_read: int) -> list[Chunk]:
    out, start, held = [], 0, 0
    for row, n in enumerate(counts):
        held += n
        if held >= per_read:
            out.append(Chunk(shard, start, row + 1))
            start, held = row + 1, 0
    if held:
        out.append(Chunk(shard, start, len(counts)))
    return out


def layout(spec: encoder.ModelSpec, preprocess: encoder.Preprocess) -> dict:
    """What decides the features' values: a rerun with another layout is refused."""
    model = spec.model
    if Path(model).suffix == ".json":  # a config file: its content, not its path, decides
        model = f"{Path(model).stem}@{hashlib.sha256(Path(model).read_bytes()).hexdigest()[:16]}"
    weights = spec.pretrained
    if not spec.random_init and Path(weights).is_file():
        weights = f"{Path(weights).name}@{file_sha256(Path(weights))[:16]}"
    return {"model": model, "pretrained": weights, "tokens": spec.tokens, "precision": spec.precision,
            "seed": spec.seed if spec.random_init else None, "preprocess": preprocess.to_dict()}


# ---- the decode task -------------------------------------------------------------------

class ChunkReader:
    """Decode task: one chunk's images as uint8 pixels, with key, image_index and shard."""

    def __init__(self, corpus: str, preprocess: encoder.Preprocess):
        self.corpus, self.preprocess = corpus, preprocess
        self._steps = None

    def __call__(self, chunk: dict) -> dict:
        if self._steps is None:
            self._steps = encoder.pil_transform(self.preprocess)
        rows = read_shard(Path(self.corpus) / chunk["shard"]).slice(chunk["start"], chunk["stop"] - chunk["start"])
        keys, indexes, pixels = [], [], []
        for key, cells in zip(rows.column("key").to_pylist(), rows.column("images")):
            for index, image in enumerate(cells.values if cells.is_valid else []):
                if not image.is_valid:
                    continue
                try:
                    pixels.append(encoder.pixels(image["bytes"].as_py(), self._steps))
                except images.ImageRejected as e:
                    what = "is a decompression bomb" if e.reason == "decompression_bomb" else "does not decode"
                    raise FeatureError(f"{chunk['shard']}: {key} image {index} {what} ({e}); "
                                       "run `emu-data validate --deep` on the corpus") from None
                keys.append(key)
                indexes.append(index)
        height, width = self.preprocess.size
        return {"shard": np.array([chunk["shard"]] * len(keys), dtype=object),
                "key": np.array(keys, dtype=object), "image_index": np.array(indexes, dtype=np.int32),
                "pixels": np.stack(pixels) if pixels else np.zeros((0, height, width, 3), np.uint8)}


# ---- the stage -------------------------------------------------------------------------

def make_features(corpus: Path, out: Path, spec: encoder.ModelSpec, run: RunOptions = RunOptions(),
                  ray: runtime.RayOptions = runtime.RayOptions(), *, overwrite: bool = False) -> dict:
    """Embed every image of `corpus` into aligned feature shards under `out`; returns the manifest."""
    corpus, out = Path(corpus), Path(out)
    built = _corpus_manifest(corpus)
    if spec.random_init:
        log.warning("*** --pretrained none: %s with RANDOM weights; these features are for tests and "
                    "speed runs, not training (recorded in the shards' metadata) ***", spec.model)
    preprocess = encoder.preprocess_for(spec)
    fixed = layout(spec, preprocess)
    fingerprint = manifest.fingerprint(fixed)
    config = {"features": fixed, "model": asdict(spec), "run": asdict(run), "ray": asdict(ray),
              "corpus": str(corpus.resolve()), "corpus_fingerprint": built["fingerprint"]}
    with runlock.held(out):   # one live run per --out
        _prepare(out, fingerprint, config, overwrite)
        done, pending = _split_done(out, built["shards"], fingerprint)
        if pending:
            done.update(_compute(corpus, out, pending, spec, preprocess, run, ray, fingerprint))
        parts = [{"shards": [done[s["path"]].to_dict()], "status_shards": [],
                  "status_counts": {"ok": done[s["path"]].rows}, "source_counts": {}} for s in built["shards"]]
        result = manifest.build(record="features", stage=STAGE, config=config, fingerprint=fingerprint, parts=parts)
        manifest.write(out, result)
    return result


def _corpus_manifest(corpus: Path) -> dict:
    built = manifest.read(corpus)
    if built["schema"]["name"] != "interleaved":
        raise FeatureError(f"{corpus} holds {built['schema']['name']} records, not a corpus of interleaved samples")
    for entry in built["shards"]:
        _check_shard_path(corpus, entry["path"])
    return built


def _check_shard_path(corpus: Path, rel: str) -> None:
    """Feature shards are written at their corpus shard's path under OUT, so a manifest's path
    must stay a plain data/...arrow path: never absolute, never '..' (the manifest schema's
    pattern allows both)."""
    parts = PurePosixPath(rel).parts
    if (rel.startswith("/") or "\\" in rel or "\0" in rel or len(parts) < 2 or parts[0] != DATA_DIR
            or any(part in (".", "..") for part in parts) or not rel.endswith(SHARD_SUFFIX)):
        raise FeatureError(f"{corpus / manifest.MANIFEST_NAME}: shard path {rel[:200]!r} is not a "
                           f"{DATA_DIR}/...{SHARD_SUFFIX} path inside the corpus")


def _prepare(out: Path, fingerprint: str, config: dict, overwrite: bool) -> None:
    if overwrite:
        shutil.rmtree(out / DATA_DIR, ignore_errors=True)
        for name in (manifest.MANIFEST_NAME, CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / CONFIG_NAME
    if previous.exists():
        try:
            found = files.read_json(previous).get("fingerprint")
        except (files.UnreadableFile, AttributeError):   # AttributeError: JSON, not an object
            found = None
        if found != fingerprint:
            raise LayoutChanged(f"{out} holds features of another model, weights, token layout, precision "
                                "or preprocessing; use another --out, or --overwrite to replace them")
    manifest.write_json_atomic(previous, {**config, "fingerprint": fingerprint})
    (out / manifest.MANIFEST_NAME).unlink(missing_ok=True)  # the run is open until it is rewritten
    for stale in (out / DATA_DIR).rglob(f"{TMP_PREFIX}*"):
        stale.unlink()


def _split_done(out: Path, corpus_shards: list[dict], fingerprint: str) -> tuple[dict, list[dict]]:
    """Feature shards already made for these corpus shards (same layout, same corpus bytes)."""
    done, pending = {}, []
    for entry in corpus_shards:
        made = _made_earlier(out / entry["path"], entry, fingerprint)
        if made is None:
            pending.append(entry)
        else:
            done[entry["path"]] = made
    return done, pending


def _made_earlier(path: Path, entry: dict, fingerprint: str) -> ShardInfo | None:
    """The feature shard at `path` if a run of this layout made it from these corpus bytes and
    it still reads whole; None (make it again) otherwise."""
    meta = _metadata(path)
    if meta.get("fingerprint") != fingerprint or meta.get("corpus_sha256") != entry["sha256"]:
        return None
    try:
        rows = read_shard(path).num_rows
        return ShardInfo(entry["path"], rows, path.stat().st_size, file_sha256(path))
    except (ShardError, files.UnreadableFile, OSError):   # damaged since it was made
        return None


def _metadata(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        raw = read_schema(path).metadata or {}
    except ShardError:
        return {}
    return {k.decode().removeprefix(META_PREFIX): v.decode() for k, v in raw.items()
            if k.decode().startswith(META_PREFIX)}


def plan_inference(run: RunOptions, ray: runtime.RayOptions) -> runtime.InferencePlan:
    """One encoder actor per GPU; with none, one CPU actor holding half the CPUs (on a
    one-CPU cluster, half of it)."""
    runtime.ensure_ray(ray)
    have = runtime.cluster_gpus()
    gpus = have if run.gpus is None else run.gpus
    if gpus > have:
        raise FeatureError(f"asked for {gpus} GPU(s), the Ray cluster has {have}")
    if gpus:
        return runtime.InferencePlan(batch_size=run.batch_size, actors=gpus, gpus_per_actor=1, cpus_per_actor=1)
    total = runtime.cluster_cpus()
    if total < 2 and not run.encoder_cpus:
        # One CPU: the encoder actor and the decode tasks share it. Whole CPUs each would
        # deadlock (the actor holds the only CPU, the reads it waits on never start).
        return runtime.InferencePlan(batch_size=run.batch_size, actors=1, cpus_per_actor=0.5, cpus_per_read=0.5)
    cpus = run.encoder_cpus or total // 2
    if cpus >= total:
        raise FeatureError(f"--encoder-cpus {cpus} leaves none of the cluster's {total} CPU(s) to decode images")
    return runtime.InferencePlan(batch_size=run.batch_size, actors=1, cpus_per_actor=cpus)


def _compute(corpus: Path, out: Path, pending: list[dict], spec, preprocess, run: RunOptions, ray,
             fingerprint: str) -> dict[str, ShardInfo]:
    plan = plan_inference(run, ray)
    if not plan.gpus_per_actor:
        log.warning("no GPU: encoding on %d CPU(s); expect a few images per second for EVA models",
                    plan.cpus_per_actor)
    counts = {e["path"]: image_counts(corpus / e["path"]) for e in pending}
    chunks = [c for e in pending for c in chunks_of(e["path"], counts[e["path"]], run.images_per_read)]
    threads = None if plan.gpus_per_actor else int(plan.cpus_per_actor)
    batches = runtime.batch_inference(
        [asdict(c) for c in chunks], ChunkReader(str(corpus), preprocess), encoder.Encoder,
        (spec, preprocess, None, threads), plan, ray) if chunks else iter(())
    writer = _ShardSeries(out, spec, preprocess, fingerprint)
    done = {}
    with tqdm(total=sum(map(sum, counts.values())), desc="features", unit="img", disable=None) as bar:
        rows = _rows(batches)
        for entry in pending:
            done[entry["path"]] = writer.write(entry, sum(counts[entry["path"]]), rows, bar)
    return done


def _rows(batches: Iterator[dict]) -> Iterator[tuple[dict, int, int]]:
    """(batch, start, stop) pieces; the consumer takes as many rows as it needs from each."""
    for batch in batches:
        yield batch, 0, len(batch["key"])


class _ShardSeries:
    """Writes the feature shards one after the other, as rows stream in in corpus order."""

    def __init__(self, out: Path, spec: encoder.ModelSpec, preprocess: encoder.Preprocess, fingerprint: str):
        self.out, self.spec, self.preprocess, self.fingerprint = out, spec, preprocess, fingerprint
        self.shape: list[int] | None = None
        self._left: tuple[dict, int, int] | None = None

    def write(self, entry: dict, images: int, rows: Iterator, bar) -> ShardInfo:
        need, shard = images, None
        try:
            while need:
                batch, start, stop = self._left or next(rows)
                take = min(need, stop - start)
                piece = {k: v[start:start + take] for k, v in batch.items()}
                if set(piece["shard"]) != {entry["path"]}:
                    raise FeatureError(f"encoder output out of order: expected {entry['path']}")
                shard = shard or OneShard(self.out / entry["path"], self._schema(entry, piece), self.out)
                shard.write(self._table(piece, shard))
                self._left = (batch, start + take, stop) if start + take < stop else None
                need -= take
                bar.update(take)
            shard = shard or OneShard(self.out / entry["path"], self._schema(entry, None), self.out)
            return shard.close()
        except BaseException:
            if shard is not None:
                shard.abort()
            raise

    def _schema(self, entry: dict, piece: dict | None) -> pa.Schema:
        if self.shape is None:
            self.shape = (list(piece["embedding"].shape[1:]) if piece is not None
                          else encoder.embedding_shape(self.spec, self.preprocess))
        meta = {"model": self.spec.model, "pretrained": self.spec.pretrained, "tokens": self.spec.tokens,
                "shape": json.dumps(self.shape), "dtype": encoder.DTYPE_NAME[self.spec.precision],
                "preprocess": json.dumps(self.preprocess.to_dict())}
        ours = {"fingerprint": self.fingerprint, "corpus_shard": entry["path"], "corpus_sha256": entry["sha256"]}
        if self.spec.random_init:
            ours["random_init_seed"] = str(self.spec.seed)
        return schema.arrow_schema(
            "features", params={"storage": encoder.STORAGE[self.spec.precision], "size": math.prod(self.shape)},
            metadata={**meta, **{META_PREFIX + k: v for k, v in ours.items()}})

    def _table(self, piece: dict, shard: OneShard) -> pa.Table:
        size = math.prod(self.shape)
        flat = np.ascontiguousarray(piece["embedding"]).reshape(-1)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat), size)
        return pa.table({"key": pa.array(list(piece["key"]), pa.string()),
                         "image_index": pa.array(piece["image_index"], pa.int32()),
                         "embedding": embedding}, schema=shard.schema)
