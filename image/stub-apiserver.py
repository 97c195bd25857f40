#!/usr/bin/env python3
"""A stand-in Kubernetes API server for image/check.sh, run only inside a network namespace of its own.

Usage: stub-apiserver.py READY_FILE [PORT]

Plain HTTP on 127.0.0.1:PORT (default 6443). Answers what `appserver-operator run` asks while it
starts: /version, an empty list for every collection, and watches that stay open without events;
anything else gets a 404 Status. Enough for the operator to connect, start its controller and
report ready; it stores nothing. Creates READY_FILE once listening. Stops by itself after 60 s.
Prints each request line to stdout.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEADLINE = time.monotonic() + 60

VERSION = {
    "major": "1", "minor": "35", "gitVersion": "v1.35.0-stub", "gitCommit": "stub",
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
    "compiler": "gc", "platform": "linux/amd64",
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request on stdout
        print(f"{self.command} {self.path}", flush=True)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/version":
            return self.reply(200, VERSION)
        if query.get("watch") == ["true"]:
            # A watch with no events: headers now, then hold the stream open until the deadline.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            while time.monotonic() < DEADLINE:
                time.sleep(0.5)
            return None
        if url.path.startswith("/api/") or url.path.startswith("/apis/"):
            return self.reply(200, {"apiVersion": "v1", "kind": "List",
                                    "metadata": {"resourceVersion": "1"}, "items": []})
        return self.not_found()

    def not_found(self):
        self.reply(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                         "reason": "NotFound", "code": 404, "message": "stub: not found"})

    do_POST = do_PUT = do_PATCH = do_DELETE = not_found


def main() -> int:
    ready = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 6443
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    open(ready, "w").close()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while time.monotonic() < DEADLINE:
        time.sleep(0.5)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
