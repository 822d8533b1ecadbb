"""The API's answer caches: history pages and rows, and the /performance-metrics page.

Each cached answer must be the bytes an uncached read gives, and never older than the last write or sample
before the request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from optimizer import api
from optimizer.api import (
    CTX,
    PAGES,
    EncodedRows,
    HistoryCache,
    HistoryPages,
    PageCache,
    _history_page,
    _page_key,
)
from optimizer.state import UNCHANGED, HistoryReader, StateStore
from testbed.harness import TestbedProcess
from tests.harness import api_client, auth, daemon_env, running_daemon


def _decide(store: StateStore, strategy: str, n: int, outcome: str = "applied") -> list[int]:
    ids = []
    for i in range(n):
        row_id = store.add_decision(
            run_id=f"run{i}",
            strategy=strategy,
            trigger="manual",
            mode="enforce",
            action="wal_checkpoint",
            reason=f"reason {i} é",
            signals={"wal_bytes": 1000 + i},
            thresholds={"wal_bytes": {"enter": 500}},
            changes=[{"what": "checkpoint", "i": i}],
            outcome=outcome,
            error=None,
            duration_ms=1.23456 + i,
            expected={"wal_bytes": "down"} if i % 2 else None,
        )
        assert row_id is not None
        ids.append(row_id)
    return ids


def _plain_page(store: StateStore, after: int, limit: int, strategy: str | None) -> bytes:
    """The page as encoded before pages were assembled from encoded rows."""
    items = [r.as_dict() for r in store.decisions(after=after, limit=limit, strategy=strategy)]
    return json.dumps({"items": items, "last": items[-1]["id"] if items else after}).encode()


def test_history_pages_are_the_bytes_of_the_plain_encoding(tmp_path: Path) -> None:
    """A page assembled from cached rows is byte for byte the page encoded whole, filtered, empty or not."""
    store = StateStore(tmp_path)
    store.open()
    reader = HistoryReader(store)
    try:
        _decide(store, "database", 5)
        _decide(store, "memory", 4)
        rows = EncodedRows()
        for after, limit, strategy in ((0, 100, None), (2, 3, None), (0, 2, "memory"), (9, 10, None), (0, 5, "nope")):
            expected = _plain_page(store, after, limit, strategy)
            assert _history_page(reader, after, limit, strategy, rows)[0] == expected
            assert _history_page(reader, after, limit, strategy, rows)[0] == expected  # from the cached rows
            assert _history_page(store, after, limit, strategy)[0] == expected
        assert len(rows) == 9
    finally:
        reader.close()
        store.close()


def test_a_cached_row_is_not_served_after_its_row_changed(tmp_path: Path) -> None:
    """Rows are cached by their content: a verdict filled in later shows in the next page read."""
    store = StateStore(tmp_path)
    store.open()
    reader = HistoryReader(store)
    try:
        ids = _decide(store, "database", 3)
        rows = EncodedRows()
        before = json.loads(_history_page(reader, 0, 100, None, rows)[0])
        assert [i["verdict"] for i in before["items"]] == [None, None, None]
        store.update_decision(ids[1], verdict="improved", verdict_detail={"wal_bytes": -900})
        after = json.loads(_history_page(reader, 0, 100, None, rows)[0])
        assert [i["verdict"] for i in after["items"]] == [None, "improved", None]
        assert after["items"][1]["verdictDetail"] == {"wal_bytes": -900}
        assert _history_page(reader, 0, 100, None, rows)[0] == _plain_page(store, 0, 100, None)
    finally:
        reader.close()
        store.close()


def test_encoded_rows_stay_within_their_byte_budget(tmp_path: Path) -> None:
    """The row cache drops its oldest rows past its budget, and still answers every row right."""
    store = StateStore(tmp_path)
    store.open()
    try:
        _decide(store, "database", 40)
        one = len(_history_page(store, 0, 1, None)[0])
        rows = EncodedRows(budget=one * 2 * 10)
        assert _history_page(store, 0, 40, None, rows)[0] == _plain_page(store, 0, 40, None)
        assert 0 < len(rows) <= 10
        assert rows.size <= rows.budget
    finally:
        store.close()


def test_a_request_that_read_the_version_before_a_write_keeps_the_newer_pages() -> None:
    """Pages are forgotten when the version moves forward only: a request still holding the previous version
    neither gets the newer pages nor makes them forgotten (which made every request read its page afresh)."""
    pages = HistoryPages()
    key = (0, 100, None)
    assert pages.get(2, key) is None
    pages.put(2, key, b"new")
    assert pages.get(1, key) is None  # an older request: reads for itself
    pages.put(1, key, b"old")  # and is not kept
    assert pages.get(2, key) == b"new"
    assert pages.get(3, key) is None  # a write since: forgotten
    assert pages.size == 0


def test_the_store_says_from_which_row_the_history_changed_since_a_version(tmp_path: Path) -> None:
    """history_changed_from: a new row from its id, a verdict from its row's, a delete from any row; writes to
    other tables change no row of the history."""
    store = StateStore(tmp_path, max_history_rows=3)
    store.open()
    try:
        first = _decide(store, "database", 2)
        v = store.version
        assert store.history_changed_from(v) == UNCHANGED
        store.save_strategy("database", {"cooldown": 1})
        store.journal_finish(store.journal_intent(decision_id=first[0], strategy="database", plan={}) or 0, "done")
        assert store.version > v
        assert store.history_changed_from(v) == UNCHANGED
        (third,) = _decide(store, "database", 1)
        assert store.history_changed_from(v) == third
        store.update_decision(first[1], verdict="improved")
        assert store.history_changed_from(v) == first[1]
        v = store.version
        store.update_decision(999, verdict="improved")  # no such row: nothing changed
        store.trim()  # 3 rows, 3 kept: nothing deleted
        assert store.history_changed_from(v) == UNCHANGED
        _decide(store, "database", 1)
        store.trim()  # 4 rows, 3 kept: the oldest goes
        assert store.history_changed_from(v) == 0
    finally:
        store.close()


def test_the_store_says_any_row_when_the_writes_since_a_version_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the latest history writes are remembered: a version older than them may have seen any row change."""
    store = StateStore(tmp_path)
    store.open()
    try:
        v = store.version
        ids = _decide(store, "database", 3)
        assert store.history_changed_from(v) == ids[0]
        store._history_changes = type(store._history_changes)(store._history_changes, maxlen=3)
        _decide(store, "database", 2)
        assert store.history_changed_from(v) == 0
        assert store.history_changed_from(store.version - 1) == ids[2] + 2
    finally:
        store.close()


