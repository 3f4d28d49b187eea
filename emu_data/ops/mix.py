"""`emu-data mix`: per-source corpora -> one corpus in given proportions, deduplicated, shuffled.

Every step is a pass of Ray tasks over hash partitions spilled under OUT/_work (mixpasses.py),
so the driver holds counts and file lists, never a row per sample: its memory does not grow
with the corpus and the work divides by the workers of a cluster.
1. scan each input shard: check it against its input's manifest (missing, size, sha256: a
   corrupted input is refused before anything is written), then key, source, normalised URL,
   image digest per sample, partitioned by key;
2. drop exact duplicates in three passes, first occurrence in input order winning: same key,
   then (among the rest) same images (sha256 of the image bytes), then same normalised URL
   (storyboard chunks count apart). A key is one item: once its first occurrence is a
   duplicate of another's images or URL, its later occurrences are duplicate_key too;
3. take from each source so the output matches the weights: the scarcest source (relative to
   its weight) sets the total, and each source keeps that many of its samples, those with the
   lowest seeded hash of source and key -- nothing is repeated, so no sample appears twice;
4. order by a seeded hash of the key (a shuffle) and cut into output shards, each a unit;
5. gather: each run of input shards (GATHER_BYTES) is read once and its selected rows sorted
   by output unit, so that a unit then reads one contiguous run of each gather file (a unit
   reading its rows from the inputs would read every input shard: quadratic).
Every input sample gets a status row: ok, duplicate_key, dedup_image, dedup_url or
over_quota (left out to keep the proportions). Deterministic by --seed and independent of
how the inputs are sharded or how many nodes run it: the same inputs give the same bytes.
Resumable: a pass skips the partitions it finished; the output units resume like any stage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emu_data.core import corpus, errors, files, manifest, partitions
from emu_data.engine import runlock, runtime, stage
from emu_data.inspect import validate
from emu_data.ops import mixpasses
from emu_data import sources as registry
from emu_data.core.options import option
from emu_data.core.corpus import Unit
from emu_data.core.shards import writing

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


normalize_url = mixpasses.normalize_url


def _refuse_corrupted(problems: list[validate.Violation]) -> None:
    """One line per problem as `emu-data validate` prints it (the first SHOWN_PROBLEMS)."""
    if not problems:
        return
    lines = [str(v) for v in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(f"... and {len(problems) - SHOWN_PROBLEMS} more")
    raise errors.UsageError("\n".join(lines) + "\ninput shards differ from their manifest, nothing was written "
                     "(emu-data validate on the inputs shows every problem)")


def _identity(directory: Path) -> dict:
    """What an input is: its path and a digest of the shards its manifest lists, so a
    rebuilt input (same config, other content) is seen as changed."""
    built = manifest.read(directory)
    corpus.refuse_export(directory, built)
    shards = built["shards"]
    digest = hashlib.sha256(json.dumps([s["sha256"] for s in shards]).encode()).hexdigest()
    return {"path": str(directory.resolve()), "shards": digest}


# ---- the passes ------------------------------------------------------------------------

STAGE = "mix"


def make_mix(inputs: list[Path], config: MixConfig, output: stage.OutputOptions,
             ray: runtime.RayOptions = runtime.RayOptions()) -> tuple[stage.StageResult, dict]:
    """Mix the finished corpora `inputs` into output.out; returns the stage result and the
    plan's counts (inputs, selected per source, left out per reason)."""
    inputs = [Path(p) for p in inputs]
    identity = [_identity(p) for p in inputs]
    layout = {"mix": asdict(config), "inputs": identity}
    done = stage.finished(STAGE, output, layout)
    if done is not None:
        return done, {}
    out = Path(output.out)
    existed = out.exists()
    with runlock.held(out):
        where, shards = _work(out, inputs, layout, output)
        try:
            units, counts = _plan(where, shards, config, output, ray)
        except errors.UsageError:
            _forget(out, existed)   # a refused input: nothing stays behind
            raise
        resolved = {"mix": asdict(config), "inputs": identity, "plan": counts,
                    "output": {**asdict(output), "out": str(out)}, "ray": asdict(ray)}
        result = stage.run_held(STAGE, units, mixpasses.process, output=output, layout=layout,
                                config=resolved, ray=ray)
        shutil.rmtree(where.work, ignore_errors=True)
    return result, counts


