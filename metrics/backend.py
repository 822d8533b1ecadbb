"""The HTTP client for the CCTV backend: its login, CSRF, API-key and rate-limit rules (docs/CONTRACT.md).

Every call but ``/health`` spends from one request budget kept well under the backend's per-IP limits;
a 429 stops all calls until its ``Retry-After`` has passed; a refused login is not retried in a loop
(the backend locks an account out after five failures). Bodies are size-capped and must be JSON objects.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from metrics.errors import SamplingError
from metrics.snapshot import CacheStatsSample, ProbeSample

MAX_BODY_BYTES = 1024 * 1024
LOGIN_BACKOFF_SECONDS = 900.0
LOGIN_BACKOFF_MAX_SECONDS = 6 * 3600.0
# requests of the budget that sampling never spends: kept for the strategies' invalidate, clear and warm calls
ACTION_RESERVE = 2.0
MIN_BUDGET_WAIT_SECONDS = 0.05
# the share of the request budget that sampling may spend on cache stats: the rest is the hot-endpoint probe's
CACHE_STATS_SHARE = 0.25
# How long an idle connection to the backend is kept for the next request: longer than a calm sample interval
# (sampler.max_interval_ms, 30 s by default), so a calm daemon's probes reuse one connection instead of opening and
# closing one per sample, and shorter than the backend's own keep-alive (Fastify's keepAliveTimeout, 72 s), so the
# daemon closes first and never sends on a connection the backend is closing.
KEEPALIVE_SECONDS = 45.0


class BackendError(SamplingError):
    """The backend refused or failed a call; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """Admin login and optional API key (read from their files by the caller)."""

    username: str | None
    password: str | None
    api_key: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A finished call: status, elapsed seconds, the headers that matter and the body."""

    status: int
    seconds: float
    body: bytes
    x_cache: str | None


class RequestBudget:
    """A token bucket of requests per minute, with a pause imposed by 429 Retry-After."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(max(1, per_minute // 4))
        self._tokens = self._capacity
        self._clock = clock
        self._updated = clock()
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Stop spending until ``seconds`` from now (the backend's Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        """Seconds left in a Retry-After pause."""
        return max(0.0, self._paused_until - self._clock())

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last update."""
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    @property
    def action_reserve(self) -> float:
        """Requests that sampling leaves in the bucket, so that an action is not starved by the samples."""
        return min(ACTION_RESERVE, self._capacity - 1.0)

    def try_take(self, reserve: float = 0.0) -> bool:
        """Spend one request if the bucket has one more than ``reserve`` and no pause is in force."""
        now = self._clock()
        if now < self._paused_until:
            return False
        self._refill(now)
        if self._tokens >= 1.0 + reserve:
            self._tokens -= 1.0
            return True
        return False

    def available(self) -> float:
        """Requests that could be spent now (0 during a Retry-After pause)."""
        now = self._clock()
        if now < self._paused_until:
            return 0.0
        self._refill(now)
        return self._tokens

    def wait_seconds(self) -> float:
        """How long until one request can be spent."""
        pause = self.paused_for()
        if pause > 0:
            return pause
        # refill first: the tokens earned since the last call shorten the wait
        self._refill(self._clock())
        return max(0.0, (1.0 - self._tokens) / self._rate)


async def _read_capped(resp: aiohttp.ClientResponse, path: str) -> bytes:
    """The whole body, or BackendError as soon as it passes MAX_BODY_BYTES."""
    too_big = BackendError(f"{path} answered more than {MAX_BODY_BYTES} bytes", status=resp.status)
    if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
        raise too_big
    # StreamReader.read(n) returns only what has arrived so far, so read chunk by chunk to the end
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta seconds only; dates fall back to a minute)."""
    if value is None:
        return 60.0
    try:
        return max(1.0, min(3600.0, float(value)))
    except ValueError:
        return 60.0


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object, or raise BackendError naming the endpoint."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BackendError(f"{what} answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise BackendError(f"{what} answered JSON that is not an object")
    return data


def _as_int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def parse_cache_stats(data: Mapping[str, Any]) -> CacheStatsSample:
    """Normalise either cache-stats shape the backend answers with: ``hitRate`` as "20.00%" or as a number."""
    inner = data.get("data", data)
    if not isinstance(inner, Mapping) or "size" not in inner:
        raise BackendError("cache stats have no size")
    hits, misses = _as_int(inner, "hits"), _as_int(inner, "misses")
    if hits + misses > 0:
        hit_rate = hits / (hits + misses)
    else:
        raw = inner.get("hitRate", 0)
        try:
            number = float(str(raw).rstrip("%")) if raw is not None else 0.0
        except ValueError:
            number = 0.0
        hit_rate = number / 100.0 if (isinstance(raw, str) and raw.endswith("%")) or number > 1 else number
    max_size = inner.get("maxSize")
    return CacheStatsSample(
        hits=hits,
        misses=misses,
        sets=_as_int(inner, "sets"),
        evictions=_as_int(inner, "evictions") + _as_int(inner, "invalidations") + _as_int(inner, "deletes"),
        size=_as_int(inner, "size"),
        max_size=int(max_size) if isinstance(max_size, (int, float)) and not isinstance(max_size, bool) else None,
        hit_rate=max(0.0, min(1.0, hit_rate)),
    )


class BackendClient:
    """Talks to the backend as a well-behaved client must: one request budget, 429s waited out, no login loops."""

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        base_url: str,
        credentials: Credentials,
        *,
        user_agent: str,
        timeout_seconds: float,
        requests_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._keepalive = keepalive_seconds
        self._credentials = credentials
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._budget = RequestBudget(requests_per_minute, clock)
        self._clock = clock
        self._csrf = secrets.token_hex(32)
        self._token: str | None = None
        self._refresh: str | None = None
        self._login_blocked_until = 0.0
        self._login_backoff = LOGIN_BACKOFF_SECONDS
        self._login_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._last_cache: tuple[float, CacheStatsSample] | None = None
        self._cache_interval = 60.0 / max(1e-9, requests_per_minute * CACHE_STATS_SHARE)
        self._hot_timed: dict[str, float] = {}

    @property
    def cache_interval(self) -> float:
        """Seconds between two cache-stats reads by sampling: their share of the budget, no more."""
        return self._cache_interval

    @property
    def budget(self) -> RequestBudget:
        """The shared request budget."""
        return self._budget

    @property
    def has_credentials(self) -> bool:
        """Whether admin calls can be made at all."""
        return bool(self._credentials.username and self._credentials.password)

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self._user_agent},
                connector=aiohttp.TCPConnector(limit=4, force_close=False, keepalive_timeout=self._keepalive),
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def _spend(self, wait: bool) -> None:
        """Take one request from the budget: sampling leaves the action reserve; an action waits for one.

        Sampling alone asks for more than a small budget allows (probe and cache stats every sample), so without
        the reserve a strategy's invalidate or warm would find the bucket empty every time.
        """
        budget = self._budget
        if budget.try_take(0.0 if wait else budget.action_reserve):
            return
        delay = budget.wait_seconds()
        if not wait:
            raise BackendError(f"request budget spent; next call in {delay:.0f} s", status=429)
        deadline = self._clock() + (self._timeout.total or 0.0)
        while self._clock() + delay <= deadline:
            await asyncio.sleep(max(delay, MIN_BUDGET_WAIT_SECONDS))
            if budget.try_take():
                return
            delay = budget.wait_seconds()
        raise BackendError(f"request budget spent; next call in {delay:.0f} s", status=429)

    async def _send(  # noqa: PLR0913 -- one request: method, route, body, headers and budget
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        auth: bool = False,
        budgeted: bool = True,
        wait: bool = False,
    ) -> Response:
        """One HTTP call with the headers the backend requires; raises BackendError on transport failure."""
        if budgeted:
            await self._spend(wait)
        headers: dict[str, str] = {"Accept": "application/json"}
        cookies = [f"csrf_token={self._csrf}"]
        if method != "GET":
            headers["X-CSRF-Token"] = self._csrf
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
            cookies.append(f"token={self._token}")
        if self._credentials.api_key:
            headers["X-API-Key"] = self._credentials.api_key
        headers["Cookie"] = "; ".join(cookies)
        started = self._clock()
        try:
            async with self._session_or_new().request(
                method, self._base + path, json=body, headers=headers, allow_redirects=False
            ) as resp:
                data = await _read_capped(resp, path)
                if resp.status == 429:
                    self._budget.pause(parse_retry_after(resp.headers.get("Retry-After")))
                    raise BackendError(f"{path} is rate limited (429)", status=429)
                return Response(
                    status=resp.status,
                    seconds=self._clock() - started,
                    body=data,
                    x_cache=resp.headers.get("X-Cache"),
                )
        except TimeoutError:
            raise BackendError(f"{path} did not answer within {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{path} failed: {exc.__class__.__name__}") from None

    async def get_public(self, path: str, *, wait: bool = False) -> Response:
        """GET a public path (``/health`` is not budgeted: it has no rate limit); ``wait``: an action's call."""
        return await self._send("GET", path, budgeted=path != "/health", wait=wait)

    async def _login(self) -> None:
        """Log in once; a refused login blocks further attempts for a growing while."""
        now = self._clock()
        if now < self._login_blocked_until:
            left = self._login_blocked_until - now
            raise BackendError(f"admin login refused earlier; not retrying for {left:.0f} s", status=401)
        if not self.has_credentials:
            raise BackendError("no admin credentials configured")
        if self._refresh is not None:
            resp = await self._send("POST", "/api/auth/refresh", body={"refreshToken": self._refresh})
            if resp.status == 200 and self._take_tokens(resp):
                return
            self._refresh = None
        resp = await self._send(
            "POST",
            "/api/auth/login",
            body={"username": self._credentials.username, "password": self._credentials.password},
        )
        if resp.status == 200 and self._take_tokens(resp):
            self._login_backoff = LOGIN_BACKOFF_SECONDS
            return
        self._login_blocked_until = self._clock() + self._login_backoff
        self._login_backoff = min(LOGIN_BACKOFF_MAX_SECONDS, self._login_backoff * 2)
        raise BackendError(f"admin login refused ({resp.status}); check the credentials", status=resp.status)

    def _take_tokens(self, resp: Response) -> bool:
        try:
            data = parse_json_object(resp.body, "login")
        except BackendError:
            return False
        inner = data.get("data")
        if not isinstance(inner, dict) or not isinstance(inner.get("token"), str):
            return False
        self._token = inner["token"]
        refresh = inner.get("refreshToken")
        self._refresh = refresh if isinstance(refresh, str) else None
        return True

    async def admin(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, wait: bool = False
    ) -> dict[str, Any]:
        """An authenticated call returning the JSON object; logs in or refreshes once on 401."""
        for attempt in range(2):
            if self._token is None:
                async with self._login_lock:
                    if self._token is None:
                        await self._login()
            resp = await self._send(method, path, body=body, auth=True, wait=wait)
            if resp.status == 401 and attempt == 0:
                self._token = None
                continue
            if resp.status >= 400:
                message = f"{method} {path} answered {resp.status}"
                try:
                    detail = parse_json_object(resp.body, path).get("message")
                except BackendError:
                    detail = None
                if isinstance(detail, str):
                    message += f": {detail[:200]}"
                raise BackendError(message, status=resp.status)
            return parse_json_object(resp.body, path)
        raise BackendError(f"{method} {path} still unauthorised after logging in again", status=401)

    async def cache_stats(self, max_age: float = 60.0) -> CacheStatsSample:
        """Read the response cache's counters (falls back to the admin duplicate on 404).

        When the request budget is spent, the previous reading (no older than ``max_age``) stands in:
        keeping under the backend's rate limit matters more than a fresh counter.
        """
        try:
            try:
                data = await self.admin("GET", "/api/cache/stats")
            except BackendError as exc:
                if exc.status != 404:
                    raise
                data = await self.admin("GET", "/api/admin/cache/stats")
        except BackendError as exc:
            last = self._last_cache
            age = self._clock() - last[0] if last is not None else 0.0
            if exc.status == 429 and last is not None and age <= max_age:
                return replace(last[1], age_seconds=max(age, 1e-6))
            raise
        sample = parse_cache_stats(data)
        self._last_cache = (self._clock(), sample)
        return sample

    async def sampled_cache_stats(self, hot_endpoints: int = 0) -> CacheStatsSample:
        """Cache stats for a sample: read when the budget has room beyond the hot probe's ``hot_endpoints`` calls,
        and at least once per ``cache_interval``; otherwise the last reading stands in.

        At a 1 s sample interval the cache stats would otherwise take the whole budget (they go out as the probe
        does) and leave the hot endpoints untimed. A reading that stands in carries its age, so it is shown but
        not counted as a new measurement.
        """
        last = self._last_cache
        if last is not None:
            age = self._clock() - last[0]
            room = self._budget.available() >= self._budget.action_reserve + hot_endpoints + 1.0
            if age < self._cache_interval and not room:
                return replace(last[1], age_seconds=max(age, 1e-6))
        return await self.cache_stats()

    async def probe(self, hot_endpoints: tuple[str, ...]) -> ProbeSample:  # noqa: PLR0912, PLR0915 -- the probe's steps in order: health, hot endpoints, budget, timing
        """GET /health and the hot endpoints; the mean time of the hot ones is the response time."""
        requests = errors = received = 0
        times: dict[str, float] = {}
        available = False
        error: str | None = None
        try:
            health = await self.get_public("/health")
            requests += 1
            received += len(health.body)
            available = health.status == 200
            if available:
                # a 200 that is not the backend's JSON is something else on its port (a proxy's error page)
                try:
                    parse_json_object(health.body, "/health")
                except BackendError as exc:
                    available, error = False, str(exc)
            else:
                error = f"/health answered {health.status}"
            if not available:
                errors += 1
            times["/health"] = health.seconds
        except BackendError as exc:
            requests += 1
            errors += 1
            error = str(exc)
        skipped: list[str] = []
        if available and hot_endpoints:
            # the longest untimed first, so that a budget short of all of them still times each in turn
            order = sorted(hot_endpoints, key=lambda e: self._hot_timed.get(e, float("-inf")))
            for endpoint in order:
                try:
                    resp = await self.get_public(endpoint)
                except BackendError as exc:
                    if exc.status == 429:
                        skipped.append(endpoint)
                        continue
                    requests += 1
                    errors += 1
                    continue
                requests += 1
                received += len(resp.body)
                if resp.status >= 500:
                    errors += 1
                else:
                    times[endpoint] = resp.seconds
                    self._hot_timed[endpoint] = self._clock()
        hot = [times[e] for e in hot_endpoints if e in times]
        stale: str | None = None
        if hot:
            response_time: float | None = sum(hot) / len(hot)
        elif hot_endpoints and available:
            # /health is no stand-in for the hot endpoints: it never touches the database or the cache
            response_time = None
            if skipped:
                stale = "hot endpoints not timed: request budget spent"
        else:
            response_time = times.get("/health")
        return ProbeSample(
            available=available,
            response_time_seconds=response_time,
            endpoint_seconds=times,
            requests=requests,
            errors=errors,
            bytes_received=received,
            error=error,
            stale_reason=stale,
        )
