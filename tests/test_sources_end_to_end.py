"""Issue 4's whole job: the four ingest commands over a local server, faults included, then
`emu-data mix` with a YouTube corpus in Emu's proportions.

Every command runs as a user runs it (cli.main), every download path is the real one
(img2dataset, net.Fetcher, PyAV, yt-dlp), and every input is accounted for.
"""

from collections import Counter

import pytest

from emu_data import cli
from emu_data.ops import mix
from emu_data.synthetic import site as sample_site
from emu_data.core.corpus import shard_paths
from emu_data.synthetic.site import laion as site_laion
from emu_data.synthetic.site import mmc4 as site_mmc4
from emu_data.synthetic.site import webvid as site_webvid
from emu_data.core.shards import read_shard
from emu_data.inspect.validate import validate

pytestmark = pytest.mark.slow
NET = ["--allow-private-addresses", "--retries", "0", "--timeout", "5"]
QUIET_YT = ["--sleep-requests", "0", "--sleep-interval", "0", "--sleep-subtitles", "0"]


def _pairs(start, n, faults):
    return [site_laion.SitePair(i, fault=faults.get(i)) for i in range(start, start + n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    root, runs = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("runs")
    with sample_site.serve(root) as base:
        laion = site_laion.publish_laion(root / "a", f"{base}/a", _pairs(0, 100, {3: "404", 4: "html", 5: "redirect", 6: "low_similarity"}))
        coco = site_laion.publish_laion(root / "b", f"{base}/b", _pairs(1000, 100, {1003: "404", 1004: "null_caption"}))
        docs = [site_mmc4.SiteDocument(f"doc{i}", fault={2: "missing_image", 3: "malformed_json"}.get(i)) for i in range(50)]
        site_mmc4.publish_mmc4(root, base, docs)
        clips = [site_webvid.SiteClip(f"{i}", fault={1: "truncated", 2: "bad_duration", 3: "missing"}.get(i)) for i in range(12)]
        site_webvid.publish_webvid(root, base, clips)
        sample_site.publish_youtube(root, base, [sample_site.SiteVideo(f"video{i:06d}") for i in range(4)])
        commands = {
            "laion": ["laion", "--input", str(laion.laion), "--min-similarity", "0.2"],
            "laion_coco": ["laion", "--input", str(coco.coco), "--source", "laion_coco"],
            "mmc4": ["mmc4", "--input", str(root / "mmc4")],
            "webvid": ["webvid", "--input", *map(str, sorted((root / "webvid").glob("*.csv")))],
            "yt_storyboard": ["youtube", "--info-json", str(root / "info"), *QUIET_YT],
        }
        for name, args in commands.items():
            assert cli.main([*args, "--out", str(runs / name), *NET]) == 0, name
    inputs = {"laion": 100, "laion_coco": 100, "mmc4": 50, "webvid": 12, "yt_storyboard": 4}
    return runs, inputs


def _rows(out, kind="data"):
    return [r for p in shard_paths(out, kind) for r in read_shard(p).to_pylist()]


@pytest.mark.parametrize("source", ["laion", "laion_coco", "mmc4", "webvid", "yt_storyboard"])
def test_each_corpus_validates_and_accounts_for_every_input(built, source):
    runs, inputs = built
    report = validate([runs / source], deep=True)
    assert report.ok, [str(v) for v in report.violations[:5]]
    status = _rows(runs / source, "status")
    assert len(status) == inputs[source]
    ok = Counter(r["status"] for r in status)["ok"]
    # the planted faults show (the YouTube batch here is all good: test_youtube.py has its faults)
    assert ok == inputs[source] if source == "yt_storyboard" else 0 < ok < inputs[source]
    assert {r["source"] for r in _rows(runs / source)} == {source}


def test_mix_combines_all_five_in_emus_proportions(built, tmp_path):
    runs, _ = built
    out = tmp_path / "mix"
    builtin = ("yt_storyboard", "laion", "laion_coco", "mmc4", "webvid")   # a test may register more
    assert cli.main(["mix", *(str(runs / s) for s in builtin), "--out", str(out)]) == 0
    assert validate([out], deep=True).ok
    counts = Counter(r["source"] for r in _rows(out))
    weights = {s: mix.presets()["emu"][s] for s in builtin}
    total, total_weight = sum(counts.values()), sum(weights.values())
    assert set(counts) == set(weights)
    for source, weight in weights.items():
        assert abs(counts[source] / total - weight / total_weight) < 0.03, counts
