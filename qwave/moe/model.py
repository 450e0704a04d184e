"""The Mixture-of-Experts classifier: a shared normaliser, a (Bayesian) router and experts of mixed formats.

Output (log-probabilities, used as logits): ``log p(y|x) = log sum_{e in top-k(x)} g_e(x) softmax(f_e(x))_y`` with
``g`` the (curiosity-adjusted) router probabilities renormalised over the top-k experts. At inference only the
routed experts run (each on its own rows). In training the forward value is that same top-k mixture, so the
experts learn only from the rows routed to them; the router additionally receives the gradient of the dense
mixture ``log sum_e p_e(x) softmax(f_e(x))_y`` with the experts detached (Jacobs et al., 1991), which teaches it
which expert classifies each row best even at ``k = 1``, where the top-k value does not depend on ``p``. The
Switch balancing loss of the last training forward is returned by ``aux_loss`` (added by ``qwave.train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from qwave.data.normalize import Normalize
from qwave.formats import canonical_name, get_format
from qwave.moe.config import CuriosityConfig
from qwave.moe.router import BayesianRouter, Router, keep_masks
from qwave.moe.routing import (
    EPS,
    balance_loss,
    curious_probs,
    expert_variance,
    gates,
    mutual_information,
    precision_ranks,
    routing_variance,
    top_k_mask,
    uncertainty,
)
from qwave.nn.mlp import MLPClassifier
from qwave.size import SizeReport

U_MOMENTUM = 0.1


@dataclass
class Routing:
    """One routing decision for a batch.

    ``base``: router probabilities ``[N, E]`` (the MC mean for a Bayesian router); ``probs``: after the curiosity
    rule (``base`` itself when curiosity is off or ``alpha = 0``); ``mask``: top-k of ``probs``; ``gates``: ``probs``
    renormalised over the mask; ``mc``: per-pass probabilities ``[S, N, E]`` (None for a plain router); ``u``: the
    normalised uncertainty the rule used (``[N]``, or ``[N, E]`` for the ``penalty`` rule; None without curiosity).
    """

    base: Tensor
    probs: Tensor
    mask: Tensor
    gates: Tensor
    mc: Tensor | None = None
    u: Tensor | None = None


@dataclass
class Trace:
    """Everything behind a batch of predictions, for analysis: routing, MC uncertainty, each expert's output."""

    routing: Routing
    log_proba: Tensor
    expert_log_proba: Tensor
    mc: Tensor
    mutual_info: Tensor
    variance: Tensor


