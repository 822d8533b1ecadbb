"""Viewer sessions: start, heartbeat, stop, stats, and the backend's own sweep (switchable)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from testbed.harness import AdminSession, TestbedFactory, TestbedProcess, wait_until

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """A testbed whose sweep runs every 0.2 s and ends sessions silent for 1 s."""
    return make_testbed("--rate-limit-scale", "10", "--sweep-interval", "0.2", "--session-timeout", "1")


@pytest.fixture(scope="module")
def admin(tb: TestbedProcess) -> AdminSession:
    """One login for the module."""
    return tb.login()


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts with the sweep on and no scenario sessions."""
    tb.scenario("reset")
    yield


def session_row(tb: TestbedProcess, session_id: str) -> sqlite3.Row:
    """The viewer_sessions row of a session, read from the database file."""
    with contextlib.closing(sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        row: sqlite3.Row = conn.execute("SELECT * FROM viewer_sessions WHERE session_id = ?", (session_id,)).fetchone()
        return row


def history_rows(tb: TestbedProcess, session_id: str) -> list[sqlite3.Row]:
    """A session's history rows (history has no session id: matched by camera, address and start)."""
    row = session_row(tb, session_id)
    with contextlib.closing(sqlite3.connect(f"file:{tb.database}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        query = "SELECT * FROM viewer_session_history WHERE camera_id = ? AND ip_address = ? AND started_at = ?"
        return list(conn.execute(query, (row["camera_id"], row["ip_address"], row["started_at"])).fetchall())


def history_count(tb: TestbedProcess, session_id: str) -> int:
    """How many history rows a session has."""
    return len(history_rows(tb, session_id))


def local_now() -> datetime:
    """Now in the testbed's default local offset (UTC+7), naive like the stored strings."""
    return (datetime.now(UTC) + timedelta(hours=7)).replace(tzinfo=None)


def test_start_heartbeat_stop_and_stats(tb: TestbedProcess, admin: AdminSession) -> None:
    """A session appears in stats while active and moves to history when stopped."""
    tb.scenario("sweep", enabled=False)  # keep the 1 s sweep from ending the session mid-test
    started = tb.request("POST", "/api/viewer/start", json_body={"cameraId": 2}, csrf=admin.csrf)
    session_id = started.json()["data"]["sessionId"]
    assert UUID.fullmatch(session_id)
    stats = tb.request("GET", "/api/viewer/stats", token=admin.token).json()["data"]
    assert stats["activeViewers"] == 1
    assert stats["viewersByCamera"] == [{"camera_id": 2, "camera_name": "CCTV 02", "viewer_count": 1}]
    assert stats["activeSessions"][0]["sessionId"] == session_id
    assert set(stats["today"]) >= {"totalSessions", "uniqueViewers"}
    row = session_row(tb, session_id)
    assert row["is_active"] == 1
    stored = datetime.strptime(row["started_at"], "%Y-%m-%d %H:%M:%S")
    assert abs(stored - local_now()) < timedelta(seconds=60)
    beat = tb.request("POST", "/api/viewer/heartbeat", json_body={"sessionId": session_id}, csrf=admin.csrf)
    assert beat.status == 200
    proxied = tb.request(
        "POST", "/api/viewer/start", json_body={"cameraId": 2}, headers={"X-Forwarded-For": "198.51.100.9, 10.0.0.1"}
    )
    proxied_id = proxied.json()["data"]["sessionId"]
    assert session_row(tb, proxied_id)["ip_address"] == "198.51.100.9"
    assert tb.request("POST", "/api/viewer/stop", json_body={"sessionId": proxied_id}).json()["success"] is True
    stopped = tb.request("POST", "/api/viewer/stop", json_body={"sessionId": session_id}, csrf=admin.csrf)
    assert stopped.json() == {"success": True, "message": "Session ended"}
    again = tb.request("POST", "/api/viewer/stop", json_body={"sessionId": session_id})
    assert again.json() == {"success": False, "message": "Session not found or already ended"}
    row = session_row(tb, session_id)
    assert (row["is_active"], row["ended_at"] is not None) == (0, True)
    assert history_count(tb, session_id) == 1
    assert tb.request("GET", "/api/viewer/stats", token=admin.token).json()["data"]["activeViewers"] == 0


def test_bad_viewer_requests(tb: TestbedProcess, admin: AdminSession) -> None:
    """Missing cameraId is 400, an unknown camera 404, a heartbeat for an unknown session 200 with success false."""
    assert tb.request("POST", "/api/viewer/start", json_body={}, csrf=admin.csrf).status == 400
    assert tb.request("POST", "/api/viewer/start", json_body={"cameraId": 999}, csrf=admin.csrf).status == 404
    unknown = {"sessionId": "00000000-0000-4000-8000-000000000000"}
    beat = tb.request("POST", "/api/viewer/heartbeat", json_body=unknown)
    assert (beat.status, beat.json()) == (200, {"success": False, "message": "Session not found or expired"})
    assert tb.request("POST", "/api/viewer/heartbeat", json_body={}).status == 400
    assert tb.request("GET", "/api/viewer/stats").status == 401


def test_sweep_ends_a_silent_session(tb: TestbedProcess, admin: AdminSession) -> None:
    """Without heartbeats the sweep ends the session at its last heartbeat, with one history row."""
    started = tb.request("POST", "/api/viewer/start", json_body={"cameraId": 1}, csrf=admin.csrf)
    session_id = started.json()["data"]["sessionId"]
    wait_until(lambda: session_row(tb, session_id)["is_active"] == 0, timeout=30)
    row = session_row(tb, session_id)
    assert row["ended_at"] == row["last_heartbeat"]
    # the sweep writes statement by statement, as the backend's does: the history row follows the UPDATE
    wait_until(lambda: len(history_rows(tb, session_id)) > 0, timeout=30)
    [history] = history_rows(tb, session_id)
    assert (history["ended_at"], history["duration_seconds"]) == (row["ended_at"], row["duration_seconds"])
    beat = tb.request("POST", "/api/viewer/heartbeat", json_body={"sessionId": session_id}, csrf=admin.csrf)
    assert beat.json()["success"] is False


def test_stuck_sessions_and_sweep_switch(tb: TestbedProcess, admin: AdminSession) -> None:
    """stuck_sessions turns the sweep off and leaves old active sessions; switching it on ends them."""
    result = tb.scenario("stuck_sessions", count=7, age_seconds=600)
    assert result["inserted"] == 7
    heartbeat = datetime.strptime(result["last_heartbeat"], "%Y-%m-%d %H:%M:%S")
    assert abs(local_now() - heartbeat - timedelta(seconds=600)) < timedelta(seconds=60)
    state = tb.state()
    assert (state["sweep_enabled"], state["active_sessions"], state["stale_active_sessions"]) == (False, 7, 7)
    stats = tb.request("GET", "/api/viewer/stats", token=admin.token).json()["data"]
    assert stats["activeViewers"] == 7
    assert tb.scenario("sweep", enabled=True)["sweep_enabled"] is True
    wait_until(lambda: tb.state()["active_sessions"] == 0, timeout=30)


def test_sweep_run_now_spares_fresh_sessions(tb: TestbedProcess, admin: AdminSession) -> None:
    """A one-off sweep ends only sessions past the timeout, even while the periodic sweep is off."""
    tb.scenario("stuck_sessions", count=3, age_seconds=120)
    fresh = tb.request("POST", "/api/viewer/start", json_body={"cameraId": 1}, csrf=admin.csrf)
    result = tb.scenario("sweep", run_now=True)
    assert (result["sweep_enabled"], result["ended"]) == (False, 3)
    assert session_row(tb, fresh.json()["data"]["sessionId"])["is_active"] == 1


def test_zone_change_over_the_admin_route_moves_new_local_times(tb: TestbedProcess, admin: AdminSession) -> None:
    """PUT /api/admin/settings/timezone WITA stores Asia/Makassar; the next session starts an hour later locally."""
    tb.scenario("sweep", enabled=False)
    zone = tb.request("GET", "/api/admin/settings/timezone", token=admin.token).json()["data"]
    assert zone == {"timezone": "Asia/Jakarta", "shortName": "WIB"}
    bad = tb.request(
        "PUT", "/api/admin/settings/timezone", token=admin.token, csrf=admin.csrf, json_body={"timezone": "X"}
    )
    assert (bad.status, bad.json()["code"]) == (400, "FST_ERR_VALIDATION")
    try:
        changed = tb.request(
            "PUT", "/api/admin/settings/timezone", token=admin.token, csrf=admin.csrf, json_body={"timezone": "WITA"}
        )
        assert changed.json() == {
            "success": True,
            "message": "Timezone berhasil diupdate",
            "data": {"timezone": "WITA"},
        }
        assert tb.request("GET", "/health").json()["timezone"] == "Asia/Makassar (WITA, UTC+8)"
        started = tb.request("POST", "/api/viewer/start", json_body={"cameraId": 1}).json()["data"]["sessionId"]
        stored = datetime.strptime(session_row(tb, started)["started_at"], "%Y-%m-%d %H:%M:%S")
        assert abs(stored - local_now() - timedelta(hours=1)) < timedelta(seconds=60)
    finally:
        tb.scenario("timezone", zone="WIB")
