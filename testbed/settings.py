"""Settings of the stand-in backend, parsed from its command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from testbed.localtime import LocalClock


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the testbed needs to know at start-up."""

    host: str
    port: int
    data_dir: Path
    cameras: int = 4
    api_key: str | None = None
    sweep_enabled: bool = True
    legacy_cache_shape: bool = False
    timezone_offset_hours: float = 7.0
    timezone: str | None = None
    mediamtx_host: str = "127.0.0.1"
    mediamtx_port: int = 0
    segment_seconds: float = 2.0
    segment_count: int = 10
    segment_bytes: int = 64 * 1024
    rate_limit_scale: float = 1.0
    sweep_interval: float = 20.0
    session_timeout: float = 15.0
    playback_sweep_interval: float = 60.0
    cache_ttl: float = 30.0
    cache_sweep_interval: float = 60.0
    miss_cost_ms: float = 25.0
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 7 * 24 * 3600
    lockout_minutes: float = 15.0
    login_delay_scale: float = 1.0
    service_cache_ttl: float | None = None
    missing_archive_table: bool = False
    archive_interval: float = 6 * 3600.0
    cleanup_interval: float = 24 * 3600.0
    recorder_max_seconds: float = 900.0
    verbose: bool = False

    @property
    def database(self) -> Path:
        """Path of the SQLite file: in its own ``data/`` directory, as the backend's ``backend/data/cctv.db``."""
        return self.data_dir / "data" / "cctv.db"

    @property
    def hls_dir(self) -> Path:
        """Root of the HLS tree (stands in for /dev/shm/mediamtx-live)."""
        return self.data_dir / "hls"

    @property
    def recordings_dir(self) -> Path:
        """Root of the fake recorders' output."""
        return self.data_dir / "recordings"

    @property
    def password_file(self) -> Path:
        """File holding the admin password."""
        return self.data_dir / "admin-password"

    @property
    def api_key_file(self) -> Path:
        """File holding the API key (only written with --api-key)."""
        return self.data_dir / "api-key"

    @property
    def pid_file(self) -> Path:
        """File holding the testbed's PID."""
        return self.data_dir / "testbed.pid"


