"""How many CPU threads a model's worker should compute with right now: its cores when the machine is idle, fewer
when other work holds some of them.

Why: torch's kernels (aten, oneDNN, MKL) run on OpenMP, which splits each operation statically across its threads
and makes every thread wait for the slowest at the end of each of the hundreds of parallel regions in a decode step.
When another process holds a core, one of our threads is descheduled for a whole time slice at each of those
barriers while the others spin, waiting: on 2 cores with one busy process beside it, a 48-token request went from
0.36 s to 14 s. OpenMP's passive waiting avoids the spinning but costs ~30% on an idle machine (a futex wake-up per
region) and still waits at every barrier. Computing with no more threads than there are free cores avoids both.

How: every `interval` seconds the worker compares the CPU time the whole machine used (/proc/stat) with the CPU time
of its own compute threads (the worker and the OpenMP threads it started, which inherit its thread name): the rest
is other work, this process's HTTP and UI threads included. Linux only; elsewhere the count stays fixed.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

PR_SET_NAME = 15
PROC_STAT = "/proc/stat"
# A core counts as free while other work leaves at least FREE_CORE of it (one of our threads on a core that other work
# uses half the time spends half of every barrier descheduled); a core given up is taken back only once other work
# leaves RECLAIM of it, so that a load near the line does not flip the count every quarter second.
FREE_CORE = 0.65
RECLAIM = 0.8
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass
class CpuSample:
    """CPU seconds since boot: the whole machine's busy time and this worker's compute threads' time."""

    at: float  # monotonic seconds
    machine_busy: float
    ours: float


def name_this_thread(name: str) -> bool:
    """Give the calling OS thread a name (15 bytes at most) that threads it starts inherit; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def read_machine_busy(path: str = PROC_STAT) -> float:
    """Seconds all CPUs spent on anything but idling since boot (steal counts: a hypervisor's other guests).

    Work at a lower priority (nice > 0) counts too: measured, a niced test suite beside an idle-looking Hearth
    still cut its 8-client throughput four-fold at two threads, each time slice it gets stalling a barrier."""
    with open(path) as f:
        values = [int(v) for v in f.readline().split()[1 : 1 + len(STAT_FIELDS)]]
    fields = dict(zip(STAT_FIELDS, values))
    return (sum(values) - fields.get("idle", 0) - fields.get("iowait", 0)) / os.sysconf("SC_CLK_TCK")


def named_threads(name: str, task_dir: str = "/proc/self/task") -> list[str]:
    """Ids of this process's threads whose OS name is `name`."""
    tids = []
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                if f.read().rstrip("\n") == name:
                    tids.append(tid)
        except OSError:  # the thread ended meanwhile
            continue
    return tids


def threads_time(tids: list[str], task_dir: str = "/proc/self/task") -> tuple[float, bool]:
    """CPU seconds used by the threads `tids`, and whether every one of them was still there."""
    total, found = 0, True
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            found = False
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15 of the whole line)
    return total / os.sysconf("SC_CLK_TCK"), found


def read_threads_time(name: str, task_dir: str = "/proc/self/task") -> float:
    """CPU seconds used by this process's threads whose OS name is `name`."""
    return threads_time(named_threads(name, task_dir), task_dir)[0]


def threads_for(free_cores: float, max_threads: int, free_core: float = FREE_CORE) -> int:
    """Compute threads to use when other work leaves `free_cores` cores (a core is free from `free_core` of it)."""
    return max(1, min(max_threads, int(free_cores + (1 - free_core))))


def next_thread_count(current: int, free_cores: float, max_threads: int) -> int:
    """`current` lowered at once when cores are taken, raised only when they are clearly free again."""
    lower = threads_for(free_cores, max_threads)
    if lower < current:
        return lower
    return max(current, threads_for(free_cores, max_threads, RECLAIM))


class ThreadGovernor:
    """Sets torch's thread count on the worker thread from the cores other work leaves free; call tune() often."""

    def __init__(
        self,
        max_threads: int,
        *,
        interval: float = 0.25,
        cores: int | None = None,
        sample: Callable[[], CpuSample] | None = None,
        apply: Callable[[int], None] | None = None,
    ):
        self.max_threads = max(1, max_threads)
        self.interval = interval
        self.cores = cores or os.cpu_count() or 1
        self.threads = self.max_threads
        self.other_load = 0.0  # cores used by other work over the last interval
        self._name = ""
        self._tid = 0  # the OS thread computing; a new worker thread (a new scheduler) starts afresh
        self._sample = sample or self._read_sample
        self._apply = apply or _set_torch_threads
        self._last: CpuSample | None = None
        # Our compute threads' ids, found by name; looked for again only while fewer than the OpenMP team (its
        # threads start at the first parallel region after a raise) or when one has gone. Reading every thread's
        # name each time cost ~0.85 ms with the 60 threads a UI and API server has.
        self._tids: list[str] = []

    @classmethod
    def for_this_machine(cls, max_threads: int) -> "ThreadGovernor | None":
        """A governor on Linux with more than one thread to spare, else None (nothing to adapt)."""
        if max_threads <= 1 or not os.path.exists(PROC_STAT) or not os.path.isdir("/proc/self/task"):
            return None
        return cls(max_threads)

    def start(self) -> None:
        """Name the calling (worker) thread so that the OpenMP threads it starts share its name; first sample."""
        self._tid = threading.get_native_id()
        self._name = f"hearth-w{self._tid}"[:15]
        self._tids = []
        if not name_this_thread(self._name):
            log.debug("could not name the worker thread; CPU sharing not adapted")
            self._sample = lambda: None  # type: ignore[assignment]
        self._apply(self.threads)  # this thread's OpenMP count may not be the one in force
        self._last = self._sample()

    def tune(self) -> int:
        """Re-read the machine's load if `interval` has passed; returns the thread count in force."""
        if threading.get_native_id() != self._tid:
            self.start()
            return self.threads
        last = self._last
        if last is None or time.monotonic() - last.at < self.interval:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        self._last = now
        elapsed = now.at - last.at
        self.other_load = max(0.0, (now.machine_busy - last.machine_busy) - (now.ours - last.ours)) / elapsed
        wanted = next_thread_count(self.threads, self.cores - self.other_load, self.max_threads)
        if wanted != self.threads:
            log.debug("other work uses %.2f of %d cores: computing with %d threads", self.other_load, self.cores,
                      wanted)  # fmt: skip
            self.threads = wanted
            self._apply(wanted)
        return self.threads

    def _read_sample(self) -> CpuSample | None:
        try:
            if len(self._tids) < self.threads:
                self._tids = named_threads(self._name)
            ours, found = threads_time(self._tids)
            if not found:
                self._tids = []
            return CpuSample(time.monotonic(), read_machine_busy(), ours)
        except (OSError, ValueError, IndexError):
            return None


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)
