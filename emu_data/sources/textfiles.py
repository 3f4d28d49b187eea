"""Line-oriented input files (MMC4 JSONL, WebVid CSV): which files, their names, and reading
one unit's byte range back with the hash taken when the run was planned.

Units of these sources are byte ranges found by one sequential read at planning; a worker
seeks straight to its range, and the hash check turns a file edited under a running job
into a clear error instead of silently shifted rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Callable

from emu_data import files

# compressed streams cannot be entered at a unit's offset without reading all before them
COMPRESSED = (".zip", ".gz", ".zst", ".bz2", ".xz")


class InputChanged(RuntimeError):
    """A unit's bytes no longer hash as at planning: the file changed under the run."""


def input_files(inputs: list[Path], suffix: str) -> list[Path]:
    """Files as given; a directory stands for its *suffix files in name order."""
    found = []
    for path in map(Path, inputs):
        if path.is_dir():
            found += [_regular(p) for p in sorted(path.glob(f"*{suffix}"))]
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        elif path.suffix in COMPRESSED:
            raise ValueError(f"{path}: compressed input; decompress it to {suffix} first")
        else:
            found.append(_regular(path))
    return found


def _regular(path: Path) -> Path:
    """path, if it is a regular file: a FIFO or device would block planning's read for ever."""
    if not files.is_regular(path):
        raise ValueError(f"{path}: not a regular file")
    return path


def distinct_stems(files: list[Path], stem: Callable[[Path], str]) -> list[str]:
    """Each file's stem; the stem names units and keys, so two files with one stem are refused."""
    stems = [stem(p) for p in files]
    clash = sorted(s for s, n in Counter(stems).items() if n > 1)
    if clash:
        raise ValueError(f"input files must have distinct names; repeated: {', '.join(clash)}")
    return stems


def read_range(path: str, start: int, end: int, sha1: str, where: str) -> bytes:
    """Bytes [start, end) of path, read by seeking; InputChanged if they hash otherwise."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if hashlib.sha1(data).hexdigest() != sha1:
        raise InputChanged(f"{path}: {where} changed since the run was planned; rerun to plan again")
    return data
