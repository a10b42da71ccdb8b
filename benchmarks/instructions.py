"""Instructions per request under callgrind: the A/B that the host's noise cannot move.

run.py measures time, and on a shared VM its ratios move by 0.05-0.15 between runs (a
neighbour's load, the host's clock): too much to see a change of 0.03. This counts the x86
instructions the server runs per request, every thread of it (the request path, the log
writer, the span export), with valgrind's callgrind: the same count, to about 0.5 %, on
every run and every day. Instructions are not time (cache misses and the GIL pauses that a
p99 meets are not in them), so this complements run.py; it answers "does this change add
work, and how much does each signal add", and gives the floor of a design.

Per variant (run.py's, plus `all-0`: all on, no request ever sampled): bake, start the
server under `valgrind --tool=callgrind --instr-atstart=no` as run.py starts it, send
`--warmup` requests, wait `--settle` seconds (the SDK exports what is queued every 5 s: the
warm-up's spans leave before counting starts), switch counting on, send `--requests`
keep-alive requests one at a time, wait `--settle` seconds again (their spans leave), switch
it off. `x bare` is bare's instructions per request over the variant's, the same shape as
run.py's throughput ratio. Needs valgrind (Debian: apt-get install -y valgrind) and uv; about
40 s per variant and template with the defaults.

    uv run python benchmarks/instructions.py --template ../after --baseline-template ../before
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faults
import run as bench

NEVER_SAMPLED = bench.Variant(
    "all-0",
    "all on, no request sampled, no exporter: what an unsampled request costs",
    bench.SIGNALS,
    {**bench.NO_EXPORT, "OTEL_TRACES_SAMPLER": "always_off"},
)
VARIANTS = [v for v in bench.VARIANTS if not v.peer] + [NEVER_SAMPLED]
DEFAULT = ("bare", "metrics+logs", "all-0", "all-10", "all-10-otlp", "all-100", "all-100-otlp")
TOTALS = re.compile(rb"^(?:totals|summary): (\d+)", re.MULTILINE)


def get(connection: http.client.HTTPConnection, count: int) -> None:
    """`count` requests of the target route, one at a time on one keep-alive connection."""
    for _ in range(count):
        connection.request("GET", bench.TARGET_PATH)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{bench.TARGET_PATH} answered {response.status}")


def callgrind(pid: int, switch: str) -> None:
    """Switch counting on or off in the running server; callgrind_control exits 0 even when it failed."""
    result = bench.run(["callgrind_control", "--instr=" + switch, str(pid)], timeout=120)
    if "OK" not in result.stdout:
        raise RuntimeError(f"callgrind_control --instr={switch} {pid}: {result.stdout.strip()}")


def instructions(out: Path) -> int:
    """Instructions counted in callgrind's output file(s) of one run (a file per dump)."""
    counted = 0
    for part in sorted(out.parent.glob(out.name + "*")):
        found = TOTALS.findall(part.read_bytes())
        counted += int(found[-1]) if found else 0
    return counted


