"""Give the real backend an API key it accepts, so it demands ``X-API-Key`` as in production.

The backend validates keys as 64 hex digits (services/apiKeyService.js) and stores their SHA-256. A key of
another length is stored but can never be presented: once stored and active it locks every client out. This
writes a 64-hex key to ``<root>/api-key`` (where the daemon's settings look for it), stores its hash the way
``createApiKey`` does, and deactivates an unusable key that the file held before.

    python -m tests.contract.api_key [<root>]       # root: CCTV_REAL_ROOT, default <tempdir>/cctv-real
    python -m tests.contract.api_key --remove [<root>]   # deactivate it again: no key demanded
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import sys
import tempfile
from pathlib import Path


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def main(argv: list[str]) -> int:
    remove = "--remove" in argv
    args = [a for a in argv if a != "--remove"]
    root = Path(args[0] if args else os.environ.get("CCTV_REAL_ROOT") or Path(tempfile.gettempdir()) / "cctv-real")
    database = root / "backend" / "data" / "cctv.db"
    if not database.is_file():
        print(f"no backend database at {database}", file=sys.stderr)
        return 2
    key_file = root / "api-key"
    old = key_file.read_text(encoding="utf-8").strip() if key_file.exists() else None
    conn = sqlite3.connect(database, timeout=30)
    try:
        with conn:
            if old is not None:
                conn.execute("UPDATE api_keys SET is_active = 0 WHERE key_hash = ?", (_hash(old),))
            if remove:
                key_file.unlink(missing_ok=True)
                print(f"API key removed from {root}")
                return 0
            key = secrets.token_hex(32)
            conn.execute(
                "INSERT INTO api_keys (key_hash, client_name, expires_at, is_active) VALUES (?, ?, NULL, 1)",
                (_hash(key), "cctv-optimizer"),
            )
    finally:
        conn.close()
    key_file.write_text(key + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    print(f"key in {key_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
