"""Benchmark 1: counting the backend port's TCP connections by state, the daemon's way vs psutil's.

N idle loopback connections (100, 1,000, 10,000) are held open; the daemon's counter (sock_diag netlink, with
/proc/net/tcp parsing as its fallback) and ``psutil.net_connections(kind="tcp")`` count the listener port's
sockets by state. Goal: at 10,000 the daemon takes at most 1/20 of psutil's time, and the counts agree exactly.
"""

from __future__ import annotations

from typing import Any

from bench import bench_tcp
from bench.common import fmt_ms, row
from metrics.tcp import NetlinkTcpCounter, ProcNetTcpCounter

NAME = "tcp_count"
TITLE = "1. TCP connection counting"
GOAL_RATIO = 1 / 20


def run(quick: bool) -> dict[str, Any]:
    """Measure the three ways of counting at each size; medians of several repetitions."""
    sizes = (100, 1000, 10000)
    repeat = 5 if quick else 9
    netlink = NetlinkTcpCounter()
    proc = ProcNetTcpCounter()
    try:
        results = {size: bench_tcp.bench_size(size, repeat, netlink, proc) for size in sizes}
    finally:
        netlink.close()
    rows = []
    for size, result in results.items():
        is_goal = size == sizes[-1]
        r = result.ratio_netlink_vs_psutil
        rows.append(
            row(
                f"count {size:,} connections ({result.netlink_method})",
                fmt_ms(result.netlink.median_s),
                reference=f"psutil {fmt_ms(result.psutil.median_s)}",
                ratio_text=f"1/{1 / r:.0f}" if r > 0 else "-",
                goal="<= 1/20 of psutil" if is_goal else "",
                met=(r <= GOAL_RATIO) if is_goal else None,
            )
        )
    agree = all(result.counts_agree for result in results.values())
    rows.append(
        row(
            "counts agree with psutil (all sizes)",
            "yes" if agree else "no",
            reference="psutil by state",
            goal="exactly",
            met=agree,
        )
    )
    return {
        "goal": "netlink time <= psutil time / 20 at 10,000 connections, counts equal at every size",
        "goal_met": agree and results[sizes[-1]].ratio_netlink_vs_psutil <= GOAL_RATIO,
        "repeat": repeat,
        "sizes": {
            str(size): {
                **result.as_json(),
                # Each method's first timed call (seconds apart), so a drift on the host shows too.
                "counts_by_method": {
                    "netlink": result.netlink.counts,
                    "proc": result.proc.counts,
                    "psutil": result.psutil.counts,
                },
            }
            for size, result in results.items()
        },
        "rows": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
