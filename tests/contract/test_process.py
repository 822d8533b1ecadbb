"""The process source against the real backend started by a launcher (a shell wrapper, as pm2 or a script does)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.contract.real import RealBackend
from tests.harness import running_daemon

pytestmark = pytest.mark.contract

ALL_OFF = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
}
START_TIMEOUT_S = 30.0


def restart_under_a_wrapper(real: RealBackend) -> tuple[int, int]:
    """Stop the backend and start it again below a shell that stays (``sh -c 'node server.js; echo ...'``); the
    backend's pid file names the server as ``run.sh start`` writes it. (launcher pid, server pid)."""
    old = real.pid()
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT_S
    while Path(f"/proc/{old}").exists():
        assert time.monotonic() < deadline, f"the backend (pid {old}) did not stop"
        time.sleep(0.2)
    script = 'node server.js </dev/null >>"$1" 2>&1; echo "launcher: server exited" >>"$1"'
    # started from a shell that exits at once, so the launcher outlives no Popen object of this process
    started = subprocess.run(
        ["sh", "-c", 'nohup sh -c "$2" sh "$1" </dev/null >/dev/null 2>&1 & echo $!', "sh", str(real.log), script],
        cwd=real.root / "backend",
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    launcher = int(started.stdout.strip())
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        children = psutil.Process(launcher).children()
        try:
            up = bool(children) and real.request("GET", "/health").status == 200
        except OSError:
            up = False
        if up:
            break
        assert time.monotonic() < deadline, "the backend did not answer /health below its launcher"
        time.sleep(0.2)
    (server,) = children
    real.pid_file.write_text(f"{server.pid}\n", encoding="utf-8")
    return launcher, server.pid


async def test_a_pid_file_naming_the_launcher_measures_the_server_below_it(real: RealBackend, tmp_path: Path) -> None:
    """``pid:`` names the shell that started node: the daemon measures node (its RSS, its port), not the shell's
    1-2 MB with no port, and the process source carries no degraded reason."""
    launcher, server = restart_under_a_wrapper(real)
    pid_file = tmp_path / "launcher.pid"
    pid_file.write_text(f"{launcher}\n", encoding="utf-8")
    env = real.daemon_env(tmp_path / "state", **ALL_OFF, CCTV_OPTIMIZER_BACKEND__PROCESS=f"pid:{pid_file}")
    async with running_daemon(env) as daemon:
        snapshot = await daemon.sample_now()
    assert snapshot.backend is not None
    launcher_rss = psutil.Process(launcher).memory_info().rss
    print(
        f"launcher {launcher} ({launcher_rss} B), server {server}: measured pid {snapshot.backend.pid}, "
        f"RSS {snapshot.backend.rss_bytes} B, ports {snapshot.backend.listen_ports}"
    )
    assert snapshot.backend.pid == server
    assert real.port in snapshot.backend.listen_ports
    assert snapshot.backend.rss_bytes > 20 * 1024 * 1024 > launcher_rss
    assert snapshot.sources["process"].up and snapshot.sources["process"].error is None
    assert snapshot.tcp is not None and real.port in snapshot.tcp.ports
