"""The footprint floor: a bare Python process importing the daemon's libraries and serving one /metrics handler.

    python bench/floor.py PORT

It does nothing else, so its RSS and CPU are what any daemon built on these libraries costs at the least.
"""

from __future__ import annotations

import sys

import apscheduler.schedulers.asyncio
import psutil
import structlog
import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

# Referenced so the imports are plainly deliberate: the point is their memory, not their use.
LIBRARIES = (apscheduler.schedulers.asyncio, psutil, structlog, yaml)


def main(port: int) -> None:
    """Serve /metrics (a process collector) on 127.0.0.1:port until killed."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
