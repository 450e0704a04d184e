"""Threads chosen by load: the running-thread count read from /proc/loadavg's text, the cores left to a call, and a
crowded machine running a call on the calling thread alone with the same logits."""

from __future__ import annotations

import pytest
import torch

from qwave import kernels
from qwave.kernels import work

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")


@pytest.mark.parametrize(
    ("text", "own", "others"),
    [("0.50 0.40 0.30 1/300 42\n", 0, 0), ("9.00 8.00 7.00 12/300 42\n", 2, 9), ("1.0 1.0 1.0 3/90 7\n", 1, 1),
     ("1.0 1.0 1.0 2/90 7\n", 3, 0)],
)
def test_others_running_is_the_running_count_less_the_caller_and_its_own_workers(text, own, others):
    assert work.others_running(text, own) == others


@pytest.mark.parametrize(("running", "cpus", "spare"), [(1, 2, 1), (2, 2, 0), (5, 2, 0), (3, 8, 5), (1, 1, 0)])
def test_spare_cores_leave_the_callers_core_and_one_per_other_running_thread(running, cpus, spare):
    assert work.spare_cores(f"1.0 1.0 1.0 {running}/100 5", cpus, 0) == spare


def _with_loadavg(monkeypatch, tmp_path, running: int) -> None:
    path = tmp_path / "loadavg"
    path.write_text(f"3.00 2.00 1.00 {running}/400 12345\n")
    monkeypatch.setattr(work, "LOADAVG", str(path))
    monkeypatch.setattr(work, "_usable_cpus", lambda: 2)


@pytest.fixture
def two_threads():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread")
    before, torch_before = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(2)
    torch.set_num_threads(1)
    yield numba
    numba.set_num_threads(before)
    torch.set_num_threads(torch_before)


def test_a_crowded_machine_runs_a_large_call_on_the_calling_thread_and_restores_the_threads(
        monkeypatch, tmp_path, two_threads):
    _with_loadavg(monkeypatch, tmp_path, running=4)  # the caller, its worker, two other threads
    with work.threads_by_load(work.SERIAL_WORK):
        assert two_threads.get_num_threads() == 1
    assert two_threads.get_num_threads() == 2


def test_a_spare_core_or_a_small_call_keeps_the_threads(monkeypatch, tmp_path, two_threads):
    _with_loadavg(monkeypatch, tmp_path, running=2)  # the caller and its own spinning worker only
    with work.threads_by_load(work.SERIAL_WORK):
        assert two_threads.get_num_threads() == 2
    _with_loadavg(monkeypatch, tmp_path, running=9)
    with work.threads_by_load(work.SERIAL_WORK - 1):
        assert two_threads.get_num_threads() == 2


def test_an_unreadable_loadavg_changes_nothing(monkeypatch, tmp_path, two_threads):
    monkeypatch.setattr(work, "LOADAVG", str(tmp_path / "missing"))
    with work.threads_by_load(work.SERIAL_WORK):
        assert two_threads.get_num_threads() == 2