def _cached_page(
    pages: HistoryPages, store: StateStore, reader: HistoryReader, key: tuple[int, int, str | None]
) -> tuple[bytes, bool]:
    """(The page for ``key``, whether it came from ``pages``), read and kept as the handler does."""
    version = store.version
    cached = pages.get(version, key)
    if cached is not None:
        return cached, True
    page, last, full = _history_page(reader, *key)
    pages.put(version, key, page, last=last, full=full)
    return page, False


def test_a_full_history_page_is_kept_while_only_later_rows_are_written(tmp_path: Path) -> None:
    """A full page (the oldest first, as GET /optimizations gives by default) is served from the cache while a
    round's new rows come after it, and read again once a row on it changed; a page with room for more rows is
    read again after any new row; none after a write to another table. Every answer is the page as read now."""
    store = StateStore(tmp_path)
    store.open()
    reader = HistoryReader(store)
    pages = HistoryPages(store.history_changed_from)
    full, partial, filtered = (0, 3, None), (2, 100, None), (0, 2, "memory")
    try:
        ids = _decide(store, "database", 4)

        def check(key: tuple[int, int, str | None], cached: bool) -> None:
            page, hit = _cached_page(pages, store, reader, key)
            assert page == _plain_page(store, *key)
            assert hit is cached, key

        for key in (full, partial, filtered):
            check(key, False)
            check(key, True)
        _decide(store, "database", 2)  # new rows after the full page
        check(full, True)
        check(partial, False)
        check(filtered, False)  # empty: new rows could belong to it
        store.save_baseline("cpu_ratio", 3, 0.5, 10)  # not the history
        for key in (full, partial, filtered):
            check(key, True)
        store.update_decision(ids[1], verdict="regressed")  # a row on the full page
        check(full, False)
        check(full, True)
        _decide(store, "memory", 3)
        check(filtered, False)
        check(filtered, True)  # full now: later rows do not change it
        _decide(store, "memory", 1)
        check(filtered, True)
        store.update_decision(ids[3], verdict="improved")  # after the full page's rows
        check(full, True)
    finally:
        reader.close()
        store.close()


