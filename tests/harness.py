"""Shared test harness: run the testbed as a real process and the daemon in-process against it.

The daemon is started without its timed loops (``autostart_loops=False``): a test takes samples and
runs rounds itself, so nothing waits on wall-clock time.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from config.loader import load_settings
from optimizer.app import Daemon
from testbed.harness import TestbedProcess

# mounts a tmpfs with these options and returns its mount point (the tmpfs fixture in tests/conftest.py)
Mount = Callable[[str], Path]

ROOT = Path(__file__).resolve().parent.parent

FAST = {
    "OPTIMIZATION_INTERVAL": "1000",
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "200",
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": "100",
    "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "2",
    "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "3",
    "CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90",
    # the stand-in's sweep is off in its stuck_sessions scenario: a few samples in a row show it (20 s x 3 in life)
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SWEEP_INTERVAL_SECONDS": "0.01",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SWEEP_PERIODS": "1",
}


@contextmanager
def running_testbed(data_dir: Path, *args: str) -> Iterator[TestbedProcess]:
    """A testbed process for the duration of the block."""
    with TestbedProcess(data_dir, *args) as tb:
        yield tb


def daemon_env(tb: TestbedProcess, state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment that points a daemon at the testbed, with fast test intervals."""
    env = {
        **tb.env,
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(state_dir),
        # only this testbed's fake recorders: other suites on the host run (and must keep) their own
        "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(tb.data_dir / "recordings"),
        **FAST,
    }
    env.update(overrides)
    return env


@asynccontextmanager
async def running_daemon(env: Mapping[str, str], **kwargs: Any) -> AsyncIterator[Daemon]:
    """A started daemon (no timed loops) that is stopped at the end of the block."""
    loaded = load_settings(env)
    daemon = Daemon(loaded, environ=env, autostart_loops=False, **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def sample_times(daemon: Daemon, n: int) -> None:
    """Take n samples in a row."""
    for _ in range(n):
        await daemon.sample_now()


OBSERVE_AND_DRY_RUN_COLUMNS = ("setting", "outcome", "mode", "first_action")


def observe_and_dry_run_cases(strategy: str, action: str) -> list[Any]:
    """The two ways a strategy is kept from acting, as table rows: optimization switched off (the armed strategy is
    recorded as observed, with no action), and the strategy in dry_run (its first action is recorded)."""
    return [
        pytest.param({"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}, "observed", "observe", [], id="observe"),
        pytest.param(
            {f"CCTV_OPTIMIZER_STRATEGIES__{strategy.upper()}__MODE": "dry_run"},
            "dry_run",
            "dry_run",
            [action],
            id="dry-run",
        ),
    ]


def api_base(daemon: Daemon) -> str:
    """The daemon's API base URL."""
    return f"http://{daemon.api_url_host}:{daemon.api_port}"


@asynccontextmanager
async def api_client(daemon: Daemon) -> AsyncIterator[ClientSession]:
    """An HTTP client session for the daemon's API."""
    async with ClientSession(base_url=api_base(daemon)) as session:
        yield session


def auth(daemon: Daemon) -> dict[str, str]:
    """The write authorisation header."""
    return {"Authorization": f"Bearer {daemon.token}"}


class DaemonProcess:
    """``cctv-optimizer run`` in a subprocess, with its JSON log lines collected."""

    def __init__(self, env: dict[str, str], *args: str, command: list[str] | None = None) -> None:
        """Start ``cctv-optimizer run`` with ``env`` on top of this process's; ``command`` replaces the whole
        command line and environment (a daemon run as another user gets only ``env``)."""
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)} if command is None else dict(env)
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "optimizer.cli", *args, "run"],
            cwd=None if command is None else "/",  # systemd's working directory; never the checkout
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def close(self) -> None:
        """Kill if still running, then release the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._pump_thread.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """Block until a log line with this event name arrives (or fail)."""
        for event in self.seen:
            if event.get("event") == name:
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                if self.proc.poll() is not None and not self._pump_thread.is_alive() and self.lines.empty():
                    break  # it exited and everything it wrote has been read: the event will not come
                continue
            if event.get("event") == name:
                return event
            self.seen.append(event)
        raise AssertionError(f"no {name} event within {timeout} s; output:\n{''.join(self.raw[-30:])}")

    def stop(self) -> int:
        """SIGTERM and wait (bounded)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@contextmanager
def daemon_process(env: dict[str, str], *args: str, command: list[str] | None = None) -> Iterator[DaemonProcess]:
    """A daemon process that is always stopped at the end."""
    d = DaemonProcess(env, *args, command=command)
    try:
        yield d
    finally:
        d.close()


def journal_rows(state_db: Path) -> list[tuple[int, str]]:
    """(id, status) of the database strategy's journal records in a daemon's state file, read-only."""
    if not state_db.exists():
        return []
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=1)
    try:
        return [
            (r[0], r[1]) for r in conn.execute("SELECT id, status FROM journal WHERE strategy = 'database' ORDER BY id")
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def decision_rows(state_db: Path) -> list[tuple[int, str, str | None]]:
    """(id, outcome, error) of the database strategy's decisions in a daemon's state file, read-only."""
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=1)
    try:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute("SELECT id, outcome, error FROM decisions WHERE strategy = 'database' ORDER BY id")
        ]
    finally:
        conn.close()


@contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Make a directory refuse unlinks for real: chattr +i as root (root ignores modes), chmod otherwise."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(directory)], check=False).returncode != 0:
            pytest.skip("cannot make a directory immutable here (chattr missing or unsupported)")
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
