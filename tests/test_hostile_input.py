"""Hostile input (issue 8, item 4): names taken from input data never become paths outside
the output or work directory, and decompression bombs are refused, never decoded, with the
reason `decompression_bomb` on every image decode path.

Everything runs for real: each source's own process() on input files written here, its
downloads served by a local HTTP server on 127.0.0.1 (yt-dlp, img2dataset, net.Fetcher), its
rows written by the real UnitWriter, then read back from the shards. The system temp dir
(yt-dlp's and img2dataset's work dirs) is moved deep inside the test's tmp_path, so a name
that climbed out of a work dir would land where the test sees it.

Bombs are real images built here. To stay small and fast, Pillow's MAX_IMAGE_PIXELS is
lowered (monkeypatch) to 10,000 for the test: a 200x200 PNG (40,000 px) then lies above
twice the limit, where Pillow itself raises DecompressionBombError, and a 120x120 PNG
(14,400 px) between once and twice it, where Pillow only warns and would decode.
"""

from __future__ import annotations

import copy
import csv
import html.parser
import io
import json
import os
import random
import struct
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emu_data.ops import encoder, features
from emu_data.core import images, manifest, records
from emu_data import net
from emu_data.inspect import preview
from emu_data.synthetic import site as sample_site
from emu_data.core.corpus import UnitWriter
from emu_data.synthetic.site.webvid import SiteClip, publish_webvid
from emu_data.core.schema import arrow_schema
from emu_data.core.shards import ShardLimits, read_shard, write_table
from emu_data.sources import laion, mmc4, webvid
from emu_data.sources.youtube import stage as youtube, storyboard, ytdl
from emu_data.sources.youtube.inputs import VideoInput
from emu_data.inspect.validate import image_problem

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

LOCAL = net.NetPolicy(allow_private_addresses=True)
LIMIT = 10_000            # Pillow's MAX_IMAGE_PIXELS while a bomb test runs
BOMB = (200, 200)         # 40,000 px > 2 x LIMIT: Pillow raises DecompressionBombError
WARN_ZONE = (120, 120)    # 14,400 px, between LIMIT and 2 x LIMIT: Pillow only warns
SMALL = (64, 64)          # 4,096 px: a good image
# Names as input data may carry them; none may reach the file system as a path.
HOSTILE = ["../../escape", "/abs/path", "a/../../b", "..\\..\\x", "nul\x00byte", "n" * 300]
QUIET = ytdl.YtdlOptions(sleep_requests=0, sleep_interval=0, sleep_subtitles=0, retries=0)


def png(size: tuple[int, int], mode: str = "1") -> bytes:
    """A PNG of one flat colour: a bomb this way is a few hundred bytes on disk."""
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def low_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)


@pytest.fixture
def jail(tmp_path, monkeypatch):
    """(out, before): the output dir and the files under tmp_path before the run; the system
    temp dir is moved four levels deep inside tmp_path."""
    work = tmp_path / "w1" / "w2" / "w3" / "tmp"
    work.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return tmp_path / "out", set(tmp_path.rglob("*"))


def assert_nothing_escaped(tmp_path: Path, before: set, out: Path) -> None:
    """New files only under out; the work dirs are gone; no absolute name was written."""
    new = sorted(str(p) for p in set(tmp_path.rglob("*")) - before if not p.is_relative_to(out))
    assert new == [], new
    assert not Path("/abs/path").exists() and not Path("/escape").exists()


def run_unit(process, payload, out: Path) -> tuple[list[dict], list[dict]]:
    """One unit through the source's process() and the real UnitWriter: (samples, status rows)."""
    writer = UnitWriter(out, "unit", ShardLimits())
    process(payload, writer)
    part = writer.commit("test", "test")
    read = lambda kind: [r for s in part[kind] for r in read_shard(out / s["path"]).to_pylist()]  # noqa: E731
    return read("shards"), read("status_shards")


def serve_images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in (("good", SMALL), ("bomb", BOMB), ("warn", WARN_ZONE)):
        (root / f"{name}.png").write_bytes(png(size))


# ---- YouTube: info dicts whose names are paths ----------------------------------------------

@pytest.fixture(scope="module")
def yt_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("yt-site")
    with sample_site.serve(root) as base:
        infos = sample_site.publish_youtube(
            root, base, [sample_site.SiteVideo(v) for v in ("good0000001", "bombsb00001", "warnsb00001", "ddsmosaic01")])
        yield root, {info["id"]: info for info in infos}


