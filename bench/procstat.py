"""CPU time and resident memory of the processes under test, from /proc (Linux only).

A "process" here may be a group: PostgreSQL is its postmaster plus every backend (each connection is a process of
its own), counted with the CPU its exited children already spent (cutime/cstime).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float | None:
    fields = _stat(pid)
    if fields is None:
        return None
    # Fields after the name start at 3 (state): utime is 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def rss_kb(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[21]) * PAGE_KB if fields is not None else None


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry))
    return found


def pid_from(path: Path) -> int | None:
    """The pid in a pid file (the first line: postmaster.pid holds more)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Watched:
    name: str
    pid: int
    group: bool = False  # the process and its children (PostgreSQL)
    peak_rss_kb: int = 0

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)] if self.group else [self.pid]

    def cpu(self) -> float | None:
        if self.group:
            own = cpu_seconds(self.pid, children=True)
            if own is None:
                return None
            return own + sum(cpu_seconds(p) or 0.0 for p in children_of(self.pid))
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return sum(rss_kb(p) or 0 for p in self.pids())


@dataclass
class Watch:
    processes: list[Watched] = field(default_factory=list)

    def add(self, name: str, pid: int | None, *, group: bool = False) -> None:
        if pid is not None and cpu_seconds(pid) is not None:
            self.processes.append(Watched(name, pid, group))

    def cpu(self) -> dict[str, float]:
        return {p.name: c for p in self.processes if (c := p.cpu()) is not None}

    def sample_rss(self) -> None:
        for p in self.processes:
            p.peak_rss_kb = max(p.peak_rss_kb, p.rss())

    def reset_peaks(self) -> None:
        for p in self.processes:
            p.peak_rss_kb = 0

    def peaks(self) -> dict[str, int]:
        return {p.name: p.peak_rss_kb for p in self.processes}


async def idle(watch: Watch, seconds: float) -> dict[str, float]:
    """What each process burns with nothing to do (cores), before any load."""
    before = watch.cpu()
    await asyncio.sleep(seconds)
    after = watch.cpu()
    return {name: (after[name] - before[name]) / seconds for name in after if name in before}
