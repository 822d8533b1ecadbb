"""The running testbed: owns the database, cache, HLS writer, MediaMTX stand-in, jobs and servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from testbed.auth import LoginGuard, TokenIssuer
from testbed.cache import LEGACY_MAX_SIZE, ResponseCache
from testbed.database import Database
from testbed.hls import HlsWriter, scan_hls
from testbed.leaks import CloseWaitLeak, count_close_wait
from testbed.localtime import LocalClock
from testbed.maintenance import archive_history, prune_logs
from testbed.mediamtx import MediaMtxStandIn, PathInfo
from testbed.ratelimit import RateLimiter
from testbed.recorders import RecorderFleet
from testbed.settings import Settings
from testbed.viewers import end_stale_playback, end_stale_sessions, session_counts

log = logging.getLogger("testbed")

STALE_SESSION_SECONDS = 60.0
DEFAULT_STALE_HLS_SECONDS = 60.0
PLAYBACK_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Camera:
    """A camera row as the stand-in needs it."""

    id: int
    name: str
    stream_key: str
    enabled: bool
    rtsp_url: str


@dataclass(slots=True)
class JobStatus:
    """Outcome bookkeeping of a periodic backend job (visible only through /_testbed/state and stderr)."""

    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    last_result: dict[str, int] | None = None


def _write_secret(path: Path, value: str) -> None:
    """Write a secret file with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)


def _read_or_create_password(path: Path) -> str:
    """Reuse the password of an earlier run in the same data directory, else make one."""
    with contextlib.suppress(OSError):
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            os.chmod(path, 0o600)
            return existing
    password = secrets.token_urlsafe(18)
    _write_secret(path, password)
    return password


