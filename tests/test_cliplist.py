"""Clip lists (issue 19, part 1): Panda-70M rows, flat clips, and a clip's storyboard tiles."""

import ast
import math

import pytest
from hypothesis import given, settings, strategies as st

from emu_data.sources.youtube import cliplist
from emu_data.sources.youtube.cliplist import Clip, ClipRejected

# A row as Panda-70M's CSV has it: Python-literal lists, single quotes, a caption's apostrophe
# in double quotes.
PANDA_ROW = {
    "videoID": "--0edUL8zmA",
    "url": "https://www.youtube.com/watch?v=--0edUL8zmA",
    "timestamp": "[['0:00:00.000', '0:00:05.005'], ['0:00:05.005', '0:00:12.012'], ['0:01:02.500', '0:01:10.000']]",
    "caption": "['A man is talking to the camera.', \"a woman's hands are cooking food\", 'a dog runs']",
    "matching_score": "[0.4512, 0.3901, 0.5]",
}


def test_a_panda_row_gives_its_clips_with_times_captions_and_scores():
    clips = cliplist.panda_row(PANDA_ROW)
    assert clips == [
        Clip("--0edUL8zmA", 0.0, 5.005, "A man is talking to the camera.", 0.4512, 0),
        Clip("--0edUL8zmA", 5.005, 12.012, "a woman's hands are cooking food", 0.3901, 1),
        Clip("--0edUL8zmA", 62.5, 70.0, "a dog runs", 0.5, 2)]
    assert clips[0].key == "--0edUL8zmA:0-5005" and clips[2].key == "--0edUL8zmA:62500-70000"


@pytest.mark.parametrize("change, reason", [
    ({"timestamp": "[['0:00:05.000', '0:00:01.000']]", "caption": "['x y']", "matching_score": ""}, "bad_timestamp"),
    ({"timestamp": "[['0:00:00', '0:99:00']]", "caption": "['x y']", "matching_score": ""}, "bad_timestamp"),
    ({"timestamp": "[['-1', '3']]", "caption": "['x y']", "matching_score": ""}, "bad_timestamp"),
    ({"timestamp": "[['0', 'nan']]", "caption": "['x y']", "matching_score": ""}, "bad_timestamp"),
    ({"timestamp": "[[0, 1, 2]]", "caption": "['x y']", "matching_score": ""}, "bad_timestamp"),
    ({"timestamp": "[[0, 3]]", "caption": "['  ... ']", "matching_score": ""}, "empty_caption"),
    ({"timestamp": "[[0, 3]]", "caption": "[None]", "matching_score": ""}, "empty_caption"),
    ({"videoID": "../../etc", "url": "", "timestamp": "[[0, 3]]", "caption": "['x']", "matching_score": ""},
     "invalid_id"),
])
def test_a_bad_clip_has_its_reason(change, reason):
    row = {**PANDA_ROW, **change}
    found = cliplist.panda_row(row)
    assert isinstance(found[0], ClipRejected) and found[0].reason == reason


def test_one_bad_clip_leaves_its_neighbours():
    row = {**PANDA_ROW, "timestamp": "[['0:00:00', '0:00:04'], ['0:00:09', '0:00:02'], ['0:00:10', '0:00:20']]"}
    first, bad, last = cliplist.panda_row(row)
    assert isinstance(bad, ClipRejected) and bad.reason == "bad_timestamp"
    assert (first.start, first.end, last.start, last.end, last.index) == (0.0, 4.0, 10.0, 20.0, 2)


@pytest.mark.parametrize("change", [
    {"timestamp": "__import__('os').system('true')"}, {"timestamp": "{'a': 1}"}, {"timestamp": ""},
    {"timestamp": "[" * 5000}, {"caption": "['one']"}, {"matching_score": "[0.1]"},
    {"timestamp": "[" + "[0, 1]," * (cliplist.MAX_CLIPS + 1) + "]"}, {"caption": "x" * (cliplist.MAX_FIELD + 1)},
])
def test_a_row_whose_lists_cannot_be_read_is_one_malformed_row(change):
    (found,) = cliplist.panda_row({**PANDA_ROW, **change})
    assert isinstance(found, ClipRejected) and found.reason == "malformed_row"


def test_the_video_id_comes_from_the_url_when_the_row_names_none():
    clips = cliplist.panda_row({**PANDA_ROW, "videoID": ""})
    assert {c.video_id for c in clips} == {"--0edUL8zmA"}


