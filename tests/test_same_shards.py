"""Reruns give the same shards, byte for byte, whatever order the downloads finish in.

Each source runs twice over one input against a server that answers every request after a
random delay, with several fetch threads, so the two runs' downloads complete in different
orders; the manifests must list the same shards with the same sha256.
"""

import contextlib
import http.server
import random
import threading
import time
from functools import partial

import pytest

from emu_data.core import manifest, records
from emu_data import net
from emu_data.core.corpus import UnitWriter
from emu_data.synthetic.site.laion import SitePair, publish_laion
from emu_data.synthetic.site.mmc4 import SiteDocument, publish_mmc4
from emu_data.synthetic.site.webvid import SiteClip, publish_webvid
from emu_data.core.shards import ShardLimits, read_shard
from emu_data.sources import laion, mmc4, webvid
from emu_data.sources.ordered import InputOrder
from emu_data.engine.stage import OutputOptions

LOCAL = net.NetPolicy(allow_private_addresses=True, per_host_rate=0)


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, each after a random pause: completion order differs from request order."""

    def do_GET(self):
        time.sleep(random.uniform(0, 0.08))
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def slow_server(root):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_SlowHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _shards(out) -> dict:
    built = manifest.read(out)
    return {kind: [(s["path"], s["rows"], s["sha256"]) for s in built[kind]]
            for kind in ("shards", "status_shards")}


def _laion(root, base, ray):
    files = publish_laion(root, base, [SitePair(i) for i in range(48)])
    config = laion.LaionConfig(rows_per_unit=24, download=laion.DownloadOptions(thread_count=8))
    return 48, lambda out: laion.make_laion([files.laion], config, LOCAL, OutputOptions(out, shard_rows=10), ray)


def _mmc4(root, base, ray):
    publish_mmc4(root, base, [SiteDocument(f"doc{i}", n_images=3) for i in range(16)])
    config = mmc4.Mmc4Config(docs_per_unit=8, fetch_workers=6)
    return 16, lambda out: mmc4.make_mmc4([root / "mmc4"], config, LOCAL, OutputOptions(out, shard_rows=5), ray)


def _webvid(root, base, ray):
    publish_webvid(root, base, [SiteClip(f"{700 + i}") for i in range(10)])
    config = webvid.WebvidConfig(rows_per_unit=5, fetch_workers=4)
    return 10, lambda out: webvid.make_webvid([root / "webvid"], config, LOCAL, OutputOptions(out, shard_rows=3), ray)


@pytest.mark.parametrize("source", [_laion, _mmc4, _webvid], ids=["laion", "mmc4", "webvid"])
def test_reruns_write_the_same_shards(source, tmp_path, ray_session):
    """(YouTube's units take their videos one after another: no completion order to differ.)"""
    site = tmp_path / "site"
    site.mkdir()
    with slow_server(site) as base:
        items, run = source(site, base, ray_session)
        shards = []
        for out in (tmp_path / "first", tmp_path / "second"):
            run(out)
            shards.append(_shards(out))
    assert sum(rows for _, rows, _ in shards[0]["status_shards"]) == items
    assert len(shards[0]["shards"]) > 1 and shards[0] == shards[1]


# ---- the reorder buffer ------------------------------------------------------------------------

def _status(i: int) -> dict:
    """Items at multiples of 4 have a sample, the others a 404."""
    if i % 4 == 0:
        return records.status(f"laion:{i}", "laion", "ok", input=f"u{i}", samples=1)
    return records.status(f"laion:{i}", "laion", "http_404", input=f"u{i}", error="HTTP Error 404")


def _sample(i: int) -> dict:
    return records.sample(f"laion:{i}", "laion", [f"text {i}", bytes([i]) * 5000])


@pytest.mark.parametrize("memory_bytes", [0, 12_000, 64 * 2**20])  # all spilled, some, none
def test_rows_put_in_any_order_are_written_in_input_order(tmp_path, memory_bytes):
    writer = UnitWriter(tmp_path, "u-00000", ShardLimits(max_rows=7))
    order = list(range(0, 40, 2))
    random.Random(3).shuffle(order)
    with InputOrder(writer, range(0, 40, 2), memory_bytes=memory_bytes) as out:
        for i in order:
            out.put(i, _status(i), _sample(i) if i % 4 == 0 else None)
    part = writer.commit("f", "d")
    read = lambda kind: [r["key"] for s in part[kind] for r in read_shard(tmp_path / s["path"]).to_pylist()]  # noqa: E731
    assert read("status_shards") == [f"laion:{i}" for i in range(0, 40, 2)]
    assert read("shards") == [f"laion:{i}" for i in range(0, 40, 4)]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [s["path"].split("/")[1] for s in part["shards"]]


def test_an_item_without_rows_or_put_twice_is_refused(tmp_path):
    writer = UnitWriter(tmp_path, "u-00000", ShardLimits())
    with pytest.raises(RuntimeError, match=r"no rows for input position\(s\) \[1\]"):
        with InputOrder(writer, [0, 1, 2]) as out:
            out.put(2, _status(2))
            out.put(0, _status(0))
    with InputOrder(writer, [0, 1]) as out:
        out.put(1, _status(1))
        with pytest.raises(ValueError, match="not awaited"):
            out.put(1, _status(1))
        out.put(0, _status(0))
