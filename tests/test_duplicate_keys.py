"""One key, one item: the same item twice in the input is one sample and one duplicate_key row.

For every source whose key comes from its input (a LAION hash, an MMC4 url, a WebVid
videoid, a YouTube video id), the same item is planted twice within one file (in another
unit, or the same one) and again in a second file. The first occurrence in input order keeps
the key; each later one is one `duplicate_key` status row keyed `<key>#dupN` whose error
names where the first is; nothing else changes, and the corpus passes `emu-data validate`.
"""

import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emu_data import net
from emu_data.synthetic import site as sample_site
from emu_data.core.corpus import shard_paths
from emu_data.synthetic.site.laion import SitePair, publish_laion
from emu_data.synthetic.site.mmc4 import SiteDocument, publish_mmc4
from emu_data.synthetic.site.webvid import SiteClip, publish_webvid
from emu_data.core.shards import read_shard
from emu_data.sources import keys, laion, mmc4, webvid
from emu_data.sources.youtube import inputs, ytdl
from emu_data.sources.youtube import stage as youtube
from emu_data.engine.stage import OutputOptions
from emu_data.inspect.validate import validate

LOCAL = net.NetPolicy(retries=0, per_host_rate=0, allow_private_addresses=True)


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


def _outcome(out) -> tuple[list[str], dict[str, dict]]:
    """(sample keys, status rows by key) of a corpus that must validate."""
    report = validate([out], deep=True)
    assert report.ok, [str(v) for v in report.violations]
    status = _rows(out, "status")
    by_key = {r["key"]: r for r in status}
    assert len(by_key) == len(status)
    return sorted(r["key"] for r in _rows(out)), by_key


def _duplicates(status: dict[str, dict]) -> dict[str, str]:
    """{status key: error} of the duplicate_key rows."""
    return {k: r["error"] for k, r in status.items() if r["status"] == "duplicate_key"}


# ---- the rule, on its own -------------------------------------------------------------------

def test_later_occurrences_are_numbered_repeats_of_the_first():
    index, first, n = keys.repeats_of(np.array([5, 3, 5, 5, 3, 7], dtype=np.uint64))
    assert (index.tolist(), first.tolist(), n.tolist()) == ([2, 3, 4], [0, 0, 1], [1, 2, 1])
    column = pa.chunked_array([pa.array([b"a", None, b"b", b"a"]), pa.array([None, b"b", b"a"])])
    index, first, n = keys.repeats_in_column(column)  # nulls are no keys, chunks one column
    assert (index.tolist(), first.tolist(), n.tolist()) == ([3, 5, 6], [0, 2, 0], [1, 1, 2])
    assert keys.between([(2, 1, "a:1"), (5, 1, "a:3"), (9, 2, "b:1")], 3, 9) == ((5, 1, "a:3"), (9, 2, "b:1"))


# ---- MMC4: a document url -------------------------------------------------------------------

def test_mmc4_a_document_twice_is_one_sample(tmp_path, ray_session):
    a, b, c = SiteDocument("a"), SiteDocument("b"), SiteDocument("c")
    with sample_site.serve(tmp_path / "site") as base:
        # docs_0: a a b | docs_1: c a b; two documents a unit: a twice in one unit, then across files
        publish_mmc4(tmp_path / "site", base, [a, a, b, c, a, b], shards=2)
        config = mmc4.Mmc4Config(docs_per_unit=2, fetch_workers=2)
        files = sorted((tmp_path / "site" / "mmc4").glob("*.jsonl"))
        # planned in parallel Ray tasks (one per file) or here: the same units, the same repeats
        assert mmc4.units(files, config, LOCAL, ray_session) == mmc4.units(files, config, LOCAL)
        mmc4.make_mmc4([tmp_path / "site" / "mmc4"], config, LOCAL, OutputOptions(tmp_path / "out"), ray_session)
    samples, status = _outcome(tmp_path / "out")
    key = {d.name: f"mmc4:{mmc4.document_id(d.url)}" for d in (a, b, c)}
    assert samples == sorted(key.values())
    assert _duplicates(status) == {
        f"{key['a']}#dup1": f"{key['a']} already at docs_0.jsonl:1",
        f"{key['a']}#dup2": f"{key['a']} already at docs_0.jsonl:1",
        f"{key['b']}#dup1": f"{key['b']} already at docs_0.jsonl:3"}
    assert status[f"{key['a']}#dup2"]["input"] == a.url and status[f"{key['a']}#dup2"]["attempts"] == 0
    assert Counter(r["status"] for r in status.values()) == {"ok": 3, "duplicate_key": 3}


# ---- WebVid: a videoid ----------------------------------------------------------------------

