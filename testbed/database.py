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

from testbed.localtime import LocalClock

T = TypeVar("T")

PASSWORD_ITERATIONS = 60_000

# Column sets follow what TARGET.md names, plus the ids and bookkeeping columns the
# real backend's migrations add. Session timestamps hold LOCAL-time strings; columns
# with DEFAULT CURRENT_TIMESTAMP hold UTC, exactly the mix the daemon must cope with.
SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'admin',
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
        last_login DATETIME
    )""",
    """CREATE TABLE IF NOT EXISTS areas (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        description TEXT,
        kecamatan TEXT,
        kelurahan TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
        updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS cameras (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        description TEXT,
        location TEXT,
        private_rtsp_url TEXT,
        area_id INTEGER REFERENCES areas(id) ON DELETE SET NULL,
        stream_key TEXT NOT NULL UNIQUE,
        enabled INTEGER NOT NULL DEFAULT 1,
        is_recording INTEGER NOT NULL DEFAULT 0,
        is_online INTEGER NOT NULL DEFAULT 1,
        latitude REAL,
        longitude REAL,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
        updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS viewer_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        camera_id INTEGER NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        ip_address TEXT,
        user_agent TEXT,
        device_type TEXT,
        started_at DATETIME NOT NULL,
        last_heartbeat DATETIME NOT NULL,
        ended_at DATETIME,
        duration_seconds INTEGER NOT NULL DEFAULT 0,
        is_active INTEGER NOT NULL DEFAULT 1
    )""",
    "CREATE INDEX IF NOT EXISTS idx_viewer_sessions_active ON viewer_sessions(is_active, last_heartbeat)",
    "CREATE INDEX IF NOT EXISTS idx_viewer_sessions_camera ON viewer_sessions(camera_id)",
    """CREATE TABLE IF NOT EXISTS viewer_session_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        camera_id INTEGER,
        camera_name TEXT,
        ip_address TEXT,
        user_agent TEXT,
        device_type TEXT,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        duration_seconds INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS idx_viewer_history_started ON viewer_session_history(started_at)",
    """CREATE TABLE IF NOT EXISTS playback_viewer_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        camera_id INTEGER NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        segment_filename TEXT,
        ip_address TEXT,
        user_agent TEXT,
        started_at DATETIME NOT NULL,
        last_heartbeat DATETIME NOT NULL,
        ended_at DATETIME,
        duration_seconds INTEGER NOT NULL DEFAULT 0,
        is_active INTEGER NOT NULL DEFAULT 1
    )""",
    """CREATE TABLE IF NOT EXISTS playback_viewer_session_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        camera_id INTEGER,
        camera_name TEXT,
        segment_filename TEXT,
        ip_address TEXT,
        user_agent TEXT,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        duration_seconds INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS playback_viewer_session_history_archive (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        camera_id INTEGER,
        camera_name TEXT,
        segment_filename TEXT,
        ip_address TEXT,
        user_agent TEXT,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        duration_seconds INTEGER NOT NULL DEFAULT 0,
        archived_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS playback_token_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token_hash TEXT NOT NULL,
        camera_id INTEGER REFERENCES cameras(id) ON DELETE CASCADE,
        ip_address TEXT,
        created_at DATETIME NOT NULL,
        last_seen_at DATETIME,
        expires_at DATETIME NOT NULL,
        ended_at DATETIME
    )""",
    """CREATE TABLE IF NOT EXISTS playback_token_audit_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token_session_id INTEGER,
        action TEXT NOT NULL,
        ip_address TEXT,
        details TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS audit_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER,
        action TEXT NOT NULL,
        details TEXT,
        ip_address TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    "CREATE INDEX IF NOT EXISTS idx_audit_logs_created ON audit_logs(created_at)",
    """CREATE TABLE IF NOT EXISTS security_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_type TEXT NOT NULL,
        severity TEXT NOT NULL DEFAULT 'info',
        username TEXT,
        ip_address TEXT,
        user_agent TEXT,
        details TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS login_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT,
        ip_address TEXT,
        user_agent TEXT,
        success INTEGER NOT NULL DEFAULT 0,
        attempt_time DATETIME NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS token_blacklist (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token_hash TEXT NOT NULL UNIQUE,
        user_id INTEGER,
        reason TEXT,
        expires_at DATETIME NOT NULL,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS restart_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER,
        reason TEXT,
        success INTEGER NOT NULL DEFAULT 1,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS recording_segments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER NOT NULL REFERENCES cameras(id) ON DELETE CASCADE,
        filename TEXT NOT NULL,
        file_path TEXT NOT NULL,
        file_size INTEGER NOT NULL DEFAULT 0,
        duration INTEGER NOT NULL DEFAULT 600,
        start_time DATETIME NOT NULL,
        end_time DATETIME,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS camera_source_lifecycle_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER,
        event_type TEXT NOT NULL,
        details TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS recording_maintenance_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER,
        event_type TEXT NOT NULL,
        details TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS notification_diagnostic_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_type TEXT NOT NULL,
        status TEXT NOT NULL,
        details TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE IF NOT EXISTS telegram_archive_uploads (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        camera_id INTEGER,
        recording_segment_id INTEGER,
        file_path TEXT NOT NULL,
        telegram_file_id TEXT,
        telegram_message_id INTEGER,
        uploaded_at DATETIME,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    )""",
)

ARCHIVE_TABLE = """CREATE TABLE IF NOT EXISTS viewer_session_history_archive (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    camera_id INTEGER,
    camera_name TEXT,
    ip_address TEXT,
    user_agent TEXT,
    device_type TEXT,
    started_at DATETIME NOT NULL,
    ended_at DATETIME,
    duration_seconds INTEGER NOT NULL DEFAULT 0,
    archived_at DATETIME DEFAULT CURRENT_TIMESTAMP
)"""

TABLES: tuple[str, ...] = (
    "users",
    "areas",
    "cameras",
    "viewer_sessions",
    "viewer_session_history",
    "viewer_session_history_archive",
    "playback_viewer_sessions",
    "playback_viewer_session_history",
    "playback_viewer_session_history_archive",
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
        self.write(lambda conn: _seed(conn, self.clock, cameras=cameras, admin_password=admin_password))

    def close(self) -> None:
        """Close both connections."""
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
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
    """Set the admin password; on an empty database insert areas, cameras and a few rows per table."""
    existing = conn.execute("SELECT id FROM users WHERE username = 'admin'").fetchone()
    if existing is None:
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('admin', ?, 'admin')",
            (hash_password(admin_password),),
        )
    else:
        conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (hash_password(admin_password), existing[0]))
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
                   enabled, is_recording, latitude, longitude)
               VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)""",
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
    """Insert old and recent rows into the tables the daemon watches."""
    for index, age_days in enumerate((0.1, 2.0, 45.0, 120.0, 200.0), start=1):
        camera_id = (index - 1) % cameras + 1
        start_age = age_days * DAY
        session_id = str(uuid.uuid4())
        started, ended = clock.local(start_age), clock.local(start_age - 300)
        row = (session_id, camera_id, f"192.168.1.{index}", "Mozilla/5.0", "desktop", started)
        # Ended live sessions stay in viewer_sessions forever: a gap nobody cleans.
        conn.execute(
            """INSERT INTO viewer_sessions (session_id, camera_id, ip_address, user_agent, device_type,
                   started_at, last_heartbeat, ended_at, duration_seconds, is_active)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 300, 0)""",
            (*row, ended, ended),
        )
        conn.execute(
            """INSERT INTO viewer_session_history (session_id, camera_id, camera_name, ip_address, user_agent,
                   device_type, started_at, ended_at, duration_seconds)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 300)""",
            (session_id, camera_id, f"CCTV {camera_id:02d}", *row[2:], ended),
        )
        conn.execute(
            """INSERT INTO playback_viewer_sessions (session_id, camera_id, segment_filename, ip_address,
                   user_agent, started_at, last_heartbeat, ended_at, duration_seconds, is_active)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 300, 0)""",
            (str(uuid.uuid4()), camera_id, f"{camera_id}_{index}.mp4", *row[2:4], started, ended, ended),
        )
        conn.execute(
            """INSERT INTO playback_token_sessions (token_hash, camera_id, ip_address, created_at, last_seen_at,
                   expires_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (secrets.token_hex(16), camera_id, row[2], started, ended, clock.local(start_age - 3600), ended),
        )
        conn.execute(
            "INSERT INTO playback_token_audit_logs (action, ip_address, details, created_at) VALUES (?, ?, ?, ?)",
            ("token_used", row[2], "{}", clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO audit_logs (user_id, action, details, ip_address, created_at) VALUES (1, ?, ?, ?, ?)",
            ("LOGIN", "{}", row[2], clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO security_logs (event_type, username, ip_address, details, created_at)"
            " VALUES ('LOGIN_SUCCESS', 'admin', ?, '{}', ?)",
            (row[2], clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO login_attempts (username, ip_address, success, attempt_time) VALUES ('admin', ?, 1, ?)",
            (row[2], clock.local(start_age)),
        )
        conn.execute(
            "INSERT INTO token_blacklist (token_hash, user_id, reason, expires_at, created_at)"
            " VALUES (?, 1, 'logout', ?, ?)",
            (secrets.token_hex(32), clock.local(start_age - 3600), clock.utc(start_age)),
        )
        conn.execute(
            "INSERT INTO restart_logs (camera_id, reason, success, created_at) VALUES (?, 'stream stalled', 1, ?)",
            (camera_id, clock.utc(start_age)),
        )
        for table in ("camera_source_lifecycle_events", "recording_maintenance_events"):
            conn.execute(
                f"INSERT INTO {table} (camera_id, event_type, details, created_at) VALUES (?, 'seeded', '{{}}', ?)",
                (camera_id, clock.utc(start_age)),
            )
        conn.execute(
            "INSERT INTO notification_diagnostic_runs (run_type, status, details, created_at)"
            " VALUES ('telegram', 'ok', '{}', ?)",
            (clock.utc(start_age),),
        )
        conn.execute(
            """INSERT INTO recording_segments (camera_id, filename, file_path, file_size, duration, start_time,
                   end_time, created_at) VALUES (1, ?, ?, 1048576, 600, ?, ?, ?)""",
            (f"{index}.mp4", f"/recordings/camera1/{index}.mp4", started, ended, clock.utc(start_age)),
        )
        conn.execute(
            """INSERT INTO telegram_archive_uploads (camera_id, file_path, telegram_file_id, telegram_message_id,
                   uploaded_at, created_at) VALUES (1, ?, ?, ?, ?, ?)""",
            (f"/recordings/camera1/{index}.mp4", secrets.token_hex(8), 1000 + index, started, clock.utc(start_age)),
        )
