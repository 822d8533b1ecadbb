"""Benchmark 7b: decision rounds, sampling and /health under hostile local clients.

A daemon subprocess (limited to 4,096 descriptors, as a service often is) runs against the stand-in backend,
sampling every second. While a client POSTs /performance-optimize back to back (each round timed), wrk keeps
100 connections busy on each read route (/, /performance-metrics, /metrics, /strategies,
/optimizations?limit=1000, /samples), counting the answers by status, and a child process opens 4,500 idle
connections to the API at once (the daemon closes them, for newer ones at its cap or on its header timeout). A
monitor asks /health once a second on a new connection, within 1 s from connecting to the whole answer, timing
the connect apart (a handshake the kernel dropped shows as "connect timed out"), and reads the last sample's
time from /metrics. Goals: every round <= 2 s; sampling never stops (the last sample is never older than
10 s); /health answers within 1 s every time; the daemon's RSS growth bounded (<= 64 MiB over the run).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    FD_MARGIN,
    fmt_mib,
    fmt_ms,
    http_get,
    http_post_json,
    median,
    raise_fd_limit,
    row,
    running_daemon,
    running_testbed,
    scratch_dir,
    skipped,
    stop_children,
)
from bench.http_api import RoundLoop, parse_wrk

NAME = "loadgen"
TITLE = "7b. Hostile load"
READ_ROUTES = ("/", "/performance-metrics", "/metrics", "/strategies", "/optimizations?limit=1000", "/samples")
CLIENTS_PER_ROUTE = 100
IDLE_CONNECTIONS = 4_500
DAEMON_FD_LIMIT = 4_096
GOAL_ROUND_S = 2.0
GOAL_HEALTH_S = 1.0
GOAL_SAMPLE_AGE_S = 10.0
GOAL_RSS_GROWTH = 64 * 2**20
LINGER_RESET = struct.pack("ii", 1, 0)
_ROUND_HISTOGRAM = re.compile(
    rb'^cctv_optimizer_round_duration_seconds_(count|sum|bucket)(?:\{le="([^"]+)"\})? ([0-9.e+]+)$', re.MULTILINE
)
_API_CONNECTIONS = re.compile(rb"^(cctv_optimizer_api_[a-z_]+) ([0-9.e+]+)$", re.MULTILINE)
_LAST_SAMPLE = re.compile(rb"^cctv_optimizer_last_sample_timestamp_seconds(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


def hold_idle(port: int, count: int) -> None:
    """Child mode: open ``count`` connections to the API without sending a byte; hold them until stdin closes."""
    raise_fd_limit(count + FD_MARGIN)
    held: list[socket.socket] = []
    refused = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code in {0, errno.EINPROGRESS}:
            held.append(sock)
        else:
            refused += 1
            sock.close()
    sys.stdout.write(f"ready {len(held)} {refused}\n")
    sys.stdout.flush()
    sys.stdin.read()
    for sock in held:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()


@contextlib.contextmanager
def idle_clients(port: int, count: int) -> Iterator[dict[str, int]]:
    """Hold ``count`` idle connections to ``port`` from a child process; yield how many were opened."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "--hold", str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        words = child.stdout.readline().split()
        opened = {"opened": int(words[1]), "refused": int(words[2])} if len(words) == 3 else {"opened": 0}
        yield opened
    finally:
        stop_children([child])


