"""Inputs of `emu-data youtube`, and yt-dlp's errors mapped to status reasons."""

import pytest

from emu_data.sources.youtube import inputs, ytdl


@pytest.mark.parametrize("text, vid", [
    ("GJLlxj_dtq8", "GJLlxj_dtq8"),
    ("https://www.youtube.com/watch?v=GJLlxj_dtq8&t=10s", "GJLlxj_dtq8"),
    ("https://youtu.be/dsMFmonKDD4?si=abc", "dsMFmonKDD4"),
    ("https://www.youtube.com/shorts/dsMFmonKDD4", "dsMFmonKDD4"),
    ("youtube.com/embed/GJLlxj_dtq8", "GJLlxj_dtq8"),
    ("https://m.youtube.com/watch?v=GJLlxj_dtq8", "GJLlxj_dtq8"),
    ("https://example.invalid/watch?v=GJLlxj_dtq8", None),
    ("../../etc/passwd", None),
    ("GJLlxj_dtq8x", None),
])
def test_video_ids_from_every_url_form(text, vid):
    assert inputs.video_id_of(text) == vid


@pytest.mark.parametrize("url, is_list", [
    ("https://www.youtube.com/playlist?list=PL123", True),
    ("https://www.youtube.com/@somechannel/videos", True),
    ("https://www.youtube.com/channel/UC123", True),
    ("https://www.youtube.com/watch?v=GJLlxj_dtq8&list=PL123", False),  # a video first
    ("https://127.0.0.1:8000/feed.xml", True),  # any page or feed: yt-dlp decides
    ("GJLlxj_dtq8", False),
])
def test_list_urls(url, is_list):
    assert inputs.is_list_url(url) is is_list


def test_collect_dedupes_prefers_files_and_orders_stably(tmp_path):
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / "Some title [GJLlxj_dtq8].info.json").write_text("{}")
    (tmp_path / "info" / "unnamed.json").write_text("{}")
    ids = tmp_path / "ids.txt"
    ids.write_text("# my list\nhttps://youtu.be/GJLlxj_dtq8\n\ndsMFmonKDD4  # second\n")
    expanded = []
    found = inputs.collect(["https://www.youtube.com/playlist?list=PL1"], ids, [tmp_path / "info"],
                           lambda url: expanded.append(url) or ["https://youtu.be/aaaaaaaaaaa"])
    assert expanded == ["https://www.youtube.com/playlist?list=PL1"]
    named = str(tmp_path / "info" / "Some title [GJLlxj_dtq8].info.json")
    assert [(v.kind, v.video_id, v.repeat) for v in found] == [
        ("file", None, None), ("file", "GJLlxj_dtq8", None), ("url", "GJLlxj_dtq8", (1, named)),
        ("url", "aaaaaaaaaaa", None), ("id", "dsMFmonKDD4", None)]
    assert found[0].key.startswith("yt_storyboard:file:unnamed.json-")


def test_feeds_expand_through_yt_dlps_flat_extraction(tmp_path):
    from emu_data.synthetic import site as sample_site

    items = "".join(f"<item><title>{v}</title><link>https://www.youtube.com/watch?v={v}</link></item>"
                    for v in ("GJLlxj_dtq8", "dsMFmonKDD4"))
    (tmp_path / "feed.xml").write_text(f'<?xml version="1.0"?><rss version="2.0"><channel>'
                                       f'<title>t</title>{items}</channel></rss>')
    options = ytdl.YtdlOptions(sleep_requests=0, sleep_interval=0, sleep_subtitles=0)
    with sample_site.serve(tmp_path) as base:
        found = inputs.from_refs([f"{base}/feed.xml", f"{base}/missing.xml"],
                                 lambda url: ytdl.expand(url, options))
    assert [(v.kind, v.video_id) for v in found[:2]] == [("url", "GJLlxj_dtq8"), ("url", "dsMFmonKDD4")]
    assert found[2].kind == "failed" and found[2].problem == "http_404"
    assert found[2].key.startswith("yt_storyboard:failed:")


def test_no_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no videos given"):
        inputs.collect([], None, [], None)
    with pytest.raises(FileNotFoundError):
        inputs.collect([], None, [tmp_path / "missing"], None)


@pytest.mark.parametrize("message, reason", [
    ("ERROR: [youtube] x: Sign in to confirm you’re not a bot. Use --cookies", "bot_check"),
    ("ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate", "age_restricted"),
    ("ERROR: [youtube] x: Video unavailable. This video is private", "unavailable"),
    ("ERROR: [youtube] x: Private video. Sign in if you've been granted access", "unavailable"),
    ("ERROR: This content isn't available, try again later.", "rate_limited"),
    ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "rate_limited"),
    ("ERROR: unable to download video data: HTTP Error 404: Not Found", "http_404"),
    ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", "http_503"),
    ("ERROR: Unable to download webpage: The read operation timed out", "timeout"),
    ("ERROR: something nobody expected", "download_error"),
])
def test_yt_dlp_errors_become_reasons(message, reason):
    assert ytdl.classify(message) == reason


