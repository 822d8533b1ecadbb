"""The Grafana dashboard JSON: the fields Grafana's dashboard schema requires, a templated Prometheus datasource,
the views of the daemon's own page, and expressions over metric names the daemon really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from testbed.harness import TestbedProcess
from tests.harness import ROOT, api_client, auth, daemon_env, running_daemon, sample_times

DASHBOARD = ROOT / "contrib" / "grafana" / "cctv-optimizer.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# core panel plugins of Grafana 10/11
PANEL_TYPES = {"row", "stat", "gauge", "timeseries", "table", "state-timeline", "bargauge", "text", "status-history"}
# VariableType of the dashboard schema
VARIABLE_TYPES = {"query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"}
GRID_COLUMNS = 24
UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# series Prometheus itself adds to every target, not exposed by the daemon
SYNTHETIC = {"up"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana would import it."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel that draws data (rows left out)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    """Every query expression of the dashboard, panels first, then the query variables."""
    found = [t["expr"] for p in panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            found.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["query"]["query"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, matchers, ranges and groupings stripped)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = GROUPING.sub(" ", bare)
    return {m for m in IDENTIFIER.findall(bare) if m not in KEYWORDS and not m.isdigit()}


def test_metric_name_extraction_finds_selectors_only() -> None:
    """The expression scanner keeps metric names and drops functions, labels, keywords and variables."""
    expr = (
        'histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{job=~"$job", x="y z"}[$__rate_interval])))'
        " > on (job) group_left b or up"
    )
    assert metric_names(expr) == {"a_bucket", "b", "up"}


def test_the_dashboard_has_the_top_level_fields_grafana_requires() -> None:
    """title, a valid uid, a current schemaVersion, time range, tags and the panel list are present and typed."""
    d = dashboard()
    assert isinstance(d["title"], str) and d["title"]
    assert UID.match(d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert set(d["time"]) == {"from", "to"}
    assert all(isinstance(t, str) for t in d["tags"])
    assert isinstance(d["panels"], list) and d["panels"]
    assert "id" not in d or d["id"] is None  # an id would clash with the importing Grafana's own ids


def test_panels_have_type_title_grid_position_and_unique_ids() -> None:
    """Each panel has a known type, a title, a unique id and a gridPos inside the 24-column grid, none overlapping."""
    seen_ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        assert p["type"] in PANEL_TYPES, p["type"]
        assert isinstance(p["title"], str) and p["title"], p
        assert isinstance(p["id"], int) and p["id"] > 0 and p["id"] not in seen_ids, p["id"]
        seen_ids.add(p["id"])
        g = p["gridPos"]
        assert set(g) == {"x", "y", "w", "h"} and all(isinstance(v, int) for v in g.values()), p["title"]
        assert 0 < g["w"] <= GRID_COLUMNS and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS
        assert g["y"] >= 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_panel_queries_the_templated_prometheus_datasource() -> None:
    """Each data panel and each of its targets use ${datasource}; every target has an expr and a unique refId."""
    for p in panels():
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), p["title"]
        for target in p["targets"]:
            assert target["datasource"] == DATASOURCE, p["title"]
            assert isinstance(target["expr"], str) and target["expr"].strip(), p["title"]
            assert isinstance(target["refId"], str) and target["refId"]


def test_the_datasource_is_a_prometheus_variable() -> None:
    """templating has a datasource variable of type prometheus; the other variables query through it."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert all(v["type"] in VARIABLE_TYPES for v in variables.values())
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
    assert variables["instance"]["includeAll"] is True and variables["instance"]["allValue"] == ".*"
    for expr in exprs():
        assert "$datasource" not in expr


def test_every_query_filters_on_the_job_and_instance_variables() -> None:
    """Every daemon series selected by a panel is narrowed to the chosen job and instance."""
    for p in panels():
        for target in p["targets"]:
            selectors = re.findall(r"\b[a-z_:][\w:]*\{([^}]*)\}", target["expr"])
            assert selectors, target["expr"]
            for matchers in selectors:
                assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, target["expr"]


def test_the_dashboard_shows_the_views_of_the_daemon_page() -> None:
    """CPU, memory, connections, response time, strategy state and actions are there, with the thresholds drawn."""
    by_title = {p["title"]: p for p in panels()}
    for title in ("CPU", "Memory", "Connections", "Response time", "Strategy state", "Decisions by outcome"):
        assert title in by_title, title

    def steps(title: str) -> list[float | None]:
        return [s["value"] for s in by_title[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]]

    assert steps("CPU")[1:] == [0.9] and steps("Host CPU")[1:] == [0.9]  # CPU_THRESHOLD
    assert steps("Memory")[1:] == [0.8] and steps("Host memory")[1:] == [0.8]  # MEMORY_THRESHOLD
    assert steps("SQLite WAL")[1:] == [64 * 1024 * 1024]  # strategies.database.wal_limit_bytes
    assert by_title["CPU"]["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    state = " ".join(t["expr"] for t in by_title["Strategy state"]["targets"])
    for metric in ("strategy_armed", "breaker_open", "strategy_cooldown_seconds", "strategy_score", "findings"):
        assert f"cctv_optimizer_{metric}{{" in state, metric
    assert "cctv_optimizer_actions_total" in by_title["Decisions by outcome"]["targets"][0]["expr"]


async def test_every_expression_uses_only_metrics_the_daemon_exposes(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Each metric name in the dashboard is in the live /metrics of a daemon running against the testbed."""
    async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 3)
        async with http.post("/performance-optimize", headers=auth(daemon)) as resp:
            assert resp.status == 200
        async with http.get("/metrics") as resp:
            text = await resp.text()
    exposed = set(SYNTHETIC)
    for line in text.splitlines():
        if line.startswith(("# TYPE ", "# HELP ")):
            family = line.split()[2]
            kind = line.split()[3] if line.startswith("# TYPE ") else ""
            exposed.add(family)
            if kind == "counter":
                exposed.add(family + "_total")
            elif kind == "histogram":
                exposed.update(family + suffix for suffix in ("_bucket", "_count", "_sum"))
        elif line and not line.startswith("#"):
            exposed.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    used: set[str] = set()
    for expr in exprs():
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        used |= names
    assert used - exposed == set()
    assert len(used) >= 20  # the scanner really found the dashboard's metrics
