"""Quality filters as the reports show them: `stats` counts (dict and table), the run summary's
filters cell and the preview's in-place markers, from small corpora written by the real writers.

A filtered video is a status row whose reason is one of its source's filters, its message
ending "(N frames)"; what cleaning took from a kept sample is its meta's "cleaning" object.
Malformed cleaning (wrong types, a list, meta that is no JSON) is skipped, never an error.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from emu_data.core import corpus, records
from emu_data.core.corpus import UnitWriter
from emu_data.core.shards import ShardLimits
from emu_data.inspect import stats
from emu_data.inspect.preview import format_clock, render_html, write_preview
from emu_data.pipeline import summary
from emu_data.pipeline.stages import PlannedStage

YT = "yt_storyboard"
HOSTILE = "<script>alert(1)</script>"


def _jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 9), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _cleaned_sample() -> dict:
    """Frames at 0, 20, 45 s and subtitles at 5, 32 s kept; two static frames, a blank one and
    three cues cleaned out between them."""
    meta = {"video_id": "v1",
            "cleaning": {"removed": [[12.5, "[Music]"], [30.0, "♪"], [31.0, "..."]], "words_removed": 3,
                         "static_frames": [10.0, 15.0], "blank_frames": [40.0]},
            "speech": {"words": 412, "words_per_minute": 151.6, "asr_confidence": 0.873,
                       "language": "en", "language_probability": 0.981}}
    return records.sample(f"{YT}:v1:0", YT, [_jpeg(), "hello there", _jpeg(), "today we cook", _jpeg()],
                          times=[0.0, 5.0, 20.0, 32.0, 45.0], meta=meta)


# Wrong types everywhere: only the 12.0 frame and the text of the first entry count (its words
# counted from the text, as words_removed is no number).
MALFORMED = {"cleaning": {"removed": [["12", "[Music]"], "bare", [1.0], [2.0, 5]], "words_removed": "3",
                          "static_frames": ["10", True, None, 12.0, float("nan")], "blank_frames": {"a": 1}},
             "speech": {"words": 10**400, "words_per_minute": "fast", "language": None}}


def _samples() -> list[dict]:
    second = {"cleaning": {"removed": [[50.0, "[MUSIC]"], [52.0, "[Applause] now"]], "words_removed": 3,
                           "static_frames": [55.0, 56.0, 57.0], "blank_frames": [60.0]}}
    return [
        _cleaned_sample(),
        records.sample(f"{YT}:v1:1", YT, [_jpeg(), "more"], times=[48.0, 49.0], meta=second),
        records.sample(f"{YT}:v2:0", YT, [_jpeg(), "an older corpus"], times=[0.0, 1.0], meta={"video_id": "v2"}),
        records.sample(f"{YT}:v3:0", YT, [_jpeg(), "odd"], times=[0.0, 1.0], meta=MALFORMED),
        records.sample(f"{YT}:v4:0", YT, [_jpeg(), "odd"], times=[0.0, 1.0], meta={"cleaning": [1, 2]}),
        # cleaning is counted for any source that carries it, not only the one with filters
        records.sample("laion:1", "laion", [_jpeg(), "a cleaning lady"], meta={"cleaning": {"blank_frames": [0.0]}}),
        records.sample("mmc4:d1", "mmc4", ["no cleaning here", _jpeg()], meta={"note": "cleaning"}),
    ]


def _not_json_sample() -> dict:
    """A row whose meta is no JSON (the writers refuse one; a damaged corpus may hold it)."""
    row = records.sample(f"{YT}:v5:0", YT, [_jpeg(), "x"], times=[0.0, 1.0])
    return {**row, "meta": '{"cleaning": {"static_frames": [1.0] not json'}


def _status_rows() -> list[dict]:
    return [
        records.status(f"{YT}:v1", YT, "ok", samples=2),
        records.status(f"{YT}:f1", YT, "low_speech", error=records.filtered_message("3 words in 4:00", 13)),
        records.status(f"{YT}:f2", YT, "low_speech", error=records.filtered_message("9 words in 9:00", 117)),
        records.status(f"{YT}:f3", YT, "static_video", error=records.filtered_message("one scene", 20)),
        records.status(f"{YT}:f4", YT, "too_short", error="12 s, under 60 s"),   # says no frames: 0
        records.status(f"{YT}:f5", YT, "no_subtitles", error="no captions (40 frames)"),   # a failure, no filter
        records.status("laion:9", "laion", "low_speech", error="not laion's filter (5 frames)"),
        records.status("laion:1", "laion", "ok", samples=1),
        records.status("mmc4:d1", "mmc4", "ok", samples=1),
    ]


def _write_corpus(out: Path, samples: list[dict], statuses: list[dict], raw: list[dict] = ()) -> Path:
    """A finished corpus directory (manifest and all), through the real unit writer."""
    writer = UnitWriter(out, "u-00000", ShardLimits(max_rows=4))   # several shards per kind
    for row in samples:
        writer.add_sample(row)
    for row in raw:
        writer.samples.write(row)   # past the record check, as a damaged corpus would be
    for row in statuses:
        writer.add_status(row)
    corpus.finalize(out, stage="youtube", config={}, fingerprint="f", parts=[writer.commit("f", "d")])
    return out


@pytest.fixture(scope="module")
def filtered(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("filters") / "corpus", _samples(), _status_rows(),
                         raw=[_not_json_sample()])


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A corpus no filter touched (LAION only)."""
    return _write_corpus(tmp_path_factory.mktemp("clean") / "corpus",
                         [records.sample("laion:1", "laion", [_jpeg(), "caption"])],
                         [records.status("laion:1", "laion", "ok", samples=1)])


