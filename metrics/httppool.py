"""A lazily opened aiohttp connection pool for one base URL, shared by the small HTTP clients."""

from __future__ import annotations

import aiohttp


class HttpPool:
    """Opens its ``ClientSession`` on first use (inside the running loop) and again after a close."""

    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no cookies: these APIs are stateless, and a jar would keep whatever a server chose to set
            self._session = aiohttp.ClientSession(timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
