"""Benchmark 6: the effect on the backend, with and without the daemon, under the same scripted load.

Each side starts a fresh testbed (and, on the "with" side, a daemon subprocess at short intervals) and runs
the same timetable for the same time, on 127.0.0.1 only:

- WAL: a second writer (like the backend's recorder worker) inserts about 320 KB/s of rows (about 1.5 MB/s
  of WAL frames: each row spills into overflow pages and each statement commits) while a long reader pins
  the WAL for 4 s, 7 s, 10 s, ... with 6 s gaps. SQLite's autocheckpoint never shrinks the file, so without
  a truncating checkpoint the WAL keeps the size of the longest episode so far. While the reader holds its
  snapshot nothing can shrink the WAL (it passes the 4 MiB budget about 3 s into every hold), so the
  figure the daemon controls is the time from each release to the WAL back under its budget.
- HLS: every 3 s a stream stops and leaves 16 stale 64 KiB segments (the testbed's ``stale_segments``).
- Sessions: with the backend's sweep switched off, a viewer starts every second and is abandoned (no
  heartbeat, no stop).
- Cache: ``POST /api/cache/clear``, then a pause, then a burst of concurrent GETs on the hot endpoints;
  its p99 is compared between the sides (the daemon re-warms the hot endpoints; without it the burst misses).

The resources are read every second; the figures are their max, final and median against the budgets
configured for the daemon. Time is compressed (minutes instead of hours), so the daemon's cooldown is short.

    python -m bench.effect [--quick]
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench._effect_util import (
    machine_note,
    median,
    pause,
    percentile,
    standalone_main,
    testbed_and_daemon,
)
from bench.common import fmt_mib, scratch_dir
from testbed.harness import AdminSession, TestbedProcess

NAME = "effect"
TITLE = "Effect on the backend, with vs without the daemon"

MIB = 1024 * 1024
SAMPLE_MS = 1000
ROUND_MS = 2000
SAMPLES_REQUIRED = 3
WAL_LIMIT = 4 * MIB
HLS_BUDGET = 4 * MIB
STUCK_SESSION_S = 20.0
BACKEND_SESSION_TIMEOUT_S = 15.0
TIMEZONE_HOURS = 7.0
DETECTION_BOUND_S = SAMPLES_REQUIRED * SAMPLE_MS / 1000 + ROUND_MS / 1000

WRITE_ROW_BYTES = 4000
WRITE_ROWS_PER_TICK = 8
WRITE_TICK_S = 0.1
READER_FIRST_HOLD_S = 4.0
READER_HOLD_STEP_S = 3.0
READER_GAP_S = 6.0
STALE_EVERY_S = 3.0
STALE_PER_STOP = 16
VIEWER_EVERY_S = 1.0
CLEAR_PAUSE_S = DETECTION_BOUND_S + 1.0
BURST_REQUESTS = 60
BURST_CONCURRENCY = 20
HOT_ENDPOINTS = ("/api/cameras/active", "/api/areas/public")

DAEMON_SETTINGS = {
    "OPTIMIZATION_INTERVAL": str(ROUND_MS),
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_SAMPLER__MAX_INTERVAL_MS": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": str(SAMPLES_REQUIRED),
    # minutes of load stand for hours: a 300 s cooldown would allow one action per strategy in the whole run
    "CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS": "5",
    "CCTV_OPTIMIZER_ENGINE__BUDGET_ACTIONS": "1000",
    "CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(WAL_LIMIT),
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS": "2",
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES": str(HLS_BUDGET),
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__SETTLE_SECONDS": "2",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SESSION_SECONDS": str(STUCK_SESSION_S),
    # the stand-in's sweep is off while sessions are stuck: one sample period without progress shows it
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SWEEP_INTERVAL_SECONDS": str(SAMPLE_MS / 1000),
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SWEEP_PERIODS": "1",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SETTLE_SECONDS": "2",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__SETTLE_SECONDS": "2",
    # the host is shared with the load generator: the cpu strategy would only add noise here
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
}
# The load shares 127.0.0.1 with the daemon: the backend's per-IP limits would otherwise throttle both.
TESTBED_ARGS = ("--rate-limit-scale", "10", "--timezone-offset", str(TIMEZONE_HOURS))


class Load:
    """The scripted load: background threads on a timetable, stopped by ``stop()``."""

    def __init__(self, tb: TestbedProcess, session: AdminSession) -> None:
        """Prepare the threads (``start()`` runs them)."""
        self.tb = tb
        self.session = session
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.counts = {"rows_written": 0, "reader_holds": 0, "streams_stopped": 0, "viewers_abandoned": 0}
        self.releases: list[float] = []  # monotonic times at which the long reader let go of the WAL
        self._threads = [
            threading.Thread(target=self._guard(self._write), name="load-writer", daemon=True),
            threading.Thread(target=self._guard(self._read), name="load-reader", daemon=True),
            threading.Thread(target=self._guard(self._stale), name="load-hls", daemon=True),
            threading.Thread(target=self._guard(self._viewers), name="load-viewers", daemon=True),
        ]

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # a broken load thread is reported in the result, never silently lost
                self.errors.append(f"{body.__name__}: {exc!r}")

        return run

    def start(self) -> None:
        """Start every load thread."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop and join every load thread (bounded)."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.tb.database, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _write(self) -> None:
        conn = self._connect()
        filler = [("BENCH_LOAD", secrets.token_hex(WRITE_ROW_BYTES // 2))] * WRITE_ROWS_PER_TICK
        try:
            while not self.stopping.wait(WRITE_TICK_S):
                conn.executemany(
                    "INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (NULL, ?, ?, '127.0.0.1')",
                    filler,
                )
                self.counts["rows_written"] += WRITE_ROWS_PER_TICK
        finally:
            conn.close()

    def _read(self) -> None:
        conn = self._connect()
        hold = READER_FIRST_HOLD_S
        try:
            while not self.stopping.is_set():
                conn.execute("BEGIN")
                conn.execute("SELECT COUNT(*) FROM cameras").fetchone()
                self.stopping.wait(hold)
                conn.execute("COMMIT")
                self.releases.append(time.monotonic())
                self.counts["reader_holds"] += 1
                hold += READER_HOLD_STEP_S
                self.stopping.wait(READER_GAP_S)
        finally:
            conn.close()

    def _stale(self) -> None:
        while not self.stopping.wait(STALE_EVERY_S):
            self.tb.scenario("stale_segments", count=STALE_PER_STOP, age_seconds=600)
            self.counts["streams_stopped"] += 1

    def _viewers(self) -> None:
        cameras = [1, 2, 3, 4]
        index = 0
        while not self.stopping.wait(VIEWER_EVERY_S):
            answer = self.tb.request(
                "POST", "/api/viewer/start", json_body={"cameraId": cameras[index % 4]}, csrf=self.session.csrf
            )
            if answer.status != 200:
                raise RuntimeError(f"viewer start answered {answer.status}")
            index += 1
            self.counts["viewers_abandoned"] += 1


def hls_bytes(root: Path) -> int:
    """Bytes of regular files under the HLS root (links are not followed)."""
    total = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def session_ages(database: Path) -> list[float]:
    """Heartbeat ages (seconds) of the active viewer sessions; timestamps are the backend's local time."""
    local = timezone(timedelta(hours=TIMEZONE_HOURS))
    now = datetime.now(local)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute("SELECT last_heartbeat FROM viewer_sessions WHERE is_active = 1").fetchall()
    finally:
        conn.close()
    ages = []
    for (text,) in rows:
        with_zone = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=local)
        ages.append(max(0.0, (now - with_zone).total_seconds()))
    return ages


def read_resources(tb: TestbedProcess) -> dict[str, float]:
    """One reading of every watched resource."""
    wal = tb.database.with_name(tb.database.name + "-wal")
    ages = session_ages(tb.database)
    return {
        "wal_bytes": float(wal.stat().st_size if wal.exists() else 0),
        "hls_bytes": float(hls_bytes(tb.hls_dir)),
        "stale_sessions": float(sum(1 for age in ages if age > BACKEND_SESSION_TIMEOUT_S)),
        "oldest_heartbeat_s": max(ages, default=0.0),
    }


def burst_p99(tb: TestbedProcess) -> dict[str, Any]:
    """Concurrent GETs on the hot endpoints: p99 and how many were cache hits."""

    def one(index: int) -> tuple[float, bool]:
        started = time.perf_counter()
        answer = tb.request("GET", HOT_ENDPOINTS[index % len(HOT_ENDPOINTS)])
        return time.perf_counter() - started, answer.header("X-Cache") == "HIT"

    with ThreadPoolExecutor(max_workers=BURST_CONCURRENCY) as pool:
        results = list(pool.map(one, range(BURST_REQUESTS)))
    times = [t for t, _ in results]
    p99 = percentile(times, 99)
    return {"p99_ms": round((p99 or 0.0) * 1000, 2), "hits": sum(1 for _, hit in results if hit), "n": len(times)}


def clear_cache(tb: TestbedProcess, session: AdminSession) -> None:
    """POST /api/cache/clear as the admin."""
    answer = tb.request("POST", "/api/cache/clear", token=session.token, csrf=session.csrf)
    if answer.status != 200:
        raise RuntimeError(f"cache clear answered {answer.status}")


def one_side(with_daemon: bool, duration: float, clears_at: tuple[float, ...]) -> dict[str, Any]:
    """Run the load for ``duration`` seconds on a fresh testbed, with or without the daemon."""
    series: list[dict[str, float]] = []
    bursts: list[dict[str, Any]] = []
    actions: dict[str, int] = {}
    with scratch_dir(NAME) as work:
        env = DAEMON_SETTINGS if with_daemon else None
        with testbed_and_daemon(work, env, TESTBED_ARGS) as (tb, daemon):
            tb.scenario("sweep", enabled=False)
            session = tb.login()
            load = Load(tb, session)
            started = time.monotonic()
            load.start()
            pending = list(clears_at)
            try:
                while (elapsed := time.monotonic() - started) < duration:
                    if pending and elapsed >= pending[0]:
                        pending.pop(0)
                        clear_cache(tb, session)
                        pause(CLEAR_PAUSE_S)
                        bursts.append(burst_p99(tb))
                    series.append({"t": round(time.monotonic() - started, 2), **read_resources(tb)})
                    pause(1.0 - (time.monotonic() - started) % 1.0)
            finally:
                load.stop()
            series.append({"t": round(time.monotonic() - started, 2), **read_resources(tb)})
            if daemon is not None:
                for row in daemon.decisions():
                    key = f"{row['strategy']}.{row['action']}.{row['outcome']}"
                    actions[key] = actions.get(key, 0) + 1
    releases = [round(r - started, 2) for r in load.releases if r - started + READER_GAP_S <= duration]
    summary = {}
    for key in ("wal_bytes", "hls_bytes", "stale_sessions", "oldest_heartbeat_s"):
        values = [point[key] for point in series]
        summary[key] = {"max": max(values), "final": values[-1], "median": median(values)}
    return {
        "with_daemon": with_daemon,
        "duration_s": duration,
        "summary": summary,
        "bursts": bursts,
        "burst_p99_ms_median": median([b["p99_ms"] for b in bursts]),
        "wal_back_under_budget_s": back_under_budget(series, releases),
        "load": load.counts,
        "load_errors": load.errors,
        "daemon_actions": actions,
        "series": series,
    }


def back_under_budget(series: list[dict[str, float]], releases: list[float]) -> list[float | None]:
    """Per reader release: seconds until the WAL was first seen under its budget, None if not before the next hold.

    While the reader holds its snapshot no checkpoint can shrink the WAL; this is the part the daemon controls.
    """
    latencies: list[float | None] = []
    for release in releases:
        seen = [
            p["t"] - release
            for p in series
            if release <= p["t"] <= release + READER_GAP_S and p["wal_bytes"] <= WAL_LIMIT
        ]
        latencies.append(round(min(seen), 2) if seen else None)
    return latencies


def _release_row(on: list[float | None], off: list[float | None]) -> dict[str, Any]:
    """The WAL after each long reader lets go: back under budget within the detection bound with the daemon."""
    bound = DETECTION_BOUND_S + SAMPLE_MS / 1000  # + one resource reading
    done = [v for v in on if v is not None]
    return {
        "figure": "WAL back under budget after each long reader lets go",
        "value": (
            f"with: median {statistics.median(done):.1f} s, max {max(done):.1f} s ({len(done)} of {len(on)} releases)"
            if done
            else f"with: 0 of {len(on)} releases"
        ),
        "reference": (
            f"without: {sum(1 for v in off if v is not None)} of {len(off)} releases; "
            f"bound {bound:g} s (detection + one reading)"
        ),
        "ratio": "",
        "goal": f"every release within {bound:g} s with the daemon",
        "met": bool(on) and len(done) == len(on) and max(done) <= bound,
    }


def _bounded_row(
    figure: str, budget: float, fmt: Callable[[float], str], on: dict[str, Any], off: dict[str, Any]
) -> dict[str, Any]:
    """A bounded resource: with the daemon its final and median stay under budget; without, it ends over."""
    met = on["final"] <= budget and on["median"] <= budget and off["final"] > budget
    return {
        "figure": figure,
        "value": f"with: max {fmt(on['max'])}, final {fmt(on['final'])}, median {fmt(on['median'])}",
        "reference": f"without: max {fmt(off['max'])}, final {fmt(off['final'])}; budget {fmt(budget)}",
        "ratio": f"{on['final'] / off['final']:.2f}" if off["final"] else "-",
        "goal": "with: final and median <= budget; without: final > budget",
        "met": met,
    }


def run(quick: bool) -> dict[str, Any]:
    """Both sides (40 s each, 30 s with --quick) and rows for the summary."""
    duration = 30.0 if quick else 40.0
    clears_at = (12.0,) if quick else (10.0, 26.0)
    without = one_side(False, duration, clears_at)
    with_daemon = one_side(True, duration, clears_at)
    on, off = with_daemon["summary"], without["summary"]
    age_budget = STUCK_SESSION_S + DETECTION_BOUND_S + SAMPLE_MS / 1000
    rows = [
        _bounded_row(
            "SQLite WAL size under a growing long-reader load", WAL_LIMIT, fmt_mib, on["wal_bytes"], off["wal_bytes"]
        ),
        _release_row(with_daemon["wal_back_under_budget_s"], without["wal_back_under_budget_s"]),
        _bounded_row(
            "HLS directory with streams stopping every 3 s", HLS_BUDGET, fmt_mib, on["hls_bytes"], off["hls_bytes"]
        ),
        _bounded_row(
            "oldest active viewer heartbeat, sweep off",
            age_budget,
            lambda v: f"{v:.0f} s",
            on["oldest_heartbeat_s"],
            off["oldest_heartbeat_s"],
        ),
        {
            "figure": f"active sessions past the backend's {BACKEND_SESSION_TIMEOUT_S:g} s timeout, sweep off",
            "value": f"with: max {on['stale_sessions']['max']:.0f}, final {on['stale_sessions']['final']:.0f}",
            "reference": f"without: max {off['stale_sessions']['max']:.0f}, final {off['stale_sessions']['final']:.0f}",
            "ratio": (
                f"{on['stale_sessions']['final'] / off['stale_sessions']['final']:.2f}"
                if off["stale_sessions"]["final"]
                else "-"
            ),
            "goal": "fewer with the daemon (its bound is the heartbeat age above)",
            "met": on["stale_sessions"]["final"] < off["stale_sessions"]["final"],
        },
    ]
    p99_on, p99_off = with_daemon["burst_p99_ms_median"], without["burst_p99_ms_median"]
    speedup = p99_off / p99_on if p99_on and p99_off else None
    rows.append(
        {
            "figure": f"hot endpoint p99, burst of {BURST_REQUESTS} GETs {CLEAR_PAUSE_S:g} s after a cache clear",
            "value": f"with warming: {p99_on:.1f} ms" if p99_on is not None else "no burst",
            "reference": f"without: {p99_off:.1f} ms" if p99_off is not None else "no burst",
            "ratio": f"{speedup:.1f}x better" if speedup is not None else "-",
            "goal": ">= 2x better with warming",
            "met": speedup is not None and speedup >= 2.0,
        }
    )
    return {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "settings": {**DAEMON_SETTINGS, "testbed_args": " ".join(TESTBED_ARGS)},
        "budgets": {
            "wal_limit_bytes": WAL_LIMIT,
            "hls_budget_bytes": HLS_BUDGET,
            "oldest_heartbeat_s": age_budget,
        },
        "without": without,
        "with": with_daemon,
        "machine": machine_note(),
        "rows": rows,
    }


def main() -> int:
    """Run and print the JSON (the runner writes it to bench/results)."""
    return standalone_main("python -m bench.effect", run)


if __name__ == "__main__":
    raise SystemExit(main())
