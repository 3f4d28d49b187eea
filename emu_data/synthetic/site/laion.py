"""LAION-2B and LAION-COCO, as the sample site publishes them: drawn scenes as JPEGs under
root/laion/img/ and the two metadata parquets (LAION's columns and types) whose URLs point
at the server, with faults planted on the pairs that ask for one.

Faults (SitePair.fault):
  404            no file behind the URL
  html           an HTML page where the image should be
  truncated      the JPEG cut after a third of its bytes
  redirect       the URL names a folder without its slash: the static server answers 301 to
                 the slash form and serves the folder's index.html, which holds the JPEG
  refused        a URL on port 1 of 127.0.0.1, where nothing listens
  bad_scheme     an ftp:// URL
  null_url, null_caption, blank_caption
  bad_utf8       invalid UTF-8 bytes in the caption cell. Parquet strings must be UTF-8, but
                 neither pyarrow's writer nor its reader checks: the column stays `string`
                 (as in real files written by tools that did not check) and the bytes are
                 planted through a binary array viewed as string.
  long_caption   a 10,000-character caption
  low_similarity, unsafe, watermark   similarity 0.05 / punsafe 0.95 / pwatermark 0.97
  dup_hash       every such row shares one `hash` value
Not faults, other servings of a good pair:
  gif            the image as a GIF (a format the corpus does not store: the ingest re-encodes it)
  png            the image as a PNG
  tiny           a 12 x 9 px image (for a min_image_size filter)
The caption faults hit TEXT in the LAION file and top_caption in the LAION-COCO file.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from emu_data.synthetic import world

FAULTS = ("404", "html", "truncated", "redirect", "refused", "bad_scheme", "null_url", "null_caption",
          "blank_caption", "bad_utf8", "long_caption", "low_similarity", "unsafe", "watermark", "dup_hash",
          "gif", "png", "tiny")
_DUP_HASH = -4242424242424242


@dataclass(frozen=True)
class SitePair:
    index: int
    fault: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")

    def rng(self, what: str) -> random.Random:
        return random.Random(f"{self.seed}:laion:{self.index}:{what}")

    def scene(self) -> world.Scene:
        return world.random_scene(self.rng("scene"))

    def size(self) -> tuple[int, int]:
        rng = self.rng("size")
        return (12, 9) if self.fault == "tiny" else (rng.randrange(160, 321, 8), rng.randrange(120, 241, 8))

    @property
    def name(self) -> str:
        return f"{self.index:06d}"

    @property
    def hash(self) -> int:
        if self.fault == "dup_hash":
            return _DUP_HASH
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{self.index}".encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class LaionFiles:
    laion: Path   # LAION-2B columns
    coco: Path    # LAION-COCO columns


def publish_laion(root: Path, base_url: str, pairs: list[SitePair], *, row_group_size: int = 1000) -> LaionFiles:
    """Write the images under root/laion/img and both parquets under root/laion."""
    folder = Path(root) / "laion"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    urls = [_write_image(folder / "img", f"{base_url}/laion/img", pair) for pair in pairs]
    files = LaionFiles(folder / "laion.parquet", folder / "laion_coco.parquet")
    pq.write_table(_laion_table(pairs, urls), files.laion, row_group_size=row_group_size)
    pq.write_table(_coco_table(pairs, urls), files.coco, row_group_size=row_group_size)
    return files


def image_bytes(pair: SitePair) -> bytes:
    """The bytes the site serves for a pair (JPEG unless the pair asks for GIF or PNG)."""
    image = world.render(pair.scene(), *pair.size())
    if pair.fault == "gif":
        out = io.BytesIO()
        image.save(out, "GIF")
        return out.getvalue()
    return world.encode(image, "PNG" if pair.fault == "png" else "JPEG")


def _write_image(folder: Path, base: str, pair: SitePair) -> str | None:
    """Publish one pair's image (or its fault); returns its URL."""
    special = {"null_url": None, "bad_scheme": f"ftp://127.0.0.1/{pair.name}.jpg",
               "refused": f"http://127.0.0.1:1/{pair.name}.jpg"}
    if pair.fault in special:
        return special[pair.fault]
    if pair.fault == "redirect":
        (folder / pair.name).mkdir(exist_ok=True)
        (folder / pair.name / "index.html").write_bytes(image_bytes(pair))
        return f"{base}/{pair.name}"
    path = folder / f"{pair.name}.jpg"
    if pair.fault == "html":
        path.write_text("<!DOCTYPE html><html><body><h1>Image not available</h1></body></html>")
    elif pair.fault == "truncated":
        data = image_bytes(pair)
        path.write_bytes(data[:len(data) // 3])
    elif pair.fault != "404":
        path.write_bytes(image_bytes(pair))
    return f"{base}/{pair.name}.jpg"


def _scores(pair: SitePair) -> dict:
    rng = pair.rng("scores")
    return {
        "similarity": 0.05 if pair.fault == "low_similarity" else round(rng.uniform(0.28, 0.42), 4),
        "punsafe": 0.95 if pair.fault == "unsafe" else round(rng.uniform(0.0, 0.05), 4),
        "pwatermark": 0.97 if pair.fault == "watermark" else round(rng.uniform(0.0, 0.3), 4),
    }


def _text_cell(pair: SitePair, text: str) -> bytes | None:
    """The caption cell as bytes, faults applied."""
    if pair.fault == "null_caption":
        return None
    if pair.fault == "blank_caption":
        return b"   "
    if pair.fault == "bad_utf8":
        return text.encode() + b" \xff\xfe\xc3("  # not UTF-8
    if pair.fault == "long_caption":
        return (" ".join([text] * (10_000 // len(text) + 1)))[:10_000].encode()
    return text.encode()


def _string_column(cells: list[bytes | None]) -> pa.Array:
    # viewed, not cast: a cast would validate, and bad_utf8 must survive into the file
    return pa.array(cells, pa.binary()).view(pa.string())


def _laion_table(pairs: list[SitePair], urls: list[str | None]) -> pa.Table:
    scores = [_scores(p) for p in pairs]
    return pa.table({
        "URL": pa.array(urls, pa.string()),
        "TEXT": _string_column([_text_cell(p, world.alt_text(p.scene(), p.rng("alt"))) for p in pairs]),
        "WIDTH": pa.array([p.size()[0] for p in pairs], pa.int64()),
        "HEIGHT": pa.array([p.size()[1] for p in pairs], pa.int64()),
        "similarity": pa.array([s["similarity"] for s in scores], pa.float64()),
        "hash": pa.array([p.hash for p in pairs], pa.int64()),
        "punsafe": pa.array([s["punsafe"] for s in scores], pa.float32()),
        "pwatermark": pa.array([s["pwatermark"] for s in scores], pa.float32()),
    })


def _coco_table(pairs: list[SitePair], urls: list[str | None]) -> pa.Table:
    base = _laion_table(pairs, urls)
    alts = [world.alt_text(p.scene(), p.rng("alt")).encode() for p in pairs]  # TEXT stays clean here
    captions = [world.caption(p.scene()) for p in pairs]
    return pa.table({
        "URL": base["URL"], "TEXT": _string_column(alts),
        "top_caption": _string_column([_text_cell(p, c) for p, c in zip(pairs, captions)]),
        "all_captions": pa.array([[c, c.lower(), f"a picture: {c}"] for c in captions], pa.list_(pa.string())),
        "all_similarities": pa.array([[0.35, 0.33, 0.31]] * len(pairs), pa.list_(pa.float64())),
        "WIDTH": base["WIDTH"], "HEIGHT": base["HEIGHT"], "similarity": base["similarity"],
        "hash": base["hash"], "pwatermark": base["pwatermark"], "punsafe": base["punsafe"],
    })


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

FAULTS_PLANTED = ("404", "html", "truncated", "low_similarity", "null_caption")
COCO_OFFSET = 1_000_000


def site_inputs(root: Path) -> dict[str, Path]:
    return {"laion": root / "laion2b" / "laion" / "laion.parquet",
            "laion_coco": root / "coco" / "laion" / "laion_coco.parquet"}


def publish_site(root: Path, base_url: str, config) -> None:
    """LAION-2B and LAION-COCO with different images (COCO_OFFSET apart), as the real ones mostly
    are: the same image in both would be one sample after mix's dedup."""
    from emu_data.synthetic.site.bundle import fault

    for folder, offset in (("laion2b", 0), ("coco", COCO_OFFSET)):
        publish_laion(root / folder, f"{base_url}/{folder}",
                      [SitePair(offset + i, fault(i, config, FAULTS_PLANTED), config.seed)
                       for i in range(config.pairs)])
