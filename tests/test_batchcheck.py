"""batchcheck.unsound_rows (column-wise) gives the answer schema.interleaved_problems (row by
row) gives, except for meta's JSON, on random tables: nulls everywhere, lists of unequal
length, positions with both or neither, times short, negative, NaN or going back, foreign
sources, slices and several batches."""

import math

import pyarrow as pa
from hypothesis import given, settings, strategies as st

from emu_data.core import batchcheck, schema

IMAGE = {"bytes": b"\xff\xd8\xff", "path": None}
texts_st = st.lists(st.one_of(st.none(), st.just("a")), max_size=4)
images_st = st.lists(st.sampled_from([None, IMAGE, {"bytes": None, "path": "p.jpg"}]), max_size=4)
times_st = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0, -1.0, math.nan])),
                                         max_size=4))


@st.composite
def rows(draw):
    texts = draw(st.one_of(st.none(), texts_st))
    # mostly well-formed positions, so that the position and time rules are reached
    if texts is not None and draw(st.booleans()):
        images = [None if t is not None else IMAGE for t in texts]
    else:
        images = draw(st.one_of(st.none(), images_st))
    times = draw(times_st)
    if texts is not None and draw(st.booleans()):
        times = sorted(range(len(texts)))
        times = [float(t) for t in times]
    return {"key": draw(st.one_of(st.none(), st.just("laion:1"))),
            "source": draw(st.sampled_from(["laion", "mmc4", "flickr", None])),
            "texts": texts, "images": images, "times": times, "meta": draw(st.sampled_from(["{}", None]))}


def _python_answer(row: dict) -> bool:
    return any(rule != "meta_json" for rule, _ in schema.interleaved_problems(row))


@settings(max_examples=300, deadline=None)
@given(st.lists(rows(), max_size=12), st.integers(0, 3), st.integers(1, 5))
def test_unsound_rows_agrees_with_the_row_check(batch, skip, chunk):
    table = pa.Table.from_pylist(batch, schema=schema.arrow_schema("interleaved"))
    table = table.slice(min(skip, len(batch)))       # a slice: offsets that do not start at 0
    table = pa.Table.from_batches(table.to_batches(max_chunksize=chunk), schema=table.schema)
    expected = [_python_answer(r) for r in batch[min(skip, len(batch)):]]
    assert batchcheck.unsound_rows(table).tolist() == expected


def test_a_sound_corpus_batch_has_no_unsound_rows():
    good = {"key": "mmc4:1", "source": "mmc4", "texts": ["a", None, "b"], "images": [None, IMAGE, None],
            "times": [0.0, 0.0, 1.5], "meta": "{}"}
    assert schema.interleaved_problems(good) == []
    table = pa.Table.from_pylist([good] * 3, schema=schema.arrow_schema("interleaved"))
    assert batchcheck.unsound_rows(table).tolist() == [False] * 3
