"""The training configuration: four small dataclasses, loaded from JSON/YAML, saved in every run.

A config file holds any subset of the sections below; what it leaves out keeps the default.
Unknown keys are an error (a typo must not silently train the wrong model).

    model:  width, depth, heads, queries, ct_depth, ct_heads, mlp_ratio, regression_weight,
            image_start_weight, attention
    data:   seq_len, batch_size, weights, holdout, vocab_size, workers
    optim:  lr, min_lr_ratio, betas, weight_decay, warmup, grad_clip
    run:    steps, checkpoint_every, seed, device, precision
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from emu_data.core.errors import UsageError
from emu_data.core.options import option, positive_int, show_words



def emu_weights() -> dict[str, float]:
    """Emu's per-step mixture (relative), of every registered record source (the registry
    holds each one's weight: LAION-2B 128, LAION-COCO 128, MMC4 64, WebVid 16, YT-Storyboard 16)."""
    from emu_data import sources

    return {name: float(weight) for name, weight in sources.emu_weights().items()}


class ConfigError(UsageError):
    """A training config that cannot be used (the message names the key)."""


@dataclass(frozen=True)
class ModelConfig:
    """Emu scaled down: the same parts and objective, a few million parameters."""

    width: int = 256               # LM width (the causal transformer projects to it)
    depth: int = 4                 # LM blocks
    heads: int = 4
    mlp_ratio: int = 4
    queries: int = 32              # visual embeddings per image (Emu: 32)
    ct_width: int = 256            # causal transformer width
    ct_depth: int = 2              # causal transformer blocks
    ct_heads: int = 4
    # lambda in CE + lambda * l2. Emu's weights are unpublished; at smoke scale 1.0 lets the l2
    # term crowd out the captions (held-out CIDEr-D 1.7 vs 2.3-2.8 at 0.05-0.3 after 1000 CPU
    # steps); 0.3 with image_start_weight 32 regresses text-conditioned z best (BENCHMARKS.md).
    regression_weight: float = 0.3
    # Weight of the one regression term predicted from text alone ([IMG] -> z1) against each
    # continuation term (zk -> z(k+1)), which at smoke scale is close to a copy of the input.
    # At 1 (Emu's plain mean) z1 is 1/32 of the l2 term and text-to-image never learns
    # (R@1 at chance, with per-sample attention too); at `queries` it counts as much as all
    # continuations together.
    image_start_weight: float = 32.0
    # Attention in a packed row. "sample": each sample sees only itself and its positions restart
    # at its <bos>, so it computes what it would alone (as a prompt in generation); "row": plain
    # causal attention over the row (Megatron without --reset-attention-mask), samples read the
    # ones packed before them. "row" lets in-context captioning emerge from neighbouring pairs
    # but the text-to-image regression learns on that noise (BENCHMARKS.md: R@1 0.05 vs 0.21-0.54).
    attention: str = "sample"

    def __post_init__(self):
        if self.width % self.heads or self.ct_width % self.ct_heads:
            raise ConfigError("model.width (ct_width) must be divisible by model.heads (ct_heads)")
        if min(self.width, self.depth, self.heads, self.queries, self.ct_width, self.ct_depth,
               self.ct_heads, self.mlp_ratio) < 1:
            raise ConfigError("model sizes must be positive")
        if self.regression_weight < 0 or self.image_start_weight < 0:
            raise ConfigError("model.regression_weight and model.image_start_weight must be non-negative")
        if self.attention not in ("sample", "row"):
            raise ConfigError("model.attention must be sample or row")


@dataclass(frozen=True)
class DataConfig:
    seq_len: int = option(256, parse=positive_int, help="positions per packed row")
    batch_size: int = option(16, parse=positive_int, help="packed rows per step")
    weights: dict = field(default_factory=emu_weights)  # per-source sampling weight
    holdout: float = 0.05          # fraction of samples (by key hash) kept out for eval
    vocab_size: int = 8192         # LM vocabulary: the most frequent BPE ids of the corpus; 0: all of BPE
    workers: int = option(2, parse=int, help="loader processes (0: in the training process)")

    def __post_init__(self):
        if self.seq_len < 48 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("data.seq_len must be >= 48, data.batch_size >= 1, data.workers >= 0")
        if not 0 < self.holdout < 1:
            raise ConfigError("data.holdout must be in (0, 1)")
        if any(not isinstance(w, (int, float)) or w < 0 for w in self.weights.values()) \
                or not any(self.weights.values()):
            raise ConfigError("data.weights must be non-negative numbers, at least one positive")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option(1e-3, parse=float, help="peak learning rate")
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    betas: tuple = (0.9, 0.98)     # Emu's AdamW betas
    weight_decay: float = 0.05     # Emu's
    warmup: float = 0.2            # fraction of steps (Emu: 20%)
    grad_clip: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.lr <= 0 or not 0 <= self.warmup < 1 or self.grad_clip <= 0:
            raise ConfigError("optim.lr and optim.grad_clip must be positive, optim.warmup in [0, 1)")


