"""YouTube's rationing, played by the sample site: per-client video budgets, 429s, bot checks.

YouTube tells clients apart by their session cookies and their address, lets each fetch so
many videos an hour, then answers 429 and, to a client that keeps going, "Sign in to
confirm you're not a bot". The stand-in does the same on 127.0.0.1 so the identity pool is
tested against a server that counts, not against itself:

- a client is known by a secret: the value of its `emu_identity` cookie (a cookies file
  yt-dlp sends), or the `X-Emu-Identity` header its own forward proxy adds (proxy.py);
- a video is counted for a client on its first request in the window (/yt/VIDEO/...);
- past its budget a client gets 429 ("Too Many Requests"); past `bot_check_after` refusals
  in a row, or always when `burned`, the bot check: HTTP 403 whose reason phrase is the
  sentence yt-dlp users see (yt-dlp quotes it as "HTTP Error 403: Sign in to confirm you're
  not a bot"), and its page as the body.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

COOKIE = "emu_identity"
HEADER = "X-Emu-Identity"
BOT_CHECK = "Sign in to confirm you're not a bot"
BOT_PAGE = (b"<!DOCTYPE html><html><body><h1>Sign in to confirm you're not a bot</h1>"
            b"<p>This helps protect our community.</p></body></html>")


@dataclass
class Client:
    """One identity as the server sees it."""

    name: str
    budget: int = 0                 # videos per window; 0: no limit
    burned: bool = False            # flagged already: every request gets the bot check
    bot_check_after: int = 2        # 429s in a row before the bot check
    served: deque = field(default_factory=deque)    # (time, video) counted in the window
    history: list = field(default_factory=list)     # (time, video) of every video counted
    refusals: list = field(default_factory=list)    # (time, video, status)
    refused_in_row: int = 0


class Limits:
    """What the server knows of its clients; judge() is asked before each request is served."""

    def __init__(self, clients: dict[str, Client], window: float = 3600.0, clock=time.monotonic):
        self.clients = clients          # secret -> Client
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self.anonymous = 0               # requests that named no known client

    def judge(self, headers, path: str) -> tuple[int, str, bytes] | None:
        """None to serve the request, or (status, reason phrase, body) to answer instead."""
        client = self._client(headers)
        if client is None:
            with self._lock:
                self.anonymous += 1
            return 403, "Forbidden: no identity", b""
        video = _video(path)
        with self._lock:
            return self._judge(client, video, self._clock())

    def _judge(self, client: Client, video: str | None, now: float):
        if client.burned:
            client.refusals.append((now, video, 403))
            return 403, BOT_CHECK, BOT_PAGE
        while client.served and client.served[0][0] <= now - self.window:
            client.served.popleft()
        if video is None or any(v == video for _, v in client.served):
            return None   # not a video's request, or one already counted in this window
        if client.budget and len(client.served) >= client.budget:
            client.refused_in_row += 1
            status = 403 if client.refused_in_row > client.bot_check_after else 429
            client.refusals.append((now, video, status))
            return (403, BOT_CHECK, BOT_PAGE) if status == 403 else (429, "Too Many Requests", b"")
        client.refused_in_row = 0
        client.served.append((now, video))
        client.history.append((now, video))
        return None

    def _client(self, headers) -> Client | None:
        secret = headers.get(HEADER) or _cookie(headers.get("Cookie") or "", COOKIE)
        return self.clients.get(secret) if secret else None

    def most_in_a_window(self, name: str) -> int:
        """The most videos the client `name` was served in any window: its budget, at most,
        when the pool keeps its word."""
        times = sorted(t for c in self.clients.values() if c.name == name for t, _ in c.history)
        most, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= self.window:
                start += 1
            most = max(most, end - start + 1)
        return most

    def by_name(self, name: str) -> Client:
        return next(c for c in self.clients.values() if c.name == name)


def _video(path: str) -> str | None:
    parts = path.split("?", 1)[0].strip("/").split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "yt" else None


def _cookie(header: str, name: str) -> str | None:
    for pair in header.split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return None


def write_cookies(path: Path, secret: str, host: str = "127.0.0.1") -> Path:
    """A Netscape cookies file (what yt-dlp's --cookies reads) holding the client's secret."""
    expires = int(time.time()) + 30 * 86400
    path.write_text("# Netscape HTTP Cookie File\n"
                    f"{host}\tFALSE\t/\tFALSE\t{expires}\t{COOKIE}\t{secret}\n")
    return path
