"""The passes of `emu-data mix`: Ray tasks over one input shard or one hash partition each,
spilling under OUT/_work so that the driver holds counts and file lists, never samples.

    _work/layout.json         what the files below were made for (else they are cleared)
    _work/shards.json         the input shards in input order (a shard's ordinal indexes it)
    _work/scan/NNNNNN.arrow   per input shard: its entries, partitioned by key hash
    _work/key/NNNNNN.arrow    per key partition: entries with a first-seen key, by image digest
    _work/image/NNNNNN.arrow  per image partition: entries with a first-seen image, by URL
    _work/url/NNNNNN.arrow    per URL partition: the unique entries, by output-order hash range
    _work/dropped/KIND-NNNNNN.arrow  duplicates found by that pass in its partition
    _work/route/NNNNNN.arrow  per output partition: its selected entries' unit and rank, by the
                              gather group of their input shard
    _work/status/NNNNNN.arrow per output partition: its left-out entries' status rows
    _work/rows/NNNNNN.arrow   per gather group (input shards in order, GATHER_BYTES at most):
                              their selected samples sorted by output unit (.npy: unit starts)
    *.npz beside a pass file  the task's small result, so a resumed pass skips the task

An entry is one input sample: its position (shard ordinal << 32 | row: input order), key,
source, normalised URL, image digest and size. "First occurrence wins" is decided inside a
partition by position, so it is the same whichever worker or node ran what.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import files, partitions, records, schema
from emu_data.core.corpus import UnitWriter
from emu_data.core.shards import read_shard, writing
from emu_data.inspect import validate

WORK = "_work"
VERSION = 2   # of the files under _work: 2 added route/ and rows/ (a rerun of another version starts over)
ENTRY = pa.schema([("pos", pa.int64()), ("key", pa.string()), ("source", pa.string()),
                   ("url", pa.string()), ("image", pa.binary(32)), ("size", pa.int64())])
ROUTE = pa.schema([("pos", pa.int64()), ("part", pa.int64()), ("unit", pa.int64()), ("rank", pa.int64())])
SAMPLE = schema.arrow_schema("interleaved")
GATHERED = SAMPLE.append(pa.field("pos", pa.int64())).append(pa.field("rank", pa.int64()))
UNIQUE = ENTRY.append(pa.field("select", pa.uint64())).append(pa.field("order", pa.uint64()))
DROPPED = pa.schema([("pos", pa.int64()), ("key", pa.string()), ("source", pa.string()),
                     ("reason", pa.string()), ("message", pa.string())])
BUCKET_BITS = 16   # selection histogram: 65,536 buckets of the selection hash per source
GATHER_BYTES = 256 * 2**20   # input bytes per gather task: it holds about twice that at its peak
WRITE_BATCH = 1024           # output rows turned into Python objects at a time


def position(ordinal: int, row: int) -> int:
    return ordinal << 32 | row


@dataclass(frozen=True)
class Pass:
    """Where the passes read and write, and into how many partitions (the same for every pass)."""

    work: str
    parts: int

    def file(self, kind: str, i: int) -> Path:
        return Path(self.work) / kind / f"{i:06d}.arrow"

    def files(self, kind: str, count: int) -> list[Path]:
        return [self.file(kind, i) for i in range(count)]


def _done(path: Path) -> Path:
    return path.with_suffix(".npz")


def _cached(path: Path, compute) -> dict:
    """A pass task's result: computed (writing `path` and its .npz), or read back on resume."""
    done = _done(path)
    if path.exists() and done.exists():
        with np.load(done, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}
    result = compute()
    tmp = done.with_name(f".tmp-{done.name}")
    with open(tmp, "wb") as f:
        np.savez(f, **result)
    tmp.replace(done)
    return result


# ---- 1. scan: entries of one input shard, by key hash ----------------------------------

@dataclass(frozen=True)
class ScanJob:
    where: Pass
    ordinal: int
    path: str
    listed: dict   # the shard's manifest entry


def scan(job: ScanJob) -> dict:
    """{'rows'} written to scan/NNNNNN.arrow; or {'problems'} (nothing written) when the file
    is not what its manifest lists: hashed before it is parsed, since a changed byte inside
    an image still parses and decodes and only the sha256 tells."""
    out = job.where.file("scan", job.ordinal)
    if out.exists() and _done(out).exists():
        return _cached(out, None)
    problems = validate.listed_shard_problems(Path(job.path), job.listed)
    if problems:
        return {"problems": problems}
    return _cached(out, lambda: _scan_into(out, job))


