"""The shared cache over HTTP: HIT/MISS, middleware keys, service entries, counters, invalidate, clear, sweep."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from testbed.harness import AdminSession, TestbedFactory, TestbedProcess, wait_until


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """A testbed with 1.5 s route and service TTLs, a fast sweep and a 40 ms miss cost."""
    return make_testbed(
        "--rate-limit-scale",
        "10",
        "--cache-ttl",
        "1.5",
        "--service-cache-ttl",
        "1.5",
        "--cache-sweep-interval",
        "0.3",
        "--miss-cost-ms",
        "40",
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
    """A MISS, then a HIT, both naming the middleware's key; another query is a MISS served by the service entry."""
    first = tb.request("GET", "/api/cameras/active?city=x")
    second = tb.request("GET", "/api/cameras/active?city=x")
    other = tb.request("GET", "/api/cameras/active?city=y")
    key = 'middleware:GET:/api/cameras/active?city=x:{"city":"x"}'
    assert (first.header("X-Cache"), first.header("X-Cache-Key")) == ("MISS", key)
    assert (second.header("X-Cache"), second.header("X-Cache-Key")) == ("HIT", key)
    assert other.header("X-Cache") == "MISS"
    assert first.body == second.body
    cameras = first.json()["data"]
    assert [camera["id"] for camera in cameras] == [1, 2, 3, 4]
    assert "stream_key" not in cameras[0]
    # two route entries and the camera service's list
    assert tb.state()["cache_size"] == 3


def test_miss_is_measurably_slower_than_hit(tb: TestbedProcess) -> None:
    """Misses (database plus rebuild cost) take clearly longer than hits."""

    def timed(path: str) -> float:
        started = time.perf_counter()
        assert tb.request("GET", path).status == 200
        return time.perf_counter() - started

    def cold(index: int) -> float:
        # a route miss that the area service's entry cannot answer either
        tb.scenario("reset")
        return timed(f"/api/areas/public?n={index}")

    misses = [cold(index) for index in range(5)]
    hits = [timed("/api/areas/public?n=4") for _ in range(5)]
    assert statistics.median(misses) > statistics.median(hits) + 0.025


def test_stats_shape_and_counts(tb: TestbedProcess, admin: AdminSession) -> None:
    """Route and service lookups share the counters; hitRate is a percent string ("0%" before any lookup)."""
    idle = tb.request("GET", "/api/cache/stats", token=admin.token).json()["data"]
    assert (idle["hitRate"], idle["hits"], idle["misses"]) == ("0%", 0, 0)
    for path in ("/api/areas/public", "/api/areas/public", "/api/areas/public?b=1", "/api/cameras/active"):
        tb.request("GET", path)
    answer = tb.request("GET", "/api/cache/stats", token=admin.token)
    # areas: route miss + service miss, route hit, route miss + service hit; cameras: route miss + service miss
    assert answer.json() == {
        "success": True,
        "data": {
            "hits": 2,
            "misses": 5,
            "sets": 5,
            "deletes": 0,
            "invalidations": 0,
            "hitRate": "28.57%",
            "size": 5,
        },
    }
    duplicate = tb.request("GET", "/api/admin/cache/stats", token=admin.token)
    assert duplicate.json() == answer.json()


def test_invalidate_by_path_prefix(tb: TestbedProcess, admin: AdminSession) -> None:
    """Invalidate drops route entries whose URL starts with the pattern, counting each; no pattern is 400."""
    for path in ("/api/cameras/active", "/api/cameras/active?_=1", "/api/areas/public"):
        tb.request("GET", path)
    answer = tb.request(
        "POST", "/api/cache/invalidate", token=admin.token, csrf=admin.csrf, json_body={"pattern": "/api/cameras"}
    )
    assert answer.json() == {"success": True, "message": "Invalidated 2 cache entries", "count": 2}
    stats = tb.request("GET", "/api/cache/stats", token=admin.token).json()["data"]
    assert (stats["invalidations"], stats["deletes"]) == (2, 0)
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
    # two route entries and the two services' entries
    assert body["data"] == {"cleared": 4}
    assert body["message"] == "Cache cleared successfully. 4 entries removed."
    assert tb.request("GET", "/api/cameras/active").header("X-Cache") == "MISS"


def test_entries_expire_and_are_swept(tb: TestbedProcess, admin: AdminSession) -> None:
    """After the TTL entries are gone: the sweep removes them without counting, and the next GET is a MISS."""
    tb.request("GET", "/api/cameras/active?ttl=1")
    assert tb.state()["cache_size"] == 2
    wait_until(lambda: tb.state()["cache_size"] == 0, timeout=30)
    stats = tb.request("GET", "/api/cache/stats", token=admin.token).json()["data"]
    assert (stats["deletes"], stats["invalidations"]) == (0, 0)
    assert tb.request("GET", "/api/cameras/active?ttl=1").header("X-Cache") == "MISS"


def test_cache_junk_explodes_size_and_collapses_hit_rate(tb: TestbedProcess, admin: AdminSession) -> None:
    """cache_junk adds never-hit entries: size grows by that many and the hit rate falls."""
    tb.request("GET", "/api/cameras/active")
    tb.request("GET", "/api/cameras/active")
    result = tb.scenario("cache_junk", entries=300)
    # the route entry, the camera service's list and the junk
    assert result["cache_size"] == 302
    data = tb.request("GET", "/api/cache/stats", token=admin.token).json()["data"]
    assert data["size"] == 302
    # each junk request is a route miss; the service lookups behind them are hits while the list lives
    assert data["misses"] >= 302
    assert float(data["hitRate"].rstrip("%")) < 60.0


def test_legacy_cache_shape(make_testbed: TestbedFactory) -> None:
    """--legacy-cache-shape answers {hits, misses, sets, evictions, size, maxSize, hitRate:number}."""
    legacy = make_testbed("--legacy-cache-shape")
    session = legacy.login()
    legacy.request("GET", "/api/cameras/active")
    legacy.request("GET", "/api/cameras/active")
    data = legacy.request("GET", "/api/cache/stats", token=session.token).json()["data"]
    assert data == {"hits": 1, "misses": 2, "sets": 2, "evictions": 0, "size": 2, "maxSize": 1000, "hitRate": 33.33}
