"""The testbed as a process: environment line, files, database layout, jobs, clean shutdown."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.loader import load_settings
from testbed.database import TABLES
from testbed.harness import TestbedFactory, TestbedProcess, child_pids, pids_alive, wait_until

EXPECTED_KEYS = {
    "CCTV_OPTIMIZER_BACKEND__URL",
    "CCTV_OPTIMIZER_BACKEND__DATABASE",
    "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY",
    "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK",
    "CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME",
    "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE",
    "CCTV_OPTIMIZER_BACKEND__PROCESS",
    "CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY",
}
LOCAL_FORMAT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to the testbed's database, closed on exit."""
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True))


def test_first_line_is_the_environment(tmp_path: Path) -> None:
    """The first stdout line holds exactly the documented keys, with absolute paths in the data dir."""
    with TestbedProcess(tmp_path) as tb:
        assert set(tb.env) == EXPECTED_KEYS
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", tb.url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", tb.mediamtx_url)
        assert tb.url != tb.mediamtx_url
        assert tb.database == tmp_path.resolve() / "data" / "cctv.db"
        assert tb.hls_dir == tmp_path.resolve() / "hls"
        # a daemon started with this environment alone manages the testbed's recorders, none other on the host
        cpu = load_settings(tb.env).settings.strategies.cpu
        assert cpu.recordings_directory == tmp_path.resolve() / "recordings"
        assert tb.env["CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME"] == "admin"
        pid_file = Path(tb.env["CCTV_OPTIMIZER_BACKEND__PROCESS"].removeprefix("pid:"))
        assert pid_file.read_text().strip() == str(tb.pid)
        password_file = Path(tb.env["CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE"])
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert len(tb.admin_password) >= 16
        health = tb.request("GET", "/health")
        body = health.json()
        assert health.status == 200
        assert set(body) == {"status", "timestamp", "timestampLocal", "timezone", "security"}
        assert body["status"] == "ok"
        assert body["timezone"] == "Asia/Jakarta (WIB, UTC+7)"
        utc = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        local = datetime.fromisoformat(body["timestampLocal"])
        assert local.utcoffset() == timedelta(hours=7)
        assert abs(local - utc) < timedelta(seconds=2)
    assert tb.returncode == 0
    assert not pid_file.exists()


def test_api_key_option_adds_key_file(tmp_path: Path) -> None:
    """With --api-key the line also names a 0600 key file holding the key."""
    with TestbedProcess(tmp_path, "--api-key", "k3y-123", "--timezone", "WITA") as tb:
        assert set(tb.env) == EXPECTED_KEYS | {"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE"}
        key_file = Path(tb.env["CCTV_OPTIMIZER_BACKEND__API_KEY_FILE"])
        assert key_file.read_text().strip() == "k3y-123"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert tb.request("GET", "/health").json()["timezone"] == "Asia/Makassar (WITA, UTC+8)"


def test_database_is_wal_with_the_named_tables(make_testbed: TestbedFactory) -> None:
    """The SQLite file is in WAL mode, has every table the testbed keeps and seeded local-time rows."""
    tb = make_testbed("--cameras", "3")
    with read_only(tb.database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(TABLES) <= tables
        assert conn.execute("SELECT COUNT(*) FROM cameras").fetchone()[0] == 3
        keys = [row[0] for row in conn.execute("SELECT stream_key FROM cameras")]
        assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", key) for key in keys)
        started, heartbeat = conn.execute("SELECT started_at, last_heartbeat FROM viewer_sessions").fetchone()
        assert LOCAL_FORMAT.fullmatch(started)
        assert LOCAL_FORMAT.fullmatch(heartbeat)
        assert conn.execute("SELECT COUNT(*) FROM telegram_archive_uploads").fetchone()[0] > 0
        # The archive job ran at start-up: nothing older than 90 days stays in history.
        cutoff = (datetime.now(UTC) + timedelta(hours=7) - timedelta(days=90)).strftime("%Y-%m-%d %H:%M:%S")
        old = conn.execute("SELECT COUNT(*) FROM viewer_session_history WHERE started_at < ?", (cutoff,))
        assert old.fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM viewer_session_history_archive").fetchone()[0] == 2


def test_missing_archive_table_makes_the_archive_job_fail_loudly(make_testbed: TestbedFactory) -> None:
    """--missing-archive-table: no archive table, the job fails on stderr only, old history stays."""
    tb = make_testbed("--missing-archive-table", "--no-sweep")
    with read_only(tb.database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "viewer_session_history_archive" not in tables
        assert conn.execute("SELECT COUNT(*) FROM viewer_session_history").fetchone()[0] == 5
    state = tb.state()
    assert state["archive_job"]["failures"] >= 1
    assert "viewer_session_history_archive" in state["archive_job"]["last_error"]
    assert state["sweep_enabled"] is False
    wait_until(lambda: "archive job FAILED" in tb.stderr_text())
    assert tb.request("GET", "/health").status == 200


def test_sigterm_ends_recorders_and_leaves_no_child(tmp_path: Path) -> None:
    """SIGTERM stops the testbed with status 0 and no fake recorder or other child left running."""
    tb = TestbedProcess(tmp_path)
    try:
        pids = tb.scenario("hot_recorder", count=2)["pids"]
        assert len(pids) == 2
        assert set(pids) <= set(child_pids(tb.pid))
        assert pids_alive(pids) == pids
    finally:
        code = tb.close()
    assert code == 0
    assert pids_alive(pids) == []
    assert child_pids(tb.pid) == []


def test_port_in_use_fails_start_up(tmp_path: Path) -> None:
    """A backend port that is taken makes the process exit non-zero before printing anything."""
    with TestbedProcess(tmp_path / "a") as first:
        port = first.url.rsplit(":", 1)[1]
        with pytest.raises(RuntimeError, match="before printing"):
            TestbedProcess(tmp_path / "b", "--listen", f"127.0.0.1:{port}")


def test_recorders_exit_when_the_testbed_is_killed(tmp_path: Path) -> None:
    """Fake recorders notice their parent died (SIGKILL, no cleanup) and end by themselves."""
    tb = TestbedProcess(tmp_path)
    try:
        pids = tb.scenario("hot_recorder", count=1)["pids"]
        os.kill(tb.pid, 9)
        tb.process.wait(timeout=10)
        wait_until(lambda: not pids_alive(pids), timeout=10)
    finally:
        tb.close()
    assert pids_alive(pids) == []
