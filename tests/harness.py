"""Shared test harness: run the testbed as a real process and the daemon in-process against it.

The daemon is started without its timed loops (``autostart_loops=False``): a test takes samples and
runs rounds itself, so nothing waits on wall-clock time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from config.loader import load_settings
from optimizer.app import Daemon
from testbed.harness import TestbedProcess

FAST = {
    "OPTIMIZATION_INTERVAL": "1000",
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "200",
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": "100",
    "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "2",
    "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "3",
    "CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90",
}


@contextmanager
def running_testbed(data_dir: Path, *args: str) -> Iterator[TestbedProcess]:
    """A testbed process for the duration of the block."""
    with TestbedProcess(data_dir, *args) as tb:
        yield tb


def daemon_env(tb: TestbedProcess, state_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment that points a daemon at the testbed, with fast test intervals."""
    env = {
        **tb.env,
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(state_dir),
        **FAST,
    }
    env.update(overrides)
    return env


@asynccontextmanager
async def running_daemon(env: Mapping[str, str], **kwargs: Any) -> AsyncIterator[Daemon]:
    """A started daemon (no timed loops) that is stopped at the end of the block."""
    loaded = load_settings(env)
    daemon = Daemon(loaded, environ=env, autostart_loops=False, **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def sample_times(daemon: Daemon, n: int) -> None:
    """Take n samples in a row."""
    for _ in range(n):
        await daemon.sample_now()


def api_base(daemon: Daemon) -> str:
    """The daemon's API base URL."""
    return f"http://{daemon.api_url_host}:{daemon.api_port}"


@asynccontextmanager
async def api_client(daemon: Daemon) -> AsyncIterator[ClientSession]:
    """An HTTP client session for the daemon's API."""
    async with ClientSession(base_url=api_base(daemon)) as session:
        yield session


def auth(daemon: Daemon) -> dict[str, str]:
    """The write authorisation header."""
    return {"Authorization": f"Bearer {daemon.token}"}
