"""CPU sharing: the worker computes with no more threads than the cores other work leaves free.

The last test is the regression guard for the busy-machine collapse: a short greedy generation beside one
CPU-bound process may take a few times as long as on an idle machine, not 20-40 times."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from modules.loaders.cpu_share import (
    CpuSample,
    ThreadGovernor,
    next_thread_count,
    read_machine_busy,
    read_threads_time,
    threads_for,
)

BUSY = [sys.executable, "-c", "while True: pass"]


def test_threads_for_counts_cores_other_work_leaves_mostly_free():
    assert [threads_for(free, 2) for free in (2.0, 1.7, 1.5, 1.0, 0.3, 0.0)] == [2, 2, 1, 1, 1, 1]
    assert [threads_for(free, 16) for free in (16.0, 15.0, 12.6, 30.0)] == [16, 15, 12, 16]


def test_a_core_given_up_comes_back_only_when_clearly_free():
    assert next_thread_count(2, 1.6, 2) == 1  # other work takes 0.4 of a core: give it up at once
    assert next_thread_count(1, 1.7, 2) == 1  # 0.3 left to other work: not yet
    assert next_thread_count(1, 1.85, 2) == 2
    assert next_thread_count(2, 1.7, 2) == 2


class ScriptedLoad:
    """CPU samples in which other work uses `other` cores and our threads `ours` cores, 0.5 s apart."""

    def __init__(self):
        self.at = self.busy = self.own = 0.0
        self.other, self.ours = 0.0, 2.0

    def __call__(self) -> CpuSample:
        self.at += 0.5
        self.busy += 0.5 * (self.other + self.ours)
        self.own += 0.5 * self.ours
        return CpuSample(self.at, self.busy, self.own)


def test_governor_follows_other_work_and_comes_back(monkeypatch):
    load, applied = ScriptedLoad(), []
    governor = ThreadGovernor(2, interval=0.0, cores=2, sample=load, apply=applied.append)
    monkeypatch.setattr("modules.loaders.cpu_share.name_this_thread", lambda name: True)
    governor.start()
    assert governor.tune() == 2 and governor.other_load == 0
    load.other, load.ours = 1.0, 1.3  # a busy process beside us
    assert governor.tune() == 1 and governor.other_load == pytest.approx(1.0)
    load.ours = 1.0
    assert governor.tune() == 1  # our own work never counts as competition
    load.other = 0.1
    assert governor.tune() == 2
    assert applied == [2, 1, 2]  # start() applies the count in force, then each change once


def test_governor_restarts_on_a_new_worker_thread(monkeypatch):
    load, applied = ScriptedLoad(), []
    governor = ThreadGovernor(2, interval=0.0, cores=2, sample=load, apply=applied.append)
    monkeypatch.setattr("modules.loaders.cpu_share.name_this_thread", lambda name: True)
    governor.start()
    names = []
    thread = threading.Thread(target=lambda: (governor.tune(), names.append(governor._name)))
    thread.start()
    thread.join()
    assert names and names[0] != f"hearth-w{threading.get_native_id()}"[:15]


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc only")
def test_machine_busy_time_counts_all_but_idle_and_grows(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  100 50 30 1000 20 1 2 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert read_machine_busy(str(stat)) == pytest.approx(190 / os.sysconf("SC_CLK_TCK"))
    before = read_machine_busy()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert read_machine_busy() - before >= 0.15


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc only")
def test_openmp_threads_inherit_the_worker_name_and_their_time_is_counted():
    import torch

    governor = ThreadGovernor(2, sample=lambda: None, apply=torch.set_num_threads)
    seen = {}

    def work():
        governor.start()
        x = torch.randn(1024, 1024)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            x @ x
        names = [open(f"/proc/self/task/{tid}/comm").read().strip() for tid in os.listdir("/proc/self/task")]
        seen["named"] = names.count(governor._name)
        seen["time"] = read_threads_time(governor._name)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["named"] >= 2  # the worker and the OpenMP thread it started
    assert seen["time"] >= 0.3


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to share")
def test_greedy_generation_beside_a_busy_process_does_not_collapse(tmp_path, scheduler):
    """A decode-bound greedy request, idle and beside one CPU-bound process: at most 4x slower (was 20-40x)."""
    from conftest import build_llama
    from modules.generation import GenerationRequest, SamplingParams
    from modules.loaders.transformers_loader import TransformersLoader

    path = build_llama(tmp_path / "mid-llama", hidden=256, layers=4)  # big enough that torch runs OpenMP regions
    loader = TransformersLoader.load(path, "mid-llama", {"max_batch_size": 4, "threads": 2})
    scheduler.set_loader(loader)
    request = GenerationRequest(tuple(loader.encode("The quick brown fox")), sampling=SamplingParams(temperature=0),
                                max_tokens=48, ban_eos=True)  # fmt: skip

    def timed() -> float:
        start = time.perf_counter()
        scheduler.submit(request).result()
        return time.perf_counter() - start

    timed()  # warm-up
    idle = min(timed() for _ in range(3))
    busy = subprocess.Popen(BUSY)
    try:
        time.sleep(0.3)
        timed()  # the governor sees the competition within a quarter of a second
        contended = min(timed() for _ in range(3))
    finally:
        busy.kill()
        busy.wait()
    assert contended < 4 * idle, f"{contended:.3f} s beside a busy process against {idle:.3f} s idle"
