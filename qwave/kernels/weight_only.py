"""Float-activation formats (fp32, and the weight-only option ``activations="float"`` of int2..int8 and ternary;
fp16 / bf16 on GPU): a cached float32 copy of the weights.

Their recipe is ``x @ dequantize(w).T``. The kernel dequantizes once in
``prepare`` and multiplies with PyTorch's float32 GEMM; it never unpacks per call. The copy costs 4 bytes per
weight in memory (``cached_bytes``; 0 for fp32, whose stored tensor is used as is), while the artifact on disk
stays packed.
"""

from __future__ import annotations

import torch

from qwave.kernels import HARDTANH, RELU, Kernel, register_kernel
from qwave.kernels.work import torch_threads

FORMATS = ("fp32", "int8", "int7", "int6", "int5", "int4", "int3", "int2", "ternary")
HALF = ("fp16", "bf16")  # on CPU ``half`` converts them inside its kernel; on GPU they use this copy too


def prepare(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """``(float32 weight [out, in], bytes it adds in memory)``; fp32 reuses its stored tensor."""
    if fmt.name == "fp32":
        return packed["weight"].float(), 0
    weight = fmt.dequantize(fmt.unpack(packed, shape)).float().contiguous()
    return weight, int(weight.nbytes)


def run_np(state: tuple[torch.Tensor, int], x, bias, act: int):
    """Fused-path entry: ``x @ W.T``, then the bias and the activation in place (the per-layer path's arithmetic and
    the same torch functions as its modules, no copies); torch's threads chosen by the call's work."""
    with torch_threads(x.shape[0] * state[0].numel()):
        y = torch.from_numpy(x) @ state[0].T
        if bias.shape[0]:
            y += torch.from_numpy(bias)
        if act == RELU:
            y.relu_()
        elif act == HARDTANH:
            torch.nn.functional.hardtanh_(y)
    return y.numpy()


def run(state: tuple[torch.Tensor, int], x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` with torch's threads chosen by the call's work on CPU (a GPU call is not affected)."""
    if x.device.type != "cpu":
        return x @ state[0].T
    with torch_threads(x.shape[0] * state[0].numel()):
        return x @ state[0].T


def build(device: str) -> Kernel:
    """The cached-copy kernel for one device type (the same recipe on CPU and GPU)."""
    return Kernel(
        name="dequant-cached-fp32" if device == "cpu" else f"dequant-cached-fp32-{device}",
        formats=FORMATS if device == "cpu" else FORMATS + HALF,
        device=device,
        prepare=prepare,
        run=run,
        cached_bytes=lambda state: state[1],
        supports=lambda fmt: fmt.activations == "float",
        run_np=run_np if device == "cpu" else None,
    )


KERNEL = register_kernel(build("cpu"))
