"""The API's own event loop, in a thread of its own.

Serving HTTP (parsing, JSON encoding, history pages of a thousand rows, thousands of idle connections) on the
loop that runs the rounds and the sampler would delay them by however busy the clients make it. The API runs here
instead; what reads or changes the engine's state goes to the engine's loop (``ApiContext.on_main`` and
``await_main``), so the two never race, and a round waits for no client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
JOIN_SECONDS = 10.0


class ApiLoop:
    """An event loop running in a daemon thread until ``stop()``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)

    def start(self) -> None:
        """Start the thread and its loop."""
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the API's loop and wait for it from the caller's."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def stop(self) -> None:
        """Stop the loop and wait (bounded) for its thread to end."""
        if not self._thread.is_alive():
            if not self.loop.is_closed() and not self.loop.is_running():
                self.loop.close()
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, JOIN_SECONDS)


__all__ = ["ApiLoop"]
