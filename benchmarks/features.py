"""EVA-CLIP feature throughput: images/s end to end, the CPU decode rate, and TFLOP/s.

    python benchmarks/features.py --model EVA02-L-14 --precision bf16 --batch-size 256 --images 20000
    python benchmarks/features.py --model EVA02-B-16 --precision fp32 --batch-size 16 --images 256 --gpus 0
    python benchmarks/features.py --model probe-224 --tokens patch --precision fp32 --batch-size 64 \
        --images 20000 --gpus 0 --end-to-end-only --corpus /tmp/corpus-20k   # the driver's memory

Random weights (pretrained none): speed does not depend on them. `--model probe-224` is a
one-block ViT at 224 px (197 tokens x 192, 151 KB per fp32 patch-token row for ~0.2 GFLOP):
many bytes of features for little compute, to see what the run costs the driver on a CPU. The corpus is `emu-data
sample`'s (drawn scenes; photos of the same pixel size decode alike after the resize).
Reported:
  decode     ChunkReader (read shard, JPEG/PNG decode, resize, crop) in this process on one
             core: images/s per CPU, and the CPU decode tasks a GPU needs to be fed.
  encode     the Encoder alone on a fixed batch of pixels, best of --repeats calls: images/s,
             model FLOPs per image (torch's FlopCounterMode, one forward) and TFLOP/s against
             --peak-tflops (default: 790 for H100/H200 bf16 dense, REFERENCE.md).
  end_to_end make_features over the whole corpus (decode tasks + encoder actors that write
             the shards), model load and Ray start-up included; the feature bytes written,
             and the driver's peak RSS during the run (VmRSS sampled every 20 ms: the mapped
             object-store pages it reads count) and over its life (ru_maxrss). With
             --end-to-end-only the driver loads no model of its own, so both say what the
             stage costs the driver. cpu_s: CPU seconds of the whole process tree (driver
             and Ray), images_per_cpu_s the rate a loaded shared machine does not move.
Peer: clip-retrieval's 312 img/s per A100 for ViT-L/14 (goal on one H100: 2x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from emu_data.ops import encoder, features
from emu_data.engine import runtime
from emu_data.core.corpus import shard_paths
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions

CLIP_RETRIEVAL_A100_VIT_L = 312.0
PROBE_224 = {"embed_dim": 32,
             "vision_cfg": {"image_size": 224, "layers": 1, "width": 192, "head_width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PEAK_BF16 = {"H100": 790.0, "H200": 790.0}  # TFLOP/s, dense bf16 matmul (REFERENCE.md)


def make_corpus(out: Path, images: int, ray: runtime.RayOptions) -> Path:
    """A sample corpus of about `images` images (some 32 per item across the five sources)."""
    n = max(1, math.ceil(images / 32))
    sample.make_sample(sample.SampleConfig(n=n, per_unit=max(1, n // 4)), OutputOptions(out), ray)
    return out


class PeakRss:
    """The largest VmRSS of this process while the block runs (sampled every `every` s)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while True:
            self.peak = max(self.peak, _vm_rss())
            if self._stop.wait(self.every):
                return


