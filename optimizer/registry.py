"""Which strategies run: the built-ins, listed explicitly, and plugins from an entry point group.

A plugin that fails to load is logged and skipped; a plugin named in the configuration that cannot be
found is a configuration error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import structlog

from config.errors import ConfigError, Problem
from config.settings import Mode, Settings
from metrics.backend import BackendClient
from metrics.hls import HlsReader
from metrics.process import ProcessReader
from metrics.window import Windows
from strategies.base import Strategy
from strategies.database import DatabaseStrategy

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


def build_strategies(settings: Settings, deps: Dependencies) -> list[tuple[Strategy, Mode | None, bool]]:
    """Instantiate the configured strategies: (strategy, its configured mode, enabled)."""
    out: list[tuple[Strategy, Mode | None, bool]] = []
    s = settings.strategies
    exit_ratio = settings.detection.exit_ratio
    if settings.backend.database is not None:
        out.append(
            (
                DatabaseStrategy(settings.backend.database, s.database, exit_ratio=exit_ratio, clock=deps.monotonic),
                s.database.mode,
                s.database.enabled,
            )
        )
    else:
        log.info("strategy_skipped", strategy="database", reason="backend.database is not configured")
    # memory strategy goes here
    # cpu strategy goes here
    # connection strategy goes here
    # cache strategy goes here
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
