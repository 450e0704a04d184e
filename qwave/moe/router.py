"""Routers: a small MLP over the normalised embedding giving expert probabilities, plain or Bayesian.

``Router``: ``Linear -> act -> Dropout -> Linear -> softmax``; in eval mode a single deterministic pass. ``act``
is ReLU, or hardtanh when the router's format binarises or ternarises the output layer's input
(``qwave.nn.mlp.activation_for``).
``BayesianRouter``: the same network read with MC dropout over ``mc_samples`` passes. In training every pass
draws fresh dropout masks; in eval mode pass ``s`` uses the fixed hidden-unit mask ``keep[s]``, drawn once from
``mask_seed`` and stored as a buffer (one weight sample of the approximate posterior per pass, shared by every
sample). Evaluation is therefore deterministic and independent of batching, and a saved and reloaded router
routes identically.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qwave.nn.mlp import ACTIVATIONS


class Router(nn.Module):
    """Two-layer MLP router producing expert probabilities ``[N, E]``."""

    def __init__(
        self, in_dim: int, num_experts: int, hidden: int = 64, dropout: float = 0.2, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.in_dim, self.num_experts, self.hidden, self.dropout = int(in_dim), int(num_experts), int(hidden), dropout
        self.fc1 = nn.Linear(self.in_dim, self.hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(self.hidden, self.num_experts)

    @property
    def passes(self) -> int:
        """Evaluations of the output layer per sample at inference."""
        return 1

    def features(self, x: Tensor) -> Tensor:
        """Hidden activations before dropout, ``[N, hidden]``."""
        return self.act(self.fc1(x))

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.dropout(self.features(x), self.dropout, self.training)
        return torch.softmax(self.fc2(h), -1)

    def masked_probs(self, x: Tensor, keep: Tensor) -> Tensor:
        """``[S, N, E]`` probabilities, pass ``s`` keeping the hidden units where ``keep[s]`` is 1 (inverted
        dropout: kept units are scaled by ``1 / (1 - dropout)``)."""
        h = self.features(x)
        scaled = keep.to(h) / (1.0 - self.dropout)
        passes = h[None, :, :] * scaled[:, None, :]
        logits = self.fc2(passes.reshape(-1, self.hidden)).reshape(len(keep), len(x), self.num_experts)
        return torch.softmax(logits, -1)

    def macs(self) -> int:
        """Multiply-accumulates per sample at inference: the first layer once, the second once per pass."""
        return self.in_dim * self.hidden + self.passes * self.hidden * self.num_experts


class BayesianRouter(Router):
    """MC-dropout router: ``forward`` returns the per-pass probabilities ``[S, N, E]``."""

    def __init__(
        self,
        in_dim: int,
        num_experts: int,
        hidden: int = 64,
        dropout: float = 0.2,
        mc_samples: int = 8,
        mask_seed: int = 0,
        activation: str = "relu",
    ) -> None:
        super().__init__(in_dim, num_experts, hidden, dropout, activation)
        self.mc_samples, self.mask_seed = int(mc_samples), int(mask_seed)
        self.register_buffer("keep", keep_masks(self.mc_samples, self.hidden, dropout, self.mask_seed))

    @property
    def passes(self) -> int:
        return self.mc_samples

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.masked_probs(x, self.keep)
        h = self.features(x)
        passes = torch.stack([nn.functional.dropout(h, self.dropout, True) for _ in range(self.mc_samples)])
        return torch.softmax(self.fc2(passes), -1)


def keep_masks(samples: int, hidden: int, dropout: float, seed: int) -> Tensor:
    """``[samples, hidden]`` uint8 keep flags, each 1 with probability ``1 - dropout``, from a CPU generator
    seeded with ``seed`` (the same masks on every machine and every call)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.bernoulli(torch.full((samples, hidden), 1.0 - dropout), generator=gen).to(torch.uint8)
