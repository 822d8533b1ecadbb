"""The backend's SQLite file: schema, seed rows, one writer connection and one reader connection."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from testbed.localtime import LocalClock, load_zone, zone_name
from testbed.schema import ARCHIVE_TABLE, SCHEMA

T = TypeVar("T")

PASSWORD_ITERATIONS = 60_000

TABLES: tuple[str, ...] = (
    "users",
    "areas",
    "cameras",
    "system_settings",
    "api_keys",
    "viewer_sessions",
    "viewer_session_history",
    "viewer_session_history_archive",
    "playback_viewer_sessions",
    "playback_viewer_session_history",
    "playback_viewer_session_history_archive",
    "playback_tokens",
    "playback_token_sessions",
    "playback_token_audit_logs",
    "audit_logs",
    "security_logs",
    "login_attempts",
    "token_blacklist",
    "restart_logs",
    "recording_segments",
    "camera_source_lifecycle_events",
    "recording_maintenance_events",
    "notification_diagnostic_runs",
    "telegram_archive_uploads",
    "camera_view_stats",
)

DAY = 86_400.0
AREAS = (
    ("Alun-Alun Kota", "Pusat kota", "Kota", "Kauman"),
    ("Pasar Induk", "Kawasan pasar", "Pasar", "Pasar Baru"),
    ("Terminal Bus", "Terminal dan sekitarnya", "Terminal", "Sukamaju"),
)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Hash a password with PBKDF2-SHA256 (stdlib stands in for bcrypt)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PASSWORD_ITERATIONS)
    return f"pbkdf2_sha256${PASSWORD_ITERATIONS}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Check a password against hash_password() output in constant time."""
    try:
        scheme, iterations, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex), int(iterations))
    return hmac.compare_digest(digest.hex(), digest_hex)


