"""Who fetches from YouTube: identities (a cookies file and/or a proxy, with a budget).

YouTube rations a client, not a job: a guest session gets a few hundred videos an hour
before "Sign in to confirm you're not a bot" or HTTP 429 (yt-dlp's wiki: ~300/h as a guest,
~1,000/h with an account and a PO token). An identity is one such client: a cookies file
(an account), a proxy (an egress address), or both, with the videos an hour it may fetch.
`--identities FILE` lists them; `--cookies`/`--proxy` alone are the pool of one.

An identity is known by its name in every log line, status row and report: its proxy URL
may hold a password and its cookies file holds a session, and neither is ever quoted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from emu_data.core import errors, files, secrets, yamlsafe
from emu_data.core.options import option, positive_int

GUEST_VIDEOS_PER_HOUR = 300.0    # yt-dlp's wiki: a guest session, before bot checks start
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
KEYS = ("name", "cookies", "proxy", "videos_per_hour", "concurrent")
MAX_IDENTITIES = 100_000
MAX_FILE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Identity:
    name: str
    cookies: str | None = None               # a Netscape cookies file
    proxy: str | None = field(default=None, repr=False)   # may hold a password: never shown
    videos_per_hour: float = GUEST_VIDEOS_PER_HOUR        # 0: no budget
    concurrent: int = 1                      # videos at once on this identity

    def describe(self) -> str:
        """The identity for a report: its name and what it uses, the proxy's password masked."""
        parts = [f"cookies {self.cookies}" if self.cookies else None,
                 f"proxy {secrets.redact(self.proxy)}" if self.proxy else None]
        used = ", ".join(p for p in parts if p) or "no cookies, no proxy (a guest)"
        budget = f"{self.videos_per_hour:g} videos/h" if self.videos_per_hour else "no budget"
        return f"{self.name}: {used}; {budget}, {self.concurrent} at once"


@dataclass(frozen=True)
class IdentityOptions:
    """The identity pool's options: who fetches, and how a refusal is taken."""

    identities: Path | None = option(
        None, parse=Path, metavar="FILE",
        help="YAML or JSON list of identities, each {name, cookies, proxy, videos_per_hour, concurrent}: "
             "videos are spread over them within each one's hourly budget (instead of --cookies/--proxy)")
    videos_per_hour: float = option(
        GUEST_VIDEOS_PER_HOUR, parse=lambda text: _budget(text, "--videos-per-hour"), metavar="N",
        help="videos an hour for an identity that names no budget, and for --cookies/--proxy alone "
             "(yt-dlp's guest figure); 0: no budget")
    cooldown: float = option(60.0, parse=lambda text: _number(text, "--cooldown"), metavar="S",
                             help="an identity's pause after a bot check or a rate limit, doubled on each "
                                  "one in a row")
    max_cooldown: float = option(3600.0, parse=lambda text: _number(text, "--max-cooldown"), metavar="S",
                                 help="the longest pause")
    retire_after: int = option(3, parse=positive_int, metavar="N",
                               help="bot checks in a row after which an identity is retired for the run")
    window: float = 3600.0   # the sliding window of videos_per_hour: an hour (benchmarks shorten it)


