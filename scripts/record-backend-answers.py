#!/usr/bin/env python3
"""Record the backend's answers (status codes and JSON shapes) for every route the daemon calls.

Run it against the real backend to refresh ``tests/testbed/recorded/backend-answers.json``; the test
``tests/testbed/test_testbed_recorded.py`` replays the same calls against the testbed and compares.
A shape keeps the keys and the value types of a JSON answer, never its values, so the recording does
not depend on the data in the database.

    python3 scripts/record-backend-answers.py --url http://127.0.0.1:3000 \\
        --password-file /tmp/cctv-real/admin-password --section without_api_key
    # then make the backend demand a key: --create-api-key adds one active api_keys row (the backend only
    # accepts 64-hex keys; a 48-hex key, as run.sh api-key makes, is refused) and writes it to --api-key-file
    python3 scripts/record-backend-answers.py --url http://127.0.0.1:3000 \\
        --password-file /tmp/cctv-real/admin-password --api-key-file /tmp/cctv-real/api-key \\
        --create-api-key /tmp/cctv-real/backend/data/cctv.db --section with_api_key

Each run replaces only its own section of the output file. Stdlib only. The backend needs at least one
enabled camera (setup.js seeds three) and one area, so that the lists' items have a shape. The rate-limit
probe spends the auth window of a client address of its own (CF-Connecting-IP), not the caller's.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import sqlite3
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER_AGENT = "cctv-optimizer-recorder/1"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "testbed" / "recorded" / "backend-answers.json"
# headers whose presence (or, for X-Cache, value) is part of the contract
RECORDED_HEADERS = ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-cache")
VALUE_HEADERS = frozenset({"x-cache"})
SECTIONS = ("without_api_key", "with_api_key")
# a client address of its own for the rate-limit probe (the backend keys its windows by CF-Connecting-IP)
RATE_LIMIT_PROBE_IP = "198.51.100.77"
RATE_LIMIT_PROBE_MAX = 200


def shape(value: Any) -> Any:
    """The keys and value types of a JSON value: objects keep their keys, lists the shape of one item."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


