"""The HTTP API (aiohttp): the specification's two endpoints, Prometheus, health, strategies and history.

Reads are open; every write needs ``Authorization: Bearer <token>``, compared in constant time. Errors
are JSON ``{"error": {"code", "message"}}`` with the right status, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from config.settings import Mode, Settings
from metrics.prometheus import Exposition
from metrics.signals import signal_label, signal_unit
from optimizer.engine import Engine, EngineStopping
from optimizer.executors import run_in
from optimizer.state import RECENT_KEPT, UNCHANGED, HistoryReader, HistoryStats, StateStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
MAX_ROW_ID = 2**63 - 1
# A client that sends its headers and then stalls must not hold a handler (and a connection) forever.
BODY_TIMEOUT_SECONDS = 10.0
# Idle connections, and ones still sending their request line and headers, are closed after this long.
IDLE_TIMEOUT_SECONDS = 30.0
# After answering early (401, 408, 413) the server reads and drops the rest of the body this long, so a
# well-behaved client still sees the answer; a stalled one is closed after it (aiohttp's default is 10 s).
LINGER_SECONDS = 2.0
# Expensive reads served at once, and how long one more waits for its turn before a 503 with Retry-After.
MAX_CONCURRENT_READS = 4
READ_QUEUE_SECONDS = 2.0
# How stale /performance-metrics may be for the same sample and state version (its clock fields included).
PAGE_CACHE_SECONDS = 1.0
# /performance-metrics is rendered ahead, at each sample and round end, while it was requested this recently: a
# client polling more often than the page's age limit (a dashboard polls every 3 s and is not rendered for).
RENDER_AHEAD_SECONDS = PAGE_CACHE_SECONDS
# Tries at reading the engine's state from the API's loop before handing the read to the engine's.
READ_ATTEMPTS = 5
# Encoded GET /optimizations pages kept for the current state version, in bytes.
HISTORY_PAGES_BYTES = 4 * 1024 * 1024
# Encoded history rows kept by their content (and the rows themselves, as keys), in bytes.
ENCODED_ROWS_BYTES = 2 * 1024 * 1024
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
log = structlog.get_logger("api")


class ApiError(Exception):
    """A request the API refuses, with its HTTP status and a stable code."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message}}


