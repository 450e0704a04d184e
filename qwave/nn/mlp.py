"""The MLP classifier over a frozen embedding: normalisation stored in the model, then Linear/ReLU blocks.

``build_mlp`` is the one place an MLP is made (benchmark, ``qwave train``, studies, MoE probes, size calculator,
speed reference); the ``mlp`` model family is registered here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qwave.data.normalize import Normalize
from qwave.errors import ConfigError
from qwave.nn.family import register_family
from qwave.nn.surgery import pack_model, quant_options, quantize_model

ACTIVATIONS = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh}


def activation_for(formats: Sequence[str]) -> str:
    """``hardtanh`` when a layer after the first binarises or ternarises its input (one format = every layer).

    The sign of a ReLU output is constant, so such a layer would see no information; a signed activation keeps it.
    """
    from qwave.formats import get_format

    consumers = list(formats)[1:] if len(formats) > 1 else list(formats)
    signed = any(get_format(f).activations in ("binary", "ternary") for f in consumers)
    return "hardtanh" if signed else "relu"


class MLPClassifier(nn.Module):
    """``Normalize -> [Linear -> (LayerNorm) -> act -> Dropout] x len(hidden) -> Linear`` producing logits.

    The normaliser is part of the module so a saved artifact carries its train-split statistics. ``activation``
    is ``relu`` or ``hardtanh``: a layer that binarises or ternarises its input needs a signed one (the sign of a
    ReLU output is constant), as in binary networks.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: Sequence[int] = (640, 320),
        dropout: float = 0.1,
        layer_norm: bool = False,
        normalize: Normalize | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        self.hidden, self.dropout, self.layer_norm = tuple(int(h) for h in hidden), float(dropout), bool(layer_norm)
        self.norm = normalize if normalize is not None else Normalize.placeholder(in_dim)
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in self.hidden:
            layers.append(nn.Linear(width, h))
            if self.layer_norm:
                layers.append(nn.LayerNorm(h))
            layers += [ACTIVATIONS[activation](), nn.Dropout(self.dropout)]
            width = h
        layers.append(nn.Linear(width, self.num_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))

    def config(self) -> dict:
        """Constructor arguments (without the fitted normaliser, whose buffers are saved as tensors)."""
        return {
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "hidden": list(self.hidden),
            "dropout": self.dropout,
            "layer_norm": self.layer_norm,
            "normalize_mode": self.norm.mode,
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config: dict) -> MLPClassifier:
        """Rebuild an untrained module of the same shape (tensors are loaded afterwards)."""
        args = {k: v for k, v in config.items() if k != "normalize_mode"}
        norm = Normalize.placeholder(int(config["in_dim"]), config.get("normalize_mode", "raw"))
        return cls(**args, normalize=norm)


def build_mlp(
    in_dim: int,
    num_classes: int,
    hidden: Sequence[int] = (640, 320),
    dropout: float = 0.1,
    layer_norm: bool = False,
    normalize: Normalize | None = None,
    activation: str = "auto",
    formats: Sequence[str] | None = None,
) -> MLPClassifier:
    """A fresh FP32 MLP; ``activation="auto"`` picks the one ``formats`` (one per linear layer, or one for all;
    default fp32) needs (``activation_for``)."""
    if activation == "auto":
        activation = activation_for(list(formats or ["fp32"]))
    return MLPClassifier(in_dim, num_classes, hidden, dropout, layer_norm, normalize, activation)


def size_model(spec, fmt: str) -> nn.Module:
    """Size-calculator row: the packed MLP of ``spec`` (``qwave.size.SizeSpec``, random weights) in ``fmt``."""
    model = build_mlp(spec.in_dim, spec.num_classes, spec.hidden, activation="relu")
    layer_formats = spec.layer_formats if fmt == "mixed" else None
    options = quant_options(keep_last_fp=spec.keep_last_fp, group_size=spec.group_size, layer_formats=layer_formats)
    return pack_model(quantize_model(model, "fp32" if fmt == "mixed" else fmt, **options))


register_family("mlp", MLPClassifier, size_model=size_model)