def _info_files(folder: Path, variants: list[tuple[str, dict]]) -> list[VideoInput]:
    folder.mkdir()
    videos = []
    for i, (_, info) in enumerate(variants):
        path = folder / f"v{i:02d}.json"
        path.write_text(json.dumps(info))
        videos.append(VideoInput("file", str(path)))
    return videos


def _youtube_variants(good: dict, tmp_path: Path, site: Path) -> list[tuple[str, dict]]:
    """(expected status, info dict): a hostile value in each field that names yt-dlp's files."""
    names = HOSTILE + [f"{tmp_path}/abs-escape"]

    def edit(change) -> dict:
        info = copy.deepcopy(good)
        change(info)
        return info

    def subtitles_as(lang):
        return lambda info: info.update(subtitles={lang: info["subtitles"]["en"]})

    out = [("ok", good)]
    out += [("malformed_info", edit(lambda i, n=n: i.update(id=n))) for n in names + ["good0000001\n"]]
    out += [("malformed_info", edit(lambda i, n=n: i["formats"][0].update(format_id=n))) for n in names]
    # "en-..." so the track is chosen (a regional variant of en), "(": a broken regex to yt-dlp
    out += [("malformed_info", edit(subtitles_as(f"en-{n}"))) for n in names + ["("]]
    out += [("malformed_info", edit(lambda i, n=n: i["formats"][0].update(ext=n)))
            for n in ("../../escape", f"{tmp_path}/abs-escape", "exe")]
    # yt-dlp's private working state, planted: must not steer where files go or come from
    moved = site / "info" / "good0000001.info.json"
    out.append(("ok", edit(lambda i: i.update(
        id="private0001", __finaldir=str(tmp_path / "finaldir"), _filename=str(tmp_path / "f"),
        filepath=str(tmp_path / "g"), __files_to_move={str(moved): str(tmp_path / "moved")},
        requested_downloads=[{"filepath": "/etc/hostname"}], __post_extractor="not callable"))))
    return out


def test_youtube_names_never_become_paths(yt_site, jail, tmp_path):
    site, infos = yt_site
    out, before = jail
    variants = _youtube_variants(infos["good0000001"], tmp_path, site)
    videos = _info_files(tmp_path / "info", variants)
    before |= set(tmp_path.rglob("*"))
    unit = youtube.YoutubeUnit(tuple(videos), youtube.YoutubeConfig(rate_limit_retries=0), QUIET, LOCAL)
    samples, status = run_unit(youtube.process, unit, out)
    found = {row["input"]: row for row in status}
    assert len(status) == len(found) == len(variants)  # one row each, and the run went on
    for video, (expected, _) in zip(videos, variants):
        row = found[video.ref]
        assert row["status"] == expected, (row, video)
        assert row["key"].startswith("yt_storyboard:") and "/" not in row["key"] and "\n" not in row["key"]
    assert {r["key"].rsplit(":", 1)[0] for r in samples} == {"yt_storyboard:good0000001",
                                                             "yt_storyboard:private0001"}
    assert (site / "info" / "good0000001.info.json").exists()  # __files_to_move moved nothing
    assert_nothing_escaped(tmp_path, before, out)
    assert list(Path(tempfile.tempdir).iterdir()) == []  # yt-dlp's work dirs are removed


def test_youtube_storyboard_bombs_end_in_the_status_table(yt_site, jail, tmp_path, monkeypatch):
    """Real mosaics are 800x450 (360,000 px): the limit is 400,000 here, so a 1000x1000 mosaic
    is above twice it and a 700x700 one (490,000 px) in the warning zone."""
    site, infos = yt_site
    out, before = jail
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)
    (site / "yt" / "bombsb00001" / "M0.jpg").write_bytes(png((1000, 1000)))
    (site / "yt" / "warnsb00001" / "M0.jpg").write_bytes(png((700, 700)))
    videos = _info_files(tmp_path / "info", [(v, infos[v]) for v in ("bombsb00001", "good0000001", "warnsb00001")])
    before |= set(tmp_path.rglob("*"))
    unit = youtube.YoutubeUnit(tuple(videos), youtube.YoutubeConfig(rate_limit_retries=0), QUIET, LOCAL)
    _, status = run_unit(youtube.process, unit, out)
    assert [(r["status"], r["error"].split(":")[0] if r["error"] else None) for r in status] == [
        ("decompression_bomb", "decompression_bomb"), ("ok", "[identity default]"),
        ("decompression_bomb", "decompression_bomb")]
    assert all("mosaic 0" in status[i]["error"] for i in (0, 2))
    assert_nothing_escaped(tmp_path, before, out)