def iso_now(wall: float) -> str:
    """An ISO 8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class ApiContext:
    """What the handlers read: the engine, the store, the metrics, the settings and the daemon's facts."""

    engine: Engine
    store: StateStore
    exposition: Exposition
    settings: Callable[[], Settings]
    token: str | None
    started_wall: float
    wall: Callable[[], float]
    health: Callable[[], tuple[bool, str]]
    status: Callable[[], dict[str, Any]]
    alertmanager: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
    dashboard_html: bytes | None = None
    body_timeout: float = BODY_TIMEOUT_SECONDS
    hosts: HostPolicy | None = None
    reads: ReadGate = field(default_factory=lambda: ReadGate(MAX_CONCURRENT_READS, READ_QUEUE_SECONDS))
    history: HistoryReader | None = None
    history_executor: ThreadPoolExecutor | None = None
    # the loop the engine runs on, when the API is served on a loop of its own (in another thread)
    main_loop: asyncio.AbstractEventLoop | None = None
    # bumped by every write the API made (a round, a mode change, a reset): cached pages are renewed after one
    writes: int = 0

    async def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the engine's loop: what reads or changes the engine's state does not race it."""
        loop = self.main_loop
        if loop is None or loop is asyncio.get_running_loop():
            return fn()

        async def call() -> T:
            return fn()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    async def read_engine(self, fn: Callable[[], T]) -> T:
        """``fn()`` reading the engine's state from the API's own loop, without waiting for the engine's.

        Single reads are atomic under the interpreter's lock; a walk over a dict or deque the engine changes
        meanwhile can fail with RuntimeError, and is tried again; after a few failures it runs on the engine's loop.
        """
        for _ in range(READ_ATTEMPTS):
            try:
                return fn()
            except RuntimeError:
                await asyncio.sleep(0)
        return await self.on_main(fn)

    async def await_main(self, make: Callable[[], Awaitable[T]]) -> T:
        """``await make()`` on the engine's loop (a round, a mode change), the answer back on the API's loop."""
        loop = self.main_loop
        if loop is None or loop is asyncio.get_running_loop():
            return await make()

        async def call() -> T:
            return await make()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    async def read_history(self, fn: Callable[[HistoryReader | StateStore], T]) -> T:
        """Run a history read off the loop: on the history pool over its own connections when the daemon has them."""
        if self.history is not None and self.history_executor is not None:
            return await run_in(self.history_executor, fn, self.history)
        return await asyncio.to_thread(fn, self.store)


class ReadGate:
    """At most ``limit`` expensive reads at once; one more waits up to ``wait`` seconds, then gets 503."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait
        self._slots = asyncio.Semaphore(limit)
        self.refused = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a read slot for the block; ApiError 503 (``busy``) when none comes free in time."""
        try:
            async with asyncio.timeout(self.wait):
                await self._slots.acquire()
        except TimeoutError:
            self.refused += 1
            raise ApiError(
                503, "busy", f"more than {self.limit} expensive reads at once; retry shortly", retry_after=1
            ) from None
        try:
            yield
        finally:
            self._slots.release()


class HostPolicy:
    """Which Host and Origin values the API answers: its own address, localhost, and configured names.

    A page in the operator's browser from another site (DNS rebinding) sends its own name as Host: 421.
    A state-changing request from another origin (a form posted cross-site) gets 403.
    """

    LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

    def __init__(self, listen_host: str, port: int, allowed: Iterable[str] = ()) -> None:
        self.port = port
        names = {n.lower() for n in self.LOCAL_NAMES}
        self.any_address = listen_host in ("0.0.0.0", "::", "")
        if not self.any_address:
            names.add(listen_host.lower())
        self._own = frozenset(names)
        any_port: set[str] = set()
        with_port: set[tuple[str, int]] = set()
        for entry in allowed:
            name, port_text = _split_host(entry.lower())
            if port_text is None:
                any_port.add(name)
            elif port_text.isdigit():
                with_port.add((name, int(port_text)))
        self._any_port = frozenset(any_port)
        self._with_port = frozenset(with_port)

    def allows(self, authority: str) -> bool:
        """Whether ``host[:port]`` names this API."""
        name, port_text = _split_host(authority.strip().lower())
        if not name:
            return False
        if port_text is None:
            port = None
        elif port_text.isdigit():
            port = int(port_text)
        else:
            return False
        if name in self._any_port or (port is not None and (name, port) in self._with_port):
            return True
        own = name in self._own or (self.any_address and _is_address(name))
        return own and (port == self.port or (port is None and self.port == 80))

    def allows_origin(self, origin: str) -> bool:
        """Whether an Origin header is this API's own (http or https, an allowed host)."""
        scheme, sep, authority = origin.strip().lower().partition("://")
        if not sep or scheme not in ("http", "https") or not authority or "/" in authority:
            return False
        name, port_text = _split_host(authority)
        if port_text is None:
            port_text = "80" if scheme == "http" else "443"
        return self.allows(f"[{name}]:{port_text}" if ":" in name else f"{name}:{port_text}")


def _split_host(authority: str) -> tuple[str, str | None]:
    """``name`` and ``port`` (None when absent) of ``host[:port]`` or ``[v6][:port]``."""
    if authority.startswith("["):
        name, _, rest = authority[1:].partition("]")
        if rest.startswith(":"):
            return name, rest[1:]
        return name, None if not rest else "x"
    name, sep, port = authority.partition(":")
    if sep and ":" in port:
        return authority, None  # a bare IPv6 address
    return name, port if sep else None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; log unexpected ones with their traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = web.json_response(error_body(exc.code, exc.message), status=exc.status)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 408:
            # the rest of that body may never come: do not wait for it on this connection
            response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(error_body("body_too_large", "request body is too large"), status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return web.json_response(error_body(code, exc.reason or "error"), status=exc.status)
    except Exception:
        log.exception("api_handler_crashed", path=request.path, method=request.method)
        return web.json_response(error_body("internal", "internal error; see the daemon's log"), status=500)


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """421 for a Host that is not this API's; 403 for a state-changing request from another origin."""
    policy = request.app[CTX].hosts
    if policy is not None:
        host = request.headers.get("Host")
        if host is not None and not policy.allows(host):
            return web.json_response(
                error_body(
                    "misdirected_request", "this API answers only its own address, localhost and api.allowed_hosts"
                ),
                status=421,
            )
        if request.method in STATE_CHANGING:
            origin = request.headers.get("Origin")
            cross_site = request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
            if cross_site or (origin is not None and not policy.allows_origin(origin)):
                return web.json_response(
                    error_body("cross_origin", "state-changing requests from another origin are refused"), status=403
                )
    return await handler(request)


def require_token(request: web.Request) -> None:
    """Check the bearer token in constant time; raise 401 otherwise."""
    token = request.app[CTX].token
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if token is None:
        raise ApiError(401, "unauthorized", "writes need a token and none is configured")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "invalid bearer token")


