"""CPU accounting from /proc for the benchmarks: each process's CPU ticks, and the machine's."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _proc_times() -> dict[int, tuple[int, int, str, str, int]]:
    """pid -> (ppid, utime+stime ticks, owner uid, command line, start time in ticks since
    boot) for every process. The start time tells a process from a later one with its pid; the
    command line cannot: PostgreSQL backends rewrite theirs with every state (idle, SELECT)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            command = cmd.decode(errors="replace")
            uid = Path(entry.path, "status").read_text().split("\nUid:")[1].split()[0]
        except (OSError, IndexError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            uid,
            command,
            int(fields[19]),
        )
    return out


def _machine_busy() -> tuple[int, int]:
    """(busy, steal) ticks of all cores from /proc/stat; busy includes steal (time the
    hypervisor gave to someone else while this machine wanted to run)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, values[7]


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[int, tuple[int, int, str, str, int]]
    busy: int
    steal: int


def cpu_snapshot() -> CpuSnapshot:
    return CpuSnapshot(time.perf_counter(), _proc_times(), *_machine_busy())
