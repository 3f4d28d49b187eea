"""A local stand-in for the web: the sample world published in each source's real format.

Tests and the offline demo point the real download paths (yt-dlp, img2dataset, net.py) at
files written here and served by a static HTTP server on 127.0.0.1, so nothing is faked
past the socket. One module per source publishes its files; this module serves them.
"""

from __future__ import annotations

import contextlib
import http.server
import sys
import threading
from functools import partial
from pathlib import Path

from emu_data.synthetic.site.youtube import SiteVideo, publish_youtube

__all__ = ["SiteVideo", "publish_youtube", "serve"]

# ---- serving ------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus scripted answers: faults[path] is a list of status codes handed
    out, one per request, before the file is served normally."""

    faults: dict[str, list[int]] = {}
    limits = None   # limits.Limits: YouTube's per-client budgets, asked before each request
    requests: list[str] | None = None   # every path asked for, in order (tests count them)
    lock = threading.Lock()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if self.requests is not None:
            with self.lock:
                self.requests.append(path)
        verdict = self.limits.judge(self.headers, path) if self.limits is not None else None
        if verdict is not None:
            return self._refuse(*verdict)
        with self.lock:
            queue = self.faults.get(path)
            status = queue.pop(0) if queue else None
        if status is None:
            return super().do_GET()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _refuse(self, status: int, reason: str, body: bytes):
        self.send_response(status, reason)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test and demo output clean
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hangs up mid-body (a size cap, a timeout) is what tests do on
        purpose: say nothing. Anything else is still reported."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(root: Path, faults: dict[str, list[int]] | None = None, port: int = 0, limits=None,
          requests: list[str] | None = None):
    """Serve root on 127.0.0.1 while the block runs; yields the base URL. port 0 picks a free
    one; a given port that is taken raises OSError. limits: a limits.Limits that rations
    clients as YouTube does. requests: a list every path asked for is appended to."""
    handler = type("Handler", (_Handler,), {"faults": {k: list(v) for k, v in (faults or {}).items()},
                                            "limits": limits, "requests": requests})
    with serving(_QuietServer(("127.0.0.1", port), partial(handler, directory=str(root)))) as port:
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def serving(server: http.server.HTTPServer):
    """Run a server in a thread while the block runs; yields its port."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
