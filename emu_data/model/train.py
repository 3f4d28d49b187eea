"""`emu-data train`: the bundled small Emu on a corpus and its features, resumable exactly.

    RUN/
      config.json       resolved config + what it was trained on (corpus/features identity)
      vocab.json        the LM vocabulary (BPE ids kept)
      index.npz         the corpus index (per-sample shard, row, lengths, held-out flag)
      feature_stats.npz per-dimension mean/std of the training features (the model standardises with them)
      checkpoint.pt     model + optimizer + step, replaced atomically every N steps and at the end
      metrics.jsonl     one line per step: loss, text CE, visual MSE, lr, grad norm, throughput

Exact resume: the batch at step s is a function of (index, config, s) (model/data.py), the
learning rate a function of s, and the checkpoint holds the model, the optimizer and the RNG
state, so a run stopped at a checkpoint and restarted writes the same losses as one that was
never stopped. Metrics lines after the checkpoint are dropped on resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emu_data import __version__
from emu_data.core import errors
from emu_data.engine import runlock
from emu_data.core.corpus import LayoutChanged
from emu_data.core.manifest import write_json_atomic
from emu_data.model import data, emu
from emu_data.model.config import OptimConfig, TrainConfig
from emu_data.model.tokenizer import PAD, Vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    out: Path

    @property
    def config(self) -> Path:
        return self.out / "config.json"

    @property
    def vocab(self) -> Path:
        return self.out / "vocab.json"

    @property
    def index(self) -> Path:
        return self.out / "index.npz"

    @property
    def feature_stats(self) -> Path:
        return self.out / "feature_stats.npz"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"


@dataclass
class Run:
    """Everything a run is made of, loaded or created (train and eval both start here)."""

    config: TrainConfig
    index: data.Index
    vocab: Vocab
    paths: RunPaths

    def model(self) -> emu.Emu:
        """The model at its seeded initialisation (the untrained baseline)."""
        with np.load(self.paths.feature_stats) as stats:
            feature_stats = (stats["mean"], stats["std"])
        return emu.build(self.config.model, len(self.vocab), feature_stats,
                         self.config.data.seq_len, self.config.run.seed)


# ---- setting a run up ----------------------------------------------------------------------

def prepare(corpus: Path, features: Path, out: Path, config: TrainConfig) -> Run:
    """Create RUN, or reopen it when it was made with the same config and data (else refuse)."""
    paths = RunPaths(Path(out))
    if paths.config.exists():
        return _reopen(paths, corpus, features, config)
    paths.out.mkdir(parents=True, exist_ok=True)
    index, counts = data.build_index(corpus, features, config.data)
    vocab = Vocab.build(counts, config.data.vocab_size)
    mean, std = data.feature_statistics(index, data.SampleReader(index, Path(corpus), Path(features)),
                                        seed=config.run.seed)
    np.savez(paths.feature_stats, mean=mean, std=std)
    index.save(paths.index)
    vocab.save(paths.vocab)
    write_json_atomic(paths.config, _resolved(config, index, vocab, corpus, features))
    return Run(config, index, vocab, paths)


def _resolved(config: TrainConfig, index: data.Index, vocab: Vocab, corpus: Path, features: Path) -> dict:
    return {"tool": {"name": "emu-data", "version": __version__}, "train": config.to_dict(),
            "corpus": str(corpus), "features": str(features), "data_identity": index.identity,
            "vocab_size": len(vocab), "feature_shape": index.feature_shape,
            "feature_dtype": index.precision, "samples": len(index),
            "heldout_samples": int(index.heldout.sum())}


# Settings that change how fast a run goes, never what it computes: free to differ on resume.
SPEED_ONLY = {("data", "workers"), ("run", "checkpoint_every"), ("run", "device")}


def _reopen(paths: RunPaths, corpus: Path, features: Path, config: TrainConfig) -> Run:
    saved = json.loads(paths.config.read_text())
    changed = sorted(f"{section}.{k}" for section, values in config.to_dict().items()
                     for k, v in values.items()
                     if (section, k) not in SPEED_ONLY and saved["train"].get(section, {}).get(k) != v)
    if changed:
        raise LayoutChanged(f"{paths.out} is a run with another config ({', '.join(changed)} differ): "
                            "use another --out, or the same config to resume")
    run = load(paths.out, corpus, features)
    run.config = config   # the speed-only settings of this invocation
    return run


def load(out: Path, corpus: Path, features: Path) -> Run:
    """An existing run, checked against the corpus and features it is given."""
    paths = RunPaths(Path(out))
    if not paths.config.exists():
        raise FileNotFoundError(f"{out}: not a training run (no config.json)")
    saved = json.loads(paths.config.read_text())
    if data.identity(Path(corpus), Path(features)) != saved["data_identity"]:
        raise LayoutChanged(f"{out} was trained on other corpus/feature shards than {corpus} + {features}")
    config = TrainConfig.from_dict(saved["train"])
    return Run(config, data.Index.load(paths.index), Vocab.load(paths.vocab), paths)


# ---- optimisation --------------------------------------------------------------------------

def learning_rate(step: int, steps: int, optim: OptimConfig) -> float:
    """Linear warmup over the first `warmup` of the steps, then cosine to lr * min_lr_ratio."""
    warm = int(optim.warmup * steps)
    if step < warm:
        return optim.lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with Emu's betas; weight decay on matrices only (not norms, biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=optim.lr, betas=optim.betas)


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise errors.UsageError(f"--device {name}: torch sees no CUDA device")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ---- checkpoints ---------------------------------------------------------------------------

def save_checkpoint(path: Path, model, opt, step: int) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, opt=None) -> int:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if opt is not None:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint, so a resumed run's file reads as one run."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


# ---- the loop ------------------------------------------------------------------------------

def train(corpus: Path, features: Path, out: Path, config: TrainConfig, *, stop_after: int | None = None,
          progress: bool = True) -> dict:
    """Train (or resume) a run; returns a summary. stop_after: stop (with a checkpoint) once this
    step of the schedule is done; rerunning continues from there. One live run per `out`."""
    with runlock.held(Path(out)):
        return _train(corpus, features, out, config, stop_after, progress)


def _train(corpus: Path, features: Path, out: Path, config: TrainConfig, stop_after: int | None,
           progress: bool) -> dict:
    run = prepare(corpus, features, out, config)
    device = device_of(config.run.device)
    model = run.model().to(device)
    opt = optimizer(model, config.optim)
    start = load_checkpoint(run.paths.checkpoint, model, opt) if run.paths.checkpoint.exists() else 0
    _keep_metrics_until(run.paths.metrics, start)
    stop = min(config.run.steps, stop_after or config.run.steps)
    if start >= stop:
        return _summary(run, start, None, resumed=start)
    _log_model(model, config, device)
    batches = data.PackedBatches(run.index, Path(corpus), Path(features), run.vocab, config.data,
                                 config.model.queries, config.run.seed, start=start)
    last = _loop(model, opt, data.loader(batches, pin_memory=device.type == "cuda"), run, device, start,
                 stop, progress)
    return _summary(run, stop, last, resumed=start)


def _loop(model, opt, batches, run: Run, device, start: int, stop: int, progress: bool) -> dict | None:
    from tqdm import tqdm

    config, last = run.config, None
    bar = tqdm(total=config.run.steps, initial=start, desc="train", unit="step", disable=not progress)
    model.train()
    with open(run.paths.metrics, "a") as metrics:
        clock = time.perf_counter()
        for step, arrays in zip(range(start, stop), batches):
            last = _step(model, opt, arrays, step, config, device)
            now = time.perf_counter()
            last.update(tokens_per_s=round(last["tokens"] / (now - clock), 1),
                        samples_per_s=round(last["samples"] / (now - clock), 2))
            clock = now
            metrics.write(json.dumps(last) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            if last["step"] % config.run.checkpoint_every == 0 or last["step"] == stop:
                metrics.flush()
                save_checkpoint(run.paths.checkpoint, model, opt, last["step"])
    bar.close()
    return last


def _step(model, opt, arrays: dict, step: int, config: TrainConfig, device) -> dict:
    lr = learning_rate(step, config.run.steps, config.optim)
    for group in opt.param_groups:
        group["lr"] = lr
    samples = int(arrays.pop("samples"))
    batch = emu.Batch(**arrays).to(device)
    with autocast(device, config.run.precision):
        losses = model(batch)
    opt.zero_grad(set_to_none=True)
    losses.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    opt.step()
    used = int(((batch.tokens != PAD) | (batch.slot_image >= 0)).sum())
    return {"step": step + 1, "loss": losses.loss.item(), "text_ce": losses.text_ce.item(),
            "visual_mse": losses.visual_mse.item(), "lr": lr, "grad_norm": float(grad_norm),
            "tokens": used, "samples": samples, "images": int(batch.features.shape[0])}


def _log_model(model, config: TrainConfig, device) -> None:
    params = sum(p.numel() for p in model.parameters())
    log.warning("training a %.1fM-parameter Emu on %s (LM %dx%d, causal transformer %dx%d, %d queries)",
                params / 1e6, device, config.model.depth, config.model.width, config.model.ct_depth,
                config.model.ct_width, config.model.queries)


def _summary(run: Run, steps: int, last: dict | None, resumed: int) -> dict:
    summary = {"run": str(run.paths.out), "steps": steps, "resumed_from": resumed,
               "vocab_size": len(run.vocab), "train_samples": int((~run.index.heldout).sum()),
               "heldout_samples": int(run.index.heldout.sum())}
    if last is not None:
        summary.update(loss=last["loss"], text_ce=last["text_ce"], visual_mse=last["visual_mse"])
    return summary
