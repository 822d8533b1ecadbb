"""The backend's HTTP contract (TARGET.md), served with aiohttp.

Request pipeline, in order: JSON error mapping; per-IP rate limit (not /health, not
/_testbed/*); X-API-Key on non-public paths when an API key is configured; CSRF
double-submit on every POST/PUT/PATCH/DELETE except login and refresh; then the route,
which checks the admin token where needed.

Login lockout: 5 failed logins for a username or 10 from an IP within the lockout
window (30 min by default) refuse further logins, even with the right password, with
**429** `{"success":false,"message":"Too many failed login attempts...","retryAfter":N}`
and a `Retry-After` header. 429 rather than 423 because TARGET.md groups lockout with
rate limiting ("never retry a failed login in a loop", "honour Retry-After"): a client
that honours Retry-After on 429 then waits out the lockout instead of hammering login.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import platform
import re
import resource
import secrets
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from testbed.auth import TokenError, csrf_valid, token_fingerprint
from testbed.database import verify_password
from testbed.hls import TEMP_SUFFIX
from testbed.ratelimit import route_class
from testbed.scenarios import ScenarioError, run_scenario
from testbed.viewers import camera_exists, heartbeat, start_session, stop_session, viewer_stats

if TYPE_CHECKING:
    from testbed.runtime import Testbed

log = logging.getLogger("testbed.http")
compact_json = functools.partial(json.dumps, separators=(",", ":"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/api/cameras/active",
        "/api/areas/public",
        "/api/viewer/start",
        "/api/viewer/heartbeat",
        "/api/viewer/stop",
        "/api/auth/login",
        "/api/auth/refresh",
    }
)
PUBLIC_PREFIXES = ("/api/stream/", "/hls/", "/_testbed/")
CSRF_EXEMPT = frozenset({"/api/auth/login", "/api/auth/refresh"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4", ".ts": "video/mp2t"}


def is_public(path: str) -> bool:
    """True for paths that never need a token or an API key."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class ApiFailure(Exception):
    """An error answer in the backend's `{"success":false,"message":...}` envelope."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Keep the status, JSON body and extra headers of the answer."""
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


def fail(status: int, message: str, **extra: Any) -> ApiFailure:
    """An ApiFailure with `message` and any extra body keys."""
    return ApiFailure(status, {"success": False, "message": message, **extra})