# ---- MMC4: image names and URLs, bombs among a document's images --------------------------------

def _document(url, images: list[tuple[str, str]]) -> dict:
    """A two-sentence document; images as (image_name, raw_url), all matched to sentence 0."""
    return {"url": url, "text_list": ["A first sentence.", "A second one."],
            "image_info": [{"image_name": name, "raw_url": raw, "matched_text_index": 0, "matched_sim": 0.3}
                           for name, raw in images],
            "similarity_matrix": [[0.3, 0.1] for _ in images]}


def test_mmc4_hostile_names_and_bombs(tmp_path, jail, low_limit):
    out, before = jail
    serve_images(tmp_path / "site")
    with sample_site.serve(tmp_path / "site") as base:
        docs = [
            _document("https://example.com/a", [("../../escape", f"{base}/good.png"),
                                                 ("/abs/path", f"{base}/bomb.png")]),
            _document("https://example.com/b", [("a/../../b", f"{base}/warn.png")]),
            _document("../../escape", [(n, n) for n in HOSTILE] + [("x", f"{base}/../../escape"),
                                                                   ("y", "file:///etc/passwd")]),
        ]
        jsonl = tmp_path / "docs.jsonl"
        jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
        before |= set(tmp_path.rglob("*"))
        [unit] = mmc4.units([jsonl], mmc4.Mmc4Config(fetch_workers=2, max_images=10), LOCAL)
        samples, status = run_unit(mmc4.process, unit.payload, out)
    assert [r["status"] for r in status] == ["ok", "no_images", "no_images"]
    assert status[0]["error"] == "1 of 2 image(s) dropped: decompression_bomb 1"
    assert status[1]["error"].endswith(": decompression_bomb 1")
    [sample] = samples
    meta = json.loads(sample["meta"])
    assert [d["reason"] for d in meta["dropped_images"]] == ["decompression_bomb"]
    assert meta["images"][0]["name"] == "../../escape"  # kept as data, in meta only
    assert "decompression_bomb" not in status[2]["error"]  # hostile URLs: fetch reasons
    assert all(r["key"].startswith("mmc4:") and "/" not in r["key"] for r in status)
    assert_nothing_escaped(tmp_path, before, out)


# ---- WebVid: ids and page dirs, oversized frames -------------------------------------------

def _webvid_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"])
        writer.writeheader()
        writer.writerows(rows)


def test_webvid_hostile_ids_and_page_dirs(tmp_path, jail):
    out, before = jail
    with sample_site.serve(tmp_path / "site") as base:
        [published] = publish_webvid(tmp_path / "site", base, [SiteClip("clip1", duration=2, fps=5, size=64)])
        row = published.record
        rows = [{**row, "videoid": n} for n in HOSTILE]
        rows += [{**row, "videoid": "ok1", "page_dir": "../../escape", "page_idx": "/abs/path"},
                 {**row, "videoid": "ok2", "page_dir": "n" * 300, "page_idx": "..\\..\\x"}]
        table = tmp_path / "rows.csv"
        _webvid_csv(table, rows)
        before |= set(tmp_path.rglob("*"))
        [unit] = webvid.units([table], webvid.WebvidConfig(frames=2, min_duration=0.5, fetch_workers=2), LOCAL)
        samples, status = run_unit(webvid.process, unit.payload, out)
    assert len(status) == len(rows)
    assert [r["status"] for r in status[:len(HOSTILE)]] == ["invalid_id"] * len(HOSTILE)
    assert [r["status"] for r in status[len(HOSTILE):]] == ["ok", "ok"]
    assert [json.loads(s["meta"])["page_dir"] for s in samples] == ["../../escape", "n" * 300]
    assert all("/" not in r["key"] and "\\" not in r["key"] for r in status)
    assert_nothing_escaped(tmp_path, before, out)


