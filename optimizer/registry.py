"""Which strategies run: the built-ins, listed explicitly, and plugins from an entry point group.

Every strategy, built-in or plugin, is a Strategy subclass built the same way: ``cls.from_config(options,
settings, deps)``, where ``options`` is its ``Options`` dataclass filled from ``strategies.<name>.*``. A plugin
that fails to load or to build is logged and skipped; a plugin named in the configuration that is not installed,
or whose options are wrong, is a configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

import structlog

from config.errors import ConfigError, Problem
from config.loader import build_options
from config.settings import Settings, StrategyOptions
from strategies.base import Built, Skipped, Strategy, StrategyDeps
from strategies.cache import CacheStrategy
from strategies.connection import ConnectionStrategy
from strategies.cpu import CpuStrategy
from strategies.database import DatabaseStrategy
from strategies.memory import MemoryStrategy

ENTRY_POINT_GROUP = "cctv_optimizer.strategies"
# the built-in strategies, in the order their rounds run; each one's options are ``settings.strategies.<name>``
BUILT_INS: tuple[type[Strategy], ...] = (
    DatabaseStrategy,
    MemoryStrategy,
    CpuStrategy,
    ConnectionStrategy,
    CacheStrategy,
)
log = structlog.get_logger("registry")


def build_strategies(settings: Settings, deps: StrategyDeps) -> list[Built]:
    """Instantiate the configured strategies, built-ins first, then the plugins named in ``strategies.plugins``."""
    out: list[Built] = []
    for cls in BUILT_INS:
        options: StrategyOptions = getattr(settings.strategies, cls.name)
        _add(out, cls, cls.from_config(options, settings, deps))
    for name, cls in plugin_classes(settings.strategies.plugins).items():
        try:
            options = plugin_options(name, cls, settings)
            built = cls.from_config(options, settings, deps)
        except ConfigError:
            raise
        except Exception as exc:  # a broken plugin must not take the daemon down
            log.error("plugin_failed", plugin=name, error=f"{exc.__class__.__name__}: {exc}")
            continue
        _add(out, cls, built)
    return out


def _add(out: list[Built], cls: type[Strategy], built: Built | Skipped) -> None:
    if isinstance(built, Skipped):
        log.info("strategy_skipped", strategy=cls.name, reason=built.reason)
    else:
        out.append(built)


def plugin_options(name: str, cls: type[Strategy], settings: Settings) -> StrategyOptions:
    """The plugin's Options, from ``strategies.<name>.*`` as given; ConfigError naming each wrong one."""
    given = settings.strategies.plugin_options.get(name, {})
    options = build_options(cls.Options, given, prefix=f"strategies.{name}.")
    if not isinstance(options, StrategyOptions):  # pragma: no cover - build_options builds cls.Options
        raise TypeError(f"{name}: options are not StrategyOptions")
    return options


def plugin_classes(wanted: Iterable[str], failed: dict[str, str] | None = None) -> dict[str, type[Strategy]]:
    """The Strategy classes of the plugins named in ``strategies.plugins``, by name, from the entry point group.

    A name that is not installed is a configuration error; one that does not load as a Strategy subclass whose
    ``name`` is the entry point's is logged and skipped (and its error put in ``failed``, for check-config).
    """
    wanted = tuple(wanted)
    if not wanted:
        return {}
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ConfigError(
            [
                Problem(path="strategies.plugins", message=f"plugin {name!r} is not installed", source="config")
                for name in missing
            ]
        )
    out: dict[str, type[Strategy]] = {}
    for name in wanted:
        try:
            cls = found[name].load()
            if not (isinstance(cls, type) and issubclass(cls, Strategy)):
                raise TypeError(f"entry point {found[name].value} is not a Strategy subclass")
            if cls.name != name:
                raise TypeError(f"{found[name].value} is named {cls.name!r}, not {name!r}")
        except Exception as exc:  # a broken plugin must not take the daemon down
            log.error("plugin_failed", plugin=name, error=f"{exc.__class__.__name__}: {exc}")
            if failed is not None:
                failed[name] = f"{exc.__class__.__name__}: {exc}"
            continue
        out[name] = cls
    return out


def plugin_problems(settings: Settings) -> list[str]:
    """What check-config says about the plugins: not installed, not loading, or options their Options refuse."""
    failed: dict[str, str] = {}
    try:
        classes = plugin_classes(settings.strategies.plugins, failed)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    out = [f"strategies.plugins: plugin {name!r} does not load: {error}" for name, error in failed.items()]
    for name, cls in classes.items():
        try:
            plugin_options(name, cls, settings)
        except ConfigError as exc:
            out.extend(str(p) for p in exc.problems)
    return out
