"""Local and mirrored media (issue 19, part 2): WebVid, LAION and MMC4 read from files under
--media-root (MMC4 also by image_name under --image-root) make the samples the loopback server
makes, and a reference in the input that leads outside the roots is refused with a reason and
never opened.

The same sample-site files are served over HTTP and read from disk; runs are compared by key
and by the sha256 of every image. The confinement tests run each source's process() in this
process under an audit hook (PEP 578) on "open": an open of a path outside the roots is
recorded and refused by the hook itself, so the test fails on it, and a FIFO out there can
never hang the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import csv
import json
import os
import random
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu_data import cli, net
from emu_data import sources as registry
from emu_data.core import errors, options
from emu_data.core.corpus import UnitWriter, shard_paths
from emu_data.core.shards import ShardLimits, read_shard
from emu_data.engine.stage import OutputOptions
from emu_data.net import media
from emu_data.net.media import LocalMedia
from emu_data.pipeline import recipe as recipes
from emu_data.pipeline import stages as stage_plan
from emu_data.sources import laion, mmc4, webvid
from emu_data.synthetic import world
from emu_data.synthetic.site import serve
from emu_data.synthetic.site import webvid as site_webvid
from emu_data.synthetic.site.bundle import SiteConfig
from emu_data.synthetic.site.laion import SitePair, publish_laion
from emu_data.synthetic.site.mmc4 import SiteDocument, publish_mmc4

LOOPBACK = net.NetPolicy(retries=0, per_host_rate=0, allow_private_addresses=True)
GUARDED = net.NetPolicy(retries=0, per_host_rate=0)   # a local run that fetched 127.0.0.1 would show it
# A URL the server answers 404 is, in the local copy, a file that is not there.
SAME_REASON = {"http_404": "missing_file"}


# ---- recording opens ---------------------------------------------------------------------------

_FORBIDDEN: list[str] = []   # resolved paths (and folders) no open may reach while a test watches
_OPENED: list[str] = []      # opens of them that were attempted
_hooked = False


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _FORBIDDEN:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):   # os.fdopen and friends: a descriptor, not a path
        return
    resolved = os.path.realpath(path)
    if any(resolved == p or resolved.startswith(p + os.sep) for p in _FORBIDDEN):
        _OPENED.append(resolved)
        # refused here, so a FIFO is never opened (it would block); the caller sees an OSError
        raise PermissionError(f"test audit hook: {resolved} lies outside the media roots")


@contextlib.contextmanager
def watching(*paths):
    """While the block runs, opening any of `paths` (or what lies under them) is recorded and
    refused; yields the list of such opens."""
    global _hooked
    if not _hooked:   # audit hooks cannot be removed: one per process, idle unless watching
        sys.addaudithook(_audit)
        _hooked = True
    _OPENED.clear()
    _FORBIDDEN[:] = [os.path.realpath(p) for p in paths]
    try:
        yield _OPENED
    finally:
        _FORBIDDEN.clear()


def _rows(out: Path, kind: str = "data") -> list[dict]:
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _samples(out: Path) -> dict:
    """key -> (sha256 of every image, texts, times): what must not differ between the paths."""
    return {r["key"]: ([_sha(i["bytes"]) if i else None for i in r["images"]], r["texts"], r["times"])
            for r in _rows(out)}


def _statuses(out: Path) -> dict:
    return {r["key"]: SAME_REASON.get(r["status"], r["status"]) for r in _rows(out, "status")}


def _same_corpus(remote: Path, local: Path) -> None:
    assert _statuses(remote) == _statuses(local)
    samples = _samples(remote)
    assert samples and samples == _samples(local)


# ---- the same samples: WebVid ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def webvid_site(tmp_path_factory):
    """The sample site's WebVid part (a missing and a truncated clip among ten), served, with its
    local copy; and a second copy whose contentUrl are file:// URLs."""
    root = tmp_path_factory.mktemp("webvid-site")
    with serve(root) as base:
        site_webvid.publish_site(root, base, SiteConfig(clips=10, fault_every=5))
        yield root, site_webvid.site_inputs(root)


