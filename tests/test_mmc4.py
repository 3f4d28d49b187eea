"""`emu-data mmc4` end to end: MMC4 jsonl whose images live on a local server.

A mixed batch (clean documents, a 404 image, a corrupt image, a GIF, an image below min_sim,
more images than max_images, a document MMC4's own assignment placed badly, an image with an
out-of-range matched_text_index, and lines with a missing key, no images, broken JSON, no
url) becomes a valid corpus plus a status table with exactly one row per document.
"""

import io
import json
import random

import pytest
from PIL import Image

from emu_data import net
from emu_data.net.media import Media
from emu_data.synthetic import world
from emu_data.core.corpus import shard_paths
from emu_data.synthetic.site import serve
from emu_data.synthetic.site.mmc4 import SiteDocument as D
from emu_data.synthetic.site.mmc4 import publish_mmc4
from emu_data.core.shards import read_shard
from emu_data.sources import mmc4
from emu_data.engine.stage import OutputOptions
from emu_data.inspect.validate import validate

BATCH = [
    D("clean1", n_images=1), D("clean2", n_images=3),
    D("missing", n_images=3, fault="missing_image"),
    D("allmissing", n_images=2, fault="all_missing"),
    D("lowsim", n_images=2, fault="low_sim"),
    D("corrupt", n_images=2, fault="corrupt_image"),
    D("gif", n_images=1, fault="gif_image"),
    D("many", n_images=8),
    D("badindex", fault="bad_index"),
    D("nokey", fault="missing_key"),
    D("noimages", fault="no_images"),
    D("broken", fault="malformed_json"),
    D("nourl", fault="no_url"),
    D("reassign", n_images=2, fault="reassign"),
]
EXPECTED = {
    "clean1": "ok", "clean2": "ok", "missing": "ok", "lowsim": "ok", "corrupt": "ok", "gif": "ok",
    "many": "ok", "nourl": "ok", "reassign": "ok", "badindex": "ok", "allmissing": "no_images",
    "nokey": "missing_field", "noimages": "no_images",
    "broken": "malformed_json",
}
NET = net.NetPolicy(retries=0, per_host_rate=0, allow_private_addresses=True)
CONFIG = mmc4.Mmc4Config(docs_per_unit=4, fetch_workers=4)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    with serve(root) as base:
        published = publish_mmc4(root, base, BATCH, shards=2)
        yield root, published


def _run(site, out, ray, config=CONFIG):
    root, _ = site
    return mmc4.make_mmc4([root / "mmc4"], config, NET, OutputOptions(out, shard_rows=5), ray)


