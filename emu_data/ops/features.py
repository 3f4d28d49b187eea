"""`emu-data features`: EVA-CLIP embeddings of every corpus image, in shards aligned with the corpus.

    OUT/
      _config.json             resolved config (model, weights, tokens, precision, preprocessing)
      data/<corpus shard>      one feature shard per corpus shard, same relative name: a row per
                               image (key, image_index, embedding), in the corpus's order
      _manifest.json           written last

A corpus shard is the unit of work: one encoder actor (one model per GPU, encoder.py) takes
it whole, has its images decoded by CPU tasks it owns (read the shard memory-mapped, decode,
resize, crop: a chunk of rows each, a few in flight), encodes them (normalise, forward) in
batches of --batch-size that never cross into another shard, and writes the feature shard
itself, a record batch per chunk, to a temporary file renamed into place. The driver gets
back a few small messages per shard (rows written, then path, rows, bytes, sha256) and
writes the manifest: no embedding passes through it. A shard's bytes depend on that shard
and the options alone, so a shard remade on resume equals the one a whole run makes.
With no GPU the same pipeline runs one CPU encoder actor, slowly but the same.

Resumable per shard: a feature shard whose metadata names the same layout fingerprint and
the same corpus shard sha256 is kept; the others are recomputed. A rerun with another
model, weights, token layout, precision or preprocessing is refused (LayoutChanged).

Every corpus image gets a feature row (alignment is the contract), so an image that does not
decode, or is a decompression bomb (above Pillow's MAX_IMAGE_PIXELS), stops the run with a
FeatureError naming the shard, key and image; ingest never stores one, and
`emu-data validate --deep` lists any that got in.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from emu_data.ops import encoder
from emu_data.core import errors, files, images, manifest, schema
from emu_data.engine import runlock, runtime
from emu_data.core.options import option, positive_int
from emu_data.core.corpus import CONFIG_NAME, DATA_DIR, LayoutChanged, refuse_export, unit_writing, writers_lock
from emu_data.core.shards import SHARD_SUFFIX, TMP_PREFIX, OneShard, ShardError, ShardInfo, file_sha256, read_schema, read_shard

log = logging.getLogger(__name__)

STAGE = "features"
META_PREFIX = "emu_data."


class FeatureError(errors.UsageError):
    """The features stage cannot run on this input (the message says why)."""


@dataclass(frozen=True)
class RunOptions:
    """How fast, not what: never the layout, so a rerun with others keeps what is made. The
    values only up to float rounding: a batch of another size may round the last bits of an
    fp32 matmul differently (measured: 1e-6 relative, EVA02-B-16 on CPU); images_per_read
    sets the record batches (one per decode chunk), so bytes, not values."""

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
        run_id = _prepare(out, fingerprint, config, overwrite)
        done, pending = _split_done(out, built["shards"], fingerprint)
        if pending:
            done.update(_compute(corpus, out, pending, spec, preprocess, run, ray, fingerprint, run_id))
        parts = [{"shards": [done[s["path"]].to_dict()], "status_shards": [],
                  "status_counts": {"ok": done[s["path"]].rows}, "source_counts": {}} for s in built["shards"]]
        result = manifest.build(record="features", stage=STAGE, config=config, fingerprint=fingerprint, parts=parts)
        manifest.write(out, result)
    return result


def _corpus_manifest(corpus: Path) -> dict:
    built = manifest.read(corpus)
    refuse_export(corpus, built)
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


def _prepare(out: Path, fingerprint: str, config: dict, overwrite: bool) -> str:
    """Make `out` ready for a run; returns the run's id. The encoder actors write the shards,
    so this waits for any a killed run left writing (the writers' lock, corpus.py), then
    claims `out` for this run: an actor of another run refuses to start writing."""
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    with writers_lock(out, exclusive=True) as lock:
        lock.claim(run_id)
        _prepare_locked(out, fingerprint, config, overwrite)
    return run_id


def _prepare_locked(out: Path, fingerprint: str, config: dict, overwrite: bool) -> None:
    if overwrite:
        shutil.rmtree(out / DATA_DIR, ignore_errors=True)
        for name in (manifest.MANIFEST_NAME, CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
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
    one-CPU cluster, half of it). Each shard an actor works on keeps enough decode tasks in
    flight to use the CPUs the actors leave, and one more."""
    runtime.ensure_ray(ray)
    have = runtime.cluster_gpus()
    gpus = have if run.gpus is None else run.gpus
    if gpus > have:
        raise FeatureError(f"asked for {gpus} GPU(s), the Ray cluster has {have}")
    total = runtime.cluster_cpus()
    if gpus:
        plan = runtime.InferencePlan(batch_size=run.batch_size, actors=gpus, gpus_per_actor=1, cpus_per_actor=1)
    elif total < 2 and not run.encoder_cpus:
        # One CPU: the encoder actor and the decode tasks share it. Whole CPUs each would
        # deadlock (the actor holds the only CPU, the reads it waits on never start).
        plan = runtime.InferencePlan(batch_size=run.batch_size, actors=1, cpus_per_actor=0.5, cpus_per_read=0.5)
    else:
        cpus = run.encoder_cpus or total // 2
        if cpus >= total:
            raise FeatureError(f"--encoder-cpus {cpus} leaves none of the cluster's {total} CPU(s) to decode images")
        plan = runtime.InferencePlan(batch_size=run.batch_size, actors=1, cpus_per_actor=cpus)
    free = max(total - plan.actors * plan.cpus_per_actor, plan.cpus_per_read)
    return replace(plan, reads_per_unit=math.ceil(free / plan.cpus_per_read / plan.actors) + 1)


@dataclass(frozen=True)
class Unit:
    """One pending corpus shard: read, encoded and written whole by one encoder actor."""

    shard: str                  # relative path in the corpus (and in the output)
    sha256: str                 # the corpus shard's, recorded in the feature shard
    chunks: tuple[Chunk, ...]   # its decode tasks, in order
    images: int


def _compute(corpus: Path, out: Path, pending: list[dict], spec, preprocess, run: RunOptions, ray,
             fingerprint: str, run_id: str) -> dict[str, ShardInfo]:
    """The pending shards, each made by the actor that encodes it: this process sees only
    what the actors say (rows written, then the shard's path, rows, bytes and sha256)."""
    plan = plan_inference(run, ray)
    if not plan.gpus_per_actor:
        log.warning("no GPU: encoding on %d CPU(s); expect a few images per second for EVA models",
                    plan.cpus_per_actor)
    units = [_unit(corpus, entry, run.images_per_read) for entry in pending]
    threads = None if plan.gpus_per_actor else int(plan.cpus_per_actor)
    args = (str(corpus), str(out), spec, preprocess, fingerprint, plan, threads, run_id)
    done = {}
    with tqdm(total=sum(u.images for u in units), desc="features", unit="img", disable=None) as bar:
        for unit, said in runtime.inference_units(units, ShardEncoder, args, plan, ray):
            if "images" in said:
                bar.update(said["images"])
            else:
                done[unit.shard] = _made(unit, ShardInfo(**said["shard"]))
    return done


def _unit(corpus: Path, entry: dict, per_read: int) -> Unit:
    counts = image_counts(corpus / entry["path"])
    return Unit(entry["path"], entry["sha256"], tuple(chunks_of(entry["path"], counts, per_read)), sum(counts))


def _made(unit: Unit, info: ShardInfo) -> ShardInfo:
    """The alignment check the driver can make without the rows: one row per image."""
    if info.path != unit.shard or info.rows != unit.images:
        raise FeatureError(f"{unit.shard}: the encoder wrote {info.rows} rows to {info.path} "
                           f"for {unit.images} images")
    return info


class ShardEncoder:
    """Worker of an encoder actor: __init__ loads the model once (in the background);
    __call__(unit) decodes one corpus shard in CPU tasks, encodes its images in batches of
    batch_size and writes its feature shard (tmp + rename), yielding small messages only:
    {"images": n} per record batch written, then {"shard": ShardInfo dict}. The embeddings
    never leave this process but into the shard. An actor runs plan.units_per_actor units at
    once, taking turns on the model (Encoder holds a lock).

    From __init__ to close() (or its death) it holds the writers' lock of `out` (shared),
    for run `run_id` only (StaleRun otherwise), as a corpus stage's unit writer does: held
    by the actor rather than by each unit, since closing any descriptor of the lock file
    drops every POSIX lock its process holds on it, the other unit's too."""

    def __init__(self, corpus: str, out: str, spec: encoder.ModelSpec, preprocess: encoder.Preprocess,
                 fingerprint: str, plan: runtime.InferencePlan, threads: int | None = None,
                 run_id: str | None = None):
        self.reader, self.out, self.plan = ChunkReader(corpus, preprocess), Path(out), plan
        self.spec, self.preprocess, self.fingerprint = spec, preprocess, fingerprint
        self._writing = contextlib.ExitStack()
        self._writing.enter_context(unit_writing(self.out, run_id))
        # Loaded in the background, so that the first unit's decode tasks start meanwhile:
        # each side spends seconds importing torch, and one after the other they added up
        # on every run (Ray Data had started both at once).
        self._loading = concurrent.futures.ThreadPoolExecutor(1).submit(self._load, spec, preprocess, threads)

    @staticmethod
    def _load(spec: encoder.ModelSpec, preprocess: encoder.Preprocess, threads: int | None):
        model = encoder.Encoder(spec, preprocess, None, threads)
        return model, model.embedding_shape()

    def __call__(self, unit: Unit) -> Iterator[dict]:
        reads = runtime.read_ahead(self.reader, [asdict(c) for c in unit.chunks], self.plan)
        model, shape = self._loading.result()
        shard = None
        try:
            shard = OneShard(self.out / unit.shard, self.schema(unit, shape), self.out)
            for table in _tables(reads, len(unit.chunks), model, self.plan.batch_size, shard.schema):
                shard.write(table)
                yield {"images": table.num_rows}
            yield {"shard": shard.close().to_dict()}
        except BaseException:
            if shard is not None:
                shard.abort()
            raise

    def close(self) -> None:
        self._writing.close()

    def schema(self, unit: Unit, shape: list[int]) -> pa.Schema:
        spec = self.spec
        meta = {"model": spec.model, "pretrained": spec.pretrained, "tokens": spec.tokens,
                "shape": json.dumps(shape), "dtype": encoder.DTYPE_NAME[spec.precision],
                "preprocess": json.dumps(self.preprocess.to_dict())}
        ours = {"fingerprint": self.fingerprint, "corpus_shard": unit.shard, "corpus_sha256": unit.sha256}
        if spec.random_init:
            ours["random_init_seed"] = str(spec.seed)
        return schema.arrow_schema(
            "features", params={"storage": encoder.STORAGE[spec.precision], "size": math.prod(shape)},
            metadata={**meta, **{META_PREFIX + k: v for k, v in ours.items()}})


def _tables(reads: Iterator[dict], chunks: int, model: encoder.Encoder, batch_size: int,
            shard_schema: pa.Schema) -> Iterator[pa.Table]:
    """A shard's rows in corpus order, a table per decode chunk (`reads`, `chunks` of them);
    the encoder batches run across chunks, never across shards, so a shard's bytes depend
    on it alone."""
    decoded: collections.deque = collections.deque()   # chunks read, not yet written
    pixels, embeddings = _Rows(), _Rows()
    for done, chunk in enumerate(reads, 1):
        pixels.add(chunk.pop("pixels"))
        decoded.append(chunk)
        while len(pixels) >= batch_size or (len(pixels) and done == chunks):
            embeddings.add(model({"pixels": pixels.take(batch_size)})["embedding"])
            while decoded and len(embeddings) >= len(decoded[0]["key"]):
                chunk = decoded.popleft()
                yield _table(chunk, embeddings.take(len(chunk["key"])), shard_schema)


def _table(chunk: dict, embedding: np.ndarray, shard_schema: pa.Schema) -> pa.Table:
    flat = np.ascontiguousarray(embedding).reshape(-1)
    size = shard_schema.field("embedding").type.list_size
    return pa.table({"key": pa.array(list(chunk["key"]), pa.string()),
                     "image_index": pa.array(chunk["image_index"], pa.int32()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat), size)}, schema=shard_schema)


class _Rows:
    """Arrays queued by rows: add() at the back, take(n) the first n rows as one array."""

    def __init__(self):
        self.parts: collections.deque = collections.deque()
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def add(self, array: np.ndarray) -> None:
        if len(array):
            self.parts.append(array)
            self.rows += len(array)

    def take(self, n: int) -> np.ndarray:
        n, out = min(n, self.rows), []
        self.rows -= n
        while n:
            part = self.parts.popleft()
            if len(part) > n:
                self.parts.appendleft(part[n:])
                part = part[:n]
            out.append(part)
            n -= len(part)
        return out[0] if len(out) == 1 else np.concatenate(out)
