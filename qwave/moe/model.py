"""The Mixture-of-Experts classifier: a shared normaliser, a (Bayesian) router and experts of mixed formats.

Output (log-probabilities, used as logits): ``log p(y|x) = log sum_{e in top-k(x)} g_e(x) softmax(f_e(x))_y`` with
``g`` the (curiosity-adjusted) router probabilities renormalised over the top-k experts. At inference only the
routed experts run (each on its own rows). In training the forward value is that same top-k mixture, so the
experts learn only from the rows routed to them; the router additionally receives the gradient of the dense
mixture ``log sum_e p_e(x) softmax(f_e(x))_y`` with the experts detached (Jacobs et al., 1991), which teaches it
which expert classifies each row best even at ``k = 1``, where the top-k value does not depend on ``p``. The
Switch balancing loss of the last training forward is returned by ``aux_loss`` (added by ``qwave.train``).

The ``moe`` model family is registered here (artifacts, size calculator); its benchmark kind (expert selection,
per-fold analysis) lives in ``qwave.bench.moe`` and is imported only when a benchmark names ``moe``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qwave.data.normalize import Normalize
from qwave.errors import ArtifactError, ConfigError
from qwave.formats import QuantPlan, canonical_name, get_format
from qwave.moe.config import MEASURES, CuriosityConfig
from qwave.moe.router import BayesianRouter, Router, keep_masks
from qwave.moe.routing import (
    EPS,
    balance_loss,
    curious_probs,
    gates,
    mutual_information,
    precision_key,
    precision_ranks,
    router_max_softmax,
    routing_variance,
    standardise,
    tied_groups,
    top_k_mask,
    uncertainty,
)
from qwave.nn.family import register_family
from qwave.nn.mlp import ACTIVATIONS, activation_for, build_mlp, check_linear_chain
from qwave.nn.surgery import pack_model, quantize_model
from qwave.settings import need_bool, need_choice, need_float, need_int, need_keys

if TYPE_CHECKING:
    from qwave.size import SizeReport

log = logging.getLogger(__name__)

U_MOMENTUM = 0.1
SIZE_EXPERTS = 3  # experts of the size calculator's moe row


@dataclass
class Routing:
    """One routing decision for a batch.

    ``base``: router probabilities ``[N, E]`` (the MC mean for a Bayesian router); ``probs``: after the curiosity
    rule (``base`` itself when curiosity is off or ``alpha = 0``); ``mask``: top-k of ``probs``; ``gates``: ``probs``
    renormalised over the mask; ``mc``: per-pass probabilities ``[S, N, E]`` (None for a plain router); ``u``: the
    raw uncertainty the rule read and ``score`` its standardised value ``(u - mean) / std`` (``[N]``; None
    without curiosity).
    """

    base: Tensor
    probs: Tensor
    mask: Tensor
    gates: Tensor
    mc: Tensor | None = None
    u: Tensor | None = None
    score: Tensor | None = None


@dataclass
class Trace:
    """Everything behind a batch of predictions, for analysis: routing, MC uncertainty, each expert's output."""

    routing: Routing
    log_proba: Tensor
    expert_log_proba: Tensor
    mc: Tensor
    mutual_info: Tensor
    variance: Tensor
    max_softmax: Tensor


