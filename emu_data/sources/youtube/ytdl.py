"""Everything that asks yt-dlp for something: metadata, playlist expansion, downloads.

No YouTube scraping of our own: metadata comes from `YoutubeDL.extract_info`, storyboard
mosaics and subtitle files from yt-dlp's real download path (`process_ie_result` with
download=True), so proxies, cookies, impersonation and sleep intervals apply as they do
for yt-dlp users. yt-dlp's errors are mapped to status-table reasons here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emu_data.core import errors, secrets
from emu_data import net
from emu_data.net import guard as net_guard
from emu_data.core.options import option
from emu_data.sources.youtube.inputs import VIDEO_ID

log = logging.getLogger(__name__)


class YtdlError(errors.ItemFailed, RuntimeError):
    """A yt-dlp failure with its status-table reason. Still a RuntimeError: inputs.from_refs
    takes any RuntimeError from expanding a list as that list's failure."""


@dataclass(frozen=True)
class YtdlOptions:
    """Pass-through options for yt-dlp. Sleep defaults follow yt-dlp's `-t sleep` preset:
    guest sessions are blocked after a few hundred videos an hour without them. The sleep
    between videos is the identity pool's to keep (pool.py), across every worker: yt-dlp's
    own would be per process, so each added worker would add load on one identity."""

    cookies: str | None = option(None, metavar="FILE", help="Netscape cookies file (the pool of one identity)")
    proxy: str | None = option(None, metavar="URL", help="proxy for every request (the pool of one identity)")
    sleep_requests: float = option(0.75, parse=float, help="seconds between requests")
    sleep_interval: float = option(10.0, parse=float,
                                   help="seconds between two videos on one identity, across every worker")
    max_sleep_interval: float = option(20.0, parse=float, help="random upper bound of it")
    sleep_subtitles: float = option(5.0, parse=float, help="seconds before each subtitle")
    extractor_args: dict = option(default_factory=dict, parse=lambda text: parse_extractor_args(text),
                                  show=lambda value: None, metavar="ARGS",
                                  help="yt-dlp syntax, e.g. 'youtube:player_skip=webpage,configs;skip=translated_subs'")
    impersonate: str | None = option(None, metavar="TARGET",
                                     help="browser to impersonate (needs curl_cffi, whose sockets the address "
                                          "guard cannot see: only with --allow-private-addresses)")
    retries: int = 3                      # the command line's --retries
    socket_timeout: float = 20.0          # the command line's --timeout

    def params(self, **extra) -> dict:
        """YoutubeDL params for these options, plus `extra` (download settings)."""
        params = {
            "quiet": True, "no_warnings": True, "noprogress": True, "logger": _Logger(),
            "cachedir": False, "color": "no_color", "retries": self.retries,
            "fragment_retries": self.retries, "socket_timeout": self.socket_timeout,
            "sleep_interval_requests": self.sleep_requests or None,
            "sleep_interval_subtitles": self.sleep_subtitles or None,
            "extractor_args": self.extractor_args,
        }
        if self.cookies:
            params["cookiefile"] = self.cookies
        if self.proxy:
            params["proxy"] = self.proxy
        if self.impersonate:
            from yt_dlp.networking.impersonate import ImpersonateTarget

            params["impersonate"] = ImpersonateTarget.from_str(self.impersonate)
        params.update(extra)
        return params


IMPERSONATE_UNGUARDED = ("--impersonate downloads through curl_cffi, which the address guard cannot "
                         "watch; add --allow-private-addresses if the metadata you feed is trusted")


class UnguardedImpersonation(errors.UsageError):
    """Impersonation asked for under the address guard: a usage error (a ValueError), refused up front."""


def check_guardable(options: YtdlOptions, policy: net.NetPolicy | None) -> None:
    """Fail closed: curl_cffi (--impersonate) connects in C, below net_guard's socket.connect
    hook, so under a policy that refuses private addresses nothing would watch its sockets.
    Checked where units are planned (before Ray) and again on every yt-dlp call."""
    _check_guardable(options.impersonate, policy)


def _check_guardable(impersonate, policy: net.NetPolicy | None) -> None:
    if impersonate and policy is not None and not policy.allow_private_addresses:
        raise UnguardedImpersonation(IMPERSONATE_UNGUARDED)


class _Logger:
    """Route yt-dlp's output to logging: a data tool's stdout is for its own report."""

    def debug(self, msg):
        log.debug(msg)

    def info(self, msg):
        log.debug(msg)

    def warning(self, msg):
        log.info(secrets.redact(msg))

    def error(self, msg):
        log.debug(secrets.redact(msg))  # errors are raised as exceptions and become status rows