def respond(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A compact JSON answer, as Fastify serialises it."""
    return web.json_response(body, status=status, headers=headers, dumps=compact_json)


def ok(data: Any = None, *, message: str | None = None, status: int = 200, **extra: Any) -> web.Response:
    """A success answer in the backend's envelope."""
    body: dict[str, Any] = {"success": True}
    if message is not None:
        body["message"] = message
    if data is not None:
        body["data"] = data
    body.update(extra)
    return respond(body, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body, `{}` when empty; 400 when it is not a JSON object."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise fail(400, "Invalid JSON body") from exc
    if not isinstance(value, dict):
        raise fail(400, "JSON body must be an object")
    return value


def client_ip(request: web.Request) -> str:
    """The peer address the limits and logs use."""
    return request.remote or "unknown"


class BackendApi:
    """Route handlers of the stand-in backend."""

    def __init__(self, testbed: Testbed) -> None:
        """Handlers read and change the given testbed."""
        self.tb = testbed

    # ----- middlewares -----------------------------------------------------------------------

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every failure into a JSON answer; never a traceback on the wire."""
        try:
            return await handler(request)
        except ApiFailure as exc:
            return respond(exc.body, status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            reason = exc.reason or "Error"
            message = f"Route {request.method}:{request.path} not found" if exc.status == 404 else reason
            body = {"success": False, "message": message, "error": reason, "statusCode": exc.status}
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            return respond(body, status=exc.status, headers=headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return respond({"success": False, "message": "Internal server error"}, status=500)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Rate limit, API key and CSRF, in the backend's order."""
        path = request.path
        if path.startswith("/_testbed/"):
            if request.remote not in LOOPBACK:
                raise fail(403, "Control routes are loopback only")
            return await handler(request)
        limit_headers: dict[str, str] = {}
        cls = route_class(path)
        if cls is not None:
            decision = self.tb.limiter.hit(client_ip(request), cls)
            limit_headers = {
                "x-ratelimit-limit": str(decision.limit),
                "x-ratelimit-remaining": str(decision.remaining),
                "x-ratelimit-reset": str(decision.reset_after),
            }
            if not decision.allowed:
                body = {
                    "success": False,
                    "statusCode": 429,
                    "error": "Too Many Requests",
                    "message": f"Rate limit exceeded, retry in {decision.retry_after} seconds",
                    "retryAfter": decision.retry_after,
                }
                headers = {**limit_headers, "Retry-After": str(decision.retry_after)}
                return respond(body, status=429, headers=headers)
        api_key = self.tb.settings.api_key
        if api_key and not is_public(path):
            sent = request.headers.get("X-API-Key")
            if not sent:
                raise fail(401, "API key required")
            if not secrets.compare_digest(sent.encode(), api_key.encode()):
                raise fail(401, "Invalid API key")
        csrf_needed = request.method in MUTATING and path not in CSRF_EXEMPT
        if csrf_needed and not csrf_valid(request.cookies.get("csrf_token"), request.headers.get("X-CSRF-Token")):
            raise fail(403, "CSRF validation failed")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(limit_headers)
        return response

    # ----- auth helpers ----------------------------------------------------------------------

    def require_admin(self, request: web.Request) -> dict[str, Any]:
        """The token's user when it is a valid admin access token, else 401/403."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get("token", "")
        if not token:
            raise fail(401, "Access token required")
        try:
            payload = self.tb.tokens.verify(token, kind="access")
        except TokenError as exc:
            raise fail(401, "Invalid or expired token") from exc
        if payload.get("role") != "admin":
            raise fail(403, "Insufficient permissions")
        return payload

    def _set_auth_cookies(self, response: web.Response, token: str, refresh: str) -> None:
        """The cookies the backend sets on login and refresh."""
        tokens = self.tb.tokens
        response.set_cookie("token", token, httponly=True, samesite="Strict", max_age=tokens.access_ttl, path="/")
        response.set_cookie(
            "refreshToken", refresh, httponly=True, samesite="Strict", max_age=tokens.refresh_ttl, path="/"
        )

    # ----- public routes ---------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """GET /health: static, says nothing about the database or MediaMTX."""
        clock = self.tb.clock
        return respond(
            {
                "status": "ok",
                "timestamp": clock.iso_utc(),
                "timestampLocal": clock.local(),
                "timezone": clock.timezone_name(),
                "security": {
                    "rateLimiting": True,
                    "csrfProtection": True,
                    "apiKeyValidation": bool(self.tb.settings.api_key),
                    "bruteForceProtection": True,
                    "securityHeaders": True,
                },
            }
        )

    async def _cached(self, request: web.Request, produce: Callable[[sqlite3.Connection], Any]) -> web.Response:
        """Serve through the response cache, keyed by the full URL; a miss queries SQLite."""
        cache = self.tb.cache
        key = str(request.rel_url)
        entry = cache.get(key)
        if entry is not None:
            return web.Response(
                body=entry.body,
                content_type=entry.content_type,
                charset="utf-8",
                headers={"X-Cache": "HIT", "X-Cache-Key": key},
            )
        cost = self.tb.settings.miss_cost_ms / 1000.0

        def query() -> bytes:
            data = self.tb.db.read(produce)
            if cost:
                # Stands in for the ORM, serialisation and internal caches a cold request rebuilds.
                time.sleep(cost)
            return json.dumps({"success": True, "data": data}).encode()

        body = await asyncio.to_thread(query)
        cache.set(key, body, "application/json")
        return web.Response(body=body, content_type="application/json", charset="utf-8", headers={"X-Cache": "MISS"})

    async def cameras_active(self, request: web.Request) -> web.Response:
        """GET /api/cameras/active (cached)."""

        def produce(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                """SELECT c.id, c.name, c.description, c.location, c.area_id, a.name AS area_name, c.stream_key,
                          c.enabled, c.is_recording, c.is_online, c.latitude, c.longitude
                   FROM cameras c LEFT JOIN areas a ON a.id = c.area_id WHERE c.enabled = 1 ORDER BY c.id"""
            ).fetchall()
            return [
                {
                    **dict(row),
                    "status": "online" if row["is_online"] else "offline",
                    "streams": {"hls": f"/hls/{row['stream_key']}/index.m3u8"},
                }
                for row in rows
            ]

        return await self._cached(request, produce)

    async def areas_public(self, request: web.Request) -> web.Response:
        """GET /api/areas/public (cached)."""

        def produce(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                """SELECT a.id, a.name, a.description, a.kecamatan, a.kelurahan,
                          COUNT(c.id) AS camera_count
                   FROM areas a LEFT JOIN cameras c ON c.area_id = a.id AND c.enabled = 1
                   GROUP BY a.id ORDER BY a.id"""
            ).fetchall()
            return [dict(row) for row in rows]

        return await self._cached(request, produce)

    async def stream(self, request: web.Request) -> web.Response:
        """GET /api/stream/{cameraId}: the camera's stream URLs."""
        try:
            camera_id = int(request.match_info["camera_id"])
        except ValueError as exc:
            raise fail(400, "Invalid camera ID") from exc

        def load(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = conn.execute(
                """SELECT c.id, c.name, c.description, c.location, c.stream_key, a.name AS area_name
                   FROM cameras c LEFT JOIN areas a ON a.id = c.area_id WHERE c.id = ? AND c.enabled = 1""",
                (camera_id,),
            ).fetchone()
            return row

        row = await asyncio.to_thread(self.tb.db.read, load)
        if row is None:
            raise fail(404, "Camera not found or disabled")
        key = row["stream_key"]
        camera = {name: row[name] for name in ("id", "name", "description", "location", "area_name")}
        return ok(
            {
                "camera": camera,
                "stream_key": key,
                "streams": {"hls": f"/hls/{key}/index.m3u8", "webrtc": f"/webrtc/{key}/whep"},
            }
        )

    async def hls_file(self, request: web.Request) -> web.Response:
        """GET /hls/{stream_key}/{file}: proxied MediaMTX output; 502 while MediaMTX is down."""
        if not self.tb.mediamtx.is_up:
            raise fail(502, "Stream server unavailable", error="Bad Gateway")
        stream_key, name = request.match_info["stream_key"], request.match_info["name"]
        if not SAFE_NAME.fullmatch(stream_key) or not SAFE_NAME.fullmatch(name) or name.endswith(TEMP_SUFFIX):
            raise fail(404, "Not found")
        path = self.tb.settings.hls_dir / stream_key / name

        def load() -> bytes | None:
            try:
                if not path.is_file() or path.is_symlink() or path.parent.is_symlink():
                    return None
                return path.read_bytes()
            except OSError:
                return None

        data = await asyncio.to_thread(load)
        if data is None:
            raise fail(404, "Not found")
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
        headers = {"Cache-Control": "no-cache"} if name.endswith(".m3u8") else {}
        return web.Response(body=data, content_type=content_type, headers=headers)

    # ----- auth routes -----------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        """POST /api/auth/login."""
        body = await read_json(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise fail(400, "Username and password are required")
        ip = client_ip(request)
        user_agent = request.headers.get("User-Agent", "")
        lockout = self.tb.login_guard.check(username, ip)
        if lockout is not None:
            minutes = max(1, round(lockout.retry_after / 60))
            return respond(
                {
                    "success": False,
                    "message": f"Too many failed login attempts. Try again in {minutes} minutes.",
                    "retryAfter": lockout.retry_after,
                    "lockedBy": lockout.scope,
                },
                status=429,
                headers={"Retry-After": str(lockout.retry_after)},
            )

        def check(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT id, username, password_hash, role FROM users WHERE username = ?", (username,)
            ).fetchone()
            if row is None or not verify_password(password, row["password_hash"]):
                return None
            return {"id": row["id"], "username": row["username"], "role": row["role"]}

        user = await asyncio.to_thread(self.tb.db.read, check)
        await asyncio.to_thread(self.tb.db.write, lambda conn: self._log_attempt(conn, username, ip, user_agent, user))
        if user is None:
            self.tb.login_guard.record_failure(username, ip)
            raise fail(401, "Invalid credentials")
        self.tb.login_guard.record_success(username)
        token, refresh = self.tb.tokens.access_token(user), self.tb.tokens.refresh_token(user)
        response = ok({"token": token, "refreshToken": refresh, "user": user})
        self._set_auth_cookies(response, token, refresh)
        return response

    def _log_attempt(
        self, conn: sqlite3.Connection, username: str, ip: str, user_agent: str, user: dict[str, Any] | None
    ) -> None:
        """Record a login attempt in login_attempts and security_logs (and audit_logs on success)."""
        clock = self.tb.clock
        conn.execute(
            "INSERT INTO login_attempts (username, ip_address, user_agent, success, attempt_time) VALUES (?, ?, ?, ?, ?)",
            (username, ip, user_agent, int(user is not None), clock.local()),
        )
        conn.execute(
            "INSERT INTO security_logs (event_type, severity, username, ip_address, user_agent, details)"
            " VALUES (?, ?, ?, ?, ?, '{}')",
            (
                "LOGIN_SUCCESS" if user else "LOGIN_FAILED",
                "info" if user else "warning",
                username,
                ip,
                user_agent,
            ),
        )
        if user is not None:
            conn.execute(
                "INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (?, 'LOGIN', '{}', ?)",
                (user["id"], ip),
            )
            conn.execute("UPDATE users SET last_login = ? WHERE id = ?", (clock.local(), user["id"]))

    async def refresh(self, request: web.Request) -> web.Response:
        """POST /api/auth/refresh with `{"refreshToken"}` or the cookie."""
        body = await read_json(request)
        supplied = body.get("refreshToken") or request.cookies.get("refreshToken")
        if not isinstance(supplied, str) or not supplied:
            raise fail(401, "Refresh token required")
        try:
            payload = self.tb.tokens.verify(supplied, kind="refresh")
        except TokenError as exc:
            raise fail(401, "Invalid or expired refresh token") from exc

        def load(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT id, username, role FROM users WHERE id = ?", (payload["id"],)).fetchone()
            return dict(row) if row is not None else None

        user = await asyncio.to_thread(self.tb.db.read, load)
        if user is None:
            raise fail(401, "Invalid or expired refresh token")
        token, refresh = self.tb.tokens.access_token(user), self.tb.tokens.refresh_token(user)
        response = ok({"token": token, "refreshToken": refresh})
        self._set_auth_cookies(response, token, refresh)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """POST /api/auth/logout: blacklist the access token and drop the cookies."""
        user = self.require_admin(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get("token", "")
        fingerprint = token_fingerprint(token)
        self.tb.tokens.revoked.add(fingerprint)
        expires = self.tb.clock.local(-float(self.tb.tokens.access_ttl))
        await asyncio.to_thread(
            self.tb.db.write,
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO token_blacklist (token_hash, user_id, reason, expires_at)"
                " VALUES (?, ?, 'logout', ?)",
                (fingerprint, user.get("id"), expires),
            ),
        )
        response = ok(message="Logged out successfully")
        response.del_cookie("token", path="/")
        response.del_cookie("refreshToken", path="/")
        return response

    async def verify(self, request: web.Request) -> web.Response:
        """GET /api/auth/verify: who the token belongs to."""
        user = self.require_admin(request)
        return ok({"user": {"id": user.get("id"), "username": user.get("username"), "role": user.get("role")}})

    async def csrf(self, request: web.Request) -> web.Response:
        """GET /api/auth/csrf: a fresh double-submit value, also set as the csrf_token cookie."""
        value = secrets.token_hex(32)
        response = ok({"csrfToken": value})
        response.set_cookie("csrf_token", value, samesite="Strict", path="/")
        return response

    # ----- cache admin -----------------------------------------------------------------------

    async def cache_stats(self, request: web.Request) -> web.Response:
        """GET /api/cache/stats and /api/admin/cache/stats."""
        self.require_admin(request)
        return ok(self.tb.cache.stats(legacy=self.tb.settings.legacy_cache_shape))

    async def cache_invalidate(self, request: web.Request) -> web.Response:
        """POST /api/cache/invalidate {"pattern": prefix of the URL path}."""
        self.require_admin(request)
        body = await read_json(request)
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise fail(400, "Pattern is required")
        count = self.tb.cache.invalidate(pattern)
        return ok(message=f"Invalidated {count} cache entries", count=count)

    async def cache_clear(self, request: web.Request) -> web.Response:
        """POST /api/cache/clear."""
        self.require_admin(request)
        self.tb.cache.clear()
        return ok(message="Cache cleared")

    async def admin_cache_clear(self, request: web.Request) -> web.Response:
        """POST /api/admin/cache/clear."""
        self.require_admin(request)
        cleared = self.tb.cache.clear()
        return ok({"cleared": cleared}, message="All caches cleared")

    # ----- viewers ---------------------------------------------------------------------------

    async def viewer_start(self, request: web.Request) -> web.Response:
        """POST /api/viewer/start {cameraId}."""
        body = await read_json(request)
        try:
            camera_id = int(body["cameraId"])
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(400, "cameraId is required") from exc
        ip, agent = client_ip(request), request.headers.get("User-Agent", "")
        clock = self.tb.clock

        def start(conn: sqlite3.Connection) -> str | None:
            if not camera_exists(conn, camera_id):
                return None
            return start_session(conn, clock, camera_id=camera_id, ip_address=ip, user_agent=agent)

        session_id = await asyncio.to_thread(self.tb.db.write, start)
        if session_id is None:
            raise fail(404, "Camera not found")
        return ok({"sessionId": session_id})

    async def _session_id(self, request: web.Request) -> str:
        """The `sessionId` of a heartbeat or stop body."""
        body = await read_json(request)
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise fail(400, "sessionId is required")
        return session_id

    async def viewer_heartbeat(self, request: web.Request) -> web.Response:
        """POST /api/viewer/heartbeat {sessionId}."""
        session_id = await self._session_id(request)
        alive = await asyncio.to_thread(self.tb.db.write, lambda conn: heartbeat(conn, self.tb.clock, session_id))
        if not alive:
            raise fail(404, "Session not found or inactive")
        return ok(message="Heartbeat received")

    async def viewer_stop(self, request: web.Request) -> web.Response:
        """POST /api/viewer/stop {sessionId} (idempotent)."""
        session_id = await self._session_id(request)
        ended = await asyncio.to_thread(self.tb.db.write, lambda conn: stop_session(conn, self.tb.clock, session_id))
        return ok({"ended": ended}, message="Session ended")

    async def viewer_statistics(self, request: web.Request) -> web.Response:
        """GET /api/viewer/stats."""
        self.require_admin(request)
        data = await asyncio.to_thread(self.tb.db.read, lambda conn: viewer_stats(conn, self.tb.clock))
        return ok(data)

    async def admin_stats(self, request: web.Request) -> web.Response:
        """GET /api/admin/stats: overview, host `system` figures and per-camera streams."""
        self.require_admin(request)

        def overview(conn: sqlite3.Connection) -> dict[str, int]:
            row = conn.execute(
                """SELECT (SELECT COUNT(*) FROM cameras) AS total, (SELECT COUNT(*) FROM cameras WHERE enabled = 1)
                          AS enabled, (SELECT COUNT(*) FROM areas) AS areas, (SELECT COUNT(*) FROM users) AS users,
                          (SELECT COUNT(*) FROM viewer_sessions WHERE is_active = 1) AS viewers"""
            ).fetchone()
            return {
                "totalCameras": row["total"],
                "activeCameras": row["enabled"],
                "disabledCameras": row["total"] - row["enabled"],
                "totalAreas": row["areas"],
                "totalUsers": row["users"],
                "activeViewers": row["viewers"],
            }

        data = await asyncio.to_thread(self.tb.db.read, overview)
        paths = {path.name: path for path in self.tb.mediamtx_paths()} if self.tb.mediamtx.is_up else {}
        streams = []
        for camera in self.tb.cameras:
            path = paths.get(camera.stream_key)
            streams.append(
                {
                    "cameraId": camera.id,
                    "name": camera.name,
                    "streamKey": camera.stream_key,
                    "enabled": camera.enabled,
                    "ready": bool(path and path.ready),
                    "readers": path.readers if path else 0,
                    "bytesReceived": path.bytes_received if path else 0,
                }
            )
        return ok({"overview": data, "system": system_figures(self.tb.started), "streams": streams})

    # ----- control routes --------------------------------------------------------------------

    async def control_state(self, request: web.Request) -> web.Response:
        """GET /_testbed/state[?stale_age=SECONDS]."""
        try:
            stale_age = float(request.query.get("stale_age", "60"))
        except ValueError as exc:
            raise fail(400, "stale_age must be a number") from exc
        return respond(await self.tb.state(stale_age_seconds=stale_age))

    async def control_scenario(self, request: web.Request) -> web.Response:
        """POST /_testbed/scenario/{name} with optional JSON params."""
        params = await read_json(request)
        name = request.match_info["name"]
        try:
            result = await run_scenario(self.tb, name, params)
        except ScenarioError as exc:
            return respond({"ok": False, "scenario": name, "error": str(exc)}, status=exc.status)
        log.info("scenario %s %s -> %s", name, params or "", _summary(result))
        return respond({"ok": True, "scenario": name, **result})


def _summary(result: dict[str, Any]) -> str:
    """A short, single-line rendering of a scenario result for stderr."""
    text = json.dumps(result, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _meminfo() -> dict[str, int]:
    """Total and available memory in bytes from /proc/meminfo (zeros when unreadable)."""
    figures = {"MemTotal": 0, "MemAvailable": 0}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in figures:
                    figures[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return figures


def system_figures(started: float) -> dict[str, Any]:
    """Host figures in the shape of the backend's `system` object (Node's os module)."""
    memory = _meminfo()
    total, free = memory["MemTotal"], memory["MemAvailable"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/uptime", encoding="ascii") as handle:
            os_uptime = float(handle.read().split()[0])
    except (OSError, ValueError):
        os_uptime = 0.0
    return {
        "platform": platform.system().lower(),
        "arch": platform.machine(),
        "hostname": socket.gethostname(),
        "nodeVersion": "v20.18.0",
        "uptime": round(time.monotonic() - started, 1),
        "osUptime": os_uptime,
        "totalMem": total,
        "freeMem": free,
        "usedMem": total - free,
        "memoryUsagePercent": round(100.0 * (total - free) / total, 2) if total else 0.0,
        "cpuCount": os.cpu_count() or 1,
        "loadAvg": list(os.getloadavg()),
        "processMemory": {"rss": rss, "heapTotal": rss // 2, "heapUsed": rss // 3, "external": 0},
    }


def build_app(testbed: Testbed) -> web.Application:
    """The backend application bound to a testbed."""
    api = BackendApi(testbed)
    app = web.Application(middlewares=[api.errors, api.guard], client_max_size=1024 * 1024)
    route = app.router
    route.add_get("/health", api.health)
    route.add_get("/api/cameras/active", api.cameras_active)
    route.add_get("/api/areas/public", api.areas_public)
    route.add_get("/api/stream/{camera_id}", api.stream)
    route.add_get("/hls/{stream_key}/{name}", api.hls_file)
    route.add_post("/api/auth/login", api.login)
    route.add_post("/api/auth/refresh", api.refresh)
    route.add_post("/api/auth/logout", api.logout)
    route.add_get("/api/auth/verify", api.verify)
    route.add_get("/api/auth/csrf", api.csrf)
    route.add_get("/api/cache/stats", api.cache_stats)
    route.add_post("/api/cache/invalidate", api.cache_invalidate)
    route.add_post("/api/cache/clear", api.cache_clear)
    route.add_get("/api/admin/cache/stats", api.cache_stats)
    route.add_post("/api/admin/cache/clear", api.admin_cache_clear)
    route.add_get("/api/admin/stats", api.admin_stats)
    route.add_post("/api/viewer/start", api.viewer_start)
    route.add_post("/api/viewer/heartbeat", api.viewer_heartbeat)
    route.add_post("/api/viewer/stop", api.viewer_stop)
    route.add_get("/api/viewer/stats", api.viewer_statistics)
    route.add_get("/_testbed/state", api.control_state)
    route.add_post("/_testbed/scenario/{name}", api.control_scenario)
    return app
