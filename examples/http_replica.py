"""A tiny HTTP service for deployment examples and tests: answers every GET with
`hello from <pid> v<VERSION>` on $PORT, `/slow?s=N` after N seconds, and on
`/hang` stops accepting connections while the process lives on (a hung server,
for health-check tests)."""

from __future__ import annotations

import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
        if url.path == "/hang":
            self.server.socket.close()  # new connections are refused from now on
        body = f"hello from {os.getpid()} v{os.environ.get('VERSION', '1')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the replica's log for the application


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler)
    server.daemon_threads = True
    server.serve_forever()
