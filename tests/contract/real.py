"""The real CCTV backend for contract checks: where it runs, how to call it, and its database, process and log.

It is found through ``CCTV_REAL_BACKEND`` (its URL) and ``CCTV_REAL_DATABASE`` (its SQLite file; the
``CCTV_OPTIMIZER_BACKEND__DATABASE`` that the backend's ``run.sh env`` prints is taken when that is unset).
The install root is the directory two levels above ``backend/data/cctv.db`` (``CCTV_REAL_ROOT`` overrides it):
it holds ``server.log``, ``server.pid``, ``admin-password`` and, when the backend demands one, ``api-key``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ENV_URL = "CCTV_REAL_BACKEND"
ENV_DATABASE = "CCTV_REAL_DATABASE"
ENV_ROOT = "CCTV_REAL_ROOT"
ENV_USERNAME = "CCTV_REAL_ADMIN_USERNAME"

SQL_FORMAT = "%Y-%m-%d %H:%M:%S"
# the backend's own names for its three zones (services/timezoneService.js)
ZONES = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}
# the backend's live-session sweep (services/viewerSessionService.js): every 20 s, sessions silent over 15 s
SWEEP_PERIOD_SECONDS = 20.0
SESSION_TIMEOUT_SECONDS = 15
# services/cameraViewStatsService.js: shorter views are not counted in camera_view_stats
MIN_COUNTABLE_VIEW_SECONDS = 5
API_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class NotConfigured(Exception):
    """The environment does not name a real backend (the message says what is missing)."""


class BadSetup(Exception):
    """The real backend is named but cannot be used as it is set up (the message says how to fix it)."""


@dataclass
class Reply:
    """One HTTP answer: status, headers (lower-case names) and the JSON body when there is one."""

    status: int
    headers: Mapping[str, str]
    body: Any

    def header(self, name: str) -> str | None:
        """A response header, by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass
