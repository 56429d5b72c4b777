"""A local HTTP server for the tests of downloads: serves release assets from memory on 127.0.0.1, honouring Range
requests, and can cut every body short."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        state = self.server.state
        state["requests"].append((self.path, self.headers.get("Range")))
        data = state["files"].get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body if state["truncate"] is None else body[:state["truncate"]])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(files: dict[str, bytes] | None = None) -> Iterator[ThreadingHTTPServer]:
    """A threaded server serving ``state["files"]`` (path -> bytes); ``state["truncate"] = N`` stops every body after
    N bytes; every request's (path, Range) goes to ``state["requests"]``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = {"files": dict(files or {}), "truncate": None, "requests": []}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
