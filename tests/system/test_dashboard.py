"""The dashboard page (GET /): self-contained, and rendered live in headless Chromium against a daemon and testbed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from optimizer.app import Daemon
from optimizer.clock import FakeClock
from optimizer.dashboard import load_dashboard
from testbed.harness import TestbedProcess
from tests.harness import api_base, api_client, daemon_env, running_daemon, running_testbed, sample_times

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
        self.ticks: dict[str, list[str]] = {}
        self.tick_times: dict[str, list[tuple[int, float]]] = {}
        self.finding_groups: dict[str, int] = {}
        self.signal_titles: dict[str, str] = {}
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
            self.texts[f"points:{self._chart}"] = a.get("data-points", "")
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
        elif tag == "span" and "data-span" in a:
            key = f"span:{a['data-span']}"
        elif tag == "span" and "data-tick" in a:
            key = f"tick:{a['data-tick']}"
            if "data-t" in a:
                left = re.search(r"left:\s*([\d.]+)%", a.get("style", ""))
                assert left is not None, a
                self.tick_times.setdefault(a["data-tick"], []).append((int(a["data-t"]), float(left.group(1))))
        elif tag == "li" and "data-finding-group" in a:
            self.finding_groups[a["data-finding-group"]] = int(a.get("data-count", "0"))
        elif tag == "tr" and "data-signal" in a:
            key = f"signal:{a['data-signal']}"
        elif tag == "td" and self._capture and self._capture[-1][1].startswith("signal:") and "title" in a:
            self.signal_titles.setdefault(self._capture[-1][1][7:], a["title"])
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
            elif key.startswith("tick:"):
                self.ticks.setdefault(key[5:], []).append(text)
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


# what a proxy passes on neither way: hop-by-hop headers, and those that name the proxy or a body it re-encodes
NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@contextlib.asynccontextmanager
async def sampled_per_poll(daemon: Daemon, *, clock: FakeClock | None = None, step: float = 0.0) -> AsyncIterator[str]:
    """The daemon's API behind a front that takes one sample before passing on each poll for samples; its URL.

    The page polls on Chromium's virtual time, which runs its 3 s timer in however little real time the host
    allows, so samples taken on a real-time timer may all land before or after its polls. Sampling as each poll
    arrives gives every poll one new point to append whatever the speed of the host (a fake clock moving
    ``step`` a sample). Chromium's virtual time waits for a fetch in flight, so the page waits for it too.
    """
    lock = asyncio.Lock()
    base = api_base(daemon)
    async with ClientSession() as session:

        async def forward(request: web.Request) -> web.Response:
            if request.path == "/samples":
                async with lock:
                    if clock is not None:
                        clock.advance(step)
                    await daemon.sample_now()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
            async with session.request(
                request.method, f"{base}{request.path_qs}", headers=headers, data=await request.read()
            ) as resp:
                body = await resp.read()
                kept = {k: v for k, v in resp.headers.items() if k.lower() not in NOT_FORWARDED}
                return web.Response(status=resp.status, body=body, headers=kept)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}"
        finally:
            await runner.cleanup()


def parsed(dom: str, keep: Path) -> DashboardDom:
    """The rendered page, kept as a file for a look afterwards; a page that reported a failed poll fails here."""
    keep.write_text(dom, encoding="utf-8")
    page = DashboardDom()
    page.feed(dom)
    page.close()
    assert page.banner_hidden is True, "the page reported a failed poll"
    return page


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
        async with sampled_per_poll(daemon) as url:
            dom = await render(f"{url}/", tmp_path / "chromium", screenshot)
    page = parsed(dom, ARTIFACTS / "dashboard-dom.html")
    for chart in CHARTS:
        drawn = points(page.lines.get(chart, ""))
        assert len(drawn) >= 3, f"{chart}: {page.lines.get(chart)!r}"
        assert all(0 <= x <= VIEWBOX[0] and 0 <= y <= VIEWBOX[1] for x, y in drawn), chart
        assert [x for x, _ in drawn] == sorted(x for x, _ in drawn), f"{chart}: time runs left to right"
        assert re.search(r"\d", page.texts[f"value:{chart}"]), chart
    assert page.thresholds.get("memory") is True
    assert page.texts["threshold:memory"].startswith("threshold 85 %")
    # value axes in the chart's unit; ratios keep 0-100 %, times are in ms or s
    assert page.ticks["memory:y"] == ["0 %", "50 %", "100 %"]
    assert all(re.fullmatch(r"[\d.]+ (ms|s)", t) for t in page.ticks["response:y"]), page.ticks["response:y"]
    assert all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", t) for t in page.ticks["cpu:x"]), page.ticks["cpu:x"]
    # readable names with the identifier on hover, one row per signal
    assert page.signal_titles.get("wal_bytes") == "wal_bytes"
    assert page.texts["signal:wal_bytes"].startswith("Database WAL size")
    # the testbed's eight tables nobody cleans are one entry with a count
    assert page.finding_groups.get("uncleaned-table", 0) >= 2, page.finding_groups
    rows = [r for r in page.history if r["strategy"] == "database"]
    assert len(rows) == 1
    assert rows[0]["outcome"] == "applied"
    assert "applied" in rows[0]["text"] and "WAL" in rows[0]["text"]
    assert "database" in page.texts["strategies"]
    assert [u for u in page.urls if is_external(u[2])] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000


@pytest.fixture
def roomy_testbed(tmp_path: Path) -> Iterator[TestbedProcess]:
    """A testbed whose rate limits (real time) leave room for ten minutes of fake-clock samples in a few seconds."""
    with running_testbed(tmp_path / "testbed", "--rate-limit-scale", "10") as tb:
        yield tb


async def test_page_opened_after_ten_minutes_shows_ten_minutes(roomy_testbed: TestbedProcess, tmp_path: Path) -> None:
    """A page opened after ten minutes of sampling draws those ten minutes at once, then appends live points.

    The daemon runs on a fake clock: 121 samples five seconds apart are ten minutes of its time taken in a few
    real seconds, and its window (120 samples) holds them all. Axes carry units; the connection and response
    charts fit their data instead of the far-off thresholds. The testbed's rate limits run in real time, so they
    are raised: a hot endpoint answered 429 is not timed, and that sample has no response time to draw.
    """
    testbed = roomy_testbed
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: install the Debian packages chromium and chromium-driver")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard-10min.png"
    screenshot.unlink(missing_ok=True)
    clock = FakeClock(start_wall=time.time() - 610.0)
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_SAMPLER__WINDOW_SIZE="120")
    async with running_daemon(env, clock=clock) as daemon:
        for _ in range(121):
            clock.advance(5.0)
            await daemon.sample_now()
        window = daemon.engine.windows.points("cpu_ratio")
        assert len(window) == 120 and window[-1][0] - window[0][0] == pytest.approx(595.0)
        async with sampled_per_poll(daemon, clock=clock, step=5.0) as url:
            dom = await render(f"{url}/", tmp_path / "chromium", screenshot)
    page = parsed(dom, ARTIFACTS / "dashboard-10min-dom.html")
    for chart in CHARTS:
        drawn = points(page.lines.get(chart, ""))
        # the whole window at once, then live points appended (more than the daemon's 120 by now)
        assert int(page.texts[f"points:{chart}"]) > 120, (chart, page.texts[f"points:{chart}"])
        assert len(drawn) > 120, chart
        xs = [x for x, _ in drawn]
        assert xs == sorted(xs) and xs[0] < 5 and xs[-1] > 315, chart
        # ten minutes loaded, plus the few seconds of live samples the page appended (five fake seconds each)
        assert re.fullmatch(r"last 1[01] min( \d+ s)?", page.texts[f"span:{chart}"]), page.texts[f"span:{chart}"]
        # the time axis: its labelled ticks, placed where their times fall, span ten minutes and more
        (t1, left1), *_, (t2, left2) = page.tick_times[f"{chart}:x"]
        # (tick positions are rounded to 0.1 % of the width: allow that much)
        assert (t2 - t1) / ((left2 - left1 + 0.2) / 100) >= 590_000, (chart, page.tick_times[f"{chart}:x"])
        assert all(re.fullmatch(r"\d\d:\d\d", t) for t in page.ticks[f"{chart}:x"]), page.ticks[f"{chart}:x"]
    # the connection chart fits its handful of sockets, not the 500 of its threshold
    top = page.ticks["connections:y"][-1]
    assert int(top.replace(",", "")) < 500, page.ticks["connections:y"]
    assert page.texts["threshold:connections"].endswith("(above the scale)")
    assert page.ticks["response:y"][-1].endswith("ms"), page.ticks["response:y"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
