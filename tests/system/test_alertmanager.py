"""Alertmanager around the daemon, with the real program: the example receiver config is valid, and an alert
posted to a real Alertmanager on loopback reaches POST /alertmanager and runs exactly one round."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession

from optimizer.app import Daemon
from testbed.harness import TestbedProcess
from tests.harness import ROOT, api_client, daemon_env, running_daemon, sample_times
from tests.system.test_prometheus import go_server, poll, tool

EXAMPLE = ROOT / "contrib" / "alertmanager" / "alertmanager.yml"
RECEIVER = "cctv-optimizer-cctv-1"
INSTANCE = "cctv-1:9877"
ALERT = "CctvSqliteWalGrowing"
DELIVERY_TIMEOUT = 30.0


def alertmanager() -> str:
    """Path of the Alertmanager binary (Debian names it prometheus-alertmanager), or a skip."""
    return tool("prometheus-alertmanager", "prometheus-alertmanager")


def test_the_example_config_passes_amtool() -> None:
    """amtool check-config accepts contrib/alertmanager/alertmanager.yml."""
    proc = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_example_sends_the_token_from_a_file_to_the_webhook() -> None:
    """The daemon's receiver posts to /alertmanager with a bearer token read from credentials_file."""
    config = yaml.safe_load(EXAMPLE.read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == RECEIVER)
    [hook] = receiver["webhook_configs"]
    assert hook["url"].endswith("/alertmanager")
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert hook["http_config"]["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in hook["http_config"]["authorization"]  # never the token itself in the config
    [route] = config["route"]["routes"]
    assert route["receiver"] == RECEIVER and 'optimize_strategy=~".+"' in route["matchers"]


def loopback_config(tmp: Path, daemon: Daemon) -> Path:
    """The example config pointed at the daemon on loopback, with its token file and second-scale timers."""
    token = tmp / "token"
    token.write_text(daemon.token + "\n")
    token.chmod(0o600)
    config = yaml.safe_load(EXAMPLE.read_text())
    config["route"].update(group_wait="0s", group_interval="1s", repeat_interval="2s")
    [route] = config["route"]["routes"]
    # repeats every two seconds: the daemon must recognise them as the notification it already handled
    route.update(group_wait="0s", group_interval="1s", repeat_interval="2s")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://{daemon.api_url_host}:{daemon.api_port}/alertmanager"
            hook["http_config"]["authorization"]["credentials_file"] = str(token)
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def webhook_counts(http: ClientSession, base: str) -> tuple[float, float]:
    """Notifications Alertmanager sent to webhooks, and how many of them failed."""
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    sent = failed = 0.0
    for line in text.splitlines():
        if 'integration="webhook"' not in line or line.startswith("#"):
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name == "alertmanager_notifications_total":
            sent += value
        elif name == "alertmanager_notifications_failed_total":
            failed += value
    return sent, failed


async def post_alert(http: ClientSession, base: str, alert: dict[str, Any]) -> None:
    """POST one alert to Alertmanager's v2 API."""
    async with http.post(base + "/api/v2/alerts", json=[alert]) as resp:
        assert resp.status == 200, await resp.text()


async def test_an_alert_through_a_real_alertmanager_runs_one_round(testbed: TestbedProcess, tmp_path: Path) -> None:
    """An alert labelled optimize_strategy="database" is delivered with the token and runs one database round;
    Alertmanager's repeats and a re-post of the alert start no second round."""
    binary = alertmanager()
    async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon:
        await sample_times(daemon, 2)
        args = [
            binary,
            f"--config.file={loopback_config(tmp_path, daemon)}",
            f"--storage.path={tmp_path / 'am-data'}",
            "--web.listen-address=127.0.0.1:0",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        log = tmp_path / "alertmanager.log"
        async with go_server(args, log, "/-/ready") as base, ClientSession() as http:
            now = datetime.now(UTC)
            alert = {
                "labels": {
                    "alertname": ALERT,
                    "instance": INSTANCE,
                    "job": "cctv-optimizer",
                    "severity": "warning",
                    "optimize_strategy": "database",
                },
                "annotations": {"summary": "The WAL is growing"},
                "startsAt": now.isoformat().replace("+00:00", "Z"),
                "endsAt": (now + timedelta(minutes=10)).isoformat().replace("+00:00", "Z"),
            }
            await post_alert(http, base, alert)

            async def delivered_rounds() -> list[Any] | None:
                rows = [r for r in daemon.store.decisions(limit=100) if r.trigger.startswith("alertmanager:")]
                return rows or None

            rows = await poll(delivered_rounds, limit=DELIVERY_TIMEOUT, what="the alert's round", log=log)
            await post_alert(http, base, alert)

            async def repeated() -> tuple[float, float] | None:
                sent, failed = await webhook_counts(http, base)
                return (sent, failed) if sent >= 3 else None

            _, failed = await poll(repeated, limit=DELIVERY_TIMEOUT, what="two repeated notifications", log=log)
            assert failed == 0  # every notification got a 2xx: the token was accepted and the payload valid
            rows = [r for r in daemon.store.decisions(limit=100) if r.trigger.startswith("alertmanager:")]
            assert [(r.strategy, r.trigger) for r in rows] == [("database", f"alertmanager:{ALERT}")]
            async with api_client(daemon) as api, api.get("/optimizations") as resp:
                items = (await resp.json())["items"]
            assert [i["trigger"] for i in items if i["trigger"].startswith("alertmanager:")] == [
                f"alertmanager:{ALERT}"
            ]
