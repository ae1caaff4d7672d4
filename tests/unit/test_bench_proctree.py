"""CPU of a process tree (`bench/proctree.py`): a process and all its descendants.

On a made-up `/proc` (odd command names, an unrelated process, entries that are not pids), and
once on the real one. Nothing is started and nothing is timed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import proctree


def write_stat(proc: Path, pid: int, ppid: int, comm: str, cpu: tuple[int, int, int, int]) -> None:
    """A `/proc/PID/stat` line: pid (comm) state ppid ..., utime stime cutime cstime at 14-17."""
    utime, stime, cutime, cstime = cpu
    fields = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), str(cutime), str(cstime)]
    fields += ["20", "0", "1"]
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    write_stat(proc, 1, 0, "init", (5, 5, 1000, 1000))
    write_stat(proc, 100, 1, "litellm", (10, 20, 3, 4))  # the supervisor
    write_stat(proc, 101, 100, "python (worker) 1", (300, 40, 0, 0))  # spaces, parentheses
    write_stat(proc, 102, 100, "python", (200, 30, 0, 0))
    write_stat(proc, 103, 101, "grandchild", (7, 1, 0, 0))
    write_stat(proc, 200, 1, "unrelated", (999, 999, 0, 0))
    (proc / "self").mkdir()  # not a pid
    (proc / "meminfo").write_text("MemTotal: 1 kB\n")
    return proc


def test_the_tree_is_the_process_and_all_its_descendants(fake_proc: Path) -> None:
    assert proctree.tree(100, fake_proc) == [100, 101, 102, 103]
    assert proctree.tree(102, fake_proc) == [102]
    assert proctree.tree(4242, fake_proc) == []


def test_tree_cpu_sums_every_member_with_its_waited_for_children(fake_proc: Path) -> None:
    ticks = (10 + 20 + 3 + 4) + (300 + 40) + (200 + 30) + (7 + 1)
    expected = ticks / os.sysconf("SC_CLK_TCK")
    assert proctree.tree_cpu_seconds(100, fake_proc) == pytest.approx(expected)
    assert proctree.tree_cpu_seconds(4242, fake_proc) == 0.0


def test_the_real_proc_lists_this_process_first_in_its_own_tree() -> None:
    own = proctree.tree(os.getpid())
    assert own[0] == os.getpid()
    assert proctree.tree_cpu_seconds(os.getpid()) > 0
