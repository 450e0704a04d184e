"""Threads chosen by work: torch's intra-op threads inside qwave's own calls (``qwave.kernels.work.torch_threads``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qwave import kernels
from qwave.kernels.work import SERIAL_WORK, torch_threads
from qwave.nn.fused import compile_model
from qwave.nn.mlp import MLPClassifier
from qwave.nn.surgery import pack_model, quantize_model


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_torch_threads_serialise_small_work_and_restore_the_setting(two_threads):
    with torch_threads(SERIAL_WORK - 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads(SERIAL_WORK):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


class _Spy(nn.Module):
    """A normaliser that records torch's thread count when it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return x


@pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")
def test_fused_path_runs_a_small_normalisation_on_the_calling_thread(two_threads):
    torch.manual_seed(0)
    model = pack_model(quantize_model(MLPClassifier(16, 3, hidden=(8,), dropout=0.0).eval(), "fp16"))
    model.norm = _Spy()
    fused = compile_model(model)
    with torch.inference_mode():
        fused(torch.randn(32768 // 16, 16))  # torch's grain: element-wise work it would split
        fused(torch.randn(SERIAL_WORK // 16, 16))
    assert model.norm.seen == [1, 2]
    assert torch.get_num_threads() == 2