def test_webvid_a_video_twice_is_one_sample(tmp_path, ray_session):
    one, two, three = SiteClip("501"), SiteClip("502"), SiteClip("503")
    with sample_site.serve(tmp_path / "site") as base:
        # results_0: 501 501 502 | results_1: 503 501 502; two rows a unit
        publish_webvid(tmp_path / "site", base, [one, one, two, three, one, two], shards=2)
        config = webvid.WebvidConfig(rows_per_unit=2, fetch_workers=2)
        webvid.make_webvid([tmp_path / "site" / "webvid"], config, LOCAL, OutputOptions(tmp_path / "out"),
                           ray_session)
    samples, status = _outcome(tmp_path / "out")
    assert samples == ["webvid:501", "webvid:502", "webvid:503"]
    assert _duplicates(status) == {"webvid:501#dup1": "webvid:501 already at results_0.csv:2",
                                   "webvid:501#dup2": "webvid:501 already at results_0.csv:2",
                                   "webvid:502#dup1": "webvid:502 already at results_0.csv:4"}


# ---- LAION: the pair's hash -----------------------------------------------------------------

def test_laion_a_pair_twice_is_one_sample(tmp_path, ray_session):
    pairs = [SitePair(0), SitePair(1), SitePair(0), SitePair(2), SitePair(3)]
    with sample_site.serve(tmp_path / "site") as base:
        published = pq.read_table(publish_laion(tmp_path / "site", base, pairs).laion)
        folder = tmp_path / "in"
        folder.mkdir()
        pq.write_table(published.take([0, 1, 2, 3]), folder / "a.parquet")  # pair 0 at rows 0 and 2
        pq.write_table(published.take([1, 4]), folder / "b.parquet")        # pair 1 again, then pair 3
        config = laion.LaionConfig(rows_per_unit=2, download=laion.DownloadOptions(thread_count=4, timeout=5))
        laion.make_laion([folder], config, LOCAL, OutputOptions(tmp_path / "out"), ray_session)
    samples, status = _outcome(tmp_path / "out")
    key = {p.index: f"laion:{p.hash}" for p in pairs}
    assert samples == sorted(key.values())
    assert _duplicates(status) == {f"{key[0]}#dup1": f"{key[0]} already at a.parquet:0",
                                   f"{key[1]}#dup1": f"{key[1]} already at a.parquet:1"}
    assert status[f"{key[1]}#dup1"]["input"].endswith("/laion/img/000001.jpg")


# ---- YouTube: a video id --------------------------------------------------------------------

def test_youtube_a_video_named_four_times_is_processed_once(tmp_path, ray_session):
    """The video as an info file named by its id, a copy under a name without it in another
    folder (its id is read at planning), and twice in an ids file: one video, three repeats."""
    with sample_site.serve(tmp_path / "site") as base:
        sample_site.publish_youtube(tmp_path / "site", base, [sample_site.SiteVideo("good0000001"),
                                                               sample_site.SiteVideo("other000001")])
        named = tmp_path / "site" / "info" / "good0000001.info.json"
        (tmp_path / "copies").mkdir()
        shutil.copy(named, tmp_path / "copies" / "saved.json")
        ids = tmp_path / "ids.txt"
        ids.write_text("good0000001\nhttps://youtu.be/good0000001\n")
        videos = inputs.collect([], ids, [tmp_path / "site" / "info", tmp_path / "copies"], None)
        quiet = ytdl.YtdlOptions(sleep_requests=0, sleep_interval=0, sleep_subtitles=0, retries=0)
        youtube.make_youtube(videos, youtube.YoutubeConfig(videos_per_unit=2), quiet, LOCAL,
                             OutputOptions(tmp_path / "out"), ray_session)
    samples, status = _outcome(tmp_path / "out")
    assert {k.rsplit(":", 1)[0] for k in samples} == {"yt_storyboard:good0000001", "yt_storyboard:other000001"}
    first = f"yt_storyboard:good0000001 already at {named}"
    assert _duplicates(status) == {f"yt_storyboard:good0000001#dup{n}": first for n in (1, 2, 3)}
    assert {status[f"yt_storyboard:good0000001#dup{n}"]["input"] for n in (1, 2, 3)} == {
        "good0000001", "https://youtu.be/good0000001", str(tmp_path / "copies" / "saved.json")}
    assert status["yt_storyboard:good0000001"]["status"] == "ok"


def test_youtube_a_url_without_an_id_is_refused_before_any_request():
    """Its id would be known only to yt-dlp in a worker, after the repeats were found."""
    video = inputs.VideoInput("url", "https://video.example/clip/7")
    unit = youtube.YoutubeUnit((video,), youtube.YoutubeConfig(), ytdl.YtdlOptions(), LOCAL)
    with pytest.raises(youtube.VideoError) as e:
        youtube.video_samples(video, unit)
    assert e.value.reason == "unsupported_input"


def test_youtube_refs_that_read_alike_keep_apart():
    """Status keys of inputs without an id are exact: two refs that sanitize alike differ."""
    a, b = inputs.from_refs(["https://video.example/a?b", "https://video.example/a_b"])
    assert a.key != b.key and inputs.dedupe([a, b]) == sorted([a, b], key=lambda v: v.sort_key)
