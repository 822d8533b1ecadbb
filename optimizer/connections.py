"""The API's connection limits: a cap below the descriptor limit, a header timeout, and a quiet accept-error log.

A client that opens thousands of connections (or trickles header bytes on each) must not take the descriptors
the sampler, the strategies and the state database need. So:

- the API holds at most ``cap`` connections: ``api.max_connections``, and never more than the soft
  ``RLIMIT_NOFILE`` less ``api.reserved_descriptors`` less what the daemon had open when it started; at the cap a
  new connection takes the place of the oldest one still waiting for its request headers (silent, or trickling
  them), else of the oldest keep-alive connection between requests, so a client that asks at once is served
  however many slow or idle ones hold on; when every connection is busy with a request, the new one is
  accepted and closed at once (a reset, no reply), which costs next to nothing, unless it is a health check:
  a few connections beyond the cap (``HEALTH_RESERVE``) are kept for ``GET``/``HEAD /health``, answered and
  then closed; anything else asked on them is closed unanswered, so a flood of busy requests cannot make
  the daemon look dead to its supervisor;
- a connection that has not sent its first request line and headers within ``api.header_timeout_seconds`` is
  closed (idle keep-alive connections are closed by the server's idle timeout);
- the kernel's listen queue is as deep as the system allows (``net.core.somaxconn``), while the loop accepts at
  most one burst at a time: a flood of connections arriving faster than the daemon accepts them waits in the
  kernel, where it costs no descriptor, instead of overflowing a short queue, which drops the next handshake
  (a health check among them) until the client retries it a second later;
- accept errors (``EMFILE`` and the like, when something else used the descriptors up) are logged as one line
  per interval with a count, instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import resource
import socket
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("api")

ACCEPT_LOG_INTERVAL_SECONDS = 10.0
HEADER_END = b"\r\n\r\n"
MAX_BACKLOG = 128
# The kernel's listen queue: it takes the smaller of this and net.core.somaxconn (4096 on current kernels).
LISTEN_QUEUE = 65_535
# At the cap, how many of the oldest connections are looked at for one idle between requests.
IDLE_SCAN = 64
# Connections beyond the cap kept for health checks, and the longest first line they may send.
HEALTH_RESERVE = 4
HEALTH_LINE_MAX = 1024
_HEALTH_METHODS = (b"GET", b"HEAD")
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def open_descriptors() -> int:
    """How many descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def accept_backlog(reserved: int) -> int:
    """How many connections the loop accepts in one go before any is refused (its accept burst).

    Those descriptors are held (briefly) beyond the cap, so the cap leaves room for one burst besides the reserve.
    The kernel's listen queue is deeper (``LISTEN_QUEUE``): what waits there holds no descriptor of the daemon.
    """
    return max(8, min(MAX_BACKLOG, reserved))


def connection_cap(
    max_connections: int, reserved: int, *, soft_limit: int | None = None, in_use: int = 0, backlog: int = 0
) -> int:
    """The API's connection cap: the configured one, within the descriptors left after ``reserved``, ``in_use``,
    one accept burst (``backlog``) and the health checks' reserve."""
    if soft_limit is None:
        soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
        return max_connections
    return max(1, min(max_connections, soft_limit - reserved - in_use - backlog - HEALTH_RESERVE))


