#!/usr/bin/env bash
# Install the Debian packages the tests use when they are missing (needs root; skipped with a note otherwise).
set -u
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-debs: not root; tests needing ${need[*]} will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || echo "ensure-debs: could not install ${need[*]}" >&2
exit 0