YT_FILTERS = {
    "videos": {"too_short": {"videos": 1, "frames": 0}, "low_speech": {"videos": 2, "frames": 130},
               "language_mismatch": {"videos": 0, "frames": 0}, "static_video": {"videos": 1, "frames": 20}},
    "frames": {"static": 6, "blank": 2},
    "text": {"removed": 6, "words_removed": 7,
             "top": {"[music]": 3, "...": 1, "[applause] now": 1, "♪": 1}},
}
LAION_FILTERS = {"videos": {}, "frames": {"static": 0, "blank": 1},
                 "text": {"removed": 0, "words_removed": 0, "top": {}}}


def test_stats_dict_counts_filtered_videos_dropped_frames_and_removed_text(filtered):
    found = stats.compute(filtered).to_dict()["filters"]
    # mmc4: no filters declared and no cleaning in its samples, so no report
    assert found == {YT: YT_FILTERS, "laion": LAION_FILTERS}
    assert list(found[YT]["videos"]) == ["too_short", "low_speech", "language_mismatch", "static_video"]


def test_stats_of_a_corpus_without_filters_or_cleaning(clean):
    assert stats.compute(clean).to_dict()["filters"] == {}
    assert "filters:" not in stats.format_table(stats.compute(clean))


def test_compute_filters_equals_what_compute_counts(filtered):
    just_filters = stats.compute_filters(filtered)
    assert {s: f.to_dict() for s, f in just_filters.items()} == {YT: YT_FILTERS, "laion": LAION_FILTERS}


def test_stats_table_has_a_filters_section(filtered):
    table = stats.format_table(stats.compute(filtered))
    section = table.split("\nfilters:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section == [
        "  laion",
        "    dropped frames      0 static, 1 blank",
        "  yt_storyboard",
        "    too_short           1 video (0 frames)",
        "    low_speech          2 videos (130 frames)",
        "    language_mismatch   0 videos (0 frames)",
        "    static_video        1 video (20 frames)",
        "    dropped frames      6 static, 2 blank",
        "    removed text        6 (7 words): [music] 3, ... 1, [applause] now 1, ♪ 1",
    ]


def test_stats_table_shows_a_removed_strings_control_characters_escaped():
    hostile = stats.FilterStats(removed=1, words_removed=1, removed_text=Counter({"\x1b[2j\nboom": 1}))
    table = stats.format_table(stats.CorpusStats(filters={YT: hostile}))
    assert "\x1b" not in table and "\\x1b[2j\\nboom 1" in table


def test_top_removed_keeps_the_ten_most_frequent():
    many = stats.FilterStats(removed_text=Counter({f"[cue {i:02d}]": i for i in range(1, 15)}))
    assert list(many.to_dict()["text"]["top"]) == [f"[cue {i:02d}]" for i in range(14, 4, -1)]


def _stage(name: str, out: Path) -> PlannedStage:
    return PlannedStage(name=name, command="youtube", argv=[], out=out, needs=[], line=1, params={})


def test_run_summary_shows_the_filters_of_each_corpus_stage(filtered, clean):
    # a run no filter touched keeps the table it had
    assert summary.summarize([_stage("pairs", clean)]).splitlines()[0].split()[-1] == "input"
    table = summary.summarize([_stage("videos", filtered), _stage("pairs", clean)]).splitlines()
    assert table[0].split()[-1] == "filters"
    videos = next(line for line in table if line.startswith("videos "))
    assert videos.endswith(
        "laion: static frames 0, blank 1; yt_storyboard: too_short 1 video (0 frames), low_speech 2 (130), "
        "static_video 1 (20), static frames 6, blank 2, annotations 6 (7 words)")
    assert next(line for line in table if line.startswith("pairs ")).endswith("  -")


