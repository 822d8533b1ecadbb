"""MediaMTX's control API (v3): paths and their readers."""

from __future__ import annotations

from typing import Any

import aiohttp

from metrics.errors import SamplingError
from metrics.httppool import HttpPool
from metrics.snapshot import MediaMtxSample

MAX_PAGES = 50
PAGE_SIZE = 100


class MediaMtxClient(HttpPool):
    """Reads ``/v3/paths/list`` page by page."""

    name = "mediamtx"

    async def paths(self) -> list[dict[str, Any]]:
        """All path items, following pageCount."""
        items: list[dict[str, Any]] = []
        page = 0
        while page < MAX_PAGES:
            url = f"{self._base}/v3/paths/list?page={page}&itemsPerPage={PAGE_SIZE}"
            try:
                async with self._http().get(url) as resp:
                    if resp.status != 200:
                        raise SamplingError(f"MediaMTX API answered {resp.status}")
                    data = await resp.json(content_type=None)
            except TimeoutError:
                raise SamplingError("MediaMTX API did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise SamplingError(f"MediaMTX API unreachable: {exc.__class__.__name__}") from None
            except ValueError:
                raise SamplingError("MediaMTX API answered something that is not JSON") from None
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise SamplingError("MediaMTX API answered an unexpected shape")
            items.extend(i for i in data["items"] if isinstance(i, dict))
            page_count = data.get("pageCount", 1)
            page += 1
            if not isinstance(page_count, int) or page >= page_count:
                break
        return items

    async def read(self) -> MediaMtxSample:
        """Count paths, ready paths and readers."""
        items = await self.paths()
        readers = sum(len(i.get("readers") or []) for i in items)
        ready = sum(1 for i in items if i.get("ready"))
        return MediaMtxSample(paths=len(items), ready_paths=ready, readers=readers)
