"""Secrets out of everything we write: logs, status rows, saved configs, `doctor`'s report.

The secrets a run holds are proxy passwords (in proxy URLs: `http://user:PASSWORD@host`)
and cookie values (in cookies files, which we never read into a message). A proxy URL can
turn up anywhere a URL is quoted: in yt-dlp's error messages ("Unable to connect to proxy
http://u:p@h"), in the resolved config saved beside a corpus, in a recipe. So the rule is
applied at the boundaries where text leaves the process, not at each place that quotes a
URL: any `scheme://user:password@` loses its password.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://user:password@ : the userinfo ends at the last @ before the host (a password may
# hold @ or :), never past a character that ends a URL's authority or a quoted string.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@:'\"<>]*):"
                       r"(?P<password>[^\s/?#'\"<>]*)@")


def redact(text: str) -> str:
    """text with every URL password replaced by ***."""
    if "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redacted(value):
    """A JSON-like value (a resolved config, a recipe's params) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redacted(k): redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value


def redact_log_records() -> None:
    """Every log record made in this process from now on loses URL passwords, whichever
    logger made it (ours, yt-dlp's through ytdl._Logger, a library's) and whichever handler
    shows it: a record factory, because handler filters see only their own handler."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if "@" in str(record.msg) or record.args:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken format is the logging module's to report
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record

    factory.redacts = True
    logging.setLogRecordFactory(factory)
