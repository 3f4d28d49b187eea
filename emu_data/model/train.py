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

Many processes (DistributedDataParallel): started by `launch` (`emu-data train --nproc-per-node
N`) or by torchrun, a process finds its rank in RANK/WORLD_SIZE/LOCAL_RANK. Rank 0 alone holds
the run lock, prepares RUN and writes metrics and checkpoints; the others wait for it at a
barrier and load what it wrote. Rank r of N builds only its contiguous slice of each global
batch (the 1-process run's rows, data.rank_rows), and its loss is its share of the global
batch's loss (sums over the global target counts), so the losses and gradients are those of
one process to float tolerance, and resuming with another N continues the same schedule.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from emu_data import __version__
from emu_data.core import errors
from emu_data.engine import runlock
from emu_data.core.corpus import LayoutChanged
from emu_data.core.manifest import write_json_atomic
from emu_data.model import data, emu
from emu_data.model.config import ConfigError, DataConfig, OptimConfig, TrainConfig
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


@dataclass(frozen=True)
class Ranks:
    """This process among the training processes: torchrun's (and `launch`'s) RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE; without them, the only one."""

    rank: int = 0
    world: int = 1
    local: int = 0
    local_world: int = 1
    distributed: bool = False      # a process group to join (torchrun's even with one process)

    @classmethod
    def from_env(cls) -> "Ranks":
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("LOCAL_WORLD_SIZE", 1)), True)

    @property
    def main(self) -> bool:
        return self.rank == 0


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


def _prepare_once(corpus: Path, features: Path, out: Path, config: TrainConfig, ranks: Ranks,
                  waiting) -> Run:
    """`prepare` on rank 0 while the others wait (on the `waiting` group), then load what it wrote."""
    if ranks.main:
        run = prepare(corpus, features, out, config)
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier(group=waiting)
    if not ranks.main:
        try:
            run = load(out, corpus, features)
        except FileNotFoundError as e:
            raise errors.UsageError(f"{e}: rank {ranks.rank} does not see what rank 0 prepared; on several "
                                    "nodes, --out, the corpus and the features must be on storage every node "
                                    "sees") from None
        run.config = config   # rank 0 checked it against the saved one; speed-only settings are ours
    return run


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


def device_of(name: str, ranks: Ranks = Ranks()) -> torch.device:
    """The device of --device NAME; among several processes on CUDA, each its own (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise errors.UsageError(f"--device {name}: torch sees no CUDA device")
    if not ranks.distributed or name == "cpu":
        return torch.device(name)
    if name != "cuda":
        raise errors.UsageError(f"--device {name} names one device, but each training process takes its own "
                                "(cuda:LOCAL_RANK): use --device cuda (or auto)")
    found = torch.cuda.device_count()
    if ranks.local >= found:
        raise errors.UsageError(f"{ranks.local_world} training processes per node (--nproc-per-node) need as "
                                f"many CUDA devices, torch sees {found}: start at most {found}, or train on "
                                "--device cpu")
    return torch.device("cuda", ranks.local)


def check_world(data_config: DataConfig, world: int) -> None:
    if data_config.batch_size < world:
        raise ConfigError(f"data.batch_size {data_config.batch_size} is smaller than the {world} training "
                          "processes: each trains on a slice of every batch's rows")


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
    step of the schedule is done; rerunning continues from there. One live run per `out`.
    With RANK/WORLD_SIZE set (torchrun, `launch`), this process is one rank of the run."""
    ranks = Ranks.from_env()
    check_world(config.data, ranks.world)
    device = device_of(config.run.device, ranks)
    with _process_group(ranks, device) as waiting, \
            (runlock.held(Path(out)) if ranks.main else nullcontext()):
        run = _prepare_once(corpus, features, out, config, ranks, waiting)
        return _train(run, corpus, features, stop_after, progress and ranks.main, device, ranks)


def _train(run: Run, corpus: Path, features: Path, stop_after: int | None, progress: bool, device,
           ranks: Ranks) -> dict:
    config = run.config
    model = run.model().to(device)
    opt = optimizer(model, config.optim)
    start = load_checkpoint(run.paths.checkpoint, model, opt) if run.paths.checkpoint.exists() else 0
    if ranks.main:
        _keep_metrics_until(run.paths.metrics, start)
    stop = min(config.run.steps, stop_after or config.run.steps)
    if start >= stop:
        return _summary(run, start, None, resumed=start)
    if ranks.main:
        _log_model(model, config, device, ranks)
    batches = data.PackedBatches(run.index, Path(corpus), Path(features), run.vocab, config.data,
                                 config.model.queries, config.run.seed, start=start, part=(ranks.rank, ranks.world))
    last = _loop(_parallel(model, device, ranks), opt, data.loader(batches, pin_memory=device.type == "cuda"),
                 run, device, start, stop, progress, ranks)
    return _summary(run, stop, last, resumed=start)