async def read_json_object(request: web.Request, *, optional: bool) -> dict[str, Any]:
    """Parse the body as a JSON object (empty allowed when optional); 400 with a clear message otherwise."""
    try:
        async with asyncio.timeout(request.app[CTX].body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "body_timeout", "the request body did not arrive in time") from None
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_body", "a JSON object body is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return data


# handlers -------------------------------------------------------------------------------------------------------


def _strategy_view(ctx: ApiContext, name: str) -> dict[str, Any]:
    engine = ctx.engine
    view = engine.view(name)
    return {
        "name": name,
        "enabled": view.enabled,
        "mode": str(view.mode),
        "modeOverride": str(view.mode_override) if view.mode_override else None,
        "armed": view.armed,
        "armedBy": list(view.armed_by),
        "cooldownSeconds": view.cooldown_seconds,
        "cooldownLeftSeconds": round(view.cooldown_left_seconds, 3),
        "budgetLeft": view.budget_left,
        "pacing": view.pacing,
        "breakerOpen": view.breaker_open,
        "breakerReason": view.breaker_reason,
        "consecutiveFailures": view.consecutive_failures,
        "score": round(view.score, 3),
        "lastOutcome": view.last_outcome,
        "lastVerdict": view.last_verdict,
        "triggers": [
            {
                "signal": t.signal,
                "value": engine.windows.last(t.signal),
                "enter": t.enter,
                "exit": t.exit,
                "above": t.above,
                "role": t.role,
                "label": signal_label(t.signal),
                "unit": str(signal_unit(t.signal)),
            }
            for t in view.triggers
        ],
        "findings": [f.as_dict() for f in view.findings],
    }


def _sum_window(engine: Engine, signal: str) -> float:
    return sum(engine.windows.values(signal))


async def performance_metrics(request: web.Request) -> web.Response:
    """GET /performance-metrics: the specification's JSON shape, plus strategies and sources.

    The page is rendered once per sample, round end, and write through the API, and is never more than
    ``PAGE_CACHE_SECONDS`` old (what changes between those, a verdict or a reload, shows within that), so a busy
    poller costs a dictionary look-up; a new rendering waits for a read slot like the history reads. Whether a
    round runs is put into the rendered bytes at each answer, so a round's start renders nothing.
    """
    ctx = request.app[CTX]
    engine = ctx.engine
    key = _page_key(ctx)
    pages = request.app[PAGES]
    now = asyncio.get_running_loop().time()
    pages.asked_at = now
    payload = pages.fresh(key, now)
    if payload is None:

        async def render() -> bytes:
            async with ctx.reads.slot():
                page = pages.fresh(key, now)
                if page is None:
                    body = await _performance_body(ctx, request.app[HISTORY], key[1], request.app[SUMMARIES])
                    body["performance"]["isOptimizing"] = _OPTIMIZING
                    page = json.dumps(body).encode()
                    if _page_key(ctx) == key:  # not superseded meanwhile (by a page rendered ahead, say)
                        pages.store(key, now, page)
                return page

        payload = await pages.shared(key, render)
    payload = payload.replace(_OPTIMIZING_JSON, b"true" if engine.optimizing else b"false", 1)
    return web.Response(body=payload, content_type="application/json")


def _page_key(ctx: ApiContext) -> tuple[int | None, int, int]:
    """What /performance-metrics is rendered anew for: the sample, the rounds run, the API's writes."""
    latest = ctx.engine.latest
    return (latest.seq if latest is not None else None, ctx.engine.rounds_run, ctx.writes)


def render_ahead(app: web.Application) -> bool:
    """(On the engine's loop, after a sample and at a round's end.) Render /performance-metrics for what changed
    now, when it was asked for within ``RENDER_AHEAD_SECONDS``, so that its requests find the page ready instead of
    rendering it on the API's loop; True when it rendered.

    Only when the history's figures are known without a read (``StateStore.history_summary``): otherwise the
    next request renders it as before. Rounds back to back change the page at every sample and round end; the
    API then only answers bytes.
    """
    ctx = app[CTX]
    pages = app[PAGES]
    now = time.monotonic()
    if now - pages.asked_at > RENDER_AHEAD_SECONDS:
        return False
    key = _page_key(ctx)
    if pages.fresh(key, now) is not None:
        return False
    summary = app[SUMMARIES].get(ctx.store)
    if summary is None:
        return False
    body = _performance_dict(ctx, summary)
    body["performance"]["isOptimizing"] = _OPTIMIZING
    pages.store(key, now, json.dumps(body).encode())
    return True