@pytest.mark.parametrize("text, seconds", [("0:00:05.005", 5.005), ("1:02.5", 62.5), ("62.5", 62.5), (7, 7.0),
                                           ("10:00:00", 36000.0), (" 0:01 ", 1.0)])
def test_times_as_clip_lists_write_them(text, seconds):
    assert cliplist.parse_time(text) == pytest.approx(seconds)


TIMES = [5.0 * k for k in range(25)]   # a 2-minute video's storyboard, a tile every 5 s


def test_a_clip_gets_the_tiles_inside_it_thinned_evenly():
    assert cliplist.tiles_for(TIMES, Clip("a" * 11, 10.0, 30.0, "x"), frames=8) == [2, 3, 4, 5, 6]
    thinned = cliplist.tiles_for(TIMES, Clip("a" * 11, 0.0, 120.0, "x"), frames=8)
    assert len(thinned) == 8 and thinned == sorted(set(thinned)) and thinned[0] <= 2 and thinned[-1] >= 22


def test_a_clip_shorter_than_the_spacing_gets_the_tile_nearest_its_middle_or_its_reason():
    assert cliplist.tiles_for(TIMES, Clip("a" * 11, 11.0, 13.9, "x"), frames=8) == [2]   # middle 12.45: tile at 10
    with pytest.raises(ClipRejected) as caught:
        cliplist.tiles_for(TIMES, Clip("a" * 11, 11.0, 13.9, "x"), frames=8, min_frames=2)
    assert caught.value.reason == "too_few_frames"
    with pytest.raises(ClipRejected) as caught:
        cliplist.tiles_for(TIMES, Clip("a" * 11, 130.0, 140.0, "x"), frames=8, duration=121.0)
    assert caught.value.reason == "past_duration"


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, 200), length=st.floats(0.01, 200), frames=st.integers(1, 16),
       min_frames=st.integers(0, 4), spacing=st.floats(0.5, 30), count=st.integers(1, 80))
def test_tiles_are_ordered_distinct_inside_the_clip_and_at_most_frames(start, length, frames, min_frames,
                                                                       spacing, count):
    times = [spacing * k for k in range(count)]
    c = Clip("a" * 11, start, start + length, "x")
    try:
        chosen = cliplist.tiles_for(times, c, frames, min_frames)
    except ClipRejected as e:
        assert e.reason == "too_few_frames"
        return
    assert chosen == sorted(set(chosen)) and 1 <= len(chosen) <= max(frames, 1)
    inside = [t for t in times if c.start <= t <= c.end]
    if inside:
        assert all(c.start <= times[i] <= c.end for i in chosen)
        assert len(chosen) == min(len(inside), frames)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["videoID", "url", "timestamp", "caption", "matching_score"]),
                       st.one_of(st.text(max_size=80), st.none(), st.integers(), st.floats()), max_size=5))
def test_any_row_gives_clips_or_reasons_never_an_exception(row):
    for found in cliplist.panda_row(row):
        assert isinstance(found, (Clip, ClipRejected))
        if isinstance(found, Clip):
            assert math.isfinite(found.start) and found.end > found.start and found.caption


def test_a_flat_row_is_one_clip_with_configurable_columns():
    columns = cliplist.FlatColumns(video="url", start="from", end="to", caption="text", score="sim")
    row = {"url": "https://youtu.be/GJLlxj_dtq8", "from": "0:00:03.5", "to": 9, "text": "a  cat", "sim": "0.61"}
    assert cliplist.flat_row(row, columns) == Clip("GJLlxj_dtq8", 3.5, 9.0, "a cat", 0.61)
    assert cliplist.flat_row({"video_id": "GJLlxj_dtq8", "start": 1, "end": 2, "caption": ""}).reason == "empty_caption"
    assert cliplist.flat_row({}).reason == "invalid_id"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["video_id", "start", "end", "caption", "matching_score"]),
                       st.one_of(st.text(max_size=40), st.none(), st.integers(), st.floats(), st.booleans()),
                       max_size=5))
def test_any_flat_row_is_a_clip_or_a_reason(row):
    assert isinstance(cliplist.flat_row(row), (Clip, ClipRejected))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), st.floats(allow_nan=False, allow_infinity=False), st.integers(),
                          st.lists(st.text(alphabet="0:.5' ", max_size=8), max_size=2)), max_size=6))
def test_the_json_fast_path_reads_lists_as_literal_eval_does(value):
    text = repr(value)
    assert cliplist._parse_literal(text) == ast.literal_eval(text)
