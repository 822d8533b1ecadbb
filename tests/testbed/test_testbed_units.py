"""In-process tests of the testbed's building blocks (no subprocess)."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from optimizer.clock import FakeClock
from testbed.auth import LoginGuard, TokenError, TokenIssuer, csrf_valid, decode_jwt, encode_jwt
from testbed.cache import ResponseCache, middleware_key
from testbed.hls import HlsWriter, scan_hls
from testbed.localtime import LocalClock
from testbed.ratelimit import RateLimiter, RouteClass, route_class


def test_jwt_round_trip_and_rejections() -> None:
    """An HS256 token decodes with its secret; a wrong secret, tampering or expiry is refused."""
    secret = b"s" * 32
    token = encode_jwt({"id": 1, "exp": time.time() + 60}, secret)
    assert decode_jwt(token, secret)["id"] == 1
    with pytest.raises(TokenError, match="signature"):
        decode_jwt(token, b"x" * 32)
    header, body, signature = token.split(".")
    with pytest.raises(TokenError):
        decode_jwt(f"{header}.{body}x.{signature}", secret)
    expired = encode_jwt({"id": 1, "exp": time.time() - 1}, secret)
    with pytest.raises(TokenError, match="expired"):
        decode_jwt(expired, secret)
    with pytest.raises(TokenError, match="malformed"):
        decode_jwt("not-a-token", secret)


def test_token_issuer_keeps_access_and_refresh_apart() -> None:
    """A refresh token is not accepted as an access token, nor the reverse; lifetimes are as configured."""
    issuer = TokenIssuer(b"k" * 32, access_ttl=3600, refresh_ttl=7 * 86400)
    user = {"id": 1, "username": "admin", "role": "admin"}
    access, refresh = issuer.access_token(user), issuer.refresh_token(user)
    payload = issuer.verify(access, kind="access")
    assert payload["exp"] - payload["iat"] == 3600
    assert issuer.verify(refresh, kind="refresh")["exp"] - payload["iat"] == 7 * 86400
    with pytest.raises(TokenError):
        issuer.verify(refresh, kind="access")
    with pytest.raises(TokenError):
        issuer.verify(access, kind="refresh")


def test_login_guard_locks_user_after_five_and_ip_after_ten() -> None:
    """Five failures inside the window lock the username (case-sensitive), ten the address; the window frees them."""
    clock = FakeClock()
    guard = LoginGuard(lockout_seconds=900, clock=clock.monotonic)
    for _ in range(4):
        guard.record_failure("admin", "10.0.0.1")
    assert guard.check("admin", "10.0.0.1") is None
    guard.record_failure("ADMIN", "10.0.0.1")
    assert guard.check("admin", "10.0.0.2") is None
    guard.record_failure("admin", "10.0.0.1")
    lock = guard.check("admin", "10.0.0.2")
    assert lock is not None
    assert (lock.scope, lock.retry_after) == ("user", 900)
    assert guard.failures("admin", "10.0.0.1") == 6
    for index in range(4):
        guard.record_failure(f"user{index}", "10.0.0.1")
    ip_lock = guard.check("someone-else", "10.0.0.1")
    assert ip_lock is not None
    assert ip_lock.scope == "ip"
    clock.advance(901)
    assert guard.check("admin", "10.0.0.1") is None


def test_rate_limiter_fixed_window_and_retry_after() -> None:
    """The first request opens a 60 s window; past the limit the answer waits for the window's end."""
    clock = FakeClock(start_wall=1_001_000.0)
    limiter = RateLimiter(scale=0.03, clock=clock.monotonic, wall=clock.wall)
    assert limiter.limits == {RouteClass.DEFAULT: 3, RouteClass.ADMIN: 2, RouteClass.AUTH: 1}
    for remaining in (2, 1, 0):
        decision = limiter.hit("1.2.3.4", RouteClass.DEFAULT)
        assert (decision.allowed, decision.remaining) == (True, remaining)
        assert decision.reset_epoch == 1_000_000 + 1000 + 60
        clock.advance(10)
    refused = limiter.hit("1.2.3.4", RouteClass.DEFAULT)
    assert (refused.allowed, refused.retry_after) == (False, 30)
    assert limiter.hit("5.6.7.8", RouteClass.DEFAULT).allowed
    assert limiter.hit("1.2.3.4", RouteClass.AUTH).allowed
    clock.advance(20)
    assert not limiter.hit("1.2.3.4", RouteClass.DEFAULT).allowed
    clock.advance(10.5)
    assert limiter.hit("1.2.3.4", RouteClass.DEFAULT).allowed


def test_route_classes() -> None:
    """The whitelist and control routes are unlimited; auth and admin prefixes have their own classes."""
    for unlimited in ("/health", "/_testbed/state", "/api/stream/3", "/api/viewer/heartbeat", "/hls/k/index.m3u8"):
        assert route_class(unlimited) is None
    # the backend matches the URL as sent: a query string takes /health out of the whitelist
    assert route_class("/health?x=1") is RouteClass.DEFAULT
    assert route_class("/api/auth/login") is RouteClass.AUTH
    assert route_class("/api/admin/cache/stats") is RouteClass.ADMIN
    assert route_class("/api/cache/stats") is RouteClass.DEFAULT
    assert route_class("/api/viewer/start") is RouteClass.DEFAULT