def _vm_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def tree_cpu() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants (the
    embedded Ray's raylet and workers), as benchmarks/webvid_local.py counts them, plus what
    the children they reaped used (the encoder actor is gone when the run ends): a rate per
    CPU second that other users of a shared machine do not move. Linux only."""
    parents, used = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue   # gone meanwhile
            parents[int(entry)] = int(fields[1])
            used[int(entry)] = sum(map(int, fields[11:15]))   # utime, stime, cutime, cstime
    mine, changed = {os.getpid()}, True
    while changed:
        grown = mine | {pid for pid, parent in parents.items() if parent in mine}
        changed, mine = grown != mine, grown
    return sum(used.get(pid, 0) for pid in mine) / os.sysconf("SC_CLK_TCK")


def end_to_end(corpus: Path, out: Path, spec: encoder.ModelSpec, run: features.RunOptions,
               ray: runtime.RayOptions) -> dict:
    runtime.ensure_ray(ray)   # started before the clocks: its CPU seconds are not the stage's
    start, before, cpu = time.perf_counter(), _vm_rss(), tree_cpu()
    with PeakRss() as rss:
        built = features.make_features(corpus, out, spec, run, ray)
    seconds, cpu = time.perf_counter() - start, tree_cpu() - cpu
    return {"images": built["rows"], "seconds": round(seconds, 1), "images_per_s": round(built["rows"] / seconds, 1),
            "cpu_s": round(cpu, 1), "images_per_cpu_s": round(built["rows"] / cpu, 2),
            "feature_mb": round(sum(s["bytes"] for s in built["shards"]) / 2**20, 1), "driver_rss_before_mb": before // 2**20,
            "driver_peak_rss_mb": rss.peak // 2**20,
            "driver_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "sha256": {s["path"]: s["sha256"] for s in built["shards"]}}   # to compare two versions' bytes


def decode_rate(corpus: Path, preprocess: encoder.Preprocess) -> dict:
    reader, done, start = features.ChunkReader(str(corpus), preprocess), 0, time.perf_counter()
    for path in shard_paths(corpus):
        rel = path.relative_to(corpus).as_posix()
        counts = features.image_counts(path)
        for chunk in features.chunks_of(rel, counts, 64):
            done += len(reader(asdict(chunk))["key"])
    seconds = time.perf_counter() - start
    return {"images": done, "seconds": round(seconds, 2), "images_per_s_per_cpu": round(done / seconds, 1)}


def model_flops(spec: encoder.ModelSpec, preprocess: encoder.Preprocess) -> float:
    """FLOPs of one image through the vision tower (matmuls and convs, fp32 on CPU)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    probe = encoder.Encoder(encoder.ModelSpec(spec.model, "none", spec.tokens, "fp32"), preprocess, "cpu")
    with FlopCounterMode(display=False) as counter:
        probe.encode(np.zeros((1, *preprocess.size, 3), np.uint8))
    del probe
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return float(counter.get_total_flops())


def encode_rate(spec: encoder.ModelSpec, preprocess: encoder.Preprocess, batch: int, repeats: int,
                device: str | None) -> dict:
    import numpy as np
    import torch

    model = encoder.Encoder(spec, preprocess, device)
    pixels = np.random.default_rng(0).integers(0, 255, (batch, *preprocess.size, 3), dtype=np.uint8)
    model({"pixels": pixels})  # warm-up: kernels, autotuning, allocator
    best = math.inf
    for _ in range(repeats):
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model({"pixels": pixels})
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    name = torch.cuda.get_device_name() if model.device.startswith("cuda") else platform.processor() or "cpu"
    return {"device": name, "batch": batch, "seconds_per_batch": round(best, 4), "images_per_s": round(batch / best, 1)}


def model_rates(spec: encoder.ModelSpec, preprocess: encoder.Preprocess, corpus: Path, args, cuda: bool) -> dict:
    report = {"decode": decode_rate(corpus, preprocess)}
    flops = model_flops(spec, preprocess)
    report["gflops_per_image"] = round(flops / 1e9, 2)
    report["encode"] = encode_rate(spec, preprocess, args.batch_size, args.repeats, None if cuda else "cpu")
    rate = report["encode"]["images_per_s"]
    report["encode"]["tflops"] = round(rate * flops / 1e12, 2)
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16.items() if k in report["encode"]["device"]), None)
    if peak:
        report["encode"]["fraction_of_peak"] = round(rate * flops / 1e12 / peak, 3)
    report["cpu_decode_tasks_per_gpu"] = math.ceil(rate / report["decode"]["images_per_s_per_cpu"])
    report["vs_clip_retrieval_vit_l_a100"] = round(rate / CLIP_RETRIEVAL_A100_VIT_L, 2)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="EVA02-B-16")
    ap.add_argument("--tokens", default="pooled", choices=encoder.TOKENS)
    ap.add_argument("--precision", default="bf16", choices=encoder.PRECISIONS)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=2048, help="images in the end-to-end run")
    ap.add_argument("--gpus", type=int, default=None, help="default: every GPU; 0: CPU encoder")
    ap.add_argument("--repeats", type=int, default=5, help="timed encoder calls (best kept)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--end-to-end-only", action="store_true",
                    help="only make_features (no model in the driver: its RSS is the stage's)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="use (or make, if absent) the sample corpus here, to compare runs on one corpus")
    ap.add_argument("--features-out", type=Path, default=None, help="write (and keep) the features here")
    args = ap.parse_args()
    import torch

    if args.model == "probe-224":   # open_clip registers a config by its file's stem
        args.model = str(Path(tempfile.mkdtemp(prefix="bench-features-model-")) / "probe-224.json")
        Path(args.model).write_text(json.dumps(PROBE_224))
    spec = encoder.ModelSpec(args.model, "none", args.tokens, args.precision)
    preprocess = encoder.preprocess_for(spec)
    ray = runtime.RayOptions()
    run = features.RunOptions(batch_size=args.batch_size, gpus=args.gpus)
    cuda = torch.cuda.is_available() and args.gpus != 0
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}",
              "model": args.model, "tokens": args.tokens, "precision": args.precision, "weights": "random (none)"}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        tmp = Path(tmp)
        corpus = args.corpus or tmp / "corpus"
        if not (corpus / "_manifest.json").exists():
            make_corpus(corpus, args.images, ray)
        if not args.end_to_end_only:
            report.update(model_rates(spec, preprocess, corpus, args, cuda))
        if not args.skip_end_to_end:
            report["end_to_end"] = end_to_end(corpus, args.features_out or tmp / "features", spec, run, ray)
    runtime.shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
