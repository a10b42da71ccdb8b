"""A minimal OTLP/HTTP trace receiver: accepts POST /v1/traces, answers 200.

It counts requests, bytes and (when opentelemetry-proto is importable) spans,
and writes those counts as JSON to --stats when it gets SIGTERM, so a run can
show that spans really left the service.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
except ImportError:  # still a valid sink, only without a span count
    ExportTraceServiceRequest = None

STATS = {"requests": 0, "bytes": 0, "spans": 0}
LOCK = threading.Lock()


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
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", required=True, help="file to write the counts to on exit")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)

    def stop(signum: int, frame: Any) -> None:
        with open(args.stats, "w") as out:
            json.dump(STATS, out)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
