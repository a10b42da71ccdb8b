"""A local stand-in for the OSV vulnerability API, for auditing where OSV is out of reach.

It speaks the two calls an OSV client makes (`POST /v1/querybatch`, then
`GET /v1/vulns/{id}` for each hit), answers from the advisories it is given,
and records every package it was asked about. The audit tool itself runs for
real; only the database is local.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (package name, version) -> the OSV records of the advisories that affect it
Advisories = Mapping[tuple[str, str], list[dict[str, Any]]]


def advisory(vuln_id: str, package: str, fixed: str, summary: str) -> dict[str, Any]:
    """An OSV record affecting every version of `package` before `fixed`."""
    return {
        "id": vuln_id,
        "summary": summary,
        "modified": "2026-11-01T00:00:00Z",
        "published": "2026-11-01T00:00:00Z",
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
            }
        ],
    }


class OsvService:
    def __init__(self, advisories: Advisories) -> None:
        self.advisories = advisories
        self.queried: list[tuple[str, str, str]] = []  # (ecosystem, name, version)
        self.fetched: list[str] = []

    def _batch(self, body: dict[str, Any]) -> dict[str, Any]:
        results = []
        for query in body["queries"]:
            package = query["package"]
            self.queried.append((package["ecosystem"], package["name"], query["version"]))
            hits = self.advisories.get((package["name"], query["version"]), [])
            results.append({"vulns": [{"id": v["id"], "modified": v["modified"]} for v in hits]} if hits else {})
        return {"results": results}

    def _record(self, vuln_id: str) -> dict[str, Any] | None:
        self.fetched.append(vuln_id)
        return next((v for hits in self.advisories.values() for v in hits if v["id"] == vuln_id), None)

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the base URL."""
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                if self.path != "/v1/querybatch":
                    self._reply(404, {"code": 5, "message": "Not found"})
                    return
                self._reply(200, service._batch(json.loads(self.rfile.read(length))))

            def do_GET(self) -> None:
                record = service._record(self.path.removeprefix("/v1/vulns/"))
                if record is None:
                    self._reply(404, {"code": 5, "message": "Bug not found."})
                else:
                    self._reply(200, record)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="osv-service", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
