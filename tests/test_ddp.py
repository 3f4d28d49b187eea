"""`emu-data train --nproc-per-node N` and torchrun: DistributedDataParallel on CPU (gloo, two
processes, the tiny model of test_train) trains on the same global batches as one process with
the same losses, resumes exactly, and fails in one line; (gpu) the same with NCCL and bf16.

The processes only ever talk over 127.0.0.1 (the launcher's store on a free port)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from emu_data.cli import main
from emu_data.engine import runlock
from emu_data.model import data, emu, train
from test_train import TINY, _losses


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _args(corpus, features, run, config) -> list[str]:
    return ["train", "--corpus", str(corpus), "--features", str(features), "--out", str(run),
            "--config", str(config)]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp-config") / "tiny.json"
    path.write_text(json.dumps(TINY.to_dict()))
    return path


@pytest.fixture(scope="module")
def one_process(sample_dir, sample_features, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp-one") / "run"
    train.train(sample_dir, sample_features, run, TINY, progress=False)
    return run


@pytest.fixture(scope="module")
def two_processes(sample_dir, sample_features, tiny_config, tmp_path_factory):
    """The whole run in two processes started by `emu-data train --nproc-per-node 2`."""
    run = tmp_path_factory.mktemp("ddp-two") / "run"
    assert main([*_args(sample_dir, sample_features, run, tiny_config), "--nproc-per-node", "2"]) == 0
    return run


def test_the_ranks_slices_of_a_batch_are_the_batch(one_process, sample_dir, sample_features):
    assert [data.rank_rows(5, r, 3) for r in range(3)] == [slice(0, 1), slice(1, 3), slice(3, 5)]
    run = train.load(one_process, sample_dir, sample_features)

    def batches(part):
        built = data.PackedBatches(run.index, sample_dir, sample_features, run.vocab, run.config.data,
                                   run.config.model.queries, run.config.run.seed, start=2, part=part)
        return [arrays for _, arrays in zip(range(2), built.iterate())]

    whole, parts = batches((0, 1)), [batches((r, 3)) for r in range(3)]
    for b, arrays in enumerate(whole):
        sliced = [part[b] for part in parts]
        assert [len(s["tokens"]) for s in sliced] == [1, 1, 2]   # 4 rows over 3 processes
        for key in ("tokens", "features"):
            assert np.array_equal(np.concatenate([s[key] for s in sliced]), arrays[key]), key
        assert sum(int(s["samples"]) for s in sliced) == int(arrays["samples"])


def test_two_processes_train_as_one_on_the_same_global_batches(one_process, two_processes):
    one, two = _metrics(one_process), _metrics(two_processes)
    assert [m["step"] for m in two] == list(range(1, 9))   # rank 0 alone writes the metrics
    for key in ("loss", "text_ce", "visual_mse"):
        assert np.allclose([m[key] for m in two], [m[key] for m in one], rtol=1e-5, atol=0), key
    assert np.allclose([m["grad_norm"] for m in two], [m["grad_norm"] for m in one], rtol=1e-4)
    for key in ("tokens", "samples", "images"):   # the global batch's, not rank 0's slice
        assert [m[key] for m in two] == [m[key] for m in one], key
    weights = [torch.load(run / "checkpoint.pt", weights_only=False)["model"] for run in (one_process, two_processes)]
    assert weights[0].keys() == weights[1].keys()   # the bare model's, not DDP's `module.`
    assert all(torch.allclose(weights[0][k], weights[1][k], rtol=1e-4, atol=1e-5) for k in weights[0])


def test_a_killed_rank_is_one_line_and_torchrun_resumes_the_uninterrupted_curve_exactly(
        sample_dir, sample_features, tiny_config, one_process, two_processes, tmp_path, capfd):
    """Rank 0 is killed (-9) after the first checkpoint: the command says so in one line and
    exits 1; plain torchrun (`-m emu_data.cli`) then resumes to the uninterrupted run's losses,
    and one process (a copy) to the one-process run's."""
    run, killed = tmp_path / "run", {}

    def kill_rank_0_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while not (run / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        killed["pid"] = json.loads((run / runlock.RUN_LOCK).read_text())["pid"]   # the lock's holder
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_0_after_the_first_checkpoint, daemon=True)
    killer.start()
    args = _args(sample_dir, sample_features, run, tiny_config)
    status = main([*args, "--nproc-per-node", "2", "--checkpoint-every", "2"])   # a speed-only change
    killer.join()
    err = capfd.readouterr().err
    assert status == 1 and f"emu-data train: rank 0 (pid {killed['pid']}) was killed by SIGKILL" in err
    assert "Traceback" not in err and "ChildFailedError" not in err
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert 2 <= stopped_at < 8
    alone = shutil.copytree(run, tmp_path / "alone")
    train.train(sample_dir, sample_features, alone, TINY, progress=False)
    assert np.allclose(_losses(alone), _losses(one_process), rtol=1e-5, atol=0)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
                "-m", "emu_data.cli"]
    done = subprocess.run([*torchrun, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained") == 1 and f"(from {stopped_at})" in done.stdout   # rank 0 reports
    assert _losses(run) == _losses(two_processes)


def test_wrong_process_counts_are_refused_before_any_process_starts(sample_dir, sample_features, tiny_config,
                                                                   tmp_path, capsys, monkeypatch):
    args = _args(sample_dir, sample_features, tmp_path / "run", tiny_config)
    assert main([*args, "--nproc-per-node", "5"]) == 2   # TINY's batch has 4 rows
    assert "data.batch_size 4 is smaller than the 5 training processes" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*args, "--nproc-per-node", "2", "--device", "cuda"]) == 2
    assert "need as many CUDA devices, torch sees 1" in capsys.readouterr().err
    assert main([*args, "--nproc-per-node", "2", "--device", "cuda:0"]) == 2
    assert "names one device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_rank_that_cannot_work_leaves_its_error_for_the_launchers_one_line(sample_dir, tmp_path, monkeypatch):
    """What a launched process does with an error the command line knows (here: the corpus given
    as its own features): its message into the launcher's error file, its exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")   # leave this process's torch threads as they are
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exited:
        train._rank_main(sample_dir, sample_dir, tmp_path / "run", TINY, None, False, logging.WARNING,
                         ["emu-data", "train"])
    assert exited.value.code == 2
    failed = train.RankFailed.of(ChildFailedError("train", {0: ProcessFailure(0, 11, 2, str(error_file))}))
    assert str(failed).startswith("rank 0 (pid 11) failed: DataError: ") and "not a features directory" in str(failed)
    assert failed.status == 2


def test_launcher_failures_read_as_one_line(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    recorded = tmp_path / "error.json"
    recorded.write_text(json.dumps({"message": {"message": "RuntimeError: boom", "extraInfo": {
        "py_callstack": "Traceback (most recent call last): ...", "timestamp": "1"}}}))
    failed = train.RankFailed.of(ChildFailedError("train", {1: ProcessFailure(1, 42, 1, str(recorded))}))
    assert str(failed) == "rank 1 (pid 42) failed: RuntimeError: boom"
    assert failed.status == 1 and failed.traceback.startswith("Traceback")
    killed = train.RankFailed.of(ChildFailedError("train", {0: ProcessFailure(0, 7, -9, str(tmp_path / "none"))}))
    assert str(killed) == "rank 0 (pid 7) was killed by SIGKILL (out of memory?)" and killed.status == 1
    quiet = train.RankFailed.of(ChildFailedError("train", {3: ProcessFailure(3, 8, 2, str(tmp_path / "none"))}))
    assert str(quiet) == "rank 3 (pid 8) exited with status 2" and quiet.status == 2


def test_a_slice_without_images_still_reduces_every_gradient(monkeypatch):
    """DDP waits for every parameter's gradient; a rank whose slice has no image leaves the causal
    transformer out of its graph, and without zeros for it the next step would fail."""
    import torch.distributed as dist

    config = TINY.with_overrides(run={"device": "cpu"})
    model = emu.build(config.model, 20, (np.zeros((2, 8), np.float32), np.ones((2, 8), np.float32)),
                      config.data.seq_len, seed=0)
    tokens = np.zeros((1, config.data.seq_len), np.int64)
    tokens[0, :6] = [1, 7, 8, 9, 10, 2]   # <bos> four words <eos>, then padding
    arrays = {"tokens": tokens, "slot_image": np.full_like(tokens, -1), "slot_query": np.zeros_like(tokens),
              "features": np.zeros((0, 2, 8), np.float32), "samples": np.array(1)}
    ranks = train.Ranks(0, 1, 0, 1, distributed=True)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = train._parallel(model, torch.device("cpu"), ranks)
        opt = train.optimizer(model, config.optim)
        for step in range(2):
            out = train._step(ddp, opt, {k: torch.from_numpy(v) for k, v in arrays.items()}, step, config,
                              torch.device("cpu"), ranks)
            assert out["images"] == 0 and np.isfinite(out["loss"]) and out["visual_mse"] == 0
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_nccl_bf16_ranks_match_one_gpu_process(sample_dir, sample_features, tmp_path):
    """NCCL and bf16 autocast: two ranks where two GPUs are, else one (still a process group)."""
    nproc = min(2, torch.cuda.device_count())
    config = TINY.with_overrides(run={"device": "cuda", "precision": "bf16"})
    train.train(sample_dir, sample_features, tmp_path / "one", config, progress=False)
    summary = train.launch(sample_dir, sample_features, tmp_path / "many", config, nproc, stop_after=4,
                           progress=False)
    assert summary["steps"] == 4
    train.launch(sample_dir, sample_features, tmp_path / "many", config, nproc, progress=False)
    one, many = _losses(tmp_path / "one"), _losses(tmp_path / "many")
    assert len(many) == 8 and all(np.isfinite(many))
    # bf16 matmuls over other batch shapes round differently: close, not equal
    assert np.allclose(many, one, rtol=2e-2), (many, one)
