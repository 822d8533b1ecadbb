"""Load the settings from defaults < YAML file < environment, collecting every problem at once.

Each leaf setting has a dotted path (``backend.url``) and an environment name: the specification's bare
names for the top-level fields it defines (``OPTIMIZATION_INTERVAL``), else ``CCTV_OPTIMIZER_`` followed by
the path in upper case with ``__`` between sections (``CCTV_OPTIMIZER_BACKEND__URL``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from config import units
from config.errors import ConfigError, Problem
from config.safety import hls_root_problems
from config.settings import RawSetting, Settings, StrategiesSettings
from config.units import Unit

ENV_PREFIX = "CCTV_OPTIMIZER_"
CONFIG_ENV = "CCTV_OPTIMIZER_CONFIG"
DEFAULT_SOURCE = "default"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_PROCESS_SPEC = re.compile(r"^(pid|unit|port|name):(.+)$")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Leaf:
    """One setting of the schema: where it sits, its type, its variable name and its bounds."""

    path: str
    env: str
    type: Any
    default: Any
    meta: Mapping[str, Any]

    @property
    def unit(self) -> Unit:
        """What the setting's number measures: its ``unit`` metadata, else what its name says."""
        declared = self.meta.get("unit")
        return Unit(declared) if declared else units.unit_of(self.path)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoadedSettings:
    """The effective settings and, for every leaf, where its value came from."""

    settings: Settings
    sources: Mapping[str, str]
    leaves: tuple[Leaf, ...]
    # things worth saying that do not stop the daemon (a world-readable secret allowed by the settings, a
    # variable that looks like a misspelt setting in the process environment)
    warnings: tuple[Problem, ...] = ()


def iter_leaves(cls: type[Any] = Settings, prefix: str = "") -> Iterator[Leaf]:
    """Walk the settings dataclasses and yield every leaf setting."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue  # filled by the loader itself, not a setting anyone sets
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_leaves(typing.cast(type[Any], tp), prefix=f"{path}.")
            continue
        env = f.metadata.get("env") or ENV_PREFIX + path.upper().replace(".", "__")
        yield Leaf(path=path, env=env, type=tp, default=f.default, meta=f.metadata)


# What a running daemon cannot take over at a reload: its readers, clients, API socket and state store are built
# once at start with these. A reload keeps their running values (and says a restart is needed) rather than leave
# half of the daemon on the old ones and half on the new, as when the strategies wrote to a new database while the
# sampler read the old one.
RESTART_ONLY = (
    "api.",
    "state.",
    "backend.",
    "sampler.source_timeout_seconds",
    "sampler.window_size",
    "strategies.plugins",
)


def _leaf_value(settings: Any, path: str) -> Any:
    value = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _with_leaf(settings: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(settings, **{parts[0]: value})
    inner = _with_leaf(getattr(settings, parts[0]), parts[1:], value)
    return dataclasses.replace(settings, **{parts[0]: inner})


def restart_only_changes(running: Settings, loaded: Settings) -> tuple[str, ...]:
    """The restart-only settings whose newly loaded value differs from the running one."""
    return tuple(
        leaf.path
        for leaf in iter_leaves()
        if leaf.path.startswith(RESTART_ONLY) and _leaf_value(running, leaf.path) != _leaf_value(loaded, leaf.path)
    )


def keep_restart_only(running: Settings, loaded: Settings) -> Settings:
    """``loaded`` with every restart-only setting at its running value: what a reload may apply now."""
    kept: Settings = loaded
    for path in restart_only_changes(running, loaded):
        kept = _with_leaf(kept, path.split("."), _leaf_value(running, path))
    return kept


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, allows None) for ``X | None`` annotations."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def example_of(leaf: Leaf, given: float | None = None) -> str:  # noqa: PLR0911 -- one example per kind of setting
    """An example value for a message: one close to what was given when that reads as a unit slip, else the default.

    ``OPTIMIZATION_INTERVAL=30`` was meant as seconds (example ``30000 for 30 s``); ``CPU_THRESHOLD=80`` as a
    percentage (example ``0.8 for 80 %``).
    """
    unit = leaf.unit
    lo, hi = leaf.meta.get("min"), leaf.meta.get("max")

    def fits(v: float) -> bool:
        return (lo is None or v >= lo) and (hi is None or v <= hi)

    if given is not None and given > 0:
        if unit is Unit.MILLISECONDS and fits(given * 1000):
            return units.example(unit, given * 1000)
        if unit is Unit.RATIO and fits(given / 100):
            return units.example(unit, given / 100)
    default = leaf.meta.get("example", leaf.default)
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (int, float)) and fits(default):
        return units.example(unit, default)
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "(empty)"
    if default is None:
        return "(unset)"
    return str(default)


def _unit_words(leaf: Leaf) -> str:
    """`` milliseconds`` and the like, for "a whole number of ..." messages; empty for plain counts."""
    word = units.UNIT_WORDS.get(leaf.unit)
    return f" of {word}" if word else ""


def _range_message(leaf: Leaf, value: float) -> str:
    """Why a number is out of range, in the setting's unit, with an example."""
    lo: float = leaf.meta.get("min", -math.inf)
    hi: float = leaf.meta.get("max", math.inf)
    example = example_of(leaf, value)
    if leaf.unit is Unit.RATIO:
        return f"must be a ratio from {units.number(lo)} to {units.number(hi)}, e.g. {example}"
    word = units.UNIT_WORDS.get(leaf.unit, "")
    bound, limit = ("at least", lo) if value < lo else ("at most", hi)
    shown = f"{units.number(limit).replace(',', '')}{' ' + word if word else ''}"
    if (leaf.unit is Unit.BYTES and limit >= units.KIB**2) or (
        leaf.unit in (Unit.MILLISECONDS, Unit.SECONDS) and units.value(limit, leaf.unit).endswith(("h", "d"))
    ):
        shown += f" = {units.value(limit, leaf.unit)}"
    return f"must be {bound} {shown} (e.g. {example})"


