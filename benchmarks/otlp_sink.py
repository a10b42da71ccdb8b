"""A minimal OTLP/HTTP trace receiver: accepts POST /v1/traces, answers 200.

It counts requests, bytes and (when opentelemetry-proto is importable) spans,
and writes those counts as JSON to --stats after every export and when it gets
SIGTERM, so a run can show that spans really left the service.

Two faulty collectors for `faults.py`: `--delay S` answers every export only
after S seconds (a slow collector), and `--black-hole` accepts connections and
never reads nor answers them (a collector behind a dropping firewall, or hung).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
except ImportError:  # still a valid sink, only without a span count
    ExportTraceServiceRequest = None  # type: ignore[assignment,misc]

STATS = {"requests": 0, "bytes": 0, "spans": 0, "connections": 0}
DELAY = 0.0
STATS_PATH = ""
LOCK = threading.Lock()


def write_stats() -> None:
    tmp = f"{STATS_PATH}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as out:
        json.dump(STATS, out)
    os.replace(tmp, STATS_PATH)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        spans = 0
        if ExportTraceServiceRequest is not None:
            message = ExportTraceServiceRequest.FromString(body)
            spans = sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        with LOCK:
            STATS["requests"] += 1
            STATS["bytes"] += len(body)
            STATS["spans"] += spans
            write_stats()
        if DELAY:
            time.sleep(DELAY)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    """A client that goes away mid-connection (a server stopped with an export in flight) is no error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def black_hole(port: int) -> None:
    """Accept connections, keep them open, never read nor answer (the newest 1000 are kept)."""
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    held: list[socket.socket] = []
    while True:
        conn, _ = listener.accept()
        with LOCK:
            STATS["connections"] += 1
        held.append(conn)
        if len(held) > 1000:
            held.pop(0).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", required=True, help="file to write the counts to (after each export, on exit)")
    parser.add_argument("--delay", type=float, default=0.0, help="answer each export after this many seconds")
    parser.add_argument("--black-hole", action="store_true", help="accept connections and never answer")
    args = parser.parse_args()
    global DELAY, STATS_PATH
    DELAY, STATS_PATH = args.delay, args.stats

    def stop(signum: int, frame: Any) -> None:
        write_stats()  # no lock: the main thread may hold it; the counts only ever grow
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.black_hole:
        black_hole(args.port)
        return
    QuietServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
