"""The sampler: reads every source once, each on its own and under a timeout, into one frozen Snapshot.

Blocking reads (/proc, psutil, sqlite3, the HLS directory walk) run in worker threads so the event loop
never waits on them. A source that fails or times out is marked down in the snapshot and the others
carry on. A source whose previous read is still running is not started again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import psutil

from metrics.backend import BackendClient
from metrics.errors import SamplingError
from metrics.hls import HlsReader
from metrics.host import HostReader
from metrics.mediamtx import MediaMtxClient
from metrics.process import ProcessReader
from metrics.serial import SerialExecutor
from metrics.snapshot import OwnSample, ProcessSample, Snapshot, SourceStatus, TcpSample
from metrics.sqlite import DatabaseReader
from metrics.tcp import TcpCounter

T = TypeVar("T")

# a blocking read still queued behind another after this long gets a thread of its own
SPILL_AFTER_SECONDS = 0.05

SOURCE_NAMES = ("host", "process", "tcp", "probe", "cache", "database", "hls", "mediamtx")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sources:
    """The readers the sampler uses; None where a source is not configured."""

    host: HostReader
    tcp: TcpCounter
    process: ProcessReader | None = None
    backend: BackendClient | None = None
    database: DatabaseReader | None = None
    hls: HlsReader | None = None
    mediamtx: MediaMtxClient | None = None
    hot_endpoints: tuple[str, ...] = ()
    extra_ports: frozenset[int] = frozenset()
    # services the backend connects to: their sockets are counted from the backend's (client) end
    upstream_ports: frozenset[int] = frozenset()


class Sampler:
    """Takes snapshots; keeps nothing but the sequence number and what each reader keeps for rates."""

    def __init__(
        self,
        sources: Sources,
        *,
        source_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
    ) -> None:
        self._s = sources
        # the blocking reads run on this pool (the loop's default when None), apart from other work's threads,
        # one after another on one of its threads unless one of them is slow
        self._executor = SerialExecutor(executor) if executor is not None else None
        self._timeout = source_timeout_seconds
        self._clock = clock
        self._wall = wall_clock
        self._seq = 0
        self._busy: set[str] = set()
        self._own = psutil.Process(os.getpid())

    @property
    def sources(self) -> Sources:
        """The configured readers."""
        return self._s

    async def _run(self, name: str, statuses: dict[str, SourceStatus], factory: Callable[[], Awaitable[T]]) -> T | None:
        """Run one source under the timeout; record its status; never raise."""
        started = self._clock()
        if name in self._busy:
            statuses[name] = SourceStatus(
                name=name, up=False, error="previous read still running", duration_seconds=0.0
            )
            return None
        self._busy.add(name)
        error: str | None = None
        result: T | None = None
        task: asyncio.Future[T] | None = None
        try:
            # created inside the try: a reader that fails as it is called must not stay marked busy
            task = asyncio.ensure_future(factory())
            # asyncio.wait neither cancels the read when the time is up nor when this sample is cancelled
            done, _waiting = await asyncio.wait((task,), timeout=self._timeout)
            if not done:
                raise TimeoutError
            result = task.result()
        except TimeoutError:
            error = f"timed out after {self._timeout:g} s"
        except SamplingError as exc:
            error = str(exc)
        except Exception as exc:  # a bug in a reader must not stop the others; the status names it
            error = f"internal error: {exc.__class__.__name__}: {exc}"
        finally:
            if task is not None and not task.done():
                # timed out (or this sample was cancelled): the read goes on; free the source when it ends
                task.add_done_callback(lambda t: self._finished_late(name, t))
            else:
                self._release(name)
        statuses[name] = SourceStatus(
            name=name, up=error is None, error=error, duration_seconds=self._clock() - started
        )
        return result

    def _release(self, name: str) -> None:
        self._busy.discard(name)

    def _finished_late(self, name: str, task: asyncio.Future[Any]) -> None:
        """A read that outlived its sample ended: free the source, and take its error so asyncio does not log it.

        That sample already reported the source as timed out; the next one reads it again.
        """
        self._release(name)
        if not task.cancelled():
            task.exception()

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> Callable[[], Awaitable[T]]:
        """How a blocking read starts: queued on the sampler's pool behind the others (``SerialExecutor``), and
        given a thread of its own if it still waits after ``SPILL_AFTER_SECONDS``."""
        if self._executor is None:
            return lambda: asyncio.to_thread(fn, *args)
        executor = self._executor

        def start() -> asyncio.Future[T]:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(executor, fn, *args)
            spill = loop.call_later(SPILL_AFTER_SECONDS, executor.spill)
            future.add_done_callback(lambda _done: spill.cancel())
            return future

        return start

    async def sample(self) -> Snapshot:
        """Read every source once and return the snapshot."""
        started = self._clock()
        wall = self._wall()
        statuses: dict[str, SourceStatus] = {}
        s = self._s
        backend = s.backend

        def start(name: str, factory: Callable[[], Awaitable[T]] | None) -> asyncio.Task[T | None] | None:
            if factory is None:
                return None
            return asyncio.create_task(self._run(name, statuses, factory))

        async def result(task: asyncio.Task[T | None] | None) -> T | None:
            return None if task is None else await task

        host_t = start("host", self._in_thread(s.host.read, started))
        proc_t = start("process", self._in_thread(s.process.read, started) if s.process else None)
        probe_t = start("probe", (lambda: backend.probe(s.hot_endpoints)) if backend is not None else None)
        hot_calls = len(s.hot_endpoints)
        cache_t = start(
            "cache",
            (lambda: backend.sampled_cache_stats(hot_calls))
            if backend is not None and backend.has_credentials
            else None,
        )
        db_t = start("database", self._in_thread(s.database.read, started) if s.database else None)
        hls_t = start("hls", self._in_thread(s.hls.read, wall) if s.hls else None)
        mtx_t = start("mediamtx", s.mediamtx.read if s.mediamtx else None)
        host = await result(host_t)
        process = await result(proc_t)
        probe = await result(probe_t)
        cache = await result(cache_t)
        database = await result(db_t)
        hls = await result(hls_t)
        mediamtx = await result(mtx_t)
        if probe is not None and not probe.available and "probe" in statuses:
            # the probe itself ran, but the backend did not answer properly: the source is down, and says why
            statuses["probe"] = SourceStatus(
                name="probe",
                up=False,
                error=probe.error or "backend unavailable",
                duration_seconds=statuses["probe"].duration_seconds,
            )
        if isinstance(process, ProcessSample) and process.degraded is not None and "process" in statuses:
            # measured, but perhaps not the server: up, with the reason shown wherever the sources are
            statuses["process"] = SourceStatus(
                name="process",
                up=True,
                error=process.degraded,
                duration_seconds=statuses["process"].duration_seconds,
            )
        ports = set(s.extra_ports)
        if isinstance(process, ProcessSample):
            ports.update(process.listen_ports)
        tcp = await self._run("tcp", statuses, self._in_thread(self._count_tcp, frozenset(ports - s.upstream_ports)))
        sessions = s.database.last_sessions if s.database is not None and database is not None else None
        own = self._own_sample()
        self._seq += 1
        return Snapshot(
            seq=self._seq,
            monotonic=started,
            wall_time=wall,
            duration_seconds=self._clock() - started,
            host=host,
            backend=process,
            tcp=tcp,
            probe=probe,
            cache=cache,
            database=database,
            hls=hls,
            mediamtx=mediamtx,
            sessions=sessions,
            own=own,
            sources=MappingProxyType(statuses),
        )

    def _count_tcp(self, ports: frozenset[int]) -> TcpSample:
        upstream = self._s.upstream_ports
        counts = self._s.tcp.count(ports, upstream) if upstream else self._s.tcp.count(ports)
        return TcpSample(
            ports=tuple(sorted(ports | upstream)),
            by_state=MappingProxyType({str(k.value): v for k, v in counts.by_state.items()}),
            total=counts.total,
            method=str(counts.method),
        )

    def _own_sample(self) -> OwnSample | None:
        try:
            times = self._own.cpu_times()
            return OwnSample(rss_bytes=self._own.memory_info().rss, cpu_seconds=times.user + times.system)
        except psutil.Error:
            return None