BeforeRequest = Callable[[str], None]   # called with a request's host before yt-dlp sends it


def extract(url: str, options: YtdlOptions, policy: net.NetPolicy | None = None,
            before_request: BeforeRequest | None = None) -> dict:
    """Metadata of one video (no download). policy: the address guard to run yt-dlp under;
    before_request(host): the identity pool's politeness, before each request."""
    return _run(lambda ydl: ydl.extract_info(url, download=False), options.params(), policy, before_request)


def expand(url: str, options: YtdlOptions, policy: net.NetPolicy | None = None) -> list[str]:
    """The video URLs of a playlist or channel, by yt-dlp's flat extraction (one request
    per page of the list, none per video)."""
    info = _run(lambda ydl: ydl.extract_info(url, download=False),
                options.params(extract_flat="in_playlist"), policy)
    if info.get("_type") not in ("playlist", "multi_video"):
        # a single video after all: by its id where YouTube's extractor read one (planning
        # needs every video's id to find repeats), else as given (the stage says what it is)
        video_id = info.get("id")
        if info.get("extractor_key") == "Youtube" and isinstance(video_id, str) and VIDEO_ID.fullmatch(video_id):
            return [f"https://www.youtube.com/watch?v={video_id}"]
        return [url]
    entries = info.get("entries") or []
    return [e.get("url") or e.get("id") for e in entries if e and (e.get("url") or e.get("id"))]


@dataclass(frozen=True)
class Downloaded:
    storyboard: Path
    subtitles: Path | None   # None: none asked for


def download(info: dict, format_id: str, lang: str | None, sub_ext: str | None, auto: bool,
             workdir: Path, options: YtdlOptions, policy: net.NetPolicy | None = None,
             before_request: BeforeRequest | None = None) -> Downloaded:
    """Download one storyboard format and one subtitle track (none when `lang` is None: clip
    lists bring their own captions) with yt-dlp's own downloaders (every fragment and
    subtitle connection under `policy`'s address guard; a declared size over its byte cap
    is refused by yt-dlp's max_filesize)."""
    params = options.params(
        format=format_id,
        outtmpl={"default": "%(id)s.%(format_id)s.%(ext)s"},
        paths={"home": str(workdir), "temp": str(workdir)},
        writesubtitles=lang is not None and not auto, writeautomaticsub=lang is not None and auto,
        **({"subtitleslangs": [lang], "subtitlesformat": sub_ext} if lang is not None else {}),
        # a storyboard with a hole would shift every later tile's time: fail instead
        skip_unavailable_fragments=False,
        overwrites=True, noplaylist=True, check_formats=False,
        **({"max_filesize": policy.max_bytes} if policy else {}),
    )
    info = _loadable(info)
    result = _run(lambda ydl: ydl.process_ie_result(info, download=True), params, policy, before_request)
    return Downloaded(_storyboard_path(result, workdir),
                      _subtitle_path(result, lang, workdir) if lang is not None else None)


def _loadable(info: dict) -> dict:
    """The info dict as yt-dlp's --load-info-json takes a file: without yt-dlp's private
    working state (__finaldir, __files_to_move, filepath, requested_downloads, ...), which
    an info-json file must not steer. And without webpage_url: yt-dlp would re-extract."""
    from yt_dlp import YoutubeDL

    clean = YoutubeDL.sanitize_info(info, remove_private_keys=True)
    return {k: v for k, v in clean.items() if k not in ("webpage_url", "original_url")}


def _in_workdir(path, workdir: Path) -> Path | None:
    """`path` when it names a file inside workdir, else None: only our own work files are read."""
    if not isinstance(path, str) or not path:
        return None
    found = Path(path)
    return found if found.resolve().is_relative_to(workdir.resolve()) and found.is_file() else None


def _storyboard_path(result: dict, workdir: Path) -> Path:
    for item in result.get("requested_downloads") or []:
        found = _in_workdir(item.get("filepath"), workdir)
        if found:
            return found
    found = sorted(workdir.glob("*.mhtml"))
    if not found:
        raise YtdlError("no_storyboard", "yt-dlp wrote no storyboard file")
    return found[0]


def _subtitle_path(result: dict, lang: str, workdir: Path) -> Path:
    sub = (result.get("requested_subtitles") or {}).get(lang) or {}
    found = _in_workdir(sub.get("filepath"), workdir)
    if not found:
        raise YtdlError("no_subtitles", f"yt-dlp wrote no {lang} subtitle file")
    return found