class ConnectionLimiter:
    """Counts the API's connections; at the cap closes the oldest still waiting for headers (or refuses the new one)."""

    def __init__(self, cap: int, header_timeout: float) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.current = 0
        self.rejected_total = 0
        self.evicted_total = 0
        self.header_timeouts_total = 0
        # connections beyond the cap on the health checks' reserve, and how many health checks it answered
        self.health_reserve = HEALTH_RESERVE
        self.reserve_in_use = 0
        self.reserve_answered_total = 0
        # connections still waiting for their first request's headers, oldest first
        self.waiting: dict[_Counted, None] = {}
        # every open connection, oldest first
        self.open: dict[_Counted, None] = {}
        self._refused_since_log = 0
        self._evicted_since_log = 0
        self._last_refusal_log = float("-inf")

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around the web server's own."""

        def make() -> asyncio.Protocol:
            if self.current >= self.cap:
                oldest = next(iter(self.waiting), None) or next(
                    (c for c in itertools.islice(self.open, IDLE_SCAN) if c.idle()), None
                )
                if oldest is None:
                    if self.reserve_in_use < self.health_reserve:
                        self.reserve_in_use += 1
                        return _HealthOnly(self, inner)
                    return _Refused(self)
                oldest.close()
                self.evicted_total += 1
                self._evicted_since_log += 1
                self._log_cap()
            # counted and listed from here, not from connection_made: a burst of accepts calls this many times
            # first, and a connection of the same burst must be within reach of the next one's eviction
            self.current += 1
            conn = _Counted(self, inner)
            self.waiting[conn] = None
            self.open[conn] = None
            return conn

        return make

    def refused(self) -> None:
        """Count a refused connection."""
        self.rejected_total += 1
        self._refused_since_log += 1
        self._log_cap()

    def _log_cap(self) -> None:
        """One line per interval: how many connections were refused or closed for newer ones since the last."""
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= ACCEPT_LOG_INTERVAL_SECONDS:
            log.warning(
                "api_connection_cap_reached",
                cap=self.cap,
                refused=self._refused_since_log,
                evicted=self._evicted_since_log,
                refused_total=self.rejected_total,
                evicted_total=self.evicted_total,
            )
            self._refused_since_log = 0
            self._evicted_since_log = 0
            self._last_refusal_log = now


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted."""

    def __init__(self, limiter: ConnectionLimiter) -> None:
        self._limiter = limiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._limiter.refused()
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
        else:
            transport.close()


def is_health_check(line: bytes) -> bool:
    """Whether an HTTP request line asks ``GET`` or ``HEAD /health`` (with a query or not)."""
    method, _, rest = line.partition(b" ")
    target = rest.partition(b" ")[0]
    return method in _HEALTH_METHODS and (target == b"/health" or target.startswith(b"/health?"))


class _Wrapping(asyncio.Protocol):
    """A protocol in front of aiohttp's, which it makes only once the first bytes arrive: flow control and the end
    of input go through to it once it exists (before any byte came there is nothing to answer: the transport
    closes)."""

    def __init__(self, limiter: ConnectionLimiter, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self._limiter = limiter
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        # the first request's headers are due before this fires
        self._deadline: asyncio.TimerHandle | None = None

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _abort(self) -> None:
        """Drop the connection at once (a reset where the transport can, else a close)."""
        if self._transport is not None and not self._transport.is_closing():
            abort = getattr(self._transport, "abort", None)
            if abort is not None:
                abort()
            else:
                self._transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _HealthOnly(_Wrapping):
    """A connection beyond the cap, on the health checks' reserve: its first request line decides.

    ``GET``/``HEAD /health`` goes to the web server with ``Connection: close`` put first among its headers, so
    the server closes it after the answer; anything else, or nothing within the header timeout, is closed
    unanswered. The request line is kept from the server until it is complete, so nothing else is handled.
    """

    def __init__(self, limiter: ConnectionLimiter, make_inner: Callable[[], asyncio.Protocol]) -> None:
        super().__init__(limiter, make_inner)
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(self._limiter.header_timeout, self._refuse)

    def _refuse(self) -> None:
        self._limiter.refused()
        self._cancel_deadline()
        self._abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self._transport is None or self._transport.is_closing():
            return
        self._head += data
        end = self._head.find(b"\r\n")
        if end < 0:
            if len(self._head) > HEALTH_LINE_MAX:
                self._refuse()
            return
        if not is_health_check(self._head[:end]):
            self._refuse()
            return
        self._cancel_deadline()
        self._limiter.reserve_answered_total += 1
        head, self._head = self._head, b""
        self._inner = self._make_inner()
        self._inner.connection_made(self._transport)
        self._inner.data_received(head[:end] + b"\r\nConnection: close" + head[end:])

    def connection_lost(self, exc: Exception | None) -> None:
        self._limiter.reserve_in_use -= 1
        self._cancel_deadline()
        self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)


class _Counted(_Wrapping):
    """The web server's protocol for one connection, counted, with a deadline for its first request's headers.

    The web server's protocol is made when the first bytes arrive: a connection that never sends any (a flood
    of idle ones, closed for newer ones at the cap or on the deadline) costs an accept and a timer, not a
    request handler with its task and timers, so the daemon gets through such a flood, and to the requests
    queued behind it, several times faster.
    """

    def __init__(self, limiter: ConnectionLimiter, make_inner: Callable[[], asyncio.Protocol]) -> None:
        super().__init__(limiter, make_inner)
        self._tail = b""
        # closed for a newer connection before its transport was made: dropped as soon as it is
        self._dropped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._dropped:
            self._abort()
            return
        self._deadline = asyncio.get_running_loop().call_later(self._limiter.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._limiter.header_timeouts_total += 1
        self.close()

    def idle(self) -> bool:
        """A keep-alive connection between requests: its first request came and no request is being handled now."""
        if self._deadline is not None or self._transport is None or self._transport.is_closing():
            return False
        # the web server's own flag; a server without it is never taken for idle
        return getattr(self._inner, "_request_in_progress", True) is False

    def close(self) -> None:
        """Drop the connection at once (a reset): it no longer waits for anything."""
        self._limiter.waiting.pop(self, None)
        self._limiter.open.pop(self, None)
        self._cancel_deadline()
        if self._transport is None:
            self._dropped = True
        self._abort()

    def data_received(self, data: bytes) -> None:
        if self._dropped:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._cancel_deadline()
                self._tail = b""
                self._limiter.waiting.pop(self, None)
            else:
                self._tail = seen[-3:]
        if self._inner is None:
            if self._transport is None or self._transport.is_closing():
                return
            self._inner = self._make_inner()
            self._inner.connection_made(self._transport)
        self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._limiter.current -= 1
        self._limiter.waiting.pop(self, None)
        self._limiter.open.pop(self, None)
        self._cancel_deadline()
        self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)


class LimitedSite(web.BaseSite):
    """A TCP site whose connections go through a ``ConnectionLimiter``.

    ``backlog`` is the accept burst (asyncio accepts that many per wake-up); the kernel's listen queue is
    ``listen_queue`` deep.
    """

    __slots__ = ("_host", "_limiter", "_listen_queue", "_port", "_reuse_address")

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        backlog: int = MAX_BACKLOG,
        listen_queue: int = LISTEN_QUEUE,
        reuse_address: bool = True,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._listen_queue = max(backlog, listen_queue)
        self._host = host
        self._port = port
        self._limiter = limiter
        self._reuse_address = reuse_address

    @property
    def name(self) -> str:
        """The site's URL."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def server(self) -> asyncio.AbstractServer | None:
        """The listening server, once started."""
        return self._server

    async def start(self) -> None:
        """Listen, with the limiter in front of the web server's protocol."""
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._limiter.factory(server),
            self._host,
            self._port,
            reuse_address=self._reuse_address,
            backlog=self._backlog,
        )
        # asyncio gives listen() the accept burst; a second listen() (on a duplicate of the same socket, as the
        # loop's own wrapper has none) deepens the kernel's queue alone
        for sock in self._server.sockets:
            with socket.socket(fileno=os.dup(sock.fileno())) as same:
                same.listen(self._listen_queue)

    async def stop(self) -> None:
        """Stop listening; close the connections still waiting for their headers (the web server closes the rest)."""
        await super().stop()
        for conn in list(self._limiter.waiting):
            conn.close()


