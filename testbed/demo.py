"""``make demo``: start the stand-in backend and the daemon against it, tour the five conditions, then keep running.

Everything stays on 127.0.0.1. Ctrl-C (or ``--duration``) stops both processes cleanly. The daemon's JSON
log goes to ``<data-dir>/daemon.log``; the terminal shows what matters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.harness import TestbedProcess

ROOT = Path(__file__).resolve().parent.parent
# Outside the checkout: the daemon refuses an HLS directory inside its own installation (an editable install
# is the checkout), so the demo's stand-in data lives in the temporary directory instead.
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "cctv-optimizer-demo"
MIB = 1024 * 1024

# Demo settings: fast rounds, short detection windows and small limits so each condition shows within seconds.
DEMO_ENV = {
    "OPTIMIZATION_INTERVAL": "2000",
    # Each sample spends 3 backend requests (2 hot endpoints, cache stats): one every 2 s is no more than the
    # 90 requests a minute refill, so the strategies' own calls (cache stats, invalidate, warm) find budget left.
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "2000",
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": "2000",
    "CCTV_OPTIMIZER_SAMPLER__MAX_INTERVAL_MS": "2000",
    "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "2",
    "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "3",
    "CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS": "20",
    "CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90",
    # close under the 8 MiB the step grows it to: the limit is crossed only once the growth is nearly done
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(6 * MIB),
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS": "1",
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__SETTLE_SECONDS": "1",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT": "100",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__SETTLE_SECONDS": "1",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SETTLE_SECONDS": "1",
    # the step switches the sweep off: two 2 s periods without the stale count going down show it stuck
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SWEEP_INTERVAL_SECONDS": "2",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SWEEP_PERIODS": "2",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__SETTLE_SECONDS": "1",
}
CAMERAS = 4
SEGMENT_BYTES = 64 * 1024
SEGMENT_COUNT = 10
STALE_FILES = 400
HLS_STALE_AGE_SECONDS = 120.0
# The HLS budget: every camera's live playlist at most, plus 85% of the stale files' bytes. The files appear
# one by one, so the budget is crossed only when the burst is nearly complete, and one prune takes them all.
HLS_BUDGET_BYTES = CAMERAS * (SEGMENT_COUNT + 2) * SEGMENT_BYTES + int(0.85 * STALE_FILES * SEGMENT_BYTES)
JUNK_ENTRIES = 300
STUCK_SESSIONS = 20
MAX_RECORDERS = 4
ACT_TIMEOUT = 60.0
VERDICT_TIMEOUT = 20.0
HOT_ENDPOINTS = ("/api/cameras/active", "/api/areas/public")

Figure = list[tuple[str, str]]


def free_port(preferred: int) -> int:
    """The preferred port when it is free on 127.0.0.1, else any free one."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def http_json(url: str, method: str = "GET", body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """A small JSON call; None when the server is not answering."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def urllib_ok(url: str) -> bool:
    """Whether a GET answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll until check() gives something truthy, or None after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return None


def settled(figure: Callable[[], Figure], before: Figure, timeout: float) -> Figure | None:
    """The figure once it differs from ``before`` and reads the same twice in a row; None after the timeout."""
    last: list[Figure] = []

    def check() -> Figure | None:
        now = figure()
        done = now != before and last and now == last[-1]
        last.append(now)
        return now if done else None

    found: Figure | None = wait_for(check, timeout=timeout, interval=0.3)
    return found


def mib(value: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{value / MIB:.1f} MiB"


def percent(part: float, whole: float) -> str:
    """A ratio as a whole percent, or n/a without lookups."""
    return f"{100.0 * part / whole:.0f}%" if whole else "n/a"


def nice_of(pid: int) -> str:
    """The nice value of a process's main thread, or "gone"."""
    try:
        return str(os.getpriority(os.PRIO_PROCESS, pid))
    except OSError:
        return "gone"


def signal_text(signal: str, value: float) -> str:
    """A measured signal value in its unit: MiB for bytes, ms for seconds, percent for ratios."""
    if signal.endswith("_bytes"):
        return mib(value)
    if signal.endswith("_seconds"):
        return f"{value * 1000:.1f} ms"
    if signal.endswith(("_ratio", "_rate")):
        return f"{value * 100:.0f}%"
    return f"{value:g}"


