"""Trace backend faults: what a dead, hung or slow collector costs the requests (issue 8).

One command (from the template repository's root):

    uv run python benchmarks/faults.py

bakes the metrics + logs variant and the all-on variant (JSON logs, metrics,
tracing at 100 % sampling, spans exported over OTLP/HTTP) with run.py's
functions, and runs each scenario below under the same bounded open-loop load
(`loadgen.py`, default 1500 req/s for 30 s, server on core 0, load and
collector on core 1):

- baseline: the metrics + logs bake (no tracing);
- no-export: all on, OTEL_TRACES_EXPORTER=none: what tracing itself costs, with
  no backend to fail;
- no-op: all on, the service's batch span processor handing every span to an
  exporter that drops it (`noop_export.py`): the span pipeline as shipped, with a
  collector that costs nothing; a fault should cost nothing on top of it;
- healthy: all on, exporting to `otlp_sink.py`;
- refused: all on, the endpoint an unused 127.0.0.1 port (connection refused);
  afterwards `otlp_sink.py` starts on that port and a short load checks that
  the export resumes;
- black-hole: all on, a listener that accepts and never answers;
- slow: all on, a collector that answers every export after --delay seconds.

Two workloads (--workload): `items`, the trivial endpoint of run.py, where
tracing's own cost per request is a large share of the latency; and
`downstream`, the shape of a real request: `/api/downstream` calls a local
downstream service (`downstream.py`, on core 1) that answers after
--downstream-delay-ms (default 2 ms), so the request waits on I/O as a
service's requests do, and tracing adds its client span and `traceparent`.

For each it records p50/p99 latency from the scheduled time, failed or non-2xx
requests, the server's RSS at 1/3, 2/3 and the end of the load and its peak
(VmHWM), the log lines that report an export failure, and how long the server
took to stop on SIGTERM (checked against the span flush budget,
APP_SPAN_FLUSH_SECONDS, default 5 s, plus a margin for draining and exiting).
Sub-millisecond p99s move from run to run, so every scenario runs
--repetitions times, in rotating order, and the table gives medians (p99 ratios
are medians of per-round ratios) and each p99's range over the rounds. It prints
a Markdown table and writes benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import run as bench

# A log line that reports a failed export or dropped spans (the SDK's and the service's own wording; since
# issue 22 a collector that has never answered is reported once, at start: "... where nothing answers yet").
EXPORT_FAILURE = re.compile(
    r"export.*(fail|error|exception|retry|retrying|timed? ?out|drop)|queue full|dropping|nothing answers",
    re.IGNORECASE,
)
METRICS_LOGS = ("use_json_logging", "use_metrics")
# The path each workload loads and its default rate (the downstream route's HTTP client costs more CPU).
WORKLOADS = {"items": (bench.TARGET_PATH, 1500.0), "downstream": ("/api/downstream", 200.0)}
# How long the service waits for queued spans on SIGTERM (its APP_SPAN_FLUSH_SECONDS default; before issue 22
# the same 5 s came from OTEL_BSP_EXPORT_TIMEOUT), and what draining requests and exiting may add to it.
FLUSH_BUDGET_S = 5.0
STOP_MARGIN_S = 1.5


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    collector: str | None  # None: no collector; "sink", "refused", "black-hole" or "slow"
    traced: bool = True
    noop: bool = False  # with no collector: a no-op exporter instead of none

    @property
    def variant(self) -> bench.Variant:
        if not self.traced:
            return bench.Variant(f"fault-{self.name}", self.description, METRICS_LOGS)
        if self.noop:
            return bench.Variant(f"fault-{self.name}", self.description, bench.SIGNALS, noop_export=True)
        if self.collector is None:
            return bench.Variant(f"fault-{self.name}", self.description, bench.SIGNALS, bench.NO_EXPORT)
        return bench.Variant(f"fault-{self.name}", self.description, bench.SIGNALS, otlp=True)


SCENARIOS = [
    Scenario("baseline", "metrics + logs bake, no tracing", None, traced=False),
    Scenario("no-export", "all on, 100 % sampled, OTEL_TRACES_EXPORTER=none", None),
    Scenario("no-op", "all on, 100 % sampled, batch processor + no-op exporter", None, noop=True),
    Scenario("healthy", "all on, 100 % sampled, collector healthy", "sink"),
    Scenario("refused", "all on, collector port closed (connection refused)", "refused"),
    Scenario("black-hole", "all on, collector accepts and never answers", "black-hole"),
    Scenario("slow", "all on, collector answers after --delay seconds", "slow"),
]


def wait_listening(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not listening on {port} after {timeout}s")


@contextlib.contextmanager
def collector(python: str, port: int, stats: Path, *extra: str) -> Iterator[dict[str, Any]]:
    """otlp_sink.py on core 1; yields a dict filled with its counts once it has stopped."""
    counts: dict[str, Any] = {}
    stats.unlink(missing_ok=True)  # a kept --workdir may hold an earlier run's counts
    cmd = ["taskset", "-c", bench.LOAD_CORE, python, str(bench.BENCH_DIR / "otlp_sink.py")]
    process = subprocess.Popen([*cmd, "--port", str(port), "--stats", str(stats), *extra], env=bench.clean_env())
    try:
        wait_listening(port, process, "collector")
        yield counts
    finally:
        bench.stop(process, timeout=10)
        if stats.exists():
            counts |= json.loads(stats.read_text())


def rss_mb(pid: int) -> float:
    return bench.peak_rss_mb(pid)["VmRSS"]


def load_with_rss(load_python: str, pid: int, port: int, path: str, rate: float, duration: float) -> dict[str, Any]:
    """The fixed-rate load, sampling the server's RSS at 1/3, 2/3 and the end of it."""
    cmd = [
        "taskset", "-c", bench.LOAD_CORE, load_python, str(bench.BENCH_DIR / "loadgen.py"),
        "--port", str(port), "--path", path, "--rate", str(rate), "--duration", str(duration),
    ]  # fmt: skip
    start = time.monotonic()
    samples: dict[str, float] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(cmd, stdout=out, stderr=err)
        try:
            for label, fraction in (("third", 1 / 3), ("two_thirds", 2 / 3)):
                time.sleep(max(0.0, start + duration * fraction - time.monotonic()))
                samples[label] = rss_mb(pid)
            process.wait(timeout=duration + 60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"loadgen failed ({process.returncode}): {err.read().decode()[-2000:]}")
        result = dict(json.loads(out.read().decode().strip().splitlines()[-1]))
    memory = bench.peak_rss_mb(pid)
    samples["end"] = memory["VmRSS"]
    result["rss_mb"] = samples
    result["peak_rss_mb"] = memory["VmHWM"]
    result["failed"] = result["errors"] + result["non_2xx"] + (result["scheduled"] - result["requests"])
    return result


