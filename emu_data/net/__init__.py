"""The one HTTP policy of the project: every download of an untrusted URL goes through here.

The URL lists we consume (LAION, MMC4, WebVid, YouTube storyboard fragments) are written by
strangers, so a URL may point at our own network (SSRF: cloud metadata, internal services),
redirect forever, serve an endless body or stall. `Fetcher.get` bounds all of that:

* Only http and https.
* The address guard sits in the connection class: the socket's *peer* address is checked
  after connecting and before a single byte is written, so DNS names, redirects and DNS
  rebinding all meet the same check. A pre-resolution check additionally stops the plain
  cases before even a TCP handshake reaches an internal host.
* Redirects are followed here (urllib3 runs with redirect=False), each hop re-checked.
* Retries with Retry-After or full-jitter exponential backoff, through an injectable `sleep`.
* Bodies are streamed and capped; a short body is detected.
* A per-host token bucket keeps us polite.

`check_url` offers the scheme and address checks to downloaders that do their own HTTP
(yt-dlp, img2dataset); for those it is a pre-check only, not a guarantee.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Self
from urllib.parse import urljoin

from urllib3 import HTTPResponse, PoolManager, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import parse_url

from emu_data import __version__
from emu_data.core.options import network, option, show_size, size
from emu_data.core.errors import ItemFailed, UsageError

__all__ = [
    "FetchError",
    "FetchResult",
    "Fetcher",
    "NetPolicy",
    "RateLimiter",
    "check_url",
    "is_blocked_address",
    "probe",
]

_SCHEMES = ("http", "https")
_PROXY_PORTS = {"http": 80, "https": 443}   # a proxy URL without a port, as urllib3 reads it
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 2**10
# One Fetcher serves many hosts from many threads: keep more host pools than urllib3's
# default 10, and more than one idle connection per host so threads do not discard them.
_NUM_POOLS = 64
_POOL_MAXSIZE = 16

# Listed explicitly (on top of ipaddress' own tables) so the guarantee does not depend on
# the Python patch release: CGNAT, link-local (incl. the 169.254.169.254 metadata service),
# unique-local (incl. AWS' fd00:ec2::254), IPv6 link-local and deprecated site-local, and
# Alibaba's metadata address 100.100.100.200 (inside CGNAT).
_ALWAYS_BLOCKED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "100.64.0.0/10",
        "169.254.0.0/16",
        "169.254.169.254/32",
        "100.100.100.200/32",
        "fc00::/7",
        "fd00:ec2::254/128",
        "fe80::/10",
        "fec0::/10",
    )
)
# getaddrinfo errors meaning "this name does not exist" (EAI_NODATA is absent on some OSes).
_NO_SUCH_NAME = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA")
    if hasattr(socket, name)
)
# NAT64's well-known prefix embeds an IPv4 address that a NAT64 gateway would connect to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class NetPolicy:
    """Limits for one Fetcher. Frozen so a policy can be shared between threads and workers."""

    connect_timeout: float = 10.0
    read_timeout: float = option(30.0, flag="--timeout", parse=float, help="read timeout in seconds")
    retries: int = option(3, parse=int, help="retries of a failed request")  # retryable failures only
    backoff_base: float = 0.5  # seconds; exponential with full jitter
    backoff_max: float = 30.0  # cap for backoff and for an honoured Retry-After
    per_host_rate: float = option(10.0, flag="--rate-per-host", parse=float, metavar="N",   # 0 = unlimited
                                  help="at most N requests per second to one host, per worker (youtube: per "
                                       "identity, however many workers share it)")
    max_bytes: int = option(64 * 2**20, parse=size, show=show_size, metavar="SIZE",
                            help="largest response body to accept; a bigger one is cut there and the item "
                                 "reported too_large")
    max_redirects: int = 5
    allow_private_addresses: bool = option(
        False, help="let downloads reach loopback/private/link-local addresses (off by default: URL lists "
                    "are untrusted; tests and the offline demo need it for 127.0.0.1)")
    # Exceptions to the address guard (CIDR or single addresses): a mirror on the company
    # network, a proxy on localhost, a test server. Narrower than allow_private_addresses.
    allowed_networks: tuple[str, ...] = option(
        (), flag="--allow-address", repeat=True, parse=network, metavar="CIDR",
        help="let downloads reach this address or network despite the guard (e.g. a mirror at "
             "10.1.2.0/24), on EVERY port: the guard matches addresses, not ports, so give the narrowest "
             "(a single address for one host); repeatable; narrower than --allow-private-addresses")
    user_agent: str = f"emu-data/{__version__}"

    def __post_init__(self):
        object.__setattr__(self, "allowed_networks", tuple(
            str(ipaddress.ip_network(n, strict=False)) for n in self.allowed_networks))
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise UsageError("timeouts must be positive")
        if min(self.retries, self.max_redirects, self.max_bytes) < 0:
            raise UsageError("retries, max_redirects and max_bytes must be >= 0")
        if min(self.backoff_base, self.backoff_max, self.per_host_rate) < 0:
            raise UsageError("backoff and rate must be >= 0")

    def refuses(self, ip: str) -> bool:
        """True when this policy must not let a connection reach `ip`."""
        if self.allow_private_addresses or not is_blocked_address(ip):
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return True
        return not any(addr in ipaddress.ip_network(n) for n in self.allowed_networks
                       if ipaddress.ip_network(n).version == addr.version)


class FetchError(ItemFailed):
    """Why a URL could not be fetched. `reason` is a short token for status tables."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retryable: bool = False,
        attempts: int = 0,
        retry_after: float | None = None,
    ):
        super().__init__(reason, message)
        self.retryable = retryable
        self.attempts = attempts
        # Seconds the server asked us to wait (Retry-After); used by the retry loop only.
        self.retry_after = retry_after

    def __reduce__(self):
        # Keyword-only fields would be lost by Exception's default pickling, and errors
        # cross process boundaries (Ray, multiprocessing) in the pipelines.
        kwargs = {
            "retryable": self.retryable,
            "attempts": self.attempts,
            "retry_after": self.retry_after,
        }
        return _rebuild_fetch_error, (self.reason, self.message, kwargs)


