"""img2dataset's Downloader run in-process (laion_download.py) against a loopback server:
its Resizer, hash check and X-Robots-Tag opt-out really run, and a failure is never silent."""

import hashlib
import http.server
import io
import random
import threading
from dataclasses import replace
from functools import partial

import pytest
from PIL import Image

from emu_data import net
from emu_data.synthetic import world
from emu_data.sources import laion, laion_download

_LOCAL = net.NetPolicy(allow_private_addresses=True)  # the test's server is on 127.0.0.1


class _OptingOut(http.server.SimpleHTTPRequestHandler):
    """Static files; those whose name starts with "noai" come with `X-Robots-Tag: noai`."""

    def end_headers(self):
        if self.path.rsplit("/", 1)[-1].startswith("noai"):
            self.send_header("X-Robots-Tag", "noai")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    image = world.render(world.random_scene(random.Random(3)), 200, 120)
    data = world.encode(image)
    for name in ("a.jpg", "noai.jpg"):
        (root / name).write_bytes(data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_OptingOut, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", data
    server.shutdown()
    server.server_close()


def _run(urls, config=laion.LaionConfig(), **extra):
    results = []
    columns = {"url": urls, laion.ROW_ID: list(range(len(urls))), **extra}
    laion_download.download(columns, laion.download_job(config), results.append, _LOCAL)
    return sorted(results, key=lambda r: r[laion.ROW_ID])


def test_originals_pass_untouched_and_opted_out_rows_are_refused(site):
    base, data = site
    ok, refused = _run([f"{base}/a.jpg", f"{base}/noai.jpg"])
    assert ok["status"] == "success" and ok["image"] == data
    assert refused["status"] == "failed_to_download" and "X-Robots-Tag" in refused["error_message"]
    assert laion.error_reason(refused["status"], refused["error_message"]) == "opted_out"


def test_opt_out_can_be_ignored(site):
    base, _ = site
    config = laion.LaionConfig(download=laion.DownloadOptions(respect_opt_out=False))
    assert _run([f"{base}/noai.jpg"], config)[0]["status"] == "success"


def test_img2dataset_resizer_does_the_resizing(site):
    base, _ = site
    config = laion.LaionConfig(image=laion.ImageOptions(resize_mode="center_crop", image_size=64))
    (result,) = _run([f"{base}/a.jpg"], config)
    with Image.open(io.BytesIO(result["image"])) as image:
        assert image.size == (64, 64) and image.format == "JPEG"
    assert (result["original_width"], result["original_height"]) == (200, 120)


def test_hashes_are_verified(site):
    base, data = site
    config = laion.LaionConfig(verify_hash=("sha256", "sha256"))
    good, bad = _run([f"{base}/a.jpg", f"{base}/a.jpg"], config,
                     sha256=[hashlib.sha256(data).hexdigest(), "0" * 64])
    assert good["status"] == "success"
    assert bad["status"] == "failed_to_download" and bad["error_message"] == "hash mismatch"


def test_an_error_in_the_handler_fails_the_call(site):
    base, _ = site

    def broken(result):
        raise OSError("disk full")

    job = laion.download_job(laion.LaionConfig())
    with pytest.raises(OSError, match="disk full"):
        laion_download.download({"url": [f"{base}/a.jpg"] * 3, laion.ROW_ID: [0, 1, 2]}, job, broken, _LOCAL)


def test_a_downloader_that_cannot_start_is_reported(site):
    base, _ = site
    job = replace(laion.download_job(laion.LaionConfig()), thread_count=0)  # ThreadPool(0) refuses
    with pytest.raises(laion_download.DownloaderFailed, match="downloader stopped"):
        laion_download.download({"url": [f"{base}/a.jpg"], laion.ROW_ID: [0]}, job, lambda r: None, _LOCAL)