# What a rendered /performance-metrics page holds in place of isOptimizing until it is answered.
_OPTIMIZING = "\0optimizing\0"
_OPTIMIZING_JSON = json.dumps(_OPTIMIZING).encode()


@dataclass(slots=True)
class PageCache:
    """One rendered page, reused for the same key within ``max_age`` seconds; one rendering at a time per key.

    Written by the API's loop and by ``render_ahead`` on the engine's: the key, time and payload change together.
    """

    max_age: float = PAGE_CACHE_SECONDS
    entry: tuple[Any, float, bytes] = (None, float("-inf"), b"")
    pending: tuple[Any, asyncio.Future[bytes]] | None = None
    asked_at: float = float("-inf")  # when the page was last requested (the loop's clock, time.monotonic)

    @property
    def key(self) -> Any:
        """The key of the page held."""
        return self.entry[0]

    def fresh(self, key: Any, now: float) -> bytes | None:
        """The payload when it was rendered for ``key`` less than ``max_age`` ago."""
        held, rendered_at, payload = self.entry
        if key == held and now - rendered_at < self.max_age:
            return payload
        return None

    def store(self, key: Any, now: float, payload: bytes) -> None:
        """Keep ``payload`` as the rendering for ``key``."""
        self.entry = (key, now, payload)

    async def shared(self, key: Any, render: Callable[[], Awaitable[bytes]]) -> bytes:
        """``await render()``, once for all the requests for ``key`` that arrive while it runs (rather than one
        rendering per read slot)."""
        pending = self.pending
        if pending is None or pending[0] != key or pending[1].done():
            pending = (key, asyncio.ensure_future(render()))
            self.pending = pending
        return await asyncio.shield(pending[1])


async def _performance_body(
    ctx: ApiContext, history: HistoryCache, rounds_run: int, known: KnownSummary | None = None
) -> dict[str, Any]:
    summary = await history.get(
        ctx.store, ctx.read_history, rounds_run=rounds_run, round_running=ctx.engine.optimizing, known=known
    )
    return await ctx.read_engine(lambda: _performance_dict(ctx, summary))


def _performance_dict(ctx: ApiContext, summary: DecisionSummary) -> dict[str, Any]:
    engine = ctx.engine
    settings = ctx.settings()
    now = ctx.wall()
    (count, ok, avg_ms, last), recent = summary
    snap = engine.latest
    host = snap.host if snap else None
    probe = snap.probe if snap else None
    requests = _sum_window(engine, "probe_requests")
    errors = _sum_window(engine, "probe_errors")
    body = {
        "workerId": os.getpid(),
        "timestamp": iso_now(now),
        "performance": {
            "isEnabled": settings.enable_performance_optimization,
            "isOptimizing": engine.optimizing,
            "lastOptimization": int(last * 1000) if last else None,
            "optimizationCount": count,
            "successRate": round(ok / count, 4) if count else 0.0,
            "averageDuration": round(avg_ms, 3),
        },
        "currentMetrics": {
            "memoryUsage": round(host.memory_used_ratio, 4) if host else None,
            "cpuUsage": round(host.cpu_ratio, 4) if host else None,
            "activeConnections": snap.tcp.get("established") if snap and snap.tcp else None,
            "responseTime": round(probe.response_time_seconds * 1000, 3)
            if probe and probe.response_time_seconds is not None
            else None,
            "throughput": round(host.net_rx_bytes_per_second + host.net_tx_bytes_per_second, 1) if host else None,
            "errorRate": round(errors / requests, 4) if requests else 0.0,
            "systemLoad": list(host.load) if host else [0.0, 0.0, 0.0],
            "uptime": round(now - ctx.started_wall, 3),
        },
        "recentOptimizations": recent,
        "mode": str(engine.global_mode),
        "strategies": {name: _strategy_view(ctx, name) for name in engine.strategy_names()},
        "baselines": dict(engine.baselines),
        "sources": {
            name: {"up": s.up, "error": s.error, "durationSeconds": round(s.duration_seconds, 4)}
            for name, s in (snap.sources.items() if snap else ())
        },
        "findings": [f.as_dict() for f in engine.findings.values()],
        # restart-only settings a reload changed: the running values stay until a restart
        "restartNeeded": list(ctx.status().get("restartNeeded", [])),
    }
    return body


DecisionSummary = tuple[HistoryStats, list[dict[str, Any]]]


def _summary(stats: HistoryStats, rows: Iterable[tuple[Any, ...]]) -> DecisionSummary:
    """The history figures as the page shows them: the counts, and the newest rows as decision dicts."""
    return stats, [StateStore._record(r).as_dict() for r in rows]


