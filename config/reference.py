"""The configuration reference: every setting with its variable, YAML key, default, bounds and meaning.

``python -m config.reference`` prints it as the Markdown table the README carries between
``<!-- config:begin -->`` and ``<!-- config:end -->``; a test keeps the two in step. Strategy options take their
meaning from their options class docstring (``name``: meaning), the rest from ``MEANINGS`` below.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from config.loader import Leaf, iter_leaves
from config.settings import StrategiesSettings

MEANINGS: dict[str, str] = {
    "enable_performance_optimization": "`false`: sample and serve, never act (observe mode)",
    "optimization_interval": "milliseconds between decision rounds",
    "memory_threshold": "host memory used ratio that arms the memory strategy",
    "cpu_threshold": "host CPU ratio that arms the cpu strategy",
    "gc_threshold": "the daemon's own soft memory line, as a ratio of its budget",
    "enable_gc": "switch the memory strategy's self-cleanup (gc, history trim)",
    "enable_connection_pooling": "switch the connection strategy",
    "enable_caching": "switch the cache strategy",
    "log_level": "log level of the JSON log on stdout",
    "sample_interval": "milliseconds between samples (adapted within the sampler bounds)",
    "api.listen": "host:port of the HTTP API; a non-loopback address needs a token",
    "api.token_file": "file with the bearer token for writes (or credential `api-token`); unset on loopback: generated",
    "api.client_max_size": "largest accepted request body, bytes",
    "api.allowed_hosts": "names besides the listen address and localhost that Host may carry (`name` or `name:port`)",
    "api.max_connections": "open API connections at most (also kept below RLIMIT_NOFILE less the reserve)",
    "api.reserved_descriptors": "descriptors kept free for sampling, actions and the state database",
    "api.header_timeout_seconds": "a connection that has not sent its request headers by then is closed",
    "api.max_concurrent_reads": "expensive reads (history, samples, metrics page) served at once",
    "api.read_queue_seconds": "how long one more expensive read waits for its turn before 503 with Retry-After",
    "state.directory": "where `state.db` and the generated token live (`$STATE_DIRECTORY`, else `./state`)",
    "state.retention_days": "decision history kept this many days",
    "state.max_history_rows": "and at most this many rows",
    "backend.url": "the backend's base URL",
    "backend.database": "the backend's SQLite file (the database and connection strategies need it)",
    "backend.hls_directory": (
        "MediaMTX's HLS directory, where stale segments are pruned; system, broad, backend, state and install "
        "directories are refused (docs/SAFETY.md)"
    ),
    "backend.hls_allow_disk": "accept an HLS directory that is not on a RAM file system (tmpfs)",
    "backend.admin_username": "admin user for the backend's protected endpoints (cache stats and clears)",
    "backend.admin_password_file": "file with that user's password (or credential `backend-admin-password`)",
    "backend.api_key_file": "file with the backend's API key (or credential `backend-api-key`)",
    "backend.process": "how to find the backend: `pid:FILE`, `unit:NAME`, `port:N` or `name:PATTERN` (default: port of the URL)",
    "backend.mediamtx_url": "MediaMTX control API",
    "backend.hot_endpoints": "public endpoints probed and warmed after a cache clear (comma-separated)",
    "backend.timeout_seconds": "timeout of one call to the backend",
    "backend.timezone_offset_hours": (
        "hours from UTC used only when the backend's `system_settings` timezone names a zone this host does not "
        "know (the zone itself is read from the database)"
    ),
    "backend.user_agent": "User-Agent of the daemon's calls",
    "backend.requests_per_minute": "the daemon's budget of calls to the backend (the backend allows 100/min per IP)",
    "detection.samples_required": "N: samples past the enter line that arm a strategy ...",
    "detection.window_samples": "... out of the last M samples",
    "detection.exit_ratio": "exit line = enter line x ratio (hysteresis)",
    "engine.mode": "global mode: observe, dry_run or enforce",
    "engine.plan_timeout_seconds": "a plan() that takes longer is abandoned",
    "engine.apply_timeout_seconds": "an apply() that takes longer is cancelled and recorded as failed",
    "engine.cooldown_seconds": "wait after an action before the strategy may act again",
    "engine.cooldown_max_seconds": "cap of the cooldown, which doubles after each neutral verdict",
    "engine.budget_actions": "attempts allowed per strategy ...",
    "engine.budget_window_seconds": "... per rolling window of this length",
    "engine.breaker_failures": "consecutive failures or regressions that open the strategy's breaker",
    "engine.allow_disruptive": "allow disruptive actions at all (each also needs its own opt-in)",
    "engine.revert_on_exit": "restore every reversible change on a clean stop",
    "engine.stop_timeout_seconds": "how long a stop waits for the running round",
    "sampler.min_interval_ms": "shortest sample interval (near thresholds)",
    "sampler.max_interval_ms": "longest sample interval (all calm)",
    "sampler.window_size": "samples kept per signal",
    "sampler.source_timeout_seconds": "a source slower than this is marked down for that sample",
    "alertmanager.strategy_label": "alert label that names the strategy to run",
    "alertmanager.dedupe_seconds": "repeated notifications of the same alert group within this are ignored",
    "secrets.allow_world_readable": "accept secret files that others can read, with a warning (default: refuse, exit 78)",
    "strategies.plugins": "extra strategies to load by entry-point name (group `cctv_optimizer.strategies`)",
    "strategies.database.quick_check_interval_seconds": "least time between `PRAGMA quick_check` runs",
    "strategies.database.retention_enabled": "prune old rows of the tables nobody cleans (disruptive, opt-in)",
    "strategies.database.vacuum_enabled": "VACUUM in the quiet window when the freelist is large (disruptive, opt-in)",
    "strategies.database.vacuum_window": "the quiet window, `HH:MM-HH:MM` in the backend's local time",
    "strategies.database.vacuum_min_freelist_ratio": "VACUUM only when at least this share of pages is free",
    "strategies.database.retention_max_rows_per_run": "rows removed at most per retention run",
    "strategies.database.maintenance_max_seconds": "bound of one retention run or VACUUM (keep below the apply timeout)",
    "strategies.database.backup_directory": (
        "where the database is backed up before every retention run and VACUUM (default: `backups` in the state "
        "directory)"
    ),
    "strategies.database.backup_keep": "backups kept at most (the oldest go first)",
    "strategies.database.backup_max_bytes": "bytes all backups may take; no room: no retention or VACUUM, a finding",
    "strategies.cache.min_lookups": "lookups needed before a hit rate is trusted",
    "strategies.memory.cache_junk_prefixes": "URL path prefixes to invalidate first (comma-separated; empty: the hot endpoints)",
    "strategies.memory.restart_command": "graceful backend restart, e.g. `pm2 reload rafnet-cctv-backend` (disruptive, opt-in)",
    "strategies.memory.own_budget_bytes": "the daemon's own memory budget; `GC_THRESHOLD` of it is the self-cleanup line",
    "strategies.connection.kick_idle_readers": "kick idle MediaMTX readers (disruptive; also needs `engine.allow_disruptive`)",
    "strategies.connection.session_batch_rows": "sessions ended per short write transaction",
    "strategies.connection.session_max_batches": "batches per action",
    "strategies.connection.established_floor": "ESTABLISHED sockets at or above `max(floor, baseline x factor)` arm the reader kick",
    "strategies.connection.baseline_factor": "the factor on the learned ESTABLISHED baseline in that line",
    "strategies.cache.response_time_floor_ms": "hot endpoints slower than `max(floor, baseline x factor)` count as slow",
    "strategies.cache.baseline_factor": "the factor on the learned response-time baseline in that line",
}

COMMON_OPTIONS = {
    "enabled": "switch the strategy off entirely",
    "mode": "the strategy's own mode (default: the global one)",
}

_NAMES = re.compile(r"``(\w+)``")
_HEAD = re.compile(r"((?:``\w+``(?:,\s*|\s+and\s+)?)+):")
_INLINE = re.compile(r"``(\w+)``\s+\(([^)]*)\)")


def option_meanings(cls: type[Any]) -> dict[str, str]:
    """Meanings of an options class's fields, read from its docstring: ``name``: meaning, or ``name`` (meaning)."""
    doc = " ".join((cls.__doc__ or "").split("\n", 1)[-1].split())
    out: dict[str, str] = {}
    heads = list(_HEAD.finditer(doc))
    for head, following in zip(heads, [*heads[1:], None], strict=True):
        text = doc[head.end() : following.start() if following else len(doc)]
        # a meaning ends at its sentence or clause; what follows belongs to the next field
        meaning = re.split(r";\s|\.\s|\s-\s", text.strip(), maxsplit=1)[0].strip(" .;-")
        for name in _NAMES.findall(head.group(1)):
            out.setdefault(name, meaning.replace("``", "`"))
    for name, meaning in _INLINE.findall(doc):
        out.setdefault(name, meaning.replace("``", "`"))
    return out


