"""A forward proxy on 127.0.0.1 for one identity: what a proxy URL in an identities file is.

yt-dlp sends a plain-http request through a proxy as `GET http://host/path` with a
Proxy-Authorization header; this proxy checks the credentials (407 without them), adds the
identity's secret as the X-Emu-Identity header the stand-in's limits read (limits.py), and
forwards the request to the sample site. It forwards to 127.0.0.1 only: nothing a test
runs may reach outside.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
from urllib.parse import urlsplit

from emu_data.synthetic.site import serving
from emu_data.synthetic.site.limits import HEADER

_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


class _Forward(http.server.BaseHTTPRequestHandler):
    expected: str = ""     # the Proxy-Authorization header value it takes
    secret: str = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Proxy-Authorization") != self.expected:
            return self._answer(407, "Proxy Authentication Required", {"Proxy-Authenticate": 'Basic realm="emu"'})
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname != "127.0.0.1":
            return self._answer(403, "Forbidden: loopback only")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers[HEADER] = self.secret
        upstream = http.client.HTTPConnection("127.0.0.1", target.port or 80, timeout=30)
        try:
            upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
            response = upstream.getresponse()
            body = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP | {"content-length", "transfer-encoding"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            upstream.close()

    def _answer(self, status: int, reason: str, headers: dict | None = None):
        self.send_response(status, reason)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def forward_proxy(user: str, password: str, secret: str):
    """A proxy on a free 127.0.0.1 port while the block runs; yields its URL with the
    credentials it wants (http://user:password@127.0.0.1:PORT)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    handler = type("Forward", (_Forward,), {"expected": f"Basic {token}", "secret": secret})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as port:
        yield f"http://{user}:{password}@127.0.0.1:{port}"