def _connect(path: Path) -> sqlite3.Connection:
    """Open a connection configured like the backend's (WAL, busy_timeout 5000, foreign keys)."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Database:
    """The backend database: one writer and one reader connection, each used under its own lock."""

    def __init__(self, path: Path, clock: LocalClock, *, create_archive_table: bool = True) -> None:
        """Remember where the file lives; open() does the work."""
        self.path = path
        self.clock = clock
        self.create_archive_table = create_archive_table
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._zone_reader: sqlite3.Connection | None = None
        self._zone_lock = threading.Lock()

    @property
    def wal_path(self) -> Path:
        """Path of the write-ahead log next to the database."""
        return self.path.with_name(self.path.name + "-wal")

    def open(self, *, cameras: int, admin_password: str) -> None:
        """Open the connections, switch to WAL, create the schema and seed an empty database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        writer.execute("PRAGMA journal_mode = WAL")
        for statement in SCHEMA:
            writer.execute(statement)
        if self.create_archive_table:
            writer.execute(ARCHIVE_TABLE)
        self._writer = writer
        self._reader = _connect(self.path)
        self._zone_reader = _connect(self.path)
        self.write(lambda conn: _seed(conn, self.clock, cameras=cameras, admin_password=admin_password))
        # the backend starts on a database its setup script made and closed (checkpointed, WAL emptied)
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # the backend reads its zone from this row on every timestamp (timezoneService.getTimezone)
        self.clock.follow(self.timezone_setting)

    def timezone_setting(self) -> str | None:
        """The ``system_settings`` row ``timezone`` (None when absent or the database is closed)."""
        with self._zone_lock:
            if self._zone_reader is None:
                return None
            try:
                # fetchall: a half-read statement would keep a read snapshot open and stall checkpoints
                rows = self._zone_reader.execute(
                    "SELECT setting_value FROM system_settings WHERE setting_key = 'timezone'"
                ).fetchall()
            except sqlite3.Error:
                return None
        return str(rows[0][0]) if rows and rows[0][0] else None

    def set_timezone(self, name: str) -> str:
        """Change the ``timezone`` row as the admin page does (setTimezone: WIB/WITA/WIT stored as IANA names)."""
        stored = zone_name(name)
        load_zone(stored)
        self.write(
            lambda conn: conn.execute(
                """INSERT INTO system_settings (setting_key, setting_value, updated_at)
                   VALUES ('timezone', ?, CURRENT_TIMESTAMP)
                   ON CONFLICT(setting_key) DO UPDATE SET setting_value = excluded.setting_value,
                   updated_at = CURRENT_TIMESTAMP""",
                (stored,),
            )
        )
        return stored

    def close(self) -> None:
        """Close both connections."""
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._zone_lock:
            if self._zone_reader is not None:
                self._zone_reader.close()
                self._zone_reader = None
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one IMMEDIATE transaction on the writer connection (blocking)."""
        with self._write_lock:
            conn = self._require(self._writer)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def write_raw(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the writer connection without wrapping it in a transaction (blocking)."""
        with self._write_lock:
            return work(self._require(self._writer))

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the reader connection (blocking)."""
        with self._read_lock:
            return work(self._require(self._reader))

    def open_extra_connection(self) -> sqlite3.Connection:
        """A separate connection, e.g. to hold a read transaction open."""
        return _connect(self.path)

    @staticmethod
    def _require(conn: sqlite3.Connection | None) -> sqlite3.Connection:
        """Return the connection or fail if the database is closed."""
        if conn is None:
            raise RuntimeError("database is closed")
        return conn


def _seed(conn: sqlite3.Connection, clock: LocalClock, *, cameras: int, admin_password: str) -> None:
    """Set the admin password and the zone row; on an empty database insert areas, cameras and old rows."""
    existing = conn.execute("SELECT id FROM users WHERE username = 'admin'").fetchone()
    if existing is None:
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('admin', ?, 'admin')",
            (hash_password(admin_password),),
        )
    else:
        conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (hash_password(admin_password), existing[0]))
    conn.execute(
        "INSERT OR IGNORE INTO system_settings (setting_key, setting_value) VALUES ('timezone', ?)",
        (clock.initial_zone,),
    )
    if conn.execute("SELECT COUNT(*) FROM cameras").fetchone()[0]:
        return
    for name, description, kecamatan, kelurahan in AREAS:
        conn.execute(
            "INSERT INTO areas (name, description, kecamatan, kelurahan) VALUES (?, ?, ?, ?)",
            (name, description, kecamatan, kelurahan),
        )
    for index in range(1, cameras + 1):
        conn.execute(
            """INSERT INTO cameras (name, description, location, private_rtsp_url, area_id, stream_key,
                   enabled, enable_recording, latitude, longitude, video_codec)
               VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, 'H264')""",
            (
                f"CCTV {index:02d}",
                f"Kamera {index}",
                f"Jl. Contoh No. {index}",
                f"rtsp://user:secret@10.0.0.{index + 10}:554/Streaming/Channels/101",
                (index - 1) % len(AREAS) + 1,
                str(uuid.uuid4()),
                1 if index == 1 else 0,
                -7.0 - index / 100,
                110.0 + index / 100,
            ),
        )
    _seed_history(conn, clock, cameras=cameras)


def _seed_history(conn: sqlite3.Connection, clock: LocalClock, *, cameras: int) -> None:
    """Insert old and recent rows into the tables the daemon watches, each column in its own time base.

    Local text: viewer and playback-viewer sessions and their history. UTC text (SQLite CURRENT_TIMESTAMP,
    timeService.toUtcSql): ``created_at`` columns and ``playback_token_sessions``. ISO UTC (toISOString):
    ``login_attempts.attempt_time``, ``token_blacklist.expires_at``, ``security_logs.timestamp``.
    """
    conn.execute(
        "INSERT INTO playback_tokens (label, token_hash, token_prefix, created_at, updated_at)"
        " VALUES ('seeded', ?, 'seed', ?, ?)",
        (secrets.token_hex(32), clock.utc(250 * DAY), clock.utc(250 * DAY)),
    )
    token_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    for index, age_days in enumerate((0.1, 2.0, 45.0, 120.0, 200.0), start=1):
        camera_id = (index - 1) % cameras + 1
        camera_name = f"CCTV {camera_id:02d}"
        start_age = age_days * DAY
        end_age = start_age - 300
        ip = f"192.168.1.{index}"
        started, ended = clock.local(start_age), clock.local(end_age)
        # Ended live sessions stay in viewer_sessions forever: a gap nobody cleans.
        conn.execute(
            """INSERT INTO viewer_sessions (session_id, camera_id, ip_address, user_agent, device_type,
                   started_at, last_heartbeat, ended_at, duration_seconds, is_active)
               VALUES (?, ?, ?, 'Mozilla/5.0', 'desktop', ?, ?, ?, 300, 0)""",
            (str(uuid.uuid4()), camera_id, ip, started, ended, ended),
        )
        conn.execute(
            """INSERT INTO viewer_session_history (camera_id, camera_name, ip_address, user_agent, device_type,
                   started_at, ended_at, duration_seconds, created_at)
               VALUES (?, ?, ?, 'Mozilla/5.0', 'desktop', ?, ?, 300, ?)""",
            (camera_id, camera_name, ip, started, ended, clock.utc(end_age)),
        )
        conn.execute(
            """INSERT INTO playback_viewer_sessions (session_id, camera_id, camera_name, segment_filename, ip_address,
                   user_agent, device_type, started_at, last_heartbeat, ended_at, duration_seconds, is_active)
               VALUES (?, ?, ?, ?, ?, 'Mozilla/5.0', 'desktop', ?, ?, ?, 300, 0)""",
            (str(uuid.uuid4()), camera_id, camera_name, f"{camera_id}_{index}.mp4", ip, started, ended, ended),
        )
        conn.execute(
            """INSERT INTO playback_token_sessions (token_id, session_id_hash, ip_address, user_agent, activated_at,
                   last_seen_at, expires_at, ended_at, end_reason, created_at, updated_at)
               VALUES (?, ?, ?, 'Mozilla/5.0', ?, ?, ?, ?, 'expired', ?, ?)""",
            (
                token_id,
                secrets.token_hex(32),
                ip,
                clock.utc(start_age),
                clock.utc(end_age),
                clock.utc(start_age - 3600),
                clock.utc(end_age),
                clock.utc(start_age),
                clock.utc(end_age),
            ),
        )
        conn.execute(
            "INSERT INTO playback_token_audit_logs (token_id, event_type, camera_id, ip_address, detail_json,"
            " created_at) VALUES (?, 'token_used', ?, ?, '{}', ?)",
            (token_id, camera_id, ip, clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO audit_logs (user_id, action, details, ip_address, created_at) VALUES (1, 'LOGIN', ?, ?, ?)",
            ("User logged in successfully", ip, clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO security_logs (event_type, timestamp, ip_address, username, details, created_at)"
            " VALUES ('AUTH_SUCCESS', ?, ?, 'admin', '{}', ?)",
            (clock.iso(start_age), ip, clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO login_attempts (identifier, identifier_type, attempt_time, success)"
            " VALUES ('admin', 'username', ?, 1)",
            (clock.iso(start_age),),
        )
        conn.execute(
            "INSERT INTO token_blacklist (token_hash, user_id, reason, blacklisted_at, expires_at)"
            " VALUES (?, 1, 'logout', ?, ?)",
            (secrets.token_hex(32), clock.utc(start_age), clock.iso(start_age - 7 * DAY)),
        )
        conn.execute(
            "INSERT INTO restart_logs (camera_id, reason, restart_time, success, created_at)"
            " VALUES (?, 'stream stalled', ?, 1, ?)",
            (camera_id, clock.iso(start_age), clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO camera_source_lifecycle_events (camera_id, event_type, reason, status, created_at)"
            " VALUES (?, 'source_updated', 'seeded', 'success', ?)",
            (camera_id, clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO recording_maintenance_events (maintenance_type, status, started_at, finished_at, created_at)"
            " VALUES ('cleanup', 'success', ?, ?, ?)",
            (clock.iso(start_age), clock.iso(end_age), clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO notification_diagnostic_runs (camera_id, camera_name, event_type, mode, success, created_at)"
            " VALUES (?, ?, 'offline', 'preview', 1, ?)",
            (camera_id, camera_name, clock.utc(start_age)),
        )
        conn.execute(
            """INSERT INTO recording_segments (camera_id, filename, start_time, end_time, file_size, duration,
                   file_path, created_at) VALUES (1, ?, ?, ?, 1048576, 600, ?, ?)""",
            (f"{index}.mp4", started, ended, f"/recordings/camera1/{index}.mp4", clock.utc(start_age)),
        )
        segment_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        conn.execute(
            """INSERT INTO telegram_archive_uploads (segment_id, camera_id, filename, file_size, status, file_id,
                   recorded_at, uploaded_at) VALUES (?, 1, ?, 1048576, 'uploaded', ?, ?, ?)""",
            (segment_id, f"{index}.mp4", secrets.token_hex(8), started, clock.utc(end_age)),
        )