def _convert(leaf: Leaf, raw: Any, from_env: bool) -> Any:  # noqa: PLR0912, PLR0915 -- one branch per setting type, read top to bottom
    """Convert a raw value to the leaf's type, raising ValueError with a message naming what is wrong.

    Messages say the unit and give an example; the value itself is shown by the Problem (``NAME=value``).
    """
    tp, nullable = _optional_inner(leaf.type)
    if raw is None or (from_env and raw == "" and nullable):
        if nullable:
            return None
        raise ValueError(f"a value is required (e.g. {example_of(leaf)})")
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if tp is int:
        whole = f"expected a whole number{_unit_words(leaf)} (e.g. {example_of(leaf)})"
        if isinstance(raw, (bool, float)):
            raise ValueError(whole)
        try:
            value: Any = int(str(raw).strip().replace("_", ""))
        except ValueError:
            raise ValueError(whole) from None
    elif tp is float:
        if leaf.unit is Unit.RATIO:
            expected = f"expected a ratio, e.g. {example_of(leaf)}"
        else:
            expected = f"expected a number{_unit_words(leaf)} (e.g. {example_of(leaf)})"
        if isinstance(raw, bool):
            raise ValueError(expected)
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ValueError(expected) from None
        if not math.isfinite(value):
            raise ValueError(expected.replace("expected a", "expected a finite", 1))
    elif tp is str:
        if not isinstance(raw, str):
            raise ValueError(f"expected text (e.g. {example_of(leaf)})")
        value = raw
    elif tp is Path:
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"expected a path (e.g. {example_of(leaf)})")
        value = Path(raw)
    elif isinstance(tp, type) and issubclass(tp, Enum):
        try:
            value = tp(str(raw).strip().lower())
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise ValueError(f"expected one of {allowed}") from None
    elif typing.get_origin(tp) is tuple:
        if from_env and isinstance(raw, str):
            items = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            items = list(raw)
        else:
            raise ValueError(f"expected a list of text, comma-separated in a variable (e.g. {example_of(leaf)})")
        value = tuple(items)
    else:  # pragma: no cover - schema error, caught by the schema test
        raise TypeError(f"unsupported setting type {tp!r} at {leaf.path}")
    lo, hi = leaf.meta.get("min"), leaf.meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(_range_message(leaf, value))
    choices = leaf.meta.get("choices")
    if choices is not None:
        value = str(value).lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
    return value


