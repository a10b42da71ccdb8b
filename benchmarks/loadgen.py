"""Open-loop, fixed-rate HTTP/1.1 load generator (what wrk cannot do).

Requests are scheduled at exact times (start + i / rate), independent of the
responses, over a pool of keep-alive connections. A request whose time has come
while every connection is busy waits for one, and that wait counts: latency is
measured from the scheduled time, as wrk2 does, so a stalled server cannot hide
its queue (no coordinated omission). The scheduler spins between close
deadlines: it runs alone on its own core.

Prints one JSON object: achieved rate, errors, latency percentiles in ms, and
the stalls: late requests (1 ms or more) grouped when less than 50 ms apart,
with when each group started. A p99 under a millisecond is decided by how many
requests such stalls catch, so their times show whether they follow the server
(an export every N seconds) or the machine (a fixed period in every variant).
Standard library only (uses uvloop when importable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import time
from collections import deque


class Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.intended = 0.0
        self.sent = 0.0
        self.busy = False  # a request is in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.intended = intended
        self.sent = time.perf_counter()
        self.busy = True
        self.transport.write(self.pool.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[total:]
        self.busy = False
        self.pool.done(self, status, self.intended, self.sent)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class Pool:
    def __init__(self, request: bytes, expected: int) -> None:
        self.request = request
        self.idle: list[Connection] = []
        self.waiting: deque[float] = deque()
        self.latencies: list[float] = []  # from the scheduled time
        self.timeline: list[tuple[float, float]] = []  # (scheduled time, latency)
        self.service: list[float] = []  # from the moment the request was written
        self.errors = 0
        self.idle_closed = 0  # idle keep-alive connections the server closed: not an error
        self.non_2xx = 0
        self.completed = 0
        self.expected = expected
        self.finished = asyncio.get_running_loop().create_future()

    def submit(self, intended: float) -> None:
        if self.idle:
            self.idle.pop().send(intended)
        else:
            self.waiting.append(intended)

    def done(self, conn: Connection, status: int, intended: float, sent: float) -> None:
        now = time.perf_counter()
        self.latencies.append(now - intended)
        self.timeline.append((intended, now - intended))
        self.service.append(now - sent)
        if not 200 <= status < 300:
            self.non_2xx += 1
        self._next(conn)

    def lost(self, conn: Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if not conn.busy:
            # The server's keep-alive timeout closed a connection that sat idle (a low rate over
            # many connections): no request was lost.
            self.idle_closed += 1
            return
        self.errors += 1
        self._count()

    def _next(self, conn: Connection) -> None:
        self._count()
        if self.waiting:
            conn.send(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _count(self) -> None:
        self.completed += 1
        if self.completed >= self.expected and not self.finished.done():
            self.finished.set_result(None)


def stalls(
    timeline: list[tuple[float, float]], start: float, threshold: float = 0.001, gap: float = 0.05
) -> dict[str, object]:
    """Late requests (latency >= threshold) grouped when scheduled less than `gap` apart."""
    groups: list[dict[str, float]] = []
    for intended, latency in sorted(timeline):
        if latency < threshold:
            continue
        at = intended - start
        if groups and at - groups[-1]["last_s"] < gap:
            group = groups[-1]
            group["requests"] += 1
            group["max_ms"] = max(group["max_ms"], latency * 1000)
            group["last_s"] = at
        else:
            groups.append({"at_s": at, "last_s": at, "requests": 1, "max_ms": latency * 1000})
    return {
        "threshold_ms": threshold * 1000,
        "groups": len(groups),
        "requests": sum(int(g["requests"]) for g in groups),
        "starts_s": [round(g["at_s"], 3) for g in groups[:200]],
        "worst_ms": round(max((g["max_ms"] for g in groups), default=0.0), 2),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(host: str, port: int, path: str, rate: float, duration: float, connections: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-loadgen/1\r\n\r\n".encode()
    pool = Pool(request, total)
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Connection(pool), host, port)
        pool.idle.append(conn)
    # The generator's own GC pauses would be charged to the server: none while measuring.
    gc.collect()
    gc.disable()
    start = time.perf_counter() + 0.01
    interval = 1.0 / rate
    i = 0
    while i < total:
        now = time.perf_counter()
        due = start + i * interval
        if due > now:
            # Sleep through long gaps; spin (yielding to I/O) through short ones.
            await asyncio.sleep(due - now - 0.002 if due - now > 0.003 else 0)
            continue
        while i < total and start + i * interval <= now:
            pool.submit(start + i * interval)
            i += 1
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.finished, timeout=max(10.0, duration))
    elapsed = time.perf_counter() - start
    gc.enable()
    lat = sorted(pool.latencies)
    svc = sorted(pool.service)
    ms = 1000.0
    return {
        "rate_target": rate,
        "rate_achieved": round(len(lat) / elapsed, 1),
        "requests": len(lat),
        "scheduled": total,
        "errors": pool.errors,
        "idle_closed": pool.idle_closed,
        "non_2xx": pool.non_2xx,
        "p50_ms": round(percentile(lat, 50) * ms, 3),
        "p90_ms": round(percentile(lat, 90) * ms, 3),
        "p99_ms": round(percentile(lat, 99) * ms, 3),
        "p999_ms": round(percentile(lat, 99.9) * ms, 3),
        "max_ms": round(lat[-1] * ms, 3) if lat else None,
        "service_p50_ms": round(percentile(svc, 50) * ms, 3),
        "service_p99_ms": round(percentile(svc, 99) * ms, 3),
        "stalls": stalls(pool.timeline, start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/items/42")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.host, args.port, args.path, args.rate, args.duration, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