def verdict_text(item: dict[str, Any]) -> str:
    """The verdict of a history row with what was measured, e.g. ``improved (wal_bytes 8.1 MiB -> 0.0 MiB)``."""
    verdict = item.get("verdict")
    if not verdict:
        if item["outcome"] != "applied":
            return "-"
        return "pending" if item.get("expected") else "not measured (no expected effect)"
    detail = item.get("verdictDetail") or {}
    signal = str(detail.get("signal", ""))
    if isinstance(detail.get("before"), int | float) and isinstance(detail.get("after"), int | float):
        reverted = ", reverted" if detail.get("reverted") else ""
        before, after = signal_text(signal, detail["before"]), signal_text(signal, detail["after"])
        return f"{verdict} ({signal} {before} -> {after}{reverted})"
    return str(verdict)


def figure_text(before: Figure, after: Figure) -> str:
    """``label before -> after`` for each figure."""
    return ", ".join(f"{label} {old} -> {new}" for (label, old), (_, new) in zip(before, after, strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One condition of the tour: how to provoke it, who must act, and the figure that shows the effect."""

    title: str
    scenario: str
    params: dict[str, Any]
    strategy: str
    action: str
    figure: Callable[[], Figure]
    before_figure: Callable[[], Figure] | None = None
    cleanup: Callable[[], None] | None = None
    after_verdict: bool = False


class Demo:
    """The two processes and the tour."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.api = f"http://127.0.0.1:{port}"
        self.testbed: TestbedProcess | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.last_id = 0
        self.recorder_pids: list[int] = []
        self.recorder_count = max(1, min(os.cpu_count() or 1, MAX_RECORDERS))
        self._cache_counts = (0, 0)
        self.acted: dict[str, bool] = {}

    @property
    def tb(self) -> TestbedProcess:
        """The running testbed."""
        assert self.testbed is not None
        return self.testbed

    def start(self) -> None:
        """Start the testbed, then the daemon pointed at it, with limits fitted to the testbed's live streams."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        self.testbed = TestbedProcess(
            self.data_dir / "testbed",
            *("--cameras", str(CAMERAS), "--segment-bytes", str(SEGMENT_BYTES)),
            *("--segment-count", str(SEGMENT_COUNT)),
        )
        cpus = os.cpu_count() or 1
        # the burning recorders alone take the host past this line; the rest of the tour stays under it
        cpu_line = min(0.9, max(0.05, 0.6 * self.recorder_count / cpus))
        env = {
            **os.environ,
            **self.tb.env,
            **DEMO_ENV,
            "CPU_THRESHOLD": f"{cpu_line:.2f}",
            "CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES": str(HLS_BUDGET_BYTES),
            # only this testbed's recorders: anything else on the host is not the demo's to renice
            "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(self.tb.data_dir / "recordings"),
            "CCTV_OPTIMIZER_API__LISTEN": f"127.0.0.1:{self.port}",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(self.data_dir / "state"),
            "PYTHONPATH": str(ROOT),
        }
        log = (self.data_dir / "daemon.log").open("wb")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "optimizer.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if not wait_for(lambda: http_json(f"{self.api}/health"), timeout=30):
            raise RuntimeError(f"the daemon did not come up; see {self.data_dir / 'daemon.log'}")

    @property
    def token(self) -> str:
        """The write token the daemon generated in its state directory."""
        return (self.data_dir / "state" / "api-token").read_text(encoding="utf-8").strip()

    def banner(self) -> None:
        """Where to look."""
        assert self.daemon is not None
        print("cctv-optimizer demo is running (Ctrl-C stops both processes)\n", flush=True)
        print(f"  stand-in backend      {self.tb.url}   (pid {self.tb.pid})")
        print(f"  daemon                pid {self.daemon.pid}")
        if urllib_ok(f"{self.api}/"):
            print(f"  dashboard             {self.api}/")
        print(f"  metrics (Prometheus)  {self.api}/metrics")
        print(f"  performance JSON      {self.api}/performance-metrics")
        print(f"  decision history      {self.api}/optimizations   (or: .venv/bin/cctv-optimizer history --follow)")
        print(f"  daemon log            {self.data_dir / 'daemon.log'}")
        print(f"  state directory       {self.data_dir / 'state'}   (API token in api-token)\n", flush=True)

    def history(self, after: int = 0, strategy: str | None = None) -> list[dict[str, Any]]:
        """History rows after an id (oldest first), optionally of one strategy."""
        query = f"after={after}&limit=1000" + (f"&strategy={strategy}" if strategy else "")
        body = http_json(f"{self.api}/optimizations?{query}")
        return list(body["items"]) if body else []

    def print_new_decisions(self) -> int:
        """Print history rows not shown yet; returns how many."""
        items = self.history(self.last_id)
        for item in items:
            changes = "; ".join(f"{c['target']}: {c['before']} -> {c['after']}" for c in item["changes"])
            verdict = f"  verdict={item['verdict']}" if item.get("verdict") else ""
            error = f"  error={item['error']}" if item.get("error") else ""
            print(
                f"  #{item['id']:<3} {item['strategy']:<10} {item['outcome']:<16} {item['reason']}"
                f"{'  [' + changes + ']' if changes else ''}{verdict}{error}",
                flush=True,
            )
            self.last_id = item["id"]
        return len(items)

    # figures: (label, value) pairs, printed as "label before -> after" -----------------------------------------

    def wal_figure(self) -> Figure:
        """The backend database's WAL size."""
        return [("WAL", mib(self.tb.state()["wal_bytes"]))]

    def stale_figure(self) -> Figure:
        """Stale HLS files by the pruner's rule, at the memory strategy's default age (120 s)."""
        state = self.tb.state(stale_age=HLS_STALE_AGE_SECONDS)
        return [("stale HLS files", str(state["stale_hls_files"])), ("stale bytes", mib(state["stale_hls_bytes"]))]

    def cache_before_figure(self) -> Figure:
        """Entries, and the hit rate of the lookups since the step began (the junk burst)."""
        state = self.tb.state()
        hits, misses = state["cache_hits"] - self._cache_counts[0], state["cache_misses"] - self._cache_counts[1]
        return [("cache entries", str(state["cache_size"])), ("hit rate", percent(hits, hits + misses))]

    def cache_after_figure(self) -> Figure:
        """Entries, and the hit rate of a viewer's next requests to the hot endpoints."""
        start = self.tb.state()
        for path in HOT_ENDPOINTS:
            self.tb.request("GET", path)
        end = self.tb.state()
        hits, misses = end["cache_hits"] - start["cache_hits"], end["cache_misses"] - start["cache_misses"]
        return [("cache entries", str(start["cache_size"])), ("hit rate", percent(hits, hits + misses))]

    def sessions_figure(self) -> Figure:
        """Active viewer sessions whose heartbeat stopped long ago."""
        return [("stuck sessions", str(self.tb.state()["stale_active_sessions"]))]

    def recorders_figure(self) -> Figure:
        """The nice value of each fake recorder."""
        return [("recorder nice", ",".join(nice_of(pid) for pid in self.recorder_pids))]

    # steps -------------------------------------------------------------------------------------------------------

    def _mark_cache(self) -> None:
        state = self.tb.state()
        self._cache_counts = (int(state["cache_hits"]), int(state["cache_misses"]))

    def _sweep_back_on(self) -> None:
        self.tb.scenario("sweep", enabled=True)

    def _stop_recorders(self) -> None:
        self.tb.scenario("recorders_stop")

    def steps(self) -> list[Step]:
        """The tour, in order; the CPU burner comes last so it cannot disturb the other steps."""
        return [
            Step(
                title="the database WAL grows past its limit (a reader pins it)",
                scenario="wal_growth",
                params={"mb": 8},
                strategy="database",
                action="wal_checkpoint",
                figure=self.wal_figure,
            ),
            Step(
                title="MediaMTX leaves stale HLS segments behind in RAM",
                scenario="stale_segments",
                params={"count": STALE_FILES, "age_seconds": 600},
                strategy="memory",
                action="hls_prune",
                figure=self.stale_figure,
            ),
            Step(
                title="junk query strings fill the response cache and the hit rate collapses",
                scenario="cache_junk",
                params={"entries": JUNK_ENTRIES},
                strategy="cache",
                action="cache_invalidate",
                before_figure=self.cache_before_figure,
                figure=self.cache_after_figure,
                after_verdict=True,
            ),
            Step(
                title="the backend's session sweep stops; viewers' sessions stay active without heartbeats",
                scenario="stuck_sessions",
                params={"count": STUCK_SESSIONS, "age_seconds": 600},
                strategy="connection",
                action="end_stuck_sessions",
                figure=self.sessions_figure,
                cleanup=self._sweep_back_on,
            ),
            Step(
                title="CPU-hungry recorder ffmpeg processes heat the host",
                scenario="hot_recorder",
                params={"count": self.recorder_count},
                strategy="cpu",
                action="renice",
                figure=self.recorders_figure,
                cleanup=self._stop_recorders,
            ),
        ]

    def _acted(self, step: Step, start_id: int) -> dict[str, Any] | None:
        """The strategy's first applied or failed row since the step began that carries the step's action."""
        for item in self.history(start_id, step.strategy):
            if item["outcome"] in ("applied", "failed") and any(c["action"] == step.action for c in item["changes"]):
                return item
        return None

    def _judged(self, row_id: int) -> dict[str, Any] | None:
        """The row once the engine has judged it; a row with nothing to judge is returned as it is."""
        rows = self.history(row_id - 1)
        row = rows[0] if rows and rows[0]["id"] == row_id else None
        if row is None:
            return None
        if row["outcome"] != "applied" or row.get("verdict") or not row.get("expected"):
            return row
        return None

    def step(self, step: Step) -> None:
        """Provoke one condition, wait until the strategy has acted on it, and show the effect and the verdict."""
        print(f"- {step.title}", flush=True)
        start_id = max([self.last_id, *(i["id"] for i in self.history(self.last_id))])
        if step.scenario == "cache_junk":
            self._mark_cache()
        result = self.tb.scenario(step.scenario, **step.params)
        if step.scenario == "hot_recorder":
            self.recorder_pids = [int(pid) for pid in result["pids"]]
            print(f"  recorder pids {' '.join(str(pid) for pid in self.recorder_pids)}", flush=True)
        print(f"  testbed: {step.scenario} -> {json.dumps(result)[:160]}", flush=True)
        before = (step.before_figure or step.figure)()
        acted = wait_for(lambda: self._acted(step, start_id), timeout=ACT_TIMEOUT)
        row = None
        after: Figure = []
        if acted is not None:
            # The row is written before the action runs: a figure that changed and then held still for one poll
            # says it has finished (a prune of hundreds of files takes a moment); it is read before the verdict,
            # which may revert it. Figures that cost requests are read once, after the verdict.
            if not step.after_verdict:
                after = settled(step.figure, before, timeout=10) or step.figure()
            row = wait_for(lambda: self._judged(acted["id"]), timeout=VERDICT_TIMEOUT) or acted
            if step.after_verdict:
                after = step.figure()
        self.print_new_decisions()
        if row is None:
            # say what the figure did meanwhile: another daemon on the host may have changed it first
            now = figure_text(before, step.figure())
            print(f"  => {step.strategy} did not act within {ACT_TIMEOUT:g} s ({now}); see the daemon log", flush=True)
        else:
            did = "acted" if row["outcome"] == "applied" else f"tried and {row['outcome']}: {row.get('error')}"
            print(f"  => {step.strategy} {did}: {figure_text(before, after)}; verdict {verdict_text(row)}", flush=True)
        self.acted[step.strategy] = row is not None and row["outcome"] == "applied"
        if step.cleanup is not None:
            step.cleanup()

    def tour(self) -> None:
        """Provoke each condition in turn and show the daemon handling it, then the history table."""
        print("Tour: each step provokes a condition in the stand-in backend and waits for the daemon.\n", flush=True)
        for step in self.steps():
            self.step(step)
            print("", flush=True)
        self.print_history()

    def print_history(self) -> None:
        """The whole decision history as a table."""
        items = self.history()
        print("History:", flush=True)
        print(f"  {'id':>3}  {'strategy':<10} {'action':<20} {'mode':<8} {'outcome':<16} verdict", flush=True)
        for item in items:
            print(
                f"  {item['id']:>3}  {item['strategy']:<10} {item['action']:<20} {item['mode']:<8} "
                f"{item['outcome']:<16} {verdict_text(item)}",
                flush=True,
            )
        acted = sum(self.acted.values())
        print(f"\nTour done: {acted} of {len(self.acted)} strategies acted on their condition.\n", flush=True)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, bounded), then the testbed (which ends its fake recorders)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
        if self.testbed is not None:
            self.testbed.close()
        print("demo stopped: daemon and stand-in backend are down.", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo."""
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--port", type=int, default=9877)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="after the tour, watch this many seconds, then stop (default: until Ctrl-C)",
    )
    parser.add_argument("--no-tour", action="store_true")
    args = parser.parse_args(argv)
    demo = Demo(args.data_dir.resolve(), free_port(args.port))

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        demo.start()
        demo.banner()
        if not args.no_tour:
            demo.tour()
        stop_at = time.monotonic() + args.duration if args.duration else None
        print("Watching the decision history (Ctrl-C to stop):", flush=True)
        while stop_at is None or time.monotonic() < stop_at:
            demo.print_new_decisions()
            if demo.daemon is not None and demo.daemon.poll() is not None:
                print(f"the daemon exited with {demo.daemon.returncode}; see {demo.data_dir / 'daemon.log'}")
                return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("", flush=True)
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
