"""Where a media reference's bytes come from: a URL over HTTP, or a file under a media root.

WebVid-10M's video URLs were withdrawn in 2024 and research groups keep local copies; LAION
and MMC4 users often hold the images already (a mirror, an earlier img2dataset run). So a
media reference in an input list (contentUrl, URL, raw_url) may be

* an http(s) URL: fetched by net.Fetcher, the address guard and every other limit unchanged
  (any other scheme goes there too, and is its invalid_url);
* a file:// URL, an absolute path, or a path relative to a media root (`--media-root DIR`,
  repeatable; a relative path is looked for under each root in order): read from disk.

`Media` is the one object the downloading sources read references through (WebVid and
MMC4 for every reference; LAION for its local rows, its URLs going to img2dataset under
net.guard as before), so they share one boundary. The lists are written by strangers, so a local reference is as hostile as a URL:
`file:///etc/passwd`, `../../x`, a symlink out of the root, a FIFO (opening one blocks), a
device (/dev/zero never ends), a NUL byte. Each ends as a FetchError with a status reason,
never as an exception, a hang or a read outside the roots:

  local_file_refused   a local reference, and no media root given: nothing local is read
  invalid_url          a file URL naming another host, with a query or fragment, not
                       absolute, or a NUL byte in the reference
  outside_media_root   the path (after `..`, symlinks, percent-decoding) lies outside every root
  missing_file         no such file under any root
  not_a_file           a directory, FIFO, socket, device or dangling symlink
  too_large            more than the net policy's max_bytes (--max-bytes), as a download
  read_error           any other OSError (permissions, a name too long, I/O)

The order of the checks is the guard: resolve first (os.path.realpath: `..` and every
symlink, without opening anything), refuse what lies outside the roots, lstat the resolved
path (a FIFO or device is refused before any open, so nothing blocks), and only then open,
with O_NOFOLLOW | O_NONBLOCK. The open descriptor is checked again (fstat: the same regular
file as the lstat; /proc/self/fd: still inside a root), so a symlink swapped in between the
checks and the open reads nothing either.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import unquote_to_bytes, urlsplit

from emu_data import net
from emu_data.core.errors import UsageError
from emu_data.core.options import option

__all__ = ["LocalMedia", "Media", "is_local", "read_local", "read_named"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LOCAL_HOSTS = ("", "localhost")   # file://localhost/x is file:///x (RFC 8089)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))
_CHUNK = 8 * 2**20
_MISSING = (errno.ENOENT, errno.ENOTDIR)


@dataclass(frozen=True)
class LocalMedia:
    """Local copies of the media an input list names. Roots are stored resolved (realpath),
    so a root that is itself a symlink is where the user said, and confinement compares
    resolved paths with resolved paths."""

    media_root: tuple[str, ...] = option(
        (), flag="--media-root", repeat=True, parse=Path, metavar="DIR",
        help="a folder of local copies of the media (a mirror, an earlier download): a URL that is a "
             "path relative to DIR, or a file:// URL or absolute path inside it, is read from disk, never "
             "from outside DIR (outside_media_root); repeatable, a relative path is looked for under each "
             "DIR in order; files over --max-bytes are too_large, as downloads; without it, local paths "
             "and file:// URLs are refused (local_file_refused)")
    image_root: str | None = option(
        None, parse=Path, metavar="DIR",
        help="MMC4 images by their image_name, as MMC4's download_images.py lays a shard out "
             "(DIR/<jsonl stem>_images/NAME), as OpenFlamingo reads them (DIR/<shard number>/NAME) or "
             "in one folder (DIR/NAME); an image not found there is missing_file (its raw_url is not "
             "fetched)")

    def __post_init__(self):
        object.__setattr__(self, "media_root", tuple(_root(p, "--media-root") for p in self.media_root))
        if self.image_root is not None:
            object.__setattr__(self, "image_root", _root(self.image_root, "--image-root"))


def _root(path, flag: str) -> str:
    resolved = os.path.realpath(os.fspath(path))
    if not os.path.isdir(resolved):
        raise UsageError(f"{flag} {_text(os.fspath(path))}: not a directory")
    return resolved


# ---- the dispatcher ---------------------------------------------------------------------------

class Media:
    """Bytes of media references, each from wherever it lives; thread-safe, one per unit."""

    def __init__(self, policy: net.NetPolicy = net.NetPolicy(), local: LocalMedia = LocalMedia()):
        self.policy, self.local = policy, local
        self._fetcher = net.Fetcher(policy)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self._fetcher.close()

    def get(self, ref: str) -> net.FetchResult:
        """An http(s) URL fetched, a local reference read under the media roots; FetchError
        with the reason otherwise."""
        if is_local(ref):
            return read_local(ref, self.local.media_root, self.policy.max_bytes)
        return self._fetcher.get(ref)

    def get_named(self, label: str, names: list[str]) -> net.FetchResult:
        """The first of `names` (paths relative to the image root) that exists there."""
        if self.local.image_root is None:
            raise net.FetchError("local_file_refused", f"{_text(label)}: no --image-root to look in")
        return read_named(label, names, self.local.image_root, self.policy.max_bytes)


def is_local(ref: str) -> bool:
    """A file:// URL or a path (no scheme); http(s) and every other scheme are URLs."""
    scheme = _SCHEME.match(ref)
    return scheme is None or scheme.group(1).lower() == "file"


# ---- the confined reader ------------------------------------------------------------------------

