"""Kick idle MediaMTX readers through its control API (v3); disruptive, so only used when switched on.

MediaMTX 1.9 can kick RTSP and RTSPS sessions, RTMP(S) connections, WebRTC sessions and SRT
connections (``POST /v3/<kind>/kick/<id>``). HLS readers cannot be kicked: the HLS muxer closes itself
when no client has asked for it for ``hlsMuxerCloseAfter``. A kind whose server is switched off answers
404 on its list and is skipped. Publishers are never kicked, only sessions in the ``read`` or ``idle``
state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from metrics.httppool import HttpPool
from strategies.base import StrategyError

# the API's list/kick endpoint families of reader sessions
KICKABLE: tuple[str, ...] = ("rtspsessions", "rtspssessions", "rtmpconns", "rtmpsconns", "webrtcsessions", "srtconns")
READER_STATES = frozenset({"read", "idle"})
MAX_PAGES = 20
PAGE_SIZE = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ReaderSession:
    """One reading session or connection as MediaMTX lists it."""

    kind: str
    id: str
    path: str
    state: str
    created: str | None
    remote: str | None
    bytes_sent: int

    @property
    def key(self) -> str:
        """A stable key: ``kind/id``."""
        return f"{self.kind}/{self.id}"


def _reader(kind: str, item: dict[str, Any]) -> ReaderSession | None:
    state = str(item.get("state") or "")
    ident = item.get("id")
    if state not in READER_STATES or not isinstance(ident, str) or not ident:
        return None
    sent = item.get("bytesSent")
    return ReaderSession(
        kind=kind,
        id=ident,
        path=str(item.get("path") or ""),
        state=state,
        created=str(item["created"]) if item.get("created") else None,
        remote=str(item["remoteAddr"]) if item.get("remoteAddr") else None,
        bytes_sent=int(sent) if isinstance(sent, int) and not isinstance(sent, bool) else 0,
    )


class MediaMtxKicker(HttpPool):
    """Lists reader sessions and kicks them, with its own small connection pool."""

    async def _list(self, kind: str) -> list[ReaderSession]:
        out: list[ReaderSession] = []
        for page in range(MAX_PAGES):
            url = f"{self._base}/v3/{kind}/list?page={page}&itemsPerPage={PAGE_SIZE}"
            try:
                async with self._http().get(url) as resp:
                    if resp.status == 404:
                        return out
                    if resp.status != 200:
                        raise StrategyError(f"MediaMTX {kind}/list answered {resp.status}")
                    data = await resp.json(content_type=None)
            except TimeoutError:
                raise StrategyError(f"MediaMTX {kind}/list did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise StrategyError(f"MediaMTX API unreachable: {exc.__class__.__name__}") from None
            except ValueError:
                raise StrategyError(f"MediaMTX {kind}/list answered something that is not JSON") from None
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise StrategyError(f"MediaMTX {kind}/list answered an unexpected shape")
            out.extend(r for r in (_reader(kind, i) for i in items if isinstance(i, dict)) if r is not None)
            page_count = data.get("pageCount", 1)
            if not isinstance(page_count, int) or page + 1 >= page_count:
                break
        return out

    async def readers(self) -> list[ReaderSession]:
        """Every reading (or idle) session of every kind that can be kicked."""
        found: list[ReaderSession] = []
        for kind in KICKABLE:
            found.extend(await self._list(kind))
        return found

    async def kick(self, reader: ReaderSession) -> bool:
        """Kick one session; False when it was already gone, StrategyError when MediaMTX refused."""
        url = f"{self._base}/v3/{reader.kind}/kick/{reader.id}"
        try:
            async with self._http().post(url) as resp:
                body = (await resp.read())[:500].decode("utf-8", "replace")
                status = resp.status
        except TimeoutError:
            raise StrategyError(f"MediaMTX did not answer the kick of {reader.key} in time") from None
        except aiohttp.ClientError as exc:
            raise StrategyError(f"MediaMTX API unreachable: {exc.__class__.__name__}") from None
        if status == 200:
            return True
        # MediaMTX 1.9 answers a session that no longer exists with an error naming it "not found"
        if status == 404 or "not found" in body.lower():
            return False
        raise StrategyError(f"MediaMTX refused to kick {reader.key}: {status} {body.strip()[:200]}")
