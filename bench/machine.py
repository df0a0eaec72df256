"""What else runs on the machine while a benchmark runs: load average and the CPU other processes take.

Every bench prints `LoadWatch`'s lines. Before measuring, other processes' CPU use is sampled for a second; a bench
refuses to start when they hold more than `BUSY` cores (unless asked with --allow-contended). During the
measurement the CPU time all processes but this one (and its children) used is recorded from /proc/stat; when
they held more than `BUSY` cores on average, the report says CONTENDED next to the numbers.
"""

from __future__ import annotations

import os
import sys
import time

BUSY = 0.25  # cores held by other processes above which numbers are contended


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and its children (finished children included)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return total
    for pid in pids:  # live children (e.g. an inference server process) are not in os.times() yet
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(parts[1]) == me:  # parent pid
            total += (int(parts[11]) + int(parts[12])) / tick
    return total


class LoadWatch:
    """Measures the cores other processes hold between `start()` and `stop()`."""

    def __init__(self) -> None:
        self.t0 = self.busy0 = self.own0 = None

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), _own_seconds()

    def stop(self) -> float | None:
        """Average cores used by other processes since `start()` (None where /proc/stat is missing)."""
        busy = _busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (_own_seconds() - self.own0)) / max(wall, 1e-9)


def machine_line() -> str:
    la = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"machine: {os.cpu_count()} cores, load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min)"


def preflight(allow_contended: bool, seconds: float = 1.0) -> LoadWatch:
    """Prints the machine's load; exits (status 3) when others hold the cores, unless `allow_contended`.

    Returns a started LoadWatch for the measurement itself."""
    w = LoadWatch()
    w.start()
    time.sleep(seconds)
    others = w.stop()
    print(machine_line())
    if others is None:
        print("other processes: unknown (no /proc/stat); numbers may be contended")
    else:
        print(f"other processes: {others:.2f} cores busy over the last {seconds:.0f} s (contended above {BUSY})")
        if others > BUSY and not allow_contended:
            print(f"refusing to measure: other processes hold {others:.2f} cores; wait for a quiet machine or pass "
                  "--allow-contended (the report is then marked CONTENDED)", file=sys.stderr)
            raise SystemExit(3)
    w.start()
    return w


def verdict(w: LoadWatch) -> str:
    """One line on the load during the measurement; says CONTENDED when others held more than BUSY cores."""
    others = w.stop()
    if others is None:
        return f"load during the run: unknown; {machine_line()}"
    flag = "CONTENDED: other processes shared the cores, compare only ratios measured side by side" if others > BUSY else "quiet"
    return f"load during the run: other processes {others:.2f} cores on average ({flag}); {machine_line()}"