def _strategy_meanings() -> dict[str, str]:
    out: dict[str, str] = {}
    hints = typing.get_type_hints(StrategiesSettings)
    for f in dataclasses.fields(StrategiesSettings):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            meanings = {**COMMON_OPTIONS, **option_meanings(typing.cast(type[Any], tp))}
            out.update({f"strategies.{f.name}.{key}": text for key, text in meanings.items()})
    return out


def _default(leaf: Leaf) -> str:  # noqa: PLR0911 -- one rendering per setting type
    value = leaf.default
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    return f"`{value}`"


def _allowed(leaf: Leaf) -> str:
    if "choices" in leaf.meta:
        return " ".join(str(c) for c in leaf.meta["choices"])
    low, high = leaf.meta.get("min"), leaf.meta.get("max")
    if low is None and high is None:
        return ""
    return f"{low:g}..{high:g}"


def leaves_with_meanings() -> Iterator[tuple[Leaf, str]]:
    """Every setting with its meaning ("" when none is written down)."""
    meanings = {**_strategy_meanings(), **MEANINGS}
    for leaf in iter_leaves():
        yield leaf, meanings.get(leaf.path, "")


def markdown() -> str:
    """The configuration reference as a Markdown table."""
    lines = ["| variable | YAML key | default | allowed | meaning |", "|---|---|---|---|---|"]
    for leaf, meaning in leaves_with_meanings():
        lines.append(f"| `{leaf.env}` | `{leaf.path}` | {_default(leaf)} | {_allowed(leaf)} | {meaning} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- config:begin -->", "<!-- config:end -->"


def splice(text: str, block: str) -> str:
    """Put ``block`` between the config markers of ``text`` (which must have them, once each)."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Print the reference table, or with ``--write FILE`` splice it into FILE between the markers."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"] and len(args) == 2:
        path = Path(args[1])
        path.write_text(splice(path.read_text(encoding="utf-8"), markdown()), encoding="utf-8")
        return 0
    if args:
        sys.stderr.write("usage: python -m config.reference [--write README.md]\n")
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
