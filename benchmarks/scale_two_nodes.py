"""mix on a two-node local Ray cluster against one node: the outputs must be byte-identical.

    python benchmarks/scale_two_nodes.py --size 1e5

The corpora are benchmarks/scale.py's (generated into --data unless there). The same
`emu-data mix` runs twice, each a process of its own: once joined (--ray-address) to a
`ray.cluster_utils.Cluster` of two nodes with one CPU each — two raylets, each with its own
workers and object store — and once on an embedded one-node Ray (--num-cpus 2). Each task
runs on whichever node has a free CPU, so the split of work between nodes is Ray's choice;
the output may not depend on it. Compared: the sha256 of every file under data/ and
status/, and the manifest's shard lists and counts (not its creation time or the Ray options
in its config). While the two-node run goes, the worker processes under each raylet are
polled: a node counts as used once one of its workers shows a task's title (not ray::IDLE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import scale  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def digest_dir(out: Path) -> dict:
    """sha256 of every shard file, and what the manifest says about them."""
    built = json.loads((out / "_manifest.json").read_text())
    files = {}
    for sub in ("data", "status"):
        for path in sorted((out / sub).iterdir()):
            files[f"{sub}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    listed = {k: built[k] for k in ("shards", "status_shards", "rows", "status_counts", "source_counts")}
    return {"files": files, "manifest": listed}


class NodeWatch(threading.Thread):
    """Polls the raylets this process started: which ran a task, as their workers' titles say."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.busy: dict[int, set[str]] = {}   # raylet pid -> task titles seen on its workers

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.2):
            for raylet in (p for p in me.children(recursive=True) if _name(p) == "raylet"):
                titles = self.busy.setdefault(raylet.pid, set())
                for worker in raylet.children(recursive=True):
                    title = _title(worker)
                    if title.startswith("ray::") and "IDLE" not in title:
                        titles.add(title.split()[0])


def _name(p) -> str:
    try:
        return p.name()
    except Exception:  # noqa: BLE001 - the process ended between listing and asking
        return ""


def _title(p) -> str:
    try:
        return " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - likewise
        return ""


def run_mix(v: scale.Version, inputs: list[Path], out: Path, extra: list[str], log: Path) -> scale.Watch:
    shutil.rmtree(out, ignore_errors=True)
    cmd = v.cli("mix", *map(str, inputs), "--out", str(out), "--preset", "equal", *extra)
    w = scale.run_watched(cmd, env=v.env(), cwd=v.root, log=log, timeout_s=3 * 3600, max_anon=18 * 2**30)
    print(f"  {' '.join(extra)}: rc {w.rc}, {w.wall_s:.1f} s", flush=True)
    if w.rc != 0:
        raise SystemExit(f"mix failed, see {log}")
    return w


def two_node_run(v: scale.Version, inputs: list[Path], out: Path, log: Path) -> tuple[scale.Watch, dict]:
    from ray.cluster_utils import Cluster

    os.environ.update({k: v.env()[k] for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")})
    os.chdir(v.root)   # the raylets and their workers start here, with this version's code
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    watch = NodeWatch()
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        watch.start()
        w = run_mix(v, inputs, out, ["--ray-address", cluster.address], log)
    finally:
        watch.stop.set()
        cluster.shutdown()
    return w, {str(pid): sorted(titles) for pid, titles in watch.busy.items()}


def compare(a: dict, b: dict) -> list[str]:
    problems = []
    for name in sorted(set(a["files"]) | set(b["files"])):
        if a["files"].get(name) != b["files"].get(name):
            problems.append(f"{name}: {a['files'].get(name, 'missing')[:12]} vs {b['files'].get(name, 'missing')[:12]}")
    for key in a["manifest"]:
        if a["manifest"][key] != b["manifest"][key]:
            problems.append(f"manifest {key} differs")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1e5", help="total input samples")
    ap.add_argument("--version", default="after", choices=("before", "after"))
    ap.add_argument("--data", type=Path, default=Path("/work/scale-data"))
    ap.add_argument("--results", type=Path, default=Path("/work/scale-results"))
    ap.add_argument("--before-rev", default="67976e9")
    ap.add_argument("--before-dir", type=Path, default=Path("/tmp/emu-before"))
    args = ap.parse_args()
    v = scale.versions(args.before_rev, args.before_dir)[args.version]
    print(f"{v.name} ({v.code}): {scale.probe(v)}", flush=True)
    root, info = scale.ensure_corpus(args.data, scale.CorpusParams(int(float(args.size))), 1)
    inputs, work = scale.corpus_dirs(root), args.data / "two-nodes"
    (args.results / "logs").mkdir(parents=True, exist_ok=True)
    log = args.results / "logs" / f"two-nodes-n{info['params']['size']}-{v.name}"
    one = run_mix(v, inputs, work / "one", ["--num-cpus", "2"], log.with_suffix(".one.log"))
    two, nodes = two_node_run(v, inputs, work / "two", log.with_suffix(".two.log"))
    problems = compare(digest_dir(work / "one"), digest_dir(work / "two"))
    files = len(digest_dir(work / "one")["files"])
    result = {"version": v.name, "code": v.code, "size": info["params"]["size"], "rows": info["rows"],
              "files": files, "identical": not problems, "problems": problems[:50],
              "nodes_with_tasks": sum(1 for t in nodes.values() if t), "node_task_titles": nodes,
              "wall_s": {"one_node": round(one.wall_s, 1), "two_nodes": round(two.wall_s, 1)},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(args.results / "two_nodes.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    verdict = f"identical ({files} shard files)" if not problems else f"{len(problems)} difference(s): {problems[:5]}"
    print(f"{v.name} mix, {info['rows']:,} samples: two nodes ({result['nodes_with_tasks']} ran tasks) vs one: {verdict}")
    shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if not problems and result["nodes_with_tasks"] == 2 else 1)


if __name__ == "__main__":
    main()
