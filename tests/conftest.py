"""Shared fixtures: one local Ray per test session (fixed CPUs), one sample corpus to copy.

Tests only ever talk to 127.0.0.1; nothing here reaches beyond this machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from emu_data.engine import runtime
from emu_data.synthetic import sample
from emu_data.engine.stage import OutputOptions

RAY = runtime.RayOptions(num_cpus=2)
# Ray workers import the functions tests hand them by module name; workers started here
# inherit this environment, so test modules resolve there as they do in pytest.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where CUDA is absent (CI has none); they run on a GPU machine."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with fixed CPUs, shared by every test that runs a stage."""
    runtime.ensure_ray(RAY)
    yield RAY
    runtime.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory, ray_session) -> Path:
    """A small sample corpus of all five sources, written once; copy it before changing it."""
    out = tmp_path_factory.mktemp("sample") / "corpus"
    config = sample.SampleConfig(n=6, per_unit=3, frames_per_sample=8)
    sample.make_sample(config, OutputOptions(out, shard_rows=8), ray_session)
    return out


@pytest.fixture
def corpus_copy(sample_dir, tmp_path) -> Path:
    """A private copy of the sample corpus, to plant faults in."""
    return Path(shutil.copytree(sample_dir, tmp_path / "corpus"))


# A tiny random-init open_clip vision tower whose patch projection (8x8x3 pixels -> 192) keeps
# the pixels: random features that still say which colour sits where (tests cannot download
# EVA-CLIP weights; RANDOM INIT is recorded in the features' metadata).
# The smoke recipe uses the same file.
TINY_PIXEL_VIT_PATH = Path(__file__).resolve().parent.parent / "pipelines" / "encoders" / "tiny-pixel-vit.json"


@pytest.fixture(scope="session")
def tiny_vit() -> Path:
    return TINY_PIXEL_VIT_PATH


@pytest.fixture(scope="session")
def sample_features(sample_dir, tiny_vit, tmp_path_factory, ray_session) -> Path:
    """Patch-token features (bf16) of the sample corpus from the tiny tower, written once."""
    from emu_data.ops import encoder, features

    out = tmp_path_factory.mktemp("sample-features") / "features"
    spec = encoder.ModelSpec(str(tiny_vit), tokens="patch", precision="bf16")
    features.make_features(sample_dir, out, spec, features.RunOptions(batch_size=64), ray_session)
    return out
