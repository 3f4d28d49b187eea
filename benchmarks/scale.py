"""mix and validate at scale (1M and 10M samples): the committed code before the
hash-partition rewrite against the working tree, driver and process-tree memory included.

    python benchmarks/scale.py                          # 1M and 10M, before and after
    python benchmarks/scale.py --sizes 1e5 --versions after --report /tmp/scale.md

Corpora are generated once into --data (default /work/scale-data), one folder per size with a
marker holding the generator's parameters, and reused while the marker matches. A size of N is
three sources (laion pairs with a URL, mmc4-like documents with 2-3 images, webvid-like clips
with --frames frames), each split into two corpus directories as two ingest runs would leave
it, N/6 samples each, shards of 10,000 rows. Every image is a tiny 8x8 JPEG or PNG from a
pool of --pool encodings, made byte-unique per image by a JPEG comment or PNG tEXt chunk
holding its id: dedup_image is exact sha256 of the bytes, so a distinct id is a distinct
image and only the planted copies are duplicates. Planted per source, --dup-rate of its
samples each (counts the same for every source, so `--preset equal` keeps every unique
sample and the output is one exact set):
  duplicate_key  a sample of the first directory repeated whole in the second (an overlap
                 of two ingest runs); each directory alone stays clean for validate;
  dedup_image    a new key and URL carrying an earlier sample's image bytes;
  dedup_url      new images under an earlier sample's URL written another way
                 (upper-case host, :443, a trailing slash, a utm_ parameter).
Originals always come earlier in input order, in another shard, often the other directory.

Each command runs as its own process, `python -m emu_data.cli`, with --num-cpus 2 (where the
version has the option). BEFORE is a git worktree of --before-rev, run with PYTHONPATH and
working directory there (a probe prints which emu_data the driver and a Ray worker import);
AFTER is this checkout. While it runs, the process tree (driver, raylet, GCS, workers) is
polled every 0.2 s: the driver's VmHWM, the summed VmRSS and RssAnon of the tree, and CPU
seconds. rows/s/core = input rows / wall / 2; rows per CPU second is the steadier figure on
this shared VM. Outputs are compared: mix by its sorted output keys (sha256, and the counts
on each side otherwise) and status counts, also against what was planted; validate by its
summary line. Each measurement is appended to --results (JSON lines); with --reuse one
already there for the same data and code is taken instead of run again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
GEN_VERSION = 2   # 2: record batches of 256 rows, as ShardWriter writes them (1: one per shard)
BATCH_ROWS = 256  # core/shards.py _BATCH_ROWS: mix's row gathering validates only the batches it reads
MARKER = "_scale_params.json"
SOURCES = ("laion", "mmc4", "webvid")
PARTS = 2                         # corpus directories per source
PLAIN, KEY, IMAGE, URL = 0, 1, 2, 3   # what a generated sample is
EXPECTED_REASON = {KEY: "duplicate_key", IMAGE: "dedup_image", URL: "dedup_url"}
MB = 2**20


# ==== 1. the synthetic corpora =====================================================

@dataclass(frozen=True)
class CorpusParams:
    size: int                    # samples over all sources and directories
    shard_rows: int = 10_000
    dup_rate: float = 0.01       # of a source's samples, per planted kind
    fail_rate: float = 0.005     # extra status rows of items that failed (no sample)
    frames: int = 4
    pool: int = 4096
    seed: int = 0
    generator: int = GEN_VERSION

    @property
    def part_rows(self) -> int:
        return self.size // (len(SOURCES) * PARTS)

    @property
    def dups(self) -> int:
        """Planted duplicates of each kind in each source."""
        return max(1, round(self.dup_rate * self.part_rows * PARTS))

    def expected_mix_equal(self) -> dict:
        """Status counts `mix --preset equal` must give: every unique sample ok."""
        d = self.dups * len(SOURCES)
        return {"ok": self.part_rows * PARTS * len(SOURCES) - 3 * d,
                "duplicate_key": d, "dedup_image": d, "dedup_url": d}


def dup_plan(p: CorpusParams, source_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(kind, original) of each sample of a source (index over its two directories)."""
    n, d = p.part_rows, p.dups
    if 3 * d > n // 2:
        raise SystemExit(f"size {p.size} too small for dup rate {p.dup_rate}")
    rng = np.random.default_rng([p.seed, source_index])
    kind = np.zeros(n * PARTS, np.int8)
    orig = np.arange(n * PARTS)
    key_at = n + rng.choice(n, d, replace=False)   # whole copies: second directory only
    other_at = rng.choice(np.setdiff1d(np.arange(n // 2, n * PARTS), key_at), 2 * d, replace=False)
    originals = rng.choice(n // 2, 3 * d, replace=False)   # distinct, plain, and earlier
    for k, at, src in ((KEY, key_at, originals[:d]), (IMAGE, other_at[:d], originals[d:2 * d]),
                       (URL, other_at[d:], originals[2 * d:])):
        kind[at], orig[at] = k, src
    return kind, orig


def image_pool(size: int, seed: int) -> list[bytes]:
    """Distinct 8x8 images, alternately JPEG (optimized tables, ~300 bytes) and PNG."""
    from PIL import Image

    rng = np.random.default_rng([seed, 99])
    ramp = np.arange(8, dtype=np.int16)
    pool = []
    for i in range(size):
        base = rng.integers(0, 200, 3)
        step = rng.integers(-12, 12, (2, 3))
        pixels = base + ramp[:, None, None] * step[0] + ramp[None, :, None] * step[1]
        pixels = np.clip(pixels + rng.integers(0, 24, (8, 8, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        if i % 2:
            Image.fromarray(pixels).save(buf, "PNG")
        else:
            Image.fromarray(pixels).save(buf, "JPEG", quality=75, optimize=True)
        pool.append(buf.getvalue())
    return pool


def unique_image(pool: list[bytes], uid: int) -> bytes:
    """A pool image made byte-unique by its id: a JPEG COM segment after SOI, or a PNG tEXt
    chunk after IHDR (CRC included); both decode as the pool image."""
    base = pool[(uid * 2654435761) % len(pool)]
    if base[:2] == b"\xff\xd8":
        return b"\xff\xd8\xff\xfe\x00\x0a" + uid.to_bytes(8, "big") + base[2:]
    data = b"tEXtid\x00" + b"%016x" % uid
    chunk = (len(data) - 4).to_bytes(4, "big") + data + zlib.crc32(data).to_bytes(4, "big")
    return base[:33] + chunk + base[33:]


def _url(source: str, k: int, variant: bool) -> str:
    if variant:  # the same resource written another way: normalize_url makes them one
        return f"HTTPS://IMG.Example.COM:443/{source}/{k:010d}.jpg/?utm_source=scale"
    return f"https://img.example.com/{source}/{k:010d}.jpg"


class _Rows:
    """Flat columns of one shard, filled sample by sample."""

    def __init__(self):
        self.keys, self.metas, self.urls = [], [], []
        self.texts, self.images, self.times = [], [], []
        self.offsets = [0]

    def add(self, key: str, items: list, meta: str, url: str, times: list | None = None) -> None:
        self.keys.append(key)
        self.metas.append(meta)
        self.urls.append(url)
        for item in items:
            is_text = isinstance(item, str)
            self.texts.append(item if is_text else None)
            self.images.append(None if is_text else item)
        if times is not None:
            self.times += times
        self.offsets.append(len(self.texts))


def _laion(rows: _Rows, key, c, ki, url, img, p) -> None:
    rows.add(key, [img(ki, 0), f"a small synthetic photo number {c} of laion"],
             f'{{"height": 8, "similarity": {0.28 + (c % 97) / 1000:.3f}, "url": "{url}", "width": 8}}', url)


def _mmc4(rows: _Rows, key, c, ki, url, img, p) -> None:
    m = 2 + ki % 2
    items = [f"Sentence 0 of document {c}, which talks about synthetic things."]
    for j in range(m):
        items += [img(ki, j), f"Sentence {j + 1} of document {c} follows image {j}."]
    rows.add(key, items, f'{{"images_in_document": {m}, "sentences": {m + 1}, "url": "{url}"}}', url)


def _webvid(rows: _Rows, key, c, ki, url, img, p) -> None:
    times = [1.5 * j for j in range(p.frames)]
    rows.add(key, [img(ki, j) for j in range(p.frames)] + [f"stock clip {c}: a synthetic scene"],
             f'{{"frames": {p.frames}, "url": "{url}", "videoid": "{c}"}}', url, times + times[-1:])


SHAPES = {"laion": _laion, "mmc4": _mmc4, "webvid": _webvid}


def shard_rows(p: CorpusParams, source_index: int, kind, orig, start: int, stop: int, pool) -> _Rows:
    source = SOURCES[source_index]
    shape, rows = SHAPES[source], _Rows()
    tag = source_index << 34

    def img(k: int, j: int) -> bytes:
        return unique_image(pool, (tag | k) * 16 + j)

    for g in range(start, stop):
        k, o = int(kind[g]), int(orig[g])
        c = o if k == KEY else g                       # key and text
        ki = o if k in (KEY, IMAGE) else g             # images
        url = _url(source, o if k in (KEY, URL) else g, variant=k == URL)
        shape(rows, f"{source}:{c:010d}", c, ki, url, img, p)
    return rows


def _tables(source: str, rows: _Rows, fails: list[str]) -> tuple[pa.Table, pa.Table]:
    from emu_data.core import schema

    data_schema, status_schema = schema.arrow_schema("interleaved"), schema.arrow_schema("status")
    n = len(rows.keys)
    list_of = {f.name: f.type for f in data_schema}
    images = pa.array(rows.images, pa.binary())
    structs = pa.StructArray.from_arrays([images, pa.nulls(len(images), pa.string())],
                                         fields=list(schema.IMAGE_STRUCT), mask=images.is_null())
    offsets = pa.array(rows.offsets, pa.int32())
    times = (pa.ListArray.from_arrays(offsets, pa.array(rows.times, pa.float64()), type=list_of["times"])
             if rows.times else pa.nulls(n, list_of["times"]))
    data = pa.Table.from_arrays([
        pa.array(rows.keys, pa.string()), pa.array([source] * n, pa.string()),
        pa.ListArray.from_arrays(offsets, pa.array(rows.texts, pa.string()), type=list_of["texts"]),
        pa.ListArray.from_arrays(offsets, structs, type=list_of["images"]),
        times, pa.array(rows.metas, pa.string())], schema=data_schema)
    m = len(fails)
    status = pa.Table.from_arrays([
        pa.array(rows.keys + fails, pa.string()), pa.array([source] * (n + m), pa.string()),
        pa.array(rows.urls + [f"https://img.example.com/{source}/gone/{f}" for f in fails], pa.string()),
        pa.array(["ok"] * n + ["http_404"] * m, pa.string()),
        pa.array([None] * n + ["HTTP Error 404: Not Found"] * m, pa.string()),
        pa.array([1] * (n + m), pa.int32()), pa.array([1] * n + [0] * m, pa.int32())], schema=status_schema)
    return data, status


@dataclass(frozen=True)
class ShardTask:
    out: str
    source_index: int
    part: int
    shard: int


def write_unit(task: ShardTask, p: CorpusParams, fingerprint: str) -> dict:
    """Generate and commit one unit (a data shard, its status shard, its marker)."""
    from emu_data.core import corpus, manifest
    from emu_data.core.shards import write_table

    out, source = Path(task.out), SOURCES[task.source_index]
    kind, orig = _plan_cached(p, task.source_index)
    start = task.part * p.part_rows + task.shard * p.shard_rows
    stop = min(start + p.shard_rows, (task.part + 1) * p.part_rows)
    rows = shard_rows(p, task.source_index, kind, orig, start, stop, _pool_cached(p))
    fails = [f"{source}:x{task.part}{task.shard:05d}{i:04d}" for i in range(round(p.fail_rate * (stop - start)))]
    data, status = (pa.Table.from_batches(t.to_batches(max_chunksize=BATCH_ROWS)) for t in _tables(source, rows, fails))
    unit = f"u{task.shard:05d}"
    part = {"unit": unit, "fingerprint": fingerprint, "digest": f"{task.shard:016x}",
            "shards": [write_table(out / corpus.DATA_DIR / f"{unit}-00000.arrow", data, out).to_dict()],
            "status_shards": [write_table(out / corpus.STATUS_DIR / f"{unit}-00000.arrow", status, out).to_dict()],
            "status_counts": {"ok": data.num_rows, **({"http_404": len(fails)} if fails else {})},
            "source_counts": {source: data.num_rows}}
    (out / corpus.PARTS_DIR).mkdir(exist_ok=True)
    manifest.write_json_atomic(out / corpus.PARTS_DIR / f"{unit}.json", part)
    return part


_CACHE: dict = {}


def _plan_cached(p: CorpusParams, source_index: int):
    if (p, source_index) not in _CACHE:
        for stale in [k for k in _CACHE if k[0] != "pool" and k[0] != p]:
            del _CACHE[stale]   # one size's plans at a time: 10M samples' plan is ~100 MB
        _CACHE[p, source_index] = dup_plan(p, source_index)
    return _CACHE[p, source_index]


def _pool_cached(p: CorpusParams) -> list[bytes]:
    if ("pool", p.pool, p.seed) not in _CACHE:
        _CACHE["pool", p.pool, p.seed] = image_pool(p.pool, p.seed)
    return _CACHE["pool", p.pool, p.seed]


def corpus_dirs(root: Path) -> list[Path]:
    """The input directories in the order mix is given them (originals come first)."""
    return [root / f"{s}-{k}" for s in SOURCES for k in range(PARTS)]


def ensure_corpus(data: Path, p: CorpusParams, workers: int) -> tuple[Path, dict]:
    """The corpora of size p.size under data/, generated unless the marker matches."""
    root = data / f"n{p.size}-g{p.generator}"   # never replaced under a run of another version
    marker = root / MARKER
    if marker.exists():
        found = json.loads(marker.read_text())
        if found["params"] == asdict(p):
            return root, found
    shutil.rmtree(root, ignore_errors=True)   # ours: another parameter set, or unfinished
    root.mkdir(parents=True)
    start = time.perf_counter()
    _generate(root, p, workers)
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    info = {"params": asdict(p), "seconds": round(time.perf_counter() - start, 1), "bytes": disk,
            "rows": p.part_rows * PARTS * len(SOURCES), "workers": workers,
            "expected_mix_equal": p.expected_mix_equal()}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    print(f"generated {info['rows']:,} samples in {info['seconds']} s, {disk / 1e9:.2f} GB: {root}", flush=True)
    return root, info


def _generate(root: Path, p: CorpusParams, workers: int) -> None:
    from emu_data.core import corpus, manifest

    fingerprint = manifest.fingerprint({"scale": asdict(p)})
    per_part = -(-p.part_rows // p.shard_rows)
    tasks = [ShardTask(str(root / f"{s}-{k}"), i, k, n)
             for i, s in enumerate(SOURCES) for k in range(PARTS) for n in range(per_part)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(write_unit, tasks, [p] * len(tasks), [fingerprint] * len(tasks), chunksize=4))
    for directory in corpus_dirs(root):
        mine = [part for t, part in zip(tasks, parts) if t.out == str(directory)]
        config = {"scale": asdict(p), "source": directory.name}
        manifest.write_json_atomic(directory / corpus.CONFIG_NAME, config)
        corpus.finalize(directory, stage=directory.name.split("-")[0], config=config,
                        fingerprint=fingerprint, parts=mine)


# ==== 2. running a command and watching its process tree ============================

def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon in bytes from /proc/PID/status (empty if it is gone)."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS", "RssAnon"):
                    found[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return found


def _tree(pid: int) -> list[int]:
    try:
        import psutil

        root = psutil.Process(pid)
        return [pid] + [c.pid for c in root.children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone meanwhile, or no psutil: the /proc walk below
        return _tree_from_proc(pid)


def _tree_from_proc(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        kids = [c for c, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Watch:
    wall_s: float = 0.0
    rc: int | None = None
    driver_hwm: int = 0         # the CLI process's own peak RSS
    tree_rss_peak: int = 0      # summed VmRSS of the process and all its descendants
    tree_anon_peak: int = 0     # the same, anonymous memory only (no mapped files, no shm)
    cpu_s: float = 0.0          # the larger of the two below
    cpu_s_rusage: float = 0.0   # wait4's rusage: the process and the descendants it reaped
    cpu_s_polled: float = 0.0   # the largest CPU time seen of each process, summed
    processes: int = 0
    killed: str | None = None


def run_watched(cmd: list[str], *, env: dict, cwd: Path, log: Path, timeout_s: float,
                max_anon: int, poll_s: float = 0.2) -> Watch:
    """Run cmd, polling its process tree; kill the tree past timeout_s or max_anon bytes."""
    w, cpu = Watch(), {}
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            _sample(proc.pid, w, cpu)
            elapsed = time.perf_counter() - start
            if elapsed > timeout_s or w.tree_anon_peak > max_anon:
                w.killed = f"timeout {timeout_s:.0f} s" if elapsed > timeout_s else f"memory > {max_anon / 2**30:.0f} GiB"
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(poll_s)
        w.wall_s = time.perf_counter() - start
    proc.returncode = w.rc = os.waitstatus_to_exitcode(status)
    w.cpu_s_polled = sum(cpu.values())
    # rusage misses Ray workers (the raylet reaps them), polling a process's last 0.2 s
    w.cpu_s_rusage = usage.ru_utime + usage.ru_stime
    w.cpu_s = max(w.cpu_s_rusage, w.cpu_s_polled)
    w.processes = len(cpu)
    _reap_group(proc.pid)
    return w


def _sample(pid: int, w: Watch, cpu: dict) -> None:
    rss = anon = 0
    for p in _tree(pid):
        st = _proc_status(p)
        rss += st.get("VmRSS", 0)
        anon += st.get("RssAnon", 0)
        if p == pid:
            w.driver_hwm = max(w.driver_hwm, st.get("VmHWM", 0))
        cpu[p] = max(cpu.get(p, 0.0), _cpu_seconds(p))
    w.tree_rss_peak = max(w.tree_rss_peak, rss)
    w.tree_anon_peak = max(w.tree_anon_peak, anon)


def _reap_group(pgid: int) -> None:
    """Whatever of the command's session outlived it (a Ray worker): wait, then kill."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ==== 3. the two versions ===========================================================

@dataclass(frozen=True)
class Version:
    name: str     # before | after
    root: Path    # its checkout: PYTHONPATH and working directory of every run
    code: str     # commit, plus a digest of uncommitted changes to emu_data/

    def env(self) -> dict:
        env = {**os.environ, "PYTHONPATH": str(self.root), "RAY_USAGE_STATS_ENABLED": "0",
               "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        return env

    def cli(self, *args: str) -> list[str]:
        return [str(PYTHON), "-m", "emu_data.cli", *args]


def versions(before_rev: str, before_dir: Path) -> dict[str, Version]:
    if not (before_dir / "emu_data").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before_dir), before_rev],
                       check=True)
    head = _git(REPO, "rev-parse", "--short", "HEAD")
    dirty = hashlib.sha256(_git(REPO, "diff", "HEAD", "--", "emu_data", "schemas").encode()
                           + _untracked(REPO)).hexdigest()[:10]
    return {"before": Version("before", before_dir, _git(before_dir, "rev-parse", "--short", "HEAD")),
            "after": Version("after", REPO, f"{head}+{dirty}")}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def _untracked(root: Path) -> bytes:
    names = _git(root, "ls-files", "--others", "--exclude-standard", "--", "emu_data").split()
    return b"".join(n.encode() + (root / n).read_bytes() for n in sorted(names))


PROBE = ("import emu_data, ray; print('driver', emu_data.__file__); ray.init(num_cpus=1, include_dashboard=False); "
         "print('worker', ray.get(ray.remote(lambda: __import__('emu_data').__file__).remote())); ray.shutdown()")


def probe(v: Version) -> dict:
    """Which emu_data the driver and a Ray worker of this version import (must be v.root's)."""
    out = subprocess.run([str(PYTHON), "-c", PROBE], env=v.env(), cwd=v.root, capture_output=True, text=True)
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("driver ", "worker ")))
    ok = all(path.startswith(str(v.root / "emu_data")) for path in found.values()) and len(found) == 2
    if not ok:
        raise SystemExit(f"{v.name}: wrong code imported: {found or out.stderr[-2000:]}")
    mix_help = subprocess.run(v.cli("mix", "--help"), env=v.env(), cwd=v.root, capture_output=True, text=True).stdout
    val_help = subprocess.run(v.cli("validate", "--help"), env=v.env(), cwd=v.root, capture_output=True, text=True).stdout
    return {**found, "mix_num_cpus": "--num-cpus" in mix_help, "validate_num_cpus": "--num-cpus" in val_help}


# ==== 4. the measurements and their checks ============================================

def _name(info: dict, *parts: str) -> str:
    return "-".join([f"n{info['params']['size']}-g{info['params']['generator']}", *parts])


def measure_mix(v: Version, info: dict, root: Path, preset: str, args, probed: dict) -> dict:
    out = args.data / "out" / _name(info, preset, v.name)
    shutil.rmtree(out, ignore_errors=True)
    cmd = v.cli("mix", *map(str, corpus_dirs(root)), "--out", str(out), "--preset", preset,
                *(["--num-cpus", str(args.num_cpus)] if probed["mix_num_cpus"] else []))
    w = _run(cmd, v, args, "mix-" + _name(info, preset, v.name))
    result = {"command": f"mix --preset {preset}", "watch": asdict(w)}
    if w.rc == 0:
        result["output"] = mix_output(out, args.results / "keys" / f"{_name(info, preset, v.name)}.arrow")
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return result


def mix_output(out: Path, keys_file: Path) -> dict:
    """What a mix wrote: counts from its manifest, and its keys sorted (saved for comparing)."""
    from emu_data.core.shards import read_shard

    built = json.loads((out / "_manifest.json").read_text())
    keys = pa.chunked_array([read_shard(out / s["path"]).column("key") for s in built["shards"]]
                            or [pa.array([], pa.string())]).combine_chunks()
    keys = keys.take(pc.sort_indices(keys))
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(keys_file), "wb") as f, pa.ipc.new_file(f, pa.schema([("key", pa.string())])) as w:
        w.write_table(pa.table({"key": keys}))
    digest = hashlib.sha256()
    for buf in keys.buffers()[1:]:   # offsets and characters (take() made them fresh)
        digest.update(memoryview(buf))
    return {"rows": built["rows"], "status_counts": built["status_counts"], "source_counts": built["source_counts"],
            "keys": len(keys), "unique_keys": pc.count_distinct(keys).as_py(), "keys_sha256": digest.hexdigest(),
            "keys_file": str(keys_file)}


def measure_validate(v: Version, info: dict, root: Path, args, probed: dict) -> dict:
    cmd = v.cli("validate", *map(str, corpus_dirs(root)),
                *(["--num-cpus", str(args.num_cpus)] if probed["validate_num_cpus"] else []))
    log = "validate-" + _name(info, v.name)
    w = _run(cmd, v, args, log)
    lines = (args.results / "logs" / f"{log}.log").read_text(errors="replace").splitlines()
    summary = next((line for line in reversed(lines) if "director(ies)" in line), None)
    return {"command": "validate", "watch": asdict(w), "output": {"summary": summary, "rc": w.rc}}


def _run(cmd: list[str], v: Version, args, name: str) -> Watch:
    (args.results / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[2:5])} ...", flush=True)
    w = run_watched(cmd, env=v.env(), cwd=v.root, log=args.results / "logs" / f"{name}.log",
                    timeout_s=args.timeout, max_anon=int(args.max_gib * 2**30))
    print(f"    rc {w.rc}, {w.wall_s:.1f} s, driver {w.driver_hwm / MB:.0f} MB, tree {w.tree_rss_peak / MB:.0f} MB"
          f" (anon {w.tree_anon_peak / MB:.0f} MB), cpu {w.cpu_s:.0f} s{', killed: ' + w.killed if w.killed else ''}",
          flush=True)
    return w


def mix_check(record: dict, others: list[dict], expected: dict | None) -> str:
    """Output check of a mix record: against what was planted (preset equal) and against the
    other version's output of the same size and preset."""
    out = record.get("output")
    if out is None:
        return f"failed (rc {record['watch']['rc']}{', ' + record['watch']['killed'] if record['watch']['killed'] else ''})"
    notes = []
    if out["unique_keys"] != out["keys"]:
        notes.append(f"{out['keys'] - out['unique_keys']} repeated keys")
    if expected is not None:
        notes.append("status as planted" if out["status_counts"] == expected else f"status {out['status_counts']} != planted {expected}")
    for other in others:
        theirs = other.get("output")
        if theirs is None:
            continue
        if theirs["keys_sha256"] == out["keys_sha256"]:
            notes.append(f"same key set as {other['version']} ({out['keys']:,})")
        else:
            notes.append(f"vs {other['version']}: {key_difference(out['keys_file'], theirs['keys_file'])}")
        if theirs["status_counts"] != out["status_counts"]:
            notes.append(f"status differs from {other['version']}: {out['status_counts']} vs {theirs['status_counts']}")
    return "; ".join(notes)


def key_difference(mine: str, theirs: str) -> str:
    a = pa.ipc.open_file(pa.memory_map(mine)).read_all().column("key")
    b = pa.ipc.open_file(pa.memory_map(theirs)).read_all().column("key")
    only_a = len(a) - pc.sum(pc.is_in(a, value_set=b.combine_chunks())).as_py()
    only_b = len(b) - pc.sum(pc.is_in(b, value_set=a.combine_chunks())).as_py()
    return f"{len(a):,} vs {len(b):,} keys, {only_a:,} only here, {only_b:,} only there"


def validate_check(record: dict, others: list[dict]) -> str:
    out = record["output"]
    notes = [f"rc {out['rc']}: {_short_summary(out['summary'])}"]
    for other in others:
        same = other["output"]["summary"] == out["summary"] and other["output"]["rc"] == out["rc"]
        notes.append(f"same summary as {other['version']}" if same else f"differs from {other['version']}")
    return "; ".join(notes)


def _short_summary(summary: str | None) -> str:
    return "no summary line" if summary is None else summary.rsplit(": ", 1)[-1]


# ==== 5. results and the report ========================================================

def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def reusable(results: list[dict], size_info: dict, command: str, v: Version) -> dict | None:
    for r in reversed(results):
        if (r["params"] == size_info["params"] and r["command"] == command and r["version"] == v.name
                and r["code"] == v.code and r["watch"]["rc"] is not None and not r["watch"]["killed"]):
            return r
    return None


def report_rows(records: list[dict], num_cpus: int) -> list[dict]:
    """One table row per record, with its output check against the others of its size."""
    rows = []
    for r in records:
        size, w = r["params"]["size"], r["watch"]
        peers = [o for o in records if o is not r and o["params"] == r["params"] and o["command"] == r["command"]
                 and o["version"] != r["version"]]
        if r["command"].startswith("mix"):
            planted = r["expected_mix_equal"] if r["command"] == "mix --preset equal" else None
            check = mix_check(r, peers, planted)
        else:
            check = validate_check(r, peers)
        ok = w["rc"] in (0, 1) and not w["killed"]
        rows.append({
            "size": f"{size / 1e6:g}M", "data": f"g{r['params']['generator']}", "command": r["command"], "version": f"{r['version']} ({r['code']})",
            "wall s": f"{w['wall_s']:.0f}" if ok else f"({w['wall_s']:.0f})",
            "rows/s/core": f"{r['rows'] / w['wall_s'] / num_cpus:,.0f}" if ok else "-",
            "rows/CPU-s": f"{r['rows'] / w['cpu_s']:,.0f}" if ok and w["cpu_s"] else "-",
            "driver peak RSS": _gib(w["driver_hwm"]), "total peak RSS": _gib(w["tree_rss_peak"]),
            "total peak anon": _gib(w["tree_anon_peak"]), "output check": check})
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MB:.0f} MiB"


def markdown(rows: list[dict], header: str) -> str:
    if not rows:
        return header + "\n(no measurements)\n"
    cols = list(rows[0])
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def corpora_lines(data: Path, records: list[dict]) -> str:
    """One line per generated size: samples, disk, shards and how long generating took."""
    lines = []
    for size in sorted({r["params"]["size"] for r in records}):
        for marker in sorted(data.glob(f"n{size}-g*/{MARKER}")):
            info = json.loads(marker.read_text())
            p = CorpusParams(**info["params"])
            shards = len(SOURCES) * PARTS * -(-p.part_rows // p.shard_rows)
            lines.append(f"- {size / 1e6:g}M, g{p.generator}: {info['rows']:,} samples in {len(SOURCES) * PARTS} directories, "
                         f"{shards} data shards, {info['bytes'] / 1e9:.2f} GB, generated in "
                         f"{info['seconds']:.0f} s with {info['workers']} process(es)")
    return ("Corpora (benchmarks/scale.py's generator; g1 wrote each shard as one record batch, g2 in "
            "batches of 256 rows as ShardWriter does):\n" + "\n".join(lines))


def machine() -> str:
    import pyarrow

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
            f"pyarrow {pyarrow.__version__}, {time.strftime('%Y-%m-%d')}")


# ==== main ==================================================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7", help="total input samples, comma-separated (1e5,1e6)")
    ap.add_argument("--versions", default="before,after")
    ap.add_argument("--commands", default="mix,validate")
    ap.add_argument("--presets", default="equal", help="mix presets to run (equal is the exact-set check)")
    ap.add_argument("--data", type=Path, default=Path("/work/scale-data"))
    ap.add_argument("--results", type=Path, default=Path("/work/scale-results"),
                    help="folder of runs.jsonl, the saved output keys and the logs")
    ap.add_argument("--report", type=Path, default=None, help="markdown report (default RESULTS/report.md)")
    ap.add_argument("--before-rev", default="67976e9")
    ap.add_argument("--before-dir", type=Path, default=Path("/tmp/emu-before"))
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--gen-workers", type=int, default=1)
    ap.add_argument("--frames", type=int, default=CorpusParams.frames)
    ap.add_argument("--dup-rate", type=float, default=CorpusParams.dup_rate)
    ap.add_argument("--shard-rows", type=int, default=CorpusParams.shard_rows)
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before a run is killed")
    ap.add_argument("--max-gib", type=float, default=18.0,
                    help="kill a run whose tree holds more anonymous memory (the machine is shared)")
    ap.add_argument("--reuse", action="store_true", help="take recorded runs of the same data and code")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="measure nothing: the report of recorded runs")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="another runs.jsonl whose runs complete the report (repeatable)")
    ap.add_argument("--keep-outputs", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.report_only:
        return write_report(args, sizes, [])
    runs_file = args.results / "runs.jsonl"
    chosen = {}
    if not args.generate_only:
        chosen = {k: v for k, v in versions(args.before_rev, args.before_dir).items() if k in args.versions.split(",")}
    probed = {k: probe(v) for k, v in chosen.items()}
    for k, found in probed.items():
        print(f"{k} ({chosen[k].code}): {found}", flush=True)
    session = []
    for size in sizes:
        params = CorpusParams(size, shard_rows=args.shard_rows, dup_rate=args.dup_rate, frames=args.frames)
        root, info = ensure_corpus(args.data, params, args.gen_workers)
        if args.generate_only:
            continue
        for name, v in chosen.items():
            session += run_size(args, runs_file, v, root, info, probed[name])
    if not args.generate_only:
        write_report(args, sizes, session)


def run_size(args, runs_file: Path, v: Version, root: Path, info: dict, probed: dict) -> list[dict]:
    records = []
    jobs = [(f"mix --preset {p}", lambda p=p: measure_mix(v, info, root, p, args, probed))
            for p in args.presets.split(",") if "mix" in args.commands.split(",")]
    if "validate" in args.commands.split(","):
        jobs.append(("validate", lambda: measure_validate(v, info, root, args, probed)))
    results = load_results(runs_file)
    for command, job in jobs:
        found = reusable(results, info, command, v) if args.reuse else None
        if found is None:
            found = {**job(), "version": v.name, "code": v.code, "probe": probed, "params": info["params"],
                     "rows": info["rows"], "expected_mix_equal": info["expected_mix_equal"],
                     "corpus_bytes": info["bytes"], "num_cpus": args.num_cpus, "machine": machine(),
                     "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_result(runs_file, found)
        records.append(found)
    return records


def _slot(r: dict) -> tuple:
    """A report row's place: one per size, data, command and version."""
    return r["params"]["size"], r["params"]["generator"], r["command"], r["version"]


def write_report(args, sizes: list[int], session: list[dict]) -> None:
    """The table of this invocation's measurements, completed by the latest recorded run (in
    --results or a --merge file) of each size, command and version it did not measure itself."""
    have = {_slot(r) for r in session}
    wanted = {"validate"} | {f"mix --preset {p}" for p in args.presets.split(",")}
    latest = {}
    for path in [args.results / "runs.jsonl", *args.merge]:
        for r in load_results(path):
            if r["params"]["size"] in sizes and r["command"] in wanted:
                latest[_slot(r)] = r
    records = session + [r for k, r in latest.items() if k not in have]
    records.sort(key=lambda r: (r["params"]["size"], r["command"], r["params"]["generator"], r["version"] != "before"))
    rows = report_rows(records, args.num_cpus)
    text = markdown(rows, f"Machine: {machine()}; --num-cpus {args.num_cpus}\n\n" + corpora_lines(args.data, records))
    print(text)
    report = args.report or args.results / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    report.with_suffix(".json").write_text(json.dumps({"rows": rows, "records": records}, indent=1) + "\n")
    print(f"report: {report} (+ .json); runs: {args.results / 'runs.jsonl'}")


if __name__ == "__main__":
    main()