def _scan_into(out: Path, job: ScanJob) -> dict:
    table = read_shard(Path(job.path), "interleaved")
    n = table.num_rows
    keys = table.column("key").to_pylist()
    metas = table.column("meta").to_pylist()
    digests, image_bytes = _image_digests(table.column("images").combine_chunks(), n)
    texts = pc.list_value_length(table.column("texts")).to_numpy(zero_copy_only=False)
    sizes = image_bytes + np.array([len(m or "") for m in metas], dtype=np.int64) + texts.astype(np.int64) * 16
    entries = pa.table({
        "pos": pa.array(position(job.ordinal, 0) + np.arange(n, dtype=np.int64), pa.int64()),
        "key": table.column("key").combine_chunks() if n else pa.array([], pa.string()),
        "source": table.column("source").cast("string").combine_chunks() if n else pa.array([], pa.string()),
        "url": pa.array([_url_key(m) for m in metas], pa.string()), "image": pa.array(digests, pa.binary(32)),
        "size": pa.array(sizes, pa.int64())}, schema=ENTRY)
    partitions.write(out, entries, partitions.partition_of(partitions.hash64(keys, "key"), job.where.parts),
                     job.where.parts)
    return {"rows": np.array([n])}


def _image_digests(images: pa.ListArray, n: int) -> tuple[list, np.ndarray]:
    """Per row: the sha256 of its images' sha256s (None for a row without images: those are
    not all one image) and its image bytes. The cells are read as one flat column: per-row
    Arrow calls cost more than the hashing."""
    flat = pc.list_flatten(images)
    cells = pc.struct_field(flat, "bytes").to_pylist() if len(flat) else []
    parents = pc.list_parent_indices(images).to_numpy() if len(flat) else np.zeros(0, np.int64)
    hashed: list[list[bytes]] = [[] for _ in range(n)]
    sizes = np.zeros(n, dtype=np.int64)
    for row, cell in zip(parents.tolist(), cells):
        if cell:
            hashed[row].append(hashlib.sha256(cell).digest())
            sizes[row] += len(cell)
    return [hashlib.sha256(b"".join(h)).digest() if h else None for h in hashed], sizes


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, no default port, fragment or tracking parameters, sorted
    query, no trailing slash: the same resource written two ways dedups as one."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.port and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{parts.port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not k.lower().startswith("utm_")) if parts.query else ()
    return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/") or "/", urlencode(query), ""))


def _url_key(meta: str | None) -> str | None:
    try:
        value = files.loads_json(meta or "")
    except files.JsonError:
        return None
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url:
        return None
    chunk = value.get("chunk")  # chunks of one video share its URL and are not duplicates
    return normalize_url(url) + (f"#chunk={chunk}" if chunk is not None else "")


# ---- 2-4. dedup: key, then image, then URL; first occurrence in input order wins --------

@dataclass(frozen=True)
class DedupJob:
    where: Pass
    kind: str           # key | image | url
    previous: str       # the pass whose files it reads: scan, key or image
    count: int          # how many files that pass wrote
    p: int
    seed: int = 0       # for the selection and order hashes the URL pass adds
    active: bool = True   # False: --no-dedup-images / --no-dedup-urls, the pass only passes on


NEXT = {"key": "image", "image": "url"}   # what the survivors are partitioned by next
REASON = {"key": "duplicate_key", "image": "dedup_image", "url": "dedup_url"}


def dedup(job: DedupJob) -> dict:
    out = job.where.file(job.kind, job.p)
    return _cached(out, lambda: _dedup_into(out, job))


def _dedup_into(out: Path, job: DedupJob) -> dict:
    table = partitions.read(job.where.files(job.previous, job.count), job.p, ENTRY)
    table = table.take(pc.sort_indices(table, [("pos", "ascending")]))   # input order
    keep, dropped = first_occurrences(table if job.active else table.slice(0, 0), job.kind)
    keep = keep if job.active else np.ones(table.num_rows, dtype=bool)
    _write_one(job.where.file("dropped", job.p).with_name(f"{job.kind}-{job.p:06d}.arrow"), dropped)
    left = table.filter(pa.array(keep))
    if job.kind in NEXT:
        partitions.write(out, left, _partition_by(left, NEXT[job.kind], job.where.parts), job.where.parts)
        return {"dropped": np.array([dropped.num_rows])}
    return {"dropped": np.array([dropped.num_rows]), **_select_and_order(out, left, job)}