WEBVID_CONFIG = webvid.WebvidConfig(rows_per_unit=4, fetch_workers=2)


@pytest.fixture(scope="module")
def webvid_remote(webvid_site, tmp_path_factory, ray_session) -> Path:
    """The site's CSV as served: the corpus the local copy must reproduce."""
    out = tmp_path_factory.mktemp("webvid-remote") / "corpus"
    webvid.make_webvid(webvid_site[1]["webvid"], WEBVID_CONFIG, LOOPBACK, OutputOptions(out), ray_session)
    return out


def test_webvid_local_copy_gives_the_servers_samples(webvid_site, webvid_remote, tmp_path, ray_session):
    _, inputs = webvid_site
    assert cli.main(["webvid", "--input", str(inputs["webvid_local"][0]), "--media-root", str(inputs["webvid_media"]),
                     "--rows-per-unit", "4", "--fetch-workers", "2", "--out", str(tmp_path / "local")]) == 0
    _same_corpus(webvid_remote, tmp_path / "local")
    assert {r["status"] for r in _rows(tmp_path / "local", "status")} == {"ok", "missing_file", "decode_error"}
    meta = json.loads(_rows(tmp_path / "local")[0]["meta"])
    assert meta["url"].startswith("videos/") and meta["bytes"] > 0
    saved = json.loads((tmp_path / "local" / "_config.json").read_text())
    assert saved["media"]["media_root"] == [os.path.realpath(inputs["webvid_media"])]


def test_a_recipe_stage_reads_the_local_copy(webvid_site, webvid_remote, tmp_path, ray_session):
    """media_root in a recipe, from the site's webvid_media: planned, checked and run as the CLI's."""
    _, inputs = webvid_site
    path = tmp_path / "local.yaml"
    path.write_text("stages:\n  webvid_local:\n    command: webvid\n    input: ${site.webvid_local}\n"
                    "    media_root: ${site.webvid_media}\n    rows_per_unit: 4\n    fetch_workers: 2\n")
    site = {name: [str(p) for p in where] if isinstance(where, list) else str(where) for name, where in inputs.items()}
    [stage] = stage_plan.plan(recipes.load(path), tmp_path / "run", site)
    assert stage.argv[stage.argv.index("--media-root") + 1] == str(inputs["webvid_media"])
    assert stage.run() == 0
    _same_corpus(webvid_remote, stage.out)


def test_webvid_file_urls_give_the_servers_samples(tmp_path, ray_session):
    config = WEBVID_CONFIG
    (tmp_path / "site").mkdir()
    with serve(tmp_path / "site") as base:
        published = site_webvid.publish_webvid(tmp_path / "site", base, [
            site_webvid.SiteClip(f"{i}", fault=f) for i, f in enumerate([None, None, "missing", "not_video"])])
        copy = site_webvid.publish_local_copy(tmp_path / "copy", published, file_urls=True)
        webvid.make_webvid([published[0].path], config, LOOPBACK, OutputOptions(tmp_path / "remote"), ray_session)
    assert all(p.record["contentUrl"].startswith("file:///") for p in copy)
    webvid.make_webvid([copy[0].path], config, GUARDED, OutputOptions(tmp_path / "local"), ray_session,
                       media=LocalMedia((tmp_path / "copy",)))
    _same_corpus(tmp_path / "remote", tmp_path / "local")


