import pytest

from emu_data.core import align

F = b"\xff\xd8frame"


def test_text_since_previous_frame_goes_before_each_frame_and_trailing_text_last():
    frames = [(0.0, F), (5.0, F), (10.0, F)]
    cues = [(1.0, "one"), (3.0, "two"), (5.0, "tie"), (12.0, "end")]
    got = align.interleave(frames, cues)
    assert got == [(0.0, F), (1.0, "one two"), (5.0, F), (5.0, "tie"), (10.0, F), (12.0, "end")]


def test_frame_comes_first_on_ties_and_times_never_decrease():
    got = align.interleave([(0.0, F), (2.0, F)], [(0.0, "zero"), (2.0, "two")])
    assert [item for _, item in got] == [F, "zero", F, "two"]
    times = [t for t, _ in got]
    assert times == sorted(times)


def test_blank_cues_are_dropped():
    assert align.interleave([(0.0, F)], [(1.0, "  ")]) == [(0.0, F)]


def test_chunks_hold_at_most_n_frames_and_text_travels_with_its_frame():
    positions = [(0, F), (1, "a"), (2, F), (3, "b"), (4, F), (5, "c")]
    chunks = align.chunk(positions, 2)
    assert chunks == [[(0, F), (1, "a"), (2, F)], [(3, "b"), (4, F), (5, "c")]]


def test_trailing_text_joins_the_last_full_chunk():
    positions = [(0, F), (1, F), (2, "end")]
    assert align.chunk(positions, 2) == [[(0, F), (1, F), (2, "end")]]


def test_chunk_refuses_zero():
    with pytest.raises(ValueError):
        align.chunk([], 0)
