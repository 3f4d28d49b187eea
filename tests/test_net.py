"""Tests for emu_data.net against real HTTP servers on 127.0.0.1 started by the tests.

Nothing here connects anywhere but 127.0.0.1 or ::1; the address-classification tests only
parse addresses. Sleeps are injected and recorded, so no test waits on backoff and no
assertion depends on wall-clock time.
"""

from __future__ import annotations

import email.utils
import pickle
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emu_data import net
from emu_data.net import (
    Fetcher,
    FetchError,
    NetPolicy,
    RateLimiter,
    check_url,
    is_blocked_address,
)

BODY = b"hello, corpus"
BIG = 1000  # bytes the "big" routes send; tests cap max_bytes below it


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()  # requests per path
        self.connections = 0  # TCP connections accepted
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def verify_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        return True

    def handle_error(self, request, client_address):
        pass  # clients hanging up early (too_large, timeouts) are expected here

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies
    timeout = 5  # idle keep-alive threads end on their own

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] += 1
            hit = self.server.hits[path]
        route = ROUTES.get(
            path.rsplit("/", 1)[0] if path.startswith("/hops/") else path
        )
        if route is None:
            self._send(404, b"not found")
        else:
            route(self, hit)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str):
        self._send(302, b"", {"Location": location})

    def ok(self, hit):
        self._send(200, BODY, {"Content-Type": "text/plain", "X-Multi": "a"})

    def not_found(self, hit):
        self._send(404, b"nope")

    def once_429(self, hit):
        if hit == 1:
            self._send(429, b"", {"Retry-After": "7"})
        else:
            self.ok(hit)

    def once_429_date(self, hit):
        if hit == 1:
            later = email.utils.formatdate(time.time() + 3600, usegmt=True)
            self._send(429, b"", {"Retry-After": later})
        else:
            self.ok(hit)

    def always_429(self, hit):
        self._send(429, b"", {"Retry-After": "2"})

    def once_503(self, hit):
        if hit == 1:
            self._send(503, b"busy")
        else:
            self.ok(hit)

    def always_503(self, hit):
        self._send(503, b"busy")

    def slow(self, hit):
        self.server.stop.wait(
            2.0
        )  # far past the tests' read_timeout; woken at teardown
        self.ok(hit)

    def hops(self, hit):
        left = int(self.path.rsplit("/", 1)[1])
        self._redirect(f"/hops/{left - 1}" if left > 1 else "/ok")

    def loop(self, hit):
        self._redirect("/loop")

    def to_ftp(self, hit):
        self._redirect("ftp://127.0.0.1/file")

    def to_v6_loopback(self, hit):
        self._redirect(f"http://[::1]:{self.server.server_address[1]}/ok")

    def big_declared(self, hit):
        self._send(200, b"x" * BIG)

    def _chunked(self, total: int):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, total, 100):
            piece = b"y" * min(100, total - start)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def big_chunked(self, hit):
        self._chunked(BIG)

    def small_chunked(self, hit):
        self._chunked(250)

    def truncated(self, hit):
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"z" * 10)
        self.close_connection = (
            True  # the server closes the socket after 10 of 100 bytes
        )

    def reset(self, hit):
        # SO_LINGER 0 makes close() send RST instead of FIN.
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.connection.close()
        self.close_connection = True


ROUTES = {
    "/ok": _Handler.ok,
    "/barrier": _Handler.ok,
    "/404": _Handler.not_found,
    "/once-429": _Handler.once_429,
    "/once-429-date": _Handler.once_429_date,
    "/always-429": _Handler.always_429,
    "/once-503": _Handler.once_503,
    "/always-503": _Handler.always_503,
    "/slow": _Handler.slow,
    "/hops": _Handler.hops,
    "/loop": _Handler.loop,
    "/to-ftp": _Handler.to_ftp,
    "/to-v6-loopback": _Handler.to_v6_loopback,
    "/big-declared": _Handler.big_declared,
    "/big-chunked": _Handler.big_chunked,
    "/small-chunked": _Handler.small_chunked,
    "/truncated": _Handler.truncated,
    "/reset": _Handler.reset,
}


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join()


