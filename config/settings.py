"""The daemon's settings: frozen dataclasses, one per section, with their defaults and bounds.

Field metadata drives the loader: ``env`` overrides the derived environment variable name (the
original specification's names), ``min``/``max`` bound numbers, ``choices`` restrict strings, ``secret``
marks a path whose contents must never be shown, ``unit`` names the unit where the name does not say it
(config.units.unit_of reads ``_ms``, ``_seconds``, ``_bytes``, ``_ratio``...), and ``example`` gives a value
for messages where the default is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any


class Mode(StrEnum):
    """How far the daemon may go: only look, plan without writing, or act."""

    OBSERVE = "observe"
    DRY_RUN = "dry_run"
    ENFORCE = "enforce"


def _f(default: Any, **meta: Any) -> Any:
    """Declare a field with a default and loader metadata."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata=meta)


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The HTTP API: where it listens and how writes are authorised."""

    listen: str = _f("127.0.0.1:9877")
    token_file: Path | None = _f(None, secret=True, example="/etc/cctv-optimizer/api-token")
    client_max_size: int = _f(64 * 1024, min=1024, max=16 * MIB, unit="bytes")
    # names besides the listen address and localhost that requests may use in Host (e.g. behind a proxy);
    # "name" allows any port, "name:port" only that one
    allowed_hosts: tuple[str, ...] = _f(())
    # open API connections at most; further ones are accepted and closed at once
    max_connections: int = _f(1024, min=1, max=100_000)
    # descriptors kept free below the soft RLIMIT_NOFILE for sampling, actions and the state database
    reserved_descriptors: int = _f(256, min=16, max=100_000)
    # a connection that has not sent a whole request line and headers in this long is closed
    header_timeout_seconds: float = _f(10.0, min=0.5, max=600.0)
    # expensive reads (history, samples, performance metrics) served at once; more wait, then get 503
    max_concurrent_reads: int = _f(4, min=1, max=64)
    # how long a read waits for its turn before the 503 (with Retry-After)
    read_queue_seconds: float = _f(2.0, min=0.0, max=60.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSettings:
    """Where the state database lives and how much history it keeps."""

    directory: Path | None = _f(None)
    retention_days: int = _f(30, min=1, max=3650)
    max_history_rows: int = _f(20000, min=100, max=10_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSettings:
    """The CCTV backend the daemon watches: its URL, database, HLS directory, credentials and process.

    ``hls_directory`` is where stale HLS files are pruned: it must be MediaMTX's own ``hlsDirectory``, on a RAM
    file system, and clear of system, backend and daemon directories (config/safety.py); ``hls_allow_disk``
    accepts one that is not in RAM.
    """

    url: str = _f("http://127.0.0.1:3000")
    database: Path | None = _f(None, example="/opt/rafnet-cctv/backend/data/cctv.db")
    hls_directory: Path = _f(Path("/dev/shm/mediamtx-live"))
    hls_allow_disk: bool = _f(False)
    admin_username: str | None = _f(None, example="admin")
    admin_password_file: Path | None = _f(
        None, secret=True, example="/run/credentials/cctv-optimizer.service/backend-admin-password"
    )
    api_key_file: Path | None = _f(None, secret=True, example="/run/credentials/cctv-optimizer.service/backend-api-key")
    process: str | None = _f(None, example="port:3000")
    mediamtx_url: str = _f("http://127.0.0.1:9997")
    hot_endpoints: tuple[str, ...] = _f(("/api/cameras/active", "/api/areas/public"))
    timeout_seconds: float = _f(5.0, min=0.1, max=120.0)
    timezone_offset_hours: float = _f(7.0, min=-14.0, max=14.0)
    user_agent: str = _f("cctv-optimizer/0.1")
    requests_per_minute: int = _f(30, min=1, max=90)


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionSettings:
    """Windowed detection: arm when N of the last M samples are above the enter threshold."""

    samples_required: int = _f(3, min=1, max=100)
    window_samples: int = _f(5, min=1, max=100)
    exit_ratio: float = _f(0.9, min=0.1, max=1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """The decision engine's gates and limits."""

    mode: Mode = _f(Mode.ENFORCE)
    plan_timeout_seconds: float = _f(10.0, min=0.1, max=600.0)
    apply_timeout_seconds: float = _f(30.0, min=0.1, max=3600.0)
    cooldown_seconds: float = _f(300.0, min=0.0, max=86400.0)
    cooldown_max_seconds: float = _f(3600.0, min=0.0, max=7 * 86400.0)
    budget_actions: int = _f(6, min=1, max=1000)
    budget_window_seconds: float = _f(3600.0, min=1.0, max=7 * 86400.0)
    breaker_failures: int = _f(3, min=1, max=100)
    allow_disruptive: bool = _f(False)
    revert_on_exit: bool = _f(False)
    stop_timeout_seconds: float = _f(20.0, min=1.0, max=600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerSettings:
    """Bounds of the adaptive sample interval and the size of the rolling windows."""

    min_interval_ms: int = _f(1000, min=100, max=600_000)
    max_interval_ms: int = _f(30000, min=100, max=3_600_000)
    window_size: int = _f(120, min=10, max=10_000)
    source_timeout_seconds: float = _f(4.0, min=0.1, max=60.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSettings:
    """The Alertmanager webhook: which alert label names the strategy, and how long a notification is remembered."""

    strategy_label: str = _f("optimize_strategy")
    dedupe_seconds: float = _f(600.0, min=0.0, max=7 * 86400.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretsSettings:
    """How strictly secret files (API token, admin password, API key) are checked.

    A secret file that users other than its owner and group can read is refused at start (exit 78) unless
    ``allow_world_readable`` is set; then it is only warned about, once, naming the file and its mode.
    """

    allow_world_readable: bool = _f(False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyOptions:
    """What every strategy's options have: whether it runs, and its own mode (the global one when unset).

    A strategy declares its options as a subclass (``Strategy.Options``); its fields are the settings
    ``strategies.<name>.<field>`` (``CCTV_OPTIMIZER_STRATEGIES__<NAME>__<FIELD>``), for a plugin too.
    """

    enabled: bool = _f(True)
    mode: Mode | None = _f(None)


@dataclass(frozen=True, slots=True)
class RawSetting:
    """A setting for a plugin's options as given, before the plugin says what it means: the value (text from the
    environment, a YAML value from the file), where it came from, and whether it is text from the environment."""

    value: object
    source: str
    from_env: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseOptions(StrategyOptions):
    """Options of the database strategy.

    ``wal_limit_bytes``: WAL size that arms a checkpoint; ``busy_timeout_ms``: how long a write waits for the
    backend's writer; ``optimize_interval_seconds``: least time between ``PRAGMA optimize`` runs;
    ``settle_seconds``: wait before the effect is measured. ``table_rows_warning``: row count of an uncleaned
    table that raises a finding. Retention (disruptive, off by default): ``retention_enabled``,
    ``retention_days`` (rows older than this go), ``archive_retention_days`` (the same for the history archive
    tables, whose rows are already 90 days old when they arrive), ``retention_batch_rows`` (rows per write
    transaction), ``retention_max_rows_per_run``. VACUUM (disruptive, off by default): ``vacuum_enabled``,
    ``vacuum_window`` (``HH:MM-HH:MM`` in the backend's local time), ``vacuum_min_freelist_ratio``.
    ``maintenance_max_seconds`` bounds one retention run or VACUUM (keep it below the engine's apply timeout).
    Before every retention run and every VACUUM the database is backed up (SQLite's online backup) into
    ``backup_directory`` (default: ``backups`` in the state directory), which keeps at most ``backup_keep`` backups
    and ``backup_max_bytes`` in all; with no room for one, nothing is pruned or vacuumed and a finding says why.
    ``cctv-optimizer restore-backup FILE`` puts one back.
    """

    wal_limit_bytes: int = _f(64 * MIB, min=4096, max=1 << 40)
    busy_timeout_ms: int = _f(1000, min=0, max=60_000)
    optimize_interval_seconds: float = _f(86400.0, min=60.0, max=30 * 86400.0)
    quick_check_interval_seconds: float = _f(7 * 86400.0, min=60.0, max=90 * 86400.0)
    settle_seconds: float = _f(5.0, min=0.0, max=3600.0)
    table_rows_warning: int = _f(1_000_000, min=1, max=1 << 40)
    retention_enabled: bool = _f(False)
    retention_days: int = _f(90, min=1, max=3650)
    archive_retention_days: int = _f(365, min=1, max=3650)
    retention_batch_rows: int = _f(500, min=1, max=100_000)
    retention_max_rows_per_run: int = _f(20_000, min=1, max=100_000_000)
    maintenance_max_seconds: float = _f(20.0, min=0.5, max=3600.0)
    vacuum_enabled: bool = _f(False)
    vacuum_window: str = _f("03:00-05:00")
    vacuum_min_freelist_ratio: float = _f(0.25, min=0.0, max=1.0)
    backup_directory: Path | None = _f(None)
    backup_keep: int = _f(3, min=1, max=1000)
    backup_max_bytes: int = _f(4 * 1024 * MIB, min=MIB, max=1 << 44)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryOptions(StrategyOptions):
    """Options of the memory strategy (``CCTV_OPTIMIZER_STRATEGIES__MEMORY__<FIELD>``).

    - ``hls_stale_age_seconds``: an unreferenced HLS file older than this is stale and may be pruned.
    - ``hls_budget_bytes``: the HLS directory's size above which the strategy arms.
    - ``hls_prune_max_files``: at most this many files are removed in one action.
    - ``shm_used_ratio``: the share of /dev/shm in use above which the strategy arms.
    - ``backend_rss_limit_bytes``: the backend's RSS above which the strategy arms.
    - ``backend_kill_bytes``: pm2's ``max_memory_restart`` (1 GiB in production): the hard kill to get ahead of.
    - ``restart_lead_seconds``: steady RSS growth that reaches the kill within this time also arms the strategy.
    - ``growth_min_span_seconds``: growth is trusted only over samples spanning at least this long.
    - ``growth_warmup_seconds``: after a backend (re)start its RSS rises while it warms up: growth is judged
      only on samples taken this long after the start.
    - ``own_budget_bytes``: the daemon's own memory budget; GC_THRESHOLD of it is the self-cleanup line.
    - ``cache_entries_limit``: backend response-cache entries above which junk is invalidated (or the cache cleared).
    - ``cache_junk_prefixes``: URL path prefixes to invalidate first (comma-separated; empty: the hot endpoints).
    - ``restart_command``: graceful backend restart, e.g. ``pm2 reload rafnet-cctv-backend`` (disruptive, opt-in).
    - ``restart_min_interval_seconds``: at most one restart in this long.
    - ``restart_quiet_max_viewers``: a moment is quiet when at most this many viewers are watching.
    - ``restart_urgent_seconds``: restart even when not quiet once the projected kill is this close.
    - ``restart_timeout_seconds``: how long the command and the old process's exit may take.
    - ``restart_settle_seconds``: when the backend's RSS is measured again after a restart.
    - ``settle_seconds``: when the effect of the safe actions is measured.
    """

    hls_stale_age_seconds: float = _f(120.0, min=10.0, max=86400.0)
    hls_budget_bytes: int = _f(512 * MIB, min=MIB, max=1 << 40)
    hls_prune_max_files: int = _f(10_000, min=1, max=10_000_000)
    shm_used_ratio: float = _f(0.8, min=0.05, max=1.0)
    backend_rss_limit_bytes: int = _f(768 * MIB, min=16 * MIB, max=1 << 40)
    backend_kill_bytes: int = _f(1024 * MIB, min=32 * MIB, max=1 << 40)
    restart_lead_seconds: float = _f(3600.0, min=0.0, max=7 * 86400.0)
    growth_min_span_seconds: float = _f(300.0, min=1.0, max=7 * 86400.0)
    growth_warmup_seconds: float = _f(600.0, min=0.0, max=86400.0)
    own_budget_bytes: int = _f(128 * MIB, min=16 * MIB, max=1 << 34)
    cache_entries_limit: int = _f(5000, min=10, max=10_000_000)
    cache_junk_prefixes: tuple[str, ...] = _f(())
    restart_command: str | None = _f(None, example="pm2 reload rafnet-cctv-backend")
    restart_min_interval_seconds: float = _f(86400.0, min=60.0, max=30 * 86400.0)
    restart_quiet_max_viewers: int = _f(2, min=0, max=1_000_000)
    restart_urgent_seconds: float = _f(900.0, min=0.0, max=7 * 86400.0)
    restart_timeout_seconds: float = _f(20.0, min=1.0, max=3600.0)
    restart_settle_seconds: float = _f(120.0, min=0.0, max=3600.0)
    settle_seconds: float = _f(10.0, min=0.0, max=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuOptions(StrategyOptions):
    """Options of the cpu strategy (``CCTV_OPTIMIZER_STRATEGIES__CPU__<FIELD>``; the host line is ``CPU_THRESHOLD``).

    - ``load_per_core``: one-minute load per core at or above which the strategy arms.
    - ``psi_some_avg10``: PSI ``cpu some avg10`` (percent) at or above which the strategy arms.
    - ``recorder_pattern``: the argument that marks an ``ffmpeg`` as a recorder (``-segment_time``); an output
      matching ``*/camera<ID>/pending/*.mp4.partial`` marks one too.
    - ``recordings_directory``: when set, only recorders writing under this directory are managed.
    - ``recorder_nice``: the nice value recorders get while the host is hot (never lowered if already higher).
    - ``recorder_ionice_idle``: use the IO ``idle`` class instead of best-effort level 7 (can starve recorders).
    - ``hot_sample_interval_factor``: how much the daemon's own sample interval is stretched while hot.
    - ``settle_seconds``: when the backend's response time is measured again after renicing.
    """

    load_per_core: float = _f(1.5, min=0.1, max=100.0)
    psi_some_avg10: float = _f(40.0, min=0.0, max=100.0, unit="percent")
    recorder_pattern: str = _f("-segment_time")
    recordings_directory: Path | None = _f(None, example="/opt/rafnet-cctv/recordings")
    recorder_nice: int = _f(10, min=1, max=19)
    recorder_ionice_idle: bool = _f(False)
    hot_sample_interval_factor: float = _f(2.0, min=1.0, max=10.0)
    settle_seconds: float = _f(15.0, min=0.0, max=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOptions(StrategyOptions):
    """Options of the connection strategy (``CCTV_OPTIMIZER_STRATEGIES__CONNECTION__<FIELD>``).

    - ``session_timeout_seconds``: the backend's own viewer-session timeout (15 s): its sweep ends sessions silent
      for longer, and so does this strategy when it does the sweep's job.
    - ``sweep_interval_seconds``: how often the backend's sweep runs (20 s).
    - ``stuck_sweep_periods``: the sweep counts as stuck only when the number of sessions past the timeout has not
      gone down for this many sweep periods (and the oldest has been silent that long); while it goes down the
      sweep is working through a backlog and nothing is done.
    - ``stuck_session_seconds``: an active session silent for longer than this arms the strategy (and is counted
      as ``sessions_stuck``); it then acts only on the rule above.
    - ``session_batch_rows``, ``session_max_batches``: sessions ended per short transaction, and batches per action.
    - ``busy_timeout_ms``: how long a batch may wait for the backend's writer before the action gives up.
    - ``finding_hold_seconds``: how long ``sessions-sweep-stuck`` stays reported after the last stuck session.
    - ``close_wait_threshold``: CLOSE_WAIT sockets on the backend's ports that are reported as a leak.
    - ``established_floor``, ``baseline_factor``: ESTABLISHED sockets at or above
      ``max(floor, baseline x factor)`` arm the strategy and are reported (``connections-above-normal``);
      they lead to the reader kick only when ``kick_idle_readers`` is on.
    - ``kick_idle_readers``: kick idle MediaMTX readers (disruptive; also needs ``engine.allow_disruptive``).
    - ``idle_reader_seconds``: a reader is idle when it sent nothing for this long.
    - ``kick_max_readers``: at most this many readers are kicked in one action.
    - ``settle_seconds``: when the effect is measured again.
    """

    session_timeout_seconds: float = _f(15.0, min=1.0, max=3600.0)
    stuck_session_seconds: float = _f(120.0, min=10.0, max=86400.0)
    sweep_interval_seconds: float = _f(20.0, min=0.01, max=3600.0)
    stuck_sweep_periods: int = _f(6, min=1, max=1000)
    session_batch_rows: int = _f(100, min=1, max=10_000)
    session_max_batches: int = _f(50, min=1, max=10_000)
    busy_timeout_ms: int = _f(1000, min=0, max=60_000)
    finding_hold_seconds: float = _f(3600.0, min=0.0, max=7 * 86400.0)
    close_wait_threshold: int = _f(50, min=1, max=1_000_000)
    established_floor: int = _f(500, min=1, max=10_000_000)
    baseline_factor: float = _f(3.0, min=1.0, max=100.0)
    kick_idle_readers: bool = _f(False)
    idle_reader_seconds: float = _f(120.0, min=1.0, max=86400.0)
    kick_max_readers: int = _f(10, min=1, max=10_000)
    settle_seconds: float = _f(5.0, min=0.0, max=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions(StrategyOptions):
    """Options of the cache strategy.

    ``hit_rate_floor``: recent hit rate (from counter deltas) below which the cache has collapsed, judged only
    over at least ``min_lookups`` lookups; ``entries_limit``: entry count that counts as an explosion;
    ``junk_share_limit``: share of the recent misses that left a new entry behind (keys never seen before: junk
    query strings) above which the cache is filling with junk, judged over at least ``min_lookups`` misses;
    ``clear_fallback``: clear the whole cache when invalidating the hot prefixes leaves it over the limit;
    ``response_time_floor_ms`` and ``baseline_factor``: hot endpoints slower than the larger of the floor and
    the learned baseline times the factor arm the strategy (invalidate the hot paths' junk and warm them when
    ``/health`` is fast) and are reported; ``settle_seconds``: wait before the effect is measured.
    """

    hit_rate_floor: float = _f(0.3, min=0.0, max=1.0, unit="ratio")
    min_lookups: int = _f(50, min=1, max=10_000_000)
    entries_limit: int = _f(2000, min=10, max=10_000_000)
    junk_share_limit: float = _f(0.5, min=0.05, max=1.0, unit="ratio")
    clear_fallback: bool = _f(True)
    response_time_floor_ms: float = _f(500.0, min=1.0, max=600_000.0)
    baseline_factor: float = _f(3.0, min=1.0, max=100.0)
    settle_seconds: float = _f(10.0, min=0.0, max=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategiesSettings:
    """Per-strategy options, and third-party strategies to load."""

    database: DatabaseOptions = field(default_factory=DatabaseOptions)
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    cpu: CpuOptions = field(default_factory=CpuOptions)
    connection: ConnectionOptions = field(default_factory=ConnectionOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    plugins: tuple[str, ...] = _f(())
    # ``strategies.<plugin>.<field>`` as given, for each plugin in ``plugins``; the plugin's own Options class
    # checks them when it is built (not a setting of its own: the loader fills it)
    plugin_options: Mapping[str, Mapping[str, RawSetting]] = field(
        default_factory=lambda: MappingProxyType({}), metadata={"internal": True}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole effective configuration of the daemon."""

    enable_performance_optimization: bool = _f(True, env="ENABLE_PERFORMANCE_OPTIMIZATION")
    optimization_interval: int = _f(30000, env="OPTIMIZATION_INTERVAL", min=1000, max=86_400_000, unit="milliseconds")
    memory_threshold: float = _f(0.8, env="MEMORY_THRESHOLD", min=0.05, max=1.0, unit="ratio")
    cpu_threshold: float = _f(0.9, env="CPU_THRESHOLD", min=0.05, max=1.0, unit="ratio")
    gc_threshold: float = _f(0.7, env="GC_THRESHOLD", min=0.05, max=1.0, unit="ratio")
    enable_gc: bool = _f(True, env="ENABLE_GC")
    enable_connection_pooling: bool = _f(True, env="ENABLE_CONNECTION_POOLING")
    enable_caching: bool = _f(True, env="ENABLE_CACHING")
    log_level: str = _f("info", env="LOG_LEVEL", choices=("debug", "info", "warning", "error"))
    sample_interval: int = _f(5000, min=100, max=3_600_000, unit="milliseconds")
    api: ApiSettings = field(default_factory=ApiSettings)
    state: StateSettings = field(default_factory=StateSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    alertmanager: AlertmanagerSettings = field(default_factory=AlertmanagerSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    strategies: StrategiesSettings = field(default_factory=StrategiesSettings)

    @property
    def effective_mode(self) -> Mode:
        """The global mode: observe when optimization is switched off."""
        return self.engine.mode if self.enable_performance_optimization else Mode.OBSERVE

    @property
    def state_directory(self) -> Path:
        """The state directory (resolved by the loader; ./state when nothing said otherwise)."""
        return self.state.directory if self.state.directory is not None else Path("state")