@dataclass(frozen=True)
class RunConfig:
    steps: int = option(1000, parse=positive_int, help="optimizer steps")
    checkpoint_every: int = option(100, parse=positive_int, help="steps between checkpoints")
    seed: int = option(0, parse=int, help="model init, mixture and sequence order")
    device: str = option("auto", help="auto (cuda if there is one), cpu, cuda, cuda:N")
    precision: str = "bf16"        # bf16: autocast on GPU (CPU always trains in fp32) | fp32

    def __post_init__(self):
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ConfigError("run.steps and run.checkpoint_every must be positive")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError("run.precision must be bf16 or fp32")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError("a training config is a mapping of sections: model, data, optim, run")
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s): {_names(unknown)}")
        built = {name: _section(name, kind, data.get(name) or {}) for name, kind in _SECTIONS.items()}
        return cls(**built)

    def with_overrides(self, **sections: dict) -> "TrainConfig":
        """A copy with some keys replaced, e.g. with_overrides(run={"steps": 10})."""
        changed = {name: replace(getattr(self, name), **values)
                   for name, values in sections.items() if values}
        return replace(self, **changed)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def _section(name: str, kind: type, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping")
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {_names(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    try:
        return kind(**values)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None


def _names(keys) -> str:
    """Unknown keys for a message: any YAML type (sorted as text), clipped."""
    from emu_data.core import yamlsafe

    return yamlsafe.clip(", ".join(sorted(map(str, keys))))


def load(path: Path | None) -> TrainConfig:
    """A config file (.json, .yaml or .yml); None gives the defaults."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    data = _parse(path, raw)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse(path: Path, raw: bytes):
    """The file's data; any way it is not YAML/JSON we take is a one-line ConfigError."""
    from emu_data.core import yamlsafe

    try:
        text = yamlsafe.decode(raw, str(path))
        if path.suffix in (".yaml", ".yml"):
            return yamlsafe.load(text, str(path)) or {}
        return json.loads(text)
    except yamlsafe.InputError as e:   # already `PATH:LINE: reason`
        raise ConfigError(str(e)) from None
    except (ValueError, RecursionError) as e:   # JSONDecodeError; [[[... past the stack; a 5000-digit int
        raise ConfigError(f"{path}: not valid JSON: {yamlsafe.one_line(str(e))}") from None


# ---- what the train and eval commands take besides the config ----------------------------------------

@dataclass(frozen=True)
class TrainInputs:
    corpus: Path = option(parse=Path, required=True, help="a finished corpus directory")
    features: Path = option(parse=Path, required=True,
                            help="its features directory (emu-data features --tokens patch; pooled works too)")


@dataclass(frozen=True)
class TrainRun:
    out: Path = option(parse=Path, required=True, help="run directory (created; an existing one resumes)")
    config: Path | None = option(None, parse=Path, mapping=lambda value: TrainConfig.from_dict(value),
                                 help="JSON/YAML training config (default: the smoke model)")
    stop_after: int | None = option(None, parse=positive_int, metavar="STEP",
                                    help="stop (with a checkpoint) after this step of the schedule; rerun to continue")
    nproc_per_node: int = option(1, parse=positive_int, metavar="N",
                                 help="training processes on this machine (DistributedDataParallel, started as "
                                      "torchrun starts them): one per GPU, or CPU processes with --device cpu; "
                                      "each builds and trains on 1/N of every batch")


@dataclass(frozen=True)
class EvalRun:
    run: Path = option(parse=Path, required=True, help="a run directory written by emu-data train")


def _shots(text: str) -> tuple[int, ...]:
    return tuple(int(k) for k in text.split(",") if k.strip())


@dataclass(frozen=True)
class EvalOptions:
    max_pairs: int = option(100, parse=positive_int,
                            help="held-out image-text pairs for captioning and retrieval")
    shots: tuple = option((0, 2, 4), parse=_shots, show=show_words,
                          help="in-context demonstrations, comma-separated")
    max_caption_tokens: int = 40
    batch_size: int = 16
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    seed: int = 0                 # random tie-breaking of the prior's ranking

    def __post_init__(self):
        object.__setattr__(self, "shots", tuple(self.shots))
        if self.max_pairs < 2 or any(k < 0 for k in self.shots) or self.batch_size < 1:
            raise UsageError("--max-pairs must be >= 2, --shots non-negative, --batch-size positive")
