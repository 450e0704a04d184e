"""Packed GRU/LSTM layers (int8 by default, any registered format) and a small CTC sequence model that uses them.

A recurrent layer's matmuls are ``W_ih x_t`` and ``W_hh h_{t-1}``; ``PackedRecurrent`` holds each weight as a
``PackedLinear`` (its bias alongside), so the same kernels, audit, size accounting and artifact code serve it.
The gate equations are PyTorch's (gate order r, z, n for GRU and i, f, g, o for LSTM):

    GRU:  r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h
    LSTM: i, f, g, o = s(.), s(.), tanh(.), s(.) of W_i* x + b_i* + W_h* h + b_h*; c' = f c + i g, h' = o tanh(c')

With the int8 format each matmul quantizes its input rows dynamically (``x_t`` and ``h_{t-1}``), as int8 linear
layers do. Inter-layer dropout is a training-time operation and is not applied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qwave.data.normalize import Normalize
from qwave.errors import ConfigError, FormatError
from qwave.formats import QuantFormat, get_format
from qwave.nn.family import register_family
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.quant_linear import as_format
from qwave.nn.surgery import set_module
from qwave.settings import need_bool, need_choice, need_int, need_keys

CELLS = {"gru": (nn.GRU, 3), "lstm": (nn.LSTM, 4)}


def _suffixes(rnn: nn.RNNBase) -> list[str]:
    dirs = ("", "_reverse") if rnn.bidirectional else ("",)
    return [f"l{layer}{d}" for layer in range(rnn.num_layers) for d in dirs]


class PackedRecurrent(nn.Module):
    """Inference-only GRU or LSTM from packed weights; same call signature and outputs as ``nn.GRU``/``nn.LSTM``.

    Submodules ``ih_l{k}[_reverse]`` and ``hh_l{k}[_reverse]`` are the ``PackedLinear`` input and hidden projections.
    """

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, batch_first: bool,
        layers: dict[str, PackedLinear],
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"recurrent cell {cell!r} is not one of {', '.join(CELLS)}")
        self.cell, self.input_size, self.hidden_size = cell, int(input_size), int(hidden_size)
        self.num_layers, self.bidirectional, self.batch_first = int(num_layers), bool(bidirectional), bool(batch_first)
        self.layers = nn.ModuleDict(layers)

    @classmethod
    def from_rnn(cls, rnn: nn.RNNBase, fmt: str | int | QuantFormat = "int8") -> PackedRecurrent:
        """Quantize and pack every weight matrix of a trained ``nn.GRU`` or ``nn.LSTM`` (biases stay float32)."""
        cell = next((name for name, (kind, _) in CELLS.items() if type(rnn) is kind), None)
        if cell is None:
            raise FormatError(f"cannot pack {type(rnn).__name__}; only nn.GRU and nn.LSTM are supported")
        if getattr(rnn, "proj_size", 0):
            raise FormatError("cannot pack an LSTM with proj_size > 0")
        fmt = as_format(fmt)
        layers = {}
        for suffix in _suffixes(rnn):
            for kind in ("ih", "hh"):
                weight = getattr(rnn, f"weight_{kind}_{suffix}").detach().float()
                bias = getattr(rnn, f"bias_{kind}_{suffix}", None) if rnn.bias else None
                q = fmt.quantize(weight)
                layers[f"{kind}_{suffix}"] = PackedLinear(fmt, fmt.pack(q), tuple(weight.shape), bias)
        return cls(cell, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bidirectional, rnn.batch_first, layers)

    @classmethod
    def skeleton(
        cls, cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, batch_first: bool
    ) -> PackedRecurrent:
        """Same shapes with zero fp32 placeholder layers; ``qwave.artifact.load`` puts the stored packed layers in."""
        gates = CELLS[cell][1] * hidden_size
        dirs = 2 if bidirectional else 1
        fp32 = get_format("fp32")
        layers = {}
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * dirs
            for d in ("", "_reverse")[:dirs]:
                for kind, in_dim in (("ih", width), ("hh", hidden_size)):
                    weight = torch.zeros(gates, in_dim)
                    layers[f"{kind}_l{layer}{d}"] = PackedLinear(
                        fp32, fp32.pack(fp32.quantize(weight)), (gates, in_dim), torch.zeros(gates)
                    )
        return cls(cell, input_size, hidden_size, num_layers, bidirectional, batch_first, layers)

    def config(self) -> dict:
        """Shape arguments (the formats live in the packed layers)."""
        return {"cell": self.cell, "input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bidirectional": self.bidirectional, "batch_first": self.batch_first}

    def _direction(self, x: torch.Tensor, suffix: str, state: tuple[torch.Tensor, ...], reverse: bool):
        """Run one direction of one layer over ``x`` [T, B, in]; returns outputs [T, B, H] and the final state."""
        gates_x = self.layers[f"ih_{suffix}"](x)  # all time steps in one matmul
        hh = self.layers[f"hh_{suffix}"]
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        outputs = [None] * x.shape[0]
        h = state[0]
        c = state[1] if self.cell == "lstm" else None
        for t in steps:
            gx, gh = gates_x[t], hh(h)
            if self.cell == "gru":
                xr, xz, xn = gx.chunk(3, dim=-1)
                hr, hz, hn = gh.chunk(3, dim=-1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            else:
                i, f, g, o = (gx + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            outputs[t] = h
        return torch.stack(outputs), (h,) if c is None else (h, c)

    def forward(self, x: torch.Tensor, hx=None):
        if x.shape[-1] != self.input_size:
            raise FormatError(f"{self.cell.upper()} expects {self.input_size} input features; got {x.shape[-1]}")
        x = x.float()
        unbatched = x.ndim == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        dirs = 2 if self.bidirectional else 1
        shape = (self.num_layers * dirs, x.shape[1], self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(shape)
            hx = (zeros, zeros) if self.cell == "lstm" else zeros
        h0 = hx if self.cell == "gru" else hx[0]
        c0 = None if self.cell == "gru" else hx[1]
        if unbatched:
            h0, c0 = h0.unsqueeze(1), None if c0 is None else c0.unsqueeze(1)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                state = (h0[k],) if c0 is None else (h0[k], c0[k])
                out, final = self._direction(x, f"l{layer}{'_reverse' if d else ''}", state, reverse=bool(d))
                outs.append(out)
                finals_h.append(final[0])
                if c0 is not None:
                    finals_c.append(final[1])
            x = torch.cat(outs, dim=-1)
        h_n = torch.stack(finals_h)
        c_n = torch.stack(finals_c) if finals_c else None
        if unbatched:
            x, h_n = x.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n if c_n is None else (h_n, c_n))

    def extra_repr(self) -> str:
        return (f"cell={self.cell}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}")


def pack_recurrent(model: nn.Module, fmt: str | int | QuantFormat = "int8") -> nn.Module:
    """A copy of ``model`` with every ``nn.GRU``/``nn.LSTM`` replaced by a ``PackedRecurrent`` of format ``fmt``."""
    model = copy.deepcopy(model)
    if type(model) in (nn.GRU, nn.LSTM):
        return PackedRecurrent.from_rnn(model, fmt)
    for name, child in list(model.named_modules()):
        if type(child) in (nn.GRU, nn.LSTM):
            set_module(model, name, PackedRecurrent.from_rnn(child, fmt))
    return model


class RecurrentCTC(nn.Module):
    """Per-frame classifier for CTC: rows of ``frames * frame_dim`` features -> ``[n, frames, num_classes]`` logits.

    ``Normalize`` (fitted on training frames) -> GRU/LSTM -> Linear. Class 0 is the CTC blank by convention.
    A row of a flat embedding table is read as ``frames`` consecutive frames of ``frame_dim`` features.
    """

    def __init__(
        self, frame_dim: int, frames: int, num_classes: int, hidden: int = 64, num_layers: int = 1,
        cell: str = "gru", bidirectional: bool = False, normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"recurrent cell {cell!r} is not one of {', '.join(CELLS)}")
        self.frame_dim, self.frames, self.num_classes = int(frame_dim), int(frames), int(num_classes)
        self.hidden, self.num_layers, self.cell = int(hidden), int(num_layers), cell
        self.bidirectional = bool(bidirectional)
        self.in_dim = self.frame_dim * self.frames
        self.norm = normalize if normalize is not None else Normalize.placeholder(self.frame_dim)
        self.rnn = CELLS[cell][0](self.frame_dim, self.hidden, self.num_layers, batch_first=True,
                                  bidirectional=self.bidirectional)
        self.head = nn.Linear(self.hidden * (2 if self.bidirectional else 1), self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise FormatError(f"RecurrentCTC expects rows of {self.frames} x {self.frame_dim} = {self.in_dim} "
                              f"features; got {x.shape[-1]}")
        frames = x.reshape(x.shape[0], self.frames, self.frame_dim)
        out, _ = self.rnn(self.norm(frames))
        return self.head(out)

    def config(self) -> dict:
        """Constructor arguments (the fitted normaliser's buffers are saved as tensors)."""
        return {"frame_dim": self.frame_dim, "frames": self.frames, "num_classes": self.num_classes,
                "hidden": self.hidden, "num_layers": self.num_layers, "cell": self.cell,
                "bidirectional": self.bidirectional, "normalize_mode": self.norm.mode,
                "packed_rnn": isinstance(self.rnn, PackedRecurrent)}

    @classmethod
    def check_config(cls, config: dict, manifest: dict) -> None:
        """Every stored setting in range before anything is built (the tensors' shapes are checked against the
        module the settings make by the loader)."""
        need_keys("recurrent_ctc config", config, ("frame_dim", "frames", "num_classes", "hidden", "num_layers",
                                                   "cell", "bidirectional", "normalize_mode"), ("packed_rnn",),
                  error=ConfigError)
        for key in ("frame_dim", "frames", "num_classes", "hidden"):
            need_int(key, config[key], 1, 1 << 20, error=ConfigError)
        need_int("num_layers", config["num_layers"], 1, 64, error=ConfigError)
        need_choice("cell", config["cell"], tuple(CELLS), error=ConfigError)
        need_bool("bidirectional", config["bidirectional"], error=ConfigError)
        need_bool("packed_rnn", config.get("packed_rnn", False), error=ConfigError)
        need_choice("normalize_mode", config["normalize_mode"], Normalize.MODES, error=ConfigError)

    @classmethod
    def from_config(cls, config: dict) -> RecurrentCTC:
        """An untrained module of the same shape (tensors are loaded afterwards); a packed recurrent layer comes
        back as a ``PackedRecurrent`` skeleton whose layers the artifact loader fills."""
        args = {k: v for k, v in config.items() if k not in ("normalize_mode", "packed_rnn")}
        norm = Normalize.placeholder(int(config["frame_dim"]), config.get("normalize_mode", "raw"))
        model = cls(**args, normalize=norm)
        if config.get("packed_rnn"):
            rnn = model.rnn
            model.rnn = PackedRecurrent.skeleton(model.cell, rnn.input_size, rnn.hidden_size, rnn.num_layers,
                                                 rnn.bidirectional, rnn.batch_first)
        return model


register_family("recurrent_ctc", RecurrentCTC)
