"""Authentication pieces of the backend: HS256 JWTs, login lockout, CSRF double-submit."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CSRF_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
USER_FAILURE_LIMIT = 5
IP_FAILURE_LIMIT = 10


class TokenError(Exception):
    """A JWT that is malformed, badly signed, of the wrong kind or expired."""


def _b64url(data: bytes) -> str:
    """Base64url without padding, as JWTs use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Inverse of _b64url, tolerant of missing padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(payload: dict[str, Any], secret: bytes) -> str:
    """Sign `payload` as a compact HS256 JWT."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = _b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def decode_jwt(token: str, secret: bytes, *, now: float | None = None) -> dict[str, Any]:
    """Verify an HS256 JWT and return its payload, or raise TokenError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    header_b64, body_b64, signature_b64 = parts
    expected = hmac.new(secret, f"{header_b64}.{body_b64}".encode("ascii"), hashlib.sha256).digest()
    try:
        signature = _b64url_decode(signature_b64)
        header = json.loads(_b64url_decode(header_b64))
        payload = json.loads(_b64url_decode(body_b64))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise TokenError("malformed token") from exc
    if not hmac.compare_digest(signature, expected):
        raise TokenError("invalid signature")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("unsupported algorithm")
    if not isinstance(payload, dict):
        raise TokenError("malformed payload")
    exp = payload.get("exp")
    current = time.time() if now is None else now
    if not isinstance(exp, int | float) or exp <= current:
        raise TokenError("token expired")
    return payload


def token_fingerprint(token: str) -> str:
    """SHA-256 of a token, the form the blacklist stores."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenIssuer:
    """Issues and checks the backend's access (1 h) and refresh (7 d) tokens."""

    def __init__(self, secret: bytes, *, access_ttl: int, refresh_ttl: int) -> None:
        """Keep the signing secret and lifetimes."""
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.revoked: set[str] = set()

    def access_token(self, user: dict[str, Any]) -> str:
        """Access token carrying id, username and role."""
        now = int(time.time())
        payload = {**user, "type": "access", "jti": secrets.token_hex(8), "iat": now, "exp": now + self.access_ttl}
        return encode_jwt(payload, self._secret)

    def refresh_token(self, user: dict[str, Any]) -> str:
        """Refresh token carrying only the user id."""
        now = int(time.time())
        payload = {
            "id": user["id"],
            "type": "refresh",
            "jti": secrets.token_hex(8),
            "iat": now,
            "exp": now + self.refresh_ttl,
        }
        return encode_jwt(payload, self._secret)

    def verify(self, token: str, *, kind: str) -> dict[str, Any]:
        """Payload of a valid, unrevoked token of `kind` ("access" or "refresh"), else TokenError."""
        payload = decode_jwt(token, self._secret)
        if payload.get("type") != kind:
            raise TokenError("wrong token type")
        if token_fingerprint(token) in self.revoked:
            raise TokenError("token revoked")
        return payload


@dataclass(frozen=True, slots=True, kw_only=True)
class Lockout:
    """A refused login: whom it concerns and how long until it lifts."""

    scope: str
    retry_after: int


class LoginGuard:
    """services/bruteForceProtection.js: failed logins counted per username and per client address.

    A username with 5 or an address with 10 failures inside the tracking window (15 minutes) is locked:
    every further login, even a correct one, is refused with the same 401 "Invalid credentials" as a
    wrong password, and a refused attempt is not counted again. The backend's 30/60-minute lockout
    lengths start at the last failure and so never outlast the window. A success clears the username's
    failures (the address's remain).
    """

    def __init__(self, *, lockout_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``lockout_seconds`` is the tracking window (900 s in the backend)."""
        self.lockout_seconds = lockout_seconds
        self._clock = clock
        self._by_user: dict[str, deque[float]] = {}
        self._by_ip: dict[str, deque[float]] = {}

    def reset(self) -> None:
        """Forget every failure and lockout."""
        self._by_user.clear()
        self._by_ip.clear()

    def check(self, username: str, ip: str) -> Lockout | None:
        """A Lockout when this username or address is locked now, else None."""
        now = self._clock()
        for scope, failures, limit in (
            ("user", self._recent(self._by_user, username, now), USER_FAILURE_LIMIT),
            ("ip", self._recent(self._by_ip, ip, now), IP_FAILURE_LIMIT),
        ):
            if len(failures) >= limit:
                # locked until the failure that crossed the limit leaves the window
                until = failures[-limit] + self.lockout_seconds
                return Lockout(scope=scope, retry_after=max(1, int(until - now + 0.999)))
        return None

    def failures(self, username: str, ip: str) -> int:
        """getCurrentAttemptCount: the larger of the username's and the address's recent failures."""
        now = self._clock()
        return max(len(self._recent(self._by_user, username, now)), len(self._recent(self._by_ip, ip, now)))

    def record_failure(self, username: str, ip: str) -> None:
        """Count one failed attempt against both the username and the address."""
        now = self._clock()
        self._by_user.setdefault(username, deque()).append(now)
        self._by_ip.setdefault(ip, deque()).append(now)

    def record_success(self, username: str) -> None:
        """A successful login clears the username's failures (the address's remain)."""
        self._by_user.pop(username, None)

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        """Failures of ``key`` still inside the tracking window."""
        failures = table.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.lockout_seconds:
            failures.popleft()
        return failures


def csrf_valid(cookie_value: str | None, header_value: str | None) -> bool:
    """Double-submit check: both present, 64 hex characters, and equal."""
    if not cookie_value or not header_value:
        return False
    if not CSRF_PATTERN.fullmatch(cookie_value) or not CSRF_PATTERN.fullmatch(header_value):
        return False
    return hmac.compare_digest(cookie_value, header_value)