def first_occurrences(table: pa.Table, kind: str) -> tuple[np.ndarray, pa.Table]:
    """Which rows (in input order) are the first of their key / image / URL; the others as
    status rows: a dropped duplicate of a key is keyed KEY#dupN (N counts that key's
    duplicates in input order) so every status key stays unique."""
    values = table.column(kind).to_pylist()
    keys = table.column("key").to_pylist()
    first: dict = {}
    keep = np.ones(len(values), dtype=bool)
    rows, names, messages = [], [], []
    for i, value in enumerate(values):
        if value is None:
            continue
        if value not in first:
            first[value] = [keys[i], 0]
            continue
        keep[i] = False
        seen = first[value]
        seen[1] += 1
        rows.append(i)
        names.append(f"{keys[i]}#dup{seen[1]}" if kind == "key" else keys[i])
        messages.append(f"same {kind} as {seen[0]}")
    picked = table.take(pa.array(rows, pa.int64()))
    dropped = pa.table({"pos": picked.column("pos"), "key": pa.array(names, pa.string()),
                        "source": picked.column("source"),
                        "reason": pa.array([REASON[kind]] * len(rows), pa.string()),
                        "message": pa.array(messages, pa.string())}, schema=DROPPED)
    return keep, dropped


def _partition_by(table: pa.Table, kind: str, parts: int) -> np.ndarray:
    """By the hash of the column the next pass compares; rows without one (no images, no URL)
    by their key, so they spread instead of piling into one partition."""
    values = table.column(kind).to_pylist()
    keys = table.column("key").to_pylist()
    hashes = partitions.hash64([v if v is not None else k for v, k in zip(values, keys)], kind)
    return partitions.partition_of(hashes, parts)


