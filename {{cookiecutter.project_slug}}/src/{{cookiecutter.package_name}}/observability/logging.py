"""Logs: loguru, one JSON object per line on stdout, with {% if cookiecutter.use_tracing %}trace and {% endif %}request ids.

- stdlib `logging` (uvicorn, httpx, the OpenTelemetry SDK, ...) is routed into loguru: one sink,
  no line printed twice. `log_request` writes the access line, uvicorn's own is off.
- The event loop never waits for stdout: lines go to a buffer of `log_buffer_lines`
  drained by a writer thread. While stdout blocks (a stalled log collector), lines
  beyond it are dropped and counted, and the count is logged once stdout drains.
- String values are cut at `log_max_value_length` characters, and orjson escapes
  control characters: user-controlled text cannot break or forge a line.
"""

import atexit
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from types import CodeType, FrameType
from typing import IO, TYPE_CHECKING, Any

import orjson
from loguru import logger

from ..settings import Settings
from .context import RequestInfo, request_id_var
{%- if cookiecutter.use_tracing %}
from .tracing import current_trace_ids
{%- endif %}

if TYPE_CHECKING:
    from loguru import Message, Record

# stdlib loggers whose own handlers would print a second copy of each line.
_ROUTED_LOGGERS = ("uvicorn", "uvicorn.error")
# httpx logs every call's full URL at INFO, credentials in it included (a signed
# URL's query, user:password@); uvicorn's access log, which the app's access line
# replaces, is on when the uvicorn command serves the app: both kept to their warnings.
_QUIET_LOGGERS = ("httpx", "uvicorn.access")
_RESERVED = frozenset({"timestamp", "level", "message", "logger", "module", "function", "line"})


