"""Time on the real backend: its runtime timezone (system_settings) and the time base of each column."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.contract.real import RealBackend
from tests.harness import running_daemon, sample_times

pytestmark = pytest.mark.contract

ONLY_DATABASE = {
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS": "0",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_ENABLED": "true",
    "CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE": "true",
}
OLD = "contract-old"
YOUNG = "contract-young"


@pytest.fixture
def makassar(real: RealBackend) -> Iterator[RealBackend]:
    """The backend switched to WITA (Asia/Makassar) over its admin route, and back to WIB afterwards."""
    real.set_timezone("WITA")
    try:
        yield real
    finally:
        real.set_timezone("WIB")


@pytest.mark.xfail(strict=True, reason="defect 3g: the daemon reads local times with a fixed +7 h, not the setting")
async def test_a_timezone_changed_at_runtime_is_followed(makassar: RealBackend, tmp_path: Path) -> None:
    """After an admin switches the backend to WITA, a viewer who just started (written by the backend in
    Asia/Makassar time) is seconds old to the daemon, not an hour in the future."""
    real = makassar
    env = real.daemon_env(tmp_path / "state", **ONLY_DATABASE)
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        reply = real.request("POST", "/api/viewer/start", {"cameraId": 1}, client_ip="10.80.0.1")
        assert reply.status == 200, reply
        try:
            snapshot = await daemon.sample_now()
        finally:
            real.request("POST", "/api/viewer/stop", {"sessionId": reply.body["data"]["sessionId"]})
        assert snapshot.sessions is not None
        age = snapshot.sessions.oldest_heartbeat_age_seconds
        assert age is not None and 0 <= age < 60, f"a fresh viewer's heartbeat is {age} s old"


def iso_utc(moment: datetime) -> str:
    """``new Date().toISOString()``: how bruteForceProtection writes attempt_time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def utc_sql(moment: datetime) -> str:
    """``toUtcSql()``: how playbackTokenService writes expires_at."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def counted(real: RealBackend, sql: str, *args: object) -> int:
    """One COUNT(*)."""
    with real.sql() as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def forget_time_rows(real: RealBackend) -> None:
    """Remove the rows the time-base scenario wrote."""
    with real.sql() as conn:
        conn.execute("DELETE FROM login_attempts WHERE identifier IN (?, ?)", (OLD, YOUNG))
        conn.execute("DELETE FROM playback_token_sessions WHERE user_agent IN (?, ?)", (OLD, YOUNG))
        conn.execute("DELETE FROM playback_tokens WHERE label = ?", (OLD,))


@pytest.mark.xfail(strict=True, reason="defect 3f: playback_token_sessions.expires_at (UTC) is read as local time")
async def test_retention_reads_each_table_in_its_own_time_base(real: RealBackend, tmp_path: Path) -> None:
    """Rows written as the backend writes them, under the 90-day rule: failed logins (attempt_time ISO UTC,
    trackFailedAttempt) and playback sessions (expires_at UTC, toUtcSql) 91 days old go; those 89 days
    20 hours old stay (read as local time they would look 90 days 3 hours old)."""
    now = datetime.now(UTC)
    old, young = now - timedelta(days=91), now - timedelta(days=89, hours=20)
    forget_time_rows(real)
    with real.sql() as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO login_attempts (identifier, identifier_type, attempt_time, success) VALUES (?, 'username', ?, 0)",
            [(OLD, iso_utc(old))] * 2000 + [(YOUNG, iso_utc(young))] * 50,
        )
        token = conn.execute(
            "INSERT INTO playback_tokens (label, token_hash, token_prefix) VALUES (?, ?, 'ctr')",
            (OLD, secrets.token_hex(32)),
        ).lastrowid
        conn.executemany(
            "INSERT INTO playback_token_sessions (token_id, session_id_hash, ip_address, user_agent, last_seen_at, "
            "expires_at) VALUES (?, ?, '10.80.1.1', ?, ?, ?)",
            [(token, secrets.token_hex(32), OLD, utc_sql(old), utc_sql(old)) for _ in range(200)]
            + [(token, secrets.token_hex(32), YOUNG, utc_sql(young), utc_sql(young)) for _ in range(50)],
        )
        conn.execute("COMMIT")
    try:
        async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_DATABASE)) as daemon:
            await sample_times(daemon, 2)
            result = await daemon.engine.request_round(trigger="scheduled", strategy="database")
            assert result.decision_ids, "no retention round"
        left = {
            "login_attempts old": counted(real, "SELECT COUNT(*) FROM login_attempts WHERE identifier = ?", OLD),
            "login_attempts young": counted(real, "SELECT COUNT(*) FROM login_attempts WHERE identifier = ?", YOUNG),
            "playback_token_sessions old": counted(
                real, "SELECT COUNT(*) FROM playback_token_sessions WHERE user_agent = ?", OLD
            ),
            "playback_token_sessions young": counted(
                real, "SELECT COUNT(*) FROM playback_token_sessions WHERE user_agent = ?", YOUNG
            ),
        }
        print(f"left after retention: {left}")
        assert left == {
            "login_attempts old": 0,
            "login_attempts young": 50,
            "playback_token_sessions old": 0,
            "playback_token_sessions young": 50,
        }
    finally:
        forget_time_rows(real)


def test_the_backend_writes_each_column_in_its_own_time_base(real: RealBackend) -> None:
    """What the daemon's time bases rest on, checked on the backend's own writes: a viewer's started_at is
    local time in the configured zone, a login's attempt_time is ISO UTC."""
    reply = real.request("POST", "/api/viewer/start", {"cameraId": 2}, client_ip="10.80.0.2")
    assert reply.status == 200, reply
    session_id = reply.body["data"]["sessionId"]
    real.request("POST", "/api/viewer/stop", {"sessionId": session_id})
    real.login()
    with real.sql() as conn:
        started = conn.execute("SELECT started_at FROM viewer_sessions WHERE session_id = ?", (session_id,)).fetchone()
        attempt = conn.execute(
            "SELECT attempt_time FROM login_attempts WHERE identifier = ? ORDER BY id DESC LIMIT 1", (real.username,)
        ).fetchone()
        conn.execute("DELETE FROM viewer_sessions WHERE session_id = ?", (session_id,))
    local = datetime.strptime(started[0], "%Y-%m-%d %H:%M:%S")
    assert abs((local - real.local_now()).total_seconds()) < 30, "started_at is the configured zone's wall time"
    attempt_time = datetime.strptime(attempt[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((attempt_time - datetime.now(UTC)).total_seconds()) < 30, "attempt_time is ISO UTC"
