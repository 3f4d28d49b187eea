"""`emu-data laion` end to end: img2dataset's real download path against a local server.

One LAION file and one LAION-COCO file, each with every planted fault (404, HTML body,
truncated JPEG, redirect, refused connection, a 503, ftp URL, null URL, null / blank /
non-UTF-8 / very long caption, low similarity, unsafe, watermarked, repeated hash), become
valid corpora whose status tables account for every input row exactly once (the second row
with a hash is a duplicate_key row: LAION's hash names the pair).
"""

import http.server
import json
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from emu_data import net
from emu_data.synthetic import site as sample_site, world
from emu_data.core.corpus import shard_paths
from emu_data.synthetic.site.laion import SitePair, image_bytes, publish_laion
from emu_data.core.shards import read_shard
from emu_data.sources import laion
from emu_data.engine.stage import OutputOptions
from emu_data.inspect.validate import validate

P = SitePair
BATCH = [P(0), P(1), P(2, "404"), P(3, "html"), P(4, "truncated"), P(5, "redirect"), P(6, "refused"),
         P(7, "bad_scheme"), P(8, "null_url"), P(9, "null_caption"), P(10, "blank_caption"),
         P(11, "bad_utf8"), P(12, "long_caption"), P(13, "low_similarity"), P(14, "unsafe"),
         P(15, "watermark"), P(16, "dup_hash"), P(17, "dup_hash"), P(18), P(19), P(20, "gif"), P(21, "png"),
         P(22, "tiny"), P(23)]
SERVED_503 = 19  # the server answers this one with a 503 (img2dataset retries 0 times here)
REPEATED = 17    # the second row with the dup_hash hash: a duplicate_key row, keyed <key>#dup1
EXPECTED = {
    None: "ok", "redirect": "ok", "long_caption": "ok", "dup_hash": "ok", "gif": "ok", "png": "ok",
    "tiny": "too_small",
    "404": "http_404", "html": "decode_error", "truncated": "decode_error", "refused": "connection_error",
    "bad_scheme": "invalid_url", "null_url": "missing_url", "null_caption": "missing_caption",
    "blank_caption": "missing_caption", "bad_utf8": "bad_caption", "low_similarity": "filtered_similarity",
    "unsafe": "filtered_punsafe", "watermark": "filtered_watermark",
}
FAST = laion.DownloadOptions(thread_count=8, timeout=5)
CONFIG = laion.LaionConfig(min_similarity=0.2, max_punsafe=0.5, max_pwatermark=0.8, rows_per_unit=12,
                           image=laion.ImageOptions(min_image_size=32), download=FAST)
LOCAL = net.NetPolicy(allow_private_addresses=True)


def _expected_status(pair: SitePair) -> str:
    return {SERVED_503: "http_503", REPEATED: "duplicate_key"}.get(pair.index) or EXPECTED[pair.fault]


def _key(source: str, pair: SitePair) -> str:
    return f"{source}:{pair.hash}" + ("#dup1" if pair.index == REPEATED else "")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    with sample_site.serve(root, {f"/laion/img/{SERVED_503:06d}.jpg": [503] * 4}) as base:
        # row groups of 8 against units of 12: slices start inside row groups
        yield publish_laion(root, base, BATCH, row_group_size=8)


@pytest.fixture(scope="module")
def corpora(site, tmp_path_factory, ray_session):
    """Both files ingested once."""
    out = tmp_path_factory.mktemp("laion")
    coco = replace(CONFIG, source="laion_coco")
    laion.make_laion([site.laion], CONFIG, LOCAL, OutputOptions(out / "laion", shard_rows=8), ray_session)
    laion.make_laion([site.coco], coco, LOCAL, OutputOptions(out / "coco"), ray_session)
    return {"laion": out / "laion", "laion_coco": out / "coco", "coco_config": coco}


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