class BufferedWriter:
    """Writes lines to a stream from a background thread, never blocking callers."""

    def __init__(self, stream: IO[bytes], max_lines: int, flush_interval: float = 0.05) -> None:
        self._stream = stream
        self._max_lines = max_lines
        self._interval = flush_interval
        self._lines: deque[bytes] = deque()
        self._closed = False
        self._dropped = 0
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        if self._closed:  # the process may end any moment now, by its signal: write at once
            self._write([line])
            return
        if len(self._lines) >= self._max_lines:
            with self._drop_lock:  # the writer thread resets the count
                self._dropped += 1  # stdout is stalled; keep memory bounded
            return
        self._lines.append(line)

    def close(self) -> None:
        """Write out what is buffered; later lines are written at once."""
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join(timeout=5)
            self._drain()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._drain()

    def _drain(self) -> None:
        with self._drain_lock:
            lines = self._lines
            # What is buffered now, not what arrives while taking it: a batch stays within
            # max_lines, so a stuck write holds at most that many lines besides the buffer.
            batch = [lines.popleft() for _ in range(len(lines))]
            with self._drop_lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                warning = {
                    "timestamp": _timestamp(time.time_ns() // 1000),
                    "level": "WARNING",
                    "message": f"log buffer full: dropped {dropped} log lines while stdout was blocked",
                    "logger": __name__,
                    "dropped_lines": dropped,
                }
                batch.append(orjson.dumps(warning, option=orjson.OPT_APPEND_NEWLINE))
            if batch:
                self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        with suppress(OSError, ValueError):  # stdout closed: nowhere left to log
            self._stream.write(b"".join(batch))
            self._stream.flush()


class JsonFormatter:
    """Turns a loguru record into one flat JSON line."""

    def __init__(self, settings: Settings) -> None:
        self._static = {
            "service_name": settings.service_name,
            "service_version": settings.version,
            "deployment_environment": settings.environment,
        }
        self._max = settings.log_max_value_length
        # Where log_request was called from -> (code, module, function, line): a few call sites.
        self._origins: dict[tuple[int, int], tuple[CodeType, str, str, int]] = {}

    def __call__(self, record: "Record") -> bytes:
        extra = record["extra"]
        entry: dict[str, Any] = {
            "timestamp": _timestamp(round(record["time"].timestamp() * 1e6)),
            "level": record["level"].name,
            "message": self._cut(record["message"]),
            "logger": extra.get("logger") or record["name"],
            "module": record["module"],
            "function": record["function"],
            "line": record["line"],
            **self._static,
        }
{%- if cookiecutter.use_tracing %}
        ids = current_trace_ids()
        if ids is not None:
            # Unsampled requests have ids too (to correlate by), but no trace to open.
            entry["trace_id"], entry["span_id"], entry["trace_sampled"] = ids
{%- endif %}
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in extra.items():
            if key not in _RESERVED:
                entry[key] = self._cut(value) if isinstance(value, str) else value
        exception = record["exception"]
        if exception is not None and exception.type is not None:
            entry["exception_type"] = exception.type.__name__
            entry["exception_message"] = self._cut(str(exception.value))
            stack = traceback.format_exception(exception.type, exception.value, exception.traceback)
            entry["exception_stacktrace"] = self._cut("".join(stack))
        return orjson.dumps(
            entry, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        )

    def access_line(self, info: RequestInfo, level: str, caller: FrameType) -> bytes:
        """The access line as `__call__` writes it: skipping loguru's record halves its cost."""
        cut = self._cut
        code = caller.f_code
        key = (id(code), caller.f_lasti)  # hashing a code object is slow; its id is not
        origin = self._origins.get(key)
        if origin is None or origin[0] is not code:
            module = caller.f_globals["__name__"].rpartition(".")[2]
            origin = self._origins[key] = (code, module, code.co_name, caller.f_lineno)
        entry: dict[str, Any] = {
            "timestamp": _timestamp(time.time_ns() // 1000),
            "level": level,
            # Method and route are bounded (see context.py); only the path needs cutting.
            "message": f"{info.method} {info.route} {info.status}",
            "logger": "access",
            "module": origin[1],
            "function": origin[2],
            "line": origin[3],
            **self._static,
        }
{%- if cookiecutter.use_tracing %}
        if info.trace_id is not None:
            entry["trace_id"] = info.trace_id
            entry["span_id"] = info.span_id
            entry["trace_sampled"] = info.sampled
{%- endif %}
        entry["request_id"] = info.request_id
        entry["method"] = info.method
        entry["route"] = info.route
        entry["path"] = cut(info.path)
        entry["status"] = info.status
        entry["duration_ms"] = round(info.duration * 1e6) / 1e3  # round(x, 3) is 5 times slower
        entry["client"] = info.client
        entry["user_agent"] = None if info.user_agent is None else cut(info.user_agent)
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)

    def _cut(self, value: str) -> str:
        if len(value) <= self._max:
            return value
        return f"{value[: self._max]}...[truncated {len(value) - self._max} chars]"


_second_prefix: tuple[int, str] = (-1, "")


def _timestamp(micros: int) -> str:
    """Epoch microseconds as 2026-01-31T12:00:00.123456Z: UTC, parsed fastest by log collectors."""
    global _second_prefix  # noqa: PLW0603 - the date, formatted once a second, replaced atomically
    second, micros = divmod(micros, 1_000_000)
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


class InterceptHandler(logging.Handler):
    """Sends stdlib log records to loguru, keeping their logger name and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Find the frame that called logging, so module/function/line are the caller's.
        # Skip this method and the logging module's frames: loguru then names the caller.
        frame: FrameType | None = sys._getframe(0)
        depth = 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.bind(logger=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


_writer: BufferedWriter | None = None  # one per process
# In JSON mode the access line, written once per request, skips loguru's record building.
_json_access: tuple[JsonFormatter, BufferedWriter, int] | None = None


def configure_logging(settings: Settings) -> None:
    """Install the sink. Safe to call again (tests, workers): it replaces the old one."""
    global _writer, _json_access  # noqa: PLW0603 - one stdout writer per process
    logger.remove()
    threshold = logger.level(settings.log_level).no
    if settings.log_format == "json":
        if _writer is None:
            _writer = BufferedWriter(sys.stdout.buffer, settings.log_buffer_lines)
            atexit.register(_writer.close)
        formatter = JsonFormatter(settings)
        writer = _writer

        def sink(message: "Message") -> None:
            writer.write(formatter(message.record))

        _json_access = (formatter, writer, threshold)
        logger.add(sink, level=threshold, format="{message}", catch=True, diagnose=False)
    else:
        # Colours only on a terminal (loguru would also colour on CI): piped, plain text.
        logger.add(
            sys.stderr,
            level=settings.log_level,
            format=_console_format(settings.log_max_value_length),
            colorize=sys.stderr.isatty(),
            diagnose=settings.debug,
        )
        _json_access = None

    # The stdlib drops records under the threshold before building them. Level 0 would
    # also make uvicorn believe TRACE is on and wrap the app in its MessageLoggerMiddleware,
    # which logs every ASGI message of every request.
    logging.basicConfig(handlers=[InterceptHandler()], level=threshold, force=True)
    for name in _ROUTED_LOGGERS:
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, threshold))


def _console_format(max_length: int) -> Callable[["Record"], str]:
    """One line for people: the message, then the request's ids and the bound fields."""
    head = (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
        "<cyan>{name}:{function}:{line}</cyan> <level>{message}</level>"
    )

    def shown(value: object) -> str:
        # A client writes the path and the User-Agent: no newline or terminal escape of theirs
        # may forge a line or drive the terminal.
        text = str(value)[:max_length]
        return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")

    def console_format(record: "Record") -> str:
        fields = {k: v for k, v in record["extra"].items() if k != "logger" and v is not None}
        request_id = request_id_var.get()
        if request_id is not None:
            fields["request_id"] = request_id
{%- if cookiecutter.use_tracing %}
        ids = current_trace_ids()
        if ids is not None:
            fields["trace_id"] = ids[0]
{%- endif %}
        if not fields:
            return head + "\n{exception}"
        # Referenced by name, not pasted into the format: values may hold braces or markup.
        record["extra"]["_console_fields"] = " ".join(f"{k}={shown(v)}" for k, v in fields.items())
        return head + " <dim>{extra[_console_fields]}</dim>\n{exception}"

    return console_format


def flush_logs() -> None:
    """Write out buffered lines, and later ones at once: call at the end of the lifespan
    (a worker of several then ends by the signal uvicorn re-raises, which runs no atexit)."""
    if _writer is not None:
        _writer.close()


def log_request(info: RequestInfo) -> None:
    """The access line: one per request, with everything needed to find it again."""
    level = "ERROR" if info.status >= 500 else "INFO"
    if _json_access is not None:
        formatter, writer, threshold = _json_access
        if (logging.ERROR if info.status >= 500 else logging.INFO) >= threshold:
            # Frame 1 is log_request's caller, the frame loguru's opt(depth=1) names.
            writer.write(formatter.access_line(info, level, sys._getframe(1)))
        return
    logger.opt(depth=1).bind(
        logger="access",
{%- if cookiecutter.use_tracing %}
        trace_id=info.trace_id,  # the span has ended: it is no longer current
{%- endif %}
        method=info.method,
        route=info.route,
        path=info.path,
        status=info.status,
        duration_ms=round(info.duration * 1e6) / 1e3,
        client=info.client,
        user_agent=info.user_agent,
    ).log(level, f"{info.method} {info.route} {info.status}")