def test_webvid_frames_above_the_limit_are_bombs(tmp_path, low_limit):
    """A 64x64 clip under a limit of 4,095 px (decoded frames skip Pillow's own check: PyAV
    makes them with Image.frombytes), and a 200x200 frame handed to the frame encoder."""
    publish_webvid(tmp_path / "site", "http://127.0.0.1", [SiteClip("clip1", duration=2, fps=5, size=64)])
    data = (tmp_path / "site" / "webvid" / "clip1.mp4").read_bytes()
    small = webvid.WebvidConfig(frames=2, min_duration=0.5, max_pixels=64 * 64 - 1)
    with pytest.raises(webvid.VideoError) as caught:
        webvid.sample_video(data, small)
    assert caught.value.reason == "decompression_bomb"
    with pytest.raises(webvid.VideoError) as caught:  # Pillow's limit (10,000) is the lower one here
        webvid._encode(av.VideoFrame(*BOMB, "yuv420p"), webvid.WebvidConfig())
    assert caught.value.reason == "decompression_bomb"


def _mp4_mutants(data: bytes, count: int, seed: int = 0):
    """The clip with bytes flipped, cut or overwritten: in the moov atom (sizes, counts,
    offsets, codec parameters) as often as in the frames."""
    rng = random.Random(seed)
    moov = data.find(b"moov")
    for i in range(count):
        mutant = bytearray(data)
        region = (moov, len(data)) if moov > 0 and i % 2 else (0, len(data))
        how = rng.choice(("flip", "cut", "overwrite"))
        if how == "cut":
            mutant = mutant[:rng.randrange(len(mutant))]
        for _ in range(rng.randint(1, 6) if how != "cut" else 0):
            at = rng.randrange(*region)
            mutant[at:at + (4 if how == "overwrite" else 1)] = rng.randbytes(4 if how == "overwrite" else 1)
        yield f"{how}/{i}", bytes(mutant)


def test_webvid_hostile_video_bytes_end_as_one_reason_each(tmp_path):
    """PyAV on mutated mp4s: a sampled video, or VideoError with a reason; nothing else escapes."""
    publish_webvid(tmp_path / "site", "http://127.0.0.1", [SiteClip("clip1", duration=2, fps=5, size=64)])
    data = (tmp_path / "site" / "webvid" / "clip1.mp4").read_bytes()
    config = webvid.WebvidConfig(frames=2, min_duration=0.5)
    answers = Counter()
    for label, mutant in _mp4_mutants(data, int(os.environ.get("EMU_FUZZ_VIDEOS", "120"))):
        try:
            webvid.sample_video(mutant, config)
            answers["ok"] += 1
        except webvid.VideoError as e:
            assert e.reason in ("decode_error", "too_short", "decompression_bomb") and str(e), (label, e)
            answers[e.reason] += 1
    assert answers["decode_error"] and sum(answers.values()) == int(os.environ.get("EMU_FUZZ_VIDEOS", "120"))


# ---- LAION: hashes that look like paths, bombs after img2dataset ---------------------------

