"""`emu-data mmc4`: MMC4 interleaved web documents (jsonl) -> interleaved samples with images.

Per document, as OpenFlamingo prepares MMC4: keep images whose matched_sim reaches --min-sim,
the best --max-images of them by similarity (a failed download makes room for the next
best), optionally drop tiny images, re-run the linear assignment of images to sentences over
the images actually kept, and place each image before its matched sentence, the sentences
between two images joined into one text position.

Images come from raw_url (fetched; or read from disk where it is a path or file:// URL,
under --media-root), or, with --image-root, from disk by image_name as MMC4's release lays
images out (image_paths). Local reads go through net.media, confined to the roots.

Every document ends as one sample or one status row with a reason. Images that fail do not
sink their document: they are listed in meta["dropped_images"] and summed up in the status
row's error; only a document left with no image at all gets a status reason (no_images).

Units are line ranges of the input files, found once by a sequential scan at planning time;
a unit reads only its own bytes (seek + read) and checks they still hash the same.

Keys are mmc4:<16 hex of the url's SHA-1>; a line with no url, no usable document or a url
MMC4 flags could_have_url_duplicate (MMC4 keeps such documents apart: they may differ) is
keyed by file stem and line instead (mmc4:<stem>-<line>). A document whose url key came
earlier in the input, in any file or unit, is the same document again: it is a
duplicate_key status row (mmc4:<id>#dupN, keys.py), found at planning, when every line is
parsed once to learn its key (the unit parses it again; what planning keeps is 20 bytes a
document).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from emu_data.core import errors, images, records
from emu_data import net
from emu_data import sources as registry
from emu_data.net.media import LocalMedia, Media
from emu_data.core.options import Params, option, positive_int, show_size, size
from emu_data.core.images import STORED_FORMATS
from emu_data.core.corpus import Unit, UnitWriter
from emu_data.synthetic.site import mmc4 as site_mmc4
from emu_data.core.files import safe_stem
from emu_data.sources import keys, textfiles
from emu_data.synthetic import sample

KIND = "mmc4"
# Config fields that change how fast a run goes, not what it writes: kept out of the layout
# fingerprint (and, by repr=False, out of unit digests) so changing them never forces a redo.
_SPEED_ONLY = ("fetch_workers",)


class DocumentError(errors.ItemFailed):
    """A document that cannot become a sample, with its status-table reason."""


class ImageDropped(images.ImageRejected):
    """One image left out of its document; the document goes on without it."""


@dataclass(frozen=True)
class Mmc4Config:
    min_sim: float = option(0.24, parse=float,   # OpenFlamingo's threshold (Emu used 0.32)
                            help="drop images below this similarity")
    max_images: int = option(6, parse=positive_int, help="images kept per document")   # OpenFlamingo's (Emu: 5)
    reassign: bool = option(True, help="re-run the image-sentence assignment on the kept images")
    min_image_bytes: int = option(0, parse=size, show=show_size, metavar="SIZE",   # OpenFlamingo: 10_000
                                  help="drop images of at most SIZE bytes (default off)")
    max_image_pixels: int = option(2**26, parse=positive_int,   # below Pillow's own 89 Mpx warning
                                   help="decompression-bomb guard, in pixels")
    docs_per_unit: int = option(128, parse=positive_int, help="documents per unit of work")
    fetch_workers: int = option(16, repr=False, parse=positive_int,   # repr=False: not in unit digests
                                help="parallel image fetches per unit")

    def __post_init__(self):
        if self.max_images < 1 or self.docs_per_unit < 1 or self.fetch_workers < 1:
            raise errors.UsageError("--max-images, --docs-per-unit and --fetch-workers must be at least 1")
        if self.min_image_bytes < 0 or self.max_image_pixels < 1:
            raise errors.UsageError("--min-image-bytes must be >= 0 and --max-image-pixels positive")
        if not math.isfinite(self.min_sim):
            raise errors.UsageError("--min-sim must be a number")


@dataclass(frozen=True)
class Slice:
    """Lines [first_line, first_line + lines) of `path`, bytes [start, end); 1-based lines.
    `repeats`: (line, N, where the key was first seen) of documents whose key came earlier."""

    path: str
    stem: str
    start: int
    end: int
    first_line: int
    lines: int
    sha1: str
    repeats: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class Mmc4Unit:
    slice: Slice
    config: Mmc4Config
    net: net.NetPolicy
    # repr=False: where local copies live is not what they are (a moved mirror redoes nothing)
    media: LocalMedia = field(default=LocalMedia(), repr=False)


# ---- planning -----------------------------------------------------------------------------

def units(inputs: list[Path], config: Mmc4Config, net_policy: net.NetPolicy = net.NetPolicy(),
          ray=None, media: LocalMedia = LocalMedia()) -> list[Unit]:
    """Each file's lines in runs of `docs_per_unit`, in input order; repeated keys marked.
    Every line is parsed once to learn its key (~50 us a document): with `ray` (RayOptions)
    and several files, the files are planned in parallel Ray tasks, the repeats found here."""
    files = textfiles.input_files(inputs, ".jsonl")
    stems = textfiles.distinct_stems(files, _stem)
    planned = _plan_files(list(zip(files, stems)), config, ray)
    scan = keys.Scan()
    for n, (_, keyed) in enumerate(planned):
        for line, code in keyed:
            scan.add(n, line, code)
    repeats = scan.repeats([p.name for p in files])
    return [Unit(f"mmc4-{s.stem}-{i:05d}", Mmc4Unit(_with_repeats(s, repeats.get(n, [])), config, net_policy, media))
            for n, (slices, _) in enumerate(planned) for i, s in enumerate(slices)]


def _plan_files(todo: list[tuple[Path, str]], config: Mmc4Config, ray) -> list[tuple[list[Slice], list]]:
    """_plan_file of each (path, stem), in input order."""
    if ray is None or len(todo) < 2:
        return [_plan_file(item, config) for item in todo]
    from emu_data.engine import runtime

    done = {}
    for item, result in runtime.map_tasks(partial(_plan_file, config=config), todo, options=ray,
                                          desc="mmc4: plan", total=len(todo)):
        if isinstance(result, runtime.TaskFailure):
            raise errors.UsageError(f"{item[0]}: cannot be planned: {result.error}")
        done[item] = result
    return [done[item] for item in todo]


def _stem(path: Path) -> str:
    """The file name without .jsonl, reduced to characters safe in file names and keys."""
    return safe_stem(path.name.removesuffix(".jsonl"))


def _plan_file(item: tuple[Path, str], config: Mmc4Config) -> tuple[list[Slice], list[tuple[int, int]]]:
    """One sequential read of a file: its slices (byte offsets every `docs_per_unit` lines,
    each range's hash) and (line, key code) of every document keyed by its url."""
    path, stem = item
    slices, keyed, start, offset, count, first = [], [], 0, 0, 0, 1
    per_unit, digest = config.docs_per_unit, hashlib.sha1()
    resolved = str(path.resolve())
    whole = Slice(resolved, stem, 0, 0, 0, 0, "")  # what parse needs of a slice: the path
    with open(path, "rb") as f:
        for line in f:
            offset += len(line)
            digest.update(line)
            count += 1
            code = _key_code(line.removesuffix(b"\n"), whole, config)
            if code is not None:
                keyed.append((first + count - 1, code))
            if count == per_unit:
                slices.append(Slice(resolved, stem, start, offset, first, count, digest.hexdigest()))
                start, first, count, digest = offset, first + count, 0, hashlib.sha1()
    if count:
        slices.append(Slice(resolved, stem, start, offset, first, count, digest.hexdigest()))
    return slices, keyed


def _key_code(raw: bytes, s: Slice, config: Mmc4Config) -> int | None:
    """The line's url key as a 64-bit number (its 16 hex digits: exact), or None where the
    line is keyed by position (blank, no usable document, no url, flagged)."""
    if not raw.strip():
        return None
    try:
        doc = parse(raw, 0, s, config)
    except DocumentError:
        return None
    return int(document_id(doc.url), 16) if doc.url and not doc.could_duplicate else None


def _with_repeats(s: Slice, repeats: list[tuple[int, int, str]]) -> Slice:
    inside = keys.between(repeats, s.first_line, s.first_line + s.lines - 1)
    return replace(s, repeats=inside) if inside else s


def read_lines(s: Slice) -> list[tuple[int, bytes]]:
    """(line number, line) of one slice, read by seeking: never the rest of the file."""
    data = textfiles.read_range(s.path, s.start, s.end, s.sha1,
                                f"lines {s.first_line}..{s.first_line + s.lines - 1}")
    pieces = data.split(b"\n")
    if data.endswith(b"\n"):
        pieces.pop()  # the split after the last newline is not a line
    return list(enumerate(pieces, s.first_line))


# ---- parsing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """One entry of image_info."""

    index: int
    url: str
    name: str | None
    matched: int
    sim: float
    unplaced: str | None = None   # why matched_text_index names no sentence: the image is dropped


@dataclass(frozen=True)
class Document:
    id: str
    ref: str                      # the status table's `input`: the url, else file:line
    url: str | None
    line: int
    sentences: tuple[str, ...]
    images: tuple[Candidate, ...]
    similarity: tuple[tuple[float, ...], ...] | None
    could_duplicate: bool = False  # MMC4's could_have_url_duplicate


def parse(raw: bytes, line: int, s: Slice, config: Mmc4Config) -> Document:
    """A checked document, or DocumentError(malformed_json | missing_field | bad_field |
    no_images). An image whose matched_text_index names no sentence stays in `images`,
    marked `unplaced`: it is dropped (bad_match_index) as a failed download is."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DocumentError("malformed_json", f"not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise DocumentError("malformed_json", f"a JSON {type(data).__name__}, not an object")
    sentences = _sentences(data)
    images = tuple(_candidate(i, info, len(sentences)) for i, info in enumerate(_list(data, "image_info")))
    if not images:
        raise DocumentError("no_images", "image_info is empty")
    similarity = _similarity(data, len(images), len(sentences)) if config.reassign else None
    url = data.get("url")
    if url is not None and not isinstance(url, str):
        raise DocumentError("bad_field", f"url is a {type(url).__name__}, not a string")
    if url is not None and not _unicode(url):  # it becomes the status row's input
        raise DocumentError("bad_field", "url holds a lone surrogate escape (\\ud800), not text")
    return Document(id="", ref=url or f"{s.path}:{line}", url=url or None, line=line,
                    sentences=sentences, images=images, similarity=similarity,
                    could_duplicate=bool(data.get("could_have_url_duplicate")))


def _list(data: dict, name: str) -> list:
    if name not in data:
        raise DocumentError("missing_field", f"no {name!r}")
    value = data[name]
    if not isinstance(value, list):
        raise DocumentError("bad_field", f"{name} is a {type(value).__name__}, not a list")
    return value


def _sentences(data: dict) -> tuple[str, ...]:
    sentences = _list(data, "text_list")
    if not all(isinstance(t, str) for t in sentences):
        raise DocumentError("bad_field", "text_list holds a non-string")
    if not all(_unicode(t) for t in sentences):
        raise DocumentError("bad_field", "text_list holds a lone surrogate escape (\\ud800), not text")
    return tuple(sentences)


def _unicode(text: str) -> bool:
    """No lone surrogates: JSON escapes can spell them, and the shard writer cannot store them
    (the whole unit would fail at its commit)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _candidate(i: int, info, n_sentences: int) -> Candidate:
    if not isinstance(info, dict):
        raise DocumentError("bad_field", f"image_info[{i}] is not an object")
    for name in ("raw_url", "matched_text_index", "matched_sim"):
        if name not in info:
            raise DocumentError("missing_field", f"image_info[{i}] has no {name!r}")
    url, index, sim = info["raw_url"], info["matched_text_index"], info["matched_sim"]
    if not isinstance(url, str) or not _unicode(url) or not _is_number(sim):
        raise DocumentError("bad_field", f"image_info[{i}]: raw_url must be a string (no lone surrogate), "
                                         "matched_sim a finite number")
    unplaced = None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_sentences:
        unplaced = (f"image_info[{i}].matched_text_index {index!r} is not a sentence index "
                    f"(text_list has {n_sentences})")
        index = -1
    name = info.get("image_name")
    return Candidate(i, url, name if isinstance(name, str) and _unicode(name) else None, index, float(sim),
                     unplaced)


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer past the float range (10**400)
        return False


def _similarity(data: dict, n_images: int, n_sentences: int) -> tuple[tuple[float, ...], ...]:
    """similarity_matrix, images x sentences, checked: the reassignment needs every entry."""
    rows = _list(data, "similarity_matrix")
    if len(rows) != n_images or not all(isinstance(r, list) and len(r) == n_sentences for r in rows):
        raise DocumentError("bad_field", f"similarity_matrix is not {n_images} x {n_sentences} "
                                         "(images x sentences)")
    if not all(_is_number(v) for r in rows for v in r):
        raise DocumentError("bad_field", "similarity_matrix holds a non-number")
    return tuple(tuple(float(v) for v in r) for r in rows)


def document_id(url: str) -> str:
    """The stable id of a document with a URL: 16 hex digits of its SHA-1."""
    return hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _with_id(doc: Document, s: Slice) -> Document | dict:
    """Id from the URL's hash; file stem + line where there is no URL or MMC4 says the URL
    may name other documents too (could_have_url_duplicate). A document whose key came
    earlier in the input becomes its duplicate_key status row."""
    if not doc.url or doc.could_duplicate:
        return replace(doc, id=f"{s.stem}-{doc.line}")
    uid = document_id(doc.url)
    repeat = next((r for r in s.repeats if r[0] == doc.line), None)
    if repeat:
        return keys.status(f"{KIND}:{uid}", KIND, repeat[1], repeat[2], input=doc.ref)
    return replace(doc, id=uid)


# ---- one document ---------------------------------------------------------------------------

def process(unit: Mmc4Unit, writer: UnitWriter) -> None:
    """Parse the unit's lines in order, fetch (or read) the documents' images in parallel,
    write in order."""
    parsed = _parse_all(unit)
    with Media(unit.net, unit.media) as media, ThreadPoolExecutor(unit.config.fetch_workers) as pool:
        build = partial(_outcome, config=unit.config, media=media, jsonl=Path(unit.slice.path).name)
        for row, status in pool.map(build, parsed):
            if row is not None:
                writer.add_sample(row)
            writer.add_status(status)


def _parse_all(unit: Mmc4Unit) -> list[Document | dict]:
    """Documents, or the status row of a line that is not one. Blank lines are no documents."""
    out, s = [], unit.slice
    for line, raw in read_lines(s):
        if not raw.strip():
            continue
        try:
            doc = parse(raw, line, s, unit.config)
        except DocumentError as e:
            key = f"{KIND}:{s.stem}-{line}"
            out.append(records.status(key, KIND, e.reason, input=f"{s.path}:{line}", error=str(e)))
            continue
        out.append(_with_id(doc, s))
    return out


def _outcome(doc: Document | dict, *, config: Mmc4Config, media: Media, jsonl: str = "") -> tuple[dict | None, dict]:
    """(sample or None, status row) of one parsed line of the file named `jsonl`."""
    if isinstance(doc, dict):
        return None, doc
    key = f"{KIND}:{doc.id}"
    dropped: list[dict] = []
    kept = _fetch_best(doc, config, media, dropped, jsonl)
    if not kept:
        return None, records.status(key, KIND, "no_images", input=doc.ref,
                                    error=f"no image left of {len(doc.images)}: {_summary(dropped)}")
    matched = _assign(doc, kept) if config.reassign else [c.matched for c, _ in kept]
    try:
        row = records.sample(key, KIND, _positions(doc.sentences, kept, matched),
                             meta=_meta(doc, kept, matched, dropped, config))
    except records.RecordError as e:
        return None, records.status(key, KIND, "invalid_record", input=doc.ref, error=str(e))
    note = f"{len(dropped)} of {len(doc.images)} image(s) dropped: {_summary(dropped)}" if dropped else None
    return row, records.status(key, KIND, "ok", input=doc.ref, error=note, samples=1)


def _summary(dropped: list[dict]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(Counter(d["reason"] for d in dropped).items()))


def _fetch_best(doc: Document, config: Mmc4Config, media: Media,
                dropped: list[dict], jsonl: str) -> list[tuple[Candidate, bytes]]:
    """Up to max_images images, best similarity first; a failure makes room for the next best.
    Images with no sentence to sit before (unplaced) are dropped first, never fetched."""
    dropped += [_drop(c, "bad_match_index", c.unplaced) for c in doc.images if c.unplaced]
    ranked = sorted((c for c in doc.images if not c.unplaced), key=lambda c: (-c.sim, c.index))
    queue = [c for c in ranked if c.sim >= config.min_sim]
    dropped += [_drop(c, "below_min_sim", f"matched_sim {c.sim:.4f} < {config.min_sim}")
                for c in ranked if c.sim < config.min_sim]
    kept = []
    while queue and len(kept) < config.max_images:
        candidate = queue.pop(0)
        names = image_paths(candidate.name, jsonl) if media.local.image_root and candidate.name else None
        try:
            kept.append((candidate, fetch_image(candidate.url, config, media, names=names)))
        except ImageDropped as e:
            dropped.append(_drop(candidate, e.reason, str(e)))
    dropped += [_drop(c, "over_max_images", f"more than {config.max_images} images") for c in queue]
    dropped.sort(key=lambda d: d["index"])
    return kept


def _drop(candidate: Candidate, reason: str, message: str) -> dict:
    return {"index": candidate.index, "url": candidate.url, "reason": reason, "message": message[:300]}


def fetch_image(url: str, config: Mmc4Config, media: Media, *, names: list[str] | None = None) -> bytes:
    """The image's bytes as the corpus stores them, or ImageDropped with the reason. With
    `names` (image_paths), it is the first of them under --image-root, and `url` is not fetched."""
    try:
        body = (media.get_named(names[-1], names) if names else media.get(url)).body
    except net.FetchError as e:
        raise ImageDropped(e.reason, str(e)) from None
    if config.min_image_bytes and len(body) <= config.min_image_bytes:
        raise ImageDropped("too_small", f"{len(body)} bytes <= min_image_bytes {config.min_image_bytes}")
    return checked_image(body, config.max_image_pixels)


def image_paths(name: str, jsonl: str) -> list[str]:
    """Where an image_name may lie under --image-root, in the order looked: as MMC4's
    download_images.py writes a shard's images (its default --output_image_dir,
    <jsonl stem>_images/), as OpenFlamingo's convert_mmc4_to_wds.py reads them
    (<shard number>/), and in one folder. The name is input data: the confined reader keeps
    whatever it spells (../, /abs) inside the root."""
    stem = jsonl.removesuffix(".jsonl")
    shard = re.search(r"shard_(\d+)", stem)
    return [f"{stem}_images/{name}", *([f"{int(shard.group(1))}/{name}"] if shard else []), name]


def checked_image(body: bytes, max_pixels: int) -> bytes:
    """Bytes that decode in full (stored as they came if JPEG/PNG/WebP, else re-encoded to
    JPEG), or ImageDropped(decode_error | decompression_bomb) from images.opened."""
    try:
        with images.opened(body, max_pixels=max_pixels) as image:
            if image.format in STORED_FORMATS:
                return body
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
            return buffer.getvalue()
    except images.ImageRejected as e:
        raise ImageDropped(e.reason, str(e)) from None


def _assign(doc: Document, kept: list[tuple[Candidate, bytes]]) -> list[int]:
    """Sentence per kept image by linear assignment on -similarity over the kept images only
    (MMC4's own assignment also counted images since dropped). With more images than
    sentences some stay unassigned: those keep their original sentence."""
    matched = [c.matched for c, _ in kept]
    sim = np.array([doc.similarity[c.index] for c, _ in kept], dtype=float)
    for row, col in zip(*linear_sum_assignment(-sim)):
        matched[row] = int(col)
    return matched


def _positions(sentences: tuple[str, ...], kept: list[tuple[Candidate, bytes]],
               matched: list[int]) -> list[str | bytes]:
    """Each image before its sentence (several: in document order); consecutive sentences
    read as one paragraph, so texts and images alternate."""
    before: dict[int, list[bytes]] = {}
    for (candidate, image), sentence in sorted(zip(kept, matched), key=lambda x: (x[1], x[0][0].index)):
        before.setdefault(sentence, []).append(image)
    items: list[str | bytes] = []
    for i, sentence in enumerate(sentences):
        items += before.get(i, [])
        text = sentence.strip()
        if not text:
            continue
        if items and isinstance(items[-1], str):
            items[-1] += " " + text
        else:
            items.append(text)
    return items


def _meta(doc: Document, kept: list[tuple[Candidate, bytes]], matched: list[int],
          dropped: list[dict], config: Mmc4Config) -> dict:
    images = sorted(({"index": c.index, "url": c.url, "name": c.name, "bytes": len(body),
                      "matched_text_index": m, "original_matched_text_index": c.matched,
                      "matched_sim": round(doc.similarity[c.index][m], 4) if doc.similarity else c.sim,
                      "original_matched_sim": c.sim}
                     for (c, body), m in zip(kept, matched)), key=lambda i: i["index"])
    return {"url": doc.url, "line": doc.line, "sentences": len(doc.sentences),
            "images_in_document": len(doc.images), "images": images,
            "matched_text_index": [i["matched_text_index"] for i in images],
            "matched_sim": [i["matched_sim"] for i in images],
            "dropped_images": [{k: d[k] for k in ("index", "url", "reason")} for d in dropped],
            "reassigned": config.reassign}


# ---- the stage --------------------------------------------------------------------------------

def layout(config: Mmc4Config) -> dict:
    return {"mmc4": {k: v for k, v in asdict(config).items() if k not in _SPEED_ONLY}}


def input_files(inputs: list[Path]) -> list[Path]:
    files = textfiles.input_files(inputs, ".jsonl")
    if not files:
        raise errors.UsageError("no .jsonl input: give jsonl files or directories holding them")
    return files


def make_mmc4(inputs: list[Path], config: Mmc4Config, net_policy: net.NetPolicy, output, ray=None, *,
              media: LocalMedia = LocalMedia()):
    """Run the stage over the jsonl `inputs` (files or directories of *.jsonl) into output.out;
    resumable, every document accounted for. Images come from media's --image-root (by
    image_name) when given, else from raw_url: fetched, or read under the media roots."""
    from emu_data.engine.stage import run_source

    return run_source(SOURCE, config, input_files(inputs), output, ray, net=net_policy, media=media)


@dataclass(frozen=True)
class Mmc4Inputs:
    input: list = option(many=True, required=True, parse=Path, metavar="JSONL",
                         help="MMC4 jsonl files, or directories of them")


SOURCE = registry.register(registry.Source(
    name="mmc4",
    kinds=(registry.Kind(KIND, emu_weight=64, colour="#805ad5", sample=sample.mmc4_document),),
    help="MMC4 interleaved documents (jsonl) -> samples with images at their sentences",
    description="One sample per document: images downloaded and placed before their matched "
                "sentence; images below --min-sim dropped, the best --max-images kept, optionally "
                "re-assigned to sentences (linear assignment on the similarity matrix). Images "
                "that fail are recorded in the document's meta; a document left with no image "
                "gets a status reason.",
    epilog="examples:\n  emu-data mmc4 --input docs_shard_*.jsonl --out runs/mmc4\n"
           "  emu-data mmc4 --input docs/ --out runs/mmc4 --min-sim 0.32 --max-images 5   # Emu\n"
           "  emu-data mmc4 --input docs/ --out runs/mmc4 --min-image-bytes 11000       # OpenFlamingo\n"
           "  emu-data mmc4 --input docs/ --out runs/mmc4 --image-root /data/mmc4/images   # images on disk",
    config=Mmc4Config, inputs=Mmc4Inputs,
    resolve=lambda given, net, media: input_files(given.input),
    units=lambda files, config, ray, net, media: units(files, config, net, ray, media),
    process=process, layout=layout,
    extras=(Params("net", net.NetPolicy, "downloads (the HTTP policy)"),
            Params("media", LocalMedia, "local copies (a mirror, MMC4's images on disk)")),
    site=registry.Site(site_mmc4.site_inputs, site_mmc4.publish_site),
))
