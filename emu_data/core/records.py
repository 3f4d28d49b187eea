"""Builders for corpus rows: every source makes its samples and status rows through these."""

from __future__ import annotations

import json
import re
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


# A filtered item's status message ends in how many frames the filter took, so that stats
# can count them without a column of their own (written and read only here).
_FRAMES_TAKEN = re.compile(r"\((\d+) frames?\)$")


def filtered_message(message: str, frames: int) -> str:
    """The status message of an item a quality filter took, saying how many frames it had."""
    return f"{message} ({frames} frame{'' if frames == 1 else 's'})"


def frames_taken(message: str | None) -> int:
    """How many frames a filtered item's status message says it took (0 if it says none)."""
    found = _FRAMES_TAKEN.search(_IDENTITY.sub("", message or ""))
    return int(found.group(1)) if found else 0


_IDENTITY = re.compile(r" ?\[identity ([A-Za-z0-9._-]+)\]$")


def with_identity(message: str | None, name: str) -> str:
    """A status message naming the identity that served or refused the item (a YouTube
    client: by its name, never its cookies or proxy), at its end: the reason stays first."""
    return f"{message} [identity {name}]" if message else f"[identity {name}]"


def identity_of(message: str | None) -> str | None:
    """The identity a status message names, or None."""
    found = _IDENTITY.search(message or "")
    return found.group(1) if found else None


def status(key: str, source: str, status: str, *, input: str | None = None,
           error: str | None = None, attempts: int = 1, samples: int = 0) -> dict:
    """A `status` row: what happened to one input item."""
    row = {"key": key, "source": source, "input": input, "status": status,
           "error": error, "attempts": attempts, "samples": samples}
    problems = schema.status_problems(row)
    if problems:
        raise RecordError(key, problems)
    return row