def _host_port(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`) and insist on a loopback host."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if host not in {"127.0.0.1", "::1", "localhost"}:
        # The testbed has no real security; it must never be reachable from elsewhere.
        raise argparse.ArgumentTypeError(f"refusing non-loopback address {host!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return host, port


def _positive_float(text: str) -> float:
    """Parse a float greater than zero."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    """Parse an integer greater than zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of `python -m testbed`."""
    parser = argparse.ArgumentParser(
        prog="python -m testbed",
        description="Stand-in RAF NET CCTV backend (HTTP API, SQLite, HLS directory, MediaMTX API).",
    )
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT of the backend (port 0: any)")
    parser.add_argument("--data-dir", type=Path, required=True, help="directory for the database, HLS, files")
    parser.add_argument("--cameras", type=_positive_int, default=4, help="cameras to seed (default 4)")
    parser.add_argument("--api-key", default=None, help="require this X-API-Key on non-public paths")
    parser.add_argument("--no-sweep", action="store_true", help="start with the viewer-session sweep off")
    parser.add_argument("--legacy-cache-shape", action="store_true", help="older cache-stats JSON shape")
    parser.add_argument(
        "--timezone-offset", type=float, default=7.0, help="zone by UTC offset: 7 Asia/Jakarta, 8, 9 (default 7)"
    )
    parser.add_argument(
        "--timezone", default=None, help="zone seeded into system_settings: WIB, WITA, WIT or an IANA name"
    )
    parser.add_argument(
        "--mediamtx-listen",
        type=_host_port,
        default=("127.0.0.1", 0),
        help="HOST:PORT of the MediaMTX API stand-in (default 127.0.0.1:0)",
    )
    parser.add_argument("--segment-seconds", type=_positive_float, default=2.0, help="HLS segment length (2)")
    parser.add_argument("--segment-count", type=_positive_int, default=10, help="segments per playlist (10)")
    parser.add_argument("--segment-bytes", type=_positive_int, default=64 * 1024, help="bytes per segment")
    parser.add_argument("--rate-limit-scale", type=_positive_float, default=1.0, help="multiplies the limits")
    parser.add_argument("--sweep-interval", type=_positive_float, default=20.0, help="viewer sweep period (20 s)")
    parser.add_argument("--session-timeout", type=_positive_float, default=15.0, help="heartbeat timeout (15 s)")
    parser.add_argument("--cache-ttl", type=_positive_float, default=30.0, help="response cache TTL (30 s)")
    parser.add_argument(
        "--cache-sweep-interval", type=_positive_float, default=60.0, help="expired-entry sweep period (60 s)"
    )
    parser.add_argument(
        "--miss-cost-ms", type=float, default=25.0, help="artificial cost added to a cache miss (25 ms)"
    )
    parser.add_argument("--access-token-ttl", type=_positive_int, default=3600, help="access JWT life (s)")
    parser.add_argument("--refresh-token-ttl", type=_positive_int, default=7 * 24 * 3600, help="refresh JWT life")
    parser.add_argument(
        "--lockout-minutes", type=_positive_float, default=15.0, help="failed-login tracking window (15 min)"
    )
    parser.add_argument(
        "--login-delay-scale",
        type=float,
        default=1.0,
        help="multiplies the 1/2/4/8 s delay of a failed login (0: none; default 1)",
    )
    parser.add_argument(
        "--service-cache-ttl",
        type=_positive_float,
        default=None,
        help="lifetime of the services' cache entries (default: the backend's, 15 s cameras, 300 s areas)",
    )
    parser.add_argument(
        "--missing-archive-table",
        action="store_true",
        help="do not create viewer_session_history_archive (the migration-order bug)",
    )
    parser.add_argument(
        "--archive-interval", type=_positive_float, default=6 * 3600.0, help="history archive job period (6 h)"
    )
    parser.add_argument(
        "--cleanup-interval", type=_positive_float, default=24 * 3600.0, help="log retention job period (24 h)"
    )
    parser.add_argument(
        "--recorder-max-seconds",
        type=_positive_float,
        default=900.0,
        help="fake recorders exit by themselves after this long (900 s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return parser


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Parse the command line into Settings."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        LocalClock(args.timezone_offset, zone=args.timezone)
    except ValueError as exc:
        parser.error(str(exc))
    host, port = args.listen
    mediamtx_host, mediamtx_port = args.mediamtx_listen
    return Settings(
        host=host,
        port=port,
        data_dir=args.data_dir.expanduser().resolve(),
        cameras=args.cameras,
        api_key=args.api_key or None,
        sweep_enabled=not args.no_sweep,
        legacy_cache_shape=args.legacy_cache_shape,
        timezone_offset_hours=args.timezone_offset,
        timezone=args.timezone,
        mediamtx_host=mediamtx_host,
        mediamtx_port=mediamtx_port,
        segment_seconds=args.segment_seconds,
        segment_count=args.segment_count,
        segment_bytes=args.segment_bytes,
        rate_limit_scale=args.rate_limit_scale,
        sweep_interval=args.sweep_interval,
        session_timeout=args.session_timeout,
        cache_ttl=args.cache_ttl,
        cache_sweep_interval=args.cache_sweep_interval,
        miss_cost_ms=max(0.0, args.miss_cost_ms),
        access_token_ttl=args.access_token_ttl,
        refresh_token_ttl=args.refresh_token_ttl,
        lockout_minutes=args.lockout_minutes,
        login_delay_scale=max(0.0, args.login_delay_scale),
        service_cache_ttl=args.service_cache_ttl,
        missing_archive_table=args.missing_archive_table,
        archive_interval=args.archive_interval,
        cleanup_interval=args.cleanup_interval,
        recorder_max_seconds=args.recorder_max_seconds,
        verbose=args.verbose,
    )
