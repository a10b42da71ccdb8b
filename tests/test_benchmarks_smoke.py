"""The benchmark harness runs end to end with tiny durations, so that it cannot rot.

No timing is asserted here (that is what `benchmarks/run.py` reports); only that
every variant bakes, serves the target route without errors, writes its access
lines and exports its spans, and that the report is complete.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TEMPLATE_DIR, require_executable, unavailable

pytestmark = [pytest.mark.generated, pytest.mark.xdist_group("benchmarks")]

VARIANTS = {
    *("bare", "logs", "metrics", "tracing", "metrics+logs"),
    *("all-100", "all-100-noop", "all-10", "all-10-otlp", "all-100-otlp", "peer"),
}
WITH_LOGS = {"logs", "metrics+logs", "all-100", "all-100-noop", "all-10", "all-10-otlp", "all-100-otlp", "peer"}
# Measured at a fixed rate too (the others: throughput only).
WITH_LATENCY = {"bare", "all-100", "all-100-noop", "all-10", "all-10-otlp", "all-100-otlp"}
EXPORTING = {"all-100-otlp", "all-10-otlp", "all-100-noop"}


def require_harness_tools(*tools: str) -> None:
    for tool in tools:
        require_executable(tool)
    if (os.cpu_count() or 1) < 2:
        unavailable("the harness pins the server and the load generator to two different cores")


def run_harness(script: str, tmp_path: Path, *args: str) -> tuple[Path, str]:
    """Run a harness script with tiny durations; its JSON report and its stdout."""
    output = tmp_path / "report.json"
    command = [
        sys.executable,
        str(TEMPLATE_DIR / "benchmarks" / script),
        *args,
        "--output", str(output),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=TEMPLATE_DIR, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return output, result.stdout


def test_harness_measures_every_variant(tmp_path: Path) -> None:
    require_harness_tools("uv", "wrk", "taskset")
    output, stdout = run_harness(
        "run.py",
        tmp_path,
        "--repetitions", "1",
        "--duration", "1",
        "--rate", "200",
        "--no-meta",
        "--retries", "0",
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert set(report["summary"]) == VARIANTS
    for name in VARIANTS:  # a star marks a contended variant
        assert re.search(rf"^\| {re.escape(name)}( \*)? \|", stdout, re.MULTILINE), f"no table row for {name}"
    for run in report["runs"]:
        name = run["variant"]
        # `python -m <package>` exits 0 on SIGTERM; plain `uvicorn` re-raises the signal once it has drained.
        assert run["exit_code"] in (0, -signal.SIGTERM), f"{name}: the server did not stop cleanly"
        assert run["throughput"]["rps"] > 0 and run["throughput"]["non_2xx"] == 0, name
        assert ("latency" in run) == (name in WITH_LATENCY), name
        if name in WITH_LATENCY:
            latency = run["latency"]
            assert latency["errors"] == 0 and latency["non_2xx"] == 0, name
            assert latency["requests"] == latency["scheduled"], f"{name}: fixed-rate requests went unanswered"
            assert latency["rate"] == 200, name
        assert run["memory_mb"]["VmHWM"] > 0, name
        if name in WITH_LOGS:
            # One access line per request (the readiness probe and startup lines add a few).
            assert run["log_lines"] >= run["requests_sent"], f"{name}: access lines are missing"
        if name in EXPORTING:
            # Counted per variant: the receiver's stats before and after, or the no-op exporter's own count.
            assert 0 < run["spans_delivered"] <= run["access_lines"], f"{name}: {run['spans_delivered']} spans"
    assert report["otlp_receiver"]["spans"] > 0, "the OTLP variant exported no span"
    # One fixed rate for all: bare's own phase is every variant's reference.
    assert report["bare_references"] == []
    assert report["summary"]["all-10-otlp"]["p99_added_ms"]["median"] is not None
    assert "minus_metrics_logs" in report["summary"]["all-10-otlp"]
    targets = {t["target"] for t in report["targets"]}
    assert "all-10-otlp p99 added at half its own saturation (ms)" in targets
    assert "metrics+logs throughput x bare" in targets


def test_ab_mode_compares_two_templates_at_each_variants_own_rate(tmp_path: Path) -> None:
    """`--baseline-template`: both templates' variants in the same round, latency at half their own saturation."""
    require_harness_tools("uv", "wrk", "taskset")
    output, stdout = run_harness(
        "run.py",
        tmp_path,
        "--baseline-template", str(TEMPLATE_DIR),
        "--variants", "all-10-otlp",
        "--repetitions", "1",
        "--duration", "1",
        "--no-meta",
        "--retries", "0",
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert set(report["templates"]) == {"candidate", "baseline"}
    runs = {(run["template"], run["variant"]) for run in report["runs"]}
    assert runs == {(t, v) for t in ("candidate", "baseline") for v in ("bare", "all-10-otlp")}
    for run in report["runs"]:
        # Half of what this very server sustained in the throughput phase just before.
        assert run["latency"]["rate"] == round(run["throughput"]["rps"] / 2), run["variant"]
    # Bare of the same template and round, at all-10-otlp's own rate: its p99 reference.
    references = {(ref["template"], ref["rate"]) for ref in report["bare_references"]}
    references |= {(run["template"], run["latency"]["rate"]) for run in report["runs"] if run["variant"] == "bare"}
    for run in report["runs"]:
        if run["variant"] == "all-10-otlp":
            assert (run["template"], run["latency"]["rate"]) in references
    assert set(report["ab"]) == {"all-10-otlp"}
    assert "A/B" in stdout
    assert "all-10-otlp: change of x bare against the baseline template" in {t["target"] for t in report["targets"]}


def test_fault_mode_runs_every_scenario(tmp_path: Path) -> None:
    """`benchmarks/faults.py` with tiny durations: every collector fault runs and is reported."""
    require_harness_tools("uv", "taskset")
    output, stdout = run_harness(
        "faults.py",
        tmp_path,
        "--duration", "1.5",
        "--rate", "200",
        "--delay", "1",
        "--recovery", "1",
        "--repetitions", "1",
    )  # fmt: skip
    report = json.loads(output.read_text())
    names = ["baseline", "no-export", "no-op", "healthy", "refused", "black-hole", "slow"]
    assert [list(one_round) for one_round in report["rounds"]] == [names]
    assert list(report["summary"]) == names
    results = report["rounds"][0]
    for name, run in results.items():
        assert re.search(rf"^\| {re.escape(name)} \|", stdout, re.MULTILINE), f"no table row for {name}"
        assert run["exit_code"] == 0, f"{name}: the server did not stop cleanly"
        assert run["load"]["failed"] == 0, f"{name}: requests failed"
        assert set(run["load"]["rss_mb"]) == {"third", "two_thirds", "end"}, name
    assert results["healthy"]["collector"]["spans"] > 0, "the healthy collector got no span"
    assert results["refused"]["export_failure_log_lines"] >= 1, "no export-failure warning"
    assert results["refused"]["recovery"]["collector"]["spans"] > 0, "export did not resume"
    assert report["summary"]["slow"]["p99_x_noop"] is not None
    assert report["summary"]["slow"]["p90_x_noop"] is not None
    assert {check["check"] for check in report["checks"]} >= {
        "refused: p99 x no-op (the fault's own cost)",
        "refused: p90 x no-op (the fault's own cost)",
        "black-hole: p99 x baseline (no tracing)",
    }


def test_fault_mode_loads_a_request_that_calls_a_downstream_service(tmp_path: Path) -> None:
    """`faults.py --workload downstream`: the route's downstream call reaches `downstream.py`."""
    require_harness_tools("uv", "taskset")
    output, stdout = run_harness(
        "faults.py",
        tmp_path,
        "--workload", "downstream",
        "--scenarios", "refused",
        "--duration", "1.5",
        "--rate", "100",
        "--recovery", "1",
        "--repetitions", "1",
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert report["method"]["endpoint"] == "/api/downstream"
    assert "GET /api/downstream" in stdout
    results = report["rounds"][0]
    assert list(results) == ["baseline", "refused"]
    for name, run in results.items():
        assert run["exit_code"] == 0, f"{name}: the server did not stop cleanly"
        load = run["load"]
        assert load["failed"] == 0, f"{name}: requests failed"
        # Every request of the warm-up, the load and (refused) the recovery made one downstream call.
        recovery = run.get("recovery", {}).get("load_s", 0)
        assert run["downstream"]["answered"] == round(100 * (1.0 + 1.5 + recovery)), name
    assert report["summary"]["refused"]["p99_x_baseline"] is not None


def test_instruction_counts_repeat_and_each_signal_adds_work(tmp_path: Path) -> None:
    """`benchmarks/instructions.py`, the template against itself: callgrind's count per request is the
    same for both (what makes it an A/B the host's noise cannot move) and grows with the signals."""
    require_harness_tools("uv", "valgrind", "taskset")
    output, stdout = run_harness(
        "instructions.py",
        tmp_path,
        "--baseline-template", str(TEMPLATE_DIR),
        "--variants", "all-0,all-100-otlp",
        "--requests", "200",
        "--warmup", "50",
        "--settle", "5.5",  # the SDK exports every 5 s: the warm-up's spans before, the counted ones within
    )  # fmt: skip
    report = json.loads(output.read_text())
    runs = [(run["template"], run["variant"]) for run in report["runs"]]
    assert sorted(runs) == sorted((t, v) for t in ("candidate", "baseline") for v in ("bare", "all-0", "all-100-otlp"))
    for label, summary in report["summary"].items():
        counts = {name: row["instructions_per_request"] for name, row in summary.items()}
        assert counts["bare"] > 100_000, label  # a request through uvicorn and FastAPI
        assert counts["bare"] < counts["all-0"] < counts["all-100-otlp"], counts
        assert summary["bare"]["x_bare"] == 1.0
        # The counted requests' spans, every one, and none of the warm-up's.
        assert summary["all-100-otlp"]["spans_exported_per_request"] == 1.0, summary["all-100-otlp"]
        assert summary["all-0"]["spans_exported_per_request"] == 0
    for name, row in report["summary"]["candidate"].items():
        twin = report["summary"]["baseline"][name]["instructions_per_request"]
        assert abs(row["instructions_per_request"] / twin - 1) < 0.02, f"{name}: {row} against {twin}"
    assert set(report["changes"]) == {"all-0", "all-100-otlp"}
    assert all(abs(change) < 0.02 for change in report["changes"].values()), report["changes"]
    assert re.search(r"^\| all-0 \| [\d,]+ \|", stdout, re.MULTILINE), stdout
    assert "- PASS all-100-otlp: change of x bare (instructions) against the baseline" in stdout
