"""Benchmark 4: HTTP throughput and latency of the daemon's API under wrk, against node_exporter's /metrics.

wrk (50 connections, 2 threads, ``--latency``) drives GET /metrics, /performance-metrics and /optimizations of a daemon
subprocess pointed at the testbed, and node_exporter's /metrics, in the same run; then the daemon's two paths
again while a client POSTs /performance-optimize back to back (decision rounds without a pause). When uvloop is
installed, a second daemon run on uvloop gives the difference it makes. Goals: daemon /metrics
throughput >= 10x node_exporter's; p99 while rounds run <= 1.5x the idle p99.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    answers,
    free_port,
    http_post_json,
    managed_process,
    row,
    running_daemon,
    running_testbed,
    scratch_dir,
    skipped,
    uvloop_available,
    wait_until,
)

NAME = "http_api"
TITLE = "4. HTTP API under wrk"
CONNECTIONS = 50
THREADS = 2
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
GOAL_THROUGHPUT_X = 10.0
GOAL_P99_X = 1.5
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_LATENCY_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_ERRORS = re.compile(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (seconds), request and error counts from wrk's ``--latency`` output."""
    rps = _RPS_LINE.search(text)
    if rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    latency = {f"p{p}_s": float(v) * _UNITS[u] for p, v, u in _LATENCY_LINE.findall(text)}
    errors = _ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    total = _TOTAL.search(text)
    return {
        "requests_per_s": float(rps.group(1)),
        **latency,
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def wrk(url: str, seconds: int) -> dict[str, Any]:
    """Run wrk against ``url`` and return its parsed figures."""
    done = subprocess.run(
        ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    return parse_wrk(done.stdout)


class RoundLoop:
    """POSTs /performance-optimize back to back in a thread until stopped; counts the answers and times the
    rounds that completed."""

    def __init__(self, base: str, token: str, *, timeout: float = 60.0) -> None:
        self._url = base + "/performance-optimize"
        self._token = token
        self._timeout = timeout
        self._stop = threading.Event()
        self.durations: list[float] = []  # of the rounds answered 200
        self.statuses: dict[str, int] = {}  # answers by status code ("0": no answer)
        self._thread = threading.Thread(target=self._loop, name="round-loop", daemon=True)

    @property
    def rounds(self) -> int:
        """Rounds completed (answered 200)."""
        return len(self.durations)

    @property
    def failures(self) -> int:
        """Requests that did not complete a round."""
        return sum(self.statuses.values()) - self.rounds

    def __enter__(self) -> RoundLoop:
        """Start posting."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop after the current request."""
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _ = http_post_json(self._url, {}, token=self._token, timeout=self._timeout)
            except OSError:
                status = 0
            key = str(status)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if status == 200:
                self.durations.append(time.monotonic() - started)


def measure_daemon(base: str, token: str, seconds: int, *, with_rounds: bool) -> dict[str, Any]:
    """wrk on both daemon paths idle, and (``with_rounds``) again while rounds run back to back.

    Without rounds (the uvloop comparison) only /metrics is measured: it keeps ``make bench`` under 15 minutes.
    """
    out: dict[str, Any] = {"metrics_idle": wrk(base + "/metrics", seconds)}
    if not with_rounds:
        return out
    out["performance_metrics_idle"] = wrk(base + "/performance-metrics", seconds)
    out["optimizations_idle"] = wrk(base + "/optimizations", seconds)
    for path, key in (
        ("/metrics", "metrics_rounds"),
        ("/performance-metrics", "performance_metrics_rounds"),
        ("/optimizations", "optimizations_rounds"),
    ):
        with RoundLoop(base, token) as loop:
            out[key] = wrk(base + path, seconds)
        out[key]["rounds_completed"] = loop.rounds
        out[key]["round_failures"] = loop.failures
    return out


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark and return its figures and summary rows."""
    if shutil.which("wrk") is None:
        return skipped(TITLE, "wrk is not installed")
    seconds = 3 if quick else 10
    has_node_exporter = Path(NODE_EXPORTER).is_file()
    has_uvloop = uvloop_available()
    figures: dict[str, Any] = {"wrk": {"connections": CONNECTIONS, "threads": THREADS, "seconds": seconds}}
    with scratch_dir(NAME) as work, running_testbed(work / "testbed") as tb:
        if has_node_exporter:
            port = free_port()
            argv = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"]
            with managed_process("node_exporter", argv, log_dir=work) as exporter:
                url = f"http://127.0.0.1:{port}/metrics"
                wait_until(lambda: exporter.alive() and answers(url), timeout=30, what="node_exporter")
                figures["node_exporter"] = wrk(url, seconds)
        # The daemon as it runs today (asyncio's loop) carries the goals; uvloop is measured beside it.
        with running_daemon(tb.env, work, name="daemon") as daemon:
            figures["daemon"] = measure_daemon(daemon.base, daemon.token, seconds, with_rounds=True)
        figures["daemon"]["event_loop"] = "asyncio"
        if has_uvloop:
            with running_daemon(tb.env, work, name="daemon-uvloop", uvloop=True) as fast:
                figures["daemon_uvloop"] = measure_daemon(fast.base, fast.token, seconds, with_rounds=False)
    return {**summarise(figures, has_uvloop), **figures}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f} ms"


def summarise(figures: dict[str, Any], has_uvloop: bool) -> dict[str, Any]:
    """The summary rows and goal verdicts."""
    d = figures["daemon"]
    loop_name = d["event_loop"]
    rows = []
    exporter = figures.get("node_exporter")
    throughput_x = None
    if exporter is not None:
        throughput_x = d["metrics_idle"]["requests_per_s"] / exporter["requests_per_s"]
        rows.append(
            row(
                f"GET /metrics ({loop_name}), requests/s",
                f"{d['metrics_idle']['requests_per_s']:.0f}/s, p50 {_ms(d['metrics_idle'].get('p50_s'))},"
                f" p99 {_ms(d['metrics_idle'].get('p99_s'))}",
                reference=f"node_exporter {exporter['requests_per_s']:.0f}/s, p99 {_ms(exporter.get('p99_s'))}",
                ratio_text=f"{throughput_x:.1f}x",
                goal=">= 10x node_exporter",
                met=throughput_x >= GOAL_THROUGHPUT_X,
            )
        )
    else:
        rows.append(row("GET /metrics vs node_exporter", "skipped", reference="node_exporter is not installed"))
    rows.append(
        row(
            f"GET /performance-metrics ({loop_name}), requests/s",
            f"{d['performance_metrics_idle']['requests_per_s']:.0f}/s,"
            f" p50 {_ms(d['performance_metrics_idle'].get('p50_s'))},"
            f" p99 {_ms(d['performance_metrics_idle'].get('p99_s'))}",
        )
    )
    p99_ratios = {}
    for path, idle_key, busy_key in (
        ("/metrics", "metrics_idle", "metrics_rounds"),
        ("/performance-metrics", "performance_metrics_idle", "performance_metrics_rounds"),
        ("/optimizations", "optimizations_idle", "optimizations_rounds"),
    ):
        idle, busy = d[idle_key], d[busy_key]
        x = busy["p99_s"] / idle["p99_s"]
        p99_ratios[path] = x
        rows.append(
            row(
                f"p99 of GET {path} while rounds run back to back",
                f"{_ms(busy['p99_s'])} ({busy['requests_per_s']:.0f}/s; {busy['rounds_completed']} rounds)",
                reference=f"idle {_ms(idle['p99_s'])}",
                ratio_text=f"{x:.2f}x",
                goal="<= 1.5x idle",
                met=x <= GOAL_P99_X,
            )
        )
    uvloop_gain = {}
    if has_uvloop:
        fast = figures["daemon_uvloop"]
        for path, key in (("/metrics", "metrics_idle"),):
            x = fast[key]["requests_per_s"] / d[key]["requests_per_s"]
            uvloop_gain[path] = x
            rows.append(
                row(
                    f"uvloop vs asyncio, GET {path}",
                    f"{fast[key]['requests_per_s']:.0f}/s, p99 {_ms(fast[key].get('p99_s'))}",
                    reference=f"asyncio {d[key]['requests_per_s']:.0f}/s, p99 {_ms(d[key].get('p99_s'))}",
                    ratio_text=f"{x:.2f}x",
                )
            )
    else:
        rows.append(row("uvloop vs asyncio", "skipped", reference="uvloop is not installed"))
    verdicts = [r["met"] for r in rows if r["met"] is not None]
    return {
        "goal": "daemon /metrics requests/s >= 10x node_exporter's; p99 while rounds run <= 1.5x idle p99",
        "goal_met": all(verdicts) if verdicts else None,
        "ratio_metrics_vs_node_exporter": throughput_x,
        "ratio_p99_rounds_vs_idle": p99_ratios,
        "ratio_uvloop_vs_asyncio": uvloop_gain,
        "rows": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