@pytest.fixture(scope="module")
def img2dataset_imported():
    """img2dataset imports wandb, which makes temp dirs of its own on import: before the jail."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # as laion_download sets it
    pytest.importorskip("img2dataset.downloader")


def test_laion_hostile_hashes_and_bombs(img2dataset_imported, tmp_path, jail, low_limit):
    out, before = jail
    serve_images(tmp_path / "site")
    with sample_site.serve(tmp_path / "site") as base:
        urls = [f"{base}/good.png", f"{base}/bomb.png", f"{base}/warn.png", "file:///etc/passwd",
                f"{base}/../../escape", "/abs/path", "a/../../b"]
        parquet = tmp_path / "pairs.parquet"
        pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(len(urls))],
                                 "hash": (HOSTILE + ["ok"])[:len(urls)]}), parquet)
        before |= set(tmp_path.rglob("*"))
        config = laion.LaionConfig(download=laion.DownloadOptions(thread_count=4, timeout=5))
        [unit] = laion.units([parquet], config, LOCAL)
        samples, status = run_unit(laion.process, unit.payload, out)
    reasons = {r["input"]: r["status"] for r in status}
    assert len(status) == len(urls) == len(reasons)
    assert [reasons[u] for u in urls[:3]] == ["ok", "decompression_bomb", "decompression_bomb"]
    assert all(reasons[u] != "ok" for u in urls[3:])
    assert [s["key"] for s in samples] == ["laion:pairs-00000000"]  # a path-like hash: a positional key
    assert all(r["key"].startswith("laion:pairs-") for r in status[:-1])
    assert_nothing_escaped(tmp_path, before, out)


# ---- every decode path, both of Pillow's zones --------------------------------------------

def _decode_paths():
    """(name, call on bytes, the reason the call reports) for each image decode path."""
    def laion_path(data):
        try:
            laion.stored_image(data, laion.ImageOptions())
        except laion.BadImage as e:
            return e.reason

    def mmc4_path(data):
        try:
            mmc4.checked_image(data, 2**26)
        except mmc4.ImageDropped as e:
            return e.reason

    def storyboard_path(data):
        level = storyboard.Level("sb0", 20, 20, 1, 1, 1, 1.0, "spec", ("u",))
        try:
            storyboard.slice_mosaics([data], level)
        except storyboard.StoryboardError as e:
            return e.reason

    def validate_path(data):
        problem = image_problem(data, decode=True)
        return problem and problem[0]

    def validate_header_path(data):
        problem = image_problem(data, decode=False)
        return problem and problem[0]

    def encoder_path(data):  # features.ChunkReader turns it into a FeatureError
        try:
            encoder.pixels(data, [])
        except images.ImageRejected as e:
            return e.reason

    return [laion_path, mmc4_path, storyboard_path, validate_path, validate_header_path, encoder_path]


@pytest.mark.parametrize("warnings_as_errors", [False, True], ids=["default", "W-error"])
@pytest.mark.parametrize("size", [BOMB, WARN_ZONE], ids=["above-2x", "warning-zone"])
@pytest.mark.parametrize("path", _decode_paths(), ids=lambda f: f.__name__)
def test_every_decode_path_refuses_bombs(path, size, warnings_as_errors, low_limit):
    with warnings.catch_warnings():
        if warnings_as_errors:  # python -W error: Pillow's warning arrives as an exception
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert path(png(size)) == "decompression_bomb"
        assert path(png(SMALL, "RGB")) is None  # a good image still passes


# ---- every decode path, hostile bytes (issue 15, break 1) ----------------------------------

# What a decode path may answer for bytes that are not a usable image (None: it is one).
REASONS = {None, "decode_error", "decompression_bomb", "image_decode", "malformed_storyboard"}
FUZZ_CASES = int(os.environ.get("EMU_FUZZ_CASES", "600"))  # the soak test (pytest -m soak) runs 100x more


def dds_unknown_pixel_format() -> bytes:
    """192 bytes: a DDS header whose pixel-format flags are 0. Pillow 10-13 raises
    NotImplementedError for it, which no "not an image" list of exceptions expected."""
    header = bytearray(128)
    header[:4] = b"DDS "
    struct.pack_into("<7I", header, 4, 124, 0x1007, 4, 4, 0, 0, 0)
    struct.pack_into("<2I", header, 76, 32, 0)
    return bytes(header) + bytes(64)


def format_seeds() -> dict[str, bytes]:
    """A small image in every format the installed Pillow can write (its plugins as they are)."""
    seeds = {}
    Image.init()   # every plugin registered: Image.SAVE is filled lazily, so alone it held only a few
    picture = Image.radial_gradient("L").resize((32, 24)).convert("RGB")
    for name in sorted(Image.SAVE):
        for mode in ("RGB", "L", "1"):
            buffer = io.BytesIO()
            try:
                picture.convert(mode).save(buffer, name)
            except Exception:  # noqa: BLE001 - a writer that needs other modes or modules: skip it
                continue
            seeds[name] = buffer.getvalue()
            break
    seeds["DDS-flags-0"] = dds_unknown_pixel_format()
    return seeds


def mutants(seeds: dict[str, bytes], count: int, seed: int = 0):
    """(label, bytes): each seed flipped, cut, overwritten or spliced onto another's header."""
    rng, names = random.Random(seed), sorted(seeds)
    for i in range(count):
        name = names[i % len(names)]
        data = bytearray(seeds[name])
        how = rng.choice(("flip", "cut", "overwrite", "splice", "header-fields"))
        if how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == "cut":
            data = data[:rng.randrange(len(data))]
        elif how == "overwrite":
            at = rng.randrange(len(data))
            data[at:at + 16] = rng.randbytes(16)
        elif how == "splice":
            other = seeds[rng.choice(names)]
            data = data[:rng.randint(4, 64)] + other[rng.randint(0, len(other) - 1):]
        else:  # the header's integer fields: sizes, counts, offsets, flags
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(min(len(data), 160) - 3)
                data[at:at + 4] = struct.pack("<I", rng.choice((0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32))))
        yield f"{name}/{how}/{i}", bytes(data)