def read_local(ref: str, roots: tuple[str, ...], max_bytes: int) -> net.FetchResult:
    """A file:// URL or path read from disk, confined to `roots` (resolved directories)."""
    if not roots:
        raise net.FetchError("local_file_refused", f"{_text(ref)}: a local file, and no --media-root "
                                                   "was given to read local files from")
    path = _checked(ref, _path_of(_checked(ref, ref)))
    candidates = [path] if os.path.isabs(path) else [os.path.join(root, path) for root in roots]
    return _read_first(ref, candidates, roots, max_bytes)


def read_named(label: str, names: list[str], root: str, max_bytes: int) -> net.FetchResult:
    """The first of `names`, paths relative to `root`, that exists there (confined to it)."""
    candidates = [os.path.join(root, _checked(label, name)) for name in names]
    return _read_first(label, candidates, (root,), max_bytes)


def _checked(ref: str, path: str) -> str:
    """A path the OS can take: no NUL byte, and no lone surrogate outside the range that
    stands for an undecodable byte (JSON can spell \\ud800; os functions would raise)."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise net.FetchError("invalid_url", f"{_text(ref)}: a lone surrogate in a path") from None
    if "\x00" in path:
        raise net.FetchError("invalid_url", f"{_text(ref)}: a NUL byte in a path")
    return path


def _path_of(ref: str) -> str:
    """The path a reference names: a path as written (no percent-decoding: % is a file name
    character), a file URL's path percent-decoded to the exact bytes (non-UTF-8 names too)."""
    if _SCHEME.match(ref) is None:
        return ref
    try:
        parts = urlsplit(ref)
    except ValueError as e:   # an unbalanced [ in the host part
        raise net.FetchError("invalid_url", f"{_text(ref)}: {e}") from None
    if "?" in ref or "#" in ref:
        raise net.FetchError("invalid_url", f"{_text(ref)}: a file URL with a query or fragment "
                                            "(a file name's ? and # are written %3F and %23)")
    if parts.netloc.lower() not in _LOCAL_HOSTS:
        raise net.FetchError("invalid_url", f"{_text(ref)}: a file URL naming host {parts.netloc!r}; "
                                            "only this machine's files (file:///path) are read")
    path = os.fsdecode(unquote_to_bytes(os.fsencode(parts.path)))   # fsencode: a raw \udcff is byte 0xff
    if not path.startswith("/"):
        raise net.FetchError("invalid_url", f"{_text(ref)}: not an absolute file URL (file:///path)")
    return path


def _read_first(ref: str, candidates: list[str], roots: tuple[str, ...], max_bytes: int) -> net.FetchResult:
    """The first candidate that resolves inside a root and exists, read; else why not."""
    outside = False
    for candidate in candidates:
        resolved = os.path.realpath(candidate)   # lstat and readlink only: nothing is opened
        if not _inside(resolved, roots):
            outside = True   # never stat'ed, never opened
            continue
        try:
            before = os.lstat(resolved)
        except OSError as e:
            if e.errno in _MISSING:
                continue
            raise _read_error(ref, e) from None
        return _read(ref, resolved, before, roots, max_bytes)
    if outside:
        raise net.FetchError("outside_media_root", f"{_text(ref)}: resolves outside every media root "
                                                   f"({_roots(roots)})")
    raise net.FetchError("missing_file", f"{_text(ref)}: no such file under {_roots(roots)}")


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _read(ref: str, path: str, before: os.stat_result, roots: tuple[str, ...], max_bytes: int) -> net.FetchResult:
    """One regular file, checked before opening and again once open, read up to the cap."""
    if not stat.S_ISREG(before.st_mode):
        raise net.FetchError("not_a_file", f"{_text(ref)}: a {_kind(before.st_mode)}, not a regular file")
    if before.st_size > max_bytes:
        raise net.FetchError("too_large", f"{_text(ref)}: {before.st_size} bytes > max_bytes {max_bytes}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:   # ELOOP: the last part became a symlink since the lstat
        raise _read_error(ref, e) from None
    try:
        _check_opened(ref, fd, before, roots)
        body = _read_capped(ref, fd, max_bytes)
    finally:
        os.close(fd)
    return net.FetchResult(url=ref, status=200, headers={}, body=body, attempts=1)


def _check_opened(ref: str, fd: int, before: os.stat_result, roots: tuple[str, ...]) -> None:
    """The open file is the one checked, and still inside a root: a directory above it
    swapped for a symlink between the checks and the open would fail one of these."""
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        raise net.FetchError("read_error", f"{_text(ref)}: the file changed while it was opened")
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return   # no /proc (not Linux): the identity check above is what there is
    if not _inside(opened.removesuffix(" (deleted)"), roots):
        raise net.FetchError("outside_media_root", f"{_text(ref)}: opened outside every media root")


def _read_capped(ref: str, fd: int, max_bytes: int) -> bytes:
    """At most max_bytes; a file that grew past the cap since its lstat is too_large."""
    body = bytearray()
    while True:
        try:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - len(body)))
        except OSError as e:
            raise _read_error(ref, e) from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise net.FetchError("too_large", f"{_text(ref)}: more than max_bytes {max_bytes}")


def _read_error(ref: str, e: OSError) -> net.FetchError:
    return net.FetchError("read_error", f"{_text(ref)}: {e.strerror or e}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symlink that leads nowhere (dangling or a loop)")):
        if test(mode):
            return name
    return "special file"


def _roots(roots: tuple[str, ...]) -> str:
    return ", ".join(_text(r) for r in roots)


def _text(value: str) -> str:
    """For a status message: at most 300 characters, and a non-UTF-8 byte of a file name
    (a lone surrogate once decoded) written \\udcXX, since the shard writer stores UTF-8."""
    return value[:300].encode("utf-8", "backslashreplace").decode("utf-8")