def probe_health(host: str, port: int, bound: float) -> dict[str, Any]:
    """One GET /health within ``bound`` seconds overall, timed by phase.

    ``{"seconds": to the answer or None, "connect_s": to the connection or None, "status": the HTTP status or
    None, "error": what went wrong or None}``; the phases tell a connection the kernel did not complete (the
    listen queue full: the SYN is retried after a second) from one the daemon dropped or left unanswered.
    """
    started = time.monotonic()
    out: dict[str, Any] = {"seconds": None, "connect_s": None, "status": None, "error": None}
    conn = http.client.HTTPConnection(host, port, timeout=bound)
    try:
        try:
            conn.connect()
        except TimeoutError:
            out["error"] = "connect timed out"
            return out
        out["connect_s"] = time.monotonic() - started
        assert conn.sock is not None
        conn.sock.settimeout(max(0.001, bound - out["connect_s"]))
        conn.request("GET", "/health", headers={"Connection": "close"})
        answer = conn.getresponse()
        answer.read()
        out["status"] = answer.status
        elapsed = time.monotonic() - started
        if answer.status != 200:
            out["error"] = f"status {answer.status}"
        elif elapsed > bound:
            out["error"] = "answered late"
        else:
            out["seconds"] = elapsed
    except TimeoutError:
        out["error"] = "no answer in time"
    except http.client.RemoteDisconnected:
        out["error"] = "closed without an answer"
    except ConnectionResetError:
        out["error"] = "reset"
    except OSError as exc:
        out["error"] = exc.strerror or exc.__class__.__name__
    finally:
        conn.close()
    return out


class Monitor:
    """Once a second: /health within 1 s, the last sample's age from /metrics, the daemon's RSS."""

    def __init__(self, base: str, pid: int) -> None:
        self._base = base
        host, _, port = base.removeprefix("http://").rpartition(":")
        self._host, self._port = host, int(port)
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self.health: list[float | None] = []  # seconds, None when it did not answer 200 within the bound
        self.probes: list[dict[str, Any]] = []  # each /health probe, timed by phase (probe_health)
        self.sample_ages: list[float] = []
        self.rss: list[int] = []
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)

    def __enter__(self) -> Monitor:
        """Start watching."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            at = time.monotonic() - self._started
            probe = probe_health(self._host, self._port, GOAL_HEALTH_S)
            self.probes.append({"at_s": at, **probe})
            self.health.append(probe["seconds"])
            try:
                _, body = http_get(self._base + "/metrics", timeout=5.0)
                found = _LAST_SAMPLE.search(body)
                if found:
                    self.sample_ages.append(max(0.0, time.time() - float(found.group(1))))
            except OSError:
                pass
            with contextlib.suppress(psutil.Error):
                self.rss.append(int(self._proc.memory_info().rss))


def missed_probes(probes: list[dict[str, Any]]) -> str:
    """``; missed: connect timed out at 1.0 s`` for the probes that did not answer in time; "" when none."""
    missed = [f"{p['error']} at {p['at_s']:.1f} s" for p in probes if p.get("seconds") is None]
    return f"; missed: {', '.join(missed)}" if missed else ""


def round_histogram(base: str) -> dict[str, float]:
    """The engine's own round-duration histogram (count, sum, cumulative buckets) from /metrics; {} on failure."""
    try:
        _, body = http_get(base + "/metrics", timeout=30.0)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for kind, le, value in _ROUND_HISTOGRAM.findall(body):
        out[kind.decode() + (f"_le_{le.decode()}" if le else "")] = float(value)
    return out


def engine_rounds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the engine timed between two histogram readings: rounds, mean, and how many ended within 1 and 2.5 s."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    count = delta.get("count", 0.0)
    return {
        "rounds": count,
        "mean_s": delta.get("sum", 0.0) / count if count else 0.0,
        "within_1s": delta.get("bucket_le_1.0", 0.0),
        "within_2.5s": delta.get("bucket_le_2.5", 0.0),
    }


def api_connection_counters(base: str) -> dict[str, float]:
    """The daemon's own connection figures from /metrics (cap, refused, evicted, header timeouts, accept errors)."""
    try:
        _, body = http_get(base + "/metrics", timeout=30.0)
    except OSError:
        return {}
    return {
        name.decode().removeprefix("cctv_optimizer_api_").removesuffix("_total"): float(value)
        for name, value in _API_CONNECTIONS.findall(body)
    }


