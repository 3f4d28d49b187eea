"""LAION ingest throughput: `emu-data laion` against img2dataset alone, same server, same inputs.

    python benchmarks/laion.py --images 3000 --workers 2 --threads 32

The sample site publishes N generated JPEGs (160-320 x 120-240 px flat drawings, ~2 KB each;
with --photo-px, re-rendered at that width with sensor grain, closer to a web photo's bytes
and decode cost) and a LAION parquet pointing at them; a static HTTP server in its own process serves them on
127.0.0.1. Both sides get the same parallelism and img2dataset settings:

  ours      make_laion: Ray with --workers CPUs, units of ceil(N / workers) rows, each unit
            img2dataset's Downloader in the Ray worker with --threads threads, each result
            handed straight to Pillow's full decode, sha256 and the corpus shards (fsync, manifest).
  baseline  img2dataset's download() on the LAION parquet itself (url_col URL, caption_col
            TEXT), processes_count=--workers, the same threads, one shard per process,
            no EXIF, no hash, and resize_mode "no" + skip_reencode: img2dataset's way of keeping
            the originals that still decodes every image (with OpenCV) to check it. Ours keeps
            originals with disable_all_reencoding and leaves that one decode to Pillow.
  reference img2dataset with disable_all_reencoding as well: no decode, nothing checked (the
            floor of any ingest built on it; reported, not compared).

Rates are successful images per second of wall time, start-up included (both sides start
processes that import img2dataset: ours once per Ray worker, the baseline once per run). Each side
runs --repeats times, alternating, best run kept. The address guard runs in its 127.0.0.1
form (allow_private_addresses: scheme and host checks, no DNS); with real hosts it adds one
DNS lookup per host and unit, on a thread pool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from emu_data import net
from emu_data.engine import runtime
from emu_data.synthetic import site as sample_site
from emu_data.synthetic.site.laion import SitePair, publish_laion
from emu_data.sources import laion
from emu_data.engine.stage import OutputOptions

from _timing import alternate, timed  # noqa: E402  (benchmarks/ is on sys.path as a script)


def _serve(root: str, conn, stop) -> None:
    with sample_site.serve(Path(root)) as base:
        conn.send(base)
        stop.wait()


@contextlib.contextmanager
def server(root: Path):
    """The sample site's static server in a process of its own (no GIL shared with either side)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(str(root), child, stop), daemon=True)
    proc.start()
    try:
        yield parent.recv()
    finally:
        stop.set()
        proc.join(10)


@contextlib.contextmanager
def quiet(path: Path):
    """img2dataset's processes print per-shard progress on fds 1 and 2: into a file with it."""
    sys.stdout.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def photographic(folder: Path, pairs: list[SitePair], width: int) -> None:
    """Replace each flat drawing with a grainy enlargement: tens of KB, like web photos."""
    import numpy as np
    from PIL import Image

    from emu_data.synthetic import world

    for pair in pairs:
        w, h = pair.size()
        image = world.render(pair.scene(), width, round(width * h / w))
        noise = np.random.default_rng(pair.index).normal(0, 12, (image.height, image.width, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        (folder / f"{pair.name}.jpg").write_bytes(world.encode(Image.fromarray(pixels), quality=90))


def run_ours(files, config: laion.LaionConfig, out: Path, ray: runtime.RayOptions) -> int:
    shutil.rmtree(out, ignore_errors=True)
    result = laion.make_laion([files.laion], config, net.NetPolicy(allow_private_addresses=True),
                              OutputOptions(out), ray)
    return result.manifest["status_counts"].get("ok", 0)


def run_baseline(files, config: laion.LaionConfig, workers: int, out: Path, n: int, *, decode: bool = True) -> int:
    from img2dataset import download

    shutil.rmtree(out, ignore_errors=True)
    job = laion.download_job(config)
    resizer = dict(job.resizer, disable_all_reencoding=not decode)
    # img2dataset's own best case: one shard per process, no EXIF, no hash. decode: resize_mode
    # "no" + skip_reencode, its way of keeping originals that still decodes each image (ours
    # hands that decode to Pillow, which also does the size checks)
    with quiet(out.parent / "img2dataset.log"):
        download(url_list=str(files.laion), input_format="parquet", url_col="URL", caption_col="TEXT",
                 output_folder=str(out), output_format="parquet", distributor="multiprocessing",
                 processes_count=workers, thread_count=job.thread_count, number_sample_per_shard=math.ceil(n / workers),
                 timeout=job.timeout, retries=job.retries, extract_exif=False, enable_wandb=False, **resizer)
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def _rate(run: tuple[float, int]) -> dict:
    seconds, ok = run
    return {"ok": ok, "seconds": round(seconds, 2), "images_per_s": round(ok / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs (ours) = img2dataset processes (baseline)")
    ap.add_argument("--threads", type=int, default=32, help="download threads per process, both sides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photo-px", type=int, default=0, help="re-render images this wide, with grain (0: off)")
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check in any process
    ray = runtime.RayOptions(num_cpus=args.workers)
    config = laion.LaionConfig(rows_per_unit=math.ceil(args.images / args.workers),
                               download=laion.DownloadOptions(thread_count=args.threads))
    with tempfile.TemporaryDirectory(prefix="bench-laion-") as tmp:
        tmp = Path(tmp)
        with server(tmp / "site") as base:
            pairs = [SitePair(i) for i in range(args.images)]
            publish_seconds, files = timed(lambda: publish_laion(tmp / "site", base, pairs))
            if args.photo_px:
                photographic(tmp / "site" / "laion" / "img", pairs, args.photo_px)
            runtime.ensure_ray(ray)  # cluster start-up is not per run: keep it out of the timings
            ours_runs, baseline_runs = alternate(
                lambda: run_ours(files, config, tmp / "ours", ray),
                lambda: run_baseline(files, config, args.workers, tmp / "baseline", args.images),
                repeats=args.repeats)
            ours, baseline = (min(runs, key=lambda r: r[0]) for runs in (ours_runs, baseline_runs))
            undecoded = min((timed(lambda: run_baseline(files, config, args.workers, tmp / "raw", args.images,
                                                        decode=False)) for _ in range(args.repeats)),
                            key=lambda r: r[0])
            kb = sum(p.stat().st_size for p in (tmp / "site" / "laion" / "img").glob("*.jpg")) / args.images / 1024
    runtime.shutdown()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "images": args.images, "photo_px": args.photo_px or None, "mean_kb": round(kb, 1), "workers": args.workers, "threads": args.threads,
        "publish_s": round(publish_seconds, 1),
        "ours": _rate(ours),
        "img2dataset": _rate(baseline),
        "ratio_ours_over_img2dataset": round(_rate(ours)["images_per_s"] / _rate(baseline)["images_per_s"], 3),
        # the first run of ours imports img2dataset in fresh Ray workers; later ones reuse them
        "ours_first_run": _rate(ours_runs[0]),
        "ratio_first_runs": round(_rate(ours_runs[0])["images_per_s"] / _rate(baseline_runs[0])["images_per_s"], 3),
        "img2dataset_no_decode": _rate(undecoded),  # disable_all_reencoding: nothing checks the bytes
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