def _run(action, params: dict, policy: net.NetPolicy | None = None, before_request: BeforeRequest | None = None):
    from yt_dlp.utils import YoutubeDLError

    _check_guardable(params.get("impersonate"), policy)  # before the try: not a video's status
    # yt-dlp opens its own sockets: the guard sits under them (a configured proxy is allowed)
    guard = (net_guard.connection_guard(net_guard.with_proxy_allowed(policy, params.get("proxy")))
             if policy is not None else contextlib.nullcontext())
    try:
        with guard, _youtube_dl()(params) as ydl:
            ydl.before_request = before_request
            return action(ydl)
    except (YoutubeDLError, OSError) as e:
        raise YtdlError(classify(str(e)), _clean(str(e))) from None
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        # yt-dlp trips over an info dict it did not make (a wrong type deep inside): that
        # video's status row says so; the unit and the run go on
        raise YtdlError("ytdlp_error", f"yt-dlp failed on this video: {type(e).__name__}: {e}") from None


@functools.cache
def _youtube_dl():
    """YoutubeDL that calls before_request(host) ahead of every request it makes: pages,
    API calls, storyboard fragments, subtitles (its extractors and downloaders all send
    through YoutubeDL.urlopen). Made on first use: yt-dlp is imported only when needed."""
    from urllib.parse import urlsplit

    from yt_dlp import YoutubeDL

    class PoliteYoutubeDL(YoutubeDL):
        before_request: BeforeRequest | None = None

        def urlopen(self, req):
            if self.before_request is not None:
                url = req if isinstance(req, str) else getattr(req, "url", None) or req.get_full_url()
                self.before_request(urlsplit(url).hostname or "")
            return super().urlopen(req)

    return PoliteYoutubeDL


# First match wins: the age gate before the bot check (both say "Sign in to confirm"),
# the bot check and rate limits before the generic HTTP codes they carry.
_REASONS = (
    ("blocked_address", r"blocked_address:"),   # net_guard refused a connection
    ("age_restricted", r"Sign in to confirm your age|age.restricted|inappropriate for some users"),
    ("bot_check", r"not a bot|LOGIN_REQUIRED|Sign in to confirm|po[ _-]?token"),
    ("rate_limited", r"HTTP Error 429|Too Many Requests|try again later|rate.?limit"),
    ("unavailable", r"Video unavailable|Private video|has been removed|is not available|"
                    r"members-only|This live event|Premieres in|account .* terminated"),
)
_HTTP = re.compile(r"HTTP Error (\d{3})")


def classify(message: str) -> str:
    """The status-table reason for a yt-dlp error message."""
    for reason, pattern in _REASONS:
        if re.search(pattern, message, re.IGNORECASE):
            return reason
    code = _HTTP.search(message)
    if code:
        return f"http_{code.group(1)}"
    if re.search(r"timed out|timeout", message, re.IGNORECASE):
        return "timeout"
    if re.search(r"Unsupported URL|is not a valid URL", message):
        return "invalid_input"
    return "download_error"


_GUARD = re.compile(r"blocked_address: connection to \S+ refused \([^)]*\)")   # net_guard.refusal


def _clean(message: str) -> str:
    """One line for the status row. yt-dlp messages carry ANSI colours and a bug-report
    footer (later lines: dropped), and a fragment error is "ERROR: \\r[download] Got error:
    ...", where \\r is a progress-line reset, not a line end. net_guard's refusal, quoted
    deep inside (after "Failed to establish a new connection:"), is the cause and names the
    address: it leads."""
    message = secrets.redact(re.sub(r"\x1b\[[0-9;]*m", "", message))
    guard = _GUARD.search(message)
    if guard:
        return guard.group(0)
    first = " ".join(message.strip().split("\n", 1)[0].split())
    return first or "yt-dlp failed"


# bot_check: a rerun with other (or rested) identities can fetch what every identity was refused
RETRYABLE = frozenset({"bot_check", "rate_limited", "timeout", "download_error", "connection_error",
                       "http_500", "http_502", "http_503", "http_504", "http_429", "truncated"})


def parse_extractor_args(text: str) -> dict:
    """yt-dlp's --extractor-args syntax: 'IE:key=v1,v2;key2=v' (IEs space-separated)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    for block in text.split():
        ie, _, args = block.partition(":")
        if not args:
            raise errors.UsageError(f"--extractor-args {block!r}: expected IE:key=value")
        for pair in args.split(";"):
            key, _, values = pair.partition("=")
            parsed.setdefault(ie.lower(), {})[key.strip().replace("-", "_")] = values.split(",")
    return parsed
