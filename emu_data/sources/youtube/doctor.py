"""`emu-data doctor`: is this machine ready to fetch from YouTube, and is each identity?

What breaks a YouTube run rarely shows at its start: YouTube breaks old yt-dlp releases
within weeks; since yt-dlp 2025.11 a video's formats need a JavaScript runtime (deno, the
only one yt-dlp tries by default) and the yt-dlp-ejs challenge scripts, and without them
formats just go missing; a cookies file that expired makes every video a guest's. So each
is one line here, said before hours are spent: at the start of every `youtube` run
(warnings only) and as `emu-data doctor` (exit 1 when a run would be crippled).

The answers come from yt-dlp itself (its version, its runtime lookup, its ejs import, its
PO-token registry, its cookie jar), so doctor and a run agree. A cookies file is named by
its path and counts, never a value; a proxy only with its password masked.
"""

from __future__ import annotations

import calendar
import http.cookiejar
import importlib.metadata
import io
import json
import logging
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

from emu_data import net
from emu_data.core import files, secrets
from emu_data.sources.youtube.identities import Identity, proxy_problem

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
LABELS = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}
UPGRADE = "pip install -U 'yt-dlp[default,deno]'"
OLD_AFTER_DAYS = 60           # YouTube breaks old releases within weeks
FIRST_EXTERNAL_JS = (2025, 11)  # the first yt-dlp that solves YouTube's JS challenges in deno & co.
JS_RUNTIMES = ("deno",)       # YoutubeDL's default js_runtimes ({'deno': {}}); ytdl.py names none
SIGN_IN = ("SID", "__Secure-1PSID", "__Secure-3PSID", "LOGIN_INFO", "SAPISID")
EXPIRES_SOON_DAYS = 7
MAX_COOKIES_BYTES = 64 * 2**20  # a whole browser's export is a few MB
PROBE_TIMEOUT = 5.0
_EXPIRES = re.compile(r"[0-9]+(?:\.[0-9]+)?")   # yt-dlp's rule for the expiry field


@dataclass(frozen=True)
class Check:
    name: str       # what was checked: yt-dlp, js-runtime, ejs, po-token, identities, cookies:NAME, proxy:NAME
    level: str      # ok | warn | fail
    message: str    # one line for a person, its subject first


def checks(identities: list[Identity], *, probe: bool = False, today: date | None = None) -> list[Check]:
    """One Check per line of the report: yt-dlp and what it needs, then the identities.
    probe: also open a TCP connection to each proxy (the only network use)."""
    now = time.time() if today is None else calendar.timegm(today.timetuple())
    today = today or date.today()
    try:
        importlib.import_module("yt_dlp")   # registers the JS runtimes and plugin kinds the checks read
    except ImportError as e:
        return [Check("yt-dlp", FAIL, f"yt-dlp does not import ({e}): {UPGRADE}")]
    found = []
    for name, check in (("yt-dlp", lambda: _ytdlp(today)), ("js-runtime", _js_runtime), ("ejs", _ejs),
                        ("po-token", _po_tokens)):
        try:
            found.append(check())
        except (ImportError, AttributeError) as e:   # a yt-dlp internal that a newer release moved
            found.append(Check(name, WARN, f"{name}: this yt-dlp cannot tell ({type(e).__name__}: {e})"))
    return found + _identity_checks(identities, probe, now)


def crippled(found: list[Check]) -> bool:
    """Whether a run would be crippled: any check failed."""
    return any(c.level == FAIL for c in found)


def report(found: list[Check]) -> str:
    """One line per check: `ok    yt-dlp 2025.11.12 (21 days old)`, `WARN  ...`, `FAIL  ...`."""
    return "\n".join(f"{LABELS[c.level]:<6}{secrets.redact(c.message)}" for c in found)


def as_json(found: list[Check]) -> str:
    return json.dumps([{**asdict(c), "message": secrets.redact(c.message)} for c in found], indent=2)


def warn_at_start(identities: list[Identity]) -> None:
    """Log every warn and fail line (no probe: no network). Never raises: a health check
    that breaks must not stop the run it advises, so any error becomes a warning too."""
    try:
        found = checks(identities)
    except Exception as e:  # noqa: BLE001 - advice only: a bug here is reported, the run goes on
        log.warning("doctor could not check this machine (%s: %s)", type(e).__name__, secrets.redact(str(e)))
        return
    for check in found:
        if check.level != OK:
            log.warning("doctor (%s): %s", check.level, secrets.redact(check.message))


# ---- yt-dlp and what it needs ---------------------------------------------------------------

def _ytdlp(today: date) -> Check:
    from yt_dlp.version import __version__ as version

    try:   # 2025.11.12, or a nightly's 2025.11.12.232651
        released = date(*map(int, version.split(".")[:3]))
    except (TypeError, ValueError):
        return Check("yt-dlp", WARN, f"yt-dlp {version}: not a release date, its age is unknown ({UPGRADE})")
    age = max(0, (today - released).days)
    if (released.year, released.month) < FIRST_EXTERNAL_JS:
        return Check("yt-dlp", FAIL, f"yt-dlp {version} ({age} days old) predates 2025.11, which YouTube needs "
                                     f"(an external JS runtime solves its challenges): {UPGRADE}")
    if age > OLD_AFTER_DAYS:
        return Check("yt-dlp", WARN, f"yt-dlp {version} ({age} days old): YouTube breaks old releases within "
                                     f"weeks: {UPGRADE}")
    return Check("yt-dlp", OK, f"yt-dlp {version} ({age} days old)")


