"""Builders for corpus rows: every source makes its samples and status rows through these."""

from __future__ import annotations

import json
from typing import Sequence

from emu_data.core import schema


class RecordError(ValueError):
    """A sample breaks a record invariant; the item it came from goes to the status table."""

    def __init__(self, key: str, problems: list[tuple[str, str]]):
        self.key = key
        self.problems = problems
        super().__init__(f"{key}: " + "; ".join(f"{rule}: {msg}" for rule, msg in problems))


def sample(key: str, source: str, items: Sequence[str | bytes], *,
           times: Sequence[float] | None = None, meta: dict | None = None) -> dict:
    """An `interleaved` row from an ordered list of positions: str is text, bytes an encoded image."""
    texts = [item if isinstance(item, str) else None for item in items]
    images = [{"bytes": item, "path": None} if isinstance(item, bytes) else None for item in items]
    row = {
        "key": key,
        "source": source,
        "texts": texts,
        "images": images,
        "times": [float(t) for t in times] if times is not None else None,
        "meta": _meta_json(meta or {}),
    }
    check(row)
    return row


def _meta_json(meta: dict) -> str:
    """Readable JSON; but a lone surrogate from a hostile source (a title, a caption) cannot
    be stored as UTF-8 and would fail the whole shard: escape such a value instead."""
    text = json.dumps(meta, sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(meta, sort_keys=True, ensure_ascii=True)
    return text


def check(row: dict) -> None:
    problems = schema.interleaved_problems(row)
    if problems:
        raise RecordError(str(row.get("key")), problems)


def status(key: str, source: str, status: str, *, input: str | None = None,
           error: str | None = None, attempts: int = 1, samples: int = 0) -> dict:
    """A `status` row: what happened to one input item."""
    row = {"key": key, "source": source, "input": input, "status": status,
           "error": error, "attempts": attempts, "samples": samples}
    problems = schema.status_problems(row)
    if problems:
        raise RecordError(key, problems)
    return row
