"""Start the baked service with a span exporter that drops every batch: `python noop_export.py PACKAGE`.

The service's span pipeline runs as configured (the SDK's batch span
processor, its queue and export thread); only the exporter's own work,
encoding each batch and sending it, is left out. That is the no-op
exporter behind the peer stack's batch processor too, so `all-100-noop` and
`peer` run the same pipeline, and `all-100-otlp` against `all-100-noop` is the
exporter's cost. At exit it reports on stderr how many spans it was handed.
"""

import atexit
import runpy
import sys
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

REPORT = "noop exporter: {} spans"

exported = 0


def export(self: OTLPSpanExporter, spans: Sequence[ReadableSpan]) -> SpanExportResult:
    global exported
    exported += len(spans)
    return SpanExportResult.SUCCESS


def report() -> None:
    print(REPORT.format(exported), file=sys.stderr, flush=True)


if __name__ == "__main__":
    package = sys.argv[1]
    # Patched on the class: the exporter the SDK's configurator creates from OTEL_TRACES_EXPORTER=otlp
    # is an instance of it (and so was the subclass of templates before issue 22, which called it).
    OTLPSpanExporter.export = export
    atexit.register(report)
    sys.argv = [package]
    runpy.run_module(package, run_name="__main__", alter_sys=True)
