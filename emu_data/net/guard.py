"""The HTTP policy (net.py) applied to downloaders that open their own sockets.

img2dataset fetches with `urllib.request.urlopen` and yt-dlp with its own request handlers
(requests/urllib3 or urllib); neither knows our address guard, size cap or Retry-After.
Rather than re-implement them, two standard hooks put the policy under them:

* `connection_guard`: Python's audit hook `socket.connect` (PEP 578) sees the address every
  TCP socket of the process is about to connect to: after DNS, on every redirect hop and
  retry, so names, redirects and rebinding all meet the check before a SYN is sent. Works
  under any library that connects through Python sockets (not curl_cffi, which yt-dlp uses
  only for --impersonate; there the URL pre-check is what is left, see RELIABILITY.md).
* `urllib_policy`: an opener installed for `urlopen` (img2dataset's only entry point) with no
  file/ftp/data/proxy handlers, the redirect limit, Retry-After honoured on 429/503, and the
  body cut at the byte cap within a whole-body deadline.

Error messages start with the status reason (`blocked_address: ...`, `too_large: ...`), so
they survive libraries that turn exceptions into strings and can be mapped back.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from emu_data import net

__all__ = ["AddressRefused", "connection_guard", "refusal", "urllib_policy", "with_proxy_allowed"]


class AddressRefused(OSError):
    """A connect() the guard refused. An OSError, so libraries report it as a network error."""


# ---- the connect-time guard ------------------------------------------------------------

_lock = threading.Lock()
_active: list[net.NetPolicy] = []   # guards in force in this process now
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if event != "socket.connect" or not _active:
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return  # unix sockets (Ray, logging) and UDP (DNS) are not downloads
    host, port = address[0], address[1]
    for policy in list(_active):
        blocked = _refused_address(host, port, policy)
        if blocked is not None:
            raise AddressRefused(refusal(blocked, port))


def refusal(address: str, port: int) -> str:
    """The guard's message: the reason first, then the address and port it refused, on one
    line (libraries quote it inside their own messages; ytdl.py lifts it back out)."""
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return (f"blocked_address: connection to {where} refused (private, loopback, link-local or "
            "metadata address; --allow-private-addresses or --allow-address to allow)")


def _refused_address(host: str, port: int, policy: net.NetPolicy) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:  # connect() with a name resolves it itself: judge what it resolves to
        try:
            return net._first_blocked(host, port, policy)
        except (OSError, UnicodeError):
            return None  # connect() will fail on the same name
    return host if policy.refuses(host) else None


@contextmanager
def connection_guard(policy: net.NetPolicy) -> Iterator[None]:
    """While the block runs, no TCP socket in this process connects where `policy` refuses.

    Audit hooks cannot be removed, so one is installed per process and consults the guards
    in force; with none (or with private addresses allowed) it returns at once."""
    global _hook_installed
    if policy.allow_private_addresses:
        yield
        return
    with _lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
        _active.append(policy)
    try:
        yield
    finally:
        with _lock:
            _active.remove(policy)


def with_proxy_allowed(policy: net.NetPolicy, proxy: str | None) -> net.NetPolicy:
    """`policy` letting connections reach a user-configured proxy (which may well be local)."""
    if not proxy or policy.allow_private_addresses:
        return policy
    host = (urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}").hostname or "")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return policy  # an unresolvable proxy fails on its own, with yt-dlp's message
    return replace(policy, allowed_networks=policy.allowed_networks + tuple(sorted(addresses)))


# ---- urllib (img2dataset) -----------------------------------------------------------------

class _Redirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, limit: int):
        self.max_redirections = limit


class _RetryAfter(urllib.request.BaseHandler):
    """429/503 with a Retry-After within the policy's backoff cap: wait, then ask again."""

    handler_order = 400  # before HTTPDefaultErrorHandler turns the answer into an error

    def __init__(self, policy: net.NetPolicy):
        self.policy = policy

    def _again(self, req, fp, code, msg, headers):
        tried = getattr(req, "_emu_retries", 0)
        wait = net._retry_after_seconds(headers.get("Retry-After"))
        if wait is None or wait > self.policy.backoff_max or tried >= self.policy.retries:
            return None  # the next handler reports the status
        fp.read(64 * 2**10)
        fp.close()
        time.sleep(wait)
        req._emu_retries = tried + 1
        return self.parent.open(req, timeout=req.timeout)

    http_error_429 = http_error_503 = _again


class _CappedResponse:
    """The response urlopen returns, whose read() stops at the byte cap and the deadline."""

    def __init__(self, response, policy: net.NetPolicy, deadline: float):
        self._response, self._policy, self._deadline = response, policy, deadline

    def read(self, amt: int | None = None) -> bytes:
        limit = self._policy.max_bytes
        wanted = limit + 1 if amt is None or amt < 0 else min(amt, limit + 1)
        body = bytearray()
        while len(body) < wanted:
            if time.monotonic() > self._deadline:
                raise TimeoutError(f"timeout: body not complete within {self._policy.read_timeout:g} s")
            # read1: one socket read at a time, so a body dripping in under the per-read
            # timeout still meets the deadline between reads
            chunk = self._response.read1(min(net._CHUNK, wanted - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) > limit:
            raise OSError(f"too_large: body exceeds max_bytes {limit}")
        if amt is None and self._response.length:  # http.client's read(n) does not say so itself
            raise OSError(f"truncated: connection closed {self._response.length} bytes before the end")
        return bytes(body)

    def __getattr__(self, name):
        return getattr(self._response, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._response.close()


class _Cap(urllib.request.BaseHandler):
    """Refuse a declared Content-Length over the cap; cap what is streamed."""

    handler_order = 900

    def __init__(self, policy: net.NetPolicy):
        self.policy = policy

    def _response(self, req, response):
        if not 200 <= response.status < 300:
            return response  # redirects and errors: their handlers read at most a little
        declared = response.headers.get("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > self.policy.max_bytes:
            response.close()
            raise urllib.error.URLError(
                f"too_large: Content-Length {declared} > max_bytes {self.policy.max_bytes}")
        return _CappedResponse(response, self.policy, time.monotonic() + self.policy.read_timeout)

    http_response = https_response = _response


def build_opener(policy: net.NetPolicy) -> urllib.request.OpenerDirector:
    """http(s) only: no file:, ftp:, data: and no proxy from the environment (the guard must
    see the real destination)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), _Redirects(policy.max_redirects),
                    _RetryAfter(policy), _Cap(policy)):
        opener.add_handler(handler)
    return opener


@contextmanager
def urllib_policy(policy: net.NetPolicy) -> Iterator[None]:
    """`urlopen` in this process follows `policy` (and its connections are guarded) while
    the block runs; the previous opener is put back after."""
    previous = urllib.request._opener  # no public getter; install_opener is the public setter
    urllib.request.install_opener(build_opener(policy))
    try:
        with connection_guard(policy):
            yield
    finally:
        urllib.request.install_opener(previous)
