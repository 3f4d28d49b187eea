"""MMC4, as the sample site publishes it: jsonl documents built from world.random_document
whose image_info raw_url point at JPEGs under root/mmc4/img/, with faults planted on request.

Fields as MMC4 writes them: url, text_list, image_info [{image_name, raw_url,
matched_text_index, matched_sim, face_detections}], similarity_matrix (images x sentences),
could_have_url_duplicate.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from emu_data.synthetic import world

# What each fault plants, and what the mmc4 stage should make of it:
FAULTS = {
    None: "a clean document",
    "missing_image": "image 0 is never written: a 404, the document keeps the rest",
    "all_missing": "no image is written: every download 404s, the document has no_images",
    "low_sim": "image 0's matched_sim is 0.12, below the 0.24 threshold",
    "corrupt_image": "image 0 is a truncated JPEG: decode_error, the document keeps the rest",
    "gif_image": "image 0 is a GIF: decodes, stored re-encoded as JPEG",
    "bad_index": "image 0's matched_text_index is past the end of text_list",
    "missing_key": "text_list is absent",
    "no_images": "image_info (and similarity_matrix) are empty",
    "malformed_json": "the line is cut in half: not JSON",
    "no_url": "url is absent: the document is named by file stem and line",
    "reassign": "image 0 (a 404) took image 1's caption in MMC4's assignment, image 1 got the "
                "opening sentence; re-assigning over the kept images moves image 1 to its caption",
}
_NEEDS_TWO = ("reassign",)


@dataclass(frozen=True)
class SiteDocument:
    """One published document; `fault` is a key of FAULTS."""

    name: str
    n_images: int = 2
    seed: int = 0
    fault: str | None = None
    image_size: int = 224

    def __post_init__(self):
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {sorted(f for f in FAULTS if f)}")
        if self.n_images < (2 if self.fault in _NEEDS_TWO else 1):
            raise ValueError(f"{self.name}: fault {self.fault!r} needs more images")

    def document(self) -> world.Document:
        return world.random_document(random.Random(f"{self.seed}:{self.name}"), self.n_images)

    @property
    def url(self) -> str:
        # The page itself is never fetched: the reserved .invalid domain says so.
        return f"https://sample.invalid/mmc4/{self.name}.html"


@dataclass(frozen=True)
class Published:
    """Where a document landed: its jsonl file, 1-based line, and record (None if not JSON)."""

    doc: SiteDocument
    path: Path
    line: int
    record: dict | None


def publish_mmc4(root: Path, base_url: str, docs: list[SiteDocument], *, shards: int = 1,
                 prefix: str = "docs") -> list[Published]:
    """Write images under root/mmc4/img/ and the documents, in order, into `shards` jsonl files
    root/mmc4/{prefix}_N.jsonl of consecutive documents."""
    folder = Path(root) / "mmc4"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(docs) // max(1, shards))
    published = []
    for n, start in enumerate(range(0, len(docs), per_shard)):
        path = folder / f"{prefix}_{n}.jsonl"
        lines = []
        for line, doc in enumerate(docs[start:start + per_shard], 1):
            record = _record(doc, folder / "img", f"{base_url}/mmc4/img")
            lines.append(json.dumps(record) if record is not None else _malformed(doc))
            published.append(Published(doc, path, line, record))
        path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return published


def _malformed(doc: SiteDocument) -> str:
    text = json.dumps({"url": doc.url, "text_list": list(doc.document().sentences)})
    return text[: len(text) // 2]


def _record(doc: SiteDocument, folder: Path, base: str) -> dict | None:
    if doc.fault == "malformed_json":
        return None
    d = doc.document()
    similarity = [list(row) for row in d.similarity]
    images = []
    for i, (scene, matched) in enumerate(zip(d.scenes, d.matched)):
        name = f"{doc.name}-{i}.{'gif' if doc.fault == 'gif_image' and i == 0 else 'jpg'}"
        _write_image(folder / name, scene, doc, i)
        images.append({"image_name": name, "raw_url": f"{base}/{name}", "matched_text_index": matched,
                       "matched_sim": similarity[i][matched], "face_detections": []})
    record = {"url": doc.url, "text_list": list(d.sentences), "image_info": images,
              "similarity_matrix": similarity, "could_have_url_duplicate": 0}
    _plant(record, doc.fault)
    return record


def _write_image(path: Path, scene: world.Scene, doc: SiteDocument, i: int) -> None:
    if doc.fault == "all_missing" or (i == 0 and doc.fault in ("missing_image", "reassign")):
        return  # never written: the server answers 404
    image = world.render(scene, doc.image_size, doc.image_size)
    if path.suffix == ".gif":
        image.save(path, format="GIF")
        return
    data = world.encode(image)
    path.write_bytes(data[:300] if i == 0 and doc.fault == "corrupt_image" else data)


def _plant(record: dict, fault: str | None) -> None:
    """Change a clean record the way `fault` says (see FAULTS)."""
    first, matrix = record["image_info"][0], record["similarity_matrix"]
    if fault == "low_sim":
        first["matched_sim"] = matrix[0][first["matched_text_index"]] = 0.12
    elif fault == "bad_index":
        first["matched_text_index"] = len(record["text_list"]) + 2
    elif fault == "missing_key":
        del record["text_list"]
    elif fault == "no_images":
        record["image_info"], record["similarity_matrix"] = [], []
    elif fault == "no_url":
        del record["url"]
    elif fault == "reassign":
        _plant_reassign(record)


def _plant_reassign(record: dict) -> None:
    """Image 0 scores 0.5 on image 1's caption, so MMC4's assignment over all images gave it
    that sentence and left image 1 the opening filler (0.26, just above the threshold)."""
    first, second, matrix = record["image_info"][0], record["image_info"][1], record["similarity_matrix"]
    caption = second["matched_text_index"]
    matrix[0][first["matched_text_index"]] = 0.2
    matrix[0][caption] = first["matched_sim"] = 0.5
    first["matched_text_index"] = caption
    matrix[1][0] = second["matched_sim"] = 0.26
    second["matched_text_index"] = 0


# ---- in the whole sample site (bundle.py) ---------------------------------------------------------

FAULTS_PLANTED = ("missing_image", "malformed_json", "corrupt_image")


def site_inputs(root: Path) -> dict[str, Path]:
    return {"mmc4": root / "mmc4"}


def publish_site(root: Path, base_url: str, config) -> None:
    from emu_data.synthetic.site.bundle import fault

    publish_mmc4(root, base_url, [SiteDocument(f"doc{i:05d}", seed=config.seed, fault=fault(i, config, FAULTS_PLANTED))
                                  for i in range(config.documents)])
