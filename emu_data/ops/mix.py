"""`emu-data mix`: per-source corpora -> one corpus in given proportions, deduplicated, shuffled.

Plan in the driver, copy in Ray tasks:
1. scan every input shard (Ray tasks): check it against its input's manifest (missing, size,
   sha256: a corrupted input is refused before anything is written), then key, source, url,
   image digest per sample;
2. walk them in the order given and drop exact duplicates — same key, same images
   (sha256 of the image bytes), same normalized URL (storyboard chunks count apart);
3. take from each source so the output matches the weights: the scarcest source (relative
   to its weight) sets the total, the others are subsampled by the seed — nothing is
   repeated, so no sample appears twice;
4. shuffle by the seed and cut into output shards, each one a unit that copies its rows.
Every input sample gets a status row: ok, duplicate_key, dedup_image, dedup_url or
over_quota (left out to keep the proportions).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.compute as pc

from emu_data.core import errors, files, manifest, records
from emu_data.engine import runtime, stage
from emu_data.inspect import validate
from emu_data import sources as registry
from emu_data.core.options import option
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.core.shards import read_shard

PRESET_NAMES = ("emu", "equal")


def presets() -> dict[str, dict[str, float]]:
    """Named weights of the registered record sources. emu: Emu's per-step batch sizes
    (arXiv 2307.05222: laion 128, laion_coco 128, mmc4 64, webvid 16, yt_storyboard 16; yt_clips
    takes WebVid's 16: Emu had no clip lists, and a clip is what a WebVid video was to it)."""
    weights = registry.emu_weights()
    return {"emu": weights, "equal": {name: 1 for name in weights}}


SHOWN_PROBLEMS = 10  # lines of a corrupted input's problems in the error; validate lists them all


@dataclass(frozen=True)
class MixConfig:
    weights: dict[str, float] = field(default_factory=lambda: presets()["emu"])   # see Weights
    seed: int = option(0, parse=int, help="shuffle and subsample seed")
    dedup_images: bool = option(True, help="drop samples whose images another sample has")
    dedup_urls: bool = option(True, help="drop samples whose normalized URL another sample has")

    def __post_init__(self):
        if not self.weights or any(w < 0 for w in self.weights.values()) or not sum(self.weights.values()):
            raise errors.UsageError(f"weights must be non-negative and not all zero: {self.weights}")


@dataclass(frozen=True)
class MixInputs:
    inputs: list = option(positional=True, many=True, required=True, parse=Path, metavar="SRC",
                          help="finished corpus directories")


@dataclass(frozen=True)
class Weights:
    """The weights as the command line gives them: a preset, some of it overridden."""

    preset: str = option("emu", choices=PRESET_NAMES,
                         help="named weights; emu = Emu's per-step batch sizes: laion 128, laion_coco 128, "
                              "mmc4 64, webvid 16, yt_storyboard 16, yt_clips 16 (as WebVid)")
    weights: str | None = option(None, metavar="LIST",
                                 help="SOURCE=WEIGHT,... overriding the preset's weights for the sources named")

    def resolve(self) -> dict[str, float]:
        return {**presets()[self.preset], **(parse_weights(self.weights) if self.weights else {})}


@dataclass(frozen=True)
class Entry:
    """One input sample, as the plan sees it."""

    key: str
    source: str
    shard: str   # absolute path of its shard
    row: int
    url: str | None
    images: str  # digest of the sample's image bytes


def parse_weights(text: str) -> dict[str, float]:
    """'yt_storyboard=16,laion=128' -> {'yt_storyboard': 16.0, 'laion': 128.0}."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise errors.UsageError(f"--weights: {part!r} is not SOURCE=NUMBER") from None
    return weights


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, no default port, fragment or tracking parameters, sorted
    query, no trailing slash: the same resource written two ways dedups as one."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.port and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{parts.port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not k.lower().startswith("utm_"))
    return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/") or "/", urlencode(query), ""))


# ---- 1. scan ----------------------------------------------------------------------

@dataclass(frozen=True)
class ShardScan:
    entries: list[Entry]
    problems: list[validate.Violation]   # how the file differs from its manifest entry


def scan_shard(task: tuple[str, dict]) -> ShardScan:
    """Entries of one shard (path, its manifest entry): key, source, dedup url and image
    digest of every row; none if the file is not what the manifest lists."""
    path, listed = task
    # hashed before it is parsed: a changed byte inside an image still parses and decodes, only
    # the sha256 tells; the hashing read fills the page cache read_shard's map then reads from
    problems = validate.listed_shard_problems(Path(path), listed)
    if problems:
        return ShardScan([], problems)
    table = read_shard(Path(path), "interleaved")
    keys = table.column("key").to_pylist()
    sources = table.column("source").cast("string").to_pylist()
    metas = table.column("meta").to_pylist()
    images = table.column("images")
    entries = []
    for row, (key, source, meta) in enumerate(zip(keys, sources, metas)):
        cells = pc.struct_field(images[row].values, "bytes").to_pylist() if images[row].values else []
        digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in cells if b)).hexdigest()
        entries.append(Entry(key, source, path, row, _url_key(meta), digest))
    return ShardScan(entries, [])


def _url_key(meta: str) -> str | None:
    try:
        value = files.loads_json(meta)
    except files.JsonError:
        return None
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url:
        return None
    chunk = value.get("chunk")  # chunks of one video share its URL and are not duplicates
    return normalize_url(url) + (f"#chunk={chunk}" if chunk is not None else "")


def scan(inputs: list[Path], ray: runtime.RayOptions) -> list[Entry]:
    """Every input sample in input order; raises ValueError, before anything is written, if
    a shard cannot be read or differs from its input's manifest."""
    tasks = [(str(Path(d) / s["path"]), s) for d in inputs for s in manifest.read(d)["shards"]]
    by_path = {}
    for (path, _), result in runtime.map_tasks(scan_shard, tasks, options=ray, desc="mix: scan", total=len(tasks)):
        if isinstance(result, runtime.TaskFailure):
            raise errors.UsageError(f"cannot read {path}: {result.error} (run emu-data validate on it)")
        by_path[path] = result
    _refuse_corrupted([v for path, _ in tasks for v in by_path[path].problems])
    return [e for path, _ in tasks for e in by_path[path].entries]  # input order, whatever finished first


def _refuse_corrupted(problems: list[validate.Violation]) -> None:
    """One line per problem as `emu-data validate` prints it (the first SHOWN_PROBLEMS)."""
    if not problems:
        return
    lines = [str(v) for v in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(f"... and {len(problems) - SHOWN_PROBLEMS} more")
    raise errors.UsageError("\n".join(lines) + "\ninput shards differ from their manifest, nothing was written "
                     "(emu-data validate on the inputs shows every problem)")


# ---- 2. dedup, 3. quotas, 4. shuffle ------------------------------------------------

@dataclass
class Plan:
    selected: list[Entry]
    left_out: list[tuple[Entry, str, str]]   # entry (key made unique for status), reason, message
    counts: dict = field(default_factory=dict)


def plan(entries: list[Entry], config: MixConfig) -> Plan:
    unique, left_out = _dedup(entries, config)
    selected, over = _take_by_weight(unique, config)
    left_out += over
    random.Random(config.seed).shuffle(selected)
    reasons = Counter(reason for _, reason, _ in left_out)
    return Plan(selected, left_out, {"selected": dict(Counter(e.source for e in selected)),
                                     "left_out": dict(reasons), "inputs": len(entries)})


def _dedup(entries: list[Entry], config: MixConfig):
    seen: dict[str, dict[str, str]] = {"key": {}, "image": {}, "url": {}}
    dups: Counter[str] = Counter()   # duplicates of each key dropped so far
    unique, dropped = [], []
    for e in entries:
        checks = [("key", e.key, "duplicate_key"),
                  ("image", e.images if config.dedup_images else None, "dedup_image"),
                  ("url", e.url if config.dedup_urls else None, "dedup_url")]
        hit = next(((kind, value, reason) for kind, value, reason in checks
                    if value is not None and value in seen[kind]), None)
        if hit:
            kind, value, reason = hit
            dropped.append((_status_entry(e, kind, dups), reason, f"same {kind} as {seen[kind][value]}"))
            continue
        for kind, value, _ in checks:
            if value is not None:
                seen[kind][value] = e.key
        unique.append(e)
    return unique, dropped


def _status_entry(e: Entry, kind: str, dups: Counter) -> Entry:
    """A dropped duplicate of a key still needs a status key of its own: key#dupN. Counted
    per key, not by rescanning what was dropped (that made 1M duplicates take a day)."""
    if kind != "key":
        return e
    dups[e.key] += 1
    return Entry(f"{e.key}#dup{dups[e.key]}", e.source, e.shard, e.row, e.url, e.images)


def _take_by_weight(entries: list[Entry], config: MixConfig):
    by_source: dict[str, list[Entry]] = {}
    for e in entries:
        by_source.setdefault(e.source, []).append(e)
    weights = {s: config.weights.get(s, 0.0) for s in by_source}
    total_weight = sum(weights.values())
    if not total_weight:
        raise errors.UsageError(f"no weight for any source present ({', '.join(sorted(by_source))})")
    # the source with the fewest samples per unit of weight sets how many fit in all
    scale = min(len(by_source[s]) / w for s, w in weights.items() if w > 0)
    selected, over = [], []
    for source in sorted(by_source):
        rows = by_source[source]
        want = min(len(rows), round(scale * weights[source]))
        chosen = set(random.Random(f"{config.seed}:{source}").sample(range(len(rows)), want))
        for i, e in enumerate(rows):
            if i in chosen:
                selected.append(e)
            else:
                over.append((e, "over_quota", f"left out to keep {source} at weight {weights[source]:g}"))
    return selected, over


def _identity(directory: Path) -> dict:
    """What an input is: its path and a digest of the shards its manifest lists, so a
    rebuilt input (same config, other content) is seen as changed."""
    shards = manifest.read(directory)["shards"]
    digest = hashlib.sha256(json.dumps([s["sha256"] for s in shards]).encode()).hexdigest()
    return {"path": str(directory.resolve()), "shards": digest}


# ---- write ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MixUnit:
    rows: tuple[tuple[str, int], ...]                 # (shard, row) in output order
    statuses: tuple[tuple[str, str, str, str], ...]   # key, source, reason, message


def process(unit: MixUnit, writer: UnitWriter) -> None:
    tables: dict[str, object] = {}
    for shard, row in unit.rows:
        if shard not in tables:
            tables[shard] = read_shard(Path(shard))
        sample = tables[shard].slice(row, 1).to_pylist()[0]
        sample["source"] = str(sample["source"])
        writer.add_sample(sample)
        writer.add_status(records.status(sample["key"], sample["source"], "ok", input=f"{shard}:{row}",
                                         samples=1))
    for key, source, reason, message in unit.statuses:
        writer.add_status(records.status(key, source, reason, error=message, samples=0))


def units(p: Plan, shard_rows: int) -> list[Unit]:
    chunks = [p.selected[i:i + shard_rows] for i in range(0, len(p.selected), shard_rows)] or [[]]
    per = -(-len(p.left_out) // len(chunks))  # spread the left-out statuses over the units
    return [Unit(f"mix-{i:06d}", MixUnit(
        tuple((e.shard, e.row) for e in chunk),
        tuple((e.key, e.source, reason, msg) for e, reason, msg in p.left_out[i * per:(i + 1) * per])))
        for i, chunk in enumerate(chunks)]


def make_mix(inputs: list[Path], config: MixConfig, output: stage.OutputOptions,
             ray: runtime.RayOptions = runtime.RayOptions()) -> tuple[stage.StageResult, Plan]:
    inputs = [Path(p) for p in inputs]
    identity = [_identity(p) for p in inputs]
    the_plan = plan(scan(inputs, ray), config)
    resolved = {"mix": asdict(config), "inputs": identity, "plan": the_plan.counts,
                "output": {**asdict(output), "out": str(output.out)}, "ray": asdict(ray)}
    result = stage.run_stage("mix", units(the_plan, output.shard_rows), process, output=output,
                             layout={"mix": asdict(config), "inputs": identity}, config=resolved, ray=ray)
    return result, the_plan
