"""The sampler: reads every source once, each on its own and under a timeout, into one frozen Snapshot.

It knows sources only through their contract (metrics/source.py); which there are is the list in
metrics/sources.py. A source that needs another's part (TCP needs the backend's listening ports) runs in a later
phase, once every source of the phase before has ended.

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
from types import MappingProxyType
from typing import Any, TypeVar

import psutil

from metrics.errors import SamplingError
from metrics.snapshot import OwnSample, Snapshot, SourceStatus
from metrics.source import AsyncSource, BlockingSource, Reading, Source, Sources

T = TypeVar("T")


class Sampler:
    """Takes snapshots; keeps nothing but the sequence number and what each source keeps for rates."""

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
        # the blocking reads run on this pool (the loop's default when None), apart from other work's threads
        self._executor = executor
        self._timeout = source_timeout_seconds
        self._clock = clock
        self._wall = wall_clock
        self._seq = 0
        self._busy: set[str] = set()
        self._own = psutil.Process(os.getpid())

    @property
    def sources(self) -> Sources:
        """The configured sources."""
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
            result = await asyncio.wait_for(asyncio.shield(task), self._timeout)
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
        if self._executor is None:
            return lambda: asyncio.to_thread(fn, *args)
        executor = self._executor
        return lambda: asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _reader(self, source: Source[T], at: Reading) -> Callable[[], Awaitable[T]]:
        """How one source's read starts: in the sampler's pool when it blocks, else on the loop."""
        if isinstance(source, BlockingSource):
            return self._in_thread(source.read, at)
        if isinstance(source, AsyncSource):
            on_loop = source
            return lambda: on_loop.read(at)
        raise TypeError(f"source {source.name!r} is neither a BlockingSource nor an AsyncSource")

    async def _read_phase(
        self, phase: tuple[Source[Any], ...], at: Reading, statuses: dict[str, SourceStatus]
    ) -> list[object | None]:
        """Read a phase's sources at once, each in a task of its own; a source alone in its phase is read in this
        task (a task of its own would only cost the loop a step)."""
        if len(phase) == 1:
            return [await self._run(phase[0].name, statuses, self._reader(phase[0], at))]
        tasks = [asyncio.create_task(self._run(s.name, statuses, self._reader(s, at))) for s in phase]
        return [await task for task in tasks]

    async def sample(self) -> Snapshot:
        """Read every source once, phase by phase, and return the snapshot."""
        started = self._clock()
        wall = self._wall()
        statuses: dict[str, SourceStatus] = {}
        parts: dict[str, object] = {}
        for phase in self._s.phases:
            at = Reading(monotonic=started, wall=wall, parts=MappingProxyType(dict(parts)))
            for source, part in zip(phase, await self._read_phase(phase, at, statuses), strict=True):
                if part is None:
                    continue
                parts[source.name] = part
                statuses[source.name] = source.status(part, statuses[source.name])
                parts.update(source.extra_parts(part))
        own = self._own_sample()
        self._seq += 1
        return Snapshot.taken(
            seq=self._seq,
            monotonic=started,
            wall_time=wall,
            duration_seconds=self._clock() - started,
            parts=parts,
            own=own,
            sources=MappingProxyType(statuses),
        )

    async def close(self) -> None:
        """Let every source release what it opened itself; one that fails to does not keep the others open."""
        await asyncio.gather(*(source.close() for source in self._s), return_exceptions=True)

    def _own_sample(self) -> OwnSample | None:
        try:
            times = self._own.cpu_times()
            return OwnSample(rss_bytes=self._own.memory_info().rss, cpu_seconds=times.user + times.system)
        except psutil.Error:
            return None