@dataclass(slots=True)
class Answer:
    """One HTTP answer: status, lower-cased headers and the decoded JSON (None when not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any

    def record(self) -> dict[str, Any]:
        """The recorded form: status, shape and the contract headers."""
        headers = {
            name: (self.headers[name] if name in VALUE_HEADERS else "present")
            for name in RECORDED_HEADERS
            if name in self.headers
        }
        return {"status": self.status, "shape": shape(self.body), "headers": headers}


@dataclass(slots=True)
class Client:
    """A small HTTP client that speaks to the backend like the daemon does (CSRF cookie, token, API key)."""

    base: str
    api_key: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_hex(32))
    token: str | None = None
    refresh: str | None = None

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = False,
        csrf: bool = True,
        api_key: str | None = "configured",
        extra_headers: dict[str, str] | None = None,
    ) -> Answer:
        """One call; ``api_key`` is "configured" (the client's key), None (no header) or a literal key."""
        parsed = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=30)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        cookies = [f"csrf_token={self.csrf}"] if csrf else []
        if method != "GET" and csrf:
            headers["X-CSRF-Token"] = self.csrf
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        key = self.api_key if api_key == "configured" else api_key
        if key:
            headers["X-API-Key"] = key
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        headers.update(extra_headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            answer_headers = {name.lower(): value for name, value in resp.getheaders()}
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return Answer(status=resp.status, headers=answer_headers, body=data)

    def login(self, username: str, password: str) -> Answer:
        """Log in and keep the tokens."""
        answer = self.call("POST", "/api/auth/login", {"username": username, "password": password})
        if answer.status == 200 and isinstance(answer.body, dict):
            data = answer.body.get("data") or {}
            self.token = data.get("token")
            self.refresh = data.get("refreshToken")
        return answer


Case = Callable[[Client], Answer]


def _rate_limited(client: Client) -> Answer:
    """Spend one client address's auth window (30 a minute) until the backend answers 429."""
    probe = {"CF-Connecting-IP": RATE_LIMIT_PROBE_IP}
    answer = client.call("GET", "/api/auth/csrf", extra_headers=probe)
    for _ in range(RATE_LIMIT_PROBE_MAX):
        if answer.status == 429:
            return answer
        answer = client.call("GET", "/api/auth/csrf", extra_headers=probe)
    return answer


def cases_without_key(username: str, password: str) -> list[tuple[str, Case]]:
    """The calls of a backend that demands no API key, in the order they are made."""
    wrong = secrets.token_hex(8)
    return [
        ("health", lambda c: c.call("GET", "/health")),
        ("cameras_active_first", lambda c: c.call("GET", "/api/cameras/active?_recorder=" + c.csrf[:8])),
        ("cameras_active_again", lambda c: c.call("GET", "/api/cameras/active?_recorder=" + c.csrf[:8])),
        ("areas_public", lambda c: c.call("GET", "/api/areas/public")),
        ("csrf", lambda c: c.call("GET", "/api/auth/csrf")),
        (
            "login_wrong_password",
            lambda c: c.call("POST", "/api/auth/login", {"username": username, "password": wrong}),
        ),
        ("login_missing_fields", lambda c: c.call("POST", "/api/auth/login", {"username": username})),
        ("login", lambda c: c.login(username, password)),
        ("refresh", lambda c: c.call("POST", "/api/auth/refresh", {"refreshToken": c.refresh})),
        ("refresh_invalid", lambda c: c.call("POST", "/api/auth/refresh", {"refreshToken": "x.y.z"})),
        ("cache_stats", lambda c: c.call("GET", "/api/cache/stats", auth=True)),
        ("cache_stats_no_token", lambda c: c.call("GET", "/api/cache/stats")),
        ("admin_cache_stats", lambda c: c.call("GET", "/api/admin/cache/stats", auth=True)),
        ("admin_cache_stats_no_token", lambda c: c.call("GET", "/api/admin/cache/stats")),
        (
            "cache_invalidate",
            lambda c: c.call("POST", "/api/cache/invalidate", {"pattern": "/api/cameras/active"}, auth=True),
        ),
        ("cache_invalidate_no_pattern", lambda c: c.call("POST", "/api/cache/invalidate", {}, auth=True)),
        (
            "cache_invalidate_no_csrf",
            lambda c: c.call("POST", "/api/cache/invalidate", {"pattern": "/api"}, auth=True, csrf=False),
        ),
        ("cache_invalidate_no_token_no_csrf", lambda c: c.call("POST", "/api/cache/invalidate", {}, csrf=False)),
        ("cache_clear", lambda c: c.call("POST", "/api/cache/clear", {}, auth=True)),
        ("cache_clear_no_token", lambda c: c.call("POST", "/api/cache/clear", {})),
        ("admin_cache_clear", lambda c: c.call("POST", "/api/admin/cache/clear", {}, auth=True)),
        ("admin_cache_clear_no_csrf", lambda c: c.call("POST", "/api/admin/cache/clear", {}, auth=True, csrf=False)),
        ("admin_cache_clear_no_token_no_csrf", lambda c: c.call("POST", "/api/admin/cache/clear", {}, csrf=False)),
        ("cache_stats_after_clear", lambda c: c.call("GET", "/api/cache/stats", auth=True)),
        ("rate_limited", _rate_limited),
    ]


def cases_with_key(username: str, password: str) -> list[tuple[str, Case]]:
    """The calls of a backend with an active API key (public paths pass without it)."""
    wrong_key = secrets.token_hex(32)
    return [
        ("health_no_key", lambda c: c.call("GET", "/health", api_key=None)),
        ("cameras_active_no_key", lambda c: c.call("GET", "/api/cameras/active", api_key=None)),
        ("areas_public_no_key", lambda c: c.call("GET", "/api/areas/public", api_key=None)),
        ("csrf_no_key", lambda c: c.call("GET", "/api/auth/csrf", api_key=None)),
        ("login_no_key", lambda c: c.call("POST", "/api/auth/login", {"username": username}, api_key=None)),
        ("login", lambda c: c.login(username, password)),
        ("cache_stats_no_key", lambda c: c.call("GET", "/api/cache/stats", auth=True, api_key=None)),
        ("cache_stats_wrong_key", lambda c: c.call("GET", "/api/cache/stats", auth=True, api_key=wrong_key)),
        ("cache_stats_short_key", lambda c: c.call("GET", "/api/cache/stats", auth=True, api_key="abc123")),
        ("cache_stats", lambda c: c.call("GET", "/api/cache/stats", auth=True)),
        ("cache_stats_key_no_token", lambda c: c.call("GET", "/api/cache/stats")),
        ("admin_cache_stats_no_key", lambda c: c.call("GET", "/api/admin/cache/stats", auth=True, api_key=None)),
        ("admin_cache_stats", lambda c: c.call("GET", "/api/admin/cache/stats", auth=True)),
        (
            "refresh_no_key",
            lambda c: c.call("POST", "/api/auth/refresh", {"refreshToken": c.refresh}, api_key=None),
        ),
        ("refresh", lambda c: c.call("POST", "/api/auth/refresh", {"refreshToken": c.refresh})),
        ("cache_clear_no_key", lambda c: c.call("POST", "/api/cache/clear", {}, auth=True, api_key=None)),
        ("cache_clear", lambda c: c.call("POST", "/api/cache/clear", {}, auth=True)),
    ]


def run_section(client: Client, section: str, username: str, password: str) -> dict[str, Any]:
    """Make the section's calls in order and return their recorded answers."""
    cases = cases_without_key if section == "without_api_key" else cases_with_key
    recorded: dict[str, Any] = {}
    for name, case in cases(username, password):
        answer = case(client)
        recorded[name] = answer.record()
        if name == "refresh" and isinstance(answer.body, dict):
            data = answer.body.get("data") or {}
            client.token = data.get("token", client.token)
            client.refresh = data.get("refreshToken", client.refresh)
    return recorded


def create_api_key(database: Path, key_file: Path) -> None:
    """Add an active key to the backend's api_keys (its SHA-256, as apiKeyService stores it) and save it 0600."""
    key = secrets.token_hex(32)
    conn = sqlite3.connect(database, timeout=5.0)
    try:
        with conn:
            conn.execute(
                "INSERT INTO api_keys (key_hash, client_name, is_active) VALUES (?, 'cctv-optimizer-recorder', 1)",
                (hashlib.sha256(key.encode()).hexdigest(),),
            )
    finally:
        conn.close()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--url", required=True, help="the backend, e.g. http://127.0.0.1:3000")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--api-key-file", type=Path, default=None, help="the backend demands this key")
    parser.add_argument("--create-api-key", type=Path, default=None, metavar="DATABASE", help="add a key first")
    parser.add_argument("--section", choices=SECTIONS, required=True)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.create_api_key is not None:
        if args.api_key_file is None:
            print("--create-api-key needs --api-key-file to write the key to", file=sys.stderr)
            return 2
        try:
            create_api_key(args.create_api_key, args.api_key_file)
        except (OSError, sqlite3.Error) as exc:
            print(f"cannot add an API key to {args.create_api_key}: {exc}", file=sys.stderr)
            return 1
    try:
        password = args.password_file.read_text().strip()
        api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
    except OSError as exc:
        print(f"cannot read a credentials file: {exc}", file=sys.stderr)
        return 2
    if (args.section == "with_api_key") != (api_key is not None):
        print("--section with_api_key needs --api-key-file, and only it", file=sys.stderr)
        return 2
    client = Client(base=args.url.rstrip("/"), api_key=api_key)
    try:
        recorded = run_section(client, args.section, args.username, password)
    except OSError as exc:
        print(f"backend at {args.url} did not answer: {exc}", file=sys.stderr)
        return 1
    existing: dict[str, Any] = {}
    if args.output.exists():
        existing = json.loads(args.output.read_text())
    existing[args.section] = recorded
    existing["about"] = (
        "Status codes, JSON shapes (keys and value types) and contract headers of the backend's answers to "
        "the calls in scripts/record-backend-answers.py; recorded from the real backend, compared with the "
        "testbed by tests/testbed/test_testbed_recorded.py."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
    for name, answer in recorded.items():
        print(f"{args.section:16} {name:40} {answer['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
