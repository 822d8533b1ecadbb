"""Shared benchmark helpers: machine facts, medians, processes (testbed, daemon, tools), idle connections, loop lag.

Everything binds or connects to 127.0.0.1 only, and every process started here is stopped by the context manager
that started it (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
VENVS_DIR = ROOT / "bench" / ".venvs"
BENCH_TCP = ROOT / "bench" / "bench_tcp.py"
FD_MARGIN = 512
STOP_TIMEOUT_S = 15.0
T = TypeVar("T")

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- facts and figures -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Describe the machine and software the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "memory_bytes": psutil.virtual_memory().total,
    }


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def ratio(value: float, reference: float) -> float:
    """``value / reference``; infinity when the reference is zero."""
    return value / reference if reference else float("inf")


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with sensible precision."""
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_mib(n_bytes: float) -> str:
    """Bytes as MiB."""
    return f"{n_bytes / 2**20:.1f} MiB"


def row(  # noqa: PLR0913 -- a summary row has that many columns
    figure: str, value: str, *, reference: str = "", ratio_text: str = "", goal: str = "", met: bool | None = None
) -> dict[str, Any]:
    """One summary row in the shape the runner expects."""
    return {"figure": figure, "value": value, "reference": reference, "ratio": ratio_text, "goal": goal, "met": met}


def skipped(title: str, reason: str) -> dict[str, Any]:
    """The result of a benchmark that cannot run here: one row saying why."""
    return {"skipped": reason, "rows": [row(title, "skipped", reference=reason, met=None)]}


# --- small utilities ---------------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE to ``needed`` (children inherit it); SystemExit-free: OSError when impossible."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))  # raises unless privileged
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for tools that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready within {timeout:g} s")
        pause.wait(interval)


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a loopback URL; (status, body); OSError when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def http_post_json(url: str, body: Mapping[str, Any], *, token: str, timeout: float = 60.0) -> tuple[int, Any]:
    """POST JSON with a bearer token; (status, decoded body)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def answers(url: str, status: int = 200) -> bool:
    """True when ``url`` answers with ``status``."""
    try:
        return http_get(url, timeout=2.0)[0] == status
    except OSError:
        return False


def cpu_seconds(proc: psutil.Process) -> float:
    """User plus system CPU seconds of a process."""
    times = proc.cpu_times()
    return float(times.user + times.system)


# --- processes ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ManagedProcess:
    """A subprocess whose output goes to a log file; ``stop()`` ends it (TERM, then KILL)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """PID of the process."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its output, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def managed_process(
    name: str, argv: Sequence[str], *, log_dir: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[ManagedProcess]:
    """Start ``argv`` with output to ``log_dir/name.log``; always stopped at the end of the block."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
        )
    except BaseException:
        log.close()
        raise
    managed = ManagedProcess(name=name, proc=proc, log_path=log_path, _log=log)
    try:
        yield managed
    finally:
        managed.stop()


@contextlib.contextmanager
def running_floor(work: Path) -> Iterator[tuple[ManagedProcess, str]]:
    """bench/floor.py (a bare aiohttp process on the daemon's libraries, one /metrics handler) on a free port:
    the process and its /metrics URL, once it answers; stopped at the end."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "bench" / "floor.py"), str(port)]
    with managed_process("floor", argv, log_dir=work) as floor:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: floor.alive() and answers(url), timeout=30, what="floor")
        yield floor, url


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed at the end."""
    with tempfile.TemporaryDirectory(prefix=f"cctv-bench-{prefix}-") as path:
        yield Path(path)


