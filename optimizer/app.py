"""The composition root: builds every part with explicit arguments and runs the daemon's lifecycle.

States: starting -> running -> stopping -> stopped. SIGTERM/SIGINT stop cleanly (the running round may
finish, within a bound); SIGHUP reloads the configuration and keeps the old one when the new one is
invalid. Under systemd it sends READY=1, STATUS= and WATCHDOG=1 (only while the decision loop is fresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import os
import secrets
import signal
import time
from collections.abc import Coroutine, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from config.errors import ConfigError, Problem
from config.loader import (
    LoadedSettings,
    did_you_mean,
    keep_restart_only,
    load_settings,
    parse_listen,
    read_secret,
    restart_only_changes,
)
from config.settings import Settings
from metrics.backend import BackendClient, Credentials
from metrics.hls import HlsReader
from metrics.mediamtx import MediaMtxClient
from metrics.process import ProcessReader, ProcessSpec
from metrics.prometheus import DaemonMetrics, Exposition, SnapshotCollector
from metrics.sampler import Sampler
from metrics.signals import BY_NAME, is_known_signal
from metrics.snapshot import Snapshot
from metrics.source import SourceDeps
from metrics.sources import build_sources, url_port
from metrics.tcp import TcpCounter
from metrics.window import Windows
from optimizer import __version__, cadence
from optimizer.alertmanager import AlertmanagerReceiver
from optimizer.api import (
    BODY_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    LINGER_SECONDS,
    ApiContext,
    HostPolicy,
    ReadGate,
    build_app,
    render_ahead,
)
from optimizer.apiloop import ApiLoop
from optimizer.baselines import ALL_HOURS, BaselineLearner, BaselineRecord
from optimizer.clock import Clock, SystemClock
from optimizer.connections import (
    AcceptErrorLog,
    ConnectionCollector,
    ConnectionLimiter,
    LimitedSite,
    accept_backlog,
    connection_cap,
    open_descriptors,
)
from optimizer.dashboard import load_dashboard
from optimizer.engine import Engine, EngineStopping
from optimizer.executors import Executors, run_in
from optimizer.logs import REDACTOR, configure_logging
from optimizer.registry import build_strategies
from optimizer.sdnotify import SystemdNotifier
from optimizer.state import HistoryReader, StateStore
from strategies.base import StrategyDeps

VERSION = __version__
log = structlog.get_logger("daemon")

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78
# bind() errors that restarting cannot fix: the address is not on this host, or the port needs a privilege
_BIND_CONFIG_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM})


class StartupError(Exception):
    """Start-up could not finish for a reason an operator can act on; ``config`` when it is the configuration's."""

    def __init__(self, message: str, *, config: bool) -> None:
        super().__init__(message)
        self.message = message
        self.config = config