def _loop(model, opt, batches, run: Run, device, start: int, stop: int, progress: bool,
          ranks: Ranks) -> dict | None:
    from tqdm import tqdm

    config, last = run.config, None
    bar = tqdm(total=config.run.steps, initial=start, desc="train", unit="step", disable=not progress)
    model.train()
    with open(run.paths.metrics, "a") if ranks.main else nullcontext() as metrics:
        clock = time.perf_counter()
        for step, arrays in zip(range(start, stop), batches):
            last = _step(model, opt, arrays, step, config, device, ranks)
            now = time.perf_counter()
            last.update(tokens_per_s=round(last["tokens"] / (now - clock), 1),
                        samples_per_s=round(last["samples"] / (now - clock), 2))
            clock = now
            if metrics is not None:
                metrics.write(json.dumps(last) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            if last["step"] % config.run.checkpoint_every == 0 or last["step"] == stop:
                if metrics is not None:
                    metrics.flush()
                _checkpoint(run.paths.checkpoint, model, opt, last["step"], ranks)
    bar.close()
    return last


def _step(model, opt, arrays: dict, step: int, config: TrainConfig, device, ranks: Ranks) -> dict:
    lr = learning_rate(step, config.run.steps, config.optim)
    for group in opt.param_groups:
        group["lr"] = lr
    samples = int(arrays.pop("samples"))
    batch = emu.Batch(**arrays).to(device)
    with autocast(device, config.run.precision):
        losses = model(batch)
    text_ce, visual_mse = _shares(losses, ranks, device)
    # the global batch's loss is the sum of the ranks' shares; DDP averages gradients over the ranks
    loss = (text_ce + config.model.regression_weight * visual_mse) * ranks.world
    if ranks.distributed and not batch.features.shape[0]:
        # A slice without images leaves the causal transformer and the regression head out of
        # the graph, and DDP waits for every parameter's gradient (find_unused_parameters would
        # walk the graph every step to find them, and warns when there are none): zeros for all.
        loss = loss + sum(p.sum() for p in model.parameters()) * 0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    opt.step()
    used = int(((batch.tokens != PAD) | (batch.slot_image >= 0)).sum())
    text_ce, visual_mse, used, samples, images = _summed(
        ranks, device, text_ce.item(), visual_mse.item(), used, samples, batch.features.shape[0])
    return {"step": step + 1, "loss": text_ce + config.model.regression_weight * visual_mse, "text_ce": text_ce,
            "visual_mse": visual_mse, "lr": lr, "grad_norm": float(grad_norm), "tokens": int(used),
            "samples": int(samples), "images": int(images)}


def _shares(losses: emu.Losses, ranks: Ranks, device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's text CE and visual l2 as parts of the global batch's: its sums over the global
    denominators (text targets, l2 weights). Ranks hold different counts, so the mean of their
    means would not be the batch's mean; the sum of these shares is, exactly."""
    if not ranks.distributed:
        return losses.text_ce, losses.visual_mse
    text, weight = _summed(ranks, device, losses.text_targets, losses.visual_weight)
    return (losses.text_ce * (losses.text_targets / max(text, 1.0)),
            losses.visual_mse * (losses.visual_weight / max(weight, 1e-8)))


def _summed(ranks: Ranks, device, *values: float) -> list[float]:
    """The values summed over the ranks (themselves with one process)."""
    if not ranks.distributed:
        return list(values)
    import torch.distributed as dist

    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def _checkpoint(path: Path, model, opt, step: int, ranks: Ranks) -> None:
    """Rank 0 writes it (every rank holds the same weights and optimizer state); the others wait
    at a barrier until it is on disk."""
    if ranks.main:
        save_checkpoint(path, getattr(model, "module", model), opt, step)   # the bare model (DDP's .module)
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def _log_model(model, config: TrainConfig, device, ranks: Ranks) -> None:
    params = sum(p.numel() for p in model.parameters())
    where = f"{ranks.world} processes ({device.type})" if ranks.distributed else str(device)
    log.warning("training a %.1fM-parameter Emu on %s (LM %dx%d, causal transformer %dx%d, %d queries)",
                params / 1e6, where, config.model.depth, config.model.width, config.model.ct_depth,
                config.model.ct_width, config.model.queries)


def _summary(run: Run, steps: int, last: dict | None, resumed: int) -> dict:
    summary = {"run": str(run.paths.out), "steps": steps, "resumed_from": resumed,
               "vocab_size": len(run.vocab), "train_samples": int((~run.index.heldout).sum()),
               "heldout_samples": int(run.index.heldout.sum())}
    if last is not None:
        summary.update(loss=last["loss"], text_ce=last["text_ce"], visual_mse=last["visual_mse"])
    return summary


# ---- many processes ------------------------------------------------------------------------

# Preparing a run (rank 0) reads and tokenizes every corpus text, which on a large corpus outlasts
# a process group's default timeout (NCCL's 10 minutes); the other ranks wait for it on a group of
# their own with this one. A rank 0 that dies is seen by the launcher at once; only a hung one
# is waited for this long.
PREPARE_TIMEOUT = timedelta(hours=6)
# A rank whose peer died sees a broken connection at once, and the launcher, seeing the peer's
# exit, stops it within its monitor interval (0.1 s). Waiting for that lets the launcher report
# the peer's own error, the cause, rather than this rank's broken connection.
PEER_GRACE_S = 10.0


@contextmanager
def _process_group(ranks: Ranks, device):
    """Join the process group (NCCL on CUDA, gloo on CPU) for the block; yields the group that
    waits for preparation (None with one process)."""
    if not ranks.distributed:
        yield None
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    except dist.DistError:
        time.sleep(PEER_GRACE_S)
        raise
    dist.destroy_process_group()   # after a failure the process exits: a peer may be gone


def _parallel(model, device, ranks: Ranks):
    """The model in DistributedDataParallel with several processes (`_step` makes sure every
    parameter gets a gradient on every rank)."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


class RankFailed(Exception):
    """A training process failed (the first to fail): str() is one line naming it and saying why;
    `status` the exit status (2: it could not work with what it was given), `traceback` its own."""

    def __init__(self, line: str, status: int, traceback: str = ""):
        super().__init__(line)
        self.status, self.traceback = status, traceback

    @classmethod
    def of(cls, failed) -> "RankFailed":
        """From the elastic launcher's ChildFailedError."""
        rank, failure = failed.get_first_failure()
        recorded = failure.message if isinstance(failure.message, dict) else {}   # from its error file
        if failure.exitcode < 0:
            what = f"was killed by {failure.signal_name()}" + \
                (" (out of memory?)" if -failure.exitcode == signal.SIGKILL else "")
        elif recorded.get("message"):
            what = f"failed: {recorded['message']}"
        else:
            what = f"exited with status {failure.exitcode}"
        status = failure.exitcode if failure.exitcode in (1, 2) else 1
        return cls(f"rank {rank} (pid {failure.pid}) {what}", status,
                   recorded.get("extraInfo", {}).get("py_callstack", ""))


class Stopped(KeyboardInterrupt):
    """The launcher was stopped by a signal (Ctrl-C, SIGTERM); its processes are stopped too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def launch(corpus: Path, features: Path, out: Path, config: TrainConfig, nproc: int, *,
           stop_after: int | None = None, progress: bool = True) -> dict:
    """`train` in `nproc` processes on this machine, started by torch's elastic launcher as
    `torchrun --standalone` starts them (its store on a free port of 127.0.0.1); returns rank 0's
    summary. A process that fails stops the others: RankFailed names it and says why."""
    if Ranks.from_env().distributed:
        raise errors.UsageError("--nproc-per-node: this process is already one of several (started by "
                                "torchrun): give the process count to torchrun only")
    check_world(config.data, nproc)
    device_of(config.run.device, Ranks(nproc - 1, nproc, nproc - 1, nproc, True))   # enough devices?
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launcher = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"emu-data-{uuid.uuid4().hex}",
                            rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                            max_restarts=0)   # a failure is reported, not retried: a rerun resumes
    args = (Path(corpus), Path(features), Path(out), config, stop_after, progress,
            logging.getLogger().getEffectiveLevel(), sys.argv)
    try:
        with _launcher_quiet():
            return elastic_launch(launcher, _rank_main)(*args)[0]
    except ChildFailedError as e:
        raise RankFailed.of(e) from None
    except SignalException as e:
        raise Stopped(e.sigval) from None


def _rank_main(corpus: Path, features: Path, out: Path, config: TrainConfig, stop_after: int | None,
               progress: bool, log_level: int, argv: list[str]) -> dict:
    """One process started by `launch` (a fresh interpreter)."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    sys.argv = argv   # what the run lock records as the holder's command
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)   # as torchrun does: N processes on all cores each would oversubscribe them
    try:
        return train(corpus, features, out, config, stop_after=stop_after, progress=progress)
    except Exception as e:
        status = errors.exit_status(e)
        if status is None:
            raise   # a bug: the launcher's error file keeps its traceback (shown with -v)
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(e)
        sys.exit(status)


@contextmanager
def _launcher_quiet():
    """The elastic agent logs a failed process with the launcher's whole traceback, then every
    process it stops: unless asked for -v, RankFailed's one line says what matters."""
    root = logging.getLogger()
    if root.isEnabledFor(logging.INFO):
        yield
        return
    names = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
    quiet = _Below(logging.CRITICAL, names)
    handlers = {h for name in names for h in _handlers(logging.getLogger(name))}
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _handlers(logger: logging.Logger):
    """The handlers a record of `logger` reaches (torch's own loggers have some and do not propagate)."""
    while logger is not None:
        yield from logger.handlers
        if not logger.propagate:
            return
        logger = logger.parent


class _Below(logging.Filter):
    """Drops records of the named loggers below a level."""

    def __init__(self, level: int, names: tuple[str, ...]):
        super().__init__()
        self.level, self.names = level, names

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not record.name.startswith(self.names)
