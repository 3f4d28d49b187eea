"""EVA-CLIP (any open_clip vision tower): model loading, the split preprocessing, the encoder.

Preprocessing is open_clip's own eval transform cut in two at ToTensor: the PIL half (RGB,
resize, crop) runs in CPU decode tasks and ships uint8 pixels, a quarter of float32's bytes;
the tensor half (x / 255, then (x - mean) / std) runs on the encoder's device. Both halves do
the same float32 operations as open_clip's ToTensor + Normalize, so fp32 embeddings equal a
direct open_clip call bit for bit.

Token layouts: `pooled` is the image embedding (`model.encode_image`, unnormalized);
`patch` is the output of the last transformer block, before the final norm: what Emu's causal
transformer reads (CLS + patch tokens, 257 x 1408 for EVA01-g-14).

torch and open_clip are imported inside functions: Ray workers that only decode must not pay
for them, and the stage must pickle without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emu_data.core import errors, images
from emu_data.core.options import option

log = logging.getLogger(__name__)

TOKENS = ("pooled", "patch")
PRECISIONS = ("bf16", "fp16", "fp32")
STORAGE = {"bf16": "uint16", "fp16": "float16", "fp32": "float32"}   # arrow storage of each
DTYPE_NAME = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
NO_WEIGHTS = "none"


class ModelError(errors.UsageError):
    """A model name, config file or weights source that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """Which encoder, with which weights, giving which tokens at which precision."""

    model: str = option("EVA02-B-16", help="open_clip model name (EVA02-B-16, EVA02-L-14, EVA01-g-14, ...) or "
                                           "the path of an open_clip JSON model config")
    pretrained: str = option(NO_WEIGHTS, required=True, metavar="TAG|PATH|none",
                             help="open_clip hub tag (needs network or a cache), a local checkpoint file, or none "
                                  "(random init: for tests and speed runs only; warned and recorded)")
    tokens: str = option("pooled", choices=TOKENS,
                         help="pooled: the image embedding; patch: the last block's tokens, what Emu reads")
    precision: str = option("bf16", choices=PRECISIONS,   # autocast; fp32 is exact
                            help="autocast precision, also the stored dtype")
    seed: int = option(0, parse=int,   # the same seed gives the same weights
                       help="random init seed with --pretrained none")

    def __post_init__(self):
        if self.tokens not in TOKENS:
            raise ModelError(f"tokens must be one of {', '.join(TOKENS)}, not {self.tokens!r}")
        if self.precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    @property
    def random_init(self) -> bool:
        return self.pretrained.lower() == NO_WEIGHTS


def model_name(model: str) -> str:
    """The open_clip name of `model`; a JSON config file is registered under its stem first."""
    import open_clip

    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelError(f"{model}: no such model config file")
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"{model}: unreadable model config: {e}") from None
        if not isinstance(config, dict) or "vision_cfg" not in config:
            raise ModelError(f"{model}: not an open_clip model config (no vision_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise ModelError(f"{model!r} is not an open_clip model name (see open_clip.list_models()) "
                         "nor a .json model config")
    return model


# ---- preprocessing ---------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocess:
    """open_clip's eval preprocessing for a model and weights (recorded in the shard metadata)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    fill_color: int = 0
    mode: str = "RGB"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def preprocess_for(spec: ModelSpec) -> Preprocess:
    """The preprocessing open_clip's create_model would attach, from the configs alone (no
    weights built or fetched): the model config's image size, the tag's mean/std/resize."""
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    import open_clip

    name = model_name(spec.model)
    cfg = asdict(PreprocessCfg())
    vision = open_clip.get_model_config(name)["vision_cfg"]
    cfg = merge_preprocess_dict(cfg, {k.removeprefix("image_"): v for k, v in vision.items()
                                      if k in ("image_mean", "image_std", "image_interpolation", "image_resize_mode")})
    if not spec.random_init and not Path(spec.pretrained).is_file():
        cfg = merge_preprocess_dict(cfg, get_pretrained_cfg(name, spec.pretrained) or {})
    size = vision.get("image_size", 224)
    cfg["size"] = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return Preprocess(size=tuple(cfg["size"]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"],
                      fill_color=cfg["fill_color"], mode=cfg["mode"])


def pil_transform(preprocess: Preprocess):
    """The PIL half of open_clip's eval transform: everything before its ToTensor."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.transforms import ToTensor

    full = image_transform_v2(PreprocessCfg(**asdict(preprocess)), is_train=False)
    steps = []
    for step in full.transforms:
        if isinstance(step, ToTensor) or type(step).__name__ == "MaybeToTensor":
            return steps
        steps.append(step)
    raise ModelError("open_clip's transform has no ToTensor step to split at")


def pixels(data: bytes, steps) -> np.ndarray:
    """Decode one image and apply the PIL half: uint8 H x W x 3; images.ImageRejected
    (decompression_bomb before decoding, or decode_error) for an image that cannot be used."""
    with images.opened(data) as image:
        for step in steps:
            image = step(image)
        return np.asarray(image, dtype=np.uint8)


