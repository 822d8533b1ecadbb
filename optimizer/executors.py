"""The daemon's worker threads: one bounded pool per kind of blocking work, so one kind cannot starve another.

- ``sampler``: the sampler's blocking sources (``/proc``, the backend database, the HLS walk);
- ``state``: the daemon's own state writes (baselines, the state file check);
- ``history``: the API's history reads, over their own read-only connections;
- the event loop's default pool stays for the strategies' plans and applies, and is a ``WatchedExecutor``: a
  plan that times out while its work waited for a free thread timed out because of the daemon's own queueing,
  which ``QueueWatch`` measures so that it never counts toward the strategy's breaker.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from metrics.sources import BLOCKING_SOURCES

P = ParamSpec("P")
T = TypeVar("T")

# one per blocking source (metrics/sources.py): the sampler never starts a source still running
SAMPLER_THREADS = BLOCKING_SOURCES
STATE_THREADS = 1
HISTORY_THREADS = 2
STRATEGY_THREADS = 8

_KEYS = itertools.count()
_WATCH: contextvars.ContextVar[QueueWatch | None] = contextvars.ContextVar("queue_watch", default=None)


@dataclass(slots=True)
class QueueWatch:
    """How long the work a coroutine handed to a ``WatchedExecutor`` waited for a free thread."""

    clock: Callable[[], float] = time.monotonic
    waited: float = 0.0
    _pending: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def queued(self) -> float:
        """Seconds spent waiting so far, including work still waiting now."""
        now = self.clock()
        with self._lock:
            return self.waited + sum(now - at for at in self._pending.values())

    def _submitted(self, key: int) -> None:
        with self._lock:
            self._pending[key] = self.clock()

    def _started(self, key: int) -> None:
        now = self.clock()
        with self._lock:
            at = self._pending.pop(key, None)
            if at is not None:
                self.waited += now - at


@contextmanager
def watch_queueing() -> Iterator[QueueWatch]:
    """Measure, for the code run inside (and the tasks it starts), the time its thread work spends queued."""
    watch = QueueWatch()
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


class WatchedExecutor(ThreadPoolExecutor):
    """A thread pool that tells a ``QueueWatch`` in the submitter's context how long each job waited to start."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Submit ``fn``; when a watch is active, record the wait between now and the job's start."""
        watch = _WATCH.get()
        if watch is None:
            return super().submit(fn, *args, **kwargs)
        key = next(_KEYS)

        def started() -> T:
            watch._started(key)
            return fn(*args, **kwargs)

        watch._submitted(key)
        return super().submit(started)


class Executors:
    """The named pools, created together and shut down together."""

    def __init__(
        self,
        *,
        sampler_threads: int = SAMPLER_THREADS,
        state_threads: int = STATE_THREADS,
        history_threads: int = HISTORY_THREADS,
        strategy_threads: int = STRATEGY_THREADS,
    ) -> None:
        self.sampler = ThreadPoolExecutor(sampler_threads, thread_name_prefix="sampler")
        self.state = ThreadPoolExecutor(state_threads, thread_name_prefix="state")
        self.history = ThreadPoolExecutor(history_threads, thread_name_prefix="history")
        self.strategies = WatchedExecutor(strategy_threads, thread_name_prefix="strategy")

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the strategies' pool the loop's default (``asyncio.to_thread`` and ``run_in_executor(None)``)."""
        loop.set_default_executor(self.strategies)

    def shutdown(self) -> None:
        """Stop taking work; threads still busy finish in the background (they cannot be interrupted).

        The strategies' pool stays: it is the loop's default now, and the loop shuts it down when it closes.
        """
        for pool in (self.sampler, self.state, self.history):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_in(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on ``executor`` with the caller's context variables, like ``asyncio.to_thread``."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(executor, ctx.run, fn, *args)


__all__ = ["Executors", "QueueWatch", "WatchedExecutor", "run_in", "watch_queueing"]