@pytest.mark.parametrize("path", _decode_paths(), ids=lambda f: f.__name__)
def test_a_dds_pillow_cannot_read_is_a_decode_error_on_every_path(path):
    assert path(dds_unknown_pixel_format()) in ("decode_error", "image_decode")


def _every_path_gives_a_reason(cases) -> int:
    paths, tried = _decode_paths(), 0
    for label, data in cases:
        for path in paths:
            try:
                answer = path(data)
            except Exception as e:  # noqa: BLE001 - the property: nothing escapes a decode path
                raise AssertionError(f"{path.__name__} on {label}: {type(e).__name__}: {e}") from e
            assert answer in REASONS, (path.__name__, label, answer)
            tried += 1
    return tried


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # IM writer, corrupt EXIF
def test_every_decode_path_gives_a_reason_for_hostile_bytes_in_every_format(low_limit):
    seeds = format_seeds()
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "DDS"} <= set(seeds)
    assert _every_path_gives_a_reason(mutants(seeds, FUZZ_CASES)) == FUZZ_CASES * len(_decode_paths())


@pytest.mark.soak
@pytest.mark.slow   # also out of `pytest -m "not slow"`, whose -m replaces the default "not soak"
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_every_decode_path_gives_a_reason_for_hostile_bytes_longer(low_limit):
    seeds = format_seeds()
    _every_path_gives_a_reason(mutants(seeds, 100 * FUZZ_CASES, seed=1))


def _hostile_images(count: int = 12) -> dict[str, bytes]:
    """File name -> bytes: the DDS Pillow cannot read and a few mutants of other formats."""
    files = {"dds.dds": dds_unknown_pixel_format()}
    files |= {f"m{i}.bin": data for i, (_, data) in enumerate(mutants(format_seeds(), count, seed=7))}
    return files


def test_an_image_a_decoder_chokes_on_is_that_items_reason_in_every_source(
        yt_site, img2dataset_imported, tmp_path, jail):
    """Served as image URLs (LAION, MMC4) and as a storyboard mosaic: every item gets its row,
    no unit fails (before: NotImplementedError sank the whole unit, every rerun again)."""
    out, _ = jail
    site, infos = yt_site
    hostile = _hostile_images()
    serve_images(tmp_path / "site")
    for name, data in hostile.items():
        (tmp_path / "site" / name).write_bytes(data)
    (site / "yt" / "ddsmosaic01" / "M0.jpg").write_bytes(hostile["dds.dds"])
    with sample_site.serve(tmp_path / "site") as base:
        urls = [f"{base}/good.png"] + [f"{base}/{name}" for name in hostile]
        parquet = tmp_path / "pairs.parquet"
        pq.write_table(pa.table({"URL": urls, "TEXT": [f"caption {i}" for i in range(len(urls))]}), parquet)
        config = laion.LaionConfig(download=laion.DownloadOptions(thread_count=4, timeout=5))
        [unit] = laion.units([parquet], config, LOCAL)
        _, status = run_unit(laion.process, unit.payload, out / "laion")
        reasons = {r["input"]: r["status"] for r in status}
        assert len(status) == len(urls) and reasons[urls[0]] == "ok"
        assert reasons[urls[1]] == "decode_error" and set(reasons.values()) <= {"ok", "decode_error"}

        jsonl = tmp_path / "docs.jsonl"
        docs = [_document(f"https://example.com/{i}", [("x", url), ("g", urls[0])]) for i, url in enumerate(urls[1:])]
        jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
        [unit] = mmc4.units([jsonl], mmc4.Mmc4Config(fetch_workers=2, max_images=10, min_image_bytes=0), LOCAL)
        samples, status = run_unit(mmc4.process, unit.payload, out / "mmc4")
        assert [r["status"] for r in status] == ["ok"] * len(docs) and len(samples) == len(docs)
        dropped = json.loads(samples[0]["meta"])["dropped_images"]
        assert [d["reason"] for d in dropped] == ["decode_error"]

    videos = _info_files(tmp_path / "info", [(v, infos[v]) for v in ("ddsmosaic01", "good0000001")])
    unit = youtube.YoutubeUnit(tuple(videos), youtube.YoutubeConfig(rate_limit_retries=0), QUIET, LOCAL)
    _, status = run_unit(youtube.process, unit, out / "yt")
    assert [r["status"] for r in status] == ["decode_error", "ok"]
    assert "NotImplementedError" in status[0]["error"] and "mosaic 0" in status[0]["error"]


