"""A crawl against a misbehaving server: 1,000 LAION URLs, 30% of them faulty, through the
real path (address pre-check, img2dataset's Downloader under net_guard, Pillow's judgement).

Every URL must end in the corpus or in the status table with the reason its fault calls
for; transient faults succeed on retry within the run, persistent ones on `--retry-failed`
once the server recovers; the 'internal service' on 127.0.0.1 never sees a connection.
"""

from __future__ import annotations

import io
import itertools
import urllib.error
import urllib.request
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emu_data import net
from emu_data.net import guard as net_guard
from emu_data.core import options
from emu_data.synthetic import world
from emu_data.core.corpus import shard_paths
from emu_data.core.shards import read_shard
from emu_data.sources import laion
from emu_data.engine.stage import OutputOptions
from emu_data.inspect.validate import validate
from fault_server import FAULTS, HOST, METADATA_URL, FaultServer, Trap

# fault -> (reason in the first run, reason after the server heals and --retry-failed)
EXPECTED = {
    "ok": ("ok", "ok"), "mislabelled": ("ok", "ok"),
    "404": ("http_404", "http_404"),
    "429-once": ("ok", "ok"), "503-once": ("ok", "ok"), "reset-once": ("ok", "ok"),
    "429": ("http_429", "ok"), "500": ("http_500", "ok"), "503": ("http_503", "ok"),
    "slow": ("timeout", "ok"), "reset": ("connection_error", "ok"), "truncated": ("truncated", "ok"),
    "drip": ("timeout", "timeout"),
    "html": ("decode_error", "decode_error"),
    "loop": ("too_many_redirects", "too_many_redirects"), "chain": ("too_many_redirects", "too_many_redirects"),
    "to-private": ("blocked_address", "blocked_address"), "to-metadata": ("blocked_address", "blocked_address"),
    "dns": ("blocked_address", "blocked_address"),   # a name (localhost) that resolves inside
    "huge-declared": ("too_large", "too_large"), "huge-stream": ("too_large", "too_large"),
    "bomb": ("decompression_bomb", "decompression_bomb"), "bomb-soft": ("decompression_bomb", "decompression_bomb"),
}
TOTAL, FAULTY_SHARE = 1000, 0.3
POLICY = net.NetPolicy(allowed_networks=(f"{HOST}/32",), read_timeout=2, retries=1, backoff_max=5,
                       max_bytes=2**20)
CONFIG = laion.LaionConfig(rows_per_unit=250, download=laion.DownloadOptions(thread_count=48, timeout=2,
                                                                               retries=1))


def _image() -> bytes:
    out = io.BytesIO()
    world.render(world.random_scene(__import__("random").Random(0)), 96, 96).save(out, "PNG")
    return out.getvalue()


def _plan() -> list[str]:
    """The fault of each row: 30% spread over every fault kind, the rest plain images."""
    kinds = [k for k in EXPECTED if k != "ok"]
    faulty = [kinds[i % len(kinds)] for i in range(int(TOTAL * FAULTY_SHARE))]
    plan = faulty + ["ok"] * (TOTAL - len(faulty))
    return [plan[(i * 7919) % TOTAL] for i in range(TOTAL)]   # interleaved: every unit gets some


def _url(server: FaultServer, trap: Trap, fault: str, i: int) -> str:
    if fault == "dns":
        return f"http://localhost:{trap.url.rsplit(':', 1)[1]}/ok/{i}.png"
    return server.url(fault, f"{i}.png")


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("faults")
    with Trap() as trap, FaultServer(_image(), trap.url) as server:
        plan = _plan()
        table = pa.table({"URL": [_url(server, trap, f, i) for i, f in enumerate(plan)],
                          "TEXT": [f"row {i} ({f})" for i, f in enumerate(plan)]})
        pq.write_table(table, root / "faults.parquet")
        out = OutputOptions(root / "corpus")
        laion.make_laion([root / "faults.parquet"], CONFIG, POLICY, out, ray_session)
        first = _statuses(out.out)
        first_hits = Counter(server.hits)
        server.healed = True
        laion.make_laion([root / "faults.parquet"], CONFIG, POLICY, out, ray_session, retry_failed=True)
        yield {"plan": plan, "out": out.out, "first": first, "second": _statuses(out.out),
               "first_hits": first_hits, "trap": trap, "server": server}


