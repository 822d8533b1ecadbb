"""The backend's HTTP contract, served with aiohttp, as the real backend's code and answers have it.

Request pipeline, in the backend's hook order: per-client rate limit (middleware/rateLimiter.js; not the
whitelist, not /_testbed/*); X-API-Key on non-public paths once a key is configured
(middleware/apiKeyValidator.js: 403 "Access denied" when missing or wrong); for the routes whose auth is
an onRequest hook (``/api/admin/*``, ``/api/auth/logout``, ``/api/auth/verify``) the token next; then the
CSRF double-submit on POST/PUT/PATCH/DELETE (middleware/csrfProtection.js; login, refresh, viewer and
stream routes are skipped); then the route, whose own preHandler checks the token (``/api/cache/*``).

Login lockout (services/bruteForceProtection.js): 5 failures for a username or 10 from an address inside
the 15-minute tracking window refuse further logins, even correct ones, with the same 401
"Invalid credentials" as a wrong password; each failure is answered after a 1/2/4/8 s delay.
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
from testbed.cache import AREA_LIST_KEY, CAMERA_LIST_KEY, CAMERA_MAP_KEY, SERVICE_TTL_SECONDS, middleware_key
from testbed.database import verify_password
from testbed.hls import TEMP_SUFFIX
from testbed.localtime import SHORT_NAMES, ZONE_ALIASES
from testbed.ratelimit import TOO_MANY, route_class
from testbed.scenarios import ScenarioError, run_scenario
from testbed.viewers import heartbeat, start_session, stop_session, viewer_stats

if TYPE_CHECKING:
    from testbed.runtime import Testbed

log = logging.getLogger("testbed.http")
compact_json = functools.partial(json.dumps, separators=(",", ":"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# apiKeyValidator.js: paths that never need X-API-Key (note: /api/auth/refresh and /api/auth/csrf do)
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/api/auth/login",
        "/api/auth/register",
        "/api/auth/register-info",
        "/api/cameras/active",
        "/api/stream",
        "/api/areas/public",
        "/api/viewer/start",
        "/api/viewer/heartbeat",
        "/api/viewer/stop",
    }
)
PUBLIC_PREFIXES = (
    "/api/public/",
    "/api/stream/",
    "/hls/",
    "/api/billing/webhook",
    "/api/voucher/webhook",
    "/_testbed/",
)
# csrfProtection.js: URL prefixes whose state-changing requests skip the CSRF check
CSRF_SKIP_PREFIXES = (
    "/api/stream",
    "/api/viewer/",
    "/api/playback-viewer/",
    "/api/auth/refresh",
    "/health",
    "/hls",
    "/api/billing/webhook",
    "/api/voucher/webhook",
    "/api/playback-access/webhook",
    "/api/auth/login",
)
# routes whose token check is an onRequest hook, so it answers before the CSRF preHandler
AUTH_BEFORE_CSRF_PREFIXES = ("/api/admin/", "/api/auth/logout", "/api/auth/verify")
API_KEY_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
LOGIN_DELAYS = (1.0, 2.0, 4.0, 8.0)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".mp4": "video/mp4", ".ts": "video/mp2t"}


def is_public(path: str) -> bool:
    """True for paths that never need an API key."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def validation_error(message: str) -> ApiFailure:
    """Fastify's schema-validation answer (no ``success`` key)."""
    body = {"statusCode": 400, "code": "FST_ERR_VALIDATION", "error": "Bad Request", "message": message}
    return ApiFailure(400, body)


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
    """The peer address (Fastify's request.ip), used by the login lockout and the logs."""
    return request.remote or "unknown"