def test_a_run_without_the_right_root_is_finished_by_retry_failed(tmp_path, ray_session):
    """Rows that found no root (local_file_refused) or no file (missing_file) are retryable:
    rerun with the right --media-root and --retry-failed, they become samples. The root is
    not part of a unit's identity, so nothing else is redone."""
    clips = [site_webvid.SiteClip(f"{i}", duration=2.0, fps=5, size=64) for i in range(3)]
    published = site_webvid.publish_webvid(tmp_path / "site", "http://127.0.0.1:9", clips)
    copy = site_webvid.publish_local_copy(tmp_path / "site", published)
    (tmp_path / "empty").mkdir()
    config, out = replace(WEBVID_CONFIG, frames=2, min_duration=0.5, rows_per_unit=2), OutputOptions(tmp_path / "out")
    for local, retry, expected in ((LocalMedia(), False, {"local_file_refused"}),
                                   (LocalMedia((tmp_path / "empty",)), True, {"missing_file"}),
                                   (LocalMedia((tmp_path / "site" / site_webvid.LOCAL_FOLDER,)), True, {"ok"})):
        webvid.make_webvid([copy[0].path], config, GUARDED, out, ray_session, retry_failed=retry, media=local)
        assert {r["status"] for r in _rows(out.out, "status")} == expected
    assert len(_samples(out.out)) == 3


# ---- the same samples: LAION ----------------------------------------------------------------------

PAIRS = [SitePair(0), SitePair(1), SitePair(2, "404"), SitePair(3, "truncated"), SitePair(4, "gif"),
         SitePair(5, "png"), SitePair(6, "tiny"), SitePair(7, "refused"), SitePair(8, "null_url"),
         SitePair(9, "html"), SitePair(10)]
FAST = laion.DownloadOptions(thread_count=4, timeout=5)
RESIZED = laion.LaionConfig(rows_per_unit=6, download=FAST,
                            image=laion.ImageOptions(resize_mode="keep_ratio", image_size=64, min_image_size=32))
KEPT = laion.LaionConfig(rows_per_unit=6, download=FAST, image=laion.ImageOptions(min_image_size=32))


def _local_parquet(source: Path, base: str, folder: Path, file_urls: bool) -> Path:
    """The parquet again, its URLs on the server rewritten to paths relative to the site's laion/
    folder (or file:// URLs); others (a refused port, ftp) stay as they are."""
    table = pq.read_table(source)
    prefix = f"{base}/laion/"
    site = source.parent.resolve()

    def local(url):
        if url is None or not url.startswith(prefix):
            return url
        return (site / url[len(prefix):]).as_uri() if file_urls else url[len(prefix):]

    urls = [local(u) for u in table["URL"].to_pylist()]
    folder.mkdir()
    path = folder / source.name   # the same stem: positional keys stay the same
    pq.write_table(table.set_column(table.schema.get_field_index("URL"), "URL", pa.array(urls, pa.string())), path)
    return path


@pytest.mark.parametrize("config, file_urls", [(RESIZED, False), (KEPT, True)],
                         ids=["relative-paths-resized", "file-urls-kept"])
def test_laion_local_rows_give_the_servers_samples(config, file_urls, tmp_path, ray_session):
    """Local rows skip img2dataset's fetch, not its Resizer: resized or kept, the samples match."""
    (tmp_path / "site").mkdir()
    with serve(tmp_path / "site") as base:
        files = publish_laion(tmp_path / "site", base, PAIRS)
        laion.make_laion([files.laion], config, LOOPBACK, OutputOptions(tmp_path / "remote"), ray_session)
        local = _local_parquet(files.laion, base, tmp_path / "local-input", file_urls)
        laion.make_laion([local], config, LOOPBACK, OutputOptions(tmp_path / "local"), ray_session,
                         media=LocalMedia((tmp_path / "site" / "laion",)))
    _same_corpus(tmp_path / "remote", tmp_path / "local")
    status = {r["key"]: r for r in _rows(tmp_path / "local", "status")}
    refused = status[f"laion:{PAIRS[7].hash}"]   # a remote row in the same file: still fetched
    assert refused["status"] == "connection_error"
    assert status[f"laion:{PAIRS[2].hash}"]["attempts"] == 1
    if config is RESIZED:
        sizes = {(json.loads(r["meta"])["width"], json.loads(r["meta"])["height"]) for r in _rows(tmp_path / "local")}
        assert min(min(s) for s in sizes) == 64   # img2dataset's keep_ratio: the short side to 64