def test_extractor_args_parse_like_yt_dlp():
    assert ytdl.parse_extractor_args("youtube:player_skip=webpage,configs;skip=translated_subs") == {
        "youtube": {"player_skip": ["webpage", "configs"], "skip": ["translated_subs"]}}
    with pytest.raises(ValueError):
        ytdl.parse_extractor_args("youtube")


def test_sleep_defaults_are_polite_and_pass_through():
    params = ytdl.YtdlOptions(cookies="c.txt", proxy="socks5://127.0.0.1:1080").params()
    assert params["sleep_interval_requests"] == 0.75
    # the sleep between videos is the identity pool's, across workers, never yt-dlp's per process
    assert "sleep_interval" not in params and "max_sleep_interval" not in params
    assert params["cookiefile"] == "c.txt" and params["proxy"] == "socks5://127.0.0.1:1080"


@pytest.mark.parametrize("info, expanded", [
    ({"id": "GJLlxj_dtq8", "extractor_key": "Youtube"}, ["https://www.youtube.com/watch?v=GJLlxj_dtq8"]),
    ({"id": "GJLlxj_dtq8", "extractor_key": "Generic"}, None),   # another site's id names no YouTube video
    ({"id": "../../etc/x", "extractor_key": "Youtube"}, None),
    ({"extractor_key": "Youtube"}, None),
])
def test_a_single_video_url_expands_to_its_youtube_id(monkeypatch, info, expanded):
    """Planning finds repeats by id: a YouTube link in a form video_id_of does not read
    comes back from yt-dlp's extraction as the watch URL of its id."""
    url = "https://www.youtube.com/attribution_link?u=/watch%3Fv%3DGJLlxj_dtq8"
    monkeypatch.setattr(ytdl, "_run", lambda *args: info)
    assert ytdl.expand(url, ytdl.YtdlOptions()) == (expanded or [url])


IMPERSONATE_MESSAGE = ("--impersonate downloads through curl_cffi, which the address guard cannot "
                       "watch; add --allow-private-addresses if the metadata you feed is trusted")


def test_impersonate_under_the_address_guard_fails_closed_for_python_callers(monkeypatch, tmp_path):
    """curl_cffi connects in C, below net_guard's socket hook: a Python caller of the stage
    (not only the CLI) is refused before any Ray or network work."""
    from emu_data import net
    from emu_data.engine import stage as stage_runner
    from emu_data.sources.youtube import stage

    def no_work(*args, **kwargs):
        raise AssertionError("reached Ray or the network")

    monkeypatch.setattr(stage_runner, "run_stage", no_work)
    monkeypatch.setattr(ytdl, "extract", no_work)
    options = ytdl.YtdlOptions(impersonate="chrome")
    videos = [inputs.VideoInput("id", "GJLlxj_dtq8", "GJLlxj_dtq8")]
    with pytest.raises(ValueError) as caught:
        stage.make_youtube(videos, stage.YoutubeConfig(), options, net.NetPolicy(),
                           stage_runner.OutputOptions(tmp_path / "out"))
    assert str(caught.value) == IMPERSONATE_MESSAGE and not (tmp_path / "out").exists()
    from emu_data.core import errors

    assert isinstance(caught.value, errors.UsageError)   # exit 2 on the command line, not a traceback
    with pytest.raises(ValueError, match="curl_cffi"):
        stage.units(videos, stage.YoutubeConfig(), options, net.NetPolicy())


def test_every_ytdl_call_refuses_impersonate_under_the_address_guard(monkeypatch, tmp_path):
    import yt_dlp

    from emu_data import net

    def no_ytdl(*args, **kwargs):
        raise AssertionError("yt-dlp was started")

    monkeypatch.setattr(yt_dlp.YoutubeDL, "__init__", no_ytdl)
    options, guarded = ytdl.YtdlOptions(impersonate="chrome"), net.NetPolicy()
    calls = [lambda: ytdl.extract("https://www.youtube.com/watch?v=GJLlxj_dtq8", options, guarded),
             lambda: ytdl.expand("https://www.youtube.com/playlist?list=PL123", options, guarded),
             lambda: ytdl.download({"id": "GJLlxj_dtq8"}, "sb0", "en", "vtt", False, tmp_path, options, guarded)]
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        assert not isinstance(caught.value, ytdl.YtdlError) and str(caught.value) == IMPERSONATE_MESSAGE


def test_impersonate_is_passed_on_where_private_addresses_are_allowed():
    from emu_data import net
    from emu_data.sources.youtube import stage

    options, trusted = ytdl.YtdlOptions(impersonate="chrome"), net.NetPolicy(allow_private_addresses=True)
    ytdl.check_guardable(options, trusted)
    ytdl.check_guardable(ytdl.YtdlOptions(), net.NetPolicy())
    assert len(stage.units([], stage.YoutubeConfig(), options, trusted)) == 0
    assert str(options.params()["impersonate"]).startswith("chrome")