async def test_requests_for_a_page_being_read_share_that_read() -> None:
    """Requests for the same page and version while it is read wait for that read; another version reads anew."""
    pages = HistoryPages()
    reads: list[int] = []
    release = asyncio.Event()

    def reader(version: int) -> Any:
        async def read() -> bytes:
            reads.append(version)
            await release.wait()
            return f"v{version}".encode()

        return read

    key = (0, 100, None)
    first = [asyncio.create_task(pages.shared(1, key, reader(1))) for _ in range(5)]
    newer = asyncio.create_task(pages.shared(2, key, reader(2)))
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*first) == [b"v1"] * 5
    assert await newer == b"v2"
    assert reads == [1, 2]
    assert pages.pending == {}


async def test_requests_for_a_page_being_rendered_share_that_rendering() -> None:
    """/performance-metrics: requests for the same key while it renders wait for that one rendering (not one per
    read slot); a new key (a sample, a round, a write) renders anew, and a failed rendering is not kept."""
    pages = PageCache()
    renders: list[str] = []
    release = asyncio.Event()

    def renderer(key: str, *, fail: bool = False) -> Any:
        async def render() -> bytes:
            renders.append(key)
            await release.wait()
            if fail:
                raise RuntimeError("render failed")
            return key.encode()

        return render

    same = [asyncio.create_task(pages.shared("a", renderer("a"))) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*same) == [b"a"] * 5
    assert renders == ["a"]
    assert await pages.shared("b", renderer("b")) == b"b"
    failing = asyncio.create_task(pages.shared("c", renderer("c", fail=True)))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await failing
    assert await pages.shared("c", renderer("c")) == b"c"
    assert renders == ["a", "b", "c", "c"]


