"""A fresh install is YouTube-ready (issue 18, part 1): since yt-dlp 2025.11 full YouTube
support needs a JavaScript runtime and the yt-dlp-ejs challenge scripts; yt-dlp's own pip
extras bring both (`yt-dlp[default,deno]`), and yt-dlp must find the deno they install (it
looks beside the Python that runs it first, then on PATH)."""

import importlib.metadata

import pytest


def test_ytdlp_finds_a_supported_deno_and_the_ejs_scripts():
    jsruntime = pytest.importorskip("yt_dlp.utils._jsruntime")   # yt-dlp's own lookup (private API)
    info = jsruntime.DenoJsRuntime().info
    assert info is not None, "yt-dlp finds no deno: install emu-data (it depends on yt-dlp[default,deno])"
    assert info.supported, f"deno {info.version} is older than yt-dlp supports"
    assert importlib.metadata.version("yt-dlp-ejs")
