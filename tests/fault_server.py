"""A misbehaving web server for the reliability tests: each fault a crawl meets, on demand.

URLs are `/<fault>/<name>`; the fault decides the answer (FAULTS lists them), anything else
is a static file under `root`. `healed = True` turns the persistent transient faults (5xx,
429, slow, reset, truncated) into normal answers, as a server that recovers would.

The server listens on 127.0.0.2, which the tests allow (`allowed_networks`); a `Trap` on
127.0.0.1 stands for an internal service: the guard must keep every request away from it.
"""

from __future__ import annotations

import http.server
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from functools import partial
from pathlib import Path

HOST = "127.0.0.2"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"  # refused before any packet leaves

# fault -> what the server does
FAULTS = {
    "ok": "the image",
    "mislabelled": "the image, served as text/plain",
    "404": "404 Not Found",
    "429-once": "429 with Retry-After: 1, then the image",
    "429": "429 with Retry-After: 1 until healed",
    "503-once": "503 with Retry-After: 0, then the image",
    "500": "500 until healed",
    "503": "503 without Retry-After until healed",
    "slow": "no answer for 5 s (past the 2 s timeout) until healed",
    "drip": "headers at once, then 16 bytes every 0.25 s: each read is in time, the body is not",
    "reset": "TCP reset before any answer until healed",
    "reset-once": "TCP reset on the first request, then the image",
    "truncated": "Content-Length of the image, half of it sent, connection closed, until healed",
    "html": "an HTML page with status 200",
    "loop": "a redirect to itself",
    "chain": "redirects through 12 hops",
    "to-private": "a redirect to the trap on 127.0.0.1",
    "to-metadata": "a redirect to the cloud metadata address",
    "huge-declared": "Content-Length: 10**12",
    "huge-stream": "an endless body without Content-Length",
    "bomb": "a valid PNG of 20000 x 20000 pixels (over twice Pillow's limit), ~50 KB",
    "bomb-soft": "a valid PNG of 10000 x 10000 pixels (over Pillow's limit, under twice it)",
}
PERSISTENT = {"429", "500", "503", "slow", "reset", "truncated"}


def bomb_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of the given size, compressed without ever holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)   # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512   # a crawl opens ~100 connections at once; 5 would drop SYNs

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return  # clients hanging up on slow or endless answers is the point
        super().handle_error(request, client_address)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: "_Quiet"
    owner: "FaultServer"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        owner = self.owner
        with owner.lock:
            owner.hits[path] += 1
            hit = owner.hits[path]
        if path in owner.redirects:
            return self._redirect(owner.redirects[path])
        fault = path.strip("/").split("/", 1)[0]
        if fault not in FAULTS:
            return super().do_GET()
        if owner.healed and fault in PERSISTENT:
            fault = "ok"
        getattr(self, "_" + fault.replace("-", "_"))(path, hit)

    # ---- answers ----
    def _send(self, status: int, body: bytes = b"", content_type: str = "image/png", **headers):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, target: str):
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reset_connection(self):
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()
        self.close_connection = True

    def _ok(self, path, hit):
        self._send(200, self.owner.image)

    def _mislabelled(self, path, hit):
        self._send(200, self.owner.image, "text/plain")

    def _404(self, path, hit):
        self._send(404, b"not found", "text/plain")

    def _429_once(self, path, hit):
        self._send(429, content_type="text/plain", Retry_After="1") if hit == 1 else self._ok(path, hit)

    def _429(self, path, hit):
        self._send(429, content_type="text/plain", Retry_After="1")

    def _503_once(self, path, hit):
        self._send(503, content_type="text/plain", Retry_After="0") if hit == 1 else self._ok(path, hit)

    def _500(self, path, hit):
        self._send(500, b"oops", "text/plain")

    def _503(self, path, hit):
        self._send(503, b"busy", "text/plain")

    def _slow(self, path, hit):
        time.sleep(5)
        self._ok(path, hit)

    def _image_headers(self) -> bytes:
        """Status and headers of the image answer; its body is the caller's to send (or not)."""
        body = self.owner.image
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def _drip(self, path, hit):
        body = self._image_headers()
        for i in range(0, len(body), 16):
            self.wfile.write(body[i:i + 16])
            self.wfile.flush()
            time.sleep(0.25)

    def _reset(self, path, hit):
        self._reset_connection()

    def _reset_once(self, path, hit):
        self._reset_connection() if hit == 1 else self._ok(path, hit)

    def _truncated(self, path, hit):
        body = self._image_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _html(self, path, hit):
        self._send(200, b"<html><body>Not the image you are looking for</body></html>", "text/html")

    def _loop(self, path, hit):
        self._redirect(path)

    def _chain(self, path, hit):
        name = path.rsplit("/", 1)[1]
        stem, _, hop = name.partition("~")
        hop = int(hop or 0)
        self._redirect(f"/chain/{stem}~{hop + 1}" if hop < 12 else f"/ok/{stem}")

    def _to_private(self, path, hit):
        self._redirect(f"{self.owner.trap_url}{path}")

    def _to_metadata(self, path, hit):
        self._redirect(METADATA_URL)

    def _huge_declared(self, path, hit):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(self.owner.image)
        self.close_connection = True

    def _huge_stream(self, path, hit):
        self.protocol_version = "HTTP/1.0"   # body delimited by closing the connection
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        block = b"\0" * 2**16
        for _ in range(2**14):               # 1 GiB, unless the client hangs up first (it must)
            self.wfile.write(block)
        self.close_connection = True

    def _bomb(self, path, hit):
        self._send(200, self.owner.bombs[(20000, 20000)])

    def _bomb_soft(self, path, hit):
        self._send(200, self.owner.bombs[(10000, 10000)])


class FaultServer:
    """Serve FAULTS on 127.0.0.2 while the `with` block runs."""

    def __init__(self, image: bytes, trap_url: str, root: Path | None = None):
        self.image, self.trap_url = image, trap_url
        self.hits: Counter[str] = Counter()
        self.redirects: dict[str, str] = {}   # exact path -> Location, before anything else
        self.healed = False
        self.lock = threading.Lock()
        self.bombs = {size: bomb_png(*size) for size in ((20000, 20000), (10000, 10000))}
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Quiet((HOST, 0), partial(handler, directory=str(root or Path.cwd())))
        self.base = f"http://{HOST}:{self._server.server_address[1]}"

    def url(self, fault: str, name: str) -> str:
        return f"{self.base}/{fault}/{name}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class Trap:
    """An 'internal service' on 127.0.0.1 that counts every connection it receives."""

    def __init__(self):
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self):
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._listener.close()