def export_failure_lines(*paths: Path) -> tuple[int, list[str]]:
    lines: list[str] = []
    for path in paths:
        if path.exists():
            with path.open(errors="replace") as text:
                lines += [line.strip() for line in text if EXPORT_FAILURE.search(line)]
    return len(lines), [line[:300] for line in lines[:3]]


@contextlib.contextmanager
def downstream(python: str, delay_ms: float, stats: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """downstream.py on core 1; yields its URL and a dict filled with its count once it has stopped."""
    port = bench.free_port()
    counts: dict[str, Any] = {}
    stats.unlink(missing_ok=True)
    cmd = ["taskset", "-c", bench.LOAD_CORE, python, str(bench.BENCH_DIR / "downstream.py")]
    args = ["--port", str(port), "--delay-ms", str(delay_ms), "--stats", str(stats)]
    process = subprocess.Popen([*cmd, *args], env=bench.clean_env())
    try:
        wait_listening(port, process, "downstream service")
        yield f"http://127.0.0.1:{port}/", counts
    finally:
        bench.stop(process, timeout=10)
        if stats.exists():
            counts |= json.loads(stats.read_text())


def measure(scenario: Scenario, python: str, cwd: Path, logs: Path, args: argparse.Namespace) -> dict[str, Any]:
    variant = scenario.variant
    result: dict[str, Any] = {"scenario": scenario.name, "description": scenario.description}
    otlp_port = bench.free_port() if scenario.collector else None
    stats = logs / f"{scenario.name}-collector.json"
    with contextlib.ExitStack() as stack:
        counts: dict[str, Any] | None = None
        if args.workload == "downstream":
            url, answered = stack.enter_context(
                downstream(args.load_python, args.downstream_delay_ms, logs / f"{scenario.name}-downstream.json")
            )
            variant = dataclasses.replace(variant, env={**variant.env, "APP_DOWNSTREAM_URL": url})
            result["downstream"] = answered
        if scenario.collector in ("sink", "slow", "black-hole"):
            assert otlp_port is not None
            extra = {"sink": (), "slow": ("--delay", str(args.delay)), "black-hole": ("--black-hole",)}
            counts = stack.enter_context(collector(args.load_python, otlp_port, stats, *extra[scenario.collector]))
        server = stack.enter_context(bench.server_for(variant, python, cwd, logs, otlp_port))
        bench.fixed_rate(args.load_python, server.port, args.rate, 1.0, args.path)  # warm-up
        usage = bench.Usage(server.process.pid)
        result["load"] = load_with_rss(
            args.load_python, server.process.pid, server.port, args.path, args.rate, args.duration
        )
        result["load"] |= usage.stop()
        if scenario.collector == "refused":
            # The collector comes back: later batches must reach it.
            assert otlp_port is not None
            back = logs / "refused-recovered-collector.json"
            with collector(args.load_python, otlp_port, back) as recovered:
                came_back = time.monotonic()
                recovery = bench.fixed_rate(args.load_python, server.port, args.rate, args.recovery, args.path)
                # The export thread may still be backing off on a failed batch: wait, bounded.
                first_span_s = None
                while time.monotonic() < came_back + args.recovery + args.recovery_wait:
                    if back.exists() and json.loads(back.read_text()).get("spans", 0) > 0:
                        first_span_s = round(time.monotonic() - came_back, 1)
                        break
                    time.sleep(0.2)
            result["recovery"] = {
                "load_s": args.recovery,
                "failed": recovery["errors"] + recovery["non_2xx"] + recovery["scheduled"] - recovery["requests"],
                "first_span_seen_after_s": first_span_s,
                "collector": recovered,
            }
        stopping = time.monotonic()
        stack.pop_all().close()  # the server stops first (it flushes spans), then the collector
    result["stop_s"] = round(time.monotonic() - stopping, 2)
    result["exit_code"] = server.process.returncode
    if counts is not None:
        result["collector"] = counts
    count, sample = export_failure_lines(server.stdout_path, server.stderr_path)
    result["export_failure_log_lines"] = count
    result["export_failure_sample"] = sample
    with server.stdout_path.open("rb") as out:
        result["log_lines"] = sum(1 for _ in out)
    return result


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per scenario: medians over the rounds, worst cases for what must hold in every round.

    p90 and p99 ratios compare a scenario with the baseline (and no-export, no-op) of the same round.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        loads = [r["load"] for r in runs]

        def ratio(
            reference: str, quantile: str = "p99_ms", rounds: list[dict[str, dict[str, Any]]] = rounds, name: str = name
        ) -> float | None:
            if reference not in rounds[0]:
                return None
            values = [r[name]["load"][quantile] / r[reference]["load"][quantile] for r in rounds]
            return round(float(statistics.median(values)), 2)

        last = runs[-1]
        summary: dict[str, Any] = {
            "p50_ms": round(statistics.median(load["p50_ms"] for load in loads), 3),
            "p99_ms": round(statistics.median(load["p99_ms"] for load in loads), 3),
            "p99_ms_all": [load["p99_ms"] for load in loads],
            "p99_x_baseline": ratio("baseline"),
            "p99_x_no_export": ratio("no-export"),
            "p99_x_noop": ratio("no-op"),
            # Below the machine's stalls (about 1 % of requests): where a shift of the whole
            # distribution shows without the stalls' noise.
            "p90_x_baseline": ratio("baseline", "p90_ms"),
            "p90_x_no_export": ratio("no-export", "p90_ms"),
            "p90_x_noop": ratio("no-op", "p90_ms"),
            "failed": sum(load["failed"] for load in loads),
            "rss_mb": last["load"]["rss_mb"],
            "rss_growth_mb": max(round(load["rss_mb"]["end"] - load["rss_mb"]["third"], 1) for load in loads),
            "peak_rss_mb": max(load["peak_rss_mb"] for load in loads),
            "export_failure_log_lines": [r["export_failure_log_lines"] for r in runs],
            "spans": last["collector"].get("spans") if "collector" in last else None,
            "stop_s": max(r["stop_s"] for r in runs),
            "exit_codes": sorted({r["exit_code"] for r in runs}),
            "foreign_share_of_core": max(load["foreign_share_of_core"] for load in loads),
            # Groups of requests late by 1 ms or more, per round, and when the last round's began.
            "stall_groups": [load["stalls"]["groups"] for load in loads],
            "stall_requests": [load["stalls"]["requests"] for load in loads],
            "stall_starts_s": last["load"]["stalls"]["starts_s"],
        }
        if "recovery" in last:
            summary["recovered_spans"] = [r["recovery"]["collector"].get("spans", 0) for r in runs]
            summary["first_span_after_s"] = [r["recovery"]["first_span_seen_after_s"] for r in runs]
        out[name] = summary
    return out


def checks(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(name: str, value: Any, goal: str, ok: bool) -> None:
        out.append({"check": name, "value": value, "goal": goal, "met": ok})

    # A failure warning may repeat once a minute per kind of message: allow a few kinds per minute.
    max_warnings = 4 * (1 + int((args.duration + args.recovery + 10) // 60))
    for name, r in summary.items():
        check(f"{name}: failed requests (all rounds)", r["failed"], "== 0", r["failed"] == 0)
        check(f"{name}: exit code on SIGTERM", r["exit_codes"], "== [0]", r["exit_codes"] == [0])
        limit = FLUSH_BUDGET_S + STOP_MARGIN_S
        check(f"{name}: stop on SIGTERM (s, worst round)", r["stop_s"], f"<= {limit}", r["stop_s"] <= limit)
        if name != "baseline":
            ratio = r["p99_x_baseline"]
            check(f"{name}: p99 x baseline (no tracing)", ratio, "<= 1.10", ratio is not None and ratio <= 1.10)
        if name in ("refused", "black-hole", "slow") and r["p99_x_noop"] is not None:
            ratio = r["p99_x_noop"]
            check(f"{name}: p99 x no-op (the fault's own cost)", ratio, "<= 1.10", ratio <= 1.10)
            ratio = r["p90_x_noop"]
            check(f"{name}: p90 x no-op (the fault's own cost)", ratio, "<= 1.10", ratio <= 1.10)
        check(
            f"{name}: RSS growth from 1/3 to the end (MB, worst round)",
            r["rss_growth_mb"],
            "<= 5",
            r["rss_growth_mb"] <= 5,
        )
        lines = r["export_failure_log_lines"]
        if name in ("refused", "black-hole"):
            check(
                f"{name}: export-failure log lines per round",
                lines,
                f"1..{max_warnings}",
                all(1 <= n <= max_warnings for n in lines),
            )
        elif name == "slow":  # slow is not failed: a warning only if spans were dropped
            check(
                f"{name}: export-failure log lines per round",
                lines,
                f"<= {max_warnings}",
                all(n <= max_warnings for n in lines),
            )
    if "refused" in summary:
        spans = summary["refused"]["recovered_spans"]
        check(
            "refused: spans received once the collector is back (every round)", spans, "> 0", all(n > 0 for n in spans)
        )
    return out


def markdown(summary: dict[str, dict[str, Any]], path: str, rate: float, duration: float, repetitions: int) -> str:
    lines = [
        f"| Scenario (GET {path}, {rate:g} req/s, {duration:g} s, median of {repetitions}) | p50 ms "
        "| p99 ms: median (min-max over the rounds) | p99 x baseline "
        "| p99 x no-export / no-op | p90 x baseline / no-op | failed requests | RSS MB at 1/3 / 2/3 / end "
        "| peak RSS MB | export-failure log lines | spans received | stop s (exit) | core 0 taken by others (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary.items():
        rss = r["rss_mb"]
        spans = "-" if r["spans"] is None else str(r["spans"])
        if "recovered_spans" in r:
            spans = f"{spans} (back: {r['recovered_spans'][-1]}, first after {r['first_span_after_s'][-1]} s)"
        failures = "-" if name == "baseline" else "/".join(str(n) for n in r["export_failure_log_lines"])
        # The spread shows what a p99 under a millisecond does from one server process to the next.
        p99 = f"{r['p99_ms']:.2f} ({min(r['p99_ms_all']):.2f}-{max(r['p99_ms_all']):.2f})"
        lines.append(
            f"| {name} | {r['p50_ms']:.2f} | {p99} | {fmt_ratio(r['p99_x_baseline'])} | "
            f"{fmt_ratio(r['p99_x_no_export'])} / {fmt_ratio(r['p99_x_noop'])} | "
            f"{fmt_ratio(r['p90_x_baseline'])} / {fmt_ratio(r['p90_x_noop'])} | {r['failed']} | "
            f"{rss['third']:.1f} / {rss['two_thirds']:.1f} / {rss['end']:.1f} | {r['peak_rss_mb']:.1f} | {failures} | "
            f"{spans} | {r['stop_s']:.1f} ({'/'.join(map(str, r['exit_codes']))}) | {r['foreign_share_of_core']:.0%} |"
        )
    return "\n".join(lines)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="items",
        help="items: the trivial endpoint; downstream: a request that calls a downstream service",
    )
    parser.add_argument(
        "--rate", type=float, help="fixed request rate, well below saturation (default: 1500 items, 200 downstream)"
    )
    parser.add_argument(
        "--downstream-delay-ms", type=float, default=2.0, help="the downstream service's answer delay (downstream)"
    )
    parser.add_argument("--repetitions", type=int, default=3, help="rounds of every scenario; the table gives medians")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of load per scenario (10 s p99s spread widely)"
    )
    parser.add_argument("--delay", type=float, default=2.0, help="the slow collector's answer delay (s)")
    parser.add_argument("--recovery", type=float, default=3.0, help="seconds of load once the collector is back")
    parser.add_argument(
        "--recovery-wait", type=float, default=15.0, help="then wait at most this long for the first span"
    )
    parser.add_argument("--scenarios", help=f"comma-separated subset of: {','.join(s.name for s in SCENARIOS)}")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/faults[-downstream].json")
    parser.add_argument("--template", type=Path, default=bench.TEMPLATE_DIR)
    parser.add_argument("--workdir", type=Path, help="keep bakes and venvs here (default: a temporary directory)")
    args = parser.parse_args()
    args.template = args.template.resolve()
    args.path, default_rate = WORKLOADS[args.workload]
    args.rate = args.rate or default_rate
    suffix = "" if args.workload == "items" else f"-{args.workload}"
    args.output = args.output or bench.RESULTS_DIR / f"faults{suffix}.json"
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = set(args.scenarios.split(",")) | {"baseline"}
        unknown = wanted - {s.name for s in SCENARIOS}
        if unknown:
            sys.exit(f"unknown scenarios: {sorted(unknown)}")
        scenarios = [s for s in SCENARIOS if s.name in wanted]
    for tool in ("uv", "taskset"):
        bench.require(tool)
    python = bench.find_python()

    with contextlib.ExitStack() as stack:
        workdir = bench.make_workdir(stack, args.workdir, "bench-faults-")
        logs = workdir / "logs"
        bakes: dict[tuple[str, ...], tuple[str, Path]] = {}
        for s in scenarios:
            signals = s.variant.signals
            if signals not in bakes:
                bench.log(f"baking and installing {s.variant.bake_key}")
                project = bench.bake(args.template, workdir, s.variant.bake_key, signals)
                bakes[signals] = (bench.make_venv(project, python), project)
        # The all-on venv has opentelemetry-proto: the collector counts spans with it.
        args.load_python = bakes.get(bench.SIGNALS, next(iter(bakes.values())))[0]
        versions = bench.installed_versions(
            args.load_python, ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "uvicorn"]
        )
        rounds: list[dict[str, dict[str, Any]]] = []
        for rep in range(args.repetitions):
            shift = rep % len(scenarios)
            results: dict[str, dict[str, Any]] = {}
            for s in scenarios[shift:] + scenarios[:shift]:
                py, cwd = bakes[s.variant.signals]
                r = results[s.name] = measure(s, py, cwd, logs, args)
                load = r["load"]
                bench.log(
                    f"round {rep + 1}/{args.repetitions} {s.name:10} p50 {load['p50_ms']} p99 {load['p99_ms']} ms  "
                    f"failed {load['failed']}  RSS {load['rss_mb']}  HWM {load['peak_rss_mb']} MB  "
                    f"export-failure lines {r['export_failure_log_lines']}  stop {r['stop_s']} s"
                )
            rounds.append({s.name: results[s.name] for s in scenarios})

    summary = summarize(rounds)
    table = markdown(summary, args.path, args.rate, args.duration, args.repetitions)
    verdicts = checks(summary, args)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": {
            "rate": args.rate,
            "duration_s": args.duration,
            "slow_collector_delay_s": args.delay,
            "recovery_load_s": args.recovery,
            "server_core": bench.SERVER_CORE,
            "load_core": bench.LOAD_CORE,
            "workload": args.workload,
            "endpoint": args.path,
            "downstream_delay_ms": args.downstream_delay_ms if args.workload == "downstream" else None,
            "latency_generator": "benchmarks/loadgen.py, open loop, 32 connections",
            "env": "APP_ENVIRONMENT=production APP_LOG_FORMAT=json, OTel defaults (BSP queue 2048)",
            "flush_budget_s": FLUSH_BUDGET_S,
        },
        "versions": versions,
        "rounds": rounds,
        "summary": summary,
        "checks": verdicts,
        "markdown": table,
    }
    bench.write_report(args.output, report, table, verdicts, "check")
    print(f"\nJSON: {args.output}")


if __name__ == "__main__":
    main()