def did_you_mean(name: str, known: typing.Iterable[str], cutoff: float = 0.75) -> str:
    """``; did you mean X?`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]}?" if close else ""


# A name this close to one of the specification's bare variables is taken for a misspelling of it.
MISSPELLING_CUTOFF = 0.85


def _shown(raw: Any) -> str:
    """A raw value as the operator wrote it, for ``NAME=value`` (YAML values as YAML would print them)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return json.dumps(raw) if isinstance(raw, (list, dict)) else str(raw)


def _flatten_yaml(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted path, value) for every leaf of a nested YAML mapping."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten_yaml(value, prefix=f"{path}.")
        else:
            yield path, value


def _read_yaml(path: Path, problems: list[Problem]) -> dict[str, Any]:
    """Read the YAML file as a flat {dotted path: value} mapping, recording problems."""
    source = f"file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(Problem(path="config", message=f"cannot read the file: {exc.strerror}", source=source))
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(Problem(path="config", message=f"not valid YAML{where}", source=source))
        return {}
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.append(Problem(path="config", message="the top level must be a mapping", source=source))
        return {}
    flat: dict[str, Any] = {}
    for key, value in _flatten_yaml(data):
        flat[key.replace("-", "_")] = value
    return flat


def _legacy_yaml_key(leaf: Leaf) -> str | None:
    """Top-level specification settings may also be written in YAML by their lower-case variable name."""
    env = leaf.meta.get("env")
    return str(env).lower() if env else None


