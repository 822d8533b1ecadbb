"""A MediaMTX v3 control-API stand-in: paths and their readers, enough to count them.

Shapes follow MediaMTX 1.9's API (`/v3/paths/list`, `/v3/config/paths/list`, paged with
`page` and `itemsPerPage`). `stop()` closes the listening socket so clients get
"connection refused", as when MediaMTX is down.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True, kw_only=True)
class PathInfo:
    """One stream path as MediaMTX knows it."""

    name: str
    source_url: str
    ready: bool
    ready_time: str | None
    bytes_received: int
    readers: int


def _respond(body: Any, *, status: int = 200) -> web.Response:
    """Compact JSON, as Go's encoding/json writes it."""
    return web.json_response(body, status=status, dumps=functools.partial(json.dumps, separators=(",", ":")))


def _page(request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply MediaMTX paging (`page`, `itemsPerPage`, default 0 and 100)."""
    try:
        page = int(request.query.get("page", "0"))
        per_page = int(request.query.get("itemsPerPage", "100"))
    except ValueError as exc:
        raise web.HTTPBadRequest(text='{"error":"invalid pagination"}', content_type="application/json") from exc
    if page < 0 or per_page <= 0:
        raise web.HTTPBadRequest(text='{"error":"invalid pagination"}', content_type="application/json")
    page_count = math.ceil(len(items) / per_page) if items else 0
    chunk = items[page * per_page : (page + 1) * per_page]
    return {"pageCount": page_count, "itemCount": len(items), "items": chunk}


def _path_json(path: PathInfo) -> dict[str, Any]:
    """A /v3/paths item."""
    return {
        "name": path.name,
        "confName": path.name,
        "source": {"type": "rtspSource", "id": ""} if path.ready else None,
        "ready": path.ready,
        "readyTime": path.ready_time if path.ready else None,
        "tracks": ["H264"] if path.ready else [],
        "bytesReceived": path.bytes_received,
        "bytesSent": 0,
        "readers": [{"type": "hlsMuxer", "id": ""} for _ in range(path.readers)],
    }


def _conf_json(path: PathInfo) -> dict[str, Any]:
    """A /v3/config/paths item (the fields a client is likely to read)."""
    return {
        "name": path.name,
        "source": path.source_url,
        "sourceOnDemand": False,
        "sourceOnDemandStartTimeout": "10s",
        "sourceOnDemandCloseAfter": "10s",
        "maxReaders": 0,
        "record": False,
        "rtspTransport": "tcp",
        "runOnReady": "",
    }


def _not_found(name: str) -> web.Response:
    """MediaMTX's 404 answer."""
    return _respond({"status": "error", "error": f"path '{name}' not found"}, status=404)


class MediaMtxStandIn:
    """Serves the MediaMTX API on its own port; can be taken down and brought back."""

    def __init__(
        self,
        host: str,
        port: int,
        paths: Callable[[], list[PathInfo]],
        *,
        segment_seconds: float = 2.0,
        segment_count: int = 10,
    ) -> None:
        """Bind lazily in start(); `paths` supplies the current path list."""
        self.host = host
        self.port = port
        self._paths = paths
        self.segment_seconds = segment_seconds
        self.segment_count = segment_count
        self._runner: web.AppRunner | None = None

    @property
    def is_up(self) -> bool:
        """True while the port accepts connections."""
        return self._runner is not None

    def _app(self) -> web.Application:
        """The aiohttp application with the v3 routes."""
        app = web.Application()
        app.router.add_get("/v3/paths/list", self._paths_list)
        app.router.add_get("/v3/paths/get/{name:.+}", self._paths_get)
        app.router.add_get("/v3/config/paths/list", self._config_paths_list)
        app.router.add_get("/v3/config/paths/get/{name:.+}", self._config_paths_get)
        app.router.add_get("/v3/hlsmuxers/list", self._hls_muxers_list)
        app.router.add_get("/v3/config/global/get", self._config_global)
        return app

    async def start(self) -> int:
        """Bind (again) and return the port; the first bind fixes the port for later restarts."""
        if self._runner is not None:
            return self.port
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        address = runner.addresses[0]
        self.port = int(address[1])
        self._runner = runner
        return self.port

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _paths_list(self, request: web.Request) -> web.Response:
        """GET /v3/paths/list."""
        return _respond(_page(request, [_path_json(path) for path in self._paths()]))

    async def _paths_get(self, request: web.Request) -> web.Response:
        """GET /v3/paths/get/{name}."""
        name = request.match_info["name"]
        for path in self._paths():
            if path.name == name:
                return _respond(_path_json(path))
        return _not_found(name)

    async def _config_paths_list(self, request: web.Request) -> web.Response:
        """GET /v3/config/paths/list."""
        return _respond(_page(request, [_conf_json(path) for path in self._paths()]))

    async def _config_paths_get(self, request: web.Request) -> web.Response:
        """GET /v3/config/paths/get/{name}."""
        name = request.match_info["name"]
        for path in self._paths():
            if path.name == name:
                return _respond(_conf_json(path))
        return _not_found(name)

    async def _hls_muxers_list(self, request: web.Request) -> web.Response:
        """GET /v3/hlsmuxers/list: one muxer per ready path."""
        items = [
            {"path": path.name, "created": path.ready_time, "lastRequest": path.ready_time, "bytesSent": 0}
            for path in self._paths()
            if path.ready
        ]
        return _respond(_page(request, items))

    async def _config_global(self, request: web.Request) -> web.Response:
        """GET /v3/config/global/get: the HLS settings a client may read."""
        return _respond(
            {
                "api": True,
                "apiAddress": f"{self.host}:{self.port}",
                "metrics": False,
                "metricsAddress": ":9998",
                "hls": True,
                "hlsAddress": ":8888",
                "hlsVariant": "fmp4",
                "hlsSegmentCount": self.segment_count,
                "hlsSegmentDuration": f"{self.segment_seconds:g}s",
                "hlsAlwaysRemux": True,
                "hlsDirectory": "/dev/shm/mediamtx-live",
            }
        )
