"""Threads chosen by work: torch's intra-op threads inside qwave's own calls (``qwave.kernels.work.torch_threads``)."""

from __future__ import annotations

import ast
from pathlib import Path

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


PARFOR_CALLS = {"zeros", "ones", "full", "arange", "linspace", "zeros_like", "ones_like", "full_like"}


def _parallel_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    def parallel(decorator: ast.expr) -> bool:
        return isinstance(decorator, ast.Call) and any(
            k.arg == "parallel" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in decorator.keywords)

    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and any(parallel(d) for d in node.decorator_list)]


def test_no_parallel_kernel_creates_an_array_numba_turns_into_a_parallel_region():
    """``np.zeros`` (``ones``, ``arange``, ...) inside ``njit(parallel=True)`` is a parallel loop of its own: a region
    entered on every call, the serial (batch-1) path's included, that wakes the thread pool and waits at its barrier
    (fp16 at batch 1 on 2 threads: p90 24 ms on a loaded machine). Each driver may hold only its ``prange``."""
    found = []
    for path in sorted((Path(kernels.__file__).parent).glob("*.py")):
        functions = _parallel_functions(ast.parse(path.read_text()))
        found += [f.name for f in functions]
        for function in functions:
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in \
                        PARFOR_CALLS and isinstance(node.func.value, ast.Name) and node.func.value.id == "np":
                    raise AssertionError(f"{path.name}: {function.name} calls np.{node.func.attr} (line {node.lineno})")
    assert len(found) >= 6, found  # the W·A8, half, binary, qesc drivers and the two activation packers
