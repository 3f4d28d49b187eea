"""Input files: which files every source reads (input_files: LAION parquet too), their names,
and, for the line-oriented ones (MMC4 JSONL, WebVid CSV), reading one unit's byte range
back with the hash taken when the run was planned.

Units of these sources are byte ranges found by one sequential read at planning; a worker
seeks straight to its range, and the hash check turns a file edited under a running job
into a clear error instead of silently shifted rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

from emu_data.core import errors, files

log = logging.getLogger(__name__)

# compressed streams cannot be entered at a unit's offset without reading all before them
COMPRESSED = (".zip", ".gz", ".zst", ".bz2", ".xz")


class InputChanged(RuntimeError):
    """A unit's bytes no longer hash as at planning: the file changed under the run."""


def input_files(inputs: list[Path], suffix: str) -> list[Path]:
    """The files a source reads (LAION parquet, MMC4 jsonl, WebVid csv), by one rule:

    - the arguments in the order given (input order decides which of two items with one key
      is the first); a directory stands for the *suffix files directly inside it, in name
      order (listed by files.walk, sorted; sub-folders are not entered);
    - a file named directly is taken whatever its name;
    - one file reached twice (named twice, named and inside a folder named too, through a
      symlink: the same resolved path) is taken once, where it first came;
    - compressed files (COMPRESSED) are never read, no reader can (units are byte ranges):
      named, refused ("decompress it first"); inside a folder, *suffix.gz and the like are
      left out with a warning naming them;
    - anything but a regular file (a FIFO would block planning's read for ever, a device
      never ends) is refused by name, named or inside a folder; a path that does not exist
      is FileNotFoundError.

    Paths come back as given (a folder's files as folder / name); none found is no error
    here (the caller says what it needed)."""
    found, seen = [], set()
    for path in map(Path, inputs):
        if path.is_dir():
            listed = next(files.walk(path, max_depth=0), None)   # the folder only: no warning
            if listed is None:
                raise files.UnreadableFile(path, "folder cannot be listed")
            folder, _, names = listed
            packed = [n for n in names if n.endswith(tuple(suffix + c for c in COMPRESSED))]
            if packed:
                log.warning("%s: %d compressed file(s) left out (decompress them to %s to read them), e.g. %s",
                            path, len(packed), suffix, packed[0])
            candidates = [folder / n for n in names if n.endswith(suffix)]
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        elif path.suffix in COMPRESSED:
            raise errors.UsageError(f"{path}: compressed input; decompress it to {suffix} first")
        else:
            candidates = [path]
        for candidate in candidates:
            key = _regular(candidate).resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def _regular(path: Path) -> Path:
    """path, if it is a regular file: a FIFO or device would block planning's read for ever."""
    if not files.is_regular(path):
        raise errors.UsageError(f"{path}: not a regular file")
    return path


def distinct_stems(files: list[Path], stem: Callable[[Path], str]) -> list[str]:
    """Each file's stem; the stem names units and keys, so two files with one stem are refused."""
    stems = [stem(p) for p in files]
    clash = sorted(s for s, n in Counter(stems).items() if n > 1)
    if clash:
        raise errors.UsageError(f"input files must have distinct names; repeated: {', '.join(clash)}")
    return stems


def read_range(path: str, start: int, end: int, sha1: str, where: str) -> bytes:
    """Bytes [start, end) of path, read by seeking; InputChanged if they hash otherwise."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if hashlib.sha1(data).hexdigest() != sha1:
        raise InputChanged(f"{path}: {where} changed since the run was planned; rerun to plan again")
    return data
