"""What this machine can give a job: the memory still available and the cores not busy.

Training and pruning ask before they allocate (``footprint.check_memory``) and pick their torch
thread count from what is free (``footprint.default_threads``). No torch here: the command line
imports this module to check options before anything heavy is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


class OptionError(ValueError):
    """A requested size or setting that the model or this machine cannot take; the message names
    the option, the number and the limit (the command line answers it as a usage error)."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), None if unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, limit - usage)
    return None


def available_memory() -> int:
    """Bytes of RAM this process can still take: the kernel's MemAvailable, lowered to what a
    cgroup memory limit leaves (containers)."""
    found = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 2**63  # nothing says: no limit can be checked
    return min(found)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float:
    """Runnable processes over the last minute (0 where the system does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


@dataclass(frozen=True)
class Threads:
    """A torch thread count and why it was picked (printed at the start of the work)."""

    n: int
    reason: str

    def describe(self) -> str:
        plural = "" if self.n == 1 else "s"
        return f"{self.n} torch thread{plural} ({self.reason})"


def pick_threads(small: bool, cores: int | None = None, load: float | None = None) -> Threads:
    """One thread for a small model (its operations are too small to split: a second thread
    only waits, and on a busy machine it waits for a core); else one per core not busy."""
    cores = usable_cores() if cores is None else cores
    load = load_average() if load is None else load
    if small:
        return Threads(1, "a small model: one thread is fastest; --threads N to change")
    free = max(1, min(cores, round(cores - load)))
    return Threads(free, f"{cores} cores, load {load:.1f}; --threads N to change")


def check_threads(n: int | None) -> None:
    """OptionError unless ``n`` is None (pick) or a thread count this machine can use."""
    if n is None:
        return
    cores = usable_cores()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cores:
        raise OptionError(
            f"--threads {n!r} is not a thread count here; use 1 to {cores} (the cores this "
            "process may run on), or leave it out to pick"
        )


def check_fits_memory(needed: int, what: str, fix: str, have: int | None = None) -> None:
    """OptionError when ``needed`` bytes exceed ``have`` (default: the RAM available now)."""
    have = available_memory() if have is None else have
    if needed > have:
        raise OptionError(
            f"{what} needs about {needed / GIB:,.1f} GiB of memory but {have / GIB:,.1f} GiB "
            f"are available; {fix}"
        )