class MoEClassifier(nn.Module):
    """``Normalize -> router -> top-k mixture of experts``; expert ``e`` is an MLP body in format ``formats[e]``.

    Experts and router are built in FP32; ``quantize_moe`` quantizes each expert to its format
    and the router to ``router_format`` (``quantize_model``) before training, and ``pack_model`` packs them for
    deployment. ``activation``: ``auto`` (per expert, ``activation_for`` its format), one name for every
    expert, or one per expert; ``router_activation``: ``auto`` (``activation_for`` the router format) or a name.
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
        activation: str | Sequence[str] = "auto",
        router_format: str = "int8",
        router_activation: str = "auto",
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
        self.activations = expert_activations(activation, self.formats)
        self.router_format = canonical_name(router_format)
        self.router_activation = resolve_activation(router_activation, self.router_format, "router_activation")
        self.norm = normalize if normalize is not None else Normalize.placeholder(self.in_dim)
        num_experts = len(self.formats)
        if self.curiosity.enabled:
            self.router: Router = BayesianRouter(
                in_dim, num_experts, router_hidden, router_dropout, self.curiosity.mc_samples, mask_seed,
                self.router_activation,
            )
        else:
            self.router = Router(in_dim, num_experts, router_hidden, router_dropout, self.router_activation)
        self.experts = nn.ModuleList(
            build_mlp(in_dim, num_classes, self.hidden, self.dropout, self.layer_norm, activation=act).body
            for act in self.activations
        )
        keys = [precision_key(get_format(f)) for f in self.formats]
        self.register_buffer("ranks", precision_ranks(keys), persistent=False)
        if self.curiosity.enabled:
            self.register_buffer("u_mean", torch.zeros(()))
            self.register_buffer("u_std", torch.zeros(()))
            warn_tied_ranks(self.formats, keys)
        self._aux: Tensor | None = None

    @property
    def num_experts(self) -> int:
        return len(self.formats)

    def _update_u_stats(self, u: Tensor) -> None:
        """Running mean and std (momentum ``U_MOMENTUM``) of the rule's uncertainty over training batches; the
        first batch (``u_std`` still 0) sets them directly."""
        mean, std = u.mean(), u.std(unbiased=False)
        first = self.u_std <= 0
        self.u_mean.copy_(torch.where(first, mean, (1 - U_MOMENTUM) * self.u_mean + U_MOMENTUM * mean))
        self.u_std.copy_(torch.where(first, std, (1 - U_MOMENTUM) * self.u_std + U_MOMENTUM * std))

    def route(self, z: Tensor, u: Tensor | None = None) -> Routing:
        """Route normalised inputs ``z``: router probabilities, the curiosity cascade, the top-k mask and gates.

        ``u`` (``[N]``) replaces the router's own uncertainty in the rule (an ablation: a constant ``u`` keeps
        the average push and removes its per-sample variation); the running statistics are updated (training
        mode only) from the router's own uncertainty, never from ``u``. Neither is differentiated.
        """
        if not self.curiosity.enabled:
            base = self.router(z)
            mask = top_k_mask(base, self.top_k)
            return Routing(base, base, mask, gates(base, mask))
        mc = self.router(z)
        base = mc.mean(0)
        with torch.no_grad():
            raw = uncertainty(mc, self.curiosity.measure) if u is None else u.to(base)
            if self.training and u is None:
                self._update_u_stats(raw)
            score = standardise(raw, self.u_mean, self.u_std)
        probs = curious_probs(base, self.curiosity.alpha, score, self.ranks)
        mask = top_k_mask(probs, self.top_k)
        return Routing(base, probs, mask, gates(probs, mask), mc, raw, score)

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
        return Trace(r, self._sparse_mixture(z, r), expert_lp, mc, mutual_information(mc), routing_variance(mc),
                     router_max_softmax(mc))

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
            "activation": list(self.activations),
            "router_format": self.router_format,
            "router_activation": self.router_activation,
        }

    @classmethod
    def check_config(cls, config: dict, manifest: dict) -> None:
        """Every stored setting in the range training accepts (``MoEConfig.validate``), and the packed layers and
        MC keep masks the manifest lists exactly those the settings make, checked before anything is built."""
        keys = ("in_dim", "num_classes", "formats", "hidden", "dropout", "layer_norm", "top_k", "router_hidden",
                "router_dropout", "balance_weight", "curiosity", "mask_seed", "normalize_mode")
        need_keys("moe config", config, keys, ("activation", "router_format", "router_activation", "selection"),
                  ConfigError)
        in_dim = need_int("in_dim", config["in_dim"], 1, error=ConfigError)
        classes = need_int("num_classes", config["num_classes"], 1, error=ConfigError)
        formats = config["formats"]
        if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
            raise ConfigError(f"formats must be a non-empty list of format names, got {formats!r}")
        for f in [*formats, config.get("router_format", "fp32")]:
            canonical_name(f)
        hidden = config["hidden"]
        if not isinstance(hidden, list):
            raise ConfigError(f"hidden must be a list of layer widths, got {hidden!r}")
        hidden = [need_int(f"hidden[{i}]", h, 1, error=ConfigError) for i, h in enumerate(hidden)]
        need_float("dropout", config["dropout"], 0.0, 1.0, high_open=True, error=ConfigError)
        layer_norm = need_bool("layer_norm", config["layer_norm"], error=ConfigError)
        need_int("top_k", config["top_k"], 1, len(formats), error=ConfigError)
        router_hidden = need_int("router_hidden", config["router_hidden"], 1, error=ConfigError)
        router_dropout = need_float("router_dropout", config["router_dropout"], 0.0, 1.0, high_open=True,
                                    error=ConfigError)
        need_float("balance_weight", config["balance_weight"], 0.0, error=ConfigError)
        need_int("mask_seed", config["mask_seed"], 0, 2**63 - 1, error=ConfigError)
        need_choice("normalize_mode", config["normalize_mode"], Normalize.MODES, error=ConfigError)
        if not isinstance(config.get("selection", []), list):
            raise ConfigError(f"selection must be a list, got {config['selection']!r}")
        curiosity = need_keys("curiosity", config["curiosity"], ("enabled", "alpha", "mc_samples", "measure"),
                              ("rule",), ConfigError)
        enabled = need_bool("curiosity.enabled", curiosity["enabled"], error=ConfigError)
        need_float("curiosity.alpha", curiosity["alpha"], 0.0, error=ConfigError)
        samples = need_int("curiosity.mc_samples", curiosity["mc_samples"], 2, error=ConfigError)
        need_choice("curiosity.measure", curiosity["measure"], MEASURES, error=ConfigError)
        if enabled and router_dropout == 0.0:
            raise ConfigError("curiosity.enabled needs router_dropout > 0 (MC dropout has nothing to sample)")
        layers = manifest["layers"]
        for e in range(len(formats)):
            check_linear_chain(f"experts.{e}.", [in_dim, *hidden, classes], layer_norm, layers)
        router = {p: spec.get("shape") for p, spec in layers.items() if p.startswith("router.")}
        expected = {"router.fc1": [router_hidden, in_dim], "router.fc2": [len(formats), router_hidden]}
        if router != expected:
            raise ConfigError(f"router_hidden={router_hidden} and {len(formats)} experts make the router layers "
                              f"{expected}, but the manifest packs {router}")
        others = [p for p in layers if not p.startswith(("router.", "experts."))]
        if len(layers) != len(formats) * (len(hidden) + 1) + 2 or others:
            raise ConfigError(f"{len(formats)} experts of {len(hidden) + 1} layers and a router do not make the "
                              f"{len(layers)} packed layers of the manifest")
        keep = (manifest.get("tensors", {}).get("router.keep") or {}).get("shape")
        if enabled and keep != [samples, router_hidden]:
            raise ConfigError(f"curiosity.mc_samples={samples} and router_hidden={router_hidden} need stored keep "
                              f"masks of shape {[samples, router_hidden]}, the file holds {keep}")

    def check_state(self) -> None:
        """Stored values a loaded model routes with: MC keep masks of 0 and 1, a non-negative uncertainty std."""
        keep = getattr(self.router, "keep", None)
        if keep is not None and not ((keep == 0) | (keep == 1)).all():
            raise ConfigError("tensor 'router.keep' (MC dropout keep masks) must hold only 0 and 1")
        if self.curiosity.enabled and not (torch.isfinite(self.u_std) and self.u_std >= 0):
            raise ConfigError(f"tensor 'u_std' must be a finite number >= 0, got {float(self.u_std)}")

    @classmethod
    def from_config(cls, config: dict) -> MoEClassifier:
        """Rebuild an untrained FP32 skeleton of the same shape (the loader swaps in packed layers and tensors).

        A config written before activations and router formats were recorded had ReLU everywhere and an FP32
        router; one written with the earlier curiosity rule (``rule`` key, uncertainty divided by its mean)
        cannot be reproduced and is refused.
        """
        args = {k: v for k, v in config.items() if k != "normalize_mode"}
        curiosity = dict(args.get("curiosity") or {})
        if "rule" in curiosity:
            if curiosity.get("enabled"):
                raise ArtifactError(
                    "this MoE artifact routes with the earlier curiosity rule (uncertainty / mean), which this qwave "
                    "no longer implements; retrain it"
                )
            curiosity.pop("rule")
            args["curiosity"] = curiosity
        args.setdefault("activation", "relu")
        args.setdefault("router_format", "fp32")
        args.setdefault("router_activation", "relu")
        norm = Normalize.placeholder(int(config["in_dim"]), config.get("normalize_mode", "raw"))
        return cls(**args, normalize=norm)


def resolve_activation(activation: str, fmt: str, option: str) -> str:
    """``activation`` itself, or for ``auto`` the one ``fmt`` needs (``activation_for``); unknown names refused."""
    if activation == "auto":
        return activation_for([fmt])
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{option}={activation!r} is not one of auto, {', '.join(ACTIVATIONS)}")
    return activation


def expert_activations(activation: str | Sequence[str], formats: list[str]) -> list[str]:
    """One hidden activation per expert: ``activation`` for all (``auto`` = per format), or one name each."""
    names = [activation] * len(formats) if isinstance(activation, str) else list(activation)
    if len(names) != len(formats):
        raise ConfigError(f"activation has {len(names)} entries {names} for {len(formats)} experts {formats}")
    return [resolve_activation(a, f, "activation") for a, f in zip(names, formats, strict=True)]


def warn_tied_ranks(formats: list[str], keys: list) -> None:
    """Log a warning for experts whose formats share a precision rank: the cascade cannot move samples between
    them (with every expert tied, curiosity changes no route at all)."""
    for group in tied_groups(keys):
        names = ", ".join(f"{e} ({formats[e]})" for e in group)
        every = len(group) == len(formats)
        effect = "curiosity changes no route" if every else "the rule cannot move samples between them"
        log.warning("moe.curiosity: experts %s share one precision rank; %s", names, effect)


def quantize_moe(model: MoEClassifier, plan: QuantPlan | None = None) -> MoEClassifier:
    """Quantize expert ``e`` to ``model.formats[e]`` (with the ``plan``'s options and ``keep_last_fp``; default
    none) and the router to ``model.router_format``, in place (QAT)."""
    plan = plan or QuantPlan.parse(None)
    for expert, fmt in zip(model.experts, model.formats, strict=True):
        quantize_model(expert, plan.with_format(fmt))
    quantize_model(model.router, model.router_format)
    return model


def size_model(spec, plan: QuantPlan) -> nn.Module:
    """Size-calculator row: ``SIZE_EXPERTS`` experts of ``spec``'s shape (``qwave.size.SizeSpec``), all in the
    ``plan``'s format, an int8 router, top-1 routing (active size under uniform usage)."""
    if plan.per_layer:
        raise ConfigError("the moe size row takes one format per expert set; drop --layer-formats for --models moe")
    model = MoEClassifier(spec.in_dim, spec.num_classes, [plan.formats[0]] * SIZE_EXPERTS, spec.hidden)
    return pack_model(quantize_moe(model, plan))


register_family("moe", MoEClassifier, size_model=size_model, kind="qwave.bench.moe:moe_kind")
