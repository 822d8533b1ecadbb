"""Secrets never leave the daemon: not in its logs, its API answers, check-config, or its state files.

The daemon runs as ``cctv-optimizer run`` (JSON logs at debug level captured) against a testbed that
requires an API key, with a known API token file, the testbed's admin password file and the API key file.
Everything it says while it logs in to the backend, samples, runs rounds, refuses writes and reports errors
is searched for the three secrets. A second run with a wrong password covers the failed-login path.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.harness import TestbedProcess, wait_until
from tests.harness import ROOT, DaemonProcess, daemon_env, daemon_process

TOKEN = "api-token-" + secrets.token_hex(20)
API_KEY = "backend-key-" + secrets.token_hex(20)
WRONG_PASSWORD = "wrong-password-" + secrets.token_hex(12)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Transcript:
    """Every HTTP exchange with the daemon, as text to search."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.parts: list[str] = []
        self.statuses: dict[str, int] = {}

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        """Send one request; record the status, the headers and the body of the answer; return the body."""
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with OPENER.open(request, timeout=30) as resp:
                status, answer_headers, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, answer_headers, raw = exc.code, exc.headers, exc.read()
        label = f"{method} {path}"
        self.statuses[label] = status
        self.parts.append(f"{label} -> {status}\n{answer_headers}\n{raw.decode('utf-8', 'replace')}")
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")


def base_url(proc: DaemonProcess) -> str:
    """The API base URL from the daemon_started line."""
    return str(proc.wait_event("daemon_started", timeout=30)["api"])


def secrets_env(tb: TestbedProcess, root: Path, password_file: Path | None = None) -> dict[str, str]:
    """Daemon environment with the known token file, the password file and the API key file, logging at debug."""
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    key_file = root / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    env = daemon_env(
        tb,
        root / "state",
        LOG_LEVEL="debug",
        CCTV_OPTIMIZER_API__TOKEN_FILE=str(token_file),
        CCTV_OPTIMIZER_BACKEND__API_KEY_FILE=str(key_file),
    )
    if password_file is not None:
        env["CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE"] = str(password_file)
    return env


def wait_for_source(http: Transcript, name: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /performance-metrics until the named source's status passes ``check`` (bounded)."""

    def probe() -> dict[str, Any] | None:
        status = http.call("GET", "/performance-metrics")["sources"].get(name)
        return status if status is not None and check(status) else None

    return wait_until(probe, timeout=30, interval=0.2)


def leaks(text: str, named: dict[str, str]) -> list[str]:
    """Which of the named secrets occur in the text."""
    return [name for name, value in named.items() if value in text]


def exercise(http: Transcript) -> None:
    """Reads, a good round, refused writes and bad requests: every kind of answer the API gives."""
    bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for path in ("/performance-metrics", "/strategies", "/metrics", "/health", "/optimizations", "/"):
        http.call("GET", path)
    http.call("POST", "/performance-optimize", b'{"dryRun": true}', bearer)
    http.call("POST", "/performance-optimize", b'{"strategy": "cache"}', bearer)
    http.call("POST", "/performance-optimize", b"{}", {"Authorization": f"Bearer {TOKEN}x"})
    http.call("POST", "/performance-optimize", b"{}", {"Authorization": f"Bearer {TOKEN[:-1]}"})
    http.call("POST", "/strategies/cache/reset", None, {"Authorization": f"Basic {TOKEN}"})
    http.call("POST", "/strategies/cache/mode", b'{"mode": "loud"}', bearer)
    http.call("POST", "/performance-optimize", b"{not json", bearer)
    http.call("POST", "/performance-optimize", b'{"strategy": "nope"}', bearer)
    http.call("POST", "/alertmanager", b'{"version": "3"}', bearer)
    http.call("GET", "/optimizations?after=-1")
    http.call("GET", "/no-such-page")
    http.call("DELETE", "/health")


def test_no_secret_in_logs_answers_check_config_or_state(tmp_path: Path) -> None:
    """The API token, the backend password and the API key appear in no log line, answer, config dump or file."""
    with TestbedProcess(tmp_path / "testbed", "--api-key", API_KEY) as tb:
        named = {"api token": TOKEN, "admin password": tb.admin_password, "api key": API_KEY}
        assert all(len(value) >= 16 for value in named.values())
        env = secrets_env(tb, tmp_path)
        with daemon_process(env) as proc:
            http = Transcript(base_url(proc))
            # the cache source is up only after a login with the password and calls carrying the API key
            wait_for_source(http, "cache", lambda s: bool(s["up"]))
            exercise(http)
            assert proc.stop() == 0
        check = subprocess.run(
            [sys.executable, "-m", "optimizer.cli", "check-config", "--no-env-file"],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # the exercise covered what it meant to: successes, refusals and errors
    assert http.statuses["POST /performance-optimize"] == 400
    assert http.statuses["POST /strategies/cache/reset"] == 401
    assert http.statuses["GET /no-such-page"] == 404
    assert http.statuses["DELETE /health"] == 405
    assert check.returncode == 0, check.stdout + check.stderr
    assert "token_file" in check.stdout and "admin_password_file" in check.stdout
    log = "".join(proc.raw)
    assert '"event": "daemon_started"' in log and '"event": "source_up"' in log
    state_files = "".join(
        path.read_bytes().decode("latin-1") for path in (tmp_path / "state").rglob("*") if path.is_file()
    )
    assert state_files, "the state directory holds the database"
    for where, text in {
        "log": log,
        "api": "\n".join(http.parts),
        "check-config": check.stdout + check.stderr,
        "state": state_files,
    }.items():
        assert leaks(text, named) == [], where


def test_failed_backend_login_does_not_log_the_password(tmp_path: Path) -> None:
    """A wrong admin password makes the cache source fail; neither logs nor answers show the password used."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text(WRONG_PASSWORD + "\n")
    wrong.chmod(0o600)
    with TestbedProcess(tmp_path / "testbed", "--api-key", API_KEY) as tb:
        named = {"api token": TOKEN, "wrong password": WRONG_PASSWORD, "api key": API_KEY}
        with daemon_process(secrets_env(tb, tmp_path, password_file=wrong)) as proc:
            http = Transcript(base_url(proc))
            down = wait_for_source(http, "cache", lambda s: not s["up"] and bool(s["error"]))
            http.call("GET", "/strategies")
            http.call("GET", "/metrics")
            assert proc.stop() == 0
    log = "".join(proc.raw)
    assert '"event": "source_down"' in log
    assert leaks(log, named) == []
    assert leaks("\n".join(http.parts), named) == []
    assert leaks(json.dumps(down), named) == []


def test_transcript_would_catch_a_leak() -> None:
    """The search finds a secret anywhere in a text, so a leak cannot pass unnoticed."""
    text = f'{{"event": "x", "header": "Bearer {TOKEN}"}}'
    assert leaks(text, {"api token": TOKEN, "api key": API_KEY}) == ["api token"]
