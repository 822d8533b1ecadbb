"""Helpers of the chaos tests: a misbehaving proxy in front of the testbed, and the checks every fault shares.

Every fault test asserts the same four things: the daemon still answers /health and /metrics over real
HTTP, the faulty source is marked down with a reason, no history or journal row was lost, and the log has
no traceback. Recovery is measured in samples and seconds and printed (``-s`` shows it) so the figures in
the reliability table come from a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from optimizer.app import Daemon
from tests.harness import api_base

HUGE_BODY_BYTES = 4 * 1024 * 1024
RECOVERY_SAMPLES_LIMIT = 40
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


class Mode(StrEnum):
    """How the proxy in front of the testbed behaves."""

    OK = "ok"
    REFUSED = "refused"
    HANG = "hang"
    SLOW = "slow"
    ERROR_500 = "500"
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    HUGE = "huge"


class OddBackend:
    """A proxy on 127.0.0.1 that forwards to the testbed in ``ok`` mode and misbehaves in the others."""

    def __init__(self, upstream: str, *, slow_seconds: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = Mode.OK
        self.slow_seconds = slow_seconds
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client: ClientSession | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Bind a free port and serve."""
        self._client = ClientSession(timeout=ClientTimeout(total=30), auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._bind()

    async def _bind(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            server: Any = self._site._server
            self.port = server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: Mode) -> None:
        """Switch behaviour; refused closes the listening socket, leaving it reopens it on the same port."""
        if mode is Mode.REFUSED and self._site is not None:
            await self._site.stop()
            self._site = None
            # kept-alive connections would still be served: drop them too, as a dead process would
            assert self._runner is not None and self._runner.server is not None
            for handler in list(self._runner.server.connections):
                handler.force_close()
        elif mode is not Mode.REFUSED and self._site is None:
            await self._bind()
        if mode is not Mode.HANG:
            # let the hung handlers go, so their connections close
            self._release.set()
            self._release = asyncio.Event()
        self.mode = mode

    async def close(self) -> None:
        """Stop serving and release everything."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode is Mode.HANG:
            await self._release.wait()
            return web.Response(status=503, text="released")
        if mode is Mode.SLOW:
            await asyncio.sleep(self.slow_seconds)
            return await self._forward(request)
        if mode is Mode.ERROR_500:
            return web.json_response({"success": False, "message": "Internal server error"}, status=500)
        if mode is Mode.GARBAGE:
            return web.Response(body=b"<html>\x00\xff\xfe garbage", content_type="application/json")
        if mode is Mode.TRUNCATED:
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = 4096
            await response.prepare(request)
            await response.write(b'{"status":"ok","timest')
            # the connection drops before the promised body has arrived
            assert request.transport is not None
            request.transport.close()
            return response
        if mode is Mode.HUGE:
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            chunk = b" " * 65536
            with contextlib.suppress(ConnectionError):
                for _ in range(HUGE_BODY_BYTES // len(chunk)):
                    await response.write(chunk)
            return response
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        async with self._client.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=data, headers=out)


@contextlib.asynccontextmanager
async def odd_backend(upstream: str, *, slow_seconds: float) -> AsyncIterator[OddBackend]:
    """An OddBackend for the duration of the block."""
    odd = OddBackend(upstream, slow_seconds=slow_seconds)
    await odd.start()
    try:
        yield odd
    finally:
        await odd.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Served:
    """What the daemon's API answered while a fault was on."""

    health_status: int
    health_reason: str
    metrics_status: int
    source_up: dict[str, float]
    sources: dict[str, Any]


_SOURCE_UP = re.compile(r'^cctv_optimizer_source_up\{source="([a-z]+)"\} ([0-9.]+)$', re.MULTILINE)


async def served(daemon: Daemon) -> Served:
    """GET /health, /metrics and /performance-metrics from the daemon over real HTTP."""
    async with ClientSession(base_url=api_base(daemon), timeout=ClientTimeout(total=10)) as http:
        async with http.get("/health") as resp:
            health_status = resp.status
            health = await resp.json()
        async with http.get("/metrics") as resp:
            metrics_status = resp.status
            text = await resp.text()
        async with http.get("/performance-metrics") as resp:
            perf = await resp.json()
    return Served(
        health_status=health_status,
        health_reason=str(health.get("reason", health.get("status", ""))),
        metrics_status=metrics_status,
        source_up={name: float(value) for name, value in _SOURCE_UP.findall(text)},
        sources=perf["sources"],
    )


def row_ids(state_db: Path) -> dict[str, set[int]]:
    """Ids of the rows in the daemon's history and journal, read-only."""
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
    try:
        return {
            table: {int(r[0]) for r in conn.execute(f"SELECT id FROM {table}")} for table in ("decisions", "journal")
        }
    finally:
        conn.close()


def lost_rows(before: dict[str, set[int]], after: dict[str, set[int]]) -> int:
    """How many history and journal rows present before are gone after."""
    return sum(len(before[table] - after.get(table, set())) for table in before)


def tracebacks(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Captured log events that carry a traceback (log.exception or exc_info)."""
    return [e for e in events if e.get("exc_info") or e.get("log_level") in ("critical", "exception")]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """How long a source took to come back after the fault ended."""

    samples: int
    seconds: float


async def recover(daemon: Daemon, source: str, *, before: Callable[[], Awaitable[None]] | None = None) -> Recovery:
    """Sample until ``source`` is up again (bounded); the samples and seconds it took."""
    started = time.monotonic()
    for n in range(1, RECOVERY_SAMPLES_LIMIT + 1):
        if before is not None:
            await before()
        snap = await daemon.sample_now()
        status = snap.sources.get(source)
        if status is not None and status.up:
            return Recovery(samples=n, seconds=time.monotonic() - started)
    raise AssertionError(f"{source} still down after {RECOVERY_SAMPLES_LIMIT} samples")


def report(fault: str, **figures: Any) -> None:
    """Print one line of figures for the reliability table (shown with ``pytest -s``)."""
    shown = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\nCHAOS {fault}: {shown}")