class RealBackend:
    """The running real backend, seen from a test."""

    url: str
    database: Path
    root: Path
    username: str
    _token: str | None = field(default=None, repr=False)
    _csrf: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RealBackend:
        """The backend the environment names; NotConfigured with the reason when it names none or it is down."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").rstrip("/")
        if not url:
            raise NotConfigured(f"{ENV_URL} is not set (the real backend's URL, e.g. http://127.0.0.1:3000)")
        database_text = env.get(ENV_DATABASE) or env.get("CCTV_OPTIMIZER_BACKEND__DATABASE")
        if not database_text:
            raise NotConfigured(f"{ENV_DATABASE} is not set (the real backend's cctv.db)")
        database = Path(database_text)
        if not database.is_file():
            raise NotConfigured(f"{ENV_DATABASE}={database} is not a file")
        root = Path(env[ENV_ROOT]) if env.get(ENV_ROOT) else database.resolve().parent.parent.parent
        backend = cls(url=url, database=database, root=root, username=env.get(ENV_USERNAME, "admin"))
        if not backend.password_file.is_file():
            raise NotConfigured(f"no admin password file at {backend.password_file} (set {ENV_ROOT})")
        key = root / "api-key"
        if key.exists() and backend.api_key_file is None:
            raise BadSetup(
                f"{key} does not hold 64 hex digits, the only API keys the backend accepts; "
                "replace it with: python -m tests.contract.api_key " + str(root)
            )
        try:
            health = backend.request("GET", "/health")
        except OSError as exc:
            raise NotConfigured(f"the real backend at {url} does not answer: {exc}") from None
        if health.status != 200:
            raise NotConfigured(f"the real backend at {url} answers /health with {health.status}")
        return backend

    # ----- where things are ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The backend's TCP port."""
        return urllib.parse.urlsplit(self.url).port or 80

    @property
    def password_file(self) -> Path:
        """The admin password, as ``run.sh setup`` wrote it."""
        return self.root / "admin-password"

    @property
    def api_key_file(self) -> Path | None:
        """The API key file when the backend has one that it accepts (64 hex digits), else None."""
        path = self.root / "api-key"
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return path if API_KEY.match(key) else None

    @property
    def log(self) -> Path:
        """The backend's stdout and stderr (pino JSON lines and console lines)."""
        return self.root / "server.log"

    @property
    def pid_file(self) -> Path:
        """The backend's pid, as ``run.sh start`` wrote it."""
        return self.root / "server.pid"

    def pid(self) -> int:
        """The backend's process id."""
        return int(self.pid_file.read_text(encoding="utf-8").strip())

    def daemon_env(self, state_dir: Path, **overrides: str) -> dict[str, str]:
        """The daemon's settings for this backend (what ``run.sh env`` prints), with fast test intervals."""
        hls = state_dir.parent / "hls"  # no MediaMTX here: an empty HLS directory
        hls.mkdir(parents=True, exist_ok=True)
        env = {
            "CCTV_OPTIMIZER_BACKEND__URL": self.url,
            "CCTV_OPTIMIZER_BACKEND__DATABASE": str(self.database),
            "CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME": self.username,
            "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE": str(self.password_file),
            "CCTV_OPTIMIZER_BACKEND__PROCESS": f"port:{self.port}",
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(hls),
            "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
            "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(state_dir),
            "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(self.root / "recordings"),
            "OPTIMIZATION_INTERVAL": "1000",
            "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "1000",
            "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "2",
            "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "3",
        }
        key = self.api_key_file
        if key is not None:
            env["CCTV_OPTIMIZER_BACKEND__API_KEY_FILE"] = str(key)
        env.update(overrides)
        return env

    # ----- HTTP, with its login, CSRF and API-key rules --------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        admin: bool = False,
        client_ip: str | None = None,
    ) -> Reply:
        """One call. ``admin`` logs in first (once); ``client_ip`` is the visitor's address as nginx would
        forward it (the backend trusts X-Forwarded-For from loopback), so test traffic is not counted against
        the daemon's own rate-limit bucket."""
        if admin and self._token is None:
            self.login()
        parts = urllib.parse.urlsplit(self.url)
        headers = {"Accept": "application/json", "User-Agent": "cctv-optimizer-contract/1"}
        if method != "GET":
            headers["X-CSRF-Token"] = self._csrf
            headers["Cookie"] = f"csrf_token={self._csrf}"
            headers["Origin"] = self.url
        if admin and self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        key = self.api_key_file
        if key is not None:
            headers["X-API-Key"] = key.read_text(encoding="utf-8").strip()
        if client_ip is not None:
            headers["X-Forwarded-For"] = client_ip
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            answer_headers = {k.lower(): v for k, v in resp.getheaders()}
            status = resp.status
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(status=status, headers=answer_headers, body=parsed)

    def login(self) -> None:
        """The admin login (one attempt: the backend locks an account out after repeated failures)."""
        password = self.password_file.read_text(encoding="utf-8").strip()
        reply = self.request("POST", "/api/auth/login", {"username": self.username, "password": password})
        assert reply.status == 200, f"admin login refused: {reply.status} {reply.body}"
        self._token = reply.body["data"]["token"]

    def cache_stats(self) -> dict[str, Any]:
        """The response cache's counters, from its admin route."""
        reply = self.request("GET", "/api/cache/stats", admin=True)
        assert reply.status == 200, reply
        data: dict[str, Any] = reply.body["data"]
        return data

    def set_timezone(self, name: str) -> None:
        """Change the backend's timezone over its admin route (WIB, WITA or WIT)."""
        reply = self.request("PUT", "/api/admin/settings/timezone", {"timezone": name}, admin=True)
        assert reply.status == 200, reply

    # ----- the database, written the way the backend writes it --------------------------------------

    @contextmanager
    def sql(self) -> Iterator[sqlite3.Connection]:
        """A connection to the backend's database (WAL, waits for the backend's writers like it does)."""
        conn = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            yield conn
        finally:
            conn.close()

    def timezone(self) -> ZoneInfo:
        """The backend's configured zone (the ``timezone`` row of system_settings; Asia/Jakarta when absent)."""
        with self.sql() as conn:
            row = conn.execute("SELECT setting_value FROM system_settings WHERE setting_key = 'timezone'").fetchone()
        name = row[0] if row and row[0] else "Asia/Jakarta"
        return ZoneInfo(ZONES.get(name, name))

    def local_now(self) -> datetime:
        """The backend's ``nowLocalSql()``: wall time in its configured zone, naive."""
        return datetime.now(UTC).astimezone(self.timezone()).replace(tzinfo=None, microsecond=0)

    def insert_stale_sessions(self, count: int, *, silent_seconds: int, watched_seconds: int, net: str) -> None:
        """``count`` live sessions with the INSERT of startSession, whose viewers stopped heartbeating
        ``silent_seconds`` ago after watching ``watched_seconds``; viewer addresses are ``net``.x.y."""
        last = self.local_now() - timedelta(seconds=silent_seconds)
        started = last - timedelta(seconds=watched_seconds)
        rows = [
            (
                secrets.token_hex(16),
                1 + index % 3,
                f"{net}.{index // 250 % 250}.{index % 250 + 1}",
                "Mozilla/5.0 (contract check)",
                "desktop",
                started.strftime(SQL_FORMAT),
                last.strftime(SQL_FORMAT),
            )
            for index in range(count)
        ]
        with self.sql() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO viewer_sessions (session_id, camera_id, ip_address, user_agent, device_type, "
                "started_at, last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")

    def camera_views(self) -> dict[int, tuple[int, int]]:
        """camera_view_stats: (total_live_views, total_watch_seconds) by camera."""
        with self.sql() as conn:
            rows = conn.execute("SELECT camera_id, total_live_views, total_watch_seconds FROM camera_view_stats")
            return {r[0]: (r[1], r[2]) for r in rows}

    # ----- the process and its log -------------------------------------------------------------------

    def log_mark(self) -> int:
        """Where the log ends now: later checks read only what comes after."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, mark: int) -> list[str]:
        """The log lines written after ``mark``."""
        with self.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace").splitlines()

    def log_problems(self, mark: int, *, own_ip: str = "127.0.0.1") -> list[str]:
        """What the backend logged since ``mark`` that a well-behaved daemon never causes: SQLITE_BUSY or a
        locked database, a 429 to ``own_ip`` (the daemon's address) and a refused login."""
        problems = [line for line in self.log_since(mark) if "SQLITE_BUSY" in line or "database is locked" in line]
        for url, address, status in self.requests_since(mark):
            if status == 429 and address == own_ip:
                problems.append(f"429 for {url}")
            if url.startswith("/api/auth/login") and status != 200:
                problems.append(f"login answered {status}")
        return problems

    def requests_since(self, mark: int) -> list[tuple[str, str, int]]:
        """(url, remote address, status) of every request the backend completed since ``mark``."""
        urls: dict[str, tuple[str, str]] = {}
        done: list[tuple[str, str, int]] = []
        for line in self.log_since(mark):
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            req = entry.get("req")
            if isinstance(req, dict):
                urls[str(entry.get("reqId"))] = (str(req.get("url", "")), str(req.get("remoteAddress", "")))
            elif isinstance(entry.get("res"), dict):
                url, address = urls.get(str(entry.get("reqId")), ("", ""))
                done.append((url, address, int(entry["res"].get("statusCode", 0))))
        return done

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The backend process frozen (SIGSTOP) for the block: its sweep does not run, it answers nothing."""
        pid = self.pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> int:
        """Stop the backend (SIGTERM) and start it again as ``run.sh start`` does; the new pid."""
        old = self.pid()
        os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{old}").exists():
            assert time.monotonic() < deadline, f"the backend (pid {old}) did not stop within {timeout} s"
            time.sleep(0.2)
        deadline = time.monotonic() + timeout
        # started from a shell that exits at once, so the backend outlives no Popen object of this process
        started = subprocess.run(
            ["sh", "-c", 'nohup node server.js </dev/null >>"$1" 2>&1 & echo $!', "sh", str(self.log)],
            cwd=self.root / "backend",
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        pid = int(started.stdout.strip())
        self.pid_file.write_text(f"{pid}\n", encoding="utf-8")
        self._token = None
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/health").status == 200:
                    return pid
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the backend did not answer /health within {timeout} s after its restart")
