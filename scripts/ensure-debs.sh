#!/usr/bin/env bash
# Install the Debian packages the tests (or benchmarks) use when they are missing. Needs root; without it, the
# tests that need a missing tool skip with a printed reason.
#   ensure-debs.sh          what `make test` needs
#   ensure-debs.sh bench    what `make bench` needs as well
set -u
declare -A tool_pkg=(
  [systemd-analyze]=systemd
  [chromium]=chromium
  [promtool]=prometheus
  [prometheus]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [shellcheck]=shellcheck
)
if [ "${1:-}" = "bench" ]; then
  tool_pkg[wrk]=wrk
  tool_pkg[prometheus-node-exporter]=prometheus-node-exporter
fi
need=()
for tool in "${!tool_pkg[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/bin/$tool" ]; then
    need+=("${tool_pkg[$tool]}")
  fi
done
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-debs: not root; tests needing ${need[*]} will skip" >&2
  exit 0
fi
echo "ensure-debs: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
# services shipped by these packages must not start on install (policy-rc.d 101 = action forbidden)
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "ensure-debs: could not install some of ${need[*]}; their tests will skip" >&2
[ "$created_policy" = 1 ] && rm -f "$policy"
exit 0
