"""The models ``qwave speed`` times and what it reports beside the timings (the timing rules: ``eval.timing``):
the seeded reference MLP and its packed copies as each format deploys them, a packed model's FP32 twin (the
baseline the benchmark's speed column is set against), stored and resident bytes, and ``layer_audit``: per packed
layer, which kernel actually ran (``PackedLinear.last_kernel``), its bytes and its share of the model's time,
flagging any layer that fell back to the PyTorch reference recipe.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qwave import kernels

REFERENCE_DIMS = (1536, (640, 320), 50)  # in_dim, hidden, classes of the reference MLP


def reference_mlp(seed: int = 0, activation: str = "relu") -> nn.Module:
    """The reference MLP 1536 -> 640 -> 320 -> 50 with seeded random weights (the same for every ``activation``),
    in eval mode."""
    from qwave.nn.mlp import build_mlp

    torch.manual_seed(seed)
    in_dim, hidden, classes = REFERENCE_DIMS
    return build_mlp(in_dim, classes, hidden=hidden, dropout=0.0, activation=activation).eval()


def deployed_reference(seed: int, fmt: str) -> nn.Module:
    """The packed reference MLP as format ``fmt`` deploys it: with the hidden activation that format trains with
    (``activation_for``: hardtanh before a binarising or ternarising layer, else ReLU)."""
    from qwave.nn.mlp import activation_for

    return packed_reference(reference_mlp(seed, activation_for([fmt])), fmt)


def hidden_activation(model: nn.Module) -> str:
    """``relu``, ``hardtanh``, ``mixed`` or ``none``: the hidden activation modules of ``model``."""
    found = {name for m in model.modules() for name, kind in (("relu", nn.ReLU), ("hardtanh", nn.Hardtanh))
             if isinstance(m, kind)}
    return found.pop() if len(found) == 1 else ("mixed" if found else "none")


def packed_reference(model: nn.Module, fmt: str) -> nn.Module:
    """A packed copy of a float model in format ``fmt`` (every Linear layer), ready for inference."""
    from qwave.nn.surgery import pack_model, quantize_model

    return pack_model(quantize_model(copy.deepcopy(model), fmt))


def float_twin(model: nn.Module) -> nn.Module:
    """An FP32 eager copy of ``model`` in eval mode: every ``PackedLinear`` replaced by an ``nn.Linear`` holding its
    dequantized weights (the float network the packed one stands for), the baseline a model's speed is set against
    (``qwave bench`` times the two interleaved). A model without packed layers is copied as it is."""
    from qwave.nn.packed_linear import PackedLinear

    twin = copy.deepcopy(model).eval()
    for path, layer in [(p, m) for p, m in twin.named_modules() if isinstance(m, PackedLinear)]:
        weight = layer.fmt.dequantize(layer.fmt.unpack(layer.packed, layer.shape)).float()
        linear = nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.reshape(layer.out_features, layer.in_features))
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        parent, _, name = path.rpartition(".")
        if not name:
            return linear.eval()
        setattr(twin.get_submodule(parent), name, linear)
    return twin


def memory_row(model: nn.Module) -> dict:
    """Stored bytes (what the model saves) and resident bytes (what it holds now: call it after a forward), their
    ratio and the over-1.1x flag (``qwave.size.resident_fields``)."""
    from qwave.size import report, resident_bytes, resident_fields

    stored = report(model).stored_bytes
    return {"stored_bytes": stored, **resident_fields(resident_bytes(model), stored)}


@dataclass(frozen=True)
class LayerAudit:
    """What one packed layer stores and which implementation ran its last forward."""

    path: str
    format: str
    kernel: str
    stored_bytes: int
    cached_bytes: int
    time_share: float  # fraction of the summed layer times
    fallback: bool  # ran the PyTorch reference recipe instead of a fast kernel

    def as_dict(self) -> dict:
        return asdict(self)


def layer_audit(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> list[LayerAudit]:
    """Run ``model(x)`` ``repeats`` times with timing hooks on every ``PackedLinear`` and report each layer."""
    from qwave.nn.packed_linear import PackedLinear

    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, PackedLinear)]
    spent = {path: 0.0 for path, _ in layers}
    starts: dict[str, float] = {}
    handles = []
    for path, module in layers:
        start = lambda m, a, p=path: starts.__setitem__(p, time.perf_counter())  # noqa: E731
        handles.append(module.register_forward_pre_hook(start))
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, p=path: spent.__setitem__(p, spent[p] + time.perf_counter() - starts[p])
            )
        )
    try:
        with torch.inference_mode():
            for _ in range(max(1, repeats)):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    total = sum(spent.values()) or 1.0
    return [
        LayerAudit(
            path=path,
            format=module.fmt.name,
            kernel=str(module.last_kernel),
            stored_bytes=module.stored_bytes,
            cached_bytes=module.kernel_cached_bytes,
            time_share=spent[path] / total,
            fallback=module.last_kernel == kernels.FALLBACK,
        )
        for path, module in layers
    ]