def viewer_ip(request: web.Request) -> str:
    """The address a viewer session records (getRealIP): X-Forwarded-For's first, X-Real-IP, else the peer."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded:
        return forwarded.split(",")[0].strip()
    real = request.headers.get("X-Real-IP", "").strip()
    return real or client_ip(request)


def rate_limit_client(request: web.Request) -> str:
    """The rate limiter's client: CF-Connecting-IP when sent, else the peer address (resolveClientIp)."""
    forwarded = request.headers.get("CF-Connecting-IP", "").strip()
    return forwarded or client_ip(request)


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
        """Rate limit, API key, early token check and CSRF, in the backend's order."""
        path = request.path
        if path.startswith("/_testbed/"):
            if request.remote not in LOOPBACK:
                raise fail(403, "Control routes are loopback only")
            return await handler(request)
        limit_headers: dict[str, str] = {}
        cls = route_class(request.path_qs)
        if cls is not None:
            decision = self.tb.limiter.hit(rate_limit_client(request), cls)
            limit_headers = {
                "X-RateLimit-Limit": str(decision.limit),
                "X-RateLimit-Remaining": str(decision.remaining),
                "X-RateLimit-Reset": str(decision.reset_epoch),
            }
            if not decision.allowed:
                body = {"success": False, "message": TOO_MANY, "retryAfter": decision.retry_after}
                headers = {**limit_headers, "Retry-After": str(decision.retry_after)}
                return respond(body, status=429, headers=headers)
        try:
            self._check_api_key(request)
            if path.startswith(AUTH_BEFORE_CSRF_PREFIXES):
                self.require_admin(request)
            csrf_needed = request.method in MUTATING and not request.path_qs.startswith(CSRF_SKIP_PREFIXES)
            if csrf_needed and not csrf_valid(request.cookies.get("csrf_token"), request.headers.get("X-CSRF-Token")):
                raise fail(403, "CSRF validation failed", error="Forbidden")
            response = await handler(request)
        except ApiFailure as exc:
            exc.headers.update(limit_headers)
            raise
        if not response.prepared:
            response.headers.update(limit_headers)
        return response

    def _check_api_key(self, request: web.Request) -> None:
        """apiKeyValidator: once a key exists, a non-public path needs it; missing or wrong is 403."""
        api_key = self.tb.settings.api_key
        if not api_key or is_public(request.path):
            return
        sent = request.headers.get("X-API-Key", "")
        # the backend only ever accepts 64 hex characters (apiKeyService.validateApiKey)
        matches = secrets.compare_digest(sent.encode(), api_key.encode())
        if not sent or not matches or (API_KEY_PATTERN.fullmatch(api_key) and not API_KEY_PATTERN.fullmatch(sent)):
            raise fail(403, "Access denied")

    # ----- auth helpers ----------------------------------------------------------------------

    def require_admin(self, request: web.Request) -> dict[str, Any]:
        """The token's user when it is a valid admin access token, else 401/403."""
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else ""
        # authMiddleware: the Authorization header first, then the token cookie
        for token in (bearer, request.cookies.get("token", "")):
            if not token:
                continue
            try:
                payload = self.tb.tokens.verify(token, kind="access")
            except TokenError:
                continue
            if payload.get("role") != "admin":
                raise fail(403, "Forbidden - admin access required")
            return payload
        if not request.cookies.get("token"):
            raise fail(401, "Unauthorized - No token provided")
        raise fail(401, "Unauthorized - Invalid or expired token")

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
        local, zone = await asyncio.to_thread(lambda: (clock.iso_local(), clock.timezone_name()))
        return respond(
            {
                "status": "ok",
                "timestamp": clock.iso_utc(),
                "timestampLocal": local,
                "timezone": zone,
                "security": {
                    "rateLimiting": True,
                    "apiKeyValidation": True,
                    "csrfProtection": True,
                    "securityHeaders": True,
                },
            }
        )

    async def _cached(
        self,
        request: web.Request,
        service_key: str,
        produce: Callable[[sqlite3.Connection], Any],
        envelope: Callable[[Any, bool], dict[str, Any]],
    ) -> web.Response:
        """Serve through the response-cache middleware; a miss asks the service, which has its own cache entry.

        Both lookups count in the shared counters, as in the backend: a route miss followed by a service hit
        is one miss and one hit.
        """
        cache = self.tb.cache
        key = middleware_key(request.path_qs)
        entry = cache.get(key)
        if entry is not None:
            return web.Response(
                body=entry.body,
                content_type=entry.content_type,
                charset="utf-8",
                headers={"X-Cache": "HIT", "X-Cache-Key": key},
            )
        settings = self.tb.settings
        cost = settings.miss_cost_ms / 1000.0
        service_ttl = settings.service_cache_ttl or SERVICE_TTL_SECONDS[service_key]

        def query() -> bytes:
            cached = cache.get(service_key)
            if cached is not None:
                data, was_cached = cached.body, True
            else:
                data, was_cached = self.tb.db.read(produce), False
                cache.set(service_key, data, ttl_seconds=service_ttl)
                if cost:
                    # Stands in for the ORM, serialisation and health enrichment a cold read model rebuilds.
                    time.sleep(cost)
            return compact_json(envelope(data, was_cached)).encode()

        body = await asyncio.to_thread(query)
        cache.set(key, body, "application/json")
        return web.Response(
            body=body,
            content_type="application/json",
            charset="utf-8",
            headers={"X-Cache": "MISS", "X-Cache-Key": key},
        )

    async def cameras_active(self, request: web.Request) -> web.Response:
        """GET /api/cameras/active (cached): the public landing list, or ``?view=map``."""

        def produce(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                """SELECT c.id, c.name, c.description, c.location, c.group_name, c.area_id, c.is_tunnel,
                          c.latitude, c.longitude, c.status, c.enabled, c.enable_recording, c.video_codec,
                          c.thumbnail_path, c.thumbnail_updated_at, c.stream_source, c.external_hls_url,
                          c.delivery_type, c.external_stream_url, c.external_embed_url, c.external_snapshot_url,
                          c.external_origin_mode, c.external_use_proxy, c.external_tls_mode, a.name AS area_name,
                          COALESCE(active.viewer_count, 0) AS live_viewers,
                          COALESCE(cvs.total_live_views, 0) AS total_views, c.is_online
                   FROM cameras c LEFT JOIN areas a ON a.id = c.area_id
                   LEFT JOIN camera_view_stats cvs ON cvs.camera_id = c.id
                   LEFT JOIN (SELECT camera_id, COUNT(*) AS viewer_count FROM viewer_sessions
                              WHERE is_active = 1 GROUP BY camera_id) active ON active.camera_id = c.id
                   WHERE c.enabled = 1 ORDER BY c.is_tunnel ASC, c.id ASC"""
            ).fetchall()
            cameras = []
            for row in rows:
                camera = dict(row)
                online = bool(camera["is_online"])
                camera["viewer_stats"] = {"live_viewers": camera["live_viewers"], "total_views": camera["total_views"]}
                camera["availability_state"] = "online" if online else "offline"
                camera["availability_reason"] = "healthy" if online else "runtime_offline"
                camera["availability_confidence"] = 0.75
                cameras.append(camera)
            return cameras

        key = CAMERA_MAP_KEY if request.query.get("view") == "map" else CAMERA_LIST_KEY
        return await self._cached(request, key, produce, lambda data, _cached: {"success": True, "data": data})

    async def areas_public(self, request: web.Request) -> web.Response:
        """GET /api/areas/public (cached); ``cached`` says whether the area service's entry answered."""

        def produce(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                """SELECT a.id, a.name, a.slug, a.description, a.rt, a.rw, a.kelurahan, a.kecamatan,
                          a.latitude, a.longitude, a.coverage_scope, a.viewport_zoom_override,
                          a.show_on_grid_default, a.grid_default_camera_limit, a.is_access_gated,
                          (SELECT COUNT(*) FROM cameras c WHERE c.area_id = a.id AND c.enabled = 1) AS camera_count
                   FROM areas a ORDER BY a.kecamatan, a.kelurahan, a.rw, a.rt, a.name ASC"""
            ).fetchall()
            return [dict(row) for row in rows]

        return await self._cached(
            request,
            AREA_LIST_KEY,
            produce,
            lambda data, cached: {"success": True, "data": data, "cached": cached},
        )

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
        """POST /api/auth/login (authService.login with bruteForceProtection)."""
        body = await read_json(request)
        username, password = body.get("username"), body.get("password")
        for name, value in (("username", username), ("password", password)):
            if value is None:
                raise validation_error(f"body must have required property '{name}'")
            if not isinstance(value, str):
                raise validation_error(f"body/{name} must be string")
        assert isinstance(username, str) and isinstance(password, str)
        if not username or not password:
            raise fail(400, "Username and password are required")
        ip = client_ip(request)
        user_agent = request.headers.get("User-Agent", "")
        guard = self.tb.login_guard
        if guard.check(username, ip) is not None:
            # locked: logged, not counted again, and answered exactly like a wrong password
            await asyncio.to_thread(
                self.tb.db.write,
                lambda conn: self._log_security(
                    conn, "AUTH_FAILURE", ip, user_agent, username=username, reason="Account locked"
                ),
            )
            raise fail(401, "Invalid credentials")
        attempts = guard.failures(username, ip)

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
            guard.record_failure(username, ip)
            delay = LOGIN_DELAYS[min(attempts, len(LOGIN_DELAYS) - 1)] * self.tb.settings.login_delay_scale
            if delay > 0:
                await asyncio.sleep(delay)
            raise fail(401, "Invalid credentials")
        guard.record_success(username)
        token, refresh = self.tb.tokens.access_token(user), self.tb.tokens.refresh_token(user)
        response = ok({"token": token, "refreshToken": refresh, "user": user}, message="Login successful")
        self._set_auth_cookies(response, token, refresh)
        return response

    def _log_security(  # noqa: PLR0913 -- the backend's own call shape
        self, conn: sqlite3.Connection, event: str, ip: str, user_agent: str, *, username: str, reason: str
    ) -> None:
        """A security_logs row: ``timestamp`` is ISO UTC, ``created_at`` the UTC default."""
        conn.execute(
            "INSERT INTO security_logs (event_type, timestamp, ip_address, user_agent, username, endpoint, details)"
            " VALUES (?, ?, ?, ?, ?, '/api/auth/login', ?)",
            (event, self.tb.clock.iso(), ip, user_agent, username, json.dumps({"reason": reason})),
        )

    def _log_attempt(
        self, conn: sqlite3.Connection, username: str, ip: str, user_agent: str, user: dict[str, Any] | None
    ) -> None:
        """login_attempts rows as bruteForceProtection writes them (ISO UTC), plus security and audit logs."""
        clock = self.tb.clock
        now = clock.iso()
        if user is None:
            conn.execute(
                "INSERT INTO login_attempts (identifier, identifier_type, attempt_time, success)"
                " VALUES (?, 'username', ?, 0)",
                (username, now),
            )
            conn.execute(
                "INSERT INTO login_attempts (identifier, identifier_type, attempt_time, success) VALUES (?, 'ip', ?, 0)",
                (ip, now),
            )
            self._log_security(conn, "AUTH_FAILURE", ip, user_agent, username=username, reason="Invalid password")
            return
        conn.execute(
            "INSERT INTO login_attempts (identifier, identifier_type, attempt_time, success)"
            " VALUES (?, 'username', ?, 1)",
            (username, now),
        )
        conn.execute(
            "DELETE FROM login_attempts WHERE identifier = ? AND identifier_type = 'username' AND success = 0",
            (username,),
        )
        conn.execute(
            "INSERT INTO audit_logs (user_id, action, details, ip_address) VALUES (?, 'LOGIN', ?, ?)",
            (user["id"], "User logged in successfully", ip),
        )
        self._log_security(conn, "AUTH_SUCCESS", ip, user_agent, username=username, reason="Login successful")
        conn.execute("UPDATE users SET last_login_at = ?, last_login_ip = ? WHERE id = ?", (now, ip, user["id"]))

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
        # token rotation: the refresh token just used is blacklisted (sessionManager.blacklistToken)
        self.tb.tokens.revoked.add(token_fingerprint(supplied))
        await asyncio.to_thread(
            self.tb.db.write, lambda conn: self._blacklist(conn, supplied, user["id"], "token_rotation")
        )
        token, refresh = self.tb.tokens.access_token(user), self.tb.tokens.refresh_token(user)
        response = ok({"token": token, "refreshToken": refresh}, message="Tokens refreshed successfully")
        self._set_auth_cookies(response, token, refresh)
        return response

    def _blacklist(self, conn: sqlite3.Connection, token: str, user_id: Any, reason: str) -> None:
        """sessionManager.blacklistToken: ``expires_at`` is ISO UTC, the refresh lifetime from now."""
        conn.execute(
            "INSERT OR REPLACE INTO token_blacklist (token_hash, user_id, reason, expires_at) VALUES (?, ?, ?, ?)",
            (token_fingerprint(token), user_id, reason, self.tb.clock.iso(-float(self.tb.tokens.refresh_ttl))),
        )

    async def logout(self, request: web.Request) -> web.Response:
        """POST /api/auth/logout: blacklist the access token and drop the cookies."""
        user = self.require_admin(request)
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get("token", "")
        self.tb.tokens.revoked.add(token_fingerprint(token))
        await asyncio.to_thread(self.tb.db.write, lambda conn: self._blacklist(conn, token, user.get("id"), "logout"))
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
        response = ok({"token": value, "headerName": "X-CSRF-Token", "expiresIn": 3600})
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
        return ok({"cleared": cleared}, message=f"Cache cleared successfully. {cleared} entries removed.")

    # ----- settings ----------------------------------------------------------------------------

    async def timezone_get(self, request: web.Request) -> web.Response:
        """GET /api/admin/settings/timezone: the zone row and its short name (WIB when it has none)."""
        self.require_admin(request)
        zone = await asyncio.to_thread(lambda: self.tb.clock.zone)
        return ok({"timezone": zone, "shortName": SHORT_NAMES.get(zone, "WIB")})

    async def timezone_put(self, request: web.Request) -> web.Response:
        """PUT /api/admin/settings/timezone {"timezone": "WIB"|"WITA"|"WIT"}: stored as the IANA name."""
        self.require_admin(request)
        body = await read_json(request)
        zone = body.get("timezone")
        if zone is None:
            raise validation_error("body must have required property 'timezone'")
        if zone not in ZONE_ALIASES:
            raise validation_error("body/timezone must be equal to one of the allowed values")
        await asyncio.to_thread(self.tb.db.set_timezone, str(zone))
        return ok({"timezone": zone}, message="Timezone berhasil diupdate")

    # ----- viewers ---------------------------------------------------------------------------

    async def viewer_start(self, request: web.Request) -> web.Response:
        """POST /api/viewer/start {cameraId} (viewerController.startViewerSession)."""
        body = await read_json(request)
        try:
            camera_id = int(str(body.get("cameraId")).strip())
        except ValueError:
            camera_id = 0
        if camera_id <= 0:
            raise fail(400, "Camera ID is required")
        ip, agent = viewer_ip(request), request.headers.get("User-Agent", "")
        clock = self.tb.clock

        def start(conn: sqlite3.Connection) -> str | int:
            row = conn.execute("SELECT enabled FROM cameras WHERE id = ?", (camera_id,)).fetchone()
            if row is None:
                return 404
            if not row["enabled"]:
                return 400
            return start_session(conn, clock, camera_id=camera_id, ip_address=ip, user_agent=agent)

        result = await asyncio.to_thread(self.tb.db.write, start)
        if result == 404:
            raise fail(404, "Camera not found")
        if result == 400:
            raise fail(400, "Camera is disabled")
        return ok({"sessionId": result})

    async def _session_id(self, request: web.Request) -> str:
        """The ``sessionId`` of a heartbeat or stop body; 400 when missing."""
        body = await read_json(request)
        session_id = body.get("sessionId")
        if not session_id:
            raise fail(400, "Session ID is required")
        return str(session_id)

    async def viewer_heartbeat(self, request: web.Request) -> web.Response:
        """POST /api/viewer/heartbeat {sessionId}: 200 either way, ``success`` says whether it was alive."""
        session_id = await self._session_id(request)
        alive = await asyncio.to_thread(self.tb.db.write, lambda conn: heartbeat(conn, self.tb.clock, session_id))
        return respond({"success": alive, "message": "Heartbeat received" if alive else "Session not found or expired"})

    async def viewer_stop(self, request: web.Request) -> web.Response:
        """POST /api/viewer/stop {sessionId}: ends the session now; ``success`` false when it was not active."""
        session_id = await self._session_id(request)
        ended = await asyncio.to_thread(self.tb.db.write, lambda conn: stop_session(conn, self.tb.clock, session_id))
        return respond(
            {"success": ended, "message": "Session ended" if ended else "Session not found or already ended"}
        )

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
    route.add_get("/api/admin/settings/timezone", api.timezone_get)
    route.add_put("/api/admin/settings/timezone", api.timezone_put)
    route.add_post("/api/viewer/start", api.viewer_start)
    route.add_post("/api/viewer/heartbeat", api.viewer_heartbeat)
    route.add_post("/api/viewer/stop", api.viewer_stop)
    route.add_get("/api/viewer/stats", api.viewer_statistics)
    route.add_get("/_testbed/state", api.control_state)
    route.add_post("/_testbed/scenario/{name}", api.control_scenario)
    return app