def _rebuild_fetch_error(reason: str, message: str, kwargs: dict) -> FetchError:
    return FetchError(reason, message, **kwargs)


@dataclass(frozen=True)
class FetchResult:
    url: str  # final URL, after redirects
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    attempts: int


# --------------------------------------------------------------------------- addresses


def is_blocked_address(ip: str) -> bool:
    """True for any address a URL from the internet must not make us connect to.

    Unparseable input counts as blocked: the guard fails closed.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        # IPv4-mapped (::ffff:a.b.c.d), NAT64 and 6to4 addresses reach an IPv4 host:
        # judge that host, so ::ffff:127.0.0.1 is blocked and ::ffff:8.8.8.8 is not.
        addr = _embedded_ipv4(addr) or addr
    if not addr.is_global or addr.is_multicast or addr.is_reserved:
        return True
    return any(addr in net for net in _ALWAYS_BLOCKED if net.version == addr.version)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _first_blocked(host: str, port: int, policy: NetPolicy | None = None) -> str | None:
    """The first address `host` resolves to that is blocked (by `policy`, default: any
    private address), or None.

    Raises socket.gaierror (and UnicodeError for malformed names) like getaddrinfo.
    """
    refuses = policy.refuses if policy is not None else is_blocked_address
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if refuses(sockaddr[0]):
            return sockaddr[0]
    return None


def _parse_http_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL with a host, else FetchError(invalid_url)."""
    try:
        parsed = parse_url(url)
    except (LocationValueError, ValueError) as exc:
        raise FetchError("invalid_url", f"{url!r}: {exc}") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in _SCHEMES:
        raise FetchError(
            "invalid_url", f"{url!r}: scheme {scheme or 'missing'!r} is not http(s)"
        )
    if not parsed.host:
        raise FetchError("invalid_url", f"{url!r}: no host")
    return parsed.host.strip("[]"), parsed.port or (443 if scheme == "https" else 80)