class KnownSummary:
    """The store's in-memory history summary (``StateStore.history_summary``) as the page shows it, converted once
    per change of it; None when the store does not know it. Used from both loops: one tuple, replaced whole."""

    def __init__(self) -> None:
        self._held: tuple[int, DecisionSummary] | None = None

    def get(self, store: StateStore) -> DecisionSummary | None:
        """(decision_stats(), the ten newest decisions as dicts), or None when they must be read."""
        known = store.history_summary()
        if known is None:
            return None
        version, stats, rows = known
        held = self._held
        if held is not None and held[0] == version:
            return held[1]
        summary = _summary(stats, rows)
        self._held = (version, summary)
        return summary


@dataclass(slots=True)
class HistoryCache:
    """The history figures /performance-metrics shows, read once per version of the state database.

    The counts scan the whole history table and both reads hop to a worker thread; under a busy poller that was
    most of the route's cost. Any write bumps ``StateStore.version``, so a new decision shows at once; requests
    arriving while a read is in flight share it. While a round runs, its own writes do not make the figures read
    again: the page shows the round once it ended (when the page is rendered anew, and the figures read again).
    When the store knows the figures without a read (``known``: new rows since the last read), no read is made.
    """

    version: int = -1
    rounds: int = -1  # the engine's rounds_run when the figures were read
    pending: asyncio.Future[DecisionSummary] | None = None

    async def get(
        self,
        store: StateStore,
        run: Callable[[Callable[[HistoryReader | StateStore], DecisionSummary]], Awaitable[DecisionSummary]]
        | None = None,
        *,
        rounds_run: int = -1,
        round_running: bool = False,
        known: KnownSummary | None = None,
    ) -> DecisionSummary:
        """(decision_stats(), the ten newest decisions as dicts), current for the store's version.

        ``run`` runs the read off the loop (the API's history pool); a worker thread over ``store`` when None.
        ``rounds_run`` and ``round_running`` are the engine's: the figures read since the last round ended are
        kept while the next one runs. A read's figures are offered back to the store (``offer_history_summary``).
        """
        during_round = round_running and self.rounds == rounds_run >= 0
        if self.pending is None or (self.version != store.version and not during_round):
            version = self.version = store.version
            self.rounds = rounds_run
            summary = known.get(store) if known is not None else None
            if summary is not None:
                self.pending = asyncio.get_running_loop().create_future()
                self.pending.set_result(summary)
            else:

                def read(history: HistoryReader | StateStore) -> DecisionSummary:
                    stats, rows = HistoryCache._read(history)
                    store.offer_history_summary(version, stats, rows)
                    return _summary(stats, rows)

                self.pending = asyncio.ensure_future(run(read) if run is not None else asyncio.to_thread(read, store))
        pending = self.pending
        try:
            return await asyncio.shield(pending)
        except Exception:
            if self.pending is pending:
                self.pending = None  # a failed read is not cached
            raise

    @staticmethod
    def _read(history: HistoryReader | StateStore) -> tuple[HistoryStats, list[tuple[Any, ...]]]:
        return history.decision_stats(), history.recent_rows(RECENT_KEPT)


HISTORY: web.AppKey[HistoryCache] = web.AppKey("history", HistoryCache)
PAGES: web.AppKey[PageCache] = web.AppKey("pages", PageCache)
SUMMARIES: web.AppKey[KnownSummary] = web.AppKey("summaries", KnownSummary)


async def performance_optimize(request: web.Request) -> web.Response:
    """POST /performance-optimize: run a round now (or join the running one)."""
    require_token(request)
    ctx = request.app[CTX]
    body = await read_json_object(request, optional=True)
    unknown = set(body) - {"strategy", "dryRun"}
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(sorted(unknown))}")
    strategy = body.get("strategy")
    if strategy is not None and not isinstance(strategy, str):
        raise ApiError(400, "invalid_body", "strategy must be a string")
    if strategy is not None and strategy not in ctx.engine.strategy_names():
        known = ", ".join(ctx.engine.strategy_names())
        raise ApiError(400, "unknown_strategy", f"unknown strategy {strategy[:64]!r}; known: {known}")
    dry_run = body.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "invalid_body", "dryRun must be true or false")
    try:
        result = await ctx.await_main(
            lambda: ctx.engine.request_round(trigger="manual", strategy=strategy, dry_run=dry_run, manual=True)
        )
    except EngineStopping:
        ctx.writes += 1
        raise ApiError(503, "stopping", "the daemon is stopping") from None
    except BaseException:
        # a round that failed may still have changed what the pages show; one that ended bumped rounds_run,
        # which renews them already (a second renewal per round only rendered the same page again)
        ctx.writes += 1
        raise
    return web.json_response(
        {
            "message": "Optimization round joined" if result.joined else "Optimization round completed",
            "worker": os.getpid(),
            "timestamp": iso_now(ctx.wall()),
            "runId": result.run_id,
            "joined": result.joined,
            "decisions": list(result.decision_ids),
        }
    )


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: the daemon's own metrics and the cached snapshot's (never samples; rendered once per change)."""
    return web.Response(body=request.app[CTX].exposition.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 while the decision loop's heartbeat is fresh, else 503 with the reason."""
    ctx = request.app[CTX]
    ok, reason = ctx.health()
    body = {"status": "ok" if ok else "unhealthy", "reason": reason, **ctx.status()}
    return web.json_response(body, status=200 if ok else 503)


