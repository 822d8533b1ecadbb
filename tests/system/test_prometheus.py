"""Prometheus around the daemon, with the real programs: promtool on the rules and the live /metrics, and a
real Prometheus on loopback scraping a daemon that runs against the testbed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from aiohttp import ClientSession

from config.loader import load_settings
from optimizer.app import Daemon
from testbed.harness import TestbedProcess
from tests.harness import ROOT, api_client, auth, daemon_env, running_daemon, sample_times

CONTRIB = ROOT / "contrib"
RULES = CONTRIB / "prometheus" / "rules.yml"
RULES_TEST = CONTRIB / "prometheus" / "rules_test.yml"
SCRAPE_CONFIG = CONTRIB / "prometheus" / "prometheus.yml"
DASHBOARD = CONTRIB / "grafana" / "cctv-optimizer.json"
STRATEGIES = {"memory", "cpu", "connection", "cache", "database"}
# what the issue asks an alert for, by the alert that answers it
ALERTS = {
    "CctvOptimizerDown": "daemon down (up == 0)",
    "CctvOptimizerMissing": "daemon down (no target at all)",
    "CctvBackendDown": "backend down",
    "CctvBackendSlow": "response time over baseline",
    "CctvSqliteWalGrowing": "WAL growing",
    "CctvHlsNearBudget": "HLS RAM near budget",
    "CctvStrategyBreakerOpen": "breaker open",
    "CctvOptimizerNotActing": "armed but not acting",
}
METRIC = re.compile(r"\b(cctv_optimizer_[a-z0-9_]+)")
START_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 45.0


def tool(name: str, package: str = "prometheus") -> str:
    """Path of a Prometheus program, or a skip that says why (and is printed in the summary)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        reason = f"{name} is not installed: install the Debian package {package} (scripts/ensure-debs.sh)"
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a program to completion, bounded."""
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> dict[str, dict[str, Any]]:
    """The alert rules of rules.yml by name."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def exposed_names(text: str) -> set[str]:
    """Every metric family and sample name in a text exposition (HELP/TYPE lines included)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def live_metrics(testbed: TestbedProcess, state: Path) -> str:
    """/metrics of a daemon against the testbed after a few samples and one round of every strategy."""
    async with running_daemon(daemon_env(testbed, state)) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 3)
        async with http.post("/performance-optimize", headers=auth(daemon)) as resp:
            assert resp.status == 200
        await sample_times(daemon, 1)
        async with http.get("/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


# the rule files ----------------------------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    """promtool check rules accepts rules.yml and finds every alert."""
    proc = run(tool("promtool"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    """promtool test rules passes every case of rules_test.yml."""
    proc = run(tool("promtool"), "test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_example_scrape_config_is_valid() -> None:
    """promtool check config accepts the example prometheus.yml with its rule file."""
    proc = run(tool("promtool"), "check", "config", str(SCRAPE_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_every_condition_of_the_issue_has_an_alert() -> None:
    """rules.yml has exactly the alerts asked for, each with a severity, summary and description."""
    rules = alert_rules()
    assert set(rules) == set(ALERTS)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_routed_alerts_name_a_built_in_strategy() -> None:
    """Every optimize_strategy label in the rules names one of the five strategies."""
    routed = {
        n: r["labels"]["optimize_strategy"] for n, r in alert_rules().items() if "optimize_strategy" in r["labels"]
    }
    assert routed == {"CctvBackendSlow": "cache", "CctvSqliteWalGrowing": "database", "CctvHlsNearBudget": "memory"}
    assert set(routed.values()) <= STRATEGIES


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """rules_test.yml checks each alert both firing (expected alerts) and quiet (none expected)."""
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(ALERTS)
    assert quiet == set(ALERTS)


# the live exposition -----------------------------------------------------------------------------------------------


async def test_live_metrics_pass_promtool_check_metrics(testbed: TestbedProcess, tmp_path: Path) -> None:
    """promtool check metrics reports nothing on the /metrics of a daemon running against the testbed."""
    promtool = tool("promtool")
    text = await live_metrics(testbed, tmp_path / "state")
    assert "cctv_optimizer_actions_total{" in text  # the round was counted, so the counters are in the lint too
    proc = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


async def test_the_rules_use_only_metrics_the_daemon_exposes(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Every cctv_optimizer_ name in the alert expressions is in the live /metrics output."""
    names = exposed_names(await live_metrics(testbed, tmp_path / "state"))
    used = {m for r in alert_rules().values() for m in METRIC.findall(r["expr"])}
    assert used, "the rules use no daemon metric at all"
    assert used - names == set()


# a real Prometheus -------------------------------------------------------------------------------------------------


def listen_port(pid: int) -> int | None:
    """The loopback TCP port a process listens on (it was started on port 0), once it does."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return None
    ports = sorted(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1")
    return ports[0] if ports else None


@contextlib.asynccontextmanager
async def go_server(args: list[str], log: Path, ready: str) -> AsyncIterator[str]:
    """A Prometheus-style server on 127.0.0.1 port 0: yields its base URL once ``ready`` answers; always stopped."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        base = await poll(
            lambda: _ready(proc.pid, ready), limit=START_TIMEOUT, what=f"{args[0]} to answer {ready}", log=log
        )
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _ready(pid: int, path: str) -> str | None:
    port = listen_port(pid)
    if port is None:
        return None
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http, http.get(base + path) as resp:
            return base if resp.status == 200 else None
    except OSError:
        return None


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