class LifecycleState(StrEnum):
    """Where the daemon is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def resolve_api_token(settings: Settings, environ: Mapping[str, str]) -> tuple[str, str]:
    """The write token and where it came from; generated into the state directory when none is configured."""
    token = read_secret(settings.api.token_file, environ, "api-token")
    if token is not None:
        return token, "configured"
    path = settings.state_directory / "api-token"
    try:
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return text, f"generated {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(fresh + "\n")
        return fresh, f"generated {path}"
    except OSError as exc:
        # the state directory is read-only: writes over the API will need a configured token
        log.warning("api_token_not_persisted", path=str(path), error=exc.strerror)
        return secrets.token_hex(32), "ephemeral"


class Daemon:
    """The running daemon: sampler, engine, scheduler, API, state and lifecycle."""

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        loaded: LoadedSettings,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        tcp_counter: TcpCounter | None = None,
        proc_root: Path = Path("/proc"),
        autostart_loops: bool = True,
        api_idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        api_body_timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.loaded = loaded
        self.settings = loaded.settings
        self._environ = dict(os.environ if environ is None else environ)
        self._config_file = config_file
        self.clock = clock or SystemClock()
        self._notifier = notifier or SystemdNotifier(self._environ)
        self._tcp_counter = tcp_counter
        self._proc_root = proc_root
        self._autostart = autostart_loops
        self._api_idle_timeout = api_idle_timeout
        self._api_body_timeout = api_body_timeout
        self.state = LifecycleState.STARTING
        self._stop_event = asyncio.Event()
        self._reload_pending = False
        self._reload_task: asyncio.Task[None] | None = None
        self._sample_task: asyncio.Task[None] | None = None
        self._sample_wakeup = asyncio.Event()
        # one sample at a time: a requested round's sample waits for the loop's (a source read twice at once is
        # reported down by the sampler)
        self._sample_lock = asyncio.Lock()
        self._scheduler: AsyncIOScheduler | None = None
        self._runner: web.AppRunner | None = None
        self.started_wall = self.clock.wall()
        self.last_sample_at: float | None = None
        self.sample_interval = self.settings.sample_interval / 1000
        # the interval before a strategy's stretch: what next_sample_interval adapts from sample to sample
        self.adaptive_interval = self.sample_interval
        self.api_host = ""
        self.api_port = 0
        # restart-only settings a reload found changed: still at their running values until a restart
        self.restart_needed: tuple[str, ...] = ()
        self.token = ""
        self._background: set[asyncio.Future[None]] = set()
        # set once _build() has made every part: stop() after a failed start closes only what exists
        self._built = False
        self.accept_errors = AcceptErrorLog()
        self._api_loop: ApiLoop | None = None
        self._app: web.Application | None = None

    # building ----------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        s = self.settings
        env = self._environ
        # the secrets first: a missing or unreadable one stops the start before anything is opened
        password = read_secret(s.backend.admin_password_file, env, "backend-admin-password")
        api_key = read_secret(s.backend.api_key_file, env, "backend-api-key")
        self.token, token_source = resolve_api_token(s, env)
        REDACTOR.register(self.token, password, api_key)
        self.token_source = token_source
        self.executors = Executors()
        self.store = StateStore(
            s.state_directory,
            retention_days=s.state.retention_days,
            max_history_rows=s.state.max_history_rows,
            wall_clock=self.clock.wall,
        )
        self.history = HistoryReader(self.store)
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        snapshots = SnapshotCollector(lambda: self.engine.latest, VERSION)
        self.registry.register(snapshots)
        process = ProcessCollector(registry=self.registry, namespace="cctv_optimizer")
        # /metrics in the registry's order: each part rendered again only when it changed, the live ones at most
        # once a second
        self.exposition = Exposition()
        self.exposition.add(self.metrics, key=lambda: self.metrics.version)
        self.exposition.add(snapshots, key=snapshots.key)
        self.exposition.add(process)
        self.backend = BackendClient(
            s.backend.url,
            Credentials(username=s.backend.admin_username, password=password, api_key=api_key),
            user_agent=s.backend.user_agent,
            timeout_seconds=s.backend.timeout_seconds,
            requests_per_minute=s.backend.requests_per_minute,
            clock=self.clock.monotonic,
        )
        self.mediamtx = MediaMtxClient(s.backend.mediamtx_url, s.backend.timeout_seconds)
        process_spec = ProcessSpec.parse(s.backend.process or f"port:{url_port(s.backend.url)}")
        self.process = ProcessReader(process_spec, self._proc_root, port=url_port(s.backend.url))
        self.hls = HlsReader(s.backend.hls_directory, s.strategies.memory.hls_stale_age_seconds)
        self.sampler = Sampler(
            build_sources(
                s,
                SourceDeps(
                    proc_root=self._proc_root,
                    backend=self.backend,
                    process=self.process,
                    hls=self.hls,
                    mediamtx=self.mediamtx,
                    tcp_counter=self._tcp_counter,
                ),
            ),
            source_timeout_seconds=s.sampler.source_timeout_seconds,
            clock=self.clock.monotonic,
            wall_clock=self.clock.wall,
            executor=self.executors.sampler,
        )
        self.windows = Windows(s.sampler.window_size)
        self.baselines = BaselineLearner()
        self.engine = Engine(
            [(b.strategy, b.mode, b.enabled) for b in build_strategies(s, self._deps())],
            engine=s.engine,
            detection=s.detection,
            global_mode=s.effective_mode,
            windows=self.windows,
            store=self.store,
            metrics=self.metrics,
            clock=self.clock,
            refresh=self.sample_now,
            store_executor=self.executors.state,
        )
        self._built = True

    def _check_triggers(self) -> None:
        """Say at start which triggers watch a signal nothing measures (a misspelt name in a plugin): they never arm."""
        for view in self.engine.views():
            for spec in view.triggers:
                if not is_known_signal(spec.signal):
                    log.warning(
                        "trigger_unknown_signal",
                        strategy=view.name,
                        signal=spec.signal,
                        consequence="this trigger never arms",
                        hint=did_you_mean(spec.signal, BY_NAME).removeprefix("; ") or None,
                    )

    def _deps(self) -> StrategyDeps:
        return StrategyDeps(
            backend=self.backend,
            hls=self.hls,
            process=self.process,
            windows=self.windows if hasattr(self, "windows") else Windows(self.settings.sampler.window_size),
            monotonic=self.clock.monotonic,
            trim_history=self.store.trim,
            state_directory=self.settings.state_directory,
        )

    # lifecycle ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build, open state, bind the API, take a first sample, start the loops, tell systemd we are ready."""
        self._build()
        self.executors.install(asyncio.get_running_loop())
        await asyncio.to_thread(self.store.open)
        if self.store.moved_aside is not None:
            log.warning("state_corrupt_moved_aside", moved_to=str(self.store.moved_aside))
        if not self.store.healthy:
            log.warning("state_unavailable", error=self.store.last_error)
        await self.engine.load()
        self._check_triggers()
        saved_baselines = await asyncio.to_thread(self.store.load_baselines)
        self.baselines.load(saved_baselines, saved_at=await asyncio.to_thread(self.store.baseline_times))
        host, port = parse_listen(self.settings.api.listen)
        hosts = HostPolicy(host, port, self.settings.api.allowed_hosts)
        self.alertmanager = AlertmanagerReceiver(
            self.engine, lambda: self.settings.alertmanager, monotonic=self.clock.monotonic
        )
        app = build_app(
            ApiContext(
                engine=self.engine,
                store=self.store,
                exposition=self.exposition,
                settings=lambda: self.settings,
                token=self.token,
                started_wall=self.started_wall,
                wall=self.clock.wall,
                health=self.health,
                status=self.status,
                alertmanager=self.alertmanager,
                dashboard_html=load_dashboard(),
                body_timeout=self._api_body_timeout,
                hosts=hosts,
                reads=ReadGate(self.settings.api.max_concurrent_reads, self.settings.api.read_queue_seconds),
                history=self.history,
                history_executor=self.executors.history,
                main_loop=asyncio.get_running_loop(),
            ),
            client_max_size=self.settings.api.client_max_size,
        )
        self._app = app
        self.engine.on_round_end = self._render_ahead
        # keepalive_timeout also closes connections that never finish their headers (slow clients)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=5.0,
            keepalive_timeout=self._api_idle_timeout,
            lingering_time=LINGER_SECONDS,
        )
        api = self.settings.api
        self._api_backlog = accept_backlog(api.reserved_descriptors)
        self.connection_limiter = ConnectionLimiter(
            connection_cap(
                api.max_connections, api.reserved_descriptors, in_use=open_descriptors(), backlog=self._api_backlog
            ),
            api.header_timeout_seconds,
        )
        connections = ConnectionCollector(self.connection_limiter, self.accept_errors)
        self.registry.register(connections)
        self.exposition.add(connections)
        self._api_loop = ApiLoop()
        self._api_loop.start()
        self.api_host = host
        self.api_port = await self._api_loop.call(self._serve_api(self._runner, host, port))
        hosts.port = self.api_port
        await self.sample_now()
        # What start-up built (modules, clients, strategies, the first sample's caches) lives as long as the daemon.
        # A full collection walks every tracked object holding the GIL, so even one run in a worker thread (the
        # memory strategy's clean-up, the interpreter's own generation-2 pass) stalls the event loop for tens of
        # milliseconds. Frozen objects are skipped by later collections and still freed by reference counting.
        gc.freeze()
        self.state = LifecycleState.RUNNING
        if self._autostart:
            self._start_loops()
        log.info(
            "daemon_started",
            version=VERSION,
            api=f"http://{self.api_url_host}:{self.api_port}",
            mode=str(self.engine.global_mode),
            strategies=self.engine.strategy_names(),
            token=self.token_source,
            state=str(self.store.path),
            api_connection_cap=self.connection_limiter.cap,
        )
        self._notifier.ready(status=self._status_line())

    async def _serve_api(self, runner: web.AppRunner, host: str, port: int) -> int:
        """(On the API's loop.) Set the runner up and listen; the port bound."""
        await runner.setup()
        self.accept_errors.install(asyncio.get_running_loop())
        site = LimitedSite(runner, host, port, self.connection_limiter, backlog=self._api_backlog)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.settings.api.listen} (api.listen): "
                f"{os.strerror(exc.errno) if exc.errno else exc}",
                config=exc.errno in _BIND_CONFIG_ERRNOS,
            ) from None
        sockets = getattr(site.server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _close_api(self, runner: web.AppRunner) -> None:
        """(On the API's loop.) Stop listening, let the handlers finish (bounded), close the connections."""
        await runner.cleanup()
        self.accept_errors.uninstall(asyncio.get_running_loop())

    @property
    def api_url_host(self) -> str:
        """The API host as it goes in a URL."""
        return f"[{self.api_host}]" if ":" in self.api_host else self.api_host

    def _start_loops(self) -> None:
        self._sample_task = asyncio.create_task(self._sample_loop())
        scheduler = AsyncIOScheduler()
        interval = self.settings.optimization_interval / 1000
        scheduler.add_job(
            self._scheduled_round, "interval", seconds=interval, id="round", max_instances=1, coalesce=True
        )
        period = self._notifier.watchdog_interval()
        if period is not None:
            scheduler.add_job(self._watchdog, "interval", seconds=period, id="watchdog", max_instances=1, coalesce=True)
        scheduler.start()
        self._scheduler = scheduler

    async def _scheduled_round(self) -> None:
        """The periodic decision round."""
        try:
            await self.engine.request_round(trigger="scheduled")
        except EngineStopping:
            return
        except asyncio.CancelledError:
            # The scheduler's shutdown cancels this wrapper; the shielded round itself is left to engine.stop(),
            # so this is the normal way out at SIGTERM, not a crash worth a traceback.
            if self.state in (LifecycleState.STOPPING, LifecycleState.STOPPED):
                return
            raise
        except Exception:
            log.exception("round_crashed")
        self._notifier.status(self._status_line())

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog only while the decision loop and the sampler are fresh."""
        ok, reason = self.health()
        if ok:
            self._notifier.watchdog()
        else:
            log.warning("watchdog_withheld", reason=reason)

    async def _sample_loop(self) -> None:
        while not self._stop_event.is_set():
            self._sample_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sample_wakeup.wait(), self.sample_interval)
            if self._stop_event.is_set():
                break
            try:
                await self.sample_now()
            except Exception:
                log.exception("sample_crashed")

    async def sample_now(self) -> Snapshot:
        """Take one sample, publish it to the engine and metrics, and adapt the interval.

        The sample loop calls it, and so does a requested round (manual, Alertmanager) before it plans.
        """
        async with self._sample_lock:
            return await self._sample()

    async def _sample(self) -> Snapshot:
        previous = self.engine.latest
        # the state file deleted or replaced under the daemon is recreated now, not at the next decision's write
        await run_in(self.executors.state, self.store.verify)
        snapshot = await self.sampler.sample()
        self._log_source_changes(previous, snapshot)
        self._learn(snapshot)
        self.engine.on_snapshot(snapshot)
        self.metrics.observe_snapshot(snapshot)
        self.last_sample_at = self.clock.monotonic()
        self._adapt_interval()
        self._render_ahead()
        return snapshot

    def _render_ahead(self) -> None:
        """GET /performance-metrics rendered for a new sample or a round's end, while it is being polled."""
        if self._app is None:
            return
        try:
            render_ahead(self._app)
        except Exception:
            log.exception("render_ahead_crashed")

    def _learn(self, snapshot: Snapshot) -> None:
        """Feed the baselines; persist a finished hour of day, and the last hour's every 60 samples."""
        records = self.baselines.observe(snapshot.wall_time, snapshot.signals())
        if snapshot.seq % 60 == 0:
            records.extend(self.baselines.last_hour().values())
        current = self.baselines.current(snapshot.wall_time)
        self.engine.baselines = current
        for name, value in current.items():
            self.metrics.baseline.labels(name).set(value)
        if records:
            self._persist_baselines(records)

    def _persist_baselines(self, records: list[BaselineRecord]) -> None:
        def save() -> None:
            for r in records:
                self.store.save_baseline(r.signal, r.hour if r.hour >= 0 else ALL_HOURS, r.value, r.samples)

        task = asyncio.get_running_loop().run_in_executor(self.executors.state, save)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _log_source_changes(self, previous: Snapshot | None, current: Snapshot) -> None:
        for name, status in current.sources.items():
            before = previous.sources.get(name) if previous is not None else None
            if before is None or before.up != status.up:
                if status.up:
                    log.info("source_up", source=name)
                else:
                    log.warning("source_down", source=name, error=status.error)
            if status.up and status.error is not None and (before is None or before.error != status.error):
                # up but perhaps measuring the wrong thing (a launcher's pid): said once, when it starts or changes
                log.warning("source_degraded", source=name, error=status.error)

    def _adapt_interval(self) -> None:
        """Work out the next sample interval from what the strategies watch (see optimizer/cadence.py)."""
        s = self.settings
        bounds = cadence.Bounds(
            base=s.sample_interval / 1000, low=s.sampler.min_interval_ms / 1000, high=s.sampler.max_interval_ms / 1000
        )
        self.adaptive_interval, self.sample_interval = cadence.adapt(
            self.adaptive_interval,
            bounds,
            self.engine.watches(),
            self.engine.windows,
            until_round=self._seconds_to_next_round(),
            window=s.detection.window_samples,
        )
        self.metrics.sample_interval.set(self.sample_interval)

    def _seconds_to_next_round(self) -> float | None:
        """Seconds until the scheduled round runs next; None when rounds are not scheduled."""
        job = self._scheduler.get_job("round") if self._scheduler is not None else None
        when = getattr(job, "next_run_time", None)
        if when is None:
            return None
        return max(0.0, float(when.timestamp()) - time.time())

    def health(self) -> tuple[bool, str]:
        """Whether the decision loop and the sampler are alive, and why not."""
        if self.state is not LifecycleState.RUNNING:
            return False, f"daemon is {self.state}"
        now = self.clock.monotonic()
        s = self.settings
        sample_limit = 3 * s.sampler.max_interval_ms / 1000 + s.sampler.source_timeout_seconds
        if self.last_sample_at is None or now - self.last_sample_at > sample_limit:
            return False, "no fresh sample"
        round_limit = (
            2 * s.optimization_interval / 1000
            + len(self.engine.strategy_names()) * (s.engine.plan_timeout_seconds + s.engine.apply_timeout_seconds)
            + 10
        )
        if now - self.engine.heartbeat > round_limit:
            return False, "decision loop is stuck or stopped"
        if not self.store.healthy:
            return True, f"degraded: {self.store.last_error}"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        """Facts for /health."""
        last = self.engine.last_round
        return {
            "state": str(self.state),
            "mode": str(self.engine.global_mode),
            "rounds": self.engine.rounds_run,
            "lastRunId": last.run_id if last else None,
            "sampleIntervalSeconds": round(self.sample_interval, 3),
            "stateHealthy": self.store.healthy,
            "stateError": self.store.last_error,
            "restartNeeded": list(self.restart_needed),
        }

    def _status_line(self) -> str:
        last = self.engine.last_round
        return f"mode={self.engine.global_mode} rounds={self.engine.rounds_run} last_run={last.run_id if last else '-'}"

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal handler)."""
        self._stop_event.set()
        self._sample_wakeup.set()

    def request_reload(self) -> None:
        """Ask for a configuration reload; a storm of requests is coalesced into one."""
        if self.state is not LifecycleState.RUNNING or (self._reload_task is not None and not self._reload_task.done()):
            self._reload_pending = True
            return
        self._reload_task = asyncio.create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_pending = False
            self._notifier.reloading()
            try:
                loaded = await asyncio.to_thread(load_settings, self._environ_for_reload(), self._config_file)
                # built before anything is applied: a plugin's wrong option keeps the whole previous configuration
                built = build_strategies(keep_restart_only(self.settings, loaded.settings), self._deps())
                self._apply_reload(loaded)
                # the rebuilt strategies take over what the running ones learned (a restart's once-a-day guard,
                # held recorders...); the old ones are closed
                await self.engine.replace_strategies({b.strategy.name: (b.strategy, b.mode, b.enabled) for b in built})
            except ConfigError as exc:
                log.error(
                    "config_reload_failed", problems=[str(p) for p in exc.problems], kept="previous configuration"
                )
            self._notifier.ready(status=self._status_line())
            if not self._reload_pending:
                return

    def _environ_for_reload(self) -> dict[str, str]:
        # the process environment cannot change under us; a reload re-reads the YAML file
        return dict(self._environ)

    def _apply_reload(self, loaded: LoadedSettings) -> None:
        """Apply what can change at run time; keep the running value of every restart-only setting, and say so."""
        old = self.settings
        # against the running values: a later reload that puts a setting back clears its restart-needed mark
        self.restart_needed = restart_only_changes(old, loaded.settings)
        new = keep_restart_only(old, loaded.settings)
        if self.restart_needed:
            log.warning(
                "config_restart_needed",
                settings=list(self.restart_needed),
                kept="the running values, until the daemon is restarted",
            )
        self.loaded = dataclasses.replace(loaded, settings=new)
        self.settings = new
        configure_logging(new.log_level)
        self.engine.update_settings(new.engine, new.detection, new.effective_mode)
        if self._scheduler is not None and old.optimization_interval != new.optimization_interval:
            self._scheduler.reschedule_job("round", trigger="interval", seconds=new.optimization_interval / 1000)
        log.info("config_reloaded", mode=str(new.effective_mode), restart_needed=list(self.restart_needed) or None)

    async def stop(self) -> None:
        """Stop the loops, let the running round finish, optionally revert, close the API, flush state."""
        if self.state in (LifecycleState.STOPPING, LifecycleState.STOPPED):
            return
        if not self._built:
            # start-up failed while building: nothing was opened, started or bound
            self.state = LifecycleState.STOPPED
            return
        self.state = LifecycleState.STOPPING
        self._notifier.stopping()
        log.info("daemon_stopping")
        self.request_stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        await self.engine.stop(self.settings.engine.stop_timeout_seconds)
        if self.settings.engine.revert_on_exit:
            count = await self.engine.revert_all()
            log.info("reverted_on_exit", changes=count)
        if self._sample_task is not None:
            try:
                await asyncio.wait_for(self._sample_task, self.settings.sampler.source_timeout_seconds + 1)
            except (TimeoutError, asyncio.CancelledError):
                self._sample_task.cancel()
        if self._api_loop is not None:
            if self._runner is not None:
                await self._api_loop.call(self._close_api(self._runner))
            await self._api_loop.stop()
        await self.sampler.close()
        await self.backend.close()
        await self.mediamtx.close()
        await self.engine.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.to_thread(self.history.close)
        await asyncio.to_thread(self.store.close)
        self.executors.shutdown()
        # hand the start-up objects back to the collector: a process that outlives this daemon (tests, the
        # benchmarks) must not keep them out of collection for good
        gc.unfreeze()
        self.state = LifecycleState.STOPPED
        log.info("daemon_stopped")

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        loop = asyncio.get_running_loop()
        # handlers go in before start-up, so a signal during start-up is not the default (fatal) action
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            if self._reload_pending:
                self._reload_pending = False
                self.request_reload()
            await self._stop_event.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
        return 0


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (extra ``fast``: faster scrapes), else on asyncio's own loop."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return asyncio.run(main)
    log.info("event_loop", loop="uvloop")
    result: int = uvloop.run(main)
    return result


def _config_invalid(exc: ConfigError) -> int:
    """One log line naming every problem (setting, value, why, where it came from); EX_CONFIG."""
    log.error(
        "config_invalid",
        problems=[str(p) for p in exc.problems],
        hint="run 'cctv-optimizer check-config' for the whole configuration",
    )
    return EX_CONFIG


def run_daemon(config_file: Path | None, environ: Mapping[str, str] | None = None) -> int:
    """Load the configuration and run the daemon.

    Exit status: 0 after a clean stop; 78 (EX_CONFIG) for a configuration problem, which systemd does not
    restart (RestartPreventExitStatus=78); 1 for anything else. Every expected failure is one log line with its
    cause and no traceback; an unexpected one (a bug) is logged once with its traceback.
    """
    env = dict(os.environ if environ is None else environ)
    try:
        loaded = load_settings(env, config_file)
    except ConfigError as exc:
        configure_logging("info")
        return _config_invalid(exc)
    configure_logging(loaded.settings.log_level)
    for warning in loaded.warnings:
        log.warning("config_warning", warning=str(warning))
    daemon = Daemon(loaded, environ=env, config_file=config_file)
    try:
        return _run_loop(daemon.run())
    except ConfigError as exc:
        return _config_invalid(exc)
    except StartupError as exc:
        log.error("startup_failed", error=exc.message)
        return EX_CONFIG if exc.config else EX_FAIL
    except KeyboardInterrupt:
        return EX_OK
    except Exception as exc:
        log.exception("daemon_crashed", error=f"{exc.__class__.__name__}: {exc}")
        return EX_FAIL


__all__ = ["Daemon", "LifecycleState", "Problem", "StartupError", "run_daemon"]
