"""Start-up failures of ``cctv-optimizer run`` as a real process: one log line with the cause, the right exit status.

78 (EX_CONFIG, which the unit's RestartPreventExitStatus= keeps systemd from restarting) for every configuration
problem: a missing, unreadable, empty or world-readable secret file, a bad value, an unusable path or listen
address; 1 for anything else (the port taken by another process). Never a traceback for an expected failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, daemon_process

EX_CONFIG = 78
# nothing listens on the discard port: the backend and MediaMTX are simply down for these daemons
DEAD = "http://127.0.0.1:9"


def quiet_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A daemon environment that touches nothing real: observe mode, dead backend, its own state directory."""
    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    return {
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__URL": DEAD,
        "CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL": DEAD,
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(tmp_path / "hls"),
        # a scratch directory on disk stands in for MediaMTX's tmpfs one
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
        "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(recordings),
        "ENABLE_PERFORMANCE_OPTIMIZATION": "false",
        **overrides,
    }


def run_once(env: dict[str, str]) -> tuple[int, list[dict[str, Any]], str]:
    """Run the daemon to its exit (it must fail at start); (status, JSON log lines, all output)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CCTV_OPTIMIZER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "run"],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    lines = []
    for line in proc.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return proc.returncode, lines, output


def errors(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The error-level log lines."""
    return [line for line in lines if line.get("level") == "error"]


def secret(path: Path, text: str = "s3cret-value\n", mode: int = 0o600) -> Path:
    """A secret file with the given mode."""
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "variable",
    [
        "CCTV_OPTIMIZER_API__TOKEN_FILE",
        "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE",
        "CCTV_OPTIMIZER_BACKEND__API_KEY_FILE",
    ],
)
def test_missing_secret_file_is_one_line_and_exit_78(tmp_path: Path, variable: str) -> None:
    """A secret file that does not exist stops the start with exit 78 and one line naming it; no traceback."""
    missing = tmp_path / "nowhere" / "secret"
    status, lines, output = run_once(quiet_env(tmp_path, **{variable: str(missing)}))
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert error["event"] == "config_invalid"
    assert any(f"{variable}={missing}: {missing} does not exist" in p for p in error["problems"]), error
    assert "Traceback" not in output and "AttributeError" not in output


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.mkdir(), "is not a regular file"),
        (lambda p: secret(p, ""), "is empty"),
        (lambda p: secret(p, mode=0o644), "is readable by others (mode 0644)"),
        (lambda p: secret(p, mode=0o602), "is writable by others (mode 0602)"),
    ],
)
def test_unusable_secret_file_is_exit_78(tmp_path: Path, make: Any, fragment: str) -> None:
    """A secret path that is a directory, empty, or open to other users is refused with exit 78, naming it."""
    path = tmp_path / "api-token"
    make(path)
    status, lines, output = run_once(quiet_env(tmp_path, CCTV_OPTIMIZER_API__TOKEN_FILE=str(path)))
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert any(str(path) in p and fragment in p for p in error["problems"]), error
    assert "Traceback" not in output


def test_world_readable_password_file_is_exit_78(tmp_path: Path) -> None:
    """The backend password file, like the token: readable by others is refused with exit 78, naming it and its
    mode, before anything logs in with it."""
    path = secret(tmp_path / "backend-admin-password", mode=0o644)
    status, lines, output = run_once(quiet_env(tmp_path, CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE=str(path)))
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert any(f"{path} is readable by others (mode 0644)" in p for p in error["problems"]), error
    assert "s3cret-value" not in output and "Traceback" not in output