@contextlib.contextmanager
def running_testbed(data_dir: Path, *args: str) -> Iterator[Any]:
    """The testbed backend in a subprocess (``testbed.harness.TestbedProcess``), stopped at the end."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from testbed.harness import TestbedProcess

    with TestbedProcess(data_dir, *args) as tb:
        yield tb


# The daemon's entry point on a chosen event loop: uvloop through the policy asyncio.run consults, or asyncio's
# own loop with uvloop hidden (so the choice holds whether or not the daemon picks uvloop by itself).
WITH_UVLOOP = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
    " from optimizer.cli import entry; sys.exit(entry())"
)
WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; from optimizer.cli import entry; sys.exit(entry())"


@dataclass(kw_only=True)
class DaemonHandle:
    """A daemon subprocess: its process, API base URL and write token."""

    process: ManagedProcess
    base: str
    state_dir: Path

    @property
    def pid(self) -> int:
        """PID of the daemon."""
        return self.process.pid

    @property
    def token(self) -> str:
        """The write token the daemon generated in its state directory."""
        return (self.state_dir / "api-token").read_text(encoding="utf-8").strip()


def daemon_env(testbed_env: Mapping[str, str], state_dir: Path, port: int, **overrides: str) -> dict[str, str]:
    """The daemon's environment: pointed at the testbed, own state directory and API port, default intervals."""
    env = python_env(dict(testbed_env))
    env["CCTV_OPTIMIZER_STATE__DIRECTORY"] = str(state_dir)
    env["CCTV_OPTIMIZER_API__LISTEN"] = f"127.0.0.1:{port}"
    env["LOG_LEVEL"] = "warning"
    env.update(overrides)
    return env


@contextlib.contextmanager
def running_daemon(
    testbed_env: Mapping[str, str],
    work: Path,
    *,
    name: str = "daemon",
    uvloop: bool = False,
    startup_timeout: float = 60.0,
    **overrides: str,
) -> Iterator[DaemonHandle]:
    """``cctv-optimizer run`` (on uvloop or asyncio's loop) pointed at the testbed; waits for /health 200."""
    state_dir = work / f"{name}-state"
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = daemon_env(testbed_env, state_dir, port, **overrides)
    argv = [sys.executable, "-c", WITH_UVLOOP if uvloop else WITHOUT_UVLOOP, "run"]
    with managed_process(name, argv, log_dir=work, env=env, cwd=work) as process:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not process.alive():
                raise RuntimeError(f"{name} exited with {process.proc.returncode}:\n{process.log_tail()}")
            return answers(base + "/health")

        wait_until(healthy, timeout=startup_timeout, what=name)
        yield DaemonHandle(process=process, base=base, state_dir=state_dir)


def uvloop_available() -> bool:
    """True when uvloop is importable in this interpreter."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- idle connections --------------------------------------------------------------------------------------


@contextlib.contextmanager
def idle_connections(port: int, count: int, *, host: str = "127.0.0.1", timeout: float = 120.0) -> Iterator[int]:
    """Hold ``count`` idle connections to ``host:port`` from a child process; they close with RST at the end.

    The listener must accept them (and be allowed enough descriptors: raise the limit before starting it).
    """
    raise_fd_limit(count + FD_MARGIN)
    child = subprocess.Popen(
        [sys.executable, str(BENCH_TCP), "--child", f"{host}:{port}:{count}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], timeout)
        if not ready or child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{count} connections to {host}:{port} were not opened within {timeout:g} s")
        yield child.pid
    finally:
        stop_children([child])


def stop_children(children: Sequence[subprocess.Popen[Any]]) -> None:
    """Stop helper processes that end when their stdin closes: every stdin closed first (so they wind down
    together), then each waited for, and killed if it does not end in time."""
    for child in children:
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()
    for child in children:
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


# --- event-loop lag ----------------------------------------------------------------------------------------


class LoopLag:
    """A ticker coroutine that records how late each short sleep wakes up (the loop's blocking)."""

    def __init__(self, tick_s: float = 0.002) -> None:
        self.tick_s = tick_s
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        """Start ticking."""
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop ticking."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            before = loop.time()
            await asyncio.sleep(self.tick_s)
            self.lags.append(max(0.0, loop.time() - before - self.tick_s))

    def summary(self) -> dict[str, Any]:
        """Max, p99 and median lag in seconds, and the number of ticks."""
        lags = sorted(self.lags) or [0.0]
        return {
            "ticks": len(self.lags),
            "max_s": lags[-1],
            "p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "median_s": median(lags),
        }