async def poll(check: Any, *, limit: float, what: str, log: Path | None = None) -> Any:
    """Await ``check()`` until it returns something truthy, or fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = await asyncio.to_thread(_tail, log)
            raise AssertionError(f"gave up waiting for {what} after {limit:g} s\n{tail}")
        await asyncio.sleep(0.2)  # a poll step, not a wait for something: the deadline bounds it


@contextlib.asynccontextmanager
async def looping_daemon(testbed: TestbedProcess, state: Path) -> AsyncIterator[Daemon]:
    """A daemon with its timed loops running (fast test intervals), stopped at the end."""
    env = daemon_env(testbed, state)
    daemon = Daemon(load_settings(env), environ=env, autostart_loops=True)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def prometheus_config(tmp: Path, target: str) -> Path:
    """The example prometheus.yml, pointed at ``target``, scraping and evaluating every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config.pop("alerting", None)
    [job] = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [target]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class PromApi:
    """The few calls of Prometheus' HTTP API the test makes."""

    def __init__(self, http: ClientSession, base: str) -> None:
        self._http = http
        self._base = base

    async def get(self, path: str, **params: str) -> Any:
        """GET an API path; the ``data`` of a success answer."""
        async with self._http.get(self._base + path, params=params) as resp:
            body = json.loads(await resp.text())
        assert body["status"] == "success", body
        return body["data"]

    async def vector(self, expr: str) -> dict[str, float]:
        """An instant query: one value per series, keyed by its labels (JSON)."""
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in data["result"]}


def one(values: dict[str, float]) -> float:
    """The value of a one-series answer."""
    assert len(values) == 1, values
    return next(iter(values.values()))


def dashboard_panels() -> list[dict[str, Any]]:
    """The data panels of the Grafana dashboard."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def grafana_expr(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every job and instance selected."""
    return expr.replace("$job", "cctv-optimizer").replace("$instance", ".*").replace("$__rate_interval", "10s")


async def test_prometheus_scrapes_the_daemon(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A real Prometheus scrapes the daemon: sane values, every rule healthy, every dashboard panel has data."""
    prometheus = tool("prometheus")
    async with looping_daemon(testbed, tmp_path / "state") as daemon:
        target = f"{daemon.api_url_host}:{daemon.api_port}"
        args = [
            prometheus,
            f"--config.file={prometheus_config(tmp_path, target)}",
            "--web.listen-address=127.0.0.1:0",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--log.level=warn",
        ]
        async with go_server(args, tmp_path / "prometheus.log", "/-/ready") as base, ClientSession() as http:
            api = PromApi(http, base)

            async def scraped() -> dict[str, float] | None:
                found = await api.vector('cctv_optimizer_samples_total{job="cctv-optimizer"}')
                up = await api.vector('up{job="cctv-optimizer"}')
                return found if found and one(up) == 1.0 else None

            await poll(scraped, limit=SCRAPE_TIMEOUT, what="the first scrape", log=tmp_path / "prometheus.log")
            [info] = await api.vector("cctv_optimizer_build_info")
            assert json.loads(info)["version"]
            assert 0.0 < one(await api.vector("cctv_optimizer_memory_used_ratio")) < 1.0
            assert 0.0 <= one(await api.vector("cctv_optimizer_cpu_used_ratio")) <= 1.0
            assert one(await api.vector('cctv_optimizer_source_up{source="database"}')) == 1.0
            assert one(await api.vector("cctv_optimizer_backend_up")) == 1.0
            assert one(await api.vector("cctv_optimizer_sqlite_wal_bytes")) >= 0.0
            assert one(await api.vector("cctv_optimizer_backend_resident_memory_bytes")) > 1024 * 1024
            established = await api.vector('cctv_optimizer_tcp_connections{state="established"}')
            assert one(established) >= 0.0
            assert one(await api.vector("cctv_optimizer_backend_response_time_seconds_count")) >= 1.0

            async def counting() -> float | None:
                # samples every 200 ms: the counter moves between scrapes, so rate() is positive
                values = await api.vector("rate(cctv_optimizer_samples_total[10s])")
                return one(values) if values and one(values) > 0 else None

            assert await poll(counting, limit=SCRAPE_TIMEOUT, what="a positive sample rate") > 0

            async def rounds_counted() -> float | None:
                value = sum((await api.vector("cctv_optimizer_rounds_total")).values())
                return value if value >= 1 else None

            await poll(rounds_counted, limit=SCRAPE_TIMEOUT, what="a scheduled round to be scraped")

            async def evaluated() -> list[dict[str, Any]] | None:
                groups = (await api.get("/api/v1/rules"))["groups"]
                rules = [r for g in groups for r in g["rules"]]
                done = all(not r["lastEvaluation"].startswith("0001-") for r in rules)
                return rules if rules and done else None

            rules = await poll(evaluated, limit=SCRAPE_TIMEOUT, what="every rule to be evaluated")
            assert {r["name"] for r in rules} == set(ALERTS)
            assert {r["name"]: (r["health"], r.get("lastError", "")) for r in rules} == {
                name: ("ok", "") for name in ALERTS
            }
            # with a healthy daemon and backend, none of the down alerts is pending or firing
            states = {r["name"]: r["state"] for r in rules}
            for name in ("CctvOptimizerDown", "CctvOptimizerMissing", "CctvBackendDown"):
                assert states[name] == "inactive", states
            # every query of the Grafana dashboard is valid PromQL here, and each panel draws something
            for panel in dashboard_panels():
                answers = [await api.vector(grafana_expr(t["expr"])) for t in panel["targets"]]
                assert any(answers), panel["title"]
