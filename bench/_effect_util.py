"""Helpers shared by the detection and effect benchmarks: a testbed plus a daemon subprocess, HTTP, medians."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402
from testbed.harness import TestbedProcess  # noqa: E402

T = TypeVar("T")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def poll(check: Callable[[], T | None], *, timeout: float, interval: float = 0.1) -> T | None:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        pause.wait(interval)


def pause(seconds: float) -> None:
    """Let wall time pass (the load scripts run on a timetable, they do not wait for a condition)."""
    threading.Event().wait(max(0.0, seconds))


def median(values: Sequence[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def http_json(url: str, timeout: float = 10.0) -> Any:
    """GET one JSON document from the daemon; None when it does not answer or answers with an error."""
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class DaemonProcess:
    """``python -m optimizer.cli run`` against a testbed; its JSON log goes to a file in the work directory."""

    def __init__(self, testbed: TestbedProcess, work: Path, env: Mapping[str, str]) -> None:
        """Start the daemon with the testbed's environment plus ``env`` and wait for /health."""
        self.port = free_port()
        self.state_dir = work / "state"
        self.log_path = work / "daemon.log"
        full_env = {
            **os.environ,
            **testbed.env,
            "CCTV_OPTIMIZER_API__LISTEN": f"127.0.0.1:{self.port}",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(self.state_dir),
            "PYTHONPATH": str(ROOT),
            **env,
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "optimizer.cli", "run"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.api = f"http://127.0.0.1:{self.port}"
        if not poll(self._healthy, timeout=30.0, interval=0.2):
            self.close()
            raise RuntimeError(f"the daemon did not come up: {self.log_tail()}")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {self.log_tail()}")
        return http_json(f"{self.api}/health", timeout=2.0) is not None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log."""
        with contextlib.suppress(OSError):
            return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        return ""

    def decisions(self, after: int = 0, strategy: str | None = None) -> list[dict[str, Any]]:
        """History rows with id > after (optionally of one strategy)."""
        query = f"after={after}&limit=1000" + (f"&strategy={strategy}" if strategy else "")
        body = http_json(f"{self.api}/optimizations?{query}")
        return list(body["items"]) if body else []

    def last_id(self) -> int:
        """The id of the newest history row (0 when empty)."""
        rows = self.decisions()
        while len(rows) == 1000:
            more = self.decisions(after=rows[-1]["id"])
            if not more:
                break
            rows = more
        return int(rows[-1]["id"]) if rows else 0

    def strategy(self, name: str) -> dict[str, Any]:
        """One strategy's view from GET /strategies."""
        for item in (http_json(f"{self.api}/strategies") or {}).get("strategies", []):
            if item.get("name") == name:
                return dict(item)
        return {}

    def close(self) -> None:
        """SIGTERM, wait (bounded), SIGKILL if needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def testbed_and_daemon(
    work: Path, env: Mapping[str, str] | None, testbed_args: Sequence[str] = ()
) -> Iterator[tuple[TestbedProcess, DaemonProcess | None]]:
    """A testbed, and a daemon pointed at it unless ``env`` is None; both stopped at the end."""
    with TestbedProcess(work / "testbed", *testbed_args) as tb:
        daemon = DaemonProcess(tb, work, env) if env is not None else None
        try:
            yield tb, daemon
        finally:
            if daemon is not None:
                daemon.close()


def machine_note() -> dict[str, Any]:
    """CPU count and load at the start, for reading the figures."""
    return {"nproc": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def standalone_main(prog: str, run: Callable[[bool], dict[str, Any]]) -> int:
    """A benchmark module run on its own: ``--quick``, ``--out FILE``; prints the JSON result."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = json.dumps(run(args.quick), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