def test_run_summary_cell_of_one_filtered_source(tmp_path):
    out = _write_corpus(tmp_path / "corpus", [_cleaned_sample()], [
        records.status(f"{YT}:v1", YT, "ok", samples=1),
        records.status(f"{YT}:f1", YT, "low_speech", error=records.filtered_message("quiet", 13)),
        records.status(f"{YT}:f2", YT, "static_video", error=records.filtered_message("one scene", 1))])
    assert summary.filters_cell(out) == ("low_speech 1 video (13 frames), static_video 1 (1), "
                                         "static frames 2, blank 1, annotations 3 (3 words)")


def _flow(page: str) -> list[str]:
    """The flow's kept times and markers, in page order."""
    flow = re.search(r'<div class="flow">(.*?)</div><details>', page, re.S).group(1)
    return re.findall(r'<span class="time">[^<]*</span>|(?:static|blank) frame dropped(?: · \d+:\d\d)?'
                      r'|removed: <s>.*?</s>(?: · \d+:\d\d)?', flow)


def test_preview_marks_what_cleaning_took_in_place():
    page = render_html([_cleaned_sample()], "cleaned")
    assert _flow(page) == [
        '<span class="time">0:00.0</span>', '<span class="time">0:05.0</span>',
        "static frame dropped · 0:10", "removed: <s>[Music]</s> · 0:12", "static frame dropped · 0:15",
        '<span class="time">0:20.0</span>',
        "removed: <s>♪</s> · 0:30", "removed: <s>...</s> · 0:31",
        '<span class="time">0:32.0</span>', "blank frame dropped · 0:40", '<span class="time">0:45.0</span>',
    ]
    assert page.count('<div class="pos dropped">') == 3 and page.count('<div class="pos removed">') == 3


def test_preview_meta_says_what_cleaning_took_and_the_speech():
    page = render_html([_cleaned_sample()], "cleaned")
    details = re.search(r"<details>(.*?)</details>", page, re.S).group(1)
    assert ('<p class="judgement">cleaning: 2 static, 1 blank frames dropped; 3 annotations removed (3 words)</p>'
            in details)
    assert ('<p class="judgement">speech: 412 words, 152 words/min, ASR confidence 0.87, language en (p 0.98)</p>'
            in details)


def test_preview_escapes_removed_text_and_speech_language():
    meta = {"cleaning": {"removed": [[3.0, HOSTILE]], "words_removed": 1},
            "speech": {"language": '"><img src=x onerror=alert(1)>', "asr_confidence": None}}
    record = records.sample(f"{YT}:h:0", YT, [_jpeg(), "hi"], times=[0.0, 5.0], meta=meta)
    page = render_html([record], "hostile")
    assert "<script" not in page and "<img src=x" not in page
    assert "removed: <s>&lt;script&gt;alert(1)&lt;/script&gt;</s> · 0:03" in page
    assert "speech: language &quot;&gt;&lt;img src=x onerror=alert(1)&gt;</p>" in page


def test_preview_of_malformed_cleaning_shows_what_is_usable():
    malformed = records.sample(f"{YT}:v3:0", YT, [_jpeg(), "odd", _jpeg()], times=[0.0, 11.0, 20.0],
                               meta=MALFORMED)
    as_list = records.sample(f"{YT}:v4:0", YT, [_jpeg()], times=[0.0],
                             meta={"cleaning": [1, 2], "speech": "loud"})
    page = render_html([malformed, as_list, _not_json_sample()], "malformed")
    assert page.count('<section class="card">') == 3
    # the one usable frame time in place; the text with a string for a time, untimed, last
    assert _flow(page)[:5] == ['<span class="time">0:00.0</span>', '<span class="time">0:11.0</span>',
                               "static frame dropped · 0:12", '<span class="time">0:20.0</span>',
                               "removed: <s>[Music]</s>"]
    assert "cleaning: 1 static, 0 blank frame dropped; 1 annotation removed (1 word)" in page
    assert page.count("cleaning: ") == 1 and "speech: " not in page
    assert "meta (not valid JSON)" in page


def test_preview_page_of_a_filtered_corpus(filtered, tmp_path):
    out = tmp_path / "preview.html"
    assert write_preview(filtered, out, n=20) == 8   # the non-JSON meta row too
    page = out.read_text(encoding="utf-8")
    assert "<th>filters</th>" in page
    assert "static frame dropped · 0:10" in page and "blank frame dropped · 1:00" in page


def test_format_clock():
    assert [format_clock(t) for t in (0.0, 12.5, 59.96, 60.0, 3725.0)] == ["0:00", "0:12", "0:59", "1:00", "62:05"]
    assert format_clock(float("nan")) == "nan"
