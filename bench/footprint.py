"""Benchmark 3: idle footprint over 10 minutes (RSS, CPU seconds) of the daemon beside comparable tools.

Side by side in one run, each scraped every 15 s: the daemon at its default intervals (pointed at the testbed),
Debian's prometheus-node-exporter (default collectors), Glances in web-server mode (API only, in its own venv
under bench/.venvs/glances, created on first use), and the floor: a bare Python process importing the daemon's
libraries and serving one /metrics (bench/floor.py). Goals: daemon RSS <= floor + 8 MiB and <= Glances';
daemon CPU <= node_exporter's. RSS growth over the run is reported for each. ``--quick`` runs 60 s instead.
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    VENVS_DIR,
    answers,
    cpu_seconds,
    fmt_mib,
    free_port,
    http_get,
    managed_process,
    median,
    row,
    running_daemon,
    running_floor,
    running_testbed,
    scratch_dir,
    wait_until,
)

NAME = "footprint"
TITLE = "3. Idle footprint"
SCRAPE_S = 15.0
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
GLANCES_SPEC = "glances[web]==4.5.8"
GLANCES_VENV = VENVS_DIR / "glances"
FLOOR_SLACK_BYTES = 8 * 2**20
# What the daemon's own /metrics says at each scrape: how often it samples, and how busy it finds the host (its
# interval tightens near a line, the cpu strategy's included, so a busy shared host makes it sample more).
_DAEMON_GAUGES = {
    "interval_s": re.compile(rb"^cctv_optimizer_sample_interval_seconds ([0-9.e+-]+)$", re.MULTILINE),
    "host_cpu": re.compile(rb"^cctv_optimizer_cpu_used_ratio ([0-9.e+-]+)$", re.MULTILINE),
    "samples": re.compile(rb"^cctv_optimizer_samples_total ([0-9.e+-]+)$", re.MULTILINE),
}


def ensure_glances() -> Path | None:
    """The glances executable in its own venv, installing it there on first use; None when that fails."""
    exe = GLANCES_VENV / "bin" / "glances"
    if exe.is_file():
        return exe
    try:
        subprocess.run([sys.executable, "-m", "venv", str(GLANCES_VENV)], check=True, timeout=120)
        subprocess.run([str(GLANCES_VENV / "bin" / "pip"), "install", "--quiet", GLANCES_SPEC], check=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if exe.is_file() else None


@contextlib.contextmanager
def subjects(work: Path, tb_env: dict[str, str]) -> Iterator[dict[str, tuple[int, str]]]:
    """Start every subject; yield name -> (pid, scrape URL); stop them all at the end."""
    with contextlib.ExitStack() as stack:
        found: dict[str, tuple[int, str]] = {}
        daemon = stack.enter_context(running_daemon(tb_env, work, name="daemon"))
        found["daemon"] = (daemon.pid, daemon.base + "/metrics")
        floor, floor_url = stack.enter_context(running_floor(work))
        found["floor"] = (floor.pid, floor_url)
        if Path(NODE_EXPORTER).is_file():
            port = free_port()
            argv = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"]
            exporter = stack.enter_context(managed_process("node_exporter", argv, log_dir=work))
            found["node_exporter"] = (exporter.pid, f"http://127.0.0.1:{port}/metrics")
        glances = ensure_glances()
        if glances is not None:
            port = free_port()
            argv = [str(glances), "-w", "--disable-webui", "--disable-autodiscover", "-B", "127.0.0.1", "-p", str(port)]
            process = stack.enter_context(managed_process("glances", argv, log_dir=work, cwd=work))
            found["glances"] = (process.pid, f"http://127.0.0.1:{port}/api/4/all")
        for name, (_pid, url) in found.items():
            wait_until(functools.partial(answers, url), timeout=90, what=name)
        yield found


def observe(found: dict[str, tuple[int, str]], duration_s: float) -> dict[str, Any]:
    """Scrape each subject every 15 s for ``duration_s``; record RSS and CPU seconds at each scrape."""
    procs = {name: psutil.Process(pid) for name, (pid, _url) in found.items()}
    series: dict[str, dict[str, list[float]]] = {name: {"rss_bytes": [], "cpu_s": []} for name in found}
    scrape_failures = dict.fromkeys(found, 0)
    gauges: dict[str, list[float]] = {name: [] for name in _DAEMON_GAUGES}
    pause = threading.Event()
    started = time.monotonic()
    ticks = int(duration_s // SCRAPE_S) + 1
    for tick in range(ticks):
        pause.wait(max(0.0, started + tick * SCRAPE_S - time.monotonic()))
        for name, (_pid, url) in found.items():
            try:
                status, body = http_get(url, timeout=10)
            except OSError:
                scrape_failures[name] += 1
                continue
            if status != 200:
                scrape_failures[name] += 1
            elif name == "daemon":
                for gauge, pattern in _DAEMON_GAUGES.items():
                    if found_value := pattern.search(body):
                        gauges[gauge].append(float(found_value.group(1)))
        for name, proc in procs.items():
            series[name]["rss_bytes"].append(float(proc.memory_info().rss))
            series[name]["cpu_s"].append(cpu_seconds(proc))
    elapsed = time.monotonic() - started
    figures: dict[str, Any] = {}
    for name, data in series.items():
        rss = data["rss_bytes"]
        cpu = data["cpu_s"]
        figures[name] = {
            "rss_median_bytes": median(rss),
            "rss_first_bytes": rss[0],
            "rss_last_bytes": rss[-1],
            "rss_max_bytes": max(rss),
            "rss_growth_bytes": rss[-1] - rss[0],
            "cpu_s": cpu[-1] - cpu[0],
            "cpu_ratio": (cpu[-1] - cpu[0]) / elapsed if elapsed else 0.0,
            "scrape_failures": scrape_failures[name],
            "rss_bytes": rss,
            "cpu_total_s": cpu,
        }
    samples = gauges["samples"]
    figures["daemon"]["own_gauges"] = {
        "sample_interval_s": gauges["interval_s"],
        "host_cpu_ratio": gauges["host_cpu"],
        "samples_taken": samples[-1] - samples[0] if len(samples) > 1 else None,
    }
    return {"elapsed_s": elapsed, "scrapes": ticks, "subjects": figures}


def _sampling(daemon: dict[str, Any]) -> str:
    """How often the daemon sampled during the run, and how busy the host was, as it reported them."""
    own = daemon.get("own_gauges", {})
    intervals = own.get("sample_interval_s") or []
    host = own.get("host_cpu_ratio") or []
    if not intervals:
        return "sampling not reported"
    return (
        f"daemon took {own.get('samples_taken') or 0:.0f} samples, interval median {median(intervals):.0f} s"
        f" (min {min(intervals):.1f} s), host CPU median {median(host) * 100 if host else 0:.0f} %"
    )


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark and return its figures and summary rows."""
    duration = 60.0 if quick else 600.0
    with scratch_dir(NAME) as work, running_testbed(work / "testbed") as tb, subjects(work, tb.env) as found:
        measured = observe(found, duration)
    s = measured["subjects"]
    d = s["daemon"]
    rows = []
    span = f"{measured['elapsed_s'] / 60:.0f} min" + (" (quick)" if quick else "")
    floor = s["floor"]
    rows.append(
        row(
            f"daemon RSS, median over {span}",
            fmt_mib(d["rss_median_bytes"]),
            reference=f"floor {fmt_mib(floor['rss_median_bytes'])}",
            ratio_text=f"+{fmt_mib(d['rss_median_bytes'] - floor['rss_median_bytes'])}",
            goal="<= floor + 8 MiB",
            met=d["rss_median_bytes"] <= floor["rss_median_bytes"] + FLOOR_SLACK_BYTES,
        )
    )
    if "glances" in s:
        g = s["glances"]
        rows.append(
            row(
                "daemon RSS vs Glances",
                fmt_mib(d["rss_median_bytes"]),
                reference=f"Glances {fmt_mib(g['rss_median_bytes'])}",
                ratio_text=f"{d['rss_median_bytes'] / g['rss_median_bytes']:.2f}x",
                goal="<= Glances",
                met=d["rss_median_bytes"] <= g["rss_median_bytes"],
            )
        )
    else:
        rows.append(row("daemon RSS vs Glances", "skipped", reference="Glances could not be installed"))
    if "node_exporter" in s:
        n = s["node_exporter"]
        rows.append(
            row(
                f"daemon CPU over {span}",
                f"{d['cpu_s']:.1f} s ({d['cpu_ratio'] * 100:.2f}% of a core)",
                reference=f"node_exporter {n['cpu_s']:.1f} s; {_sampling(d)}",
                ratio_text=f"{d['cpu_s'] / n['cpu_s']:.2f}x" if n["cpu_s"] else "-",
                goal="<= node_exporter",
                met=d["cpu_s"] <= n["cpu_s"],
            )
        )
    else:
        rows.append(row("daemon CPU vs node_exporter", "skipped", reference="node_exporter is not installed"))
    growth = ", ".join(f"{name} {v['rss_growth_bytes'] / 2**20:+.1f}" for name, v in s.items())
    rows.append(
        row(f"RSS growth over {span} (MiB)", f"daemon {d['rss_growth_bytes'] / 2**20:+.1f} MiB", reference=growth)
    )
    verdicts = [r["met"] for r in rows if r["met"] is not None]
    return {
        "goal": "daemon RSS <= floor + 8 MiB and <= Glances; daemon CPU seconds <= node_exporter's",
        "goal_met": all(verdicts) if verdicts else None,
        "scrape_interval_s": SCRAPE_S,
        "duration_s": duration,
        **measured,
        "rows": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