def _number(text, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise errors.UsageError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise errors.UsageError(f"{what}: {text!r} must be a finite number >= 0")
    return value


def _budget(value, what: str) -> float:
    budget = _number(value, what)
    if 0 < budget < 1:
        raise errors.UsageError(f"{what}: {value!r}: a budget is 0 (none) or at least one video an hour")
    return budget


def pool_of(options: IdentityOptions, cookies: str | None, proxy: str | None) -> list[Identity]:
    """The identities a run uses: --identities FILE, else the pool of one (--cookies/--proxy,
    or a guest with neither)."""
    if options.identities is None:
        identity = Identity("default", cookies, proxy, options.videos_per_hour)
        problem = proxy_problem(proxy) if proxy else None
        if problem:
            raise errors.UsageError(f"--proxy: {problem}")
        return [identity]
    if cookies or proxy:
        raise errors.UsageError("--identities names each identity's cookies and proxy: "
                                "drop --cookies/--proxy (or list them as one more identity)")
    return load(options.identities, options.videos_per_hour)


def load(path: Path, default_budget: float = GUEST_VIDEOS_PER_HOUR) -> list[Identity]:
    """The identities a file lists. Relative cookies paths are the file's neighbours. A file
    that is not a list of identities is a usage error naming the entry and what is wrong."""
    path = Path(path)
    try:
        data = files.read_bytes(path, limit=MAX_FILE_BYTES)
    except (OSError, files.UnreadableFile) as e:
        raise errors.UsageError(f"--identities {path}: {e}") from None
    entries = yamlsafe.load(yamlsafe.decode(data, str(path)), str(path))  # JSON is YAML
    if not isinstance(entries, list) or not entries:
        raise errors.UsageError(f"--identities {path}: expected a non-empty list of identities "
                                "({name, cookies, proxy, videos_per_hour, concurrent})")
    if len(entries) > MAX_IDENTITIES:
        raise errors.UsageError(f"--identities {path}: {len(entries)} identities (at most {MAX_IDENTITIES})")
    identities = [_identity(entry, i, path, default_budget) for i, entry in enumerate(entries, 1)]
    seen: set[str] = set()
    for identity in identities:
        if identity.name in seen:
            raise errors.UsageError(f"--identities {path}: the name {identity.name!r} is used twice")
        seen.add(identity.name)
    return identities


def _identity(entry, number: int, path: Path, default_budget: float) -> Identity:
    where = f"--identities {path}: identity {number}"
    if not isinstance(entry, dict):
        raise errors.UsageError(f"{where}: expected a mapping with a name, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in KEYS)
    if unknown:
        raise errors.UsageError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                                f"an identity has {', '.join(KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise errors.UsageError(f"{where}: name {yamlsafe.clip(repr(name), 70)} must be 1-64 letters, digits, "
                                ". _ or - (it names the identity in logs and status rows)")
    where = f"--identities {path}: identity {name!r}"
    cookies = _cookies(entry.get("cookies"), path, where)
    proxy = entry.get("proxy")
    if proxy is not None:
        problem = proxy_problem(proxy) if isinstance(proxy, str) else "not a string"
        if problem:
            raise errors.UsageError(f"{where}: proxy {problem}")
    budget = entry.get("videos_per_hour", default_budget)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise errors.UsageError(f"{where}: videos_per_hour must be a number (0: no budget)")
    budget = _budget(budget, f"{where}: videos_per_hour")
    concurrent = entry.get("concurrent", 1)
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or not 1 <= concurrent <= 1024:
        raise errors.UsageError(f"{where}: concurrent must be a whole number from 1 to 1024")
    return Identity(name, cookies, proxy, budget, concurrent)


def _cookies(value, path: Path, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise errors.UsageError(f"{where}: cookies must be the path of a Netscape cookies file")
    cookies = Path(value).expanduser()
    cookies = cookies if cookies.is_absolute() else path.parent / cookies
    if not files.is_regular(cookies):
        raise errors.UsageError(f"{where}: cookies file {cookies} is not there (or not a regular file)")
    return str(cookies)


def proxy_problem(url: str) -> str | None:
    """What is wrong with a proxy URL (None: well-formed); never quotes its password."""
    from urllib.parse import urlsplit

    shown = secrets.redact(url)
    if any(c.isspace() for c in url) or "\0" in url:
        return f"{yamlsafe.clip(repr(shown), 80)} holds white space"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"{yamlsafe.clip(repr(shown), 80)}: {e}"
    if parts.scheme.lower() not in PROXY_SCHEMES:
        return f"{yamlsafe.clip(repr(shown), 80)}: scheme must be one of {', '.join(PROXY_SCHEMES)}"
    if not parts.hostname:
        return f"{yamlsafe.clip(repr(shown), 80)} names no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{yamlsafe.clip(repr(shown), 80)}: a proxy URL is scheme://[user:password@]host[:port]"
    del port
    return None