def load_settings(  # noqa: PLR0912, PLR0915 -- file, environment, defaults: one pass each, in that order
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    *,
    origins: Mapping[str, str] | None = None,
    check_files: bool = True,
    provided_files: frozenset[Path] = frozenset(),
) -> LoadedSettings:
    """Build the effective settings; raise ConfigError listing every problem found.

    ``origins`` says where a variable was set when that is more than the process environment (the env file
    and its line, from check-config); it is added to the variable's source. With ``origins`` every variable
    is the operator's own (the env file holds nothing else), so a misspelt one is an error; in the process
    environment, which holds other programs' variables too, a near miss of a specification name is a warning.
    ``check_files=False`` skips what depends on who is asking (secret files, the state directory): the CLI
    only wants the listen address and must not fail because its user cannot read the backend's password.
    ``provided_files`` are files systemd creates when the service starts (its credentials), which check-config
    checks through their sources instead.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    leaves = tuple(iter_leaves())
    by_path = {leaf.path: leaf for leaf in leaves}
    values: dict[str, Any] = {leaf.path: leaf.default for leaf in leaves}
    sources: dict[str, str] = {leaf.path: DEFAULT_SOURCE for leaf in leaves}
    # strategies.<name>.<field> for a name that is no built-in strategy: a plugin's option if <name> is a plugin
    candidates: list[tuple[tuple[str, str], RawSetting, str]] = []

    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    if config_file is not None:
        source = f"file {config_file}"
        aliases = {k: leaf for leaf in leaves if (k := _legacy_yaml_key(leaf))}
        for key, raw in _read_yaml(config_file, problems).items():
            leaf = by_path.get(key) or aliases.get(key)
            if leaf is None:
                if (named := _plugin_setting(key)) is not None:
                    candidates.append((named, RawSetting(raw, source, from_env=False), key))
                    continue
                hint = did_you_mean(key, [*by_path, *aliases])
                problems.append(Problem(path=key, message=f"unknown setting{hint}", source=source))
                continue
            try:
                values[leaf.path] = _convert(leaf, raw, from_env=False)
                sources[leaf.path] = source
            except ValueError as exc:
                problems.append(Problem(path=leaf.path, message=str(exc), source=source, name=key, value=_shown(raw)))

    by_env = {leaf.env: leaf for leaf in leaves}
    bare = [leaf.env for leaf in leaves if not leaf.env.startswith(ENV_PREFIX)]
    for name, raw in sorted(env.items()):
        where = f"env {name}" + (f", {origins[name]}" if origins and name in origins else "")
        leaf = by_env.get(name)
        if leaf is None:
            path = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
            if name.startswith(ENV_PREFIX) and (named := _plugin_setting(path)) is not None:
                candidates.append((named, RawSetting(raw, where, from_env=True), name))
                continue
            if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
                hint = did_you_mean(name, by_env)
                problems.append(Problem(path=name, message=f"unknown setting{hint}", source=where))
            elif hint := did_you_mean(name, bare, MISSPELLING_CUTOFF):
                unknown = Problem(path=name, message=f"not a setting, ignored{hint}", source=where)
                (problems if origins is not None else warnings).append(unknown)
            continue
        try:
            values[leaf.path] = _convert(leaf, raw, from_env=True)
            sources[leaf.path] = where
        except ValueError as exc:
            problems.append(Problem(path=leaf.path, message=str(exc), source=where, name=name, value=raw))

    if values["state.directory"] is None:
        state_dirs = env.get("STATE_DIRECTORY", "")
        first = state_dirs.split(":")[0] if state_dirs else ""
        values["state.directory"] = Path(first) if first else Path("state")
        sources["state.directory"] = "env STATE_DIRECTORY" if first else DEFAULT_SOURCE

    settings = _build(Settings, values)
    settings = dataclasses.replace(
        settings,
        strategies=dataclasses.replace(
            settings.strategies, plugin_options=_plugin_options(candidates, settings.strategies.plugins, problems)
        ),
    )
    # checked even when some values were wrong (those keep their defaults), so every problem shows at once
    failed = {p.path for p in problems}
    problems.extend(
        p
        for p in validate(settings, sources, env, warnings, check_files=check_files, provided_files=provided_files)
        if p.path not in failed
    )
    if problems:
        raise ConfigError(problems)
    return LoadedSettings(settings=settings, sources=sources, leaves=leaves, warnings=tuple(warnings))


def _build(cls: type[Any], values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate the nested dataclasses from the flat values."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue  # its default; the loader fills it afterwards
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(typing.cast(type[Any], tp), values, prefix=f"{path}.")
        else:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


# the built-in strategies' option sections: strategies.<one of these>.* are settings of the schema
_BUILT_IN_STRATEGIES = frozenset(
    name for name, tp in typing.get_type_hints(StrategiesSettings).items() if dataclasses.is_dataclass(tp)
)


def _plugin_setting(path: str) -> tuple[str, str] | None:
    """(plugin, field) when ``path`` is ``strategies.<name>.<field>`` and <name> is no built-in strategy."""
    parts = path.split(".")
    if len(parts) != 3 or parts[0] != "strategies" or parts[1] in _BUILT_IN_STRATEGIES or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _plugin_options(
    candidates: list[tuple[tuple[str, str], RawSetting, str]], plugins: tuple[str, ...], problems: list[Problem]
) -> Mapping[str, Mapping[str, RawSetting]]:
    """The options given for each plugin in ``plugins``; any other ``strategies.<name>.*`` is an unknown setting."""
    out: dict[str, dict[str, RawSetting]] = {}
    for (plugin, name), raw, given in candidates:
        if plugin in plugins:
            out.setdefault(plugin, {})[name] = raw
            continue
        known = sorted(_BUILT_IN_STRATEGIES | set(plugins))
        hint = did_you_mean(plugin, known)
        message = f"unknown setting: no strategy or plugin {plugin!r}" + (
            hint if hint else " (a plugin's options need the plugin in strategies.plugins)"
        )
        problems.append(Problem(path=given, message=message, source=raw.source))
    return types.MappingProxyType({k: types.MappingProxyType(v) for k, v in out.items()})


def build_options(cls: type[Any], given: Mapping[str, RawSetting], prefix: str) -> Any:
    """Instantiate a strategy's options dataclass ``cls`` from settings as given (a plugin's), checked the way
    every setting is: raise ConfigError naming each unknown field and each bad value, under ``prefix``."""
    leaves = {leaf.path.removeprefix(prefix): leaf for leaf in iter_leaves(cls, prefix)}
    problems: list[Problem] = []
    kwargs: dict[str, Any] = {}
    for name, raw in sorted(given.items()):
        leaf = leaves.get(name)
        if leaf is None:
            problems.append(
                Problem(path=prefix + name, message=f"unknown setting{did_you_mean(name, leaves)}", source=raw.source)
            )
            continue
        try:
            kwargs[name] = _convert(leaf, raw.value, from_env=raw.from_env)
        except ValueError as exc:
            problems.append(
                Problem(
                    path=leaf.path,
                    message=str(exc),
                    source=raw.source,
                    name=leaf.env if raw.from_env else leaf.path,
                    value=_shown(raw.value),
                )
            )
    if problems:
        raise ConfigError(problems)
    return cls(**kwargs)


_ALLOWED_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,253})(:[0-9]{1,5})?$")


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:port`` for IPv6) and check both parts."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {listen!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"expected an IP address or localhost, got {host!r}") from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected a port number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credential_path(environ: Mapping[str, str], name: str) -> Path | None:
    """The systemd credential file NAME when the service was given one."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / name
    return candidate if candidate.is_file() else None


