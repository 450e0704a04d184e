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
from qwave.formats import QuantPlan
from qwave.nn.family import register_family
from qwave.nn.surgery import pack_model, quantize_model
from qwave.settings import need_bool, need_choice, need_float, need_int, need_keys

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
    def check_config(cls, config: dict, manifest: dict) -> None:
        """Every stored setting in range, and the packed layers the manifest lists exactly the Linear layers the
        setting ``hidden`` makes (so a config cannot ask for more layers or wider ones than the file holds)."""
        need_keys("mlp config", config, ("in_dim", "num_classes", "hidden", "dropout", "layer_norm",
                                         "normalize_mode"), ("activation",), error=ConfigError)
        in_dim = need_int("in_dim", config["in_dim"], 1, error=ConfigError)
        classes = need_int("num_classes", config["num_classes"], 1, error=ConfigError)
        hidden = config["hidden"]
        if not isinstance(hidden, list):
            raise ConfigError(f"hidden must be a list of layer widths, got {hidden!r}")
        hidden = [need_int(f"hidden[{i}]", h, 1, error=ConfigError) for i, h in enumerate(hidden)]
        need_float("dropout", config["dropout"], 0.0, 1.0, high_open=True, error=ConfigError)
        need_bool("layer_norm", config["layer_norm"], error=ConfigError)
        need_choice("normalize_mode", config["normalize_mode"], Normalize.MODES, error=ConfigError)
        need_choice("activation", config.get("activation", "relu"), ACTIVATIONS, error=ConfigError)
        packed = sum(path.startswith("body.") for path in manifest["layers"])
        if len(hidden) + 1 != packed:
            raise ConfigError(f"hidden lists {len(hidden):,} hidden layers (+1 output layer) but the manifest packs "
                              f"{packed} linear layers")
        check_linear_chain("body.", [in_dim, *hidden, classes], bool(config["layer_norm"]), manifest["layers"])

    @classmethod
    def from_config(cls, config: dict) -> MLPClassifier:
        """Rebuild an untrained module of the same shape (tensors are loaded afterwards)."""
        args = {k: v for k, v in config.items() if k != "normalize_mode"}
        norm = Normalize.placeholder(int(config["in_dim"]), config.get("normalize_mode", "raw"))
        return cls(**args, normalize=norm)


def body_layers(prefix: str, widths: list[int], layer_norm: bool) -> dict[str, list[int]]:
    """``{module path: [out, in]}`` of the Linear layers of an MLP body with these widths (input first)."""
    stride = 4 if layer_norm else 3  # Linear, (LayerNorm), activation, Dropout per hidden layer
    return {f"{prefix}{stride * i}": [widths[i + 1], widths[i]] for i in range(len(widths) - 1)}


def check_linear_chain(prefix: str, widths: list[int], layer_norm: bool, layers: dict) -> None:
    """The packed layers under ``prefix`` (``body.``, ``experts.0.``) are exactly the Linear layers of the stored
    widths."""
    expected = body_layers(prefix, widths, layer_norm)
    stored = {path: spec.get("shape") for path, spec in layers.items() if path.startswith(prefix)}
    if stored != expected:
        shown = widths if len(widths) <= 8 else [*widths[:6], "...", widths[-1]]
        raise ConfigError(f"the widths {shown} (input, hidden..., classes; {len(widths) - 1:,} layers) make the "
                          f"layers {_few(expected)}, but the manifest packs {_few(stored)}")


def _few(layers: dict) -> str:
    items = [f"{k} {v}" for k, v in list(layers.items())[:4]]
    return "{" + ", ".join(items) + (f", ... {len(layers)} in all" if len(layers) > 4 else "") + "}"


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


def size_model(spec, plan: QuantPlan | str) -> nn.Module:
    """Size-calculator row: the packed MLP of ``spec`` (``qwave.size.SizeSpec``, random weights) quantized by
    ``plan``."""
    model = build_mlp(spec.in_dim, spec.num_classes, spec.hidden, activation="relu")
    return pack_model(quantize_model(model, plan))


register_family("mlp", MLPClassifier, size_model=size_model)
