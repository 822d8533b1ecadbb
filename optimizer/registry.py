"""Which strategies run: the built-ins, listed explicitly, and plugins from an entry point group.

A plugin that fails to load is logged and skipped; a plugin named in the configuration that cannot be
found is a configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import structlog

from config.errors import ConfigError, Problem
from config.settings import Mode, Settings
from metrics.backend import BackendClient
from metrics.hls import HlsReader
from metrics.process import ProcessReader
from metrics.recorders import RecorderReader
from metrics.window import Windows
from strategies.actions.mediamtx import MediaMtxKicker
from strategies.base import Strategy
from strategies.cache import CacheStrategy
from strategies.connection import ConnectionStrategy
from strategies.cpu import CpuStrategy
from strategies.database import DatabaseStrategy
from strategies.memory import MemoryStrategy

ENTRY_POINT_GROUP = "cctv_optimizer.strategies"
log = structlog.get_logger("registry")


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependencies:
    """The shared readers and clients strategies act through."""

    backend: BackendClient | None
    hls: HlsReader | None
    process: ProcessReader | None
    windows: Windows
    monotonic: Callable[[], float]
    trim_history: Callable[[], None] | None = None
    state_directory: Path | None = None


def build_strategies(settings: Settings, deps: Dependencies) -> list[tuple[Strategy, Mode | None, bool]]:
    """Instantiate the configured strategies: (strategy, its configured mode, enabled)."""
    out: list[tuple[Strategy, Mode | None, bool]] = []
    s = settings.strategies
    exit_ratio = settings.detection.exit_ratio
    if settings.backend.database is not None:
        out.append(
            (
                DatabaseStrategy(
                    settings.backend.database,
                    s.database,
                    exit_ratio=exit_ratio,
                    timezone_offset_hours=settings.backend.timezone_offset_hours,
                    backup_directory=settings.state_directory / "backups",
                    clock=deps.monotonic,
                ),
                s.database.mode,
                s.database.enabled,
            )
        )
    else:
        log.info("strategy_skipped", strategy="database", reason="backend.database is not configured")
    out.append(
        (
            MemoryStrategy(
                s.memory,
                memory_threshold=settings.memory_threshold,
                gc_threshold=settings.gc_threshold,
                enable_gc=settings.enable_gc,
                exit_ratio=exit_ratio,
                windows=deps.windows,
                hls_root=deps.hls.root if deps.hls is not None else None,
                backend=deps.backend,
                hot_endpoints=settings.backend.hot_endpoints,
                trim_history=deps.trim_history,
                clock=deps.monotonic,
            ),
            s.memory.mode,
            s.memory.enabled,
        )
    )
    process = deps.process
    out.append(
        (
            CpuStrategy(
                s.cpu,
                cpu_threshold=settings.cpu_threshold,
                exit_ratio=exit_ratio,
                detection=settings.detection,
                recorders=RecorderReader(
                    marker=s.cpu.recorder_pattern,
                    recordings_root=s.cpu.recordings_directory,
                    exclude=lambda: (process.pid if process is not None else None,),
                ),
                state_file=deps.state_directory / "cpu-priorities.json" if deps.state_directory is not None else None,
                restore_on_close=settings.engine.revert_on_exit,
            ),
            s.cpu.mode,
            s.cpu.enabled,
        )
    )
    out.append(
        (
            ConnectionStrategy(
                s.connection,
                database=settings.backend.database,
                timezone_offset_hours=settings.backend.timezone_offset_hours,
                detection=settings.detection,
                exit_ratio=exit_ratio,
                kicker=MediaMtxKicker(settings.backend.mediamtx_url, settings.backend.timeout_seconds)
                if s.connection.kick_idle_readers
                else None,
                clock=deps.monotonic,
            ),
            s.connection.mode,
            s.connection.enabled and settings.enable_connection_pooling,
        )
    )
    if deps.backend is not None and deps.backend.has_credentials:
        out.append(
            (
                CacheStrategy(
                    deps.backend,
                    s.cache,
                    hot_endpoints=settings.backend.hot_endpoints,
                    windows=deps.windows,
                    window_samples=settings.detection.window_samples,
                    exit_ratio=exit_ratio,
                    clock=deps.monotonic,
                ),
                s.cache.mode,
                s.cache.enabled and settings.enable_caching,
            )
        )
    else:
        log.info("strategy_skipped", strategy="cache", reason="no backend admin credentials are configured")
    out.extend(load_plugins(s.plugins, settings, deps))
    return out


def load_plugins(
    wanted: Sequence[str], settings: Settings, deps: Dependencies
) -> list[tuple[Strategy, Mode | None, bool]]:
    """Load third-party strategies named in ``strategies.plugins`` from the entry point group."""
    if not wanted:
        return []
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ConfigError(
            [
                Problem(path="strategies.plugins", message=f"plugin {name!r} is not installed", source="config")
                for name in missing
            ]
        )
    out: list[tuple[Strategy, Mode | None, bool]] = []
    for name in wanted:
        try:
            factory: Any = found[name].load()
            strategy = factory(settings=settings, deps=deps)
            if not isinstance(strategy, Strategy):
                raise TypeError(f"{name} did not build a Strategy")
        except Exception as exc:  # a broken plugin must not take the daemon down
            log.error("plugin_failed", plugin=name, error=f"{exc.__class__.__name__}: {exc}")
            continue
        out.append((strategy, None, True))
    return out
