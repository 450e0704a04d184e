"""A fused whole-model path for packed MLPs on CPU: one NumPy pipeline instead of one module call per layer.

At batch 1 the per-layer path spends most of its time in Python (module calls, torch <-> NumPy hops, a separate
bias add and activation). ``compile_model(model)`` walks a packed ``MLPClassifier`` (``norm`` then ``body``) or a
plain ``nn.Sequential`` of ``PackedLinear`` / ``ReLU`` / ``Hardtanh`` / ``Dropout`` / ``Identity`` modules and
returns a ``FusedMLP`` whose ``__call__`` gives the same logits bit for bit: each layer's kernel applies its bias
and the activation after it inside its epilogue (``Kernel.run_np``'s ``act``: ReLU, or hardtanh as a clamp to
[-1, 1]); layers whose kernel has no NumPy entry point run their per-layer recipe in between. It returns ``None``
when a module it cannot fuse is present (e.g. LayerNorm, a Hardtanh with other bounds) or fast kernels are off;
the per-layer path stays the default and is always correct.

The hardtanh is applied, never dropped, even before a layer that binarises or ternarises its input: the sign is
unchanged (``sign(hardtanh(y)) = sign(y)``), but both recipes scale their activations by ``mean|x_row|``, which
the clamp changes, and qesc's trits ``rint(x / mean|x|)`` depend on that scale too.

Each layer's own prepared kernel state is used (``PackedLinear._kernel``), never a second copy. When every layer's
kernel offers the same ``Kernel.chain`` (one family: W·A8 = int8, int5..int7, int4, int3, int2, ternary; popcount =
binary, qesc; half = fp16, bf16), the whole chain runs in one compiled call of any depth, with no Python (and no wait
for the GIL) between the layers (what batch 1 needs).
Usage: ``fused = compile_model(packed_model); logits = fused(x) if fused else packed_model(x)``.
Recompile after loading new weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qwave import kernels
from qwave.data.normalize import Normalize
from qwave.kernels.work import SERIAL_WORK, threads_by_load, torch_threads
from qwave.nn.packed_linear import PackedLinear

_CPU = torch.device("cpu")
FUSED_SUFFIX = "+fused"
# Below this many input elements a per-feature normaliser runs in NumPy (torch's per-call cost dominates there);
# above it torch's vectorised ops are faster (400 x 1280 rows: NumPy 168 us, torch 97 us on 1 thread, 55 on 2).
NUMPY_ELEMENTS = 32768  # appended to a layer's ``last_kernel`` when it ran in the fused path


@dataclass
class FusedLayer:
    """One packed linear layer, its prepared kernel state and the activation that follows it (a ``kernels`` code)."""

    layer: PackedLinear
    kernel: kernels.Kernel
    state: Any
    bias: np.ndarray  # float32 [out] or empty
    act: int = kernels.NO_ACTIVATION

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kernel.run_np is not None:
            return self.kernel.run_np(self.state, x, self.bias, self.act)
        with torch_threads(x.shape[0] * self.layer.in_features * self.layer.out_features):
            y = self.kernel.run(self.state, torch.from_numpy(x))
            if self.bias.shape[0]:
                y = y + torch.from_numpy(self.bias)
            if self.act == kernels.RELU:
                y = torch.relu(y)
            elif self.act == kernels.HARDTANH:
                y = torch.nn.functional.hardtanh(y)
        return y.numpy()


class FusedMLP:
    """``norm`` then a chain of fused layers; records ``last_kernels`` like ``PackedLinear.last_kernel``."""

    def __init__(self, norm: nn.Module | None, layers: list[FusedLayer]) -> None:
        self.norm, self.layers = norm, layers
        # NumPy views of a per-feature normaliser's buffers (in-place updates show through; see ``_normalised``)
        self.affine = ((norm.shift.numpy(), norm.scale.numpy()) if isinstance(norm, Normalize)
                       and norm.mode in ("standard", "min_max") else None)
        self.raw = norm is None or (isinstance(norm, Normalize) and norm.mode == "raw")
        self.kernel_names = [f"{layer.kernel.name}{FUSED_SUFFIX}" for layer in layers]
        self.row_macs = max((layer.layer.in_features * layer.layer.out_features for layer in layers), default=0)
        builders = {layer.kernel.chain for layer in layers}
        build = builders.pop() if len(builders) == 1 else None
        # One compiled call for the whole chain when every layer's kernel shares the same chain entry point.
        self.chain = None if build is None else build([(layer.state, layer.bias, layer.act) for layer in layers])

    def current(self) -> bool:
        """Whether every layer still holds the kernel state this path was built from (``load_state_dict`` or a
        device change makes a layer drop it: rebuild with ``compile_model`` then)."""
        return all(layer.layer._kernel_state is not None and layer.layer._kernel_state[2] is layer.state
                   for layer in self.layers)

    def _normalised(self, rows: torch.Tensor) -> np.ndarray:
        """``norm(rows)`` as a C-contiguous float32 array. The per-feature modes run in NumPy (float32 subtract and
        divide are correctly rounded, so the result is torch's bit for bit) for small inputs, and ``raw`` is the
        rows themselves: at batch 1 a torch call and its inference-mode guard cost a third of the whole forward."""
        if self.raw:
            h = rows.numpy()
            return h if h.flags.c_contiguous else np.ascontiguousarray(h)
        if self.affine is not None and rows.numel() < NUMPY_ELEMENTS:
            shift, scale = self.affine
            return (rows.numpy() - shift) / scale
        if self.affine is not None:  # a whole fold: torch's own threads (2 threads 55 us, 1 thread 97 us, 400 x 1280)
            with torch.inference_mode():
                return np.ascontiguousarray(self.norm(rows).numpy())
        with torch.inference_mode(), torch_threads(rows.numel()):  # element-wise: torch splits a batch of 256
            return np.ascontiguousarray(self.norm(rows).numpy())

    def _layers(self, h: np.ndarray) -> np.ndarray:
        if self.chain is not None:
            return self.chain(h)
        for layer in self.layers:
            h = layer(h)
        return h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.dim() == 2 and x.dtype == torch.float32 and not x.requires_grad
        rows = x if plain else x.detach().reshape(-1, x.shape[-1]).float()
        h = self._normalised(rows)
        work = h.shape[0] * self.row_macs
        if work < SERIAL_WORK:  # the batch-1 case: no context manager (a microsecond) around the kernels
            h = self._layers(h)
        else:
            with threads_by_load(work):
                h = self._layers(h)
        for layer, name in zip(self.layers, self.kernel_names, strict=True):
            if layer.layer.last_kernel != name:  # nn.Module.__setattr__ costs a microsecond a layer
                layer.layer.last_kernel = name
        y = torch.from_numpy(h)
        return y if plain else y.reshape(*x.shape[:-1], h.shape[-1])


def _modules(model: nn.Module) -> tuple[nn.Module | None, list[nn.Module]] | None:
    if isinstance(model, nn.Sequential):
        return None, list(model)
    body, norm = getattr(model, "body", None), getattr(model, "norm", None)
    if isinstance(body, nn.Sequential):
        return norm, list(body)
    return None


def activation_code(module: nn.Module) -> int | None:
    """The epilogue code of an activation module the kernels apply exactly, or ``None``."""
    if isinstance(module, nn.ReLU):
        return kernels.RELU
    if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (-1.0, 1.0):
        return kernels.HARDTANH
    return None


def compile_model(model: nn.Module) -> FusedMLP | None:
    """A ``FusedMLP`` computing ``model(x)`` on CPU, or ``None`` when the model has a module it cannot fuse."""
    found = _modules(model)
    if found is None or model.training:
        return None
    norm, modules = found
    layers: list[FusedLayer] = []
    for module in modules:
        act = activation_code(module)
        if isinstance(module, PackedLinear):
            # held buffers only: ``packed`` would re-derive a released layer's tensors (a second copy)
            on_cpu = all(t.device.type == "cpu" for t in module.buffers())
            prepared = module._kernel(_CPU) if on_cpu else None
            if prepared is None:
                return None
            bias = np.empty(0, np.float32) if module.bias is None else module.bias.detach().float().numpy().copy()
            layers.append(FusedLayer(module, *prepared, bias))
        elif act is not None and layers and layers[-1].act == kernels.NO_ACTIVATION:
            layers[-1].act = act
        elif not isinstance(module, (nn.Dropout, nn.Identity)):
            return None
    return FusedMLP(norm, layers) if layers else None


def deployed(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a deployed model runs (``qwave.load``'s classifier, the benchmark's timing): the fused whole-model path
    when every module fuses, else the module itself. Both give the same logits bit for bit."""
    model.eval()
    fused = compile_model(model)
    return model if fused is None else fused
