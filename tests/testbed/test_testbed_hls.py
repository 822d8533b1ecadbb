"""The HLS directory writer, the /hls route and the MediaMTX API stand-in."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from testbed.harness import TestbedFactory, TestbedProcess, wait_until

SEGMENT = re.compile(r"(?P<prefix>[0-9a-f]{12})_video_seg(?P<number>\d+)\.mp4")


@pytest.fixture(scope="module")
def tb(make_testbed: TestbedFactory) -> TestbedProcess:
    """Two cameras writing a 0.1 s segment each tick, 10 per playlist."""
    return make_testbed("--cameras", "2", "--segment-seconds", "0.1", "--rate-limit-scale", "10")


@pytest.fixture(autouse=True)
def clean(tb: TestbedProcess) -> Iterator[None]:
    """Each test starts with MediaMTX up and no scenario leftovers."""
    tb.scenario("reset")
    yield


def stream_keys(tb: TestbedProcess) -> list[str]:
    """Stream keys of the enabled cameras, from the stream route (the public camera list does not name them)."""
    cameras = tb.request("GET", "/api/cameras/active?keys").json()["data"]
    return [tb.request("GET", f"/api/stream/{camera['id']}").json()["data"]["stream_key"] for camera in cameras]


def media_segments(directory: Path) -> list[str]:
    """Segment names listed by a stream's media playlist."""
    text = (directory / "video_stream.m3u8").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def media_sequence(directory: Path) -> int:
    """EXT-X-MEDIA-SEQUENCE of a stream's media playlist."""
    match = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", (directory / "video_stream.m3u8").read_text())
    assert match is not None
    return int(match.group(1))


def test_directory_layout_imitates_mediamtx(tb: TestbedProcess) -> None:
    """Each live stream has index.m3u8 -> video_stream.m3u8 -> an init segment and numbered segments."""
    keys = stream_keys(tb)
    assert sorted(path.name for path in tb.hls_dir.iterdir()) == sorted(keys)
    directory = tb.hls_dir / keys[0]
    wait_until(lambda: len(media_segments(directory)) == 10, timeout=10)
    assert "video_stream.m3u8" in (directory / "index.m3u8").read_text()
    media = (directory / "video_stream.m3u8").read_text()
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', media)
    assert init is not None
    assert re.fullmatch(r"[0-9a-f]{12}_video_init\.mp4", init.group(1))
    assert (directory / init.group(1)).read_bytes()[4:8] == b"ftyp"
    for name in media_segments(directory):
        assert SEGMENT.fullmatch(name)


def test_writer_rotates_and_deletes_old_segments(tb: TestbedProcess) -> None:
    """The media sequence advances, rotated-out segments are deleted, at most 10 finished ones remain."""
    directory = tb.hls_dir / stream_keys(tb)[0]
    wait_until((directory / "video_stream.m3u8").exists, timeout=10)
    first_sequence = media_sequence(directory)
    oldest = directory / media_segments(directory)[0]
    assert oldest.exists()
    wait_until(lambda: media_sequence(directory) >= first_sequence + 12, timeout=10)
    assert not oldest.exists()
    finished = [path.name for path in directory.iterdir() if SEGMENT.fullmatch(path.name)]
    assert len(finished) <= 11  # ten listed, possibly one just finished before the playlist rewrite
    assert sum(path.name.endswith(".mp4.tmp") for path in directory.iterdir()) <= 1
    assert tb.state()["stale_hls_files"] == 0


def test_hls_route_serves_the_playlist(tb: TestbedProcess) -> None:
    """GET /hls/<key>/index.m3u8 answers the playlist; unknown keys and odd names are 404."""
    key = stream_keys(tb)[0]
    wait_until((tb.hls_dir / key / "index.m3u8").exists, timeout=10)
    answer = tb.request("GET", f"/hls/{key}/index.m3u8")
    assert answer.status == 200
    assert answer.header("Content-Type").startswith("application/vnd.apple.mpegurl")  # type: ignore[union-attr]
    assert answer.body.startswith(b"#EXTM3U")
    assert tb.request("GET", "/hls/not-a-stream/index.m3u8").status == 404
    assert tb.request("GET", f"/hls/{key}/..%2Fcctv.db").status == 404


def test_mediamtx_paths_list(tb: TestbedProcess) -> None:
    """/v3/paths/list pages the live paths, each ready with an hlsMuxer reader; config list matches."""
    keys = stream_keys(tb)
    wait_until(lambda: tb.state()["live_streams"] == 2, timeout=10)
    listing = tb.request("GET", "/v3/paths/list?page=0&itemsPerPage=100", base_url=tb.mediamtx_url).json()
    assert (listing["pageCount"], listing["itemCount"]) == (1, 2)
    assert sorted(item["name"] for item in listing["items"]) == sorted(keys)
    for item in listing["items"]:
        assert item["ready"] is True
        assert item["readers"] == [{"type": "hlsMuxer", "id": ""}]
        assert item["bytesReceived"] > 0
    paged = tb.request("GET", "/v3/paths/list?page=1&itemsPerPage=1", base_url=tb.mediamtx_url).json()
    assert (paged["pageCount"], paged["itemCount"], len(paged["items"])) == (2, 2, 1)
    config = tb.request("GET", "/v3/config/paths/list", base_url=tb.mediamtx_url).json()
    assert sorted(item["name"] for item in config["items"]) == sorted(keys)
    assert tb.request("GET", "/v3/paths/get/nope", base_url=tb.mediamtx_url).status == 404


def test_mediamtx_down_and_up(tb: TestbedProcess) -> None:
    """Down: the port refuses, /hls answers 502 JSON. Up: same port, a new muxer run (new prefix)."""
    key = stream_keys(tb)[0]
    directory = tb.hls_dir / key
    wait_until((directory / "video_stream.m3u8").exists, timeout=10)
    old_prefix = SEGMENT.fullmatch(media_segments(directory)[0]).group("prefix")  # type: ignore[union-attr]
    port = urlsplit(tb.mediamtx_url).port
    assert port is not None
    tb.scenario("mediamtx_down")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    bad_gateway = tb.request("GET", f"/hls/{key}/index.m3u8")
    assert bad_gateway.status == 502
    assert bad_gateway.json()["success"] is False
    assert tb.state()["mediamtx_up"] is False
    tb.scenario("mediamtx_up")
    assert tb.request("GET", "/v3/paths/list", base_url=tb.mediamtx_url).status == 200
    new_prefix = SEGMENT.fullmatch(media_segments(directory)[0]).group("prefix")  # type: ignore[union-attr]
    assert new_prefix != old_prefix
    assert tb.request("GET", f"/hls/{key}/index.m3u8").status == 200
