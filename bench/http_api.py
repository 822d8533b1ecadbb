"""Benchmark 4: HTTP throughput and latency of the daemon's API, against node_exporter's /metrics.

wrk (50 connections, 2 threads, ``--latency``) drives GET /metrics, /performance-metrics and /optimizations of a
daemon subprocess pointed at the testbed, and node_exporter's /metrics, in the same run; then the daemon's three
paths again while a client POSTs /performance-optimize back to back (decision rounds without a pause). wrk saturates
the API: its figures are throughput, and its percentiles are mostly queueing. A fixed-rate open-loop client then
sends 200 requests/s to each path for 60 s, in one-second windows without and with rounds back to back by turns,
timing each request from when it was due. When uvloop is installed, a second daemon run on uvloop gives the
difference it makes. Goals: daemon /metrics throughput >= 10x node_exporter's; at the fixed rate, p99 of
/performance-metrics and /optimizations while rounds run <= 1.5x their idle p99."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    answers,
    free_port,
    http_post_json,
    managed_process,
    median,
    python_env,
    row,
    running_daemon,
    running_floor,
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


# --- fixed-rate open-loop client ------------------------------------------------------------------------------
#
# wrk keeps 50 connections busy: it measures throughput, and its latency percentiles are mostly the time a request
# waits behind the others in the daemon's queue, which grows with any CPU taken from the API's thread. The goal's
# figure is the latency a client sees at a steady, unsaturated rate: requests sent on a fixed schedule whatever
# the answers do, each timed from when it was due (not from when it was sent), so that a stall delays and counts
# against every request due during it (no coordinated omission). On a shared machine the load of other programs
# drifts over seconds to minutes; so one run alternates one-second windows without and with rounds, and the idle
# and busy percentiles come from requests interleaved in the same minute.

OPEN_LOOP_RATE = 200  # requests/s: well below the daemon's idle saturation rate (thousands per second)
OPEN_LOOP_CONNECTIONS = 64  # kept-alive connections; a request due while all are busy waits for one (and counts)
OPEN_LOOP_TIMEOUT_S = 5.0
WINDOW_S = 1.0  # one window without rounds, one with, in turn
FIXED_RATE_X = 3  # the fixed-rate run per route lasts twice this many times wrk's duration (half idle, half busy)
SETTLE_S = 0.1  # requests due this soon after a window changed count in neither


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one HTTP/1.1 GET on a kept-alive connection and read the whole answer; its status."""
    writer.write(raw)
    status_line = await reader.readline()
    parts = status_line.split(maxsplit=2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad status line {status_line[:80]!r}")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return int(parts[1])


async def _open_loop(url: str, rate: float, seconds: float, connections: int) -> list[tuple[float, float, int]]:
    """(wall time due, latency from then, status) of each request; status 0 for no answer within the timeout."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    loop = asyncio.get_running_loop()
    wall_offset = time.time() - loop.time()
    samples: list[tuple[float, float, int]] = []

    async def one(due: float) -> None:
        conn = await pool.get()
        status = 0
        try:
            async with asyncio.timeout(OPEN_LOOP_TIMEOUT_S):
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                status = await _request(*conn, raw)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            if conn is not None:
                conn[1].close()
            conn = None  # replaced by a new connection on its next use
        finally:
            pool.put_nowait(conn)
        # a failed request counts with the time it took to fail; it is not dropped from the percentiles
        samples.append((due + wall_offset, loop.time() - due, status))

    start = loop.time() + 0.05
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        conn = pool.get_nowait()
        if conn is not None:
            conn[1].close()
    return samples


_OPEN_LOOP_CHILD = (
    "import asyncio, json, sys; from bench.http_api import OPEN_LOOP_CONNECTIONS, _open_loop;"
    " url, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]);"
    " print(json.dumps(asyncio.run(_open_loop(url, rate, seconds, OPEN_LOOP_CONNECTIONS))))"
)


def latency_figures(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    """Count, statuses and latency percentiles (seconds) of open-loop samples."""
    latencies = [latency for _, latency, _ in samples]
    statuses: dict[str, int] = {}
    for _, _, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": len(samples),
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies),
    }


def split_by_window(
    samples: list[tuple[float, float, int]], busy: list[tuple[float, float]], idle: list[tuple[float, float]]
) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
    """(idle samples, busy samples): each request by the window it was due in, less the first ``SETTLE_S`` of
    each window (a round still finishing, or the first not yet started); the rest count in neither."""

    def within(at: float, windows: list[tuple[float, float]]) -> bool:
        return any(start + SETTLE_S <= at < end for start, end in windows)

    return [s for s in samples if within(s[0], idle)], [s for s in samples if within(s[0], busy)]


def alternating(  # noqa: PLR0913 -- the daemon, the route or URL, and the run's length and rate
    base: str, path: str, token: str, seconds: float, *, rate: float = OPEN_LOOP_RATE, target: str | None = None
) -> dict[str, Any]:
    """GET ``base + path`` (or the whole URL ``target``) at a fixed ``rate`` for ``2 * seconds`` while the daemon
    at ``base`` runs rounds back to back in every second one-second window; the idle and busy percentiles (timed
    from each request's scheduled send), the rounds.

    The client runs in a process of its own, so that the thread posting rounds in this one never holds up its
    schedule.
    """
    windows = max(2, round(seconds / WINDOW_S)) * 2
    url = target if target is not None else base + path
    child = subprocess.Popen(
        [sys.executable, "-c", _OPEN_LOOP_CHILD, url, str(windows * WINDOW_S + 0.5), str(rate)],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    idle: list[tuple[float, float]] = []
    busy: list[tuple[float, float]] = []
    rounds = failures = 0
    durations: list[float] = []
    pause = threading.Event()
    try:
        pause.wait(0.5)  # the child's connections open
        for k in range(windows):
            started = time.time()
            if k % 2:
                with RoundLoop(base, token) as loop:
                    pause.wait(WINDOW_S)
                rounds += loop.rounds
                failures += loop.failures
                durations.extend(loop.durations)
                busy.append((started, time.time()))
            else:
                pause.wait(WINDOW_S)
                idle.append((started, time.time()))
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    samples = [(float(a), float(b), int(c)) for a, b, c in json.loads(out)]
    idle_samples, busy_samples = split_by_window(samples, busy, idle)
    return {
        "rate_per_s": rate,
        "window_s": WINDOW_S,
        "windows": windows,
        "idle": latency_figures(idle_samples),
        "rounds": {
            **latency_figures(busy_samples),
            "rounds_completed": rounds,
            "round_failures": failures,
            "round_median_s": median(durations) if durations else None,
        },
    }


ROUTES = (
    ("/metrics", "metrics"),
    ("/performance-metrics", "performance_metrics"),
    ("/optimizations", "optimizations"),
)
# The host's floor: the same client and windows on bench/floor.py (a bare aiohttp process on the daemon's
# libraries, sharing nothing with the daemon but the machine) while the daemon runs the rounds. Whatever its p99
# grows by is what the rounds' load on the machine costs any server there, the daemon's API included.
FLOOR = "floor"


def measure_daemon(
    base: str, token: str, seconds: int, *, with_rounds: bool, floor_url: str | None = None
) -> dict[str, Any]:
    """wrk on the daemon's paths idle, and (``with_rounds``) again while rounds run back to back; then the
    fixed-rate open-loop client on the same paths, in windows without and with rounds back to back, and on
    ``floor_url`` (another process, the host's floor) while the same daemon runs the rounds.

    Without rounds (the uvloop comparison) only /metrics is measured under wrk: it keeps ``make bench`` under 15
    minutes.
    """
    out: dict[str, Any] = {"metrics_idle": wrk(base + "/metrics", seconds)}
    if not with_rounds:
        return out
    out["performance_metrics_idle"] = wrk(base + "/performance-metrics", seconds)
    out["optimizations_idle"] = wrk(base + "/optimizations", seconds)
    for path, name in ROUTES:
        key = f"{name}_rounds"
        with RoundLoop(base, token) as loop:
            out[key] = wrk(base + path, seconds)
        out[key]["rounds_completed"] = loop.rounds
        out[key]["round_failures"] = loop.failures
    # a p99 is the 1 % slowest: a few stalls of a shared machine can make it; three times wrk's duration per route
    # (about 3,000 requests on each side) lets them fall on both sides alike
    out["fixed_rate"] = {name: alternating(base, path, token, seconds * FIXED_RATE_X) for path, name in ROUTES}
    if floor_url is not None:
        out["fixed_rate"][FLOOR] = alternating(base, "", token, seconds * FIXED_RATE_X, target=floor_url)
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
        with running_daemon(tb.env, work, name="daemon") as daemon, running_floor(work) as (_, floor_url):
            figures["daemon"] = measure_daemon(
                daemon.base, daemon.token, seconds, with_rounds=True, floor_url=floor_url
            )
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
    # Under wrk (saturation) the p99 is mostly queueing: reported, without a verdict (see docs/BENCHMARKS.md).
    saturated_ratios = {}
    for path, name in ROUTES:
        idle, busy = d[f"{name}_idle"], d[f"{name}_rounds"]
        x = busy["p99_s"] / idle["p99_s"]
        saturated_ratios[path] = x
        rows.append(
            row(
                f"p99 of GET {path} at saturation (wrk) while rounds run back to back",
                f"{_ms(busy['p99_s'])} ({busy['requests_per_s']:.0f}/s; {busy['rounds_completed']} rounds)",
                reference=f"idle {_ms(idle['p99_s'])} ({idle['requests_per_s']:.0f}/s)",
                ratio_text=f"{x:.2f}x",
                goal="reported (latency at saturation is queueing)",
            )
        )
    # The goal's figure: the same fixed request rate without and with rounds, in alternating windows, timed from
    # each request's scheduled send.
    p99_ratios = {}
    for path, name in ROUTES:
        fixed = d["fixed_rate"][name]
        idle, busy = fixed["idle"], fixed["rounds"]
        x = busy["p99_s"] / idle["p99_s"]
        p99_ratios[path] = x
        failed = busy["requests"] - busy["ok"] + idle["requests"] - idle["ok"]
        goal_route = path != "/metrics"
        rows.append(
            row(
                f"p99 of GET {path} at {fixed['rate_per_s']:.0f} req/s (fixed rate) while rounds run back to back",
                f"{_ms(busy['p99_s'])} (p50 {_ms(busy['p50_s'])}, p90 {_ms(busy['p90_s'])}, max {_ms(busy['max_s'])};"
                f" {busy['rounds_completed']} rounds; {failed} requests not 200)",
                reference=f"idle {_ms(idle['p99_s'])} (p50 {_ms(idle['p50_s'])}, p90 {_ms(idle['p90_s'])});"
                f" {idle['requests']} and {busy['requests']} requests in alternating {fixed['window_s']:g} s windows",
                ratio_text=f"{x:.2f}x",
                goal="<= 1.5x idle" if goal_route else "<= 1.5x idle (reported)",
                met=(x <= GOAL_P99_X and failed == 0) if goal_route else None,
            )
        )
    floor = d["fixed_rate"].get(FLOOR)
    floor_x = None
    if floor is not None:
        idle, busy = floor["idle"], floor["rounds"]
        floor_x = busy["p99_s"] / idle["p99_s"]
        rows.append(
            row(
                f"p99 of GET /metrics of bench/floor.py (another process) at {floor['rate_per_s']:.0f} req/s while"
                " the daemon's rounds run back to back: the host's floor",
                f"{_ms(busy['p99_s'])} (p50 {_ms(busy['p50_s'])}, p90 {_ms(busy['p90_s'])}, max {_ms(busy['max_s'])};"
                f" {busy['rounds_completed']} rounds)",
                reference=f"idle {_ms(idle['p99_s'])} (p50 {_ms(idle['p50_s'])}, p90 {_ms(idle['p90_s'])})",
                ratio_text=f"{floor_x:.2f}x",
                goal="reported (what the rounds' load costs any server on this host)",
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
        "goal": "daemon /metrics requests/s >= 10x node_exporter's; p99 of GET /performance-metrics and"
        " /optimizations at a fixed rate while rounds run <= 1.5x their idle p99",
        "goal_met": all(verdicts) if verdicts else None,
        "ratio_metrics_vs_node_exporter": throughput_x,
        "ratio_p99_rounds_vs_idle": p99_ratios,
        "ratio_p99_rounds_vs_idle_floor": floor_x,
        "ratio_p99_rounds_vs_idle_saturated": saturated_ratios,
        "ratio_uvloop_vs_asyncio": uvloop_gain,
        "rows": rows,
    }


def fixed_rate_only(seconds: float) -> dict[str, Any]:
    """Only the fixed-rate part, on a daemon of its own: each route's idle and busy percentiles and their p99 ratio,
    and the host's floor (bench/floor.py under the same rounds).

    ``python -m bench.http_api --fixed-rate 20`` (20 s per route, half of it with rounds back to back): a quick
    check of the goal's figure while working on it; the published figures come from ``python -m bench.run``.
    """
    out: dict[str, Any] = {}
    with (
        scratch_dir(NAME) as work,
        running_testbed(work / "testbed") as tb,
        running_daemon(tb.env, work) as daemon,
        running_floor(work) as (_, floor_url),
    ):
        targets = [(path, None) for path, _ in ROUTES] + [(f"{FLOOR} {floor_url}", floor_url)]
        for path, target in targets:
            fixed = alternating(daemon.base, path, daemon.token, seconds / 2, target=target)
            idle, busy = fixed["idle"], fixed["rounds"]
            out[path] = {
                "idle_ms": {p: round(idle[f"{p}_s"] * 1e3, 2) for p in ("p50", "p90", "p99")},
                "rounds_ms": {p: round(busy[f"{p}_s"] * 1e3, 2) for p in ("p50", "p90", "p99")},
                "ratio_p99": round(busy["p99_s"] / idle["p99_s"], 2),
                "rounds": busy["rounds_completed"],
                "not_200": busy["requests"] - busy["ok"] + idle["requests"] - idle["ok"],
            }
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fixed-rate":
        print(json.dumps(fixed_rate_only(float(sys.argv[2])), indent=2))
    else:
        print(json.dumps(run(quick=True), indent=2))