async def strategies(request: web.Request) -> web.Response:
    """GET /strategies: each strategy's state, score, cooldown and breaker, and the baselines."""
    ctx = request.app[CTX]
    body = await ctx.read_engine(
        lambda: {
            "strategies": [_strategy_view(ctx, n) for n in ctx.engine.strategy_names()],
            "baselines": dict(ctx.engine.baselines),
        }
    )
    return web.json_response(body)


def _strategy_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.app[CTX].engine.strategy_names():
        raise ApiError(404, "unknown_strategy", f"unknown strategy {name[:64]!r}")
    return name


async def strategy_mode(request: web.Request) -> web.Response:
    """POST /strategies/{name}/mode {"mode": "observe"|"dry_run"|"enforce"}."""
    require_token(request)
    name = _strategy_name(request)
    body = await read_json_object(request, optional=False)
    raw = body.get("mode")
    try:
        mode = Mode(raw) if isinstance(raw, str) else None
    except ValueError:
        mode = None
    if mode is None:
        raise ApiError(400, "invalid_mode", "mode must be one of observe, dry_run, enforce")
    ctx = request.app[CTX]
    await ctx.await_main(lambda: ctx.engine.set_mode(name, mode))
    ctx.writes += 1
    return web.json_response(await ctx.on_main(lambda: _strategy_view(ctx, name)))


async def strategy_reset(request: web.Request) -> web.Response:
    """POST /strategies/{name}/reset: close the breaker and clear the failures."""
    require_token(request)
    name = _strategy_name(request)
    ctx = request.app[CTX]
    await ctx.await_main(lambda: ctx.engine.reset(name))
    ctx.writes += 1
    return web.json_response(await ctx.on_main(lambda: _strategy_view(ctx, name)))


async def optimizations(request: web.Request) -> web.Response:
    """GET /optimizations?after=ID&limit=N&strategy=NAME: the decision history, oldest first."""

    ctx = request.app[CTX]
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_query", "after and limit must be whole numbers") from None
    # SQLite row ids are signed 64-bit: a larger ``after`` would overflow the query parameter (a 500)
    if not 0 <= after <= MAX_ROW_ID or not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_query", f"after must be within 0..{MAX_ROW_ID} and limit within 1..1000")
    strategy = request.query.get("strategy")
    key = (after, limit, strategy)
    pages = request.app[HISTORY_PAGES]
    rows = request.app[HISTORY_ROWS]
    version = ctx.store.version
    payload = pages.get(version, key)
    if payload is None:

        async def read() -> bytes:
            async with ctx.reads.slot():
                kept = pages.get(version, key)
                if kept is not None:
                    return kept
                page, last, full = await ctx.read_history(
                    lambda history: _history_page(history, after, limit, strategy, rows)
                )
                pages.put(version, key, page, last=last, full=full)
                return page

        payload = await pages.shared(version, key, read)
    return web.Response(body=payload, content_type="application/json")


def _history_page(
    history: HistoryReader | StateStore,
    after: int,
    limit: int,
    strategy: str | None,
    rows: EncodedRows | None = None,
) -> tuple[bytes, int, bool]:
    """(In a history thread.) One page of GET /optimizations, read and encoded off the API's loop: its bytes, the
    id of its newest row, and whether it is full (as many rows as asked for).

    The bytes are those of ``json.dumps({"items": [...], "last": ID})``, each item encoded once per content of
    its row (``rows``) rather than once per page.
    """
    found = history.decision_rows(after=after, limit=limit, strategy=strategy)
    encode = rows.encoded if rows is not None else _encode_row
    items = b", ".join(encode(row) for row in found)
    last = found[-1][0] if found else after
    return b'{"items": [' + items + b'], "last": ' + str(last).encode() + b"}", last, len(found) == limit


def _encode_row(row: tuple[Any, ...]) -> bytes:
    return json.dumps(StateStore._record(row).as_dict()).encode()


