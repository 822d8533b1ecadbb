"""The dashboard page (GET /): self-contained, and rendered live in headless Chromium against a daemon and testbed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from optimizer.app import Daemon
from optimizer.dashboard import load_dashboard
from testbed.harness import TestbedProcess
from tests.harness import api_base, api_client, daemon_env, running_daemon, sample_times

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAL_LIMIT = 2 * 1024 * 1024
CHARTS = ("cpu", "memory", "connections", "response")
VIEWBOX = (320.0, 100.0)
# virtual time runs the page's 3 s poll about ten times in a few real seconds
VIRTUAL_TIME_MS = 30_000
CHROMIUM_TIMEOUT_S = 90.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1560",
)
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "srcset", "data", "xlink:href", "background"}
POINT = re.compile(r"[ML]\s*(-?[\d.]+)\s+(-?[\d.]+)")


class DashboardDom(HTMLParser):
    """What the test reads from the rendered page: chart paths, table rows, URL attributes, the error banner."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, str] = {}
        self.thresholds: dict[str, bool] = {}
        self.texts: dict[str, str] = {}
        self.history: list[dict[str, str]] = []
        self.urls: list[tuple[str, str, str]] = []
        self.banner_hidden: bool | None = None
        self._chart: str | None = None
        self._capture: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record the parts of interest as they open."""
        a = {k: v or "" for k, v in attrs}
        self.urls.extend((tag, k, v) for k, v in a.items() if k in URL_ATTRIBUTES)
        if a.get("id") == "banner":
            self.banner_hidden = "hidden" in a
        if tag == "svg" and "data-chart" in a:
            self._chart = a["data-chart"]
        elif self._chart is not None and tag == "path" and a.get("class") == "line":
            self.lines[self._chart] = a.get("d", "")
        elif self._chart is not None and tag == "line" and a.get("class") == "threshold":
            self.thresholds[self._chart] = True
        # text of a few containers, keyed by what they are
        key = None
        if tag == "tbody" and a.get("id") == "strategies":
            key = "strategies"
        elif tag == "span" and "data-threshold" in a:
            key = f"threshold:{a['data-threshold']}"
        elif tag == "span" and "data-value" in a:
            key = f"value:{a['data-value']}"
        elif tag == "tr" and "data-decision" in a:
            self.history.append({"strategy": a.get("data-strategy", ""), "outcome": a.get("data-outcome", "")})
            key = f"decision:{len(self.history) - 1}"
        if key is not None:
            self._capture.append((tag, key, []))

    def handle_endtag(self, tag: str) -> None:
        """Close what was open."""
        if tag == "svg":
            self._chart = None
        if self._capture and self._capture[-1][0] == tag:
            _, key, parts = self._capture.pop()
            text = " ".join(" ".join(parts).split())
            if key.startswith("decision:"):
                self.history[int(key.split(":")[1])]["text"] = text
            else:
                self.texts[key] = text
            if self._capture:
                self._capture[-1][2].append(text)

    def handle_data(self, data: str) -> None:
        """Collect text for the open container."""
        if self._capture:
            self._capture[-1][2].append(data)


def points(d: str) -> list[tuple[float, float]]:
    """The (x, y) points of an SVG path made of M and L commands."""
    return [(float(x), float(y)) for x, y in POINT.findall(d)]


def is_external(url: str) -> bool:
    """Whether a URL in an attribute would leave the host (a scheme other than data:, or protocol-relative)."""
    value = url.strip().lower()
    if value.startswith("//"):
        return True
    scheme = re.match(r"^([a-z][a-z0-9+.-]*):", value)
    return scheme is not None and scheme.group(1) != "data"


@contextlib.asynccontextmanager
async def sampling(daemon: Daemon, every: float = 0.2) -> AsyncIterator[None]:
    """Keep the daemon sampling while the page polls, as its own loop would."""
    stop = asyncio.Event()

    async def pace() -> None:
        while not stop.is_set():
            await daemon.sample_now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    task = asyncio.create_task(pace())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def render(url: str, profile: Path, screenshot: Path) -> str:
    """Load the page in headless Chromium, let its scripts poll, save a screenshot, and return the DOM."""
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s")
    finally:
        # its helper processes share the session started for it; none may outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


async def test_served_page_is_self_contained(testbed: TestbedProcess, tmp_path: Path) -> None:
    """GET / serves the packaged page as HTML that loads nothing from elsewhere and never parses API text as HTML."""
    async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon, api_client(daemon) as client:
        resp = await client.get("/")
        body = await resp.read()
        assert resp.status == 200
        assert resp.content_type == "text/html"
    assert body == load_dashboard()
    page = body.decode()
    assert re.findall(r"https?://", page, re.IGNORECASE) == []
    assert re.search(r"<script[^>]*\bsrc=", page) is None
    assert re.search(r"<link[^>]*rel=\"?stylesheet", page) is None
    assert "@import" not in page and "url(" not in page
    assert "connect-src 'self'" in page and "default-src 'none'" in page
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in page, sink


async def test_page_renders_live_data_in_chromium(testbed: TestbedProcess, tmp_path: Path) -> None:
    """In a real browser the four charts draw polled points, the history shows the WAL decision, strategies list database."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: install the Debian packages chromium and chromium-driver")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    testbed.scenario("wal_growth", mb=4)
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(WAL_LIMIT),
        MEMORY_THRESHOLD="0.85",
    )
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        result = await daemon.engine.request_round(trigger="scheduled")
        decision = daemon.store.decision(result.decision_ids[0]) if result.decision_ids else None
        assert decision is not None and decision.strategy == "database" and decision.outcome == "applied"
        async with sampling(daemon):
            dom = await render(f"{api_base(daemon)}/", tmp_path / "chromium", screenshot)
    (ARTIFACTS / "dashboard-dom.html").write_text(dom, encoding="utf-8")

    page = DashboardDom()
    page.feed(dom)
    page.close()
    assert page.banner_hidden is True, "the page reported a failed poll"
    for chart in CHARTS:
        drawn = points(page.lines.get(chart, ""))
        assert len(drawn) >= 3, f"{chart}: {page.lines.get(chart)!r}"
        assert all(0 <= x <= VIEWBOX[0] and 0 <= y <= VIEWBOX[1] for x, y in drawn), chart
        assert [x for x, _ in drawn] == sorted(x for x, _ in drawn), f"{chart}: time runs left to right"
        assert re.search(r"\d", page.texts[f"value:{chart}"]), chart
    assert page.thresholds.get("memory") is True
    assert page.texts["threshold:memory"].startswith("threshold 85 %")
    rows = [r for r in page.history if r["strategy"] == "database"]
    assert len(rows) == 1
    assert rows[0]["outcome"] == "applied"
    assert "applied" in rows[0]["text"] and "WAL" in rows[0]["text"]
    assert "database" in page.texts["strategies"]
    assert [u for u in page.urls if is_external(u[2])] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