def check_url(url: str, policy: NetPolicy) -> None:
    """Scheme and address pre-check for downloaders that do their own HTTP.

    Raises FetchError: invalid_url, blocked_address, or connection_error (retryable) when
    the name does not resolve now; we fail closed rather than pass an unchecked URL on.
    """
    host, port = _parse_http_url(url)
    if policy.allow_private_addresses:
        return
    try:
        blocked = _first_blocked(host, port, policy)
    except UnicodeError as exc:  # label empty or longer than 63 characters
        raise FetchError("invalid_url", f"{url!r}: bad host name ({exc})") from exc
    except OSError as exc:
        raise FetchError(
            "connection_error",
            f"{url}: cannot resolve {host!r} ({exc})",
            retryable=True,
        ) from exc
    if blocked is not None:
        raise FetchError(
            "blocked_address", f"{url}: {host!r} resolves to blocked address {blocked}"
        )


class _BlockedAddress(HTTPError):
    """Raised inside urllib3. Not an OSError/TimeoutError, so urllib3 passes it through as is."""


class _AddressGuard:
    """Mixin for urllib3 connection classes: refuse blocked peers before sending anything."""

    host: str
    port: int
    policy: NetPolicy  # set on the per-policy subclasses `_pool_manager` makes

    def _new_conn(self) -> socket.socket:
        dns_host = getattr(self, "_dns_host", self.host)
        try:
            # Cheap early refusal: no TCP handshake reaches an internal host at all.
            early = _first_blocked(dns_host, self.port, self.policy)
        except (OSError, UnicodeError):
            early = None  # let urllib3 report the resolution failure in its usual way
        if early is not None:
            raise _BlockedAddress(f"{self.host!r} resolves to blocked address {early}")
        sock = super()._new_conn()  # type: ignore[misc]
        # The authoritative check: the address actually connected to, whatever DNS said
        # a moment ago (rebinding). TLS has not started and no request byte was written.
        try:
            peer = sock.getpeername()[0]
        except OSError:
            sock.close()  # peer already gone; urllib3 reports it as a broken connection
            raise
        if self.policy.refuses(peer):
            sock.close()
            raise _BlockedAddress(f"{self.host!r} connected to blocked address {peer}")
        return sock


