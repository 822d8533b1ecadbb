"""An executor that runs its work one item after another on one thread, and spills to more threads when needed.

The sampler's blocking reads are short (a few /proc files, a netlink dump, one SQLite connection, a directory
walk), and handing each to its own thread costs more than most of them: every thread wakes, and the threads
then take the interpreter's lock from each other at every system call. Queued on one thread they run back to
back instead. One read that blocks (a locked database, a slow disk) must not hold the others up for long, so
whoever submitted the work may ``spill``: work still waiting then gets one more thread of the inner pool.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["SerialExecutor"]


class SerialExecutor(Executor):
    """Runs submitted work in order, normally on one thread of ``inner`` at a time; ``spill`` adds a thread."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._runners = 0

    @property
    def inner(self) -> Executor:
        """The pool whose threads run the work."""
        return self._inner

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn``; start a thread for the queue only when none is working through it.

        ``RuntimeError`` when the inner pool takes no more work (it was shut down).
        """
        future: Future[T] = Future()
        with self._lock:
            self._queue.append((future, fn, args, kwargs))
            start = self._runners == 0
            if start:
                self._runners += 1
        if start:
            self._start_runner()
        return future

    def spill(self) -> None:
        """Give the queue one more thread if work is still waiting in it (a no-op otherwise)."""
        with self._lock:
            if not self._queue:
                return
            self._runners += 1
        with contextlib.suppress(RuntimeError):  # shut down: the work that waits has been failed
            self._start_runner()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel the work that has not started when asked to; the inner pool is its owner's to shut down."""
        if cancel_futures:
            with self._lock:
                waiting = list(self._queue)
                self._queue.clear()
            for future, _fn, _args, _kwargs in waiting:
                future.cancel()

    def _start_runner(self) -> None:
        try:
            self._inner.submit(self._drain)
        except RuntimeError as exc:
            # nothing will run what waits now: fail it rather than leave it pending for ever
            with self._lock:
                self._runners -= 1
                waiting = list(self._queue) if self._runners == 0 else []
                if waiting:
                    self._queue.clear()
            for future, _fn, _args, _kwargs in waiting:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            raise

    def _drain(self) -> None:
        """Run queued work until the queue is empty."""
        while True:
            with self._lock:
                if not self._queue:
                    self._runners -= 1
                    return
                future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