# ---- the encoder -----------------------------------------------------------------------

def load_visual(spec: ModelSpec, device: str = "cpu"):
    """open_clip's vision tower for spec, in eval mode on device (the text tower is dropped)."""
    import open_clip
    import torch

    name = model_name(spec.model)
    if spec.random_init:
        log.warning("*** %s with RANDOM weights (pretrained none, seed %d): features for tests and "
                    "speed runs only, not for training ***", name, spec.seed)
        torch.manual_seed(spec.seed)
    try:
        model = open_clip.create_model(name, pretrained=None if spec.random_init else spec.pretrained,
                                       require_pretrained=not spec.random_init)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise ModelError(f"cannot load weights {spec.pretrained!r} for {name}: {e}") from None
    return model.visual.eval().to(device)


def last_block(visual):
    """The last transformer block of an open_clip vision tower (native ViT or timm trunk)."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks"):
        return trunk.blocks[-1]
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        return transformer.resblocks[-1]
    raise ModelError(f"{type(visual).__name__}: no transformer blocks found for patch tokens")


class Encoder:
    """The model of an encoder actor: __init__ loads it once, __call__ encodes one batch of pixels.

    Input batch: "pixels" (N x H x W x 3 uint8) and any other columns, passed through.
    Output: the same columns with "embedding" (N x *shape, the stored dtype) instead of pixels.
    Threads of one actor may share it: __call__ holds a lock (encode alone is not safe: the
    patch-token hook keeps the last block's output on self).
    """

    def __init__(self, spec: ModelSpec, preprocess: Preprocess, device: str | None = None, threads: int | None = None):
        import torch

        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        self.spec, self.size = spec, tuple(preprocess.size)
        self._lock = threading.Lock()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.visual = load_visual(spec, self.device)
        found = tuple(self.visual.preprocess_cfg.get("size", ()))
        if found and tuple(found) != tuple(preprocess.size):
            raise ModelError(f"the model expects {found} images, the decode stage made {preprocess.size}")
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._tokens = None
        if spec.tokens == "patch":
            last_block(self.visual).register_forward_hook(self._keep_tokens)

    def _keep_tokens(self, module, inputs, output):
        self._tokens = output[0] if isinstance(output, tuple) else output

    def encode(self, pixels: np.ndarray):
        """N x H x W x 3 uint8 -> N x shape float tensor on the device."""
        import torch

        x = torch.from_numpy(np.array(pixels, copy=True)).to(self.device, non_blocking=True)  # Ray's arrays are read-only
        x = x.permute(0, 3, 1, 2).float().div(255)  # ToTensor's arithmetic, then Normalize's
        x = x.sub(self.mean).div(self.std)
        autocast = self.spec.precision != "fp32"
        dtype = torch.bfloat16 if self.spec.precision == "bf16" else torch.float16
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=dtype, enabled=autocast), \
                _ieee_fp32(torch, exact=not autocast):
            pooled = self.visual(x)
        out = self._tokens if self.spec.tokens == "patch" else pooled
        if out.dim() == 3 and out.shape[0] != x.shape[0]:  # a sequence-first transformer
            out = out.transpose(0, 1)
        return out

    def __call__(self, batch: dict) -> dict:
        with self._lock:
            if self.threads:   # in the calling thread too: OpenMP keeps the count per thread (set
                import torch   # in another thread only, torch ran 2 threads for 1 in this one)

                torch.set_num_threads(self.threads)
            batch["embedding"] = stored(self.encode(batch.pop("pixels")), self.spec.precision)
        return batch

    def embedding_shape(self) -> list[int]:
        """The per-image embedding shape: one forward pass on a blank image."""
        return list(self({"pixels": np.zeros((1, *self.size, 3), np.uint8)})["embedding"].shape[1:])


@contextlib.contextmanager
def _ieee_fp32(torch, exact: bool):
    """fp32 that is fp32 on a GPU too: cuDNN convolutions (the patch embedding) default to
    TF32 on Ampere and later, 10-bit mantissas that moved an H200's "fp32" features 4e-4
    off the CPU's. The flags are per process; the caller holds the encoder's lock."""
    if not exact:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def stored(embedding, precision: str) -> np.ndarray:
    """A float tensor as the numpy array the shard stores (bf16 as its uint16 bits)."""
    import torch

    if precision == "bf16":
        return embedding.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    if precision == "fp16":
        return embedding.to(torch.float16).cpu().numpy()
    return embedding.float().cpu().numpy()


def as_float32(stored_values: np.ndarray, precision: str) -> np.ndarray:
    """Stored embeddings back to float32 (bf16 bits shifted into a float32's top half)."""
    if precision == "bf16":
        return (stored_values.astype(np.uint32) << 16).view(np.float32)
    return stored_values.astype(np.float32)