def _js_runtime() -> Check:
    from yt_dlp.globals import supported_js_runtimes   # what YoutubeDL looks its js_runtimes up in

    found = [(cls, cls().info) for name, cls in supported_js_runtimes.value.items() if name in JS_RUNTIMES]
    for _, info in found:
        if info is not None and info.supported:
            return Check("js-runtime", OK, f"JS runtime {info.name} {info.version} "
                                           f"({shutil.which(info.path) or info.path})")
    old = [(cls, info) for cls, info in found if info is not None]
    if old:
        cls, info = old[0]
        least = ".".join(map(str, cls.MIN_SUPPORTED_VERSION))
        return Check("js-runtime", FAIL, f"JS runtime {info.name} {info.version} ({info.path}) is older than "
                                         f"yt-dlp takes ({least}): formats go missing; {UPGRADE}")
    return Check("js-runtime", FAIL, f"JS runtime: yt-dlp finds no {' or '.join(JS_RUNTIMES)} (beside Python or "
                                     f"on PATH): formats go missing; pip install 'yt-dlp[default,deno]'")


def _ejs() -> Check:
    from yt_dlp.dependencies import yt_dlp_ejs   # None when missing: yt-dlp's own test
    from yt_dlp.utils import version_tuple

    if yt_dlp_ejs is None:
        return Check("ejs", FAIL, "ejs: yt-dlp-ejs is not installed: YouTube's JS challenges go unsolved and "
                                  "formats go missing; pip install 'yt-dlp[default,deno]'")
    try:
        version = importlib.metadata.version("yt-dlp-ejs")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(yt_dlp_ejs, "version", "unknown")
    from yt_dlp.extractor.youtube.jsc._builtin.vendor import VERSION as wanted
    # yt-dlp uses the package's scripts only when major.minor match the version it was built for
    if version_tuple(version, lenient=True)[:2] != version_tuple(wanted, lenient=True)[:2]:
        return Check("ejs", FAIL, f"ejs: yt-dlp-ejs {version}, but this yt-dlp takes {wanted}: it ignores the "
                                  f"package and formats go missing; {UPGRADE}")
    return Check("ejs", OK, f"ejs: yt-dlp-ejs {version}")


def _po_tokens() -> Check:
    from yt_dlp.extractor.youtube.pot._provider import BuiltinIEContentProvider
    from yt_dlp.extractor.youtube.pot._registry import _pot_providers
    from yt_dlp.globals import all_plugins_loaded
    from yt_dlp.plugins import load_all_plugins

    if not all_plugins_loaded.value:
        load_all_plugins()   # as YoutubeDL() does first: a provider (bgutil's) is a yt-dlp plugin
    names = [f"{key} {cls.PROVIDER_VERSION}" for key, cls in sorted(_pot_providers.value.items())
             if not issubclass(cls, BuiltinIEContentProvider)]
    if names:
        return Check("po-token", OK, f"PO-token providers: {', '.join(names)}")
    return Check("po-token", WARN, "PO-token providers: none: subtitles on the web client may need a PO token "
                                   "(pip install 'emu-data[pot]' and start its provider)")


# ---- identities ---------------------------------------------------------------------------

def _identity_checks(identities: list[Identity], probe: bool, now: float) -> list[Check]:
    found = [_pool(identities)]
    for identity in identities:
        if identity.cookies:
            found.append(_cookies(identity, now))
        if identity.proxy:
            found.append(_proxy(identity, probe))
    return found


def _pool(identities: list[Identity]) -> Check:
    if len(identities) == 1:
        return Check("identities", OK, f"identities: one, {identities[0].describe()}")
    cookies = sum(1 for i in identities if i.cookies)
    proxies = sum(1 for i in identities if i.proxy)
    budgets = [i.videos_per_hour for i in identities]
    budget = "no budget" if 0 in budgets else f"about {sum(budgets):g} videos/h in all"
    return Check("identities", OK, f"identities: {len(identities)} ({cookies} with cookies, "
                                   f"{proxies} with a proxy), {budget}")


def _cookies(identity: Identity, now: float) -> Check:
    name, where = f"cookies:{identity.name}", f"cookies of {identity.name} ({identity.cookies})"
    try:
        jar, skipped = _load_cookies(identity.cookies)
    except BadCookies as e:
        return Check(name, FAIL, f"{where}: {e}")
    youtube = [c for c in jar if _is_youtube(c.domain) and not c.is_expired(now)]
    if not youtube:
        return Check(name, FAIL, f"{where}: no unexpired youtube.com cookie: export them again from a browser "
                                 "signed in to YouTube")
    level, said = _sign_in(youtube, now)
    message = f"{where}: {len(youtube)} YouTube cookies, {said}"
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        level, message = WARN, f"{message}; yt-dlp skips {len(skipped)} malformed line(s) ({shown})"
    return Check(name, level, message)