def _validate_url(url: str) -> str | None:
    """Return a message when the URL is not an http(s) URL with a host."""
    match = re.match(r"^https?://([^/:]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?(/.*)?$", url)
    return None if match else f"expected an http:// or https:// URL, got {url!r}"


def validate(  # noqa: PLR0912, PLR0913, PLR0915 -- one check per rule, each with its own message
    settings: Settings,
    sources: Mapping[str, str],
    environ: Mapping[str, str],
    warnings: list[Problem] | None = None,
    *,
    check_files: bool = True,
    provided_files: frozenset[Path] = frozenset(),
) -> list[Problem]:
    """Cross-field and safety checks that a single value's type and bounds cannot express.

    Secret files are checked here too (they exist, can be read, and others cannot read them), so that
    ``run`` stops with exit 78 before anything starts and check-config says the same.
    """
    problems: list[Problem] = []
    leaves = {leaf.path: leaf for leaf in iter_leaves()}

    def add(path: str, message: str, into: list[Problem] | None = None) -> None:
        source = sources.get(path, DEFAULT_SOURCE)
        name: str | None = None
        raw: str | None = None
        if source.startswith("env "):
            name = source[4:].split(",", 1)[0]
            raw = environ.get(name)
        elif source.startswith("file ") and path in leaves:
            name, raw = path, _render_value(settings, path)
        (problems if into is None else into).append(
            Problem(path=path, message=message, source=source, name=name, value=raw)
        )

    try:
        host, _port = parse_listen(settings.api.listen)
    except ValueError as exc:
        add("api.listen", f"{exc} (e.g. 127.0.0.1:9877)")
    else:
        has_token = settings.api.token_file is not None or credential_path(environ, "api-token") is not None
        if not is_loopback(host) and not has_token:
            add("api.listen", "a non-loopback address needs a token (api.token_file or credential api-token)")
    for name in settings.api.allowed_hosts:
        if not _ALLOWED_HOST.match(name):
            add(
                "api.allowed_hosts",
                f"each entry must be a host name or address, optionally with :port, got {name!r:.80}",
            )
    for path, url in (
        ("backend.url", settings.backend.url),
        ("backend.mediamtx_url", settings.backend.mediamtx_url),
    ):
        if (msg := _validate_url(url)) is not None:
            add(path, f"{msg} (e.g. http://127.0.0.1:3000)")
    for endpoint in settings.backend.hot_endpoints:
        if not endpoint.startswith("/"):
            add(
                "backend.hot_endpoints",
                f"each endpoint must be a path starting with /, got {endpoint!r} (e.g. /api/cameras/active)",
            )
    process = settings.backend.process
    if process is not None and not _PROCESS_SPEC.match(process):
        add("backend.process", "expected pid:FILE, unit:NAME, port:N or name:PATTERN (e.g. port:3000)")
    elif process is not None and process.startswith("port:") and not process[5:].isdigit():
        add("backend.process", "port: needs a port number (e.g. port:3000)")
    if settings.detection.samples_required > settings.detection.window_samples:
        add(
            "detection.samples_required",
            f"must not exceed detection.window_samples ({settings.detection.window_samples})",
        )
    if settings.sampler.min_interval_ms > settings.sampler.max_interval_ms:
        add(
            "sampler.min_interval_ms",
            f"must not exceed sampler.max_interval_ms ({settings.sampler.max_interval_ms} milliseconds)",
        )
    if settings.engine.cooldown_seconds > settings.engine.cooldown_max_seconds:
        add(
            "engine.cooldown_seconds",
            f"must not exceed engine.cooldown_max_seconds ({units.number(settings.engine.cooldown_max_seconds)} seconds)",
        )
    if not _WINDOW.match(settings.strategies.database.vacuum_window):
        add("strategies.database.vacuum_window", "expected HH:MM-HH:MM, e.g. 03:00-05:00")
    backups = settings.strategies.database.backup_directory
    if backups is not None and not backups.is_absolute():
        add("strategies.database.backup_directory", "must be an absolute path (e.g. /var/lib/cctv-optimizer/backups)")

    for problem in hls_root_problems(
        settings.backend.hls_directory,
        database=settings.backend.database,
        state_directory=settings.state_directory,
        allow_disk=settings.backend.hls_allow_disk,
        backup_directory=backups if backups is not None and backups.is_absolute() else None,
    ):
        add("backend.hls_directory", problem)

    database = settings.backend.database
    if database is not None:
        if database.exists() and database.is_file():
            try:
                with database.open("rb") as fh:
                    header = fh.read(16)
            except OSError as exc:
                add("backend.database", f"cannot read the file: {exc.strerror}")
            else:
                if header and header != SQLITE_MAGIC:
                    add("backend.database", "is not a SQLite database file")
        elif database.exists():
            add("backend.database", "is not a regular file")

    memory = settings.strategies.memory
    if memory.restart_command is not None and not settings.engine.allow_disruptive:
        add(
            "strategies.memory.restart_command",
            "a backend restart command needs the explicit opt-in engine.allow_disruptive=true",
        )

    if not check_files:
        return problems
    state_dir = settings.state_directory
    if state_dir.exists() and not state_dir.is_dir():
        add("state.directory", f"{state_dir} is not a directory")

    allow = settings.secrets.allow_world_readable
    for path, file in secret_files(settings):
        if file is None or file in provided_files:
            continue
        access = secret_file_problem(file)
        if access is not None:
            add(path, access)
        elif (exposed := exposed_secret(file)) is not None:
            if allow:
                add(path, f"{exposed} (allowed by secrets.allow_world_readable)", warnings)
            else:
                add(path, f"{exposed}: chmod o-rwx {file}, or set {SECRETS_ALLOW_ENV}=true to accept it")
    return problems