def _work(out: Path, inputs: list[Path], layout: dict, output: stage.OutputOptions):
    """OUT/_work for this layout (what another layout left there is cleared) and the inputs'
    shards in input order."""
    shards = [(str(d / s["path"]), s) for d in inputs for s in manifest.read(d)["shards"]]
    parts = partitions.partitions_for(sum(s["rows"] for _, s in shards))
    where = mixpasses.Pass(str(out / mixpasses.WORK), parts)
    made_for = {"layout": layout, "limits": asdict(output.limits), "parts": parts, "passes": mixpasses.VERSION}
    work = Path(where.work)
    try:
        same = files.read_json(work / "layout.json") == json.loads(json.dumps(made_for))
    except files.UnreadableFile:
        same = False
    if not same or output.overwrite:
        shutil.rmtree(work, ignore_errors=True)
        with writing(work):
            work.mkdir(parents=True)
        manifest.write_json_atomic(work / "shards.json", [path for path, _ in shards])
        manifest.write_json_atomic(work / "layout.json", made_for)
    return where, shards


def _forget(out: Path, existed: bool) -> None:
    shutil.rmtree(out / mixpasses.WORK, ignore_errors=True)
    if not existed:
        shutil.rmtree(out, ignore_errors=True)


def _plan(where: mixpasses.Pass, shards: list, config: MixConfig, output: stage.OutputOptions,
          ray: runtime.RayOptions) -> tuple[list[Unit], dict]:
    _scan(where, shards, ray)
    left_out: Counter[str] = Counter()
    previous = ("scan", len(shards))
    hists: dict[str, np.ndarray] = {}
    for kind in ("key", "image", "url"):
        active = {"key": True, "image": config.dedup_images, "url": config.dedup_urls}[kind]
        jobs = [mixpasses.DedupJob(where, kind, *previous, p, config.seed, active) for p in range(where.parts)]
        for result in _results(mixpasses.dedup, jobs, f"mix: {kind}s", ray):
            left_out[mixpasses.REASON[kind]] += int(result["dropped"][0])
            for name, hist in zip(result.get("sources", []), result.get("hist", [])):
                hists[str(name)] = hists.get(str(name), 0) + hist
        previous = (kind, where.parts)
    cuts, wanted = _cuts(hists, config, where, ray)
    left_out["over_quota"] = sum(int(h.sum()) for h in hists.values()) - sum(wanted.values())
    groups = mixpasses.gather_groups([s["bytes"] for _, s in shards])
    jobs = [mixpasses.SplitJob(where, p, cuts, {s: config.weights.get(s, 0.0) for s in hists},
                               output.shard_rows, output.shard_bytes, tuple(groups)) for p in range(where.parts)]
    splits = dict(zip(range(where.parts), _results(mixpasses.split, jobs, "mix: order", ray)))
    bases = np.cumsum([0] + [len(splits[p]["starts"]) for p in range(where.parts)]).tolist()
    ends = groups[1:] + [len(shards)]
    jobs = [mixpasses.GatherJob(where, g, {i: shards[i][0] for i in range(first, end)}, tuple(bases[:-1]), bases[-1])
            for g, (first, end) in enumerate(zip(groups, ends))]
    _results(mixpasses.gather, jobs, "mix: gather", ray)
    counts = {"selected": dict(sorted(wanted.items())), "left_out": {k: v for k, v in left_out.items() if v},
              "inputs": sum(s["rows"] for _, s in shards)}
    return _units(where, splits, bases, len(groups)), counts


def _results(fn, jobs: list, desc: str, ray: runtime.RayOptions) -> list:
    """fn over jobs as Ray tasks; results in job order (a failed task fails the run: a pass
    is all or nothing, and its finished tasks are kept for the rerun)."""
    found = {}
    for job, result in runtime.map_tasks(fn, jobs, options=ray, desc=desc, total=len(jobs)):
        if isinstance(result, runtime.TaskFailure):
            raise errors.DataFault(f"{desc}: a task failed: {result.error} (rerun to resume)")
        found[id(job)] = result
    return [found[id(job)] for job in jobs]


