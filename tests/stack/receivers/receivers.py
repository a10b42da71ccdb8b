"""Test-only receivers for the stack tier (tests/test_stack.py).

    python receivers.py otlp      OTLP/HTTP on :4318 (POST /v1/traces, protobuf, decoded);
                                  GET /spans on the same port lists the decoded spans as JSON;
                                  :8888/metrics answers the scrape job the stack keeps for Jaeger.
    python receivers.py webhook   Alertmanager webhook on :9095 (POST /alerts);
                                  GET /alerts lists the received payloads as JSON.

Every port also answers GET /health.
"""

from __future__ import annotations

import gzip
import json
import signal
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOCK = threading.Lock()
RECORDS: list[dict[str, Any]] = []
REQUESTS = {"ok": 0, "bad": 0}


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in items}


def decode_traces(body: bytes) -> list[dict[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "status_code": span.status.code,
                        "service_name": resource.get("service.name"),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                        "attributes": _attributes(span.attributes),
                    }
                )
    return spans


class Handler(BaseHTTPRequestHandler):
    role = ""

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        return body

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b'{"status": "ok"}')
        elif self.path in ("/spans", "/alerts"):
            with LOCK:
                body = json.dumps(RECORDS).encode()
            self._send(200, body)
        elif self.path == "/metrics":
            with LOCK:
                lines = [
                    "# TYPE otlp_standin_requests_total counter",
                    f'otlp_standin_requests_total{{result="ok"}} {REQUESTS["ok"]}',
                    f'otlp_standin_requests_total{{result="bad"}} {REQUESTS["bad"]}',
                ]
            self._send(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        body = self._body()
        if self.role == "otlp":
            if self.path != "/v1/traces":
                self._send(404, b"")
                return
            if not (self.headers.get("Content-Type") or "").startswith("application/x-protobuf"):
                self._send(415, b"")
                return
            try:
                spans = decode_traces(body)
            except Exception as error:  # a body that is not an OTLP request
                with LOCK:
                    REQUESTS["bad"] += 1
                self._send(400, json.dumps({"error": repr(error)}).encode())
                return
            with LOCK:
                RECORDS.extend(spans)
                REQUESTS["ok"] += 1
            # An empty ExportTraceServiceResponse.
            self._send(200, b"", "application/x-protobuf")
        else:
            with LOCK:
                RECORDS.append({"path": self.path, "payload": json.loads(body or b"null")})
            self._send(200, b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(role: str, port: int) -> ThreadingHTTPServer:
    handler = type(f"{role.title()}Handler", (Handler,), {"role": role})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role not in ("otlp", "webhook"):
        sys.exit("usage: receivers.py otlp|webhook")
    # PID 1 of its container: stop at once on `docker compose stop/down`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if role == "otlp":
        serve("otlp", 8888)
    print(f"{role} receiver listening", flush=True)
    handler = type(f"{role.title()}Handler", (Handler,), {"role": role})
    ThreadingHTTPServer(("0.0.0.0", 4318 if role == "otlp" else 9095), handler).serve_forever()


if __name__ == "__main__":
    main()