@pytest.fixture(scope="module")
def corpus(site, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("mmc4") / "corpus"
    _run(site, out, ray_session)
    return out


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _published(site, name):
    return next(p for p in site[1] if p.doc.name == name)


def _status(site, corpus):
    """Status rows by published document name, matched through the row's input: the url, or
    file:line where there is none or the line is no usable document."""
    names = {ref: p.doc.name for p in site[1]
             for ref in (f"{p.path.resolve()}:{p.line}", p.record and p.record.get("url")) if ref}
    return {names[r["input"]]: r for r in _rows(corpus, "status")}


def _samples(site, corpus):
    keys = {s["key"]: name for name, s in _status(site, corpus).items()}
    return {keys[r["key"]]: r for r in _rows(corpus)}


def test_every_line_is_accounted_for_once_with_its_reason(site, corpus):
    rows = _rows(corpus, "status")
    assert len(rows) == len(BATCH) == len({r["key"] for r in rows})
    status = _status(site, corpus)
    assert {name: r["status"] for name, r in status.items()} == EXPECTED
    assert all(r["error"] for r in status.values() if r["status"] != "ok")
    nourl = _published(site, "nourl")
    assert status["nourl"]["key"] == f"mmc4:{nourl.path.stem}-{nourl.line}"  # no url: stem + line
    assert status["clean1"]["key"] == "mmc4:" + mmc4.document_id(BATCH[0].url)
    assert len(_rows(corpus)) == sum(v == "ok" for v in EXPECTED.values())


def test_the_corpus_validates(corpus):
    report = validate([corpus], deep=True)
    assert report.ok, [str(v) for v in report.violations]


def test_failed_images_are_recorded_and_the_document_keeps_the_rest(site, corpus):
    samples, status = _samples(site, corpus), _status(site, corpus)
    for name, reason, kept in (("missing", "http_404", 2), ("corrupt", "decode_error", 1),
                               ("lowsim", "below_min_sim", 1), ("badindex", "bad_match_index", 1)):
        meta = json.loads(samples[name]["meta"])
        assert [(d["index"], d["reason"]) for d in meta["dropped_images"]] == [(0, reason)]
        assert meta["dropped_images"][0]["url"].endswith(f"/mmc4/img/{name}-0.jpg")
        assert sum(i is not None for i in samples[name]["images"]) == len(meta["images"]) == kept
        assert f"{reason} 1" in status[name]["error"]
    assert "http_404 2" in status["allmissing"]["error"]
    assert status["clean2"]["error"] is None


def test_at_most_max_images_the_most_similar(site, corpus):
    record = _published(site, "many").record
    sims = sorted((info["matched_sim"], i) for i, info in enumerate(record["image_info"]))
    meta = json.loads(_samples(site, corpus)["many"]["meta"])
    assert sorted(i["index"] for i in meta["images"]) == sorted(i for _, i in sims[-6:])
    assert sorted(d["index"] for d in meta["dropped_images"]) == sorted(i for _, i in sims[:2])
    assert {d["reason"] for d in meta["dropped_images"]} == {"over_max_images"}


def test_images_sit_before_their_sentence_and_text_is_whole(site, corpus):
    samples = _samples(site, corpus)
    for p in site[1]:
        if p.doc.name not in samples:
            continue
        row, sentences = samples[p.doc.name], p.record["text_list"]
        assert " ".join(t for t in row["texts"] if t) == " ".join(sentences)
        images = sorted(json.loads(row["meta"])["images"],
                        key=lambda i: (i["matched_text_index"], i["index"]))
        positions = [k for k, image in enumerate(row["images"]) if image is not None]
        assert len(positions) == len(images)
        for k, image in zip(positions, images):  # the next text opens with the image's sentence
            after = next(t for t in row["texts"][k:] if t is not None)
            assert after.startswith(sentences[image["matched_text_index"]])
            if p.doc.name != "reassign":  # MMC4's placement already one image per sentence
                assert image["matched_text_index"] == image["original_matched_text_index"]


def test_gif_is_stored_as_jpeg(site, corpus):
    image = next(i for i in _samples(site, corpus)["gif"]["images"] if i)
    assert Image.open(io.BytesIO(image["bytes"])).format == "JPEG"


def test_reassignment_moves_an_image_to_its_caption(site, corpus, tmp_path, ray_session):
    record = _published(site, "reassign").record
    caption = record["image_info"][0]["matched_text_index"]  # where MMC4 put the 404 image
    with_reassign = json.loads(_samples(site, corpus)["reassign"]["meta"])["images"]
    assert [(i["index"], i["original_matched_text_index"], i["matched_text_index"])
            for i in with_reassign] == [(1, 0, caption)]
    out = tmp_path / "plain"
    _run(site, out, ray_session, mmc4.Mmc4Config(docs_per_unit=4, fetch_workers=4, reassign=False))
    row = _samples(site, out)["reassign"]
    assert row["images"][0] is not None  # before the opening sentence, as MMC4 said
    assert json.loads(row["meta"])["images"][0]["matched_text_index"] == 0
    row = _samples(site, corpus)["reassign"]
    assert row["images"][0] is None and row["texts"][0]  # moved past the opening text


def test_rerun_skips(site, corpus, ray_session):
    result = _run(site, corpus, ray_session)
    assert result.reused and result.ran_units == 0
    faster = mmc4.Mmc4Config(docs_per_unit=4, fetch_workers=9)  # speed only: not a new layout
    assert _run(site, corpus, ray_session, faster).reused


def test_units_are_line_ranges_that_cover_each_file_once(site):
    root, published = site
    planned = mmc4.units([root / "mmc4"], mmc4.Mmc4Config(docs_per_unit=3))
    lines = [(u.payload.slice.path, n) for u in planned for n, _ in mmc4.read_lines(u.payload.slice)]
    assert lines == [(str(p.path.resolve()), p.line) for p in published]
    assert [u.id for u in planned][:2] == ["mmc4-docs_0-00000", "mmc4-docs_0-00001"]


def test_image_checks(tmp_path):
    body = world.encode(world.render(world.random_scene(random.Random(0))))
    assert mmc4.checked_image(body, 10**6) == body
    with pytest.raises(mmc4.ImageDropped, match="exceeds max_image_pixels"):
        mmc4.checked_image(body, 100)  # the bomb guard reads the size before decoding
    with pytest.raises(mmc4.ImageDropped) as e:
        mmc4.checked_image(b"<html>not an image</html>", 10**6)
    assert e.value.reason == "decode_error"
    small = mmc4.Mmc4Config(min_image_bytes=len(body))
    with serve(tmp_path) as base, Media(NET) as media:
        (tmp_path / "a.jpg").write_bytes(body)
        with pytest.raises(mmc4.ImageDropped) as e:
            mmc4.fetch_image(f"{base}/a.jpg", small, media)
    assert e.value.reason == "too_small"


def test_an_image_with_a_bad_match_index_is_dropped_not_its_document(tmp_path):
    """An image_info entry whose matched_text_index names no sentence (negative, past the end,
    not an integer) is dropped and recorded as a failed download is; the document keeps the
    rest, and one left with no image is no_images."""
    (tmp_path / "a.jpg").write_bytes(world.encode(world.render(world.random_scene(random.Random(0)))))
    url = "https://doc.example/bad-index"
    where = mmc4.Slice(str(tmp_path / "docs.jsonl"), "docs", 0, 0, 1, 1, "")
    with serve(tmp_path) as base, Media(NET) as media:
        def outcome(indices, config):
            raw = json.dumps({"url": url, "text_list": ["One.", "Two."],
                              "image_info": [{"raw_url": f"{base}/a.jpg", "matched_text_index": i,
                                              "matched_sim": 0.9} for i in indices],
                              "similarity_matrix": [[0.5, 0.4] for _ in indices]}).encode()
            doc = mmc4._with_id(mmc4.parse(raw, 1, where, config), where)
            return mmc4._outcome(doc, config=config, media=media)

        for config in (CONFIG, mmc4.Mmc4Config(reassign=False)):
            row, status = outcome([-1, 1, 2, "0", 1.0, True], config)
            assert (status["key"], status["status"]) == ("mmc4:" + mmc4.document_id(url), "ok")
            assert status["error"] == "5 of 6 image(s) dropped: bad_match_index 5"
            meta = json.loads(row["meta"])
            assert meta["dropped_images"] == [{"index": i, "url": f"{base}/a.jpg", "reason": "bad_match_index"}
                                              for i in (0, 2, 3, 4, 5)]
            assert [(i["index"], i["original_matched_text_index"]) for i in meta["images"]] == [(1, 1)]
            assert sum(i is not None for i in row["images"]) == 1
            row, status = outcome([2], config)
            assert row is None and status["status"] == "no_images"
            assert status["error"] == "no image left of 1: bad_match_index 1"
