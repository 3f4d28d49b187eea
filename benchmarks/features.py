"""EVA-CLIP feature throughput: images/s end to end, the CPU decode rate, and TFLOP/s.

    python benchmarks/features.py --model EVA02-L-14 --precision bf16 --batch-size 256 --images 20000
    python benchmarks/features.py --model EVA02-B-16 --precision fp32 --batch-size 16 --images 256 --gpus 0

Random weights (pretrained none): speed does not depend on them. The corpus is `emu-data
sample`'s (drawn scenes; photos of the same pixel size decode alike after the resize).
Reported:
  decode     ChunkReader (read shard, JPEG/PNG decode, resize, crop) in this process on one
             core: images/s per CPU, and the CPU decode tasks a GPU needs to be fed.
  encode     the Encoder alone on a fixed batch of pixels, best of --repeats calls: images/s,
             model FLOPs per image (torch's FlopCounterMode, one forward) and TFLOP/s against
             --peak-tflops (default: 790 for H100/H200 bf16 dense, REFERENCE.md).
  end_to_end make_features over the whole corpus (Ray Data decode tasks + encoder actors,
             shards written), model load and Ray start-up included.
Peer: clip-retrieval's 312 img/s per A100 for ViT-L/14 (goal on one H100: 2x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from emu_data.ops import encoder, features
from emu_data.engine import runtime
from emu_data.core.corpus import shard_paths
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions

CLIP_RETRIEVAL_A100_VIT_L = 312.0
PEAK_BF16 = {"H100": 790.0, "H200": 790.0}  # TFLOP/s, dense bf16 matmul (REFERENCE.md)


def make_corpus(out: Path, images: int, ray: runtime.RayOptions) -> Path:
    """A sample corpus of about `images` images (some 32 per item across the five sources)."""
    n = max(1, math.ceil(images / 32))
    sample.make_sample(sample.SampleConfig(n=n, per_unit=max(1, n // 4)), OutputOptions(out), ray)
    return out


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
    args = ap.parse_args()
    import torch

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
        corpus = make_corpus(tmp / "corpus", args.images, ray)
        report["decode"] = decode_rate(corpus, preprocess)
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
        if not args.skip_end_to_end:
            start = time.perf_counter()
            built = features.make_features(corpus, tmp / "features", spec, run, ray)
            seconds = time.perf_counter() - start
            report["end_to_end"] = {"images": built["rows"], "seconds": round(seconds, 1),
                                    "images_per_s": round(built["rows"] / seconds, 1)}
        shutil.rmtree(tmp / "features", ignore_errors=True)
    runtime.shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
