"""Scenario control: put the stand-in backend into the states the daemon must detect and fix.

Each scenario takes a JSON object of parameters and answers a JSON object saying what it
did. `reset` undoes all of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.cache import CAMERA_LIST_KEY, SERVICE_TTL_SECONDS, middleware_key
from testbed.hls import init_segment_bytes, media_segment_head
from testbed.leaks import count_close_wait
from testbed.viewers import end_all_sessions, start_session

if TYPE_CHECKING:
    from testbed.runtime import Testbed

Params = dict[str, Any]
Scenario = Callable[["Testbed", Params], Awaitable[dict[str, Any]]]

WAL_ROW_BYTES = 4000
WAL_BATCH_ROWS = 100
WAL_MAX_MB = 512
JUNK_PATH = "/api/cameras/active"


class ScenarioError(Exception):
    """A scenario that cannot run as asked (bad parameter, wrong state)."""

    def __init__(self, message: str, status: int = 400) -> None:
        """Keep the HTTP status to answer with."""
        super().__init__(message)
        self.status = status


def _number(params: Params, name: str, default: float, *, low: float, high: float) -> float:
    """A numeric parameter within [low, high]."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{name} must be a number")
    if not low <= value <= high:
        raise ScenarioError(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def _count(params: Params, name: str, default: int, *, high: int) -> int:
    """An integer parameter within [1, high]."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{name} must be an integer")
    if not 1 <= value <= high:
        raise ScenarioError(f"{name} must be between 1 and {high}")
    return value


# ----- database ----------------------------------------------------------------------------------


def _grow_wal(tb: Testbed, target_bytes: int) -> dict[str, Any]:
    """Write rows while another connection holds a read snapshot, so no checkpoint can reset the WAL."""
    holder = tb.db.open_extra_connection()
    rows = 0
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT COUNT(*) FROM cameras").fetchone()
        filler = [("WAL_GROWTH", secrets.token_hex(WAL_ROW_BYTES // 2))] * WAL_BATCH_ROWS

        def insert_batch(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (NULL, ?, ?, '127.0.0.1')",
                filler,
            )

        deadline = time.monotonic() + 60.0
        while tb.db.wal_path.stat().st_size < target_bytes:
            if time.monotonic() > deadline:
                raise ScenarioError("WAL did not reach the requested size within 60 s", status=500)
            tb.db.write(insert_batch)
            rows += WAL_BATCH_ROWS
    finally:
        holder.execute("COMMIT")
        holder.close()
    return {"rows_written": rows, "wal_bytes": tb.db.wal_path.stat().st_size}


async def wal_growth(tb: Testbed, params: Params) -> dict[str, Any]:
    """Grow the WAL to at least `mb` megabytes; it stays that large afterwards."""
    megabytes = _number(params, "mb", 8, low=0.1, high=WAL_MAX_MB)
    return await asyncio.to_thread(_grow_wal, tb, int(megabytes * 1024 * 1024))


async def stuck_sessions(tb: Testbed, params: Params) -> dict[str, Any]:
    """Switch the sweep off and insert active sessions whose last heartbeat is `age_seconds` old."""
    count = _count(params, "count", 20, high=10_000)
    age = _number(params, "age_seconds", 600, low=1, high=365 * 86_400)
    cameras = [camera.id for camera in tb.cameras if camera.enabled] or [camera.id for camera in tb.cameras]
    tb.sweep_enabled = False

    def insert(conn: sqlite3.Connection) -> list[str]:
        return [
            start_session(
                conn,
                tb.clock,
                camera_id=cameras[index % len(cameras)],
                ip_address=f"10.10.{index // 250}.{index % 250 + 1}",
                user_agent="Mozilla/5.0 (Linux; Android 13) Mobile",
                heartbeat_age_seconds=age,
            )
            for index in range(count)
        ]

    session_ids = await asyncio.to_thread(tb.db.write, insert)
    tb.stuck_session_ids.extend(session_ids)
    return {"inserted": len(session_ids), "sweep_enabled": False, "last_heartbeat": tb.clock.local(age)}


async def sweep(tb: Testbed, params: Params) -> dict[str, Any]:
    """Switch the backend's session sweep on or off; `run_now` runs it once at once."""
    enabled = params.get("enabled")
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise ScenarioError("enabled must be true or false")
        tb.sweep_enabled = enabled
    ended = await tb.run_sweep() if params.get("run_now") is True else 0
    return {"sweep_enabled": tb.sweep_enabled, "ended": ended}


async def archive_run(tb: Testbed, params: Params) -> dict[str, Any]:
    """Run the 6-hourly history archive job now."""
    status = await tb.run_archive_job()
    return {"runs": status.runs, "failures": status.failures, "error": status.last_error}


# ----- HLS ---------------------------------------------------------------------------------------


def _old_file(path: Path, data: bytes, mtime: float, created: list[Path]) -> int:
    """Write a file and date it back."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    created.append(path)
    return len(data)


def _make_stale(tb: Testbed, count: int, age: float) -> dict[str, Any]:
    """Create exactly `count` stale HLS files plus links that point outside the HLS root."""
    settings = tb.settings
    root = settings.hls_dir
    mtime = time.time() - age
    size = settings.segment_bytes
    body = media_segment_head(1) + b"\x00" * max(0, size - 24)
    created: list[Path] = []
    written = 0
    live_dirs = [root / key for key in tb.hls.live_keys() if (root / key).is_dir()]
    in_stopped = count if not live_dirs else max(1, count // 2)
    stopped_key = str(uuid.uuid4())
    stopped_dir = root / stopped_key
    stopped_dir.mkdir(parents=True)
    tb.created_paths.append(stopped_dir)
    prefix = secrets.token_hex(6)
    written += _old_file(stopped_dir / f"{prefix}_video_init.mp4", init_segment_bytes(), mtime, created)
    for number in range(in_stopped - 1):
        written += _old_file(stopped_dir / f"{prefix}_video_seg{number}.mp4", body, mtime, created)
    os.utime(stopped_dir, (mtime, mtime))
    for index in range(count - in_stopped):
        directory = live_dirs[index % len(live_dirs)]
        # A previous muxer run's prefix: no current playlist can reference these.
        name = f"{prefix}_video_seg{index}.mp4"
        written += _old_file(directory / name, body, mtime, created)
        tb.created_paths.append(directory / name)

    outside = settings.data_dir / "outside-hls"
    outside.mkdir(exist_ok=True)
    tb.created_paths.append(outside)
    victim = outside / "must-survive.mp4"
    if not victim.exists():
        victim.write_bytes(body)
    os.utime(victim, (mtime, mtime))
    (outside / "keep").mkdir(exist_ok=True)
    links = [root / f"link-{secrets.token_hex(4)}"]
    if live_dirs:
        links.append(live_dirs[0] / f"{prefix}_video_seg999999.mp4")
    links[0].symlink_to(outside, target_is_directory=True)
    if len(links) > 1:
        links[1].symlink_to(victim)
    for link in links:
        os.utime(link, (mtime, mtime), follow_symlinks=False)
        tb.created_paths.append(link)
    return {
        "created": len(created),
        "bytes": written,
        "age_seconds": age,
        "stopped_stream": stopped_key,
        "stopped_dir": str(stopped_dir),
        "in_stopped_dir": in_stopped,
        "in_live_dirs": count - in_stopped,
        "symlinks": [str(link) for link in links],
        "outside_target": str(outside),
        "outside_files": [str(victim)],
    }


async def stale_segments(tb: Testbed, params: Params) -> dict[str, Any]:
    """Leave stale segments in a stopped stream's directory and in live ones, and links leading outside."""
    count = _count(params, "count", 200, high=100_000)
    age = _number(params, "age_seconds", 600, low=1, high=365 * 86_400)
    return await asyncio.to_thread(_make_stale, tb, count, age)


def _remove_created(tb: Testbed) -> int:
    """Delete what stale_segments created (never following links)."""
    removed = 0
    for path in reversed(tb.created_paths):
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                continue
        except FileNotFoundError:
            continue
        removed += 1
    tb.created_paths.clear()
    return removed


async def timezone(tb: Testbed, params: Params) -> dict[str, Any]:
    """Change the backend's zone (the ``system_settings`` row ``timezone``) as its admin page does."""
    zone = params.get("zone")
    if not isinstance(zone, str) or not zone.strip():
        raise ScenarioError("zone must be WIB, WITA, WIT or an IANA zone name")
    try:
        stored = await asyncio.to_thread(tb.db.set_timezone, zone)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    return {"timezone": stored, "local_now": tb.clock.local()}


# ----- cache -------------------------------------------------------------------------------------


async def cache_junk(tb: Testbed, params: Params) -> dict[str, Any]:
    """Fill the response cache with junk-query entries that will never be hit again.

    Each junk request counts as over HTTP: a route-cache miss, a lookup of the camera service's entry
    (a hit while it lives, else a miss and a store) and the route's store.
    """
    entries = _count(params, "entries", 500, high=1_000_000)
    nonce = secrets.token_hex(4)
    body = b'{"success":true,"data":[]}'
    ttl = tb.settings.service_cache_ttl or SERVICE_TTL_SECONDS[CAMERA_LIST_KEY]
    for index in range(entries):
        key = middleware_key(f"{JUNK_PATH}?_={nonce}{index}")
        tb.cache.get(key)
        if tb.cache.get(CAMERA_LIST_KEY) is None:
            tb.cache.set(CAMERA_LIST_KEY, [], ttl_seconds=ttl)
        tb.cache.set(key, body, "application/json")
    return {"added": entries, "cache_size": tb.cache.size, "hit_rate": round(tb.cache.hit_rate(), 2)}


# ----- processes and sockets ---------------------------------------------------------------------


async def hot_recorder(tb: Testbed, params: Params) -> dict[str, Any]:
    """Start CPU-burning fake recorders (argv[0] ffmpeg, detached)."""
    count = _count(params, "count", 1, high=32)
    cameras = tb.cameras
    if not cameras:
        raise ScenarioError("no cameras", status=409)
    chosen = [(cameras[index % len(cameras)].id, cameras[index % len(cameras)].stream_key) for index in range(count)]
    pids = await asyncio.to_thread(tb.recorders.spawn, chosen)
    return {"pids": pids, "recorders": tb.recorders.pids()}


async def recorders_stop(tb: Testbed, params: Params) -> dict[str, Any]:
    """End every fake recorder."""
    return {"stopped": await asyncio.to_thread(tb.recorders.stop_all)}


async def close_wait(tb: Testbed, params: Params) -> dict[str, Any]:
    """Leak `count` sockets in CLOSE_WAIT towards the MediaMTX stand-in."""
    count = _count(params, "count", 50, high=5_000)
    if not tb.mediamtx.is_up:
        raise ScenarioError("MediaMTX stand-in is down", status=409)
    host, port = tb.mediamtx.host, tb.mediamtx.port
    opened = await asyncio.to_thread(tb.close_wait.open, host, port, count)
    return {
        "opened": opened,
        "held": tb.close_wait.held,
        "remote_port": port,
        "close_wait": count_close_wait(port),
    }


async def close_wait_release(tb: Testbed, params: Params) -> dict[str, Any]:
    """Close the leaked sockets."""
    return {"released": tb.close_wait.release(), "close_wait": count_close_wait(tb.mediamtx.port)}


async def mediamtx_down(tb: Testbed, params: Params) -> dict[str, Any]:
    """MediaMTX stops: its port refuses connections, HLS writing stops, /hls answers 502."""
    await tb.set_mediamtx(up=False)
    return {"mediamtx_up": False, "port": tb.mediamtx.port}


async def mediamtx_up(tb: Testbed, params: Params) -> dict[str, Any]:
    """MediaMTX comes back on the same port with fresh muxer runs."""
    await tb.set_mediamtx(up=True)
    return {"mediamtx_up": True, "port": tb.mediamtx.port}


# ----- reset -------------------------------------------------------------------------------------


async def reset(tb: Testbed, params: Params) -> dict[str, Any]:
    """Undo every scenario and quieten the backend (sessions, cache, WAL, limits and lockouts too)."""
    stopped = await asyncio.to_thread(tb.recorders.stop_all)
    released = tb.close_wait.release()
    if not tb.mediamtx.is_up:
        await tb.set_mediamtx(up=True)
    removed = await asyncio.to_thread(_remove_created, tb)
    orphans = await asyncio.to_thread(tb.hls.remove_orphans)
    stuck, tb.stuck_session_ids = tb.stuck_session_ids, []

    def delete_stuck(conn: sqlite3.Connection) -> int:
        total = 0
        for start in range(0, len(stuck), 500):
            chunk = stuck[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # history rows carry no session id: match them by camera, address and start
            conn.execute(
                f"""DELETE FROM viewer_session_history WHERE EXISTS (SELECT 1 FROM viewer_sessions vs
                    WHERE vs.session_id IN ({marks}) AND vs.camera_id = viewer_session_history.camera_id
                    AND vs.ip_address = viewer_session_history.ip_address
                    AND vs.started_at = viewer_session_history.started_at)""",
                chunk,
            )
            total += conn.execute(f"DELETE FROM viewer_sessions WHERE session_id IN ({marks})", chunk).rowcount
        return total

    deleted_sessions = await asyncio.to_thread(tb.db.write, delete_stuck)
    ended_sessions = await asyncio.to_thread(tb.db.write, lambda conn: end_all_sessions(conn, tb.clock))
    tb.sweep_enabled = tb.settings.sweep_enabled
    cleared = tb.cache.clear()
    tb.cache.reset_stats()

    def checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    busy, _, _ = await asyncio.to_thread(tb.db.write_raw, checkpoint)
    tb.limiter.reset()
    tb.login_guard.reset()
    return {
        "recorders_stopped": stopped,
        "close_wait_released": released,
        "hls_paths_removed": removed,
        "hls_orphans_removed": orphans,
        "stuck_sessions_deleted": deleted_sessions,
        "sessions_ended": ended_sessions,
        "sweep_enabled": tb.sweep_enabled,
        "cache_entries_cleared": cleared,
        "wal_checkpoint_busy": bool(busy),
        "wal_bytes": tb.db.wal_path.stat().st_size if tb.db.wal_path.exists() else 0,
    }


SCENARIOS: dict[str, Scenario] = {
    "wal_growth": wal_growth,
    "stale_segments": stale_segments,
    "cache_junk": cache_junk,
    "stuck_sessions": stuck_sessions,
    "sweep": sweep,
    "timezone": timezone,
    "archive_run": archive_run,
    "hot_recorder": hot_recorder,
    "recorders_stop": recorders_stop,
    "close_wait": close_wait,
    "close_wait_release": close_wait_release,
    "mediamtx_down": mediamtx_down,
    "mediamtx_up": mediamtx_up,
    "reset": reset,
}


async def run_scenario(tb: Testbed, name: str, params: Params) -> dict[str, Any]:
    """Run a scenario by name; unknown names are a 404 ScenarioError."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}", status=404)
    return await scenario(tb, params)
