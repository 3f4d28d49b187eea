"""Tests for emu_data.inspect.preview: structure of the HTML, escaping, and a real headless render."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from emu_data.inspect.preview import format_time, render_html, sniff_mime

HOSTILE = "<script>alert(1)</script>"
# Vivid colours the render test looks for in the screenshot.
RED, GREEN, BLUE, YELLOW = (230, 20, 20), (20, 200, 40), (30, 60, 230), (240, 220, 0)


def _image(colour, size, fmt) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _records() -> list[dict]:
    storyboard = {
        "key": "yt_storyboard:abc123:0",
        "source": "yt_storyboard",
        "texts": [None, "hello and welcome", None, "today we cook"],
        "images": [_image(RED, (160, 90), "JPEG"), None, _image(GREEN, (160, 90), "JPEG"), None],
        "times": [0.0, 1.5, 65.25, 66.0],
        "meta": json.dumps({"video_id": "abc123", "url": "https://www.youtube.com/watch?v=abc123"}),
    }
    laion = {
        "key": "laion:000042",
        "source": "laion",
        "texts": [None, "a blue square on a table"],
        "images": [_image(BLUE, (300, 200), "PNG"), None],
        "times": None,
        "meta": json.dumps({"url": "http://example.com/a.png", "similarity": 0.31}),
    }
    mmc4 = {
        "key": "mmc4:doc7",
        "source": "mmc4",
        "texts": ["First sentence.", None, "Second sentence.", None, "The end."],
        "images": [None, _image(YELLOW, (800, 500), "JPEG"), None, _image(RED, (120, 120), "PNG"), None],
        "times": None,
        "meta": json.dumps({"doc_id": "doc7", "license": "cc-by"}),
    }
    hostile = {
        "key": f"laion_coco:{HOSTILE}",
        "source": "laion_coco",
        "texts": [None, HOSTILE],
        "images": [b"not an image at all", None],
        "times": None,
        "meta": "{not json " + HOSTILE,
    }
    return [storyboard, laion, mmc4, hostile]


@pytest.fixture(scope="module")
def page() -> str:
    summary = {"samples": 4, "by source": {"laion": 1, "mmc4": 1}}
    return render_html(_records(), "Preview <test>", summary=summary)


def test_each_key_appears(page):
    for key in ("yt_storyboard:abc123:0", "laion:000042", "mmc4:doc7"):
        assert key in page
    assert "laion_coco:&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('<section class="card">') == 4


def test_images_are_data_uris_of_the_sniffed_mime(page):
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 5  # 2 frames + 1 pair + 2 in the document; the bad blob is no <img>
    mimes = [re.match(r"data:(image/\w+);base64,", s).group(1) for s in srcs]
    assert mimes == ["image/jpeg", "image/jpeg", "image/png", "image/jpeg", "image/png"]


def test_undecodable_image_is_a_placeholder(page):
    assert f"undecodable image ({len(b'not an image at all')} bytes)" in page


def test_times_formatted(page):
    for label in ("0:00.0", "0:01.5", "1:05.2", "1:06.0"):
        assert f'<span class="time">{label}</span>' in page
    assert format_time(59.96) == "1:00.0"
    assert format_time(3725.0) == "62:05.0"


def test_hostile_text_escaped(page):
    assert HOSTILE not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "meta (not valid JSON)" in page
    assert "<title>Preview &lt;test&gt;</title>" in page


def test_meta_pretty_and_summary(page):
    assert "&quot;similarity&quot;: 0.31" in page
    assert '<table class="summary">' in page and "by source" in page


def test_no_external_urls(page):
    # URLs may appear only as escaped meta text; strip the meta blocks and none may remain.
    without_meta = re.sub(r'<pre class="meta">.*?</pre>', "", page, flags=re.S)
    assert "http://" not in without_meta and "https://" not in without_meta
    assert "<link" not in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:")


def test_sniff_mime_webp_and_gif():
    assert sniff_mime(_image(RED, (4, 4), "WEBP")) == "image/webp"
    assert sniff_mime(_image(RED, (4, 4), "GIF")) == "image/gif"
    assert sniff_mime(b"") is None


def test_edge_records_still_render():
    # A datasets Image struct, an empty position, ragged lists, an unknown source, a generator.
    record = {"key": "k", "source": "other", "texts": [None, None, "t"],
              "images": [{"bytes": _image(RED, (8, 8), "PNG"), "path": None}], "times": None, "meta": ""}
    page = render_html((r for r in [record]), "edge")
    assert page.count("data:image/png;base64,") == 1
    assert "empty position" in page and "3 positions, 1 image" in page
    assert "<details>" not in page  # no meta, no empty meta box


def test_render_in_headless_chromium(page, tmp_path):
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if browser is None:
        pytest.skip("Debian's chromium is not installed: apt-get install chromium")
    html_path, shot = tmp_path / "page.html", tmp_path / "shot.png"
    html_path.write_text(page, encoding="utf-8")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", f"file://{html_path}"],
        capture_output=True, timeout=60, check=False,
    )
    assert shot.is_file() and shot.stat().st_size > 0
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # a blank page has one or two colours
    present = {c for _, c in colours}

    def near(target):
        return any(sum(abs(a - b) for a, b in zip(c, target)) < 40 for c in present)

    for colour in (RED, GREEN, BLUE, YELLOW):  # the drawn images really were decoded and shown
        assert near(colour), colour