def measure(
    variant: bench.Variant, python: str, cwd: Path, logs: Path, sink: tuple[int, Path], args: argparse.Namespace
) -> dict[str, Any]:
    out = logs / f"{variant.name}.callgrind"
    for stale in out.parent.glob(out.name + "*"):
        stale.unlink()
    valgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    otlp_port, sink_stats = sink
    server_for = bench.server_for(variant, python, cwd, logs, otlp_port, valgrind, timeout=600, stop_timeout=120)
    with server_for as server:
        warmup = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        get(warmup, args.warmup)
        warmup.close()
        time.sleep(args.settle)
        # A new connection: the pause outlasts keep-alive. Its accept is counted, once.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        callgrind(server.process.pid, "on")
        spans_before = bench.received_spans(sink_stats)
        started = time.monotonic()
        get(connection, args.requests)
        elapsed = time.monotonic() - started
        time.sleep(args.settle)
        callgrind(server.process.pid, "off")
        spans = bench.received_spans(sink_stats) - spans_before
        connection.close()
    counted = instructions(out)
    if not counted:
        stderr = server.stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{variant.name}: callgrind counted nothing; the server's stderr:\n{stderr}")
    return {
        "variant": variant.name,
        "instructions_per_request": round(counted / args.requests),
        "requests": args.requests,
        # Sampling is random: at 10 % the share of sampled requests moves by a few points a run.
        "spans_exported_per_request": round(spans / args.requests, 3),
        "seconds_under_valgrind": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help=f"comma-separated subset of: {','.join(v.name for v in VARIANTS)}")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per variant")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting starts")
    parser.add_argument(
        "--settle",
        type=float,
        default=6.0,
        help="seconds waited after the warm-up and counted after the last request (the SDK exports every 5 s)",
    )
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--template", type=Path, default=bench.TEMPLATE_DIR)
    parser.add_argument("--baseline-template", type=Path, help="A/B: also measure this template")
    parser.add_argument("--workdir", type=Path, help="keep bakes and venvs here (default: a temporary directory)")
    parser.add_argument("--output", type=Path, default=bench.RESULTS_DIR / "instructions.json")
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0 or args.settle < 0:
        sys.exit("--requests must be at least 1, --warmup and --settle at least 0")
    wanted = [name for name in (args.variants or ",".join(DEFAULT)).split(",") if name]
    unknown = set(wanted) - {v.name for v in VARIANTS}
    if unknown:
        # The peer stack is left out: its own app, not a bake of this template.
        sys.exit(f"unknown variants: {sorted(unknown)}; known: {', '.join(v.name for v in VARIANTS)}")
    variants = [v for v in VARIANTS if v.name in wanted or v.name == "bare"]
    for tool in ("uv", "valgrind", "taskset"):  # valgrind's package has callgrind_control too
        bench.require(tool)
    templates = {"candidate": args.template.resolve()}
    if args.baseline_template:
        templates["baseline"] = args.baseline_template.resolve()
    python = bench.find_python()

    with contextlib.ExitStack() as stack:
        workdir = bench.make_workdir(stack, args.workdir, "instructions-")
        projects: dict[str, dict[str, tuple[str, Path]]] = {}
        for label, template in templates.items():
            where = workdir / label
            (where / "logs").mkdir(parents=True, exist_ok=True)
            projects[label] = {}
            for v in variants:
                if v.bake_key not in projects[label]:
                    bench.log(f"{label}: baking {v.bake_key}")
                    project = bench.bake(template, where, v.bake_key, v.signals)
                    projects[label][v.bake_key] = (bench.make_venv(project, python), project)
        sink = (bench.free_port(), workdir / "otlp-sink.json")
        if any(v.otlp for v in variants):
            # A venv with opentelemetry-proto: the receiver counts spans only where it can decode them.
            decoder = next(p for key, (p, _) in projects["candidate"].items() if "use_tracing" in key)
            stack.enter_context(faults.collector(decoder, *sink))
        runs: list[dict[str, Any]] = []
        for rep in range(args.repetitions):
            for v in variants:
                for label in templates:
                    py, cwd = projects[label][v.bake_key]
                    bench.log(f"round {rep + 1}: {label} {v.name}")
                    result = measure(v, py, cwd, workdir / label / "logs", sink, args)
                    runs.append({"template": label, "round": rep, **result})
    summary = summarize(runs, list(templates), [v.name for v in variants])
    changes = compare(summary["candidate"], summary["baseline"]) if "baseline" in summary else {}
    report = {
        "runs": runs,
        "summary": summary,
        "changes": changes,
        "templates": {label: str(path) for label, path in templates.items()},
        "commits": {label: bench.commit_of(path) for label, path in templates.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(summary, list(templates), changes))
    for name, change in changes.items():
        verdict = "PASS" if change >= -bench.MAX_DROP else "MISS"
        print(
            f"- {verdict} {name}: change of x bare (instructions) against the baseline: {change:+.3f} "
            f"(goal >= -{bench.MAX_DROP})"
        )
    print(f"\nJSON: {args.output}")


def compare(after: dict[str, Any], before: dict[str, Any]) -> dict[str, float]:
    """Each variant's change of x bare, both templates against their own bare."""
    return {
        name: round(after[name]["x_bare"] - before[name]["x_bare"], 3)
        for name in after
        if name in before and name != "bare"
    }


def summarize(runs: list[dict[str, Any]], labels: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per template and variant: instructions per request (median of rounds) and x bare."""
    summary: dict[str, dict[str, Any]] = {}
    for label in labels:
        counts = {
            name: sorted(r["instructions_per_request"] for r in runs if r["template"] == label and r["variant"] == name)
            for name in names
        }
        medians = {name: values[len(values) // 2] for name, values in counts.items() if values}
        spans = {
            name: statistics.median(
                r["spans_exported_per_request"] for r in runs if r["template"] == label and r["variant"] == name
            )
            for name in medians
        }
        summary[label] = {
            name: {
                "instructions_per_request": value,
                "spans_exported_per_request": spans[name],
                "spread": round((max(counts[name]) - min(counts[name])) / value, 4),
                "x_bare": round(medians["bare"] / value, 3),
            }
            for name, value in medians.items()
        }
        if "metrics+logs" in medians:
            for row in summary[label].values():
                row["minus_metrics_logs"] = round(row["x_bare"] - summary[label]["metrics+logs"]["x_bare"], 3)
    return summary


def markdown(summary: dict[str, dict[str, Any]], labels: list[str], changes: dict[str, float]) -> str:
    lines = []
    for label in labels:
        lines += [
            f"{label}:",
            "",
            "| Variant | instructions per request | spread of rounds | x bare | minus metrics+logs "
            "| spans exported per request |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in summary[label].items():
            minus = row.get("minus_metrics_logs")
            lines.append(
                f"| {name} | {row['instructions_per_request']:,} | {row['spread']:.2%} | {row['x_bare']:.3f} | "
                f"{'-' if minus is None else f'{minus:+.3f}'} | {row['spans_exported_per_request']:.3f} |"
            )
        lines.append("")
    if changes:
        after, before = summary["candidate"], summary["baseline"]
        lines += ["A/B (x bare, each template against its own bare):", ""]
        lines += ["| Variant | before | after | change |", "|---|---|---|---|"]
        for name, change in changes.items():
            lines.append(f"| {name} | {before[name]['x_bare']:.3f} | {after[name]['x_bare']:.3f} | {change:+.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