@contextlib.contextmanager
def fd_limit_for_children(limit: int) -> Iterator[None]:
    """Lower this process's soft descriptor limit while children that should inherit it are started."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# wrk counts every answer that is not 2xx or 3xx as one figure; this script counts the answers by status, so a
# 503 from the daemon's cap on concurrent expensive reads (by design: "busy", retry after a second) is told
# from an error.
STATUS_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do io.write(string.format("status %d %d\\n", code, n)) end
  end
end
"""
_STATUS_LINE = re.compile(r"^status (\d+) (\d+)$", re.MULTILINE)


def flood(base: str, seconds: int, script: Path) -> list[subprocess.Popen[str]]:
    """Start one wrk per read route, CLIENTS_PER_ROUTE connections each, counting answers by status."""
    script.write_text(STATUS_SCRIPT, encoding="utf-8")
    return [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{CLIENTS_PER_ROUTE}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                "--latency",
                "-s",
                str(script),
                base + route,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for route in READ_ROUTES
    ]


def collect(processes: list[subprocess.Popen[str]], seconds: int) -> dict[str, Any]:
    """Wait for the wrk runs and parse their figures (and answers by status), by route."""
    out: dict[str, Any] = {}
    for route, proc in zip(READ_ROUTES, processes, strict=True):
        try:
            text, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        try:
            figures = parse_wrk(text)
        except RuntimeError:
            out[route] = {"error": text[-500:]}
            continue
        figures["statuses"] = {code: int(n) for code, n in sorted(_STATUS_LINE.findall(text))}
        out[route] = figures
    return out


STATUS_MEANING = {"503": "busy: the expensive-read cap", "421": "misdirected", "429": "limited"}


def served(route: str, figures: dict[str, Any], seconds: int) -> str:
    """One route's answers, e.g. ``/samples 44/s (200: 10/s; 503 busy: the expensive-read cap: 34/s)``."""
    name = route.partition("?")[0]
    if "error" in figures:
        return f"{name} wrk failed"
    text = f"{name} {figures.get('requests_per_s', 0):.0f}/s"
    statuses: dict[str, int] = figures.get("statuses", {})
    if set(statuses) - {"200"}:
        parts = [
            f"{code}{' ' + STATUS_MEANING[code] if code in STATUS_MEANING else ''}: {n / seconds:.0f}/s"
            for code, n in statuses.items()
        ]
        text += f" ({'; '.join(parts)})"
    elif not statuses and figures.get("non_2xx"):
        text += f" ({figures['non_2xx']} not 2xx)"
    if figures.get("socket_errors"):
        text += f", {figures['socket_errors']} socket errors"
    return text