def _sign_in(youtube: list, now: float) -> tuple[str, str]:
    """The level and words for the sign-in cookies: which expires first, and when."""
    signed = [c for c in youtube if c.name in SIGN_IN]
    if not signed:
        return WARN, f"none of them a sign-in cookie ({', '.join(SIGN_IN)}): YouTube sees a guest"
    dated = [c for c in signed if c.expires is not None]
    if not dated:
        return OK, f"sign-in cookies {', '.join(sorted({c.name for c in signed}))} last the browser session"
    first = min(dated, key=lambda c: c.expires)
    days = (first.expires - now) / 86400
    said = f"sign-in cookie {first.name} expires {_day(first.expires)} (in {days:.0f} days)"
    return (WARN, said + ": export them again soon") if days < EXPIRES_SOON_DAYS else (OK, said)


def _day(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, timezone.utc).date().isoformat()
    except (OverflowError, OSError, ValueError):   # an expiry past year 9999
        return "after 9999"


def _is_youtube(domain: str) -> bool:
    domain = domain.lstrip(".").lower()
    return domain == "youtube.com" or domain.endswith(".youtube.com")


class BadCookies(ValueError):
    """A cookies file yt-dlp would not load; the message never quotes a line of it."""


def _load_cookies(path: str):
    """yt-dlp's cookie jar of `path`, and the numbers of the lines yt-dlp would skip.
    The lines are sorted by yt-dlp's own rules before its jar sees them: yt-dlp prints a
    line it skips whole, and http.cookiejar quotes a line it cannot read in its error, and
    either would put a cookie's value on the screen."""
    from yt_dlp.cookies import YoutubeDLCookieJar

    lines = _cookie_lines(path)
    if not lines or not http.cookiejar.NETSCAPE_MAGIC_RGX.match(lines[0]):
        raise BadCookies("not a Netscape cookies file (its first line must be '# Netscape HTTP Cookie File'; "
                         "yt-dlp reads no JSON export)")
    kept, skipped = [lines[0]], []
    for number, line in enumerate(lines[1:], 2):
        if _skipped_by_ytdlp(line):
            skipped.append(number)
            continue
        _check_domain_flag(line, number)
        kept.append(line)
    jar = YoutubeDLCookieJar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # http.cookiejar warns with a traceback on a line it cannot read
        try:
            jar.load(io.StringIO("".join(kept)))
        except (http.cookiejar.LoadError, ValueError):
            raise BadCookies("yt-dlp cannot load it (the line is not shown: it holds a cookie)") from None
    return jar, skipped


def _cookie_lines(path: str) -> list[str]:
    try:
        data = files.read_bytes(path, limit=MAX_COOKIES_BYTES)
    except (OSError, files.UnreadableFile) as e:
        raise BadCookies(getattr(e, "reason", None) or str(e)) from None
    try:
        return data.decode("utf-8").splitlines(keepends=True)   # yt-dlp opens it as UTF-8
    except UnicodeDecodeError as e:
        raise BadCookies(f"not UTF-8 text (byte {e.start})") from None


def _skipped_by_ytdlp(line: str) -> bool:
    """YoutubeDLCookieJar.load's rule: a line that is not a comment needs 7 tab-separated
    fields and an empty or numeric expiry, or it is skipped with a warning."""
    line = line.removeprefix("#HttpOnly_")
    if line.startswith("#") or not line.strip():
        return False
    fields = line.split("\t")
    return len(fields) != 7 or bool(fields[4]) and not _EXPIRES.fullmatch(fields[4])


def _check_domain_flag(line: str, number: int) -> None:
    """http.cookiejar refuses the whole file when a line's include-subdomains field
    disagrees with its domain's leading dot (an assert inside its loader)."""
    line = line.removeprefix("#HttpOnly_")
    if line.strip().startswith(("#", "$")) or not line.strip():
        return
    domain, flag = line.split("\t")[:2]
    if domain.startswith(".") != (flag == "TRUE"):
        raise BadCookies(f"line {number}: the include-subdomains field says {flag!r} but the domain "
                         f"{'starts' if domain.startswith('.') else 'does not start'} with a dot: "
                         "yt-dlp refuses the whole file")


def _proxy(identity: Identity, probe: bool) -> Check:
    name = f"proxy:{identity.name}"
    problem = proxy_problem(identity.proxy)
    if problem:
        return Check(name, FAIL, f"proxy of {identity.name}: {problem}")
    shown = f"proxy of {identity.name} ({secrets.redact(identity.proxy)})"
    if not probe:
        return Check(name, OK, f"{shown}: well-formed (--probe connects to it)")
    problem = net.probe(identity.proxy, PROBE_TIMEOUT)
    if problem:
        return Check(name, FAIL, f"{shown}: {problem}")
    return Check(name, OK, f"{shown}: takes connections")
