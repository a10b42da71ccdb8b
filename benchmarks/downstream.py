"""A downstream HTTP service for `faults.py --workload downstream`: answers every GET after a delay.

It stands for what a real request waits on (another service, a database): each
request gets `200 {"ok": true}` on its keep-alive connection --delay-ms after its
head was read. A thread per connection sleeps the delay (the kernel's timers are
precise to tens of microseconds; an asyncio loop's are rounded up to the next
millisecond). It shares its core with the load generator, which spins between
requests, so it asks for a real-time priority: a woken thread then runs at
once instead of after the generator's time slice, and the delay stays the
delay. On SIGTERM it writes to --stats, as JSON, how many requests it answered
and whether it ran at that priority. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from otlp_sink import QuietServer

BODY = b'{"ok":true}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
ANSWERED = [0]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service's HTTP client pools connections
    disable_nagle_algorithm = True
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        # One write: a response in two segments waits for the client's delayed ACK (40 ms).
        self.wfile.write(RESPONSE)
        with LOCK:
            ANSWERED[0] += 1

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would cost more than the answer
        pass


def realtime_priority() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # inherited by every connection's thread
    except (AttributeError, OSError) as exc:
        print(f"downstream.py: no real-time priority ({exc}); delays may stretch", file=sys.stderr)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--stats", help="write the answered count here on SIGTERM")
    args = parser.parse_args()
    Handler.delay = args.delay_ms / 1000
    realtime = realtime_priority()
    stopping = threading.Event()
    # Before the socket listens: a SIGTERM as soon as it is reachable still writes the stats.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.set())
    server = QuietServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    while not stopping.wait(0.5):  # a timeout keeps the main thread responsive to signals
        pass
    server.shutdown()
    if args.stats:
        with open(args.stats, "w") as out:
            json.dump({"answered": ANSWERED[0], "realtime_priority": realtime}, out)


if __name__ == "__main__":
    main()