class EncodedRows:
    """Each history row's JSON, kept by the row's whole stored content, the oldest dropped past ``budget`` bytes.

    A round's writes renew every cached page, but most of a page's rows are the same as before: the rows already
    encoded are looked up instead of decoded from the database's JSON columns and encoded again. The key is the
    row as read, so a row whose outcome or verdict changed (or another row under the same id in a new database)
    is encoded afresh: nothing served is older than the read. Shared by the history threads.
    """

    def __init__(self, budget: int = ENCODED_ROWS_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._rows: dict[tuple[Any, ...], bytes] = {}
        self._lock = threading.Lock()

    def encoded(self, row: tuple[Any, ...]) -> bytes:
        """The JSON of ``row``'s item, from the cache when this content was encoded before."""
        found = self._rows.get(row)
        if found is not None:
            return found
        encoded = _encode_row(row)
        cost = len(encoded) * 2  # the key holds the row's text too, about as long as its JSON
        if cost > self.budget:
            return encoded
        with self._lock:
            if row not in self._rows:
                self._rows[row] = encoded
                self.size += cost
                while self.size > self.budget:
                    oldest = next(iter(self._rows))
                    self.size -= len(self._rows.pop(oldest)) * 2
        return encoded

    def __len__(self) -> int:
        return len(self._rows)


@dataclass(slots=True)
class HistoryPage:
    """One encoded page of GET /optimizations: read at ``version``, its newest row ``last``, whether it is full."""

    version: int
    payload: bytes
    last: int
    full: bool


PageKey = tuple[int, int, str | None]


@dataclass(slots=True)
class HistoryPages:
    """Encoded history pages, the most recently used kept within ``budget`` bytes.

    A page of a thousand rows is most of a megabyte of JSON; many clients asking for the same one (a dashboard
    in many tabs, a scraper, a hostile loop) are served the same bytes, and the ones asking while it is read wait
    for that one read. A page stays good across later writes that changed no row of it: a full page (as many rows
    as asked for) while the history's writes since its reading were all to rows after its last one (new rows of
    a round: the oldest-first page is the same), any page while the history was not written at all (a journal
    record, a baseline). ``changed_from`` is ``StateStore.history_changed_from``.
    """

    changed_from: Callable[[int], int] = lambda version: 0
    budget: int = HISTORY_PAGES_BYTES
    size: int = 0
    pages: OrderedDict[PageKey, HistoryPage] = field(default_factory=OrderedDict)
    pending: dict[tuple[int, PageKey], asyncio.Future[bytes]] = field(default_factory=dict)

    def get(self, version: int, key: PageKey) -> bytes | None:
        """The page for ``key`` as it is at ``version`` (or later), if kept and unchanged since it was read.

        A request that looked at the version before a newer page was read gets nothing (it reads afresh), and
        does not make the newer page forgotten.
        """
        page = self.pages.get(key)
        if page is None or version < page.version:
            return None
        if version > page.version:
            changed = self.changed_from(page.version)
            if changed <= page.last if page.full else changed != UNCHANGED:
                del self.pages[key]  # changed since: forgotten, read afresh
                self.size -= len(page.payload)
                return None
            page.version = version  # the same bytes as a reading at ``version``: the next look-up starts there
        self.pages.move_to_end(key)
        return page.payload

    def put(self, version: int, key: PageKey, page: bytes, *, last: int = MAX_ROW_ID, full: bool = False) -> None:
        """Keep ``page`` (read at ``version``; its newest row ``last``, ``full`` when it has as many rows as asked
        for), dropping the least recently used ones over the budget; a page older than the one kept is not kept."""
        if len(page) > self.budget:
            return
        kept = self.pages.pop(key, None)
        if kept is not None:
            if kept.version > version:
                self.pages[key] = kept
                return
            self.size -= len(kept.payload)
        self.pages[key] = HistoryPage(version, page, last, full)
        self.size += len(page)
        while self.size > self.budget:
            _, dropped = self.pages.popitem(last=False)
            self.size -= len(dropped.payload)

    async def shared(self, version: int, key: PageKey, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """``await read()``, once for all the requests for ``key`` at ``version`` that arrive while it runs."""
        flight = (version, key)
        future = self.pending.get(flight)
        if future is None:
            future = asyncio.ensure_future(read())
            self.pending[flight] = future
            future.add_done_callback(lambda _: self.pending.pop(flight, None))
        return await asyncio.shield(future)


HISTORY_PAGES: web.AppKey[HistoryPages] = web.AppKey("history_pages", HistoryPages)
HISTORY_ROWS: web.AppKey[EncodedRows] = web.AppKey("history_rows", EncodedRows)


# The dashboard's four charts; GET /samples returns these when no signals are named.
CHARTED_SIGNALS = ("cpu_ratio", "memory_used_ratio", "tcp_established", "response_time_seconds")
MAX_SAMPLE_SIGNALS = 16
_SIGNAL_NAME = re.compile(r"^[a-z0-9_]{1,64}(:[A-Za-z0-9_]{1,64})?$")


async def samples(request: web.Request) -> web.Response:
    """GET /samples?signals=a,b&since=MS: the recent window of each signal, for charts that start with history.

    The points are the daemon's own detection windows (``sampler.window_size`` samples per signal, so bounded),
    timed in epoch milliseconds; ``since`` returns only newer points, so a page polls for what it lacks.
    """
    ctx = request.app[CTX]
    raw = request.query.get("signals", "")
    names = [n for n in raw.split(",") if n] if raw else list(CHARTED_SIGNALS)
    if len(names) > MAX_SAMPLE_SIGNALS or not all(_SIGNAL_NAME.match(n) for n in names):
        raise ApiError(
            400,
            "invalid_query",
            f"signals must be up to {MAX_SAMPLE_SIGNALS} comma-separated signal names, e.g. cpu_ratio,wal_bytes",
        )
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise ApiError(400, "invalid_query", "since must be a whole number of epoch milliseconds") from None
    if not 0 <= since <= MAX_ROW_ID:
        raise ApiError(400, "invalid_query", "since must be a whole number of epoch milliseconds, 0 or more")
    async with ctx.reads.slot():
        return web.json_response(await ctx.read_engine(lambda: _samples_body(ctx, names, since)))


def _samples_body(ctx: ApiContext, names: list[str], since: int) -> dict[str, Any]:
    engine = ctx.engine
    latest = engine.latest
    # the windows are timed on the monotonic clock; the latest sample ties it to the wall clock
    offset = latest.wall_time - latest.monotonic if latest is not None else 0.0
    series = []
    for name in dict.fromkeys(names):
        points = [[round((at + offset) * 1000), value] for at, value in engine.windows.points(name)]
        series.append(
            {
                "signal": name,
                "label": signal_label(name),
                "unit": str(signal_unit(name)),
                "points": [p for p in points if p[0] > since],
            }
        )
    return {"timestamp": round(ctx.wall() * 1000), "windowSamples": engine.windows.size, "signals": series}


async def alertmanager(request: web.Request) -> web.Response:
    """POST /alertmanager: the Alertmanager webhook (version 4)."""
    require_token(request)
    ctx = request.app[CTX]
    if ctx.alertmanager is None:
        raise ApiError(404, "not_found", "the Alertmanager receiver is not enabled")
    body = await read_json_object(request, optional=False)
    receiver = ctx.alertmanager
    try:
        answer = await ctx.await_main(lambda: receiver(body))
    finally:
        ctx.writes += 1
    return web.json_response(answer)


async def dashboard(request: web.Request) -> web.Response:
    """GET /: the dashboard page."""
    ctx = request.app[CTX]
    if ctx.dashboard_html is None:
        raise ApiError(404, "not_found", "no dashboard")
    return web.Response(body=ctx.dashboard_html, content_type="text/html", charset="utf-8")


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", dashboard),
    ("GET", "/performance-metrics", performance_metrics),
    ("POST", "/performance-optimize", performance_optimize),
    ("GET", "/metrics", metrics_handler),
    ("GET", "/health", health),
    ("GET", "/strategies", strategies),
    ("POST", "/strategies/{name}/mode", strategy_mode),
    ("POST", "/strategies/{name}/reset", strategy_reset),
    ("GET", "/optimizations", optimizations),
    ("GET", "/samples", samples),
    ("POST", "/alertmanager", alertmanager),
)


def build_app(ctx: ApiContext, *, client_max_size: int) -> web.Application:
    """The aiohttp application with every route and the error middleware."""
    app = web.Application(middlewares=[host_middleware, errors_middleware], client_max_size=client_max_size)
    app[CTX] = ctx
    app[HISTORY] = HistoryCache()
    app[PAGES] = PageCache()
    app[SUMMARIES] = KnownSummary()
    app[HISTORY_PAGES] = HistoryPages(ctx.store.history_changed_from)
    app[HISTORY_ROWS] = EncodedRows()
    for method, path, handler in ROUTES:
        if method == "GET":
            # HEAD answers wherever GET does (same status and headers, no body): probes and curl -I
            app.router.add_get(path, handler, allow_head=True)
        else:
            app.router.add_route(method, path, handler)
    return app