class Testbed:
    """The whole stand-in backend in one process."""

    def __init__(self, settings: Settings) -> None:
        """Build every part; nothing is opened or bound until start()."""
        self.settings = settings
        self.clock = LocalClock(settings.timezone_offset_hours, zone=settings.timezone)
        self.db = Database(settings.database, self.clock, create_archive_table=not settings.missing_archive_table)
        self.cache = ResponseCache(
            ttl_seconds=settings.cache_ttl, max_size=LEGACY_MAX_SIZE if settings.legacy_cache_shape else None
        )
        self.tokens = TokenIssuer(
            secrets.token_bytes(32), access_ttl=settings.access_token_ttl, refresh_ttl=settings.refresh_token_ttl
        )
        self.login_guard = LoginGuard(lockout_seconds=settings.lockout_minutes * 60)
        self.limiter = RateLimiter(scale=settings.rate_limit_scale)
        self.hls = HlsWriter(
            settings.hls_dir,
            segment_seconds=settings.segment_seconds,
            segment_count=settings.segment_count,
            segment_bytes=settings.segment_bytes,
        )
        self.mediamtx = MediaMtxStandIn(
            settings.mediamtx_host,
            settings.mediamtx_port,
            self.mediamtx_paths,
            segment_seconds=settings.segment_seconds,
            segment_count=settings.segment_count,
        )
        self.recorders = RecorderFleet(settings.recordings_dir, max_seconds=settings.recorder_max_seconds)
        self.close_wait = CloseWaitLeak()
        self.sweep_enabled = settings.sweep_enabled
        self.archive_job = JobStatus()
        self.cleanup_job = JobStatus()
        self.admin_password = ""
        self.cameras: list[Camera] = []
        self.port = settings.port
        self.started = time.monotonic()
        # What scenarios created, so `reset` can undo exactly that.
        self.created_paths: list[Path] = []
        self.stuck_session_ids: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        """Create files, open the database, bind both servers and start the background jobs."""
        settings = self.settings
        for directory in (settings.data_dir, settings.hls_dir, settings.recordings_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.admin_password = _read_or_create_password(settings.password_file)
        if settings.api_key:
            _write_secret(settings.api_key_file, settings.api_key)
        await asyncio.to_thread(self.db.open, cameras=settings.cameras, admin_password=self.admin_password)
        await self.reload_cameras()
        # The backend runs its retention jobs once at start-up, then on their schedule.
        await self.run_archive_job()
        await self.run_cleanup_job()
        await self.mediamtx.start()
        runner = web.AppRunner(
            app,
            # the real backend's idle connections last Fastify's keepAliveTimeout (72 s), not aiohttp's 75 s
            keepalive_timeout=72.0,
            handle_signals=False,
            shutdown_timeout=2.0,
            access_log=logging.getLogger("aiohttp.access") if settings.verbose else None,
        )
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        settings.pid_file.write_text(f"{os.getpid()}\n", encoding="utf-8")
        self._spawn(self.hls.run(self._stop))
        self._spawn(self._every(settings.sweep_interval, self.run_sweep_if_enabled))
        self._spawn(self._every(settings.playback_sweep_interval, self.run_playback_sweep))
        self._spawn(self._every(settings.cache_sweep_interval, self._sweep_cache))
        self._spawn(self._every(settings.archive_interval, self.run_archive_job))
        self._spawn(self._every(settings.cleanup_interval, self.run_cleanup_job))
        log.info(
            "testbed listening on %s:%d, MediaMTX stand-in on %s:%d, %d cameras",
            settings.host,
            self.port,
            settings.mediamtx_host,
            self.mediamtx.port,
            len(self.cameras),
        )

    async def stop(self) -> None:
        """Stop writers and jobs, end recorders, release leaked sockets, close servers and the database."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        ended = await asyncio.to_thread(self.recorders.stop_all)
        if ended:
            log.info("terminated fake recorders %s", ended)
        self.close_wait.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.mediamtx.stop()
        await asyncio.to_thread(self.db.close)
        with contextlib.suppress(OSError):
            self.settings.pid_file.unlink()
        log.info("testbed stopped")

    def env_line(self) -> str:
        """The first stdout line: the environment that points the daemon at this testbed."""
        settings = self.settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        mhost = f"[{settings.mediamtx_host}]" if ":" in settings.mediamtx_host else settings.mediamtx_host
        pairs = [
            ("CCTV_OPTIMIZER_BACKEND__URL", f"http://{host}:{self.port}"),
            ("CCTV_OPTIMIZER_BACKEND__DATABASE", str(settings.database)),
            ("CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY", str(settings.hls_dir)),
            # the stand-in's HLS directory sits in its data directory, usually not on a tmpfs as MediaMTX's does
            ("CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK", "true"),
            ("CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME", "admin"),
            ("CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE", str(settings.password_file)),
            ("CCTV_OPTIMIZER_BACKEND__PROCESS", f"pid:{settings.pid_file}"),
            ("CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL", f"http://{mhost}:{self.mediamtx.port}"),
            # its fake recorders alone: a daemon pointed here never lowers the recorders of anything else on the
            # host (another testbed's, a real backend's), which it otherwise would whenever the host runs hot
            ("CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY", str(settings.recordings_dir)),
        ]
        if settings.api_key:
            pairs.append(("CCTV_OPTIMIZER_BACKEND__API_KEY_FILE", str(settings.api_key_file)))
        return " ".join(f"{key}={value}" for key, value in pairs)

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run a background coroutine owned by the testbed."""
        self._tasks.append(asyncio.ensure_future(work))

    async def _every(self, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        """Call `job` every `interval` seconds until stopped; a failing run is logged, never fatal."""
        while not await self._sleep(interval):
            try:
                await job()
            except Exception:
                log.exception("background job %s failed", getattr(job, "__name__", job))

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when the testbed is stopping."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    # ----- cameras and MediaMTX ----------------------------------------------------------------

    async def reload_cameras(self) -> None:
        """Re-read cameras from the database and tell the HLS writer which streams are live."""

        def load(conn: sqlite3.Connection) -> list[Camera]:
            rows = conn.execute(
                "SELECT id, name, stream_key, enabled, private_rtsp_url FROM cameras ORDER BY id"
            ).fetchall()
            return [
                Camera(
                    id=row["id"],
                    name=row["name"],
                    stream_key=row["stream_key"],
                    enabled=bool(row["enabled"]),
                    rtsp_url=row["private_rtsp_url"] or "",
                )
                for row in rows
            ]

        self.cameras = await asyncio.to_thread(self.db.read, load)
        self.hls.set_streams(camera.stream_key for camera in self.cameras if camera.enabled)

    def mediamtx_paths(self) -> list[PathInfo]:
        """Current paths for the MediaMTX stand-in: one per camera, ready while its muxer runs."""
        live = set(self.hls.live_keys())
        return [
            PathInfo(
                name=camera.stream_key,
                source_url=camera.rtsp_url,
                ready=camera.stream_key in live,
                ready_time=self.hls.ready_since.get(camera.stream_key),
                bytes_received=self.hls.bytes_written.get(camera.stream_key, 0),
                readers=1 if camera.stream_key in live else 0,
            )
            for camera in self.cameras
        ]

    async def set_mediamtx(self, *, up: bool) -> None:
        """Take the MediaMTX stand-in down (HLS stops, port refuses) or bring it back."""
        if up:
            await self.mediamtx.start()
            self.hls.resume()
            # MediaMTX starts muxing at once: new runs (new prefixes) begin before this returns.
            await asyncio.to_thread(self.hls.tick)
        else:
            await asyncio.to_thread(self.hls.pause)
            await self.mediamtx.stop()

    # ----- backend jobs ----------------------------------------------------------------------

    async def run_sweep_if_enabled(self) -> None:
        """The 20-second viewer sweep, skipped while switched off."""
        if self.sweep_enabled:
            await self.run_sweep()

    async def run_sweep(self) -> int:
        """End active viewer sessions whose heartbeat is older than the session timeout.

        Statement by statement, each its own transaction (better-sqlite3 without a transaction), as the
        backend does: another writer can act between the SELECT that finds a session and the UPDATE that
        ends it, and a big backlog takes the sweep a while to work through.
        """
        timeout = self.settings.session_timeout
        ended = await asyncio.to_thread(
            self.db.write_raw, lambda conn: end_stale_sessions(conn, self.clock, timeout_seconds=timeout)
        )
        if ended:
            log.info("[ViewerSession] Cleaned up %d stale sessions", ended)
        return ended

    async def run_playback_sweep(self) -> int:
        """End silent playback sessions (statement by statement, like the viewer sweep)."""
        return await asyncio.to_thread(
            self.db.write_raw,
            lambda conn: end_stale_playback(conn, self.clock, timeout_seconds=PLAYBACK_TIMEOUT_SECONDS),
        )

    async def _sweep_cache(self) -> None:
        """The cache's 60-second sweep of expired entries."""
        self.cache.sweep()

    async def run_archive_job(self) -> JobStatus:
        """Move old history to the archive; failures only reach stderr, as in the backend."""
        self.archive_job.runs += 1
        try:
            moved = await asyncio.to_thread(self.db.write, lambda conn: archive_history(conn, self.clock))
        except sqlite3.Error as exc:
            self.archive_job.failures += 1
            self.archive_job.last_error = str(exc)
            log.error("[ViewerSessionArchive] archive job FAILED: %s (history is not being archived)", exc)
        else:
            self.archive_job.last_error = None
            self.archive_job.last_result = moved
            log.info("history archive job moved %s", moved)
        return self.archive_job

    async def run_cleanup_job(self) -> JobStatus:
        """Daily retention of security, audit and restart logs."""
        self.cleanup_job.runs += 1
        try:
            pruned = await asyncio.to_thread(self.db.write, lambda conn: prune_logs(conn, self.clock))
        except sqlite3.Error as exc:
            self.cleanup_job.failures += 1
            self.cleanup_job.last_error = str(exc)
            log.error("log retention job FAILED: %s", exc)
        else:
            self.cleanup_job.last_error = None
            self.cleanup_job.last_result = pruned
        return self.cleanup_job

    # ----- figures ---------------------------------------------------------------------------

    async def state(self, *, stale_age_seconds: float = DEFAULT_STALE_HLS_SECONDS) -> dict[str, Any]:
        """Current figures for GET /_testbed/state."""
        settings = self.settings

        def file_size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return 0

        def collect() -> dict[str, Any]:
            scan = scan_hls(settings.hls_dir, stale_age_seconds=stale_age_seconds)
            active, stale = self.db.read(
                lambda conn: session_counts(conn, self.clock, stale_after_seconds=STALE_SESSION_SECONDS)
            )
            return {
                "wal_bytes": file_size(self.db.wal_path),
                "db_bytes": file_size(settings.database),
                "hls_bytes": scan.total_bytes,
                "hls_files": scan.files,
                "stale_hls_files": scan.stale_files,
                "stale_hls_bytes": scan.stale_bytes,
                "active_sessions": active,
                "stale_active_sessions": stale,
                "close_wait_leaked": count_close_wait(self.mediamtx.port),
            }

        figures = await asyncio.to_thread(collect)
        figures.update(
            {
                "cache_size": self.cache.size,
                "cache_hits": self.cache.hits,
                "cache_misses": self.cache.misses,
                "sweep_enabled": self.sweep_enabled,
                "recorders": self.recorders.pids(),
                "close_wait_held": self.close_wait.held,
                "mediamtx_up": self.mediamtx.is_up,
                "mediamtx_port": self.mediamtx.port,
                "live_streams": len(self.hls.live_keys()),
                "stale_age_seconds": stale_age_seconds,
                "archive_job": {
                    "runs": self.archive_job.runs,
                    "failures": self.archive_job.failures,
                    "last_error": self.archive_job.last_error,
                },
                "pid": os.getpid(),
            }
        )
        return figures
