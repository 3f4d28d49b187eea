"""The identity pool against a server that rations clients as YouTube does (issue 18).

The sample site plays YouTube's limits (synthetic/site/limits.py): it tells identities apart
by their cookie, or by the forward proxy they come through, counts the videos each one
fetches in the window, and answers 429 or the bot-check past the budget. yt-dlp runs its
real download path, through each identity's cookies file and proxy; Ray is a real local Ray,
so the pool is the shared actor every worker leases from.
"""

import json
from pathlib import Path

import pytest

from emu_data import cli
from emu_data.core import records
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.inspect.validate import validate
from emu_data.synthetic import site as sample_site
from emu_data.synthetic.site import limits as site_limits
from emu_data.synthetic.site.proxy import forward_proxy

VIDEOS = [sample_site.SiteVideo(f"ident{n:06d}", duration=20) for n in range(12)]
QUIET = ["--sleep-requests", "0", "--sleep-interval", "0", "--sleep-subtitles", "0", "--retries", "0",
         "--allow-private-addresses", "--videos-per-unit", "2", "--max-concurrent", "4"]
PASSWORD = "pr0xy-Pa55word-never-shown"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site and its limits; each test sets limits.clients to the identities it plays."""
    root = tmp_path_factory.mktemp("ration")
    limits = site_limits.Limits({}, window=3600.0)
    with sample_site.serve(root, limits=limits) as base:
        sample_site.publish_youtube(root, base, VIDEOS)
        yield root, limits


def _identities(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _cookie(tmp_path: Path, name: str) -> tuple[str, str]:
    """A cookies file holding this identity's secret: (path, secret)."""
    secret = f"cookie-secret-{name}-7f3a9c"
    return str(site_limits.write_cookies(tmp_path / f"{name}.cookies.txt", secret)), secret


def _info(root: Path, n: int) -> list[str]:
    """--info-json of a folder holding the first n videos' info dicts."""
    folder = root / f"first{n}"
    if not folder.exists():
        folder.mkdir()
        for video in VIDEOS[:n]:
            name = f"{video.video_id}.info.json"
            (folder / name).write_bytes((root / "info" / name).read_bytes())
    return ["--info-json", str(folder)]


def _status(out: Path) -> dict[str, dict]:
    rows = [r for p in shard_paths(out, "status") for r in read_shard(p).to_pylist()]
    return {r["key"].split(":")[1]: r for r in rows}


def _youtube(root, out, identities_file, n, *extra) -> int:
    return cli.main(["youtube", *_info(root, n), "--out", str(out), "--identities", str(identities_file),
                     *QUIET, *extra])


def test_no_identity_exceeds_its_budget_and_no_secret_is_written(site, tmp_path, ray_session, capfd, caplog):
    root, limits = site
    alpha, alpha_secret = _cookie(tmp_path, "alpha")
    beta, beta_secret = _cookie(tmp_path, "beta")
    limits.clients = {alpha_secret: site_limits.Client("alpha", budget=4),
                      beta_secret: site_limits.Client("beta", budget=4),
                      "proxy-secret-gamma": site_limits.Client("gamma", budget=4)}
    with forward_proxy("gamma", PASSWORD, "proxy-secret-gamma") as proxy:
        identities = _identities(tmp_path / "ids.json", [
            {"name": "alpha", "cookies": alpha, "videos_per_hour": 4},
            {"name": "beta", "cookies": beta, "videos_per_hour": 4},
            {"name": "gamma", "proxy": proxy, "videos_per_hour": 4}])
        out = tmp_path / "corpus"
        assert _youtube(root, out, identities, 12) == 0
    status = _status(out)
    assert {s["status"] for s in status.values()} == {"ok"} and len(status) == 12
    served = [records.identity_of(s["error"]) for s in status.values()]
    assert sorted(served) == ["alpha"] * 4 + ["beta"] * 4 + ["gamma"] * 4   # 12 videos, 3 x 4 budget
    for name in ("alpha", "beta", "gamma"):   # the server's own count
        assert limits.most_in_a_window(name) == 4 and not limits.by_name(name).refusals
    assert validate([out]).ok
    # the proxy's password and the cookie values went where they belong (the server saw
    # gamma through its proxy), and nowhere else
    printed = "".join(capfd.readouterr()) + caplog.text
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in (PASSWORD, alpha_secret, beta_secret):
        assert secret not in printed and secret.encode() not in written