class AcceptErrorLog:
    """An event loop exception handler that turns accept errors into one log line per interval with a count.

    Everything else goes to the handler that was there before (asyncio's default logs it with its traceback).
    """

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self.total = 0
        self._since_log = 0
        self._last_log = float("-inf")
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become the loop's exception handler."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the loop its previous handler back."""
        if loop.get_exception_handler() is self:
            loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if (isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS) or message.startswith("socket.accept()"):
            self.total += 1
            self._since_log += 1
            now = loop.time()
            if now - self._last_log >= self.interval:
                log.error(
                    "api_accept_failed",
                    error=(os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc or message)),
                    count=self._since_log,
                    total=self.total,
                    hint="the daemon is out of descriptors: see api.max_connections and LimitNOFILE",
                )
                self._since_log = 0
                self._last_log = now
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


class ConnectionCollector(Collector):
    """The API's connection figures for /metrics."""

    def __init__(self, limiter: ConnectionLimiter, accept_errors: AcceptErrorLog) -> None:
        self._limiter = limiter
        self._accept = accept_errors

    def collect(self) -> Iterator[Metric]:
        """Current connections, the cap, and what was refused or closed."""
        lim = self._limiter
        yield GaugeMetricFamily("cctv_optimizer_api_connections", "Open API connections.", value=lim.current)
        yield GaugeMetricFamily(
            "cctv_optimizer_api_connection_cap", "The API's connection cap in effect.", value=lim.cap
        )
        yield CounterMetricFamily(
            "cctv_optimizer_api_connections_rejected",
            "API connections closed at once because the cap was reached.",
            value=lim.rejected_total,
        )
        yield CounterMetricFamily(
            "cctv_optimizer_api_connections_evicted",
            "API connections still waiting for their request headers, closed at the cap for a newer one.",
            value=lim.evicted_total,
        )
        yield CounterMetricFamily(
            "cctv_optimizer_api_health_reserve_answers",
            "Health checks answered on the connections kept beyond the cap for them.",
            value=lim.reserve_answered_total,
        )
        yield CounterMetricFamily(
            "cctv_optimizer_api_header_timeouts",
            "API connections closed for not sending their request headers in time.",
            value=lim.header_timeouts_total,
        )
        yield CounterMetricFamily(
            "cctv_optimizer_api_accept_errors", "Failed accepts (out of descriptors).", value=self._accept.total
        )


__all__ = [
    "AcceptErrorLog",
    "ConnectionCollector",
    "ConnectionLimiter",
    "LimitedSite",
    "connection_cap",
    "open_descriptors",
]