def run(quick: bool) -> dict[str, Any]:
    """Run the hostile load and return its figures and summary rows."""
    if shutil.which("wrk") is None:
        return skipped(TITLE, "wrk is not installed")
    seconds = 20 if quick else 60
    raise_fd_limit(IDLE_CONNECTIONS + FD_MARGIN)
    with scratch_dir(NAME) as work, running_testbed(work / "testbed") as tb, contextlib.ExitStack() as stack:
        with fd_limit_for_children(DAEMON_FD_LIMIT):
            daemon = stack.enter_context(
                running_daemon(
                    tb.env,
                    work,
                    CCTV_OPTIMIZER_SAMPLE_INTERVAL="1000",
                    CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS="1000",
                    CCTV_OPTIMIZER_SAMPLER__MAX_INTERVAL_MS="1000",
                )
            )
        # some history to read: rounds before the load
        for _ in range(20):
            http_post_json(daemon.base + "/performance-optimize", {}, token=daemon.token)
        rss_before = psutil.Process(daemon.pid).memory_info().rss
        histogram_before = round_histogram(daemon.base)
        port = int(daemon.base.rsplit(":", 1)[1])
        with (
            idle_clients(port, IDLE_CONNECTIONS) as idle,
            Monitor(daemon.base, daemon.pid) as monitor,
            RoundLoop(daemon.base, daemon.token, timeout=30) as rounds,
        ):
            routes = collect(flood(daemon.base, seconds, work / "status.lua"), seconds)
        alive = daemon.process.alive()
        engine = engine_rounds(histogram_before, round_histogram(daemon.base)) if alive else {}
        rss_after = psutil.Process(daemon.pid).memory_info().rss if alive else 0
        connections_after = api_connection_counters(daemon.base) if alive else {}
        log_tail = daemon.process.log_tail(5)
    answered = [h for h in monitor.health if h is not None]
    health_ok = len(answered) == len(monitor.health) and bool(monitor.health)
    max_round = max(rounds.durations) if rounds.durations else float("inf")
    max_age = max(monitor.sample_ages) if monitor.sample_ages else float("inf")
    rss_peak = max([rss_before, rss_after, *monitor.rss])
    growth = rss_peak - rss_before
    reads = ", ".join(served(route, figures, seconds) for route, figures in routes.items())
    rows = [
        row(
            "decision rounds under load (max)",
            f"{max_round:.2f} s (median {median(rounds.durations) if rounds.durations else 0:.2f} s,"
            f" {len(rounds.durations)} rounds)",
            reference=f"as the client saw them (POST to the answer); the engine's own timing: mean"
            f" {engine.get('mean_s', 0.0):.2f} s, {engine.get('within_1s', 0):.0f} within 1 s and"
            f" {engine.get('within_2.5s', 0):.0f} within 2.5 s of {engine.get('rounds', 0):.0f};"
            f" answers {rounds.statuses}; reads answered: {reads}",
            goal="<= 2 s",
            met=max_round <= GOAL_ROUND_S,
        ),
        row(
            "age of the last sample under load (max)",
            f"{max_age:.1f} s",
            reference=f"interval 1 s; {len(monitor.sample_ages)} readings",
            goal="sampling never stops (<= 10 s)",
            met=max_age <= GOAL_SAMPLE_AGE_S,
        ),
        row(
            "GET /health under load",
            f"{len(answered)} of {len(monitor.health)} within 1 s (max {fmt_ms(max(answered) if answered else 0)})"
            + missed_probes(monitor.probes),
            reference=f"{idle.get('opened', 0):,} idle connections opened at once, {CLIENTS_PER_ROUTE} clients per"
            f" read route; the daemon's cap {connections_after.get('connection_cap', 0):.0f} connections:"
            f" {connections_after.get('connections_evicted', 0):.0f} idle ones closed for newer ones,"
            f" {connections_after.get('header_timeouts', 0):.0f} on the header timeout,"
            f" {connections_after.get('connections_rejected', 0):.0f} refused",
            goal="every one within 1 s",
            met=health_ok,
        ),
        row(
            "daemon RSS growth under load (peak)",
            f"+{fmt_mib(growth)}",
            reference=f"{fmt_mib(rss_before)} before; descriptor limit {DAEMON_FD_LIMIT}",
            goal="<= 64 MiB",
            met=alive and growth <= GOAL_RSS_GROWTH,
        ),
    ]
    return {
        "goal": "rounds <= 2 s, sampling never stops, /health within 1 s, RSS growth bounded, under hostile load",
        "goal_met": all(r["met"] for r in rows),
        "seconds": seconds,
        "idle_connections": idle,
        "routes": routes,
        "round_s": rounds.durations,
        "round_statuses": rounds.statuses,
        "engine_rounds": engine,
        "health_s": monitor.health,
        "health_probes": monitor.probes,
        "api_connections": connections_after,
        "sample_age_s": monitor.sample_ages,
        "rss_bytes": {"before": rss_before, "after": rss_after, "peak": rss_peak},
        "daemon_alive": alive,
        "daemon_log_tail": log_tail,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """``--hold PORT N``: the idle-connection child; otherwise a quick run, printed as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "--hold":
        hold_idle(int(args[1]), int(args[2]))
        return 0
    import json

    print(json.dumps(run(quick=True), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
