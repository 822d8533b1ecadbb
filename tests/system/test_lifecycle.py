"""The daemon as a real process: start, READY over NOTIFY_SOCKET, SIGHUP reloads, SIGTERM stops, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import TestbedProcess
from tests.harness import daemon_process

ROOT = Path(__file__).resolve().parents[2]


def base_env(tb: TestbedProcess, tmp_path: Path) -> dict[str, str]:
    """Point a daemon at the testbed with short intervals."""
    return {
        **tb.env,
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "OPTIMIZATION_INTERVAL": "1000",
        "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "300",
    }


def get_json(url: str) -> tuple[int, Any]:
    """GET a URL; (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_start_ready_and_sigterm(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The daemon says READY=1 on NOTIFY_SOCKET, serves /health, and exits 0 on SIGTERM after a clean stop."""
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    try:
        env = {**base_env(testbed, tmp_path), "NOTIFY_SOCKET": str(notify_path)}
        with daemon_process(env) as d:
            started = d.wait_event("daemon_started")
            message = listener.recv(4096).decode()
            assert "READY=1" in message and "STATUS=mode=enforce" in message
            status, body = get_json(f"{started['api']}/health")
            assert status == 200 and body["state"] == "running"
            assert d.stop() == 0
            d.wait_event("daemon_stopped")
            stopping = listener.recv(4096).decode()
            assert "STOPPING=1" in stopping
    finally:
        listener.close()


def test_sighup_keeps_the_old_config_when_the_new_one_is_invalid(testbed: TestbedProcess, tmp_path: Path) -> None:
    """An invalid file on SIGHUP is logged and ignored; a valid one is applied; a storm is coalesced."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpu_threshold: 0.85\n")
    with daemon_process(base_env(testbed, tmp_path), "--config", str(cfg)) as d:
        started = d.wait_event("daemon_started")
        cfg.write_text("cpu_threshold: 7\nbogus_key: 1\n")
        d.proc.send_signal(signal.SIGHUP)
        failed = d.wait_event("config_reload_failed")
        assert any("cpu_threshold" in p for p in failed["problems"])
        assert any("bogus_key: unknown setting" in p for p in failed["problems"])
        status, _ = get_json(f"{started['api']}/health")
        assert status == 200
        cfg.write_text("cpu_threshold: 0.8\nengine:\n  mode: dry_run\n")
        for _ in range(20):
            d.proc.send_signal(signal.SIGHUP)
        reloaded = d.wait_event("config_reloaded")
        assert reloaded["mode"] == "dry_run"
        status, body = get_json(f"{started['api']}/performance-metrics")
        assert body["mode"] == "dry_run"
        assert d.stop() == 0
    reloads = sum(1 for line in d.raw if '"config_reloaded"' in line)
    assert 1 <= reloads < 20


def test_check_config_exit_codes_and_redaction(tmp_path: Path) -> None:
    """check-config exits 0 with sources and no secret contents, or 78 listing every problem."""
    secret = tmp_path / "pw"
    secret.write_text("very-secret-password\n")
    secret.chmod(0o600)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE": str(secret),
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
    }
    good = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "check-config", "--no-env-file"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "backend.admin_password_file" in good.stdout and "(contents redacted)" in good.stdout
    assert "very-secret-password" not in good.stdout + good.stderr
    assert "optimization_interval" in good.stdout and "(default; OPTIMIZATION_INTERVAL)" in good.stdout
    bad_env = {**env, "CPU_THRESHOLD": "3", "OPTIMIZATION_INTERVAL": "soon"}
    bad = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "check-config", "--no-env-file"],
        env=bad_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 78
    assert "CPU_THRESHOLD=3: must be a ratio from 0.05 to 1, e.g. 0.9 for 90 % (env CPU_THRESHOLD)" in bad.stdout
    assert "OPTIMIZATION_INTERVAL=soon: expected a whole number of milliseconds (e.g. 30000 for 30 s)" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CCTV_OPTIMIZER_API__LISTEN": "0.0.0.0:0"}, "a non-loopback address needs a token"),
        ({"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": "/etc"}, "/etc is the system directory /etc"),
    ],
)
def test_run_refuses_dangerous_configuration(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    """Dangerous settings stop `run` with exit 78 and a clear message, no traceback."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "s"), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "run"], env=full, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 78
    assert fragment in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