def test_features_stop_on_a_bomb_naming_shard_and_key(tmp_path, tiny_vit, low_limit):
    """The features stage has no status table (one feature row per corpus image is its
    contract): a bomb stops the run with a FeatureError that says where it is."""
    rows = [records.sample(f"laion:{name}", "laion", [png(size, "RGB"), "caption"])
            for name, size in (("good", SMALL), ("bomb", BOMB))]
    write_table(tmp_path / "data" / "x.arrow", pa.Table.from_pylist(rows, schema=arrow_schema("interleaved")), tmp_path)
    reader = features.ChunkReader(str(tmp_path), encoder.preprocess_for(encoder.ModelSpec(str(tiny_vit))))
    assert len(reader({"shard": "data/x.arrow", "start": 0, "stop": 1})["key"]) == 1
    with pytest.raises(features.FeatureError, match=r"data/x\.arrow: laion:bomb image 0 is a decompression bomb"):
        reader({"shard": "data/x.arrow", "start": 0, "stop": 2})


@pytest.mark.parametrize("shard", ["../../escape.arrow", "/abs/path.arrow", "data/../../b.arrow",
                                   "data/../data/x.arrow", "status/x.arrow"])
def test_features_refuse_manifest_paths_outside_the_corpus(tmp_path, tiny_vit, shard):
    corpus, out = tmp_path / "corpus", tmp_path / "a" / "b" / "features"
    corpus.mkdir()
    part = {"shards": [{"path": shard, "rows": 1, "bytes": 1, "sha256": "0" * 64}], "status_shards": [],
            "status_counts": {}, "source_counts": {}}
    built = manifest.build(record="interleaved", stage="sample", config={}, fingerprint="f", parts=[part])
    # written by hand: manifest.write itself refuses such a path (schemas/manifest.json)
    (corpus / manifest.MANIFEST_NAME).write_text(json.dumps(built, default=str))
    before = set(tmp_path.rglob("*"))
    with pytest.raises((features.FeatureError, manifest.ManifestError), match="is not a data/|does not match"):
        features.make_features(corpus, out, encoder.ModelSpec(str(tiny_vit)))
    assert set(tmp_path.rglob("*")) == before


# ---- preview: hostile strings stay text -------------------------------------------------

SCRIPT, BREAKOUT = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_preview_escapes_hostile_keys_texts_and_meta():
    hostile = SCRIPT + BREAKOUT
    rows = [
        {"key": hostile, "source": hostile, "texts": [hostile, None, None], "times": [0.0, 1.0, float("nan")],
         "images": [None, {"bytes": png(SMALL, "RGB"), "path": hostile}, {"bytes": hostile.encode(), "path": None}],
         "meta": json.dumps({hostile: hostile, "url": f"javascript:{hostile}"})},
        {"key": "k", "source": "laion", "texts": ["t"], "images": [None], "times": None, "meta": hostile},
    ]
    page = preview.render_html(rows, hostile, summary={hostile: {hostile: hostile}, "n": hostile})
    parser = _Tags()
    parser.feed(page)
    tags = [tag for tag, _ in parser.tags]
    assert "script" not in tags and tags.count("img") == 1  # the one real image, no injected one
    [(_, img)] = [t for t in parser.tags if t[0] == "img"]
    assert img["src"].startswith("data:image/png;base64,") and "onerror" not in img
    assert all(not name.startswith("on") for _, attrs in parser.tags for name in attrs)
    assert SCRIPT not in page and BREAKOUT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_lone_surrogate_in_metadata_is_stored_escaped_not_fatal():
    """A title with a lone surrogate (valid in JSON, not in UTF-8) must not fail the shard."""
    import json as _json

    from emu_data.core import records as _records

    row = _records.sample("laion:x", "laion", [b"\xff\xd8", "caption"], meta={"title": "bad \ud800 title"})
    row["meta"].encode("utf-8")   # storable
    assert _json.loads(row["meta"])["title"] == "bad \ud800 title"
