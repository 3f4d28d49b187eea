"""One live run per output directory.

Two drivers writing one --out used to both finish "successfully" with shards that no longer
matched their manifest's sha256. A run now holds an exclusive flock on `OUT/.run.lock` from
before it looks at the directory until its manifest is written; a second run finds it held
and stops at once (RunInProgress: exit 2) naming the first, whose pid, host, command and
start time are written into the lock file.

Why flock: the kernel releases it when the holder dies, kill -9 included, so a crashed run
never leaves a stale lock and the next run resumes at once (the writers' lock in corpus.py
then waits for any Ray worker the dead driver left writing). It is held per open file, so
two runs inside one process exclude each other too; descriptors are not inherited by
exec'd children (Ray's processes), so a leftover worker never holds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from emu_data.core import errors, files
from emu_data.core.shards import OutputError, writing

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunInProgress(errors.UsageError):
    """Another live run holds the output directory."""


@contextlib.contextmanager
def held(out: Path, what: str = "") -> Iterator[None]:
    """Hold OUT's run lock for the block; RunInProgress at once if another run holds it."""
    out = Path(out)
    with writing(out):
        if out.exists() and not out.is_dir():
            raise OutputError(out, "not a directory")
        out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise OutputError.of(out / RUN_LOCK, e) from None
        # nothing can be written here by anyone: a finished output is still read and reported
        # as complete, and the first write a run attempts fails with its own clear line
        yield
        return
    try:
        if _lock(fd, out):
            _describe_holder(fd, what)
        yield
    finally:
        os.close(fd)   # releases the lock


def _lock(fd: int, out: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunInProgress(f"{out} is being written by another run ({holder(out)}); wait for it to "
                                "finish, or stop it (a stopped run's lock is released at once and a rerun "
                                "resumes), or use another --out") from None
        if e.errno not in _NO_LOCKS:
            raise OutputError.of(out / RUN_LOCK, e) from None
        log.warning("%s: no file locks on this filesystem (%s); two runs on this --out at once would "
                    "corrupt it", out, os.strerror(e.errno))
        return False


def _describe_holder(fd: int, what: str) -> None:
    """Who holds the lock, for the message a second run prints (best effort)."""
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                       "command": what or " ".join(["emu-data", *sys.argv[1:]])[:500]})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)


def holder(out: Path) -> str:
    """'pid 123 on host, since TIME: COMMAND' from the lock file, as far as it can be read."""
    try:
        info = files.loads_json(files.read_bytes(Path(out) / RUN_LOCK, limit=4096))
        return (f"pid {int(info['pid'])} on {str(info['host'])[:100]}, since {str(info['started'])[:40]}: "
                f"{str(info['command'])[:300]}")
    except (files.UnreadableFile, KeyError, TypeError, ValueError):
        return "a process whose details cannot be read"
