"""``make demo``: start the stand-in backend and the daemon against it, tour the scenarios, then keep running.

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
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.harness import TestbedProcess

ROOT = Path(__file__).resolve().parent.parent

# Demo settings: fast rounds and small limits so each condition shows within seconds.
DEMO_ENV = {
    "OPTIMIZATION_INTERVAL": "3000",
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "1000",
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": "500",
    "CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS": "20",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(4 * 1024 * 1024),
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS": "2",
}


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


class Demo:
    """The two processes and the tour."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.api = f"http://127.0.0.1:{port}"
        self.testbed: TestbedProcess | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.last_id = 0

    def start(self) -> None:
        """Start the testbed, then the daemon pointed at it."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        self.testbed = TestbedProcess(self.data_dir / "testbed")
        env = {
            **os.environ,
            **self.testbed.env,
            **DEMO_ENV,
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
        assert self.testbed is not None
        print("cctv-optimizer demo is running (Ctrl-C stops both processes)\n", flush=True)
        assert self.daemon is not None
        print(f"  stand-in backend      {self.testbed.url}   (pid {self.testbed.pid})")
        print(f"  daemon                pid {self.daemon.pid}")
        if urllib_ok(f"{self.api}/"):
            print(f"  dashboard             {self.api}/")
        print(f"  metrics (Prometheus)  {self.api}/metrics")
        print(f"  performance JSON      {self.api}/performance-metrics")
        print(f"  decision history      {self.api}/optimizations   (or: .venv/bin/cctv-optimizer history --follow)")
        print(f"  daemon log            {self.data_dir / 'daemon.log'}")
        print(f"  state directory       {self.data_dir / 'state'}   (API token in api-token)\n", flush=True)

    def print_new_decisions(self) -> int:
        """Print history rows not shown yet; returns how many."""
        body = http_json(f"{self.api}/optimizations?after={self.last_id}")
        if not body:
            return 0
        for item in body["items"]:
            changes = "; ".join(f"{c['target']}: {c['before']} -> {c['after']}" for c in item["changes"])
            verdict = f"  verdict={item['verdict']}" if item.get("verdict") else ""
            error = f"  error={item['error']}" if item.get("error") else ""
            print(
                f"  #{item['id']:<3} {item['strategy']:<10} {item['outcome']:<16} {item['reason']}"
                f"{'  [' + changes + ']' if changes else ''}{verdict}{error}",
                flush=True,
            )
            self.last_id = item["id"]
        return len(body["items"])

    def step(self, title: str, scenario: str, params: dict[str, Any], strategy: str) -> None:
        """Provoke one condition and wait until the strategy has acted on it."""
        assert self.testbed is not None
        print(f"- {title}", flush=True)
        result = self.testbed.scenario(scenario, **params)
        print(f"  testbed: {scenario} -> {json.dumps(result)[:200]}", flush=True)
        start_id = self.last_id

        def acted() -> bool:
            body = http_json(f"{self.api}/optimizations?after={start_id}&strategy={strategy}")
            return bool(body and any(i["outcome"] in ("applied", "failed") for i in body["items"]))

        if not wait_for(acted, timeout=60):
            print(f"  (no {strategy} action within 60 s; see the daemon log)", flush=True)
        wait_for(lambda: self.print_new_decisions() == 0 and self._verdicts_settled(), timeout=15)
        self.print_new_decisions()

    def _verdicts_settled(self) -> bool:
        body = http_json(f"{self.api}/optimizations?after=0&limit=1000")
        return bool(body) and all(i.get("verdict") or i["outcome"] != "applied" for i in body["items"])

    def tour(self) -> None:
        """Provoke each condition in turn and show the daemon handling it."""
        print("Tour: each step provokes a condition in the stand-in backend and waits for the daemon.\n", flush=True)
        self.step("the database WAL grows past its limit", "wal_growth", {"mb": 8}, "database")
        print("\nHistory so far:", flush=True)
        body = http_json(f"{self.api}/optimizations?after=0&limit=1000") or {"items": []}
        for item in body["items"]:
            print(f"  #{item['id']} {item['strategy']} {item['outcome']} verdict={item.get('verdict')}", flush=True)
        print("", flush=True)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, bounded), then the testbed."""
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
    parser.add_argument("--data-dir", type=Path, default=ROOT / "demo-data")
    parser.add_argument("--port", type=int, default=9877)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    parser.add_argument("--no-tour", action="store_true")
    args = parser.parse_args(argv)
    demo = Demo(args.data_dir.resolve(), free_port(args.port))
    stop_at = time.monotonic() + args.duration if args.duration else None

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        demo.start()
        demo.banner()
        if not args.no_tour:
            demo.tour()
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
