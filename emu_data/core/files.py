"""Reading files a stranger may have written: regular files only, bounded JSON, a bounded walk.

Every reader of an output directory (validate, stats, preview, mix, features, the trainer,
a rerun's resume) can be pointed at a directory someone else made. The families handled
here, once, instead of at each reader:
- a path that is not a regular file (a FIFO blocks `open` forever, a device never ends, a
  directory or socket fails oddly): opened without blocking and refused unless regular;
- JSON nested deeper than any emu-data file (json.loads and every walk after it recurse) or
  holding numbers Python refuses to convert (over 4,300 digits): one JsonError naming the file;
- a directory tree deeper than Python's recursion limit (Path.rglob recurses): walked with
  an explicit stack, symlinked folders not followed, depth bounded;
- an input file's name that becomes part of unit ids, shard names and keys: safe_stem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Iterator

from emu_data.core.errors import UsageError

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64        # emu-data's own files nest a handful of levels
MAX_WALK_DEPTH = 32        # output directories sit a few levels below what a user names
MAX_JSON_BYTES = 1 << 30   # a manifest of a billion-row corpus is far smaller
MAX_STEM = 200             # unit ids and shard names add under 40 to a stem: within NAME_MAX (255)


class UnreadableFile(UsageError):
    """A file that cannot be read as what it should be: one line naming it and why."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class JsonError(UnreadableFile):
    """A file or text that is not JSON within the limits above."""


def open_regular(path) -> int:
    """A read-only descriptor of `path`, which must be a regular file (a symlink to one is
    fine). O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UnreadableFile(path, os.strerror(e.errno) if e.errno else str(e)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableFile(path, f"not a regular file ({_kind(mode)})")
    os.set_blocking(fd, True)
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def is_regular(path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_bytes(path, limit: int = MAX_JSON_BYTES) -> bytes:
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(path, f"larger than {limit} bytes")
    return data


def map_regular(path) -> mmap.mmap:
    """A read-only memory map of a regular file (pages load as they are touched)."""
    fd = open_regular(path)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:   # ValueError: an empty file cannot be mapped
        raise UnreadableFile(path, f"cannot be mapped: {e}") from None
    finally:
        os.close(fd)


def loads_json(text: str | bytes, where: str = "JSON", max_depth: int = MAX_JSON_DEPTH):
    """json.loads with one error for every way the text can fail: not JSON, not UTF-8, a
    number over Python's digit limit, nesting over max_depth (checked without recursion,
    so nothing that walks the result later can recurse too deep)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonError(where, f"nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError) as e:   # JSONDecodeError, UnicodeDecodeError, the 4,300-digit limit
        raise JsonError(where, f"not valid JSON: {_short(e)}") from None
    if depth(value, max_depth) > max_depth:
        raise JsonError(where, f"nested deeper than {max_depth} levels")
    return value


def read_json(path, max_depth: int = MAX_JSON_DEPTH):
    return loads_json(read_bytes(path), str(path), max_depth)


def depth(value, stop: int) -> int:
    """Nesting depth of a JSON value (a scalar is 0), counted up to stop + 1, iteratively."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            if deepest > stop:
                return deepest
            stack.extend((child, level) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def walk(root, max_depth: int = MAX_WALK_DEPTH) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, sub-folder names, other names) top-down, like os.walk, but with an explicit
    stack (no recursion), symlinked folders not entered, folders deeper than max_depth below
    root and unreadable ones skipped. Other names: files, FIFOs, sockets... (callers open
    them with open_regular, which refuses all but regular files)."""
    stack, skipped = [(Path(root), 0)], []
    while stack:
        folder, level = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            skipped.append(folder)
            continue
        dirs = [e.name for e in entries if _is_dir(e)]
        yield folder, dirs, [e.name for e in entries if e.name not in dirs]
        if level < max_depth:
            stack.extend((folder / name, level + 1) for name in reversed(dirs))
        elif dirs:
            skipped.append(folder / dirs[0])
    if skipped:   # said, not silently dropped
        log.warning("%s: %d folder(s) not searched (deeper than %d levels, or unreadable), e.g. %s",
                    root, len(skipped), max_depth, str(skipped[0])[:300])


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _short(error: Exception, limit: int = 200) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_stem(name: str, limit: int = MAX_STEM) -> str:
    """`name` (an input file's name, its suffix taken off) as it may appear in unit ids, shard
    names and keys: ASCII letters, digits, `.`, `_` and `-` kept, every other character (a
    space, a slash, a non-ASCII letter, a surrogate escape) one `_`; never empty ("_").
    Longer than `limit`: its first limit - 9 characters, `-`, and 8 hex digits of the whole
    name's SHA-1, so long names that begin alike stay apart and the shard names built on the
    stem stay within a file name's 255 bytes."""
    stem = _UNSAFE.sub("_", name) or "_"
    if len(stem) <= limit:
        return stem
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem[:limit - 9]}-{digest}"
