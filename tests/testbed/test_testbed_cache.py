"""The response cache over HTTP: HIT/MISS, keys with query strings, stats, invalidate, clear, TTL, sweep."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from testbed.harness import AdminSession, TestbedFactory, TestbedProcess, wait_until


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """A testbed with a 1.5 s TTL, a fast sweep and a 40 ms miss cost."""
    return make_testbed(
        "--rate-limit-scale", "10", "--cache-ttl", "1.5", "--cache-sweep-interval", "0.3", "--miss-cost-ms", "40"
    )


@pytest.fixture(scope="module")
def admin(tb: TestbedProcess) -> AdminSession:
    """One login for the module."""
    return tb.login()


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts with an empty cache and zeroed counters."""
    tb.scenario("reset")
    yield


def test_miss_then_hit_with_key(tb: TestbedProcess) -> None:
    """The first GET is a MISS, the second a HIT naming the full URL as key; another query is a MISS."""
    first = tb.request("GET", "/api/cameras/active?city=x")
    second = tb.request("GET", "/api/cameras/active?city=x")
    other = tb.request("GET", "/api/cameras/active?city=y")
    assert (first.header("X-Cache"), first.header("X-Cache-Key")) == ("MISS", None)
    assert (second.header("X-Cache"), second.header("X-Cache-Key")) == ("HIT", "/api/cameras/active?city=x")
    assert other.header("X-Cache") == "MISS"
    assert first.body == second.body
    cameras = first.json()["data"]
    assert [camera["id"] for camera in cameras] == [1, 2, 3, 4]
    assert tb.state()["cache_size"] == 2


def test_miss_is_measurably_slower_than_hit(tb: TestbedProcess) -> None:
    """Misses (database plus rebuild cost) take clearly longer than hits."""

    def timed(path: str) -> float:
        started = time.perf_counter()
        assert tb.request("GET", path).status == 200
        return time.perf_counter() - started

    misses = [timed(f"/api/areas/public?n={index}") for index in range(5)]
    hits = [timed("/api/areas/public?n=0") for _ in range(5)]
    assert statistics.median(misses) > statistics.median(hits) + 0.025


def test_stats_shape_and_counts(tb: TestbedProcess, admin: AdminSession) -> None:
    """Stats count hits, misses and sets and give hitRate as a percent string."""
    for path in ("/api/areas/public", "/api/areas/public", "/api/cameras/active"):
        tb.request("GET", path)
    answer = tb.request("GET", "/api/cache/stats", token=admin.token)
    assert answer.json() == {
        "success": True,
        "data": {
            "hits": 1,
            "misses": 2,
            "sets": 2,
            "deletes": 0,
            "invalidations": 0,
            "hitRate": "33.33%",
            "size": 2,
        },
    }
    duplicate = tb.request("GET", "/api/admin/cache/stats", token=admin.token)
    assert duplicate.json() == answer.json()


def test_invalidate_by_path_prefix(tb: TestbedProcess, admin: AdminSession) -> None:
    """Invalidate drops entries whose URL path starts with the pattern; no pattern is 400."""
    for path in ("/api/cameras/active", "/api/cameras/active?_=1", "/api/areas/public"):
        tb.request("GET", path)
    answer = tb.request(
        "POST", "/api/cache/invalidate", token=admin.token, csrf=admin.csrf, json_body={"pattern": "/api/cameras"}
    )
    assert answer.json() == {"success": True, "message": "Invalidated 2 cache entries", "count": 2}
    assert tb.request("GET", "/api/areas/public").header("X-Cache") == "HIT"
    assert tb.request("GET", "/api/cameras/active").header("X-Cache") == "MISS"
    missing = tb.request("POST", "/api/cache/invalidate", token=admin.token, csrf=admin.csrf, json_body={})
    assert missing.status == 400
    assert missing.json()["success"] is False


def test_clear_and_admin_clear(tb: TestbedProcess, admin: AdminSession) -> None:
    """Both clear routes empty the cache; the admin one reports how many entries went."""
    tb.request("GET", "/api/cameras/active")
    cleared = tb.request("POST", "/api/cache/clear", token=admin.token, csrf=admin.csrf)
    assert cleared.json() == {"success": True, "message": "Cache cleared"}
    assert tb.state()["cache_size"] == 0
    tb.request("GET", "/api/cameras/active")
    tb.request("GET", "/api/areas/public")
    admin_cleared = tb.request("POST", "/api/admin/cache/clear", token=admin.token, csrf=admin.csrf)
    body = admin_cleared.json()
    assert body["success"] is True
    assert body["data"] == {"cleared": 2}
    assert tb.request("GET", "/api/cameras/active").header("X-Cache") == "MISS"


def test_entries_expire_and_are_swept(tb: TestbedProcess) -> None:
    """After the TTL an entry is gone: the sweep removes it and the next GET is a MISS."""
    tb.request("GET", "/api/cameras/active?ttl=1")
    assert tb.state()["cache_size"] == 1
    wait_until(lambda: tb.state()["cache_size"] == 0, timeout=8)
    assert tb.request("GET", "/api/cameras/active?ttl=1").header("X-Cache") == "MISS"


def test_cache_junk_explodes_size_and_collapses_hit_rate(tb: TestbedProcess, admin: AdminSession) -> None:
    """cache_junk adds never-hit entries: size grows by that many and the hit rate falls."""
    tb.request("GET", "/api/cameras/active")
    tb.request("GET", "/api/cameras/active")
    result = tb.scenario("cache_junk", entries=300)
    assert result["cache_size"] == 301
    data = tb.request("GET", "/api/cache/stats", token=admin.token).json()["data"]
    assert data["size"] == 301
    assert data["misses"] == 301
    assert float(data["hitRate"].rstrip("%")) < 1.0


def test_legacy_cache_shape(make_testbed: TestbedFactory) -> None:
    """--legacy-cache-shape answers {hits, misses, sets, evictions, size, maxSize, hitRate:number}."""
    legacy = make_testbed("--legacy-cache-shape")
    session = legacy.login()
    legacy.request("GET", "/api/cameras/active")
    legacy.request("GET", "/api/cameras/active")
    data = legacy.request("GET", "/api/cache/stats", token=session.token).json()["data"]
    assert data == {"hits": 1, "misses": 1, "sets": 1, "evictions": 0, "size": 1, "maxSize": 1000, "hitRate": 50.0}