async def test_history_answers_are_never_older_than_the_last_write(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Over HTTP: a cached page is renewed by a new decision and by a verdict written to an old one."""
    env = daemon_env(testbed, tmp_path / "s")
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        await daemon.engine.request_round(trigger="manual", strategy="database", manual=True, dry_run=True)
        for _ in range(3):  # served from the cache after the first
            async with http.get("/optimizations?limit=1000") as resp:
                first = await resp.json()
        assert first["items"]
        async with http.post("/performance-optimize", json={"strategy": "database"}, headers=auth(daemon)) as resp:
            assert resp.status == 200
            new_ids = (await resp.json())["decisions"]
        assert new_ids
        async with http.get("/optimizations?limit=1000") as resp:
            second = await resp.json()
        assert [i["id"] for i in second["items"]] == [i["id"] for i in first["items"]] + new_ids
        old = first["items"][0]["id"]
        daemon.store.update_decision(old, verdict="improved", verdict_detail={"note": "later"})
        async with http.get("/optimizations?limit=1000") as resp:
            third = await resp.json()
        assert third["items"][0]["verdict"] == "improved"
        assert third["items"][0]["verdictDetail"] == {"note": "later"}


async def test_the_metrics_page_shows_a_requested_round_as_soon_as_it_is_answered(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """GET /performance-metrics cached before a POSTed round shows that round's decisions right after the answer."""
    env = daemon_env(testbed, tmp_path / "s")
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        for _ in range(3):
            async with http.get("/performance-metrics") as resp:
                before = await resp.json()
        assert before["recentOptimizations"] == []
        async with http.post("/performance-optimize", json={"strategy": "database"}, headers=auth(daemon)) as resp:
            ids = (await resp.json())["decisions"]
        assert ids
        async with http.get("/performance-metrics") as resp:
            after = await resp.json()
        assert {i["id"] for i in after["recentOptimizations"]} >= set(ids)
        assert after["performance"]["isOptimizing"] is False


async def test_the_metrics_page_says_whether_a_round_runs_at_each_answer(
    testbed: TestbedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """isOptimizing is put into the cached page when it is answered: a round's start needs no new rendering."""
    env = daemon_env(testbed, tmp_path / "s")
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        async with http.get("/performance-metrics") as resp:
            idle = await resp.json()
        assert idle["performance"]["isOptimizing"] is False
        monkeypatch.setattr(type(daemon.engine), "optimizing", property(lambda self: True))
        async with http.get("/performance-metrics") as resp:
            busy = await resp.json()
        assert busy["performance"]["isOptimizing"] is True
        assert busy["timestamp"] == idle["timestamp"]  # the same rendering
        assert "optimizing\\u0000" not in json.dumps(busy)


async def test_history_figures_are_kept_while_a_round_runs_and_read_again_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/performance-metrics' history figures: a running round's own writes do not make them read again (a page
    rendered for its fresh sample shows the history as of the last round's end); the round's end, or a write
    with no round running, does."""
    store = StateStore(tmp_path)
    store.open()
    reads = 0
    real_read = HistoryCache._read

    def counting_read(s: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_read(s)

    monkeypatch.setattr(HistoryCache, "_read", staticmethod(counting_read))
    try:
        cache = HistoryCache()
        _decide(store, "database", 1)
        (count, _, _, _), _ = await cache.get(store, rounds_run=4, round_running=False)
        assert (reads, count) == (1, 1)
        _decide(store, "database", 1)  # round 5 writes while it runs
        (count, _, _, _), _ = await cache.get(store, rounds_run=4, round_running=True)
        assert (reads, count) == (1, 1)
        (count, _, _, _), _ = await cache.get(store, rounds_run=5, round_running=True)  # it ended just now
        assert (reads, count) == (2, 2)
        _decide(store, "database", 1)  # a write with no round running (a verdict, a decision outside rounds)
        (count, _, _, _), _ = await cache.get(store, rounds_run=5, round_running=False)
        assert (reads, count) == (3, 3)
    finally:
        store.close()


def _summary_as_read(store: StateStore) -> tuple[Any, ...]:
    return store.decision_stats(), tuple(store.recent_rows(10))


def test_the_store_keeps_the_history_summary_through_new_rows_and_forgets_it_at_other_changes(tmp_path: Path) -> None:
    """history_summary: what a read gives (the counted figures and the ten newest rows as stored), kept in memory
    through a round's new rows; unknown after an apply (the counted figures), a changed row or a delete, until a
    read made since the last write is offered back. Never different from a read."""
    store = StateStore(tmp_path, max_history_rows=12)
    store.open()
    try:

        def read_and_offer() -> None:
            version = store.version
            stats, rows = _summary_as_read(store)
            store.offer_history_summary(version, stats, list(rows))

        def known() -> tuple[Any, ...] | None:
            summary = store.history_summary()
            if summary is not None:
                assert summary[1:] == _summary_as_read(store)
            return summary

        assert known() is None  # nothing read yet
        read_and_offer()
        assert known() is not None
        ids = _decide(store, "cache", 12, outcome="nothing_to_do")
        assert known() is not None  # new rows: kept, and the same as a read
        _decide(store, "database", 1)  # an apply: the counted figures change
        assert known() is None
        read_and_offer()
        assert known() is not None
        store.update_decision(ids[-1], verdict="improved")
        assert known() is None
        read_and_offer()
        _decide(store, "cache", 100, outcome="nothing_to_do")  # trims to 12 rows on the way
        assert known() is None
        version = store.version
        stats, rows = _summary_as_read(store)
        _decide(store, "cache", 1, outcome="nothing_to_do")  # written after that read
        store.offer_history_summary(version, stats, list(rows))
        assert known() is None  # an offer older than the last write is not kept
        store.save_strategy("cache", {"x": 1})  # another table
        read_and_offer()
        store.save_baseline("cpu_ratio", 1, 0.5, 3)
        assert known() is not None
    finally:
        store.close()


async def test_the_metrics_page_is_rendered_ahead_at_a_round_end_while_it_is_polled(
    testbed: TestbedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While /performance-metrics is polled, a sample and a round's end render it on the engine's loop: the next
    request finds it ready, with that round's decisions. Nobody polling: nothing is rendered ahead."""
    monkeypatch.setattr(api, "RENDER_AHEAD_SECONDS", 600.0)  # "polled" however slow this machine is
    env = daemon_env(testbed, tmp_path / "s")
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        app = daemon._app
        assert app is not None
        pages = app[PAGES]

        def kept() -> object:
            return pages.key

        await daemon.engine.request_round(trigger="manual", strategy="cache", manual=True)
        assert kept() is None  # not asked for yet
        async with http.get("/performance-metrics") as resp:
            assert resp.status == 200
        result = await daemon.engine.request_round(trigger="manual", strategy="cache", manual=True)
        assert kept() == _page_key(app[CTX])  # rendered for this round's end, before any request
        ahead = json.loads(pages.fresh(pages.key, time.monotonic()) or b"null")
        assert {i["id"] for i in ahead["recentOptimizations"]} >= set(result.decision_ids)
        async with http.get("/performance-metrics") as resp:
            served = await resp.json()
        assert served["timestamp"] == ahead["timestamp"]  # that rendering
        assert served["performance"]["isOptimizing"] is False
        await daemon.sample_now()
        assert kept() == _page_key(app[CTX])  # and for a new sample
        pages.asked_at = time.monotonic() - 1000  # not polled lately
        await daemon.engine.request_round(trigger="manual", strategy="cache", manual=True)
        assert kept() != _page_key(app[CTX])


async def test_a_rendering_superseded_while_it_ran_is_answered_but_not_kept(
    testbed: TestbedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /performance-metrics rendering whose key changed before it ended (a sample, a round's end or a write
    meanwhile) answers its requests but does not replace what is kept (a page rendered ahead for the new key)."""
    env = daemon_env(testbed, tmp_path / "s")
    started, release = threading.Event(), threading.Event()  # the handler runs on the API's loop, in its thread
    real_body = api._performance_body

    async def slow_body(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await asyncio.to_thread(release.wait, 10)
        return await real_body(*args, **kwargs)

    async with running_daemon(env) as daemon, api_client(daemon) as http:
        app = daemon._app
        assert app is not None
        pages, ctx = app[PAGES], app[CTX]
        monkeypatch.setattr(api, "_performance_body", slow_body)
        request = asyncio.create_task(http.get("/performance-metrics"))
        assert await asyncio.to_thread(started.wait, 10)
        ctx.writes += 1  # the key moves on while that rendering runs
        newer = (_page_key(ctx), time.monotonic(), b"{}")
        pages.entry = newer
        release.set()
        async with await request as resp:
            assert resp.status == 200
            assert (await resp.json())["mode"]
        assert pages.entry == newer