@pytest.mark.parametrize("source", ["laion", "laion_coco"])
def test_every_row_is_accounted_for_exactly_once_with_its_reason(corpora, source):
    status = _rows(corpora[source], "status")
    assert len(status) == len(BATCH) == len({r["key"] for r in status})
    got = {r["key"]: r["status"] for r in status}
    assert got == {_key(source, p): _expected_status(p) for p in BATCH}
    assert all(r["error"] for r in status if r["status"] != "ok")
    assert all(r["samples"] == (r["status"] == "ok") for r in status)
    assert "HTTP Error 404" in next(r["error"] for r in status if r["status"] == "http_404")
    samples = _rows(corpora[source])
    assert sorted(r["key"] for r in samples) == sorted(k for k, s in got.items() if s == "ok")


@pytest.mark.parametrize("source", ["laion", "laion_coco"])
def test_the_corpus_validates(corpora, source):
    report = validate([corpora[source]], deep=True)
    assert report.ok, [str(v) for v in report.violations]


def test_samples_are_the_served_image_then_the_caption(corpora):
    by_key = {r["key"]: r for r in _rows(corpora["laion"])}
    for pair in (BATCH[0], BATCH[5], BATCH[21]):  # a plain one, the redirected one, a PNG
        row = by_key[_key("laion", pair)]
        assert row["images"][0]["bytes"] == image_bytes(pair)  # resize_mode "no": the served bytes
        assert row["texts"] == [None, world.alt_text(pair.scene(), pair.rng("alt"))]
        meta = json.loads(row["meta"])
        assert (meta["width"], meta["height"]) == pair.size() == (meta["original_width"], meta["original_height"])
        assert meta["hash"] == pair.hash and meta["url"].endswith(f"/laion/img/{pair.name}" + (
            "" if pair.fault == "redirect" else ".jpg"))
        assert {"similarity", "punsafe", "pwatermark", "sha256"} <= meta.keys()


def test_a_format_the_corpus_does_not_store_is_re_encoded(corpora):
    row = next(r for r in _rows(corpora["laion"]) if r["key"] == _key("laion", BATCH[20]))
    assert row["images"][0]["bytes"][:3] == b"\xff\xd8\xff"  # served as GIF, stored as JPEG
    assert json.loads(row["meta"])["transcoded_from"] == "GIF"


def test_a_very_long_caption_is_kept_and_cut(corpora):
    row = next(r for r in _rows(corpora["laion"]) if r["key"] == _key("laion", BATCH[12]))
    meta = json.loads(row["meta"])
    assert len(row["texts"][1]) == CONFIG.max_caption_chars
    assert meta["caption_truncated"] is True and meta["caption_chars"] == 10_000


def test_laion_coco_takes_top_caption_and_keeps_the_alt_text(corpora):
    row = next(r for r in _rows(corpora["laion_coco"]) if r["key"] == _key("laion_coco", BATCH[1]))
    pair, meta = BATCH[1], json.loads(row["meta"])
    assert row["texts"][1] == world.caption(pair.scene())
    assert meta["alt_text"] == world.alt_text(pair.scene(), pair.rng("alt"))
    assert meta["all_captions"][0] == world.caption(pair.scene()) and len(meta["all_similarities"]) == 3
    assert row["images"][0]["bytes"] == image_bytes(pair)  # the served bytes, untouched


def test_a_rerun_skips(corpora, site, ray_session):
    result = laion.make_laion([site.laion], CONFIG, LOCAL, OutputOptions(corpora["laion"], shard_rows=8),
                              ray_session)
    ok = sum(_expected_status(p) == "ok" for p in BATCH)
    assert result.reused and result.ran_units == 0 and result.manifest["status_counts"]["ok"] == ok == 9


class _Counting(http.server.SimpleHTTPRequestHandler):
    connections = 0

    def handle(self):
        type(self).connections += 1
        super().handle()

    def log_message(self, *args):
        pass


