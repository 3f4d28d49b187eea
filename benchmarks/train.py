"""Training throughput of the bundled Emu, and its loader against a bare pyarrow scan.

    python benchmarks/train.py                                  # CPU, the smoke model, sample corpus
    python benchmarks/train.py --device cuda --steps 200 --batch-size 64 --workers 8

Builds (or reuses with --corpus/--features) a sample corpus and tiny-tower patch features,
then reports, in one run:
  scan    a bare pyarrow scan of the same shards: every text and every feature row read and
          converted to numpy (the floor of any loader), samples/s
  loader  model/data.py's PackedBatches alone (index-free schedule, sequence building,
          memory-mapped reads, collation) in this process: samples/s and positions/s
  train   `emu-data train` for --steps: positions/s and samples/s from its metrics, model
          FLOPs per position, achieved TFLOP/s and MFU against --peak-tflops (default: a
          measured fp32 matmul on CPU, 790 bf16 on H100/H200 per REFERENCE.md)
Goal: the loader is never the bottleneck (loader samples/s >= train samples/s per worker).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emu_data.ops import encoder, features
from emu_data.core import manifest
from emu_data.engine import runtime
from emu_data.model import train
from emu_data.model import data, emu
from emu_data.model.config import TrainConfig
from emu_data.core.shards import read_shard
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions

PIXEL_VIT = {"embed_dim": 32,
             "vision_cfg": {"image_size": 48, "layers": 1, "width": 192, "head_width": 64, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def make_inputs(work: Path, n: int) -> tuple[Path, Path]:
    ray = runtime.RayOptions()
    corpus, feats, model = work / "corpus", work / "features", work / "tiny-pixel-vit.json"
    model.write_text(json.dumps(PIXEL_VIT))
    sample.make_sample(sample.SampleConfig(n=n), OutputOptions(corpus), ray)
    features.make_features(corpus, feats, encoder.ModelSpec(str(model), tokens="patch", precision="bf16"),
                           features.RunOptions(), ray)
    return corpus, feats


def bare_scan(corpus: Path, feats: Path) -> dict:
    start, samples = time.perf_counter(), 0
    for entry in manifest.read(corpus)["shards"]:
        texts = read_shard(corpus / entry["path"]).column("texts").to_pylist()
        embeddings = read_shard(feats / entry["path"]).column("embedding").combine_chunks()
        np.asarray(embeddings.flatten().to_numpy(zero_copy_only=False)).sum()
        samples += len(texts)
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 1)}


def loader_rate(run: train.Run, corpus: Path, feats: Path, batches: int) -> dict:
    config = run.config
    source = data.PackedBatches(run.index, corpus, feats, run.vocab, config.data, config.model.queries,
                                config.run.seed).iterate()
    start, samples, positions = time.perf_counter(), 0, 0
    for _, arrays in zip(range(batches), source):
        samples += int(arrays["samples"])
        positions += int(((arrays["tokens"] != 0) | (arrays["slot_image"] >= 0)).sum())
    seconds = time.perf_counter() - start
    return {"batches": batches, "samples_per_s": round(samples / seconds, 1),
            "positions_per_s": round(positions / seconds, 1)}


def cpu_matmul_tflops() -> float:
    a = torch.randn(2048, 2048)
    a @ a
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ a
    return 2 * 2048 ** 3 * repeats / (time.perf_counter() - start) / 1e12


def train_rate(corpus: Path, feats: Path, out: Path, config: TrainConfig, peak: float) -> dict:
    train.train(corpus, feats, out, config, progress=False)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = lines[max(1, len(lines) // 5):]   # skip the first steps (worker start, allocator warm-up)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    positions, samples = sum(r["tokens"] for r in timed), sum(r["samples"] for r in timed)
    images = sum(r["images"] for r in timed)
    run = train.load(out, corpus, feats)
    model = run.model()
    flops = emu.flops_per_token(model, config.data.seq_len, run.index.feature_shape[0], images / positions)
    achieved = flops * positions / seconds / 1e12
    return {"steps": len(timed), "positions_per_s": round(positions / seconds, 1),
            "samples_per_s": round(samples / seconds, 2), "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "flops_per_position": round(flops), "tflops": round(achieved, 4), "peak_tflops": round(peak, 3),
            "mfu": round(achieved / peak, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path)
    p.add_argument("--features", type=Path)
    p.add_argument("--n", type=int, default=200, help="sample items per source when building inputs")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-tflops", type=float, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus, feats = (args.corpus, args.features) if args.corpus else make_inputs(work, args.n)
        runtime.shutdown()
        config = TrainConfig().with_overrides(
            data={"batch_size": args.batch_size, "workers": args.workers},
            run={"steps": args.steps, "checkpoint_every": args.steps, "device": args.device})
        peak = args.peak_tflops or (cpu_matmul_tflops() if args.device == "cpu" else 790.0)
        trained = train_rate(corpus, feats, work / "run", config, peak)
        run = train.load(work / "run", corpus, feats)
        result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  "device": args.device, "torch": torch.__version__, "config": config.to_dict(),
                  "scan": bare_scan(corpus, feats), "loader": loader_rate(run, corpus, feats, 40), "train": trained}
        result["loader_over_train_samples"] = round(result["loader"]["samples_per_s"] / trained["samples_per_s"], 2)
        result["loader_over_scan_samples"] = round(result["loader"]["samples_per_s"] / result["scan"]["samples_per_s"], 3)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
