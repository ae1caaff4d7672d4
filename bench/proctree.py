"""CPU of a process tree, read from `/proc`: a process and all its descendants.

For servers that fork workers (the LiteLLM proxy: a uvicorn supervisor, its worker processes
and multiprocessing's resource tracker), the CPU of the root alone misses the work. A process
without children is its own tree, so the same reading serves Envoy, the processor and the fake.

Each process counts utime + stime (all its threads) plus cutime + cstime (its children that
exited and were waited for): a worker that exits during a measured slice moves its CPU from
its own line to its parent's, and the tree's sum stays whole.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """The fields of `/proc/PID/stat` after the command name (state first); None if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    return stat.rpartition(")")[2].split()


def children(proc: Path = PROC) -> dict[int, list[int]]:
    """Parent pid -> its children's pids, for every process listed in `proc`."""
    found: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name), proc)
        if fields is not None:
            found.setdefault(int(fields[1]), []).append(int(entry.name))
    return found


def tree(pid: int, proc: Path = PROC) -> list[int]:
    """`pid` and all its descendants (breadth first); empty when `pid` is gone."""
    if _stat_fields(pid, proc) is None:
        return []
    by_parent = children(proc)
    found = [pid]
    for parent in found:  # grows while it is walked
        found.extend(child for child in sorted(by_parent.get(parent, [])) if child not in found)
    return found


def tree_cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """utime + stime + cutime + cstime over `pid` and its descendants, in seconds."""
    ticks = 0
    for member in tree(pid, proc):
        fields = _stat_fields(member, proc)
        if fields is not None:  # it may have exited since the tree was listed
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")