class Sleeps(list):
    """An injected `sleep` that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def fetcher(sleeps):
    """Factory: a Fetcher for loopback tests with tiny timeouts and recorded sleeps."""
    made = []

    def make(**overrides) -> Fetcher:
        fields = {
            "connect_timeout": 1.0,
            "read_timeout": 1.0,
            "per_host_rate": 0,
            "allow_private_addresses": True,
            **overrides,
        }
        made.append(Fetcher(NetPolicy(**fields), sleep=sleeps))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _fails(fetch: Fetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch.get(url)
    return info.value


# --------------------------------------------------------------------------- successes


def test_ok_returns_body_headers_and_reuses_the_connection(server, fetcher, sleeps):
    fetch = fetcher()
    first = fetch.get(server.url("/ok"))
    second = fetch.get(server.url("/ok"))
    assert first.status == 200 and first.body == BODY and first.attempts == 1
    assert first.url == server.url("/ok")
    assert first.headers["content-type"] == "text/plain"
    assert first.headers["x-multi"] == "a"
    assert second.body == BODY
    assert server.connections == 1  # the pooled keep-alive connection was reused
    assert sleeps == []


def test_concurrent_gets_share_one_fetcher(server, fetcher):
    fetch = fetcher()
    bodies: list[bytes] = []
    lock = threading.Lock()

    def worker():
        for _ in range(5):
            body = fetch.get(server.url("/ok")).body
            with lock:
                bodies.append(body)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bodies == [BODY] * 40
    assert server.hits["/ok"] == 40


def test_request_headers(server, fetcher, monkeypatch):
    seen = {}

    def record(handler, hit):
        seen.update(handler.headers.items())
        _Handler.ok(handler, hit)

    monkeypatch.setitem(ROUTES, "/ok", record)
    fetcher().get(server.url("/ok"))
    assert seen["User-Agent"] == f"emu-data/{net.__version__}"
    assert seen["Accept-Encoding"] == "identity"


def test_chunked_body_under_the_cap(server, fetcher):
    result = fetcher(max_bytes=250).get(server.url("/small-chunked"))
    assert result.body == b"y" * 250  # exactly max_bytes is allowed


def test_redirect_chain_is_followed(server, fetcher):
    result = fetcher(max_redirects=3).get(server.url("/hops/3"))
    assert result.url == server.url("/ok") and result.body == BODY
    assert result.attempts == 1
    assert server.hits["/ok"] == 1


# --------------------------------------------------------------------------- HTTP failures


def test_404_is_final(server, fetcher, sleeps):
    err = _fails(fetcher(retries=3), server.url("/404"))
    assert (err.reason, err.retryable, err.attempts) == ("http_404", False, 1)
    assert server.url("/404") in err.message
    assert server.hits["/404"] == 1 and sleeps == []


def test_429_honours_retry_after_seconds(server, fetcher, sleeps):
    result = fetcher(retries=2).get(server.url("/once-429"))
    assert result.body == BODY and result.attempts == 2
    assert sleeps == [7.0]


def test_retry_after_is_capped_at_backoff_max(server, fetcher, sleeps):
    fetcher(retries=2, backoff_max=5.0).get(server.url("/once-429"))
    assert sleeps == [5.0]


def test_retry_after_http_date(server, fetcher, sleeps):
    # The server asks for an hour; an HTTP-date an hour ahead is capped at backoff_max.
    fetcher(retries=1, backoff_max=12.0).get(server.url("/once-429-date"))
    assert sleeps == [12.0]


def test_429_after_retries_is_rate_limited(server, fetcher, sleeps):
    err = _fails(fetcher(retries=2), server.url("/always-429"))
    assert (err.reason, err.retryable, err.attempts) == ("rate_limited", True, 3)
    assert sleeps == [2.0, 2.0]
    assert server.hits["/always-429"] == 3


def test_503_then_200_backs_off_with_jitter(server, fetcher, sleeps):
    result = fetcher(retries=3, backoff_base=0.5).get(server.url("/once-503"))
    assert result.attempts == 2 and result.body == BODY
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5


def test_503_backoff_grows_and_is_capped(server, fetcher, sleeps):
    err = _fails(
        fetcher(retries=4, backoff_base=1.0, backoff_max=3.0), server.url("/always-503")
    )
    assert (err.reason, err.retryable, err.attempts) == ("http_503", True, 5)
    assert server.hits["/always-503"] == 5
    ceilings = [1.0, 2.0, 3.0, 3.0]  # base * 2**n, capped at backoff_max
    assert len(sleeps) == 4
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))


def test_retries_zero_means_one_attempt(server, fetcher, sleeps):
    err = _fails(fetcher(retries=0), server.url("/always-503"))
    assert err.attempts == 1 and sleeps == []


# --------------------------------------------------------------------------- transport failures


def test_read_timeout(server, fetcher, sleeps):
    err = _fails(fetcher(read_timeout=0.1, retries=1), server.url("/slow"))
    assert (err.reason, err.retryable, err.attempts) == ("timeout", True, 2)
    assert len(sleeps) == 1


def test_connection_reset(server, fetcher):
    err = _fails(fetcher(retries=1), server.url("/reset"))
    assert (err.reason, err.retryable, err.attempts) == ("connection_error", True, 2)
    assert server.hits["/reset"] == 2


def test_connection_refused(fetcher):
    with socket.socket() as probe:  # a port nobody listens on once this is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = _fails(fetcher(retries=0), f"http://127.0.0.1:{port}/ok")
    assert (err.reason, err.retryable) == ("connection_error", True)


def test_truncated_body(server, fetcher):
    err = _fails(fetcher(retries=1), server.url("/truncated"))
    assert (err.reason, err.retryable, err.attempts) == ("truncated", True, 2)


def test_declared_length_over_cap(server, fetcher):
    err = _fails(fetcher(max_bytes=100, retries=3), server.url("/big-declared"))
    assert (err.reason, err.retryable, err.attempts) == ("too_large", False, 1)


def test_chunked_body_over_cap(server, fetcher):
    err = _fails(fetcher(max_bytes=100, retries=3), server.url("/big-chunked"))
    assert (err.reason, err.retryable, err.attempts) == ("too_large", False, 1)


def test_fetcher_still_works_after_abandoned_body(server, fetcher):
    fetch = fetcher(max_bytes=100)
    with pytest.raises(FetchError):
        fetch.get(server.url("/big-chunked"))
    assert fetch.get(server.url("/ok")).body == BODY


# --------------------------------------------------------------------------- redirects


def test_too_many_redirects(server, fetcher):
    err = _fails(fetcher(max_redirects=2), server.url("/hops/3"))
    assert (err.reason, err.retryable) == ("too_many_redirects", False)
    assert server.hits["/ok"] == 0


def test_redirect_loop(server, fetcher):
    err = _fails(fetcher(max_redirects=5), server.url("/loop"))
    assert err.reason == "too_many_redirects"
    assert server.hits["/loop"] == 6  # the first request and five followed hops


def test_redirect_to_other_scheme_is_refused(server, fetcher):
    err = _fails(fetcher(), server.url("/to-ftp"))
    assert (err.reason, err.retryable) == ("invalid_url", False)


def test_redirect_hop_is_address_checked(server, fetcher, monkeypatch):
    # Pretend 127.0.0.1 is public so the first hop goes through; the hop to [::1] must be
    # refused before connecting (it is a literal, so the pre-resolution check stops it).
    real = net.is_blocked_address
    monkeypatch.setattr(
        net, "is_blocked_address", lambda ip: ip != "127.0.0.1" and real(ip)
    )
    err = _fails(fetcher(allow_private_addresses=False), server.url("/to-v6-loopback"))
    assert err.reason == "blocked_address"
    assert server.hits["/to-v6-loopback"] == 1 and server.hits["/ok"] == 0


# --------------------------------------------------------------------------- address guard


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_addresses_refused_without_contact(server, fetcher, host, sleeps):
    err = _fails(
        fetcher(allow_private_addresses=False, retries=3), server.url("/ok", host)
    )
    assert (err.reason, err.retryable, err.attempts) == ("blocked_address", False, 1)
    assert sleeps == []
    # Barrier: the server accepts connections in arrival order, so once this allowed
    # request is answered, any connection the refused one made would have been counted.
    fetcher().get(server.url("/barrier"))
    assert server.connections == 1 and server.hits == Counter({"/barrier": 1})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_peer_address_checked_before_any_byte(fetcher, monkeypatch, scheme):
    """DNS rebinding: the pre-check saw a public address, the socket reached loopback."""
    monkeypatch.setattr(net, "_first_blocked", lambda host, port, policy=None: None)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        err = _fails(
            fetcher(allow_private_addresses=False), f"{scheme}://127.0.0.1:{port}/"
        )
        assert err.reason == "blocked_address"
        conn, _ = (
            listener.accept()
        )  # the TCP handshake happened, queued by the kernel ...
        with conn:
            conn.settimeout(5)
            assert (
                conn.recv(1024) == b""
            )  # ... but the client closed without sending a byte


def test_guarded_pools_used_only_when_private_disallowed():
    strict = Fetcher(NetPolicy())
    lax = Fetcher(NetPolicy(allow_private_addresses=True))
    try:
        for scheme in ("http", "https"):
            conn_cls = strict._pool.pool_classes_by_scheme[scheme].ConnectionCls
            assert issubclass(conn_cls, net._AddressGuard)
            conn_cls = lax._pool.pool_classes_by_scheme[scheme].ConnectionCls
            assert not issubclass(conn_cls, net._AddressGuard)
    finally:
        strict.close()
        lax.close()


BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.1.1",
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "100.100.100.200",  # Alibaba metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",  # deprecated site-local
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:100.64.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "not-an-ip",  # unparseable: fail closed
    "",
    "127.1",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",  # just above 172.16/12
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize("ip", BLOCKED)
def test_blocked_addresses(ip):
    assert is_blocked_address(ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_allowed_addresses(ip):
    assert not is_blocked_address(ip)


# --------------------------------------------------------------------------- check_url


STRICT = NetPolicy()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "http:///path",
        "http://:80/",
        "example.com/no-scheme",
        "",
        "http://[::1/",
    ],
)
def test_check_url_invalid(url):
    with pytest.raises(FetchError) as info:
        check_url(url, STRICT)
    assert (info.value.reason, info.value.retryable) == ("invalid_url", False)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "http://localhost:8080/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "HTTP://100.100.100.200/",
    ],
)
def test_check_url_blocked(url):
    with pytest.raises(FetchError) as info:
        check_url(url, STRICT)
    assert info.value.reason == "blocked_address"


def test_check_url_allows_public_literals_and_private_when_asked():
    # IP literals resolve locally: getaddrinfo sends no traffic for them.
    check_url("http://8.8.8.8/x.jpg", STRICT)
    check_url("https://[2606:4700::1111]/", STRICT)
    check_url("http://169.254.169.254/", NetPolicy(allow_private_addresses=True))


def test_check_url_unresolvable_fails_closed(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(FetchError) as info:
        check_url("http://does-not-exist.invalid/", STRICT)
    assert info.value.reason == "connection_error"


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http:///x"]
)
def test_fetcher_rejects_invalid_urls_without_attempt(fetcher, url, sleeps):
    err = _fails(fetcher(retries=3), url)
    assert (err.reason, err.attempts) == ("invalid_url", 0)
    assert sleeps == []


# --------------------------------------------------------------------------- rate limiting


class FakeClock:
    """A clock that only moves when the injected sleep is called."""

    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_requests():
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire("a.example") for _ in range(4)]
    assert waits == [0.0, 0.25, 0.25, 0.25]
    assert clock.now == pytest.approx(100.75)
    assert limiter.acquire("b.example") == 0.0  # buckets are per host
    assert limiter.acquire("A.EXAMPLE") == pytest.approx(
        0.25
    )  # host names are case-free
    clock.now += 10
    assert limiter.acquire("a.example") == 0.0  # an idle host starts with a full bucket


def test_rate_limiter_burst():
    clock = FakeClock()
    limiter = RateLimiter(2.0, burst=3, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire("h") for _ in range(5)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_rate_limiter_unlimited():
    clock = FakeClock()
    limiter = RateLimiter(0, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire("h") for _ in range(100)] == [0.0] * 100
    assert clock.sleeps == []


def test_rate_limiter_threads_get_distinct_slots():
    # The clock stands still, so each thread must be handed its own later slot.
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker():
        wait = limiter.acquire("h")
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([i / 10 for i in range(20)])


def test_rate_limiter_forgets_idle_hosts():
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, sleep=clock.sleep)
    for i in range(1000):
        limiter.acquire(f"host{i}")
        clock.now += 0.01
    clock.now += 5
    limiter.acquire("last")
    assert len(limiter._buckets) == 1


def test_fetcher_rate_limits_every_request(server, sleeps):
    clock = FakeClock()
    policy = NetPolicy(per_host_rate=4.0, allow_private_addresses=True)
    with Fetcher(policy, sleep=sleeps, clock=clock) as fetch:
        for _ in range(3):
            fetch.get(server.url("/ok"))
        fetch.get(server.url("/hops/1"))  # two requests: the redirect and /ok
    assert sleeps == pytest.approx([0.25, 0.5, 0.75, 1.0])


# --------------------------------------------------------------------------- misc


def test_fetch_error_pickles():
    err = FetchError(
        "http_503", "http://x/: HTTP 503", retryable=True, attempts=4, retry_after=2.0
    )
    back = pickle.loads(pickle.dumps(err))
    assert (
        back.reason,
        back.message,
        back.retryable,
        back.attempts,
        back.retry_after,
    ) == (
        "http_503",
        "http://x/: HTTP 503",
        True,
        4,
        2.0,
    )
    assert str(back) == "http://x/: HTTP 503"


def test_policy_validation():
    with pytest.raises(ValueError):
        NetPolicy(retries=-1)
    with pytest.raises(ValueError):
        NetPolicy(read_timeout=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 12 ", 12.0),
        ("soon", None),
        ("-1", None),
        ("\u00b2", None),  # a digit to str.isdigit, not to float()
    ],
)
def test_retry_after_parsing(value, expected):
    assert net._retry_after_seconds(value) == expected


def test_retry_after_past_date_is_zero():
    assert net._retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