def test_the_guard_blocks_every_local_url_before_img2dataset_asks(tmp_path, ray_session):
    handler = type("Handler", (_Counting,), {"connections": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pairs = [P(i, seed=7) for i in range(5)] + [P(5, "null_url", seed=7)]
        files = publish_laion(tmp_path, f"http://127.0.0.1:{server.server_address[1]}", pairs)
        out = tmp_path / "guarded"
        laion.make_laion([files.laion], laion.LaionConfig(download=FAST), net.NetPolicy(), OutputOptions(out),
                         ray_session)
    finally:
        server.shutdown()
        server.server_close()
    status = sorted(r["status"] for r in _rows(out, "status"))
    assert status == ["blocked_address"] * 5 + ["missing_url"]
    assert handler.connections == 0 and not _rows(out)


def test_units_are_deterministic_slices_and_need_the_threshold_columns(site, tmp_path):
    ids = [u.id for u in laion.units([site.laion], CONFIG)]
    assert ids == ["laion-00000", "laion-00001"]
    # a folder gives its parquet files in name order; the same slices, the same ids
    assert [u.id for u in laion.units([site.laion.parent, site.laion], CONFIG)] == ids + [
        "laion_coco-00000", "laion_coco-00001"]
    assert [(u.payload.start, u.payload.stop) for u in laion.units([site.laion], CONFIG)] == [(0, 12), (12, 24)]
    bare = tmp_path / "bare.parquet"
    pq.write_table(pq.read_table(site.laion).drop_columns(["punsafe"]), bare)
    with pytest.raises(ValueError, match="punsafe"):
        laion.units([bare], CONFIG)


@pytest.mark.parametrize("status,message,reason", [
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 429: Too Many Requests", "http_429"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection_error"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "connection_error"),
    ("failed_to_download", "HTTP Error 302: The HTTP server returned a redirect error that would lead to "
                           "an infinite loop.", "too_many_redirects"),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opted_out"),
    ("failed_to_download", "'ascii' codec can't encode character '\\xe9' in position 12", "invalid_url"),
    ("failed_to_download", "IncompleteRead(100 bytes read, 900 more expected)", "truncated"),
    ("failed_to_download", "something new", "download_error"),
    ("failed_to_resize", "Image decoding error", "decode_error"),
    ("failed_to_resize", "cannot identify image file", "decode_error"),
    ("failed_to_resize", "image too small", "too_small"),
    ("failed_to_resize", "image area too large", "too_large"),
])
def test_img2dataset_messages_map_to_reasons(status, message, reason):
    assert laion.error_reason(status, message) == reason


def test_pillow_is_the_judge_of_stored_bytes():
    options = laion.ImageOptions(min_image_size=32, max_aspect_ratio=3)
    good = image_bytes(P(0))
    assert laion.stored_image(good, options) == laion.StoredImage(good, *P(0).size())
    for bad in (good[:len(good) // 3], b"<html></html>", b""):
        with pytest.raises(laion.BadImage) as caught:
            laion.stored_image(bad, options)
        assert caught.value.reason == "decode_error"
    with pytest.raises(laion.BadImage) as caught:
        laion.stored_image(image_bytes(P(1, "tiny")), options)
    assert caught.value.reason == "too_small"
    assert laion.stored_image(image_bytes(P(1, "tiny")), options, filters=False).width == 12


def test_site_plants_invalid_utf8_in_a_string_column(site):
    column = pq.read_table(site.laion, columns=["TEXT"])["TEXT"]
    assert str(column.type) == "string"
    with pytest.raises(UnicodeDecodeError):
        column.to_pylist()
    assert Path(site.coco).exists()


def test_a_row_img2dataset_never_answers_ends_as_downloader_error(site, tmp_path, monkeypatch):
    """Every row ends somewhere: a row the downloader hands no result for is a retryable
    downloader_error row, not a unit that fails on every rerun (nor a row lost)."""
    from emu_data.core.corpus import UnitWriter
    from emu_data.core.shards import ShardLimits

    real = laion.laion_download.download

    def answers_every_other_row(columns, job, handle, policy):
        real(columns, job, lambda result: result.get(laion.ROW_ID) % 2 and handle(result), policy)

    monkeypatch.setattr(laion.laion_download, "download", answers_every_other_row)
    unit = laion.units([site.laion], CONFIG, LOCAL)[0]
    writer = UnitWriter(tmp_path, "unit", ShardLimits())
    laion.process(unit.payload, writer)
    status = [r for s in writer.commit("f", "d")["status_shards"] for r in read_shard(tmp_path / s["path"]).to_pylist()]
    assert len(status) == unit.payload.stop - unit.payload.start
    unanswered = [r for r in status if r["error"] == "img2dataset returned no result for this row"]
    assert unanswered and {r["status"] for r in unanswered} == {"downloader_error"}
    assert "downloader_error" in laion.RETRYABLE