class MoEClassifier(nn.Module):
    """``Normalize -> router -> top-k mixture of experts``; expert ``e`` is an MLP body in format ``formats[e]``.

    Experts are built in FP32; ``qwave.moe.bench`` quantizes each to its format (``quantize_model``) before
    training, and ``pack_model`` packs them for deployment. The router stays FP32.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        formats: Sequence[str],
        hidden: Sequence[int] = (640, 320),
        dropout: float = 0.2,
        layer_norm: bool = False,
        top_k: int = 1,
        router_hidden: int = 64,
        router_dropout: float = 0.2,
        balance_weight: float = 0.01,
        curiosity: CuriosityConfig | dict | None = None,
        mask_seed: int = 0,
        normalize: Normalize | None = None,
        selection: list[dict] | None = None,
    ) -> None:
        super().__init__()
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        self.formats = [canonical_name(f) for f in formats]
        self.hidden, self.dropout, self.layer_norm = tuple(int(h) for h in hidden), float(dropout), bool(layer_norm)
        self.top_k, self.balance_weight, self.mask_seed = int(top_k), float(balance_weight), int(mask_seed)
        self.router_hidden, self.router_dropout = int(router_hidden), float(router_dropout)
        if isinstance(curiosity, dict):
            curiosity = CuriosityConfig(**curiosity)
        self.curiosity = curiosity or CuriosityConfig()
        self.selection = list(selection or [])
        d = self.in_dim
        self.norm = normalize if normalize is not None else Normalize.placeholder(d)
        num_experts = len(self.formats)
        if self.curiosity.enabled:
            self.router: Router = BayesianRouter(
                in_dim, num_experts, router_hidden, router_dropout, self.curiosity.mc_samples, mask_seed
            )
        else:
            self.router = Router(in_dim, num_experts, router_hidden, router_dropout)
        self.experts = nn.ModuleList(
            MLPClassifier(in_dim, num_classes, self.hidden, self.dropout, self.layer_norm).body for _ in self.formats
        )
        self.register_buffer("ranks", precision_ranks([get_format(f).bits for f in self.formats]), persistent=False)
        if self.curiosity.enabled:
            self.register_buffer("u_mean", torch.zeros(()))
        self._aux: Tensor | None = None

    @property
    def num_experts(self) -> int:
        return len(self.formats)

    def _normalised_u(self, mc: Tensor) -> Tensor:
        """The rule's uncertainty divided by its running mean over training batches (``u_mean``; 0 = not yet
        estimated, then used as is). Updated in training mode, fixed in eval mode; never differentiated."""
        c = self.curiosity
        with torch.no_grad():
            raw = uncertainty(mc, c.measure) if c.rule == "precision" else expert_variance(mc).sqrt()
            if self.training:
                batch = raw.mean()
                self.u_mean.copy_(batch if self.u_mean <= 0 else (1 - U_MOMENTUM) * self.u_mean + U_MOMENTUM * batch)
            scale = self.u_mean if self.u_mean > 0 else torch.ones_like(self.u_mean)
            return raw / scale.clamp_min(EPS)

    def route(self, z: Tensor) -> Routing:
        """Route normalised inputs ``z``: router probabilities, the curiosity rule, the top-k mask and gates."""
        if not self.curiosity.enabled:
            base = self.router(z)
            mask = top_k_mask(base, self.top_k)
            return Routing(base, base, mask, gates(base, mask))
        mc = self.router(z)
        base = mc.mean(0)
        c = self.curiosity
        u = self._normalised_u(mc)
        if c.rule == "precision":
            probs = curious_probs(base, c.alpha, c.rule, u=u, ranks=self.ranks)
        else:
            probs = curious_probs(base, c.alpha, c.rule, u_expert=u)
        mask = top_k_mask(probs, self.top_k)
        return Routing(base, probs, mask, gates(probs, mask), mc, u)

    def forward(self, x: Tensor) -> Tensor:
        z = self.norm(x)
        r = self.route(z)
        if not self.training:
            self._aux = None
            return self._sparse_mixture(z, r)
        self._aux = balance_loss(r.probs, r.mask, self.balance_weight)
        log_q = torch.stack([torch.log_softmax(expert(z), -1) for expert in self.experts], 1)
        log_gates = torch.where(r.mask, r.gates.clamp_min(EPS).log(), torch.full_like(r.gates, -torch.inf))
        routed = torch.logsumexp(log_gates[..., None] + log_q, 1)
        dense = torch.logsumexp(r.probs.clamp_min(EPS).log()[..., None] + log_q.detach(), 1)
        return routed + (dense - dense.detach())

    def _sparse_mixture(self, z: Tensor, r: Routing) -> Tensor:
        """``log sum_e g_e softmax(f_e(z))`` running each expert only on the rows routed to it."""
        out = torch.full((len(z), self.num_classes), -torch.inf, dtype=z.dtype, device=z.device)
        for e, expert in enumerate(self.experts):
            rows = r.mask[:, e].nonzero().squeeze(1)
            if len(rows):
                part = r.gates[rows, e].log()[:, None] + torch.log_softmax(expert(z[rows]), -1)
                out[rows] = torch.logaddexp(out[rows], part)
        return out

    def aux_loss(self) -> Tensor:
        """The load-balancing loss of the last training forward (0 before any, or after an eval forward)."""
        return self._aux if self._aux is not None else torch.zeros(())

    @torch.no_grad()
    def trace(self, x: Tensor, mc_samples: int | None = None) -> Trace:
        """Eval-mode predictions with their routing, every expert's own output and the router's MC uncertainty.

        A Bayesian router reports the passes it routes with; a plain router is read with ``mc_samples`` fixed
        dropout masks drawn from ``mask_seed`` (a diagnostic only: its routing does not use them).
        """
        self.eval()
        z = self.norm(x)
        r = self.route(z)
        if r.mc is not None:
            mc = r.mc
        else:
            samples = mc_samples or self.curiosity.mc_samples
            keep = keep_masks(samples, self.router.hidden, self.router_dropout, self.mask_seed).to(z.device)
            mc = self.router.masked_probs(z, keep)
        expert_lp = torch.stack([torch.log_softmax(expert(z), -1) for expert in self.experts], 1)
        return Trace(r, self._sparse_mixture(z, r), expert_lp, mc, mutual_information(mc), routing_variance(mc))

    def active_bytes(self, size: SizeReport, usage: Sequence[float] | None = None) -> int:
        """Bytes one inference touches on average: everything stored except the experts, plus each expert's
        bytes times its usage (fraction of samples routed to it, summing to ``top_k``; uniform when not given).

        ``active = stored - sum_e bytes_e + sum_e usage_e * bytes_e``, rounded to whole bytes.
        """
        usage = [self.top_k / self.num_experts] * self.num_experts if usage is None else list(usage)
        experts = [size.bytes_under(f"experts.{e}") for e in range(self.num_experts)]
        routed = sum(u * b for u, b in zip(usage, experts, strict=True))
        return int(round(size.stored_bytes - sum(experts) + routed))

    def macs(self, usage: Sequence[float] | None = None) -> float:
        """Multiply-accumulates per sample at inference: the router (with its MC passes) plus each expert's
        linear layers times its usage (uniform when not given)."""
        usage = [self.top_k / self.num_experts] * self.num_experts if usage is None else list(usage)
        per_expert = [
            sum(m.in_features * m.out_features for m in expert.modules() if hasattr(m, "in_features"))
            for expert in self.experts
        ]
        return self.router.macs() + sum(u * c for u, c in zip(usage, per_expert, strict=True))

    def config(self) -> dict:
        """Constructor arguments (without the fitted normaliser, whose buffers are saved as tensors)."""
        return {
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "formats": list(self.formats),
            "hidden": list(self.hidden),
            "dropout": self.dropout,
            "layer_norm": self.layer_norm,
            "top_k": self.top_k,
            "router_hidden": self.router_hidden,
            "router_dropout": self.router_dropout,
            "balance_weight": self.balance_weight,
            "curiosity": asdict(self.curiosity),
            "mask_seed": self.mask_seed,
            "normalize_mode": self.norm.mode,
            "selection": self.selection,
        }

    @classmethod
    def from_config(cls, config: dict) -> MoEClassifier:
        """Rebuild an untrained FP32 skeleton of the same shape (the loader swaps in packed layers and tensors)."""
        args = {k: v for k, v in config.items() if k != "normalize_mode"}
        norm = Normalize.placeholder(int(config["in_dim"]), config.get("normalize_mode", "raw"))
        return cls(**args, normalize=norm)