def _scan(where: mixpasses.Pass, shards: list, ray: runtime.RayOptions) -> None:
    """Every input shard scanned; a ValueError before anything is written if one cannot be
    read or differs from its input's manifest."""
    jobs = [mixpasses.ScanJob(where, i, path, listed) for i, (path, listed) in enumerate(shards)]
    problems = []
    for job, result in runtime.map_tasks(mixpasses.scan, jobs, options=ray, desc="mix: scan", total=len(jobs)):
        if isinstance(result, runtime.TaskFailure):
            raise errors.UsageError(f"cannot read {job.path}: {result.error} (run emu-data validate on it)")
        problems += [(job.ordinal, v) for v in result.get("problems", [])]
    _refuse_corrupted([v for _, v in sorted(problems, key=lambda pair: pair[0])])


def _cuts(hists: dict[str, np.ndarray], config: MixConfig, where: mixpasses.Pass,
          ray: runtime.RayOptions) -> tuple[dict, dict]:
    """Each source's quota (the scarcest source relative to its weight sets the total) and the
    cut in its selection-hash order that takes exactly that many."""
    counts = {s: int(h.sum()) for s, h in hists.items()}
    weights = {s: config.weights.get(s, 0.0) for s in counts}
    if not sum(weights.values()):
        raise errors.UsageError(f"no weight for any source present ({', '.join(sorted(counts))})")
    scale = min(counts[s] / w for s, w in weights.items() if w > 0)
    wanted = {s: min(counts[s], round(scale * weights[s])) for s in counts}
    cuts, inside = {}, {}
    for source, want in wanted.items():
        if want == counts[source]:
            cuts[source] = mixpasses.Cut(1 << mixpasses.BUCKET_BITS)
            continue
        running = np.cumsum(hists[source])
        bucket = int(np.searchsorted(running, want))   # the first bucket reaching `want`
        need = want - (int(running[bucket - 1]) if bucket else 0)
        if need == hists[source][bucket] or want == 0:
            cuts[source] = mixpasses.Cut(bucket + 1 if want else 0)
        else:
            inside[source] = (bucket, need)
    if inside:
        cuts.update(_cuts_inside(inside, where, ray))
    return cuts, wanted


def _cuts_inside(inside: dict[str, tuple[int, int]], where: mixpasses.Pass, ray: runtime.RayOptions) -> dict:
    """Where a source's quota ends inside a bucket: its `need` lowest (select, pos) there."""
    wanted = tuple((s, bucket) for s, (bucket, _) in sorted(inside.items()))
    jobs = [mixpasses.BoundaryJob(str(path), wanted) for path in where.files("url", where.parts)]
    found: dict[str, list] = {s: [] for s in inside}
    for result in _results(mixpasses.boundary, jobs, "mix: quotas", ray):
        for source, pair in result.items():
            found[source].append(pair)
    cuts = {}
    for source, (bucket, need) in inside.items():
        select = np.concatenate([s for s, _ in found[source]])
        pos = np.concatenate([p for _, p in found[source]])
        last = np.lexsort((pos, select))[need - 1]
        cuts[source] = mixpasses.Cut(bucket, (int(select[last]), int(pos[last])))
    return cuts


def _units(where: mixpasses.Pass, splits: dict[int, dict], bases: list[int], groups: int) -> list[Unit]:
    """Each output partition's units: runs of its ordered rows, its status rows spread evenly."""
    units = []
    for p, split in splits.items():
        rows, statuses = int(split["rows"][0]), int(split["statuses"][0])
        starts = [int(x) for x in split["starts"]] + [rows]
        per = -(-statuses // (len(starts) - 1))
        for j in range(len(starts) - 1):
            status_span = (min(statuses, j * per), min(statuses, (j + 1) * per))
            if starts[j] == starts[j + 1] and status_span[0] == status_span[1]:
                continue
            units.append(Unit(f"mix-{p:06d}-{j:06d}", mixpasses.MixUnit(where, p, bases[p] + j, groups, status_span)))
    return units or [Unit("mix-000000-000000", mixpasses.MixUnit(where, 0, 0, groups, (0, 0)))]
