"""A CPU run takes the cores other work leaves free, says why, and gives the host its own
thread count back afterwards."""
from __future__ import annotations

import torch

from dreambooth_core.train.threads import THREADS_ENV, ThreadChoice, choose_threads, cpu_threads


def test_an_idle_machine_gets_every_core():
    choice = choose_threads({}, cores=8, busy=0.3)
    assert choice.count == 8 and "idle" in choice.describe()


def test_busy_cores_are_left_to_the_work_that_keeps_them_busy():
    assert choose_threads({}, cores=2, busy=2.0).count == 1          # two busy loops on two cores: one thread
    assert choose_threads({}, cores=2, busy=5.0).count == 1          # never zero
    busy = choose_threads({}, cores=16, busy=3.6)
    assert busy.count == 12 and "3.6 cores busy" in busy.reason and THREADS_ENV in busy.reason


def test_a_pinned_count_wins_over_the_measurement():
    assert choose_threads({THREADS_ENV: "3"}, cores=2, busy=2.0) == ThreadChoice(3, 2, f"set by {THREADS_ENV}")
    assert choose_threads({"OMP_NUM_THREADS": "2"}, cores=8, busy=0.0).reason == "set by OMP_NUM_THREADS"
    assert choose_threads({THREADS_ENV: "zero"}, cores=4, busy=0.0).count == 4      # not a count: measured


def test_the_measurement_is_real():
    choice = choose_threads({}, cores=None)
    assert 1 <= choice.count <= choice.cores


def test_the_hosts_thread_count_is_restored():
    before = torch.get_num_threads()
    with cpu_threads(ThreadChoice(before + 1, before + 1, "test")):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
