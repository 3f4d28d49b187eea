"""The error layer: what a failure means, and what the command line does with it.

- UsageError: the command cannot work with what it was given (a bad option value, a
  missing or foreign path, a recipe or config it cannot use): exit 2, one `error:` line.
- DataFault: the data is at fault (units failed, the output cannot be written): exit 1.
- ItemFailed: one input item failed, with the reason its status row records. A unit catches
  it and goes on; one that reaches the command line is a bug.

Anything else that reaches the command line is a bug too: it propagates with its traceback
(exit_status gives None). Standard library only: every module may import this one.
"""

from __future__ import annotations

import errno
import os
import sys


class UsageError(ValueError):
    """The command cannot work with what it was given (exit 2). A ValueError, so library
    callers that catch ValueError for a bad argument keep working."""


class DataFault(RuntimeError):
    """The data is at fault: the command ran and the input or output let it down (exit 1)."""


class ItemFailed(Exception):
    """One input item failed; `reason` is its status-table reason, str() its message.

    Pickles as itself with every attribute (Ray hands a worker's exception to the driver),
    whatever a subclass's constructor takes: it is rebuilt without calling __init__."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):
        return _rebuild, (type(self), self.args), self.__dict__


def _rebuild(cls: type, args: tuple) -> BaseException:
    return cls.__new__(cls, *args)   # the state (reason, message, ...) is set from __dict__ after


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def disk_full_or_read_only(error: OSError) -> str | None:
    """The cause, in the system's words, of an OSError that a rerun with room would not hit."""
    return os.strerror(error.errno) if error.errno in _DISK_ERRNOS else None


def _is_output_error(error: BaseException) -> bool:
    shards = sys.modules.get("emu_data.core.shards")   # an OutputError was raised: shards is loaded
    return shards is not None and isinstance(error, shards.OutputError)


def exit_status(error: BaseException) -> int | None:
    """2 the command cannot work with what it was given, 1 the data (or the disk) is at
    fault, None a bug: the caller lets it propagate with its traceback."""
    if _is_output_error(error) or isinstance(error, DataFault):
        return 1
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError)):
        return 2
    if isinstance(error, OSError) and disk_full_or_read_only(error) is not None:
        return 1
    return None


def message(error: BaseException, command: str) -> str:
    """The one line `emu-data COMMAND` prints for an error whose exit_status is not None."""
    if _is_output_error(error) or isinstance(error, DataFault):   # "cannot write PATH: cause"
        return f"emu-data {command}: {error}"
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError)):
        return f"emu-data {command}: error: {error}"
    if isinstance(error, OSError) and (reason := disk_full_or_read_only(error)) is not None:
        # a write error from code that does not name its output itself
        return f"emu-data {command}: cannot write {error.filename or 'the output'}: {reason}"
    return f"emu-data {command}: {type(error).__name__}: {error}"