def test_a_bot_checked_identity_cools_down_and_its_videos_succeed_on_others(site, tmp_path, ray_session):
    root, limits = site
    cookies = {name: _cookie(tmp_path, name) for name in ("burned", "good1", "good2")}
    limits.clients = {cookies["burned"][1]: site_limits.Client("burned", burned=True),
                      cookies["good1"][1]: site_limits.Client("good1"),
                      cookies["good2"][1]: site_limits.Client("good2")}
    identities = _identities(tmp_path / "ids.json", [{"name": n, "cookies": c} for n, (c, _) in cookies.items()])
    out = tmp_path / "corpus"
    assert _youtube(root, out, identities, 6, "--cooldown", "600") == 0
    status = _status(out)
    assert {s["status"] for s in status.values()} == {"ok"}
    assert {records.identity_of(s["error"]) for s in status.values()} <= {"good1", "good2"}
    refused = limits.by_name("burned").refusals
    assert refused   # it was asked, refused, and cooled down for the rest of the run:
    assert len({video for _, video, _ in refused}) == 1
    assert any(s["attempts"] == 2 for s in status.values())   # that video, on another identity


def test_with_every_identity_retired_videos_end_bot_check_and_a_rerun_finishes_them(site, tmp_path, ray_session):
    root, limits = site
    cookies = {name: _cookie(tmp_path, name) for name in ("flagged1", "flagged2", "fresh")}
    limits.clients = {cookies["flagged1"][1]: site_limits.Client("flagged1", burned=True),
                      cookies["flagged2"][1]: site_limits.Client("flagged2", burned=True),
                      cookies["fresh"][1]: site_limits.Client("fresh", budget=4)}
    spent = _identities(tmp_path / "spent.json", [{"name": n, "cookies": cookies[n][0]}
                                                  for n in ("flagged1", "flagged2")])
    out = tmp_path / "corpus"
    assert _youtube(root, out, spent, 4, "--retire-after", "1") == 0   # a clean exit
    status = _status(out)
    assert {s["status"] for s in status.values()} == {"bot_check"} and len(status) == 4
    assert all("no identity left" in s["error"] and "retired: flagged1, flagged2" in s["error"]
               for s in status.values())
    assert validate([out]).ok
    fresh = _identities(tmp_path / "fresh.json", [{"name": "fresh", "cookies": cookies["fresh"][0],
                                                   "videos_per_hour": 4}])
    assert _youtube(root, out, fresh, 4, "--retry-failed") == 0
    status = _status(out)
    assert {s["status"] for s in status.values()} == {"ok"}
    assert {records.identity_of(s["error"]) for s in status.values()} == {"fresh"}
    assert limits.most_in_a_window("fresh") == 4
    assert validate([out]).ok


def test_a_proxy_alone_is_the_pool_of_one_and_its_password_stays_out_of_config_and_recipes(
        site, tmp_path, ray_session, capfd):
    root, limits = site
    limits.clients = {"proxy-secret-solo": site_limits.Client("solo", budget=2)}
    with forward_proxy("solo", PASSWORD, "proxy-secret-solo") as proxy:
        out = tmp_path / "corpus"
        assert cli.main(["youtube", *_info(root, 2), "--out", str(out), "--proxy", proxy, *QUIET]) == 0
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"stages:\n  youtube:\n    info_json: {root / 'first2'}\n    proxy: '{proxy}'\n")
        assert cli.main(["run", str(recipe), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    status = _status(out)
    assert [records.identity_of(s["error"]) for s in status.values()] == ["default", "default"]
    assert len(limits.by_name("solo").history) == 2   # through the proxy, with its password
    config = json.loads((out / "_config.json").read_text())
    assert config["ytdl"]["proxy"] == proxy.replace(PASSWORD, "***")
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in written and PASSWORD not in "".join(capfd.readouterr())


def test_an_identity_shared_by_videos_at_once_gives_each_its_own_cookies_copy(site, tmp_path, ray_session):
    root, limits = site
    cookies, secret = _cookie(tmp_path, "wide")
    before = open(cookies, "rb").read()
    limits.clients = {secret: site_limits.Client("wide")}
    identities = _identities(tmp_path / "ids.json", [{"name": "wide", "cookies": cookies, "concurrent": 4,
                                                      "videos_per_hour": 0}])
    out = tmp_path / "corpus"
    assert _youtube(root, out, identities, 6) == 0
    assert {s["status"] for s in _status(out).values()} == {"ok"}
    assert len(limits.by_name("wide").history) == 6     # the copies carried the session
    assert open(cookies, "rb").read() == before          # and the shared file was never rewritten