def test_cache_counters_are_the_backends() -> None:
    """Expiry on lookup is only a miss, invalidate and clear count entries as invalidations, the sweep nothing."""
    clock = FakeClock()
    cache = ResponseCache(ttl_seconds=30, clock=clock.monotonic)
    assert cache.stats()["hitRate"] == "0%"
    cameras = middleware_key("/api/cameras/active")
    assert cameras == "middleware:GET:/api/cameras/active:{}"
    assert middleware_key("/api/cameras/active?_=1&a=2&a=3") == (
        'middleware:GET:/api/cameras/active?_=1&a=2&a=3:{"_":"1","a":["2","3"]}'
    )
    assert cache.get(cameras) is None
    cache.set(cameras, b"{}", "application/json")
    cache.set(middleware_key("/api/cameras/active?_=1"), b"{}", "application/json")
    cache.set(middleware_key("/api/areas/public"), b"{}", "application/json")
    cache.set("areas:all:public", [], ttl_seconds=300)
    assert cache.get(cameras) is not None
    assert cache.stats() == {
        "hits": 1,
        "misses": 1,
        "sets": 4,
        "deletes": 0,
        "invalidations": 0,
        "hitRate": "50.00%",
        "size": 4,
    }
    assert cache.invalidate("/api/cameras") == 2
    assert cache.invalidations == 2
    clock.advance(31)
    assert cache.sweep() == 1
    assert cache.size == 1
    cache.set("/x", b"1", "text/plain")
    clock.advance(31)
    assert cache.get("/x") is None
    assert cache.clear() == 1
    assert cache.stats() == {
        "hits": 1,
        "misses": 2,
        "sets": 5,
        "deletes": 0,
        "invalidations": 3,
        "hitRate": "33.33%",
        "size": 0,
    }


def test_cache_legacy_shape_is_bounded() -> None:
    """The older shape reports evictions, maxSize and a numeric hitRate, and evicts past maxSize."""
    cache = ResponseCache(ttl_seconds=30, max_size=2)
    for key in ("/a", "/b", "/c"):
        cache.set(key, b"", "application/json")
    cache.get("/c")
    cache.get("/a")
    assert cache.stats(legacy=True) == {
        "hits": 1,
        "misses": 1,
        "sets": 3,
        "evictions": 1,
        "size": 2,
        "maxSize": 2,
        "hitRate": 50.0,
    }


def test_csrf_double_submit_rules() -> None:
    """Both values must be present, 64 hex characters and equal."""
    value = "ab" * 32
    assert csrf_valid(value, value)
    assert not csrf_valid(value, "cd" * 32)
    assert not csrf_valid(None, value)
    assert not csrf_valid("zz" * 32, "zz" * 32)
    assert not csrf_valid("ab" * 16, "ab" * 16)


def test_local_clock_strings() -> None:
    """Local text uses the zone and the backend's format; /health's labels follow timezoneService's names."""
    clock = LocalClock(7)
    text = clock.local()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)
    skew = (clock.parse_local(text) - clock.now()).total_seconds()
    assert -2 <= skew <= 0
    assert clock.timezone_name() == "Asia/Jakarta (WIB, UTC+7)"
    assert LocalClock(zone="WITA").zone == "Asia/Makassar"
    assert LocalClock(0).timezone_name() == "Etc/UTC (UTC+0)"
    assert clock.iso_utc().endswith("Z")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", clock.iso(3600))
    with pytest.raises(ValueError, match="no zone"):
        LocalClock(5.5)


def test_clock_follows_the_timezone_row() -> None:
    """A clock that follows a source changes zone with it, as the backend reads system_settings every time."""
    row = {"value": "Asia/Jakarta"}
    clock = LocalClock(7)
    clock.follow(lambda: row["value"])
    jakarta = clock.now().utcoffset()
    row["value"] = "Asia/Jayapura"
    assert clock.zone == "Asia/Jayapura"
    assert clock.now().utcoffset() - jakarta == timedelta(hours=2)  # type: ignore[operator]
    row["value"] = "Not/AZone"
    assert clock.zone == "Asia/Jayapura"


def test_hls_writer_rotates_and_scan_finds_stale(tmp_path: Path) -> None:
    """The writer keeps `segment_count` segments and deletes older ones; scan_hls spots only stale files."""
    writer = HlsWriter(tmp_path, segment_seconds=2, segment_count=3, segment_bytes=1024)
    writer.set_streams(["cam-a"])
    for _ in range(6):
        writer.tick()
    directory = tmp_path / "cam-a"
    names = sorted(os.listdir(directory))
    segments = [name for name in names if re.fullmatch(r"[0-9a-f]{12}_video_seg\d+\.mp4", name)]
    assert len(segments) == 3
    assert sum(name.endswith(".mp4.tmp") for name in names) == 1
    assert {"index.m3u8", "video_stream.m3u8"} <= set(names)
    playlist = (directory / "video_stream.m3u8").read_text()
    assert "#EXT-X-MEDIA-SEQUENCE:3" in playlist
    assert all(segment in playlist for segment in segments)
    old = time.time() - 600
    orphan = directory / "0123456789ab_video_seg1.mp4"
    orphan.write_bytes(b"x" * 10)
    os.utime(orphan, (old, old))
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "victim.mp4").write_bytes(b"y")
    (directory / "link.mp4").symlink_to(outside / "victim.mp4")
    for path in directory.iterdir():
        os.utime(path, (old, old), follow_symlinks=False)
    scan = scan_hls(tmp_path, stale_age_seconds=60)
    assert (scan.stale_files, scan.stale_bytes) == (1, 10)
    assert scan.files == len(names) + 1