SECRETS_ALLOW_ENV = ENV_PREFIX + "SECRETS__ALLOW_WORLD_READABLE"


def secret_files(settings: Settings) -> list[tuple[str, Path | None]]:
    """(setting path, file) of every secret-file setting."""
    out: list[tuple[str, Path | None]] = []
    for leaf in iter_leaves():
        if leaf.meta.get("secret"):
            out.append((leaf.path, typing.cast(Path | None, _value_at(settings, leaf.path))))
    return out


def secret_file_problem(file: Path) -> str | None:
    """Why a configured secret file cannot be used by this process, or None when it can be read."""
    try:
        info = file.stat()
    except FileNotFoundError:
        return f"{file} does not exist"
    except OSError as exc:
        return f"cannot reach {file}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{file} is not a regular file"
    if not os.access(file, os.R_OK):
        return f"cannot read {file}: permission denied"
    if info.st_size == 0:
        return f"{file} is empty"
    return None


def exposed_secret(file: Path) -> str | None:
    """``FILE is readable by others (mode 0644)`` when users outside its owner and group can read or change it."""
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return f"{file} is readable by others (mode {mode:04o})"
    if mode & stat.S_IWOTH:
        return f"{file} is writable by others (mode {mode:04o})"
    return None


def _value_at(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _render_value(settings: Settings, path: str) -> str:
    value = _value_at(settings, path)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def read_secret(path: Path | None, environ: Mapping[str, str], credential: str) -> str | None:
    """Read a secret from its file, or from the systemd credential of that name; None when neither is set.

    Raises ConfigError (never showing the contents) when the configured file cannot be read or is empty.
    """
    source = "setting"
    if path is None:
        path = credential_path(environ, credential)
        source = f"credential {credential}"
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            [Problem(path=credential, message=f"cannot read {path}: {exc.strerror}", source=source)]
        ) from None
    if not text:
        raise ConfigError([Problem(path=credential, message=f"{path} is empty", source=source)])
    return text