def _statuses(out) -> dict[str, str]:
    rows = [r for p in shard_paths(out, "status") for r in read_shard(p).to_pylist()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a URL has two status rows"
    return {r["key"]: r["status"] for r in rows}


def _key(i: int) -> str:
    return f"laion:faults-{i:08d}"


def test_the_plan_covers_every_fault_at_thirty_percent():
    plan = _plan()
    assert len(plan) >= 1000 and set(plan) == set(EXPECTED) and set(FAULTS) <= set(EXPECTED)
    assert sum(f != "ok" for f in plan) / len(plan) == pytest.approx(FAULTY_SHARE)


@pytest.mark.slow
def test_every_url_ends_with_the_reason_its_fault_calls_for(crawl):
    got = crawl["first"]
    wrong = {(f, got.get(_key(i))) for i, f in enumerate(crawl["plan"]) if got.get(_key(i)) != EXPECTED[f][0]}
    assert not wrong, f"fault -> status mismatches: {sorted(wrong, key=str)}"
    assert len(got) == TOTAL


@pytest.mark.slow
def test_transient_faults_succeeded_by_retrying_within_the_run(crawl):
    hits, plan = crawl["first_hits"], crawl["plan"]
    for fault in ("429-once", "503-once", "reset-once"):
        rows = [i for i, f in enumerate(plan) if f == fault]
        assert all(hits[f"/{fault}/{i}.png"] == 2 for i in rows), fault


@pytest.mark.slow
def test_retry_failed_recovers_what_a_healed_server_now_serves(crawl):
    got = crawl["second"]
    wrong = {(f, got.get(_key(i))) for i, f in enumerate(crawl["plan"]) if got.get(_key(i)) != EXPECTED[f][1]}
    assert not wrong, f"fault -> status mismatches after --retry-failed: {sorted(wrong, key=str)}"


@pytest.mark.slow
def test_the_corpus_holds_exactly_the_ok_rows_and_validates(crawl):
    samples = [r for p in shard_paths(crawl["out"], "data") for r in read_shard(p).to_pylist()]
    keys = [r["key"] for r in samples]
    ok = {k for k, s in crawl["second"].items() if s == "ok"}
    assert len(keys) == len(set(keys)) and set(keys) == ok
    report = validate([crawl["out"]], deep=True)
    assert report.ok, report


@pytest.mark.slow
def test_no_request_reached_the_internal_address(crawl):
    assert crawl["trap"].connections == 0
    plan = crawl["plan"]
    hops = [i for i, f in enumerate(plan) if f in ("to-private", "to-metadata")]
    # img2dataset retries every failure, refused ones too: each retry was refused again
    assert all(1 <= crawl["first_hits"][f"/{plan[i]}/{i}.png"] <= 1 + CONFIG.download.retries for i in hops)


# ---- the guard under urllib and under yt-dlp, one request at a time ----------------------

def _open(url: str) -> str:
    with net_guard.urllib_policy(POLICY):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return f"{response.status} {len(response.read())}"
        except (urllib.error.URLError, OSError) as e:
            return laion.error_reason("failed_to_download", str(e))


def test_urlopen_under_the_policy_refuses_names_and_redirects_into_the_network():
    with Trap() as trap, FaultServer(_image(), trap.url) as server:
        port = trap.url.rsplit(":", 1)[1]
        assert _open(f"http://localhost:{port}/x") == "blocked_address"       # a name, no pre-check
        assert _open(server.url("to-private", "a")) == "blocked_address"
        assert _open(server.url("to-metadata", "a")) == "blocked_address"
        assert _open(server.url("huge-stream", "a")) == "too_large"
        assert _open(server.url("ok", "a")).startswith("200 ")
        assert trap.connections == 0
    with pytest.raises(urllib.error.URLError):   # no file: handler under the policy
        _open_raw("file:///etc/hostname")


def _open_raw(url: str):
    with net_guard.urllib_policy(POLICY):
        urllib.request.urlopen(url, timeout=2)


def test_the_guard_is_scoped_and_the_previous_opener_comes_back():
    before = urllib.request._opener
    with Trap() as trap:
        with net_guard.connection_guard(POLICY), pytest.raises(net_guard.AddressRefused):
            __import__("socket").create_connection(("127.0.0.1", int(trap.url.rsplit(":", 1)[1])), timeout=2)
        __import__("socket").create_connection(("127.0.0.1", int(trap.url.rsplit(":", 1)[1])), timeout=2).close()
        _open(f"{trap.url}/x")
    assert urllib.request._opener is before
    assert trap.connections >= 1   # outside the guard the same connect goes through


@pytest.mark.parametrize("part", ["fragment", "subtitles"])
def test_yt_dlp_fragment_and_subtitle_redirects_into_the_network_are_refused(tmp_path, part):
    """yt-dlp's own downloaders, redirected from an allowed host to 127.0.0.1: refused at connect."""
    from emu_data.synthetic.site import SiteVideo, publish_youtube
    from emu_data.sources.youtube import ytdl

    with Trap() as trap, FaultServer(_image(), trap.url, root=tmp_path) as server:
        info = publish_youtube(tmp_path, server.base, [SiteVideo("v0", duration=30.0)])[0]
        fmt = next(f for f in info["formats"] if f.get("format_id", "").startswith("sb"))
        sub = info["subtitles"]["en"][0]
        target = fmt["fragments"][0] if part == "fragment" else sub
        path = target["url"].removeprefix(server.base).split("?", 1)[0]
        server.redirects[path] = f"{trap.url}{path}"
        options = ytdl.YtdlOptions(sleep_requests=0, sleep_interval=0, sleep_subtitles=0, retries=0)
        with pytest.raises(ytdl.YtdlError) as caught:
            ytdl.download(info, fmt["format_id"], "en", sub["ext"], False, tmp_path / "work", options, POLICY)
        assert caught.value.reason == "blocked_address"
        assert server.hits[path] >= 1 and trap.connections == 0
        # the row's message is the guard's own, naming the refused address (it was "ERROR: ")
        assert str(caught.value) == net_guard.refusal("127.0.0.1", int(trap.url.rsplit(":", 1)[1]))


def test_yt_dlp_messages_keep_their_first_line_whole():
    """yt-dlp writes "\\r" (a progress-line reset) inside fragment errors: not a line end."""
    from emu_data.sources.youtube import ytdl

    assert ytdl._clean("ERROR: \r[download] Got error: HTTP Error 404: Not Found\nPlease report") == \
        "ERROR: [download] Got error: HTTP Error 404: Not Found"
    assert ytdl._clean("ERROR: x: Failed to establish a new connection: " + net_guard.refusal("::1", 8080)
                       + "'))") == net_guard.refusal("::1", 8080)
    assert "[::1]:8080" in net_guard.refusal("::1", 8080)


def test_allow_address_opens_every_port_of_an_address_and_takes_no_port(capsys):
    """The documented limit: --allow-address matches addresses, not ports (README, --help)."""
    from emu_data import cli

    socket = __import__("socket")
    allowed = net.NetPolicy(allowed_networks=("127.0.0.1/32",))
    with Trap() as one, Trap() as other, net_guard.connection_guard(allowed):
        for trap in (one, other):
            socket.create_connection(("127.0.0.1", int(trap.url.rsplit(":", 1)[1])), timeout=2).close()
        port = int(one.url.rsplit(":", 1)[1])
        with pytest.raises(net_guard.AddressRefused, match=f"127.0.0.3:{port} refused"):
            socket.create_connection(("127.0.0.3", port), timeout=2)
    for text in ("10.0.0.5:8080", "[::1]:8080"):
        with pytest.raises(cli.argparse.ArgumentTypeError, match="without a port"):
            options.network(text)
    with pytest.raises(SystemExit):
        cli.main(["laion", "--help"])
    assert "on EVERY port" in " ".join(capsys.readouterr().out.split())
