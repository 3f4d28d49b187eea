"""The `interleaved` record's invariants, checked a column at a time over a whole batch.

schema.interleaved_problems checks one row as Python objects: right for a writer that makes
rows one by one, and for its messages. A reader of a finished corpus (export) moves record
batches; turning each row into Python objects only to check it cost more than writing it.
unsound_rows finds, with pyarrow compute and numpy over validity bitmaps and offsets (no
value is copied), every row interleaved_problems would fault except for meta's JSON (see
below); the few it finds are then given to interleaved_problems for their messages. A test
holds the two to the same answer on random tables.

meta's JSON is not parsed here: a reader that needs it (tars.members) parses it anyway and
treats a bad one as its own error; one that copies the column (Parquet) copies the string.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emu_data.core import schema


def unsound_rows(batch: pa.Table | pa.RecordBatch) -> np.ndarray:
    """A bool per row of an `interleaved` table (its columns and types already checked):
    True where the row breaks a record invariant other than meta being a JSON object.
    A table's columns are taken chunked as they are: flattening keeps row order across
    chunks, so positions are found from lengths alone."""
    bad = np.zeros(batch.num_rows, dtype=bool)
    for f in schema.record("interleaved").fields:
        if not f.nullable:
            bad |= mask(pc.is_null(batch.column(f.name)))
    texts, images = batch.column("texts"), batch.column("images")
    positions = lengths(texts)
    bad |= (positions != lengths(images)) | (positions == 0)
    bad |= ~mask(pc.is_in(_plain(batch.column("source")), value_set=pa.array(schema.allowed_sources())))
    bad[_position_faults(texts, images, ~bad)] = True
    bad[_time_faults(batch.column("times"), positions, ~bad)] = True
    return bad


def _position_faults(texts, images, eligible: np.ndarray) -> np.ndarray:
    """Rows (of the eligible: texts and images of equal length) with a position that holds
    both a text and an image, or neither."""
    has_text = mask(pc.is_valid(pc.list_flatten(texts)))
    flat_images = pc.list_flatten(images)
    has_image = mask(pc.and_(pc.is_valid(flat_images), pc.is_valid(pc.struct_field(flat_images, "bytes"))))
    rows = _parents(texts)            # the row of each text position
    text_at = np.flatnonzero(eligible[rows])
    rows = rows[text_at]
    within = text_at - _starts(texts)[rows]
    clash = has_text[text_at] == has_image[_starts(images)[rows] + within]
    return np.unique(rows[clash])


def _time_faults(times, positions: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Rows (of the eligible) whose times, when present, are not one non-negative,
    non-decreasing number per position."""
    wrong_length = mask(pc.is_valid(times)) & (lengths(times) != positions)
    values = np.asarray(pc.fill_null(pc.list_flatten(times), np.nan).to_numpy(zero_copy_only=False),
                        dtype=np.float64)
    rows = _parents(times)
    with np.errstate(invalid="ignore"):
        wrong = np.isnan(values) | (values < 0)
        wrong[1:] |= (rows[1:] == rows[:-1]) & (values[1:] < values[:-1])   # after a NaN: no order to break
    faults = wrong_length.copy()
    faults[rows[wrong]] = True
    return np.flatnonzero(faults & eligible)


def lengths(lists) -> np.ndarray:
    """Each list's length, 0 for a null list (flattening skips what a null list spans)."""
    return np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _starts(lists) -> np.ndarray:
    """Where each list's first element is in the flattened array."""
    sizes = lengths(lists)
    return np.cumsum(sizes) - sizes


def _parents(lists) -> np.ndarray:
    """The row of each element of the flattened array."""
    return np.repeat(np.arange(len(lists), dtype=np.int64), lengths(lists))


def mask(values) -> np.ndarray:
    """A bool array or chunked array as numpy, null as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _plain(column):
    """A dictionary-encoded column as its values."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column