def test_laion_local_rows_keep_the_hash_check(jail, tmp_path):
    """--verify-hash applies to a local file's bytes as to a download's (img2dataset's check)."""
    root, _ = jail
    digest = hashlib.sha256((root / "img" / "ok.jpg").read_bytes()).hexdigest()
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"URL": ["img/ok.jpg", (root / "img" / "ok.jpg").as_uri()],
                             "TEXT": ["right hash", "wrong hash"], "sha256": [digest, "0" * 64]}), parquet)
    config = replace(KEPT, verify_hash=("sha256", "sha256"))
    [unit] = laion.units([parquet], config, GUARDED, LocalMedia((root,)))
    _, status = _run_unit(laion.process, unit.payload, tmp_path / "out")
    assert [(r["status"], r["attempts"]) for r in status] == [("ok", 1), ("hash_mismatch", 1)]


# ---- the same samples: MMC4 -----------------------------------------------------------------------

DOCS = [SiteDocument("m1", n_images=2), SiteDocument("m2", n_images=3),
        SiteDocument("m3", n_images=3, fault="missing_image"), SiteDocument("m4", n_images=2, fault="corrupt_image"),
        SiteDocument("m5", n_images=1, fault="gif_image"), SiteDocument("m6", n_images=2, fault="all_missing")]
MMC4_CONFIG = mmc4.Mmc4Config(docs_per_unit=4, fetch_workers=2)
SHARD = "docs_no_face_shard_7"   # publish_mmc4 adds _0: docs_no_face_shard_7_0.jsonl, shard 7


@pytest.fixture(scope="module")
def mmc4_site(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("mmc4-site")
    with serve(root) as base:
        published = publish_mmc4(root, base, DOCS, prefix=SHARD)
        mmc4.make_mmc4([published[0].path], MMC4_CONFIG, LOOPBACK, OutputOptions(root / "remote"), ray_session)
    return root, base, published[0].path


def _mmc4_layout(root: Path, base: str, jsonl: Path, tmp_path: Path, layout: str) -> tuple[Path, LocalMedia]:
    """(the jsonl to read, the local media) for one way of holding MMC4's images on disk."""
    images = root / "mmc4" / "img"
    if layout == "raw-url-paths":   # raw_url rewritten to paths under --media-root
        docs = [json.loads(line) for line in jsonl.read_text().splitlines()]
        for doc in docs:
            for info in doc.get("image_info", []):
                info["raw_url"] = info["raw_url"].replace(f"{base}/mmc4/", "")
        (tmp_path / "docs").mkdir()
        local = tmp_path / "docs" / jsonl.name
        local.write_text("".join(json.dumps(d) + "\n" for d in docs))
        return local, LocalMedia((root / "mmc4",))
    folder = {"download-images": f"{jsonl.stem}_images", "openflamingo": "7", "flat": ""}[layout]
    shutil.copytree(images, tmp_path / "images" / folder)
    return jsonl, LocalMedia(image_root=tmp_path / "images")


@pytest.mark.parametrize("layout", ["download-images", "openflamingo", "flat", "raw-url-paths"])
def test_mmc4_images_on_disk_give_the_servers_samples(mmc4_site, layout, tmp_path, ray_session):
    """--image-root as MMC4's download_images.py, OpenFlamingo or one folder hold them, or
    raw_url as paths under --media-root. GUARDED: a fetch from 127.0.0.1 would be refused."""
    root, base, jsonl = mmc4_site
    docs, local = _mmc4_layout(root, base, jsonl, tmp_path, layout)
    mmc4.make_mmc4([docs], MMC4_CONFIG, GUARDED, OutputOptions(tmp_path / "local"), ray_session, media=local)
    _same_corpus(root / "remote", tmp_path / "local")
    dropped = {r["key"]: [d["reason"] for d in json.loads(r["meta"])["dropped_images"]]
               for r in _rows(tmp_path / "local")}
    assert sorted(sum(dropped.values(), [])) == ["decode_error", "missing_file"]


# ---- options ------------------------------------------------------------------------------------

def test_media_options_are_defined_once_and_checked(tmp_path):
    names = {s: options.names(registry.source(s).extras) for s in ("webvid", "laion", "mmc4")}
    assert all("media_root" in n for n in names.values())
    assert "image_root" in names["mmc4"] and "image_root" not in names["webvid"] + names["laion"]
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "nowhere", tmp_path / "file"):
        with pytest.raises(errors.UsageError, match="not a directory"):
            LocalMedia((bad,))
        with pytest.raises(errors.UsageError, match="--image-root .* not a directory"):
            LocalMedia(image_root=bad)
    link = tmp_path / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    assert LocalMedia((link,)).media_root == (os.path.realpath(tmp_path),)   # roots are stored resolved


