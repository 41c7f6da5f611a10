#!/usr/bin/env python3
"""A loopback-only HTTP server for a wheelhouse (wheels + SHA256SUMS), for tests and local trials.

    python tools/ci_wheel_server.py DIR [--port 8000] [--seconds 600]
    FLASH_TREE_ATTN_WHEEL_URL=http://127.0.0.1:8000/ pip install flash-tree-attn

It binds 127.0.0.1 only, records every request path, can delay answers (to exercise timeouts) and stops
by itself after --seconds. In tests, use `WheelServer` as a context manager.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
import urllib.parse
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, fmt, *args):  # keep test output clean; requests are recorded instead
        pass

    def _record(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.server.requests.append(path)
        if self.server.delay_s:
            time.sleep(self.server.delay_s)

    def do_GET(self):
        self._record()
        super().do_GET()

    def do_HEAD(self):
        self._record()
        super().do_HEAD()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list
    delay_s: float

    def handle_error(self, request, client_address):
        # A client that gave up (timeout tests) closes the socket mid-answer; that is expected here.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class WheelServer:
    """Serve `directory` on http://127.0.0.1:<free port>/ until the context exits."""

    def __init__(self, directory, delay_s: float = 0.0, port: int = 0):
        self.directory = Path(directory)
        handler = functools.partial(_Handler, directory=str(self.directory))
        self._server = _Server(("127.0.0.1", port), handler)
        self._server.requests = []
        self._server.delay_s = delay_s
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def requests(self) -> list:
        return list(self._server.requests)

    def __enter__(self) -> WheelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long (default 600)")
    args = ap.parse_args()
    with WheelServer(args.directory, port=args.port) as srv:
        print(f"serving {args.directory} at {srv.url} for {args.seconds:.0f} s", flush=True)
        time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