def _guarded_pool_classes(policy: NetPolicy) -> dict[str, type]:
    """urllib3 pool classes whose connections check their peer against `policy`."""
    http_conn = type("_GuardedHTTPConnection", (_AddressGuard, HTTPConnection), {"policy": policy})
    https_conn = type("_GuardedHTTPSConnection", (_AddressGuard, HTTPSConnection), {"policy": policy})
    return {
        "http": type("_GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("_GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


def _pool_manager(policy: NetPolicy) -> PoolManager:
    # urllib3's PoolManager reads no proxy settings from the environment, so the guard
    # always sees the real destination.
    manager = PoolManager(
        num_pools=_NUM_POOLS,
        maxsize=_POOL_MAXSIZE,
        headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
        timeout=Timeout(connect=policy.connect_timeout, read=policy.read_timeout),
        retries=False,
    )
    if not policy.allow_private_addresses:
        manager.pool_classes_by_scheme = _guarded_pool_classes(policy)
    return manager


# --------------------------------------------------------------------------- rate limiting


class RateLimiter:
    """Per-host token bucket. Thread-safe; sleeps outside the lock.

    Each `acquire` reserves the next free slot (tokens may go negative), so concurrent
    callers for one host are spaced 1/rate apart without serialising on the lock.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # host -> (tokens, as of clock time); least recently used first, for pruning.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, host: str) -> float:
        """Wait for a slot for `host`; returns the seconds slept (0 when none)."""
        if self.rate == 0:
            return 0.0
        wait = self._reserve(host.lower())
        if wait > 0:
            self._sleep(wait)
        return wait

    def _reserve(self, host: str) -> float:
        with self._lock:
            now = self._clock()
            tokens = self._tokens(host, now) - 1.0
            self._buckets[host] = (tokens, now)
            self._buckets.move_to_end(host)
            self._prune(now)
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def _tokens(self, host: str, now: float) -> float:
        tokens, since = self._buckets.get(host, (self.burst, now))
        return min(self.burst, tokens + (now - since) * self.rate)

    def _prune(self, now: float) -> None:
        # A full bucket is the same as no bucket: drop them from the LRU end so a crawl over
        # millions of hosts does not grow the table without bound.
        while len(self._buckets) > 1:
            host = next(iter(self._buckets))
            if self._tokens(host, now) < self.burst:
                break
            del self._buckets[host]


# --------------------------------------------------------------------------- fetching


class Fetcher:
    """GET with the project's policy. Thread-safe; create one per worker process."""

    def __init__(
        self,
        policy: NetPolicy = NetPolicy(),
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.policy = policy
        self._sleep = sleep
        self._limiter = RateLimiter(policy.per_host_rate, clock=clock, sleep=sleep)
        self._pool = _pool_manager(policy)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._pool.clear()

    def get(self, url: str) -> FetchResult:
        """Fetch `url`; raises FetchError for every network or HTTP failure."""
        _parse_http_url(url)  # a malformed URL is not worth an attempt
        attempt = 0
        while True:
            attempt += 1
            try:
                return replace(self._follow(url), attempts=attempt)
            except FetchError as err:
                err.attempts = attempt
                if not err.retryable or attempt > self.policy.retries:
                    raise _final(err) from err.__cause__
                self._sleep(self._backoff(err, attempt))

    def _backoff(self, err: FetchError, attempt: int) -> float:
        if err.retry_after is not None:
            return min(err.retry_after, self.policy.backoff_max)
        # Full jitter: workers that failed together do not retry together.
        ceiling = self.policy.backoff_base * 2 ** (attempt - 1)
        return random.uniform(0, min(self.policy.backoff_max, ceiling))

    def _follow(self, url: str) -> FetchResult:
        # A retry restarts from the original URL: redirect targets are often short-lived.
        hop_url = url
        for _hop in range(self.policy.max_redirects + 1):
            resp = self._open(hop_url)
            try:
                target = _redirect_target(resp, hop_url)
                if target is None:
                    return self._complete(resp, hop_url)
            finally:
                _release(resp)
            hop_url = target
        raise FetchError(
            "too_many_redirects",
            f"{url}: more than {self.policy.max_redirects} redirects (last to {hop_url})",
        )

    def _open(self, url: str) -> HTTPResponse:
        self._limiter.acquire(parse_url(url).host or "")
        try:
            return self._pool.urlopen(
                "GET", url, redirect=False, retries=False, preload_content=False
            )
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            raise _error_from(exc, url) from exc

    def _complete(self, resp: HTTPResponse, url: str) -> FetchResult:
        status = resp.status
        if status in _RETRYABLE_STATUS:
            wait = _retry_after_seconds(resp.headers.get("retry-after"))
            raise FetchError(
                f"http_{status}",
                f"{url}: HTTP {status}",
                retryable=True,
                retry_after=wait,
            )
        if not 200 <= status < 300:
            raise FetchError(f"http_{status}", f"{url}: HTTP {status}")
        try:
            body = self._read_body(resp, url)
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            raise _error_from(exc, url) from exc
        headers = {name.lower(): value for name, value in resp.headers.itermerged()}
        return FetchResult(
            url=url, status=status, headers=headers, body=body, attempts=1
        )

    def _read_body(self, resp: HTTPResponse, url: str) -> bytes:
        limit = self.policy.max_bytes
        declared = resp.length_remaining  # parsed Content-Length; None when absent
        if declared is not None and declared > limit:
            raise FetchError(
                "too_large", f"{url}: Content-Length {declared} > max_bytes {limit}"
            )
        body = bytearray()
        try:
            for chunk in resp.stream(min(_CHUNK, limit + 1)):
                body += chunk
                if len(body) > limit:
                    raise FetchError(
                        "too_large", f"{url}: body exceeds max_bytes {limit}"
                    )
        except ProtocolError as exc:
            # urllib3 raises this for a body shorter than Content-Length (IncompleteRead)
            # and for a connection broken mid-body: either way we hold a partial body.
            raise FetchError(
                "truncated", f"{url}: body cut short ({exc})", retryable=True
            ) from exc
        if declared is not None and resp.tell() < declared:
            raise FetchError(
                "truncated",
                f"{url}: got {resp.tell()} of {declared} bytes",
                retryable=True,
            )
        return bytes(body)


def _final(err: FetchError) -> FetchError:
    """The error `get` raises once retrying is over."""
    if err.reason == "http_429":
        return FetchError(
            "rate_limited",
            f"{err.message} (still rate limited after {err.attempts} attempts)",
            retryable=True,
            attempts=err.attempts,
        )
    return err


def _redirect_target(resp: HTTPResponse, url: str) -> str | None:
    location = resp.headers.get("location")
    if resp.status not in _REDIRECT_STATUS or not location:
        return None
    target = urljoin(url, location)
    try:
        # Scheme re-checked per hop; the connection's address guard does the rest.
        _parse_http_url(target)
    except FetchError as err:
        raise FetchError(
            "invalid_url", f"{url}: redirect to {target!r} refused ({err.message})"
        ) from None
    return target


def _release(resp: HTTPResponse) -> None:
    # A connection with unread body bytes must not go back to the pool: close it instead.
    # A fully read response is already closed and its connection is reused.
    if not resp.closed:
        resp.close()
    resp.release_conn()


def _error_from(exc: BaseException, url: str) -> FetchError:
    """Map a urllib3/socket exception to a FetchError."""
    if isinstance(exc, _BlockedAddress):
        return FetchError("blocked_address", f"{url}: {exc}")
    if isinstance(exc, NameResolutionError):
        # A name that does not exist will not exist a second later either.
        permanent = getattr(exc.__cause__, "errno", None) in _NO_SUCH_NAME
        return FetchError("connection_error", f"{url}: {exc}", retryable=not permanent)
    # NewConnectionError subclasses ConnectTimeoutError, so it is tested first.
    if isinstance(exc, NewConnectionError):
        return FetchError("connection_error", f"{url}: {exc}", retryable=True)
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return FetchError("timeout", f"{url}: {exc}", retryable=True)
    if isinstance(exc, SSLError):
        # Bad certificates and protocol mismatches are configuration, not luck.
        return FetchError("connection_error", f"{url}: TLS error: {exc}")
    if isinstance(exc, LocationValueError):
        return FetchError("invalid_url", f"{url}: {exc}")
    return FetchError("connection_error", f"{url}: {exc}", retryable=True)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone accepts e.g. "²"
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # HTTP-dates are wall-clock times, so this uses time.time(), not the injected clock.
    return max(0.0, when.timestamp() - time.time())


# --------------------------------------------------------------------------- proxies


def probe(url: str, timeout: float = 5.0) -> str | None:
    """Whether a proxy URL's host:port takes a TCP connection: None if so, else why not.
    Only the handshake: nothing is sent, so the URL's password never leaves this process,
    and the answer names host:port alone."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or _PROXY_PORTS.get(parts.scheme.lower(), 1080)   # socks: 1080
    except ValueError as exc:
        return f"not a URL ({exc})"
    if not parts.hostname:   # getaddrinfo(None) would be this machine
        return "names no host"
    where = f"[{parts.hostname}]:{port}" if ":" in parts.hostname else f"{parts.hostname}:{port}"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except (OSError, UnicodeError) as exc:   # refused, timed out, no route, no such name, bad label
        return f"{where} takes no connection ({getattr(exc, 'strerror', None) or exc})"