def test_a_media_root_that_is_no_folder_is_a_usage_error(tmp_path, capsys):
    table = tmp_path / "rows.csv"
    table.write_text("videoid,name,duration,contentUrl\n1,a,PT5S,videos/1.mp4\n")
    code = cli.main(["webvid", "--input", str(table), "--media-root", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "--media-root" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---- confinement: refused, and never opened ------------------------------------------------------

@pytest.fixture
def jail(tmp_path):
    """root/ (the media root) holding a clip, an image, a symlink out and a FIFO; outside/ holding
    a clip and an image that would make good samples, and a FIFO that would block a reader."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "clips", root / "img", outside):
        folder.mkdir(parents=True)
    site_webvid.encode_clip(root / "clips" / "ok.mp4", world.random_clip(random.Random(1), 2.0), 5, 64)
    shutil.copyfile(root / "clips" / "ok.mp4", outside / "secret.mp4")
    jpeg = world.encode(world.render(world.random_scene(random.Random(2)), 64, 48))
    (root / "img" / "ok.jpg").write_bytes(jpeg)
    (outside / "secret.jpg").write_bytes(jpeg)
    os.mkfifo(outside / "pipe")
    os.mkfifo(root / "fifo")
    (root / "out.mp4").symlink_to(outside / "secret.mp4")
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    return root, outside


def _refs(root: Path, outside: Path, ext: str) -> dict[str, str]:
    """reference -> the reason it must end with, under --media-root root."""
    secret = outside / f"secret.{ext}"
    ok = "clips/ok.mp4" if ext == "mp4" else "img/ok.jpg"
    return {
        ok: "ok",
        f"../outside/secret.{ext}": "outside_media_root",
        str(secret): "outside_media_root",
        secret.as_uri(): "outside_media_root",
        f"out.{ext}": "outside_media_root",   # a symlink in the root, to outside
        "../outside/pipe": "outside_media_root",
        str(outside / "pipe"): "outside_media_root",
        "fifo": "not_a_file",
        "clips": "not_a_file",
        "file:///etc/passwd": "outside_media_root",
        f"{root.as_uri()}/%2e%2e/outside/secret.{ext}": "outside_media_root",
        f"%2e%2e/outside/secret.{ext}": "missing_file",   # a path is not percent-decoded
        "file://example.com/etc/passwd": "invalid_url",
        f"{secret.as_uri()}?x=1": "invalid_url",
        "nothing.here": "missing_file",
    }


def _run_unit(process, payload, out: Path) -> tuple[list[dict], list[dict]]:
    writer = UnitWriter(out, "unit", ShardLimits())
    process(payload, writer)
    part = writer.commit("test", "test")
    read = lambda kind: [r for s in part[kind] for r in read_shard(out / s["path"]).to_pylist()]  # noqa: E731
    return read("shards"), read("status_shards")


def _webvid_reasons(refs: list[str], tmp_path: Path, local: LocalMedia) -> dict[str, str]:
    table = tmp_path / "rows.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("videoid", "name", "duration", "contentUrl"),
                                 *((i, f"clip {i}", "PT2S", ref) for i, ref in enumerate(refs))])
    [unit] = webvid.units([table], webvid.WebvidConfig(frames=2, min_duration=0.5, fetch_workers=3,
                                                     rows_per_unit=100), GUARDED, local)
    _, status = _run_unit(webvid.process, unit.payload, tmp_path / "out")
    return {r["input"]: r["status"] for r in status}


def _laion_reasons(refs: list[str], tmp_path: Path, local: LocalMedia) -> dict[str, str]:
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"URL": refs, "TEXT": [f"caption {i}" for i in range(len(refs))]}), parquet)
    [unit] = laion.units([parquet], replace(KEPT, rows_per_unit=100), GUARDED, local)
    _, status = _run_unit(laion.process, unit.payload, tmp_path / "out")
    return {r["input"]: r["status"] for r in status}


def _mmc4_reasons(refs: list[str], tmp_path: Path, local: LocalMedia) -> dict[str, str]:
    """One document per reference (its only image); a dropped image's reason read from meta."""
    docs = [{"url": f"https://doc.example/{i}", "text_list": ["One.", "Two."],
             "image_info": [{"raw_url": ref, "matched_text_index": 0, "matched_sim": 0.9}],
             "similarity_matrix": [[0.5, 0.4]]} for i, ref in enumerate(refs)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    [unit] = mmc4.units([jsonl], replace(MMC4_CONFIG, docs_per_unit=100), GUARDED, media=local)
    _, status = _run_unit(mmc4.process, unit.payload, tmp_path / "out")
    by_url = {r["input"]: _image_reason(r) for r in status}
    return {ref: by_url[doc["url"]] for ref, doc in zip(refs, docs)}


def _image_reason(status: dict) -> str:
    """ok, or why a one-image document's image was dropped ("no image left of 1: REASON 1")."""
    return status["status"] if status["status"] == "ok" else status["error"].split(": ", 1)[1].split()[0]


READERS = {"webvid": (_webvid_reasons, "mp4"), "laion": (_laion_reasons, "jpg"), "mmc4": (_mmc4_reasons, "jpg")}


@pytest.mark.parametrize("source", list(READERS))
def test_references_outside_the_roots_are_refused_and_never_opened(source, jail, tmp_path):
    root, outside = jail
    reasons_of, ext = READERS[source]
    expected = _refs(root, outside, ext)
    with watching(outside, "/etc/passwd", root / "fifo") as opened:
        got = reasons_of(list(expected), tmp_path, LocalMedia((root,)))
    assert opened == []
    assert got == expected


@pytest.mark.parametrize("source", list(READERS))
def test_without_a_media_root_nothing_local_is_read(source, jail, tmp_path):
    root, outside = jail
    reasons_of, ext = READERS[source]
    refs = [(outside / f"secret.{ext}").as_uri(), "file:///etc/passwd", str(outside / f"secret.{ext}"),
            f"../outside/secret.{ext}", "clips/ok.mp4"]
    with watching(outside, root, "/etc/passwd") as opened:
        got = reasons_of(refs, tmp_path, LocalMedia())
    assert opened == []
    assert set(got.values()) == {"local_file_refused"}


def test_mmc4_image_names_stay_inside_the_image_root(jail, tmp_path):
    root, outside = jail
    names = {"img/ok.jpg": "ok", "../outside/secret.jpg": "outside_media_root", "/etc/passwd": "outside_media_root",
             "out.jpg": "outside_media_root", "fifo": "not_a_file", "nothing.jpg": "missing_file"}
    docs = [{"url": f"https://doc.example/{i}", "text_list": ["One."],
             "image_info": [{"image_name": name, "raw_url": "http://127.0.0.1:1/never-fetched.jpg",
                             "matched_text_index": 0, "matched_sim": 0.9}],
             "similarity_matrix": [[0.5]]} for i, name in enumerate(names)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    [unit] = mmc4.units([tmp_path / "docs.jsonl"], replace(MMC4_CONFIG, docs_per_unit=100), GUARDED,
                        media=LocalMedia(image_root=root))
    with watching(outside, "/etc/passwd", root / "fifo") as opened:
        _, status = _run_unit(mmc4.process, unit.payload, tmp_path / "out")
    assert opened == []
    assert [_image_reason(r) for r in status] == list(names.values())


# ---- the confined reader, fuzzed --------------------------------------------------------------------

REASONS = {"local_file_refused", "invalid_url", "outside_media_root", "missing_file", "not_a_file",
           "too_large", "read_error"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A media root with every kind of entry, and an outside with what must never be read."""
    base = tmp_path_factory.mktemp("tree")
    root, outside = base / "root", base / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    outside.mkdir()
    (root / "a.jpg").write_bytes(b"inside a")
    (root / "sub" / "b.jpg").write_bytes(b"inside b")
    (root / "big.bin").write_bytes(bytes(2048))
    os.mkfifo(root / "fifo")
    os.mkfifo(outside / "fifo")
    (outside / "secret").write_bytes(b"SECRET")
    links = {"in": root / "a.jpg", "up": root / "sub", "out": outside / "secret", "outdir": outside,
             "dangling": root / "none", "zero": Path("/dev/zero"), "etc": Path("/etc")}
    for name, target in links.items():
        (root / name).symlink_to(target)
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    os.close(os.open(os.fsencode(root) + b"/\xff\xfe.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    return root, outside


PIECES = ["..", ".", "", "a.jpg", "sub", "b.jpg", "deeper", "fifo", "big.bin", "in", "up", "out", "outdir",
          "dangling", "zero", "etc", "passwd", "loop1", "secret", "outside", "%2e%2e", "%2F", "%00", "%ff%fe.jpg",
          "\\..", "..\\..", "\x00", "n" * 300, "?x", "#f", " ", "\udcff", "\ud800", "é"]
PREFIXES = ["", "/", "./", "file://", "file:///", "file://localhost/", "file://evil.example/", "file:", "FILE:///",
            "file:/", "//", "~/"]


@st.composite
def hostile_paths(draw, root: str) -> str:
    parts = draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6))
    sep = draw(st.sampled_from(["/", "//", "\\"]))
    prefix = draw(st.sampled_from(PREFIXES + [root + "/", "file://" + root + "/"]))
    return prefix + sep.join(parts)


def _inside(path: str, root: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


def _check_one(ref: str, root: Path, outside: Path) -> None:
    """A body that is a file of the root's, or a FetchError with a reason; and no open outside."""
    with watching(outside, "/etc", "/dev", root / "fifo") as opened:
        try:
            body = media.read_local(ref, (os.path.realpath(root),), 1024).body
        except net.FetchError as e:
            assert e.reason in REASONS and e.message, (ref, e)
            json.dumps(e.message).encode("utf-8")   # storable in a status row
        else:
            assert body in (b"inside a", b"inside b", b""), (ref, body)
    assert opened == [], ref


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_paths_end_as_a_body_or_a_reason(tree, data):
    root, outside = tree
    _check_one(data.draw(hostile_paths(str(root))), root, outside)


@pytest.mark.parametrize("ref, reason", [
    ("a.jpg", None), ("sub/b.jpg", None), ("in", None), ("up/b.jpg", None), ("sub/deeper/../b.jpg", None),
    ("%ff%fe.jpg", "missing_file"), ("file:///ROOT/%ff%fe.jpg", None),   # non-UTF-8 name, by URL
    ("file://localhost/ROOT/a.jpg", None), ("/ROOT/sub/b.jpg", None),
    ("../outside/secret", "outside_media_root"), ("out", "outside_media_root"), ("outdir/secret", "outside_media_root"),
    ("etc/passwd", "outside_media_root"), ("/etc/passwd", "outside_media_root"), ("zero", "outside_media_root"),
    ("file:///ROOT/%2e%2e/outside/secret", "outside_media_root"), ("file:///ROOT/../outside/fifo", "outside_media_root"),
    ("fifo", "not_a_file"), ("sub", "not_a_file"), (".", "not_a_file"), ("loop1", "not_a_file"),
    ("dangling", "missing_file"), ("none", "missing_file"), ("a.jpg/x", "missing_file"),
    ("big.bin", "too_large"), ("n" * 5000, "read_error"), ("sub/" + "n" * 300, "read_error"),
    ("a\x00.jpg", "invalid_url"), ("file:///ROOT/a%00.jpg", "invalid_url"), ("file:a.jpg", "invalid_url"),
    ("file://evil.example/ROOT/a.jpg", "invalid_url"), ("file:///ROOT/a.jpg#x", "invalid_url"),
    ("file:///ROOT/a.jpg?", "invalid_url"), ("\ud800.jpg", "invalid_url"), ("file://[/x", "invalid_url"),
])
def test_each_kind_of_path_has_its_reason(tree, ref, reason):
    root, outside = tree
    ref = ref.replace("/ROOT", str(root))
    with watching(outside, "/etc", "/dev", root / "fifo") as opened:
        try:
            body = media.read_local(ref, (os.path.realpath(root),), 1024).body
            got = None
        except net.FetchError as e:
            body, got = None, e.reason
    assert (got, opened) == (reason, [])
    assert reason is not None or body in (b"inside a", b"inside b", b"")


def test_devices_under_a_root_are_not_files():
    """A root that holds devices (someone gave --media-root /dev): refused, never read."""
    for ref in ("zero", "/dev/zero", "null", "urandom", "stdin", "fd/0"):
        with pytest.raises(net.FetchError) as e:
            media.read_local(ref, (os.path.realpath("/dev"),), 1024)
        assert e.value.reason in REASONS - {"too_large"}, (ref, e.value)


@pytest.mark.parametrize("swap, reason", [("other_file", "read_error"), ("hard_link", "outside_media_root")])
def test_a_directory_swapped_for_a_symlink_after_the_checks_reads_nothing(tmp_path, monkeypatch, swap, reason):
    """The race the checks before the open cannot see: the folder above the file becomes a
    symlink out of the root between the lstat and the open. The open descriptor's identity
    (another file) or its real path (the same inode, reached from outside) gives it away."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    outside.mkdir()
    (root / "dir" / "clip.jpg").write_bytes(b"inside")
    if swap == "hard_link":
        os.link(root / "dir" / "clip.jpg", outside / "clip.jpg")
    else:
        (outside / "clip.jpg").write_bytes(b"SECRET")
    real_open = os.open

    def swapping_open(path, flags, *args, **kwargs):
        if path == os.path.realpath(root / "dir" / "clip.jpg") and not (root / "dir").is_symlink():
            (root / "dir").rename(root / "dir.old")
            (root / "dir").symlink_to(outside, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(net.FetchError) as e:
        media.read_local("dir/clip.jpg", (os.path.realpath(root),), 1024)
    assert e.value.reason == reason


def test_a_file_growing_past_the_cap_is_too_large(tmp_path, monkeypatch):
    """The lstat said it fits; what is read is cut at the cap all the same."""
    (tmp_path / "f").write_bytes(b"x" * 100)
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: os.stat_result(
        (*real_lstat(p)[:6], 10, *real_lstat(p)[7:])) if str(p).endswith("/f") else real_lstat(p, *a, **k))
    with pytest.raises(net.FetchError) as e:
        media.read_local("f", (os.path.realpath(tmp_path),), 50)
    assert e.value.reason == "too_large"