def test_world_readable_secret_allowed_by_setting_is_warned_about_once(tmp_path: Path) -> None:
    """With secrets.allow_world_readable the daemon starts and says once which file, with which mode."""
    token = secret(tmp_path / "api-token", mode=0o644)
    env = quiet_env(
        tmp_path, CCTV_OPTIMIZER_API__TOKEN_FILE=str(token), CCTV_OPTIMIZER_SECRETS__ALLOW_WORLD_READABLE="true"
    )
    with daemon_process({k: v for k, v in env.items()}) as proc:
        proc.wait_event("daemon_started", timeout=30)
        assert proc.stop() == 0
    warnings = [line for line in proc.raw if "is readable by others" in line]
    assert len(warnings) == 1, proc.raw
    warning = json.loads(warnings[0])
    assert warning["event"] == "config_warning" and warning["level"] == "warning"
    assert f"{token} is readable by others (mode 0644)" in warning["warning"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            {"OPTIMIZATION_INTERVAL": "30"},
            "OPTIMIZATION_INTERVAL=30: must be at least 1000 milliseconds (e.g. 30000 for 30 s)",
        ),
        ({"CPU_THRESHOLD": "80"}, "CPU_THRESHOLD=80: must be a ratio from 0.05 to 1, e.g. 0.8 for 80 %"),
        ({"CCTV_OPTIMIZER_CONFIG": "/nonexistent/config.yaml"}, "cannot read the file"),
    ],
)
def test_bad_values_are_one_line_and_exit_78(tmp_path: Path, overrides: dict[str, str], fragment: str) -> None:
    """A bad value or a missing YAML file is exit 78 with the unit and an example in the one error line."""
    status, lines, output = run_once(quiet_env(tmp_path, **overrides))
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert any(fragment in p for p in error["problems"]), error
    assert "Traceback" not in output


def test_state_directory_that_is_a_file_is_exit_78(tmp_path: Path) -> None:
    """A state directory path that is a regular file is a configuration problem, not a crash."""
    blocker = tmp_path / "state-file"
    blocker.write_text("not a directory")
    status, lines, output = run_once(quiet_env(tmp_path, CCTV_OPTIMIZER_STATE__DIRECTORY=str(blocker)))
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert any(f"{blocker} is not a directory" in p for p in error["problems"]), error


def test_listen_address_not_on_this_host_is_exit_78(tmp_path: Path) -> None:
    """An API address this host does not have cannot be fixed by restarting: exit 78, one line, no traceback."""
    token = secret(tmp_path / "api-token")
    status, lines, output = run_once(
        quiet_env(tmp_path, CCTV_OPTIMIZER_API__LISTEN="192.0.2.1:9877", CCTV_OPTIMIZER_API__TOKEN_FILE=str(token))
    )
    assert status == EX_CONFIG, output
    [error] = errors(lines)
    assert error["event"] == "startup_failed"
    assert "cannot listen on 192.0.2.1:9877 (api.listen): Cannot assign requested address" in error["error"]
    assert "Traceback" not in output


def test_port_in_use_is_exit_1(tmp_path: Path) -> None:
    """A port another process holds may free up: exit 1 (systemd restarts), one line with the cause."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, lines, output = run_once(quiet_env(tmp_path, CCTV_OPTIMIZER_API__LISTEN=f"127.0.0.1:{port}"))
    assert status == 1, output
    [error] = errors(lines)
    assert error["event"] == "startup_failed"
    assert f"cannot listen on 127.0.0.1:{port} (api.listen): Address already in use" in error["error"]
    assert "Traceback" not in output


def test_misspelt_variable_in_the_environment_is_warned_about(tmp_path: Path) -> None:
    """MEMORY_TRESHOLD in the daemon's environment is not silently ignored: a config_warning with "did you mean"."""
    with daemon_process(quiet_env(tmp_path, MEMORY_TRESHOLD="0.5")) as proc:
        proc.wait_event("daemon_started", timeout=30)
        assert proc.stop() == 0
    warnings = [json.loads(line) for line in proc.raw if '"config_warning"' in line]
    assert len(warnings) == 1, proc.raw
    assert "MEMORY_TRESHOLD: not a setting, ignored; did you mean MEMORY_THRESHOLD?" in warnings[0]["warning"]