def _select_and_order(out: Path, left: pa.Table, job: DedupJob) -> dict:
    """The unique entries get two seeded hashes: `select` ranks a source's entries for the
    quota (the lowest are taken), `order` is the output order. Partitioned by order-hash
    range, so output partitions in order are the whole output in order. Returns each
    source's count and a histogram of its selection hashes (the driver sets the quota cuts)."""
    keys = left.column("key").to_pylist()
    sources = left.column("source").to_pylist()
    select = partitions.hash64([f"{s}\0{k}" for s, k in zip(sources, keys)], f"select:{job.seed}")
    order = partitions.hash64(keys, f"order:{job.seed}")
    table = left.append_column("select", pa.array(select, pa.uint64())).append_column(
        "order", pa.array(order, pa.uint64()))
    partitions.write(out, table, partitions.partition_of(order, job.where.parts), job.where.parts)
    names = sorted(set(sources))
    by_source = np.array([names.index(s) for s in sources], dtype=np.int64) if sources else np.zeros(0, np.int64)
    buckets = (select >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
    hist = np.zeros((len(names), 1 << BUCKET_BITS), dtype=np.int64)
    np.add.at(hist, (by_source, buckets), 1)
    return {"sources": np.array(names, dtype=str), "hist": hist}


# ---- 5. quotas: the cut in each source's selection-hash order --------------------------

@dataclass(frozen=True)
class Cut:
    """Take a source's entries whose selection bucket is below `bucket`, and in `bucket` those
    up to and including (select, pos) = last, if last is set."""

    bucket: int
    last: tuple[int, int] | None = None

    def selects(self, select: np.ndarray, pos: np.ndarray) -> np.ndarray:
        buckets = (select >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
        chosen = buckets < self.bucket
        if self.last is not None:
            value, at = np.uint64(self.last[0]), self.last[1]
            chosen |= (buckets == self.bucket) & ((select < value) | ((select == value) & (pos <= at)))
        return chosen


@dataclass(frozen=True)
class BoundaryJob:
    path: str
    wanted: tuple     # (source, bucket) pairs whose bucket is cut inside


def boundary(job: BoundaryJob) -> dict:
    """(select, pos) of every entry in the wanted buckets, per source: the driver picks the
    cut among them (a bucket holds ~1/65,536 of a source)."""
    table = pa.ipc.open_file(pa.memory_map(job.path)).read_all().select(["source", "select", "pos"])
    sources = np.array(table.column("source").to_pylist(), dtype=object)
    select = table.column("select").to_numpy()
    pos = table.column("pos").to_numpy()
    buckets = (select >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
    found = {}
    for source, bucket in job.wanted:
        mask = (sources == source) & (buckets == bucket)
        found[source] = (select[mask], pos[mask])
    return found


# ---- 6. split: each output partition in order, cut into units -------------------------

@dataclass(frozen=True)
class SplitJob:
    where: Pass
    p: int
    cuts: dict            # source -> Cut
    weights: dict         # source -> weight (for the over_quota message)
    shard_rows: int
    shard_bytes: int
    groups: tuple         # the first input shard ordinal of each gather group


def split(job: SplitJob) -> dict:
    """Partition p's selected entries in output order, cut into units (each at most one output
    shard's rows and bytes), routed to the gather group of their input shard
    (route/PPPPPP.arrow: position, unit in p, rank in the unit); its status rows for
    everything left out (status/PPPPPP.arrow)."""
    out = job.where.file("route", job.p)
    return _cached(out, lambda: _split_into(out, job))


def _split_into(out: Path, job: SplitJob) -> dict:
    where = job.where
    table = partitions.read(where.files("url", where.parts), job.p, UNIQUE)
    select, pos = table.column("select").to_numpy(), table.column("pos").to_numpy()
    sources = np.array(table.column("source").to_pylist(), dtype=object)
    chosen = np.zeros(table.num_rows, dtype=bool)
    for source, cut in job.cuts.items():
        mask = sources == source
        chosen[mask] = cut.selects(select[mask], pos[mask])
    picked = table.filter(pa.array(chosen))
    picked = picked.take(np.lexsort((picked.column("pos").to_numpy(), picked.column("order").to_numpy())))
    over = table.filter(pa.array(~chosen))
    over = over.take(pc.sort_indices(over, [("pos", "ascending")]))
    messages = [f"left out to keep {s} at weight {job.weights.get(s, 0.0):g}" for s in over.column("source").to_pylist()]
    statuses = [pa.table({"pos": over.column("pos"), "key": over.column("key"), "source": over.column("source"),
                          "reason": pa.array(["over_quota"] * over.num_rows, pa.string()),
                          "message": pa.array(messages, pa.string())}, schema=DROPPED)]
    # and the duplicates each dedup pass found in its partition p
    statuses += [partitions.read([where.file("dropped", job.p).with_name(f"{kind}-{job.p:06d}.arrow")], 0, DROPPED)
                 for kind in REASON]
    _write_one(where.file("status", job.p), pa.concat_tables(statuses))
    starts = unit_starts(picked.column("size").to_numpy(), job.shard_rows, job.shard_bytes)
    _route(out, picked.column("pos").to_numpy(), starts, job)
    return {"starts": starts, "rows": np.array([picked.num_rows]),
            "statuses": np.array([sum(t.num_rows for t in statuses)])}


def _route(out: Path, pos: np.ndarray, starts: np.ndarray, job: SplitJob) -> None:
    """Each output row's unit and rank in it, partitioned by the gather group of its input."""
    at = np.arange(len(pos), dtype=np.int64)
    unit = np.searchsorted(starts, at, side="right") - 1
    route = pa.table({"pos": pa.array(pos, pa.int64()), "part": pa.array(np.full(len(pos), job.p), pa.int64()),
                      "unit": pa.array(unit, pa.int64()), "rank": pa.array(at - starts[unit], pa.int64())},
                     schema=ROUTE)
    group = np.searchsorted(np.array(job.groups, dtype=np.int64), pos >> 32, side="right") - 1
    partitions.write(out, route, group, len(job.groups))


def _write_one(path: Path, table: pa.Table) -> None:
    partitions.write(path, table, np.zeros(table.num_rows, dtype=np.int64), 1)


def unit_starts(sizes: np.ndarray, rows: int, budget: int) -> np.ndarray:
    """First row of each unit: a new one whenever `rows` rows or `budget` bytes are reached."""
    starts, count, used = [0], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if count and (count >= rows or used + size > budget):
            starts.append(i)
            count, used = 0, 0
        count += 1
        used += size
    return np.array(starts, dtype=np.int64)


# ---- 7. gather: each group of input shards read once, its rows sorted by output unit ----

def gather_groups(sizes: list[int]) -> list[int]:
    """The first ordinal of each run of input shards holding at most GATHER_BYTES (a shard
    over it is a group alone): what one gather task holds in memory is bounded by it."""
    budget, groups, used = GATHER_BYTES, [0], 0
    for ordinal, size in enumerate(sizes):
        if used and used + size > budget:
            groups.append(ordinal)
            used = 0
        used += size
    return groups


@dataclass(frozen=True)
class GatherJob:
    where: Pass
    g: int
    inputs: dict          # ordinal -> input shard path, for this group's shards
    bases: tuple          # per output partition: the global number of its first unit
    units: int            # units over all partitions


def gather(job: GatherJob) -> dict:
    """The selected rows of group g's input shards (each read and validated once), sorted by
    (unit, rank) into rows/GGGGGG.arrow; rows/GGGGGG.npy holds where each unit's rows start.
    A shuffle in two steps, so the write reads every input once (a unit reading its rows
    straight from the inputs would read every input shard per unit: quadratic)."""
    out = job.where.file("rows", job.g)
    return _cached(out, lambda: _gather_into(out, job))


def _gather_into(out: Path, job: GatherJob) -> dict:
    route = partitions.read(job.where.files("route", job.where.parts), job.g, ROUTE)
    route = route.take(pc.sort_indices(route, [("pos", "ascending")]))
    pos = route.column("pos").to_numpy()
    unit = np.array(job.bases, dtype=np.int64)[route.column("part").to_numpy()] + route.column("unit").to_numpy()
    rank = route.column("rank").to_numpy()
    rows = _selected_rows(job, pos).append_column("pos", pa.array(pos, pa.int64())).append_column(
        "rank", pa.array(rank, pa.int64()))
    order = np.lexsort((rank, unit))
    rows = rows.take(pa.array(order, pa.int64()))   # the one copy besides the rows taken
    starts, tmp = out.with_suffix(".npy"), out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.stem}.npy")
    with writing(starts):
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, np.searchsorted(unit[order], np.arange(job.units + 1)))
        tmp.replace(starts)
    partitions.write_table(out, rows)
    return {"rows": np.array([rows.num_rows])}


def _selected_rows(job: GatherJob, pos: np.ndarray) -> pa.Table:
    """The samples at these positions (sorted), each input shard read once."""
    ordinals = pos >> 32
    runs = np.split(np.arange(len(pos)), np.flatnonzero(np.diff(ordinals)) + 1) if len(pos) else []
    tables = []
    for run in runs:
        shard = read_shard(Path(job.inputs[int(ordinals[run[0]])]), "interleaved").select(SAMPLE.names)
        tables.append(shard.take(pa.array(pos[run] & 0xFFFFFFFF, pa.int64())).cast(SAMPLE))
    return pa.concat_tables(tables) if tables else SAMPLE.empty_table()


# ---- 8. write: one unit = its rows from every gather group + its share of the status rows

@dataclass(frozen=True)
class MixUnit:
    where: Pass
    p: int
    u: int                     # the unit's number over all partitions (its rows in rows/*)
    groups: int                # gather files
    statuses: tuple[int, int]  # [start, end) of status/PPPP.arrow


def process(unit: MixUnit, writer: UnitWriter) -> None:
    inputs = files.read_json(Path(unit.where.work) / "shards.json")
    rows = _unit_rows(unit)
    for start in range(0, rows.num_rows, WRITE_BATCH):
        batch = rows.slice(start, WRITE_BATCH)
        for at, sample in zip(batch.column("pos").to_pylist(), batch.select(SAMPLE.names).to_pylist()):
            writer.add_sample(sample)
            writer.add_status(records.status(sample["key"], sample["source"], "ok",
                                             input=f"{inputs[at >> 32]}:{at & 0xFFFFFFFF}", samples=1))
    statuses = partitions.read([unit.where.file("status", unit.p)], 0, DROPPED)
    left = statuses.slice(unit.statuses[0], unit.statuses[1] - unit.statuses[0])
    for row in left.to_pylist():
        writer.add_status(records.status(row["key"], row["source"], row["reason"], error=row["message"], samples=0))


def _unit_rows(unit: MixUnit) -> pa.Table:
    """The unit's rows from each gather file (a contiguous run there), in output order."""
    pieces = []
    for path in unit.where.files("rows", unit.groups):
        start, end = np.load(path.with_suffix(".npy"), mmap_mode="r")[unit.u:unit.u + 2].tolist()
        if end > start:
            pieces.append(pa.ipc.open_file(pa.memory_map(str(path))).read_all().slice(start, end - start))
    rows = pa.concat_tables(pieces) if pieces else GATHERED.empty_table()
    return rows.take(pc.sort_indices(rows, [("rank", "ascending")]))
