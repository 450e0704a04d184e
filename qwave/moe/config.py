"""Configuration of a Mixture-of-Experts model kind (``moe.*`` keys of ``qwave bench``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qwave.errors import ConfigError, FormatError
from qwave.formats import canonical_name

SELECTIONS = ("f1", "f1_per_byte", "order")
MEASURES = ("mutual_info", "variance", "max_softmax")


@dataclass
class CuriosityConfig:
    """Bayesian (MC-dropout) router whose uncertainty changes the routing: an uncertainty cascade.

    ``alpha * s(x) * c_e`` is added to the log routing probability of expert ``e``, where ``c_e`` in [-1, 1] is
    the centred precision rank of its format and ``s(x) = (u(x) - mean) / std`` the sample's uncertainty
    ``measure`` (BALD ``mutual_info``, total routing ``variance``, or the router's ``max_softmax`` deficit)
    standardised by its running mean and std over training batches. Samples more uncertain than the typical one
    move toward higher-precision experts, more confident ones toward cheaper experts.
    """

    enabled: bool = False
    alpha: float = 0.5
    mc_samples: int = 8
    measure: str = "mutual_info"


@dataclass
class MoEConfig:
    """Experts of mixed formats behind a small MLP router with top-k routing and a Switch balancing loss.

    ``experts`` names one expert per format. With ``pool`` and ``num_experts`` set, ``num_experts`` formats are
    instead selected from ``pool`` by ``selection`` after ``selection_epochs`` of training one candidate per pool
    format on the inner split: ``f1`` (best inner-val macro-F1), ``f1_per_byte`` (macro-F1 / stored bytes of
    the packed candidate, among the probes whose F1 is at least ``selection_floor`` times the best probe's),
    ``order`` (the first ``num_experts`` of ``pool``, no probing). The router runs in ``router_format``; its
    bytes count in stored and active size.
    """

    experts: list[str] = field(default_factory=lambda: ["bitnet", "4", "8"])
    pool: list[str] | None = None
    num_experts: int | None = None
    selection: str = "f1_per_byte"
    selection_epochs: int = 5
    selection_floor: float = 0.9
    top_k: int = 1
    router_format: str = "int8"
    router_hidden: int = 64
    router_dropout: float = 0.2
    balance_weight: float = 0.01
    expert_hidden: list[int] | None = None
    curiosity: CuriosityConfig = field(default_factory=CuriosityConfig)

    def validate(self) -> None:
        """Fail early, naming the option, on values the MoE cannot use."""
        names = list(self.pool) if self.pool else list(self.experts)
        where = "moe.pool" if self.pool else "moe.experts"
        if not names:
            raise ConfigError(f"{where} is empty; name at least one expert format, e.g. moe.experts=[bitnet,4,8]")
        checks = [(where, n) for n in names] + [("moe.router_format", self.router_format)]
        for key, name in checks:
            try:
                canonical_name(name)
            except FormatError as err:
                raise ConfigError(f"{key}: {err}") from None
        if self.pool:
            if self.num_experts is None:
                raise ConfigError("moe.pool is set but moe.num_experts is not; say how many experts to select")
            if not 1 <= self.num_experts <= len(self.pool):
                raise ConfigError(
                    f"moe.num_experts={self.num_experts} must be between 1 and the size of moe.pool ({len(self.pool)})"
                )
            if len({canonical_name(n) for n in self.pool}) != len(self.pool):
                raise ConfigError(f"moe.pool={list(self.pool)} names a format twice")
            if self.selection not in SELECTIONS:
                raise ConfigError(f"moe.selection={self.selection!r} is not one of {', '.join(SELECTIONS)}")
            if self.selection_epochs < 1:
                raise ConfigError(f"moe.selection_epochs must be >= 1, got {self.selection_epochs}")
            if not 0.0 <= self.selection_floor <= 1.0:
                raise ConfigError(f"moe.selection_floor must be in [0, 1], got {self.selection_floor}")
        elif self.num_experts is not None and self.num_experts != len(self.experts):
            raise ConfigError(
                f"moe.num_experts={self.num_experts} differs from the {len(self.experts)} formats in moe.experts; "
                "set moe.pool to select experts from a larger pool"
            )
        n = self.num_experts if self.pool else len(self.experts)
        if not 1 <= self.top_k <= n:
            raise ConfigError(f"moe.top_k={self.top_k} must be between 1 and the number of experts ({n})")
        if self.router_hidden < 1:
            raise ConfigError(f"moe.router_hidden must be >= 1, got {self.router_hidden}")
        if not 0.0 <= self.router_dropout < 1.0:
            raise ConfigError(f"moe.router_dropout must be in [0, 1), got {self.router_dropout}")
        if self.balance_weight < 0:
            raise ConfigError(f"moe.balance_weight must be >= 0, got {self.balance_weight}")
        c = self.curiosity
        if c.measure not in MEASURES:
            raise ConfigError(f"moe.curiosity.measure={c.measure!r} is not one of {', '.join(MEASURES)}")
        if c.mc_samples < 2:
            raise ConfigError(f"moe.curiosity.mc_samples must be >= 2, got {c.mc_samples}")
        if c.alpha < 0:
            raise ConfigError(f"moe.curiosity.alpha must be >= 0, got {c.alpha}")
        if c.enabled and self.router_dropout == 0.0:
            raise ConfigError("moe.curiosity.enabled needs moe.router_dropout > 0 (MC dropout has nothing to sample)")
