"""``moe-curiosity``: does routing by uncertainty buy accuracy per byte? One command, one config.

Arms, each a ``qwave bench`` run on the same table, folds and seeds (so every arm pairs by fold and seed):

* ``singles``: every single format of ``singles`` (QAT MLPs; active bytes = stored bytes);
* ``moe``: the plain MoE of ``bench.moe`` (curiosity off);
* ``moe_arms``: further MoE arms, each named with its own ``moe.*`` overrides (e.g. selection rules, more experts;
  curiosity is off unless the overrides turn it on);
* ``curious_<measure>_a<alpha>``: the same MoE with the curiosity cascade on, for every ``measure`` x ``alpha``
  (trained with the rule in the loop, so the experts learn from the rows it routes to them).

Per arm and fold: macro-F1 of the loaded artifact, mean active bytes and MACs per sample on the test fold, and for
curious arms the routes the cascade changes (against plain routing and against a constant ``u``). Aggregates:
seeds are averaged within each fold (the test folds are the same for every seed), then mean and 95 % t-interval
over folds; differences are paired by fold and seed the same way. The single-format Pareto front of macro-F1
against active bytes (and against MACs) is the step function "best single format costing no more"; an MoE point
lies above it by ``F1(MoE) - F1(best single with active bytes <= the MoE's)``, paired, with its interval.

Outputs under ``<bench.output_dir>/<tag>/``: one bench tag per arm (``<arm>/<model>/fold_k/...``, with the MoE's
curiosity files per fold), ``results.json`` (config, per-run records, aggregates, front), ``table.md`` and
``plot.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qwave.atomic import write_json, write_text
from qwave.bench.config import BenchConfig
from qwave.bench.runner import fold_dir, load_dataset, run_benchmark
from qwave.data import make_folds
from qwave.errors import ConfigError
from qwave.eval.metrics import aggregate
from qwave.formats import canonical_name
from qwave.moe.config import MEASURES
from qwave.plot import plt, save_figure
from qwave.studies.common import fmt_ci
from qwave.tables import markdown_table

log = logging.getLogger(__name__)

SINGLES = ["fp32", "16", "8", "4", "2", "1", "bitnet", "qesc"]
PLAIN = "moe"


def default_bench() -> BenchConfig:
    """The bench settings every arm shares: the default pool, three experts, quiet runs."""
    cfg = BenchConfig(quiet=True, seeds=[0, 1, 2])
    cfg.moe.pool = ["bitnet", "1", "2", "4", "8", "16", "qesc"]
    cfg.moe.num_experts = 3
    return cfg


@dataclass
class MoECuriosityConfig:
    """The study: shared bench settings, the single formats, extra plain MoE arms and the curiosity sweep.

    ``bench`` holds everything a ``qwave bench`` run takes (``data``, ``cv``, ``model``, ``train``, ``moe``,
    ``seeds``, ``threads``, ``output_dir``, ``resume``); ``bench.models`` and ``bench.tag`` are set per arm.
    ``moe_arms`` maps an arm name to ``moe.*`` overrides (``key=value`` strings) of extra MoE arms.
    """

    bench: BenchConfig = field(default_factory=default_bench)
    tag: str = "moe_curiosity"
    singles: list[str] = field(default_factory=lambda: list(SINGLES))
    moe_arms: dict[str, list[str]] = field(default_factory=dict)
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    measures: list[str] = field(default_factory=lambda: list(MEASURES))

    @property
    def out(self) -> Path:
        return Path(self.bench.output_dir) / self.tag

    def validate(self) -> None:
        """Fail early, naming the option, before any training."""
        for name in self.singles:
            canonical_name(name)
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:
            raise ConfigError(f"measures={unknown}: choose from {', '.join(MEASURES)}")
        if any(a <= 0 for a in self.alphas):
            raise ConfigError(f"alphas={list(self.alphas)}: every alpha must be > 0 (alpha 0 is the plain router)")
        reserved = {"singles", PLAIN} | {curious_name(m, a) for m in self.measures for a in self.alphas}
        clash = sorted(set(self.moe_arms) & reserved)
        if clash:
            raise ConfigError(f"moe_arms {clash}: names taken by the study's own arms")
        for name, overrides in self.moe_arms.items():
            bad = [o for o in overrides if not str(o).startswith("moe.") or "=" not in str(o)]
            if bad:
                raise ConfigError(f"moe_arms.{name}: {bad} are not moe.KEY=VALUE overrides")


def load_config(path: str | None, overrides: list[str]) -> MoECuriosityConfig:
    """The study config: defaults, then the YAML file ``path`` (if given), then ``key=value`` overrides."""
    schema = OmegaConf.structured(MoECuriosityConfig)
    try:
        layers = [OmegaConf.load(path)] if path else []
        merged = OmegaConf.merge(schema, *layers, OmegaConf.from_dotlist(list(overrides)))
        cfg: MoECuriosityConfig = OmegaConf.to_object(merged)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"moe-curiosity config: {' '.join(str(err).split())}") from None
    cfg.validate()
    return cfg


def curious_name(measure: str, alpha: float) -> str:
    return f"curious_{measure}_a{alpha:g}"


@dataclass
class Arm:
    """One bench run of the study: its name, the models it trains and its bench config."""

    name: str
    models: list[str]
    bench: BenchConfig
    measure: str | None = None
    alpha: float | None = None


def arm_bench(cfg: MoECuriosityConfig, name: str, models: list[str], overrides: list[str]) -> BenchConfig:
    """The shared bench config with ``overrides``, writing tag ``name`` under the study's folder."""
    merged = OmegaConf.merge(OmegaConf.structured(cfg.bench), OmegaConf.from_dotlist(list(overrides)))
    bench: BenchConfig = OmegaConf.to_object(merged)
    bench.models, bench.tag, bench.output_dir = list(models), name, str(cfg.out)
    bench.moe.validate()
    return bench


def plan(cfg: MoECuriosityConfig) -> list[Arm]:
    """Every arm of the study, in run order."""
    off = ["moe.curiosity.enabled=false"]
    arms = [Arm("singles", list(cfg.singles), arm_bench(cfg, "singles", cfg.singles, [])),
            Arm(PLAIN, [PLAIN], arm_bench(cfg, PLAIN, [PLAIN], off))]
    arms += [Arm(name, [PLAIN], arm_bench(cfg, name, [PLAIN], [*off, *map(str, overrides)]))
             for name, overrides in cfg.moe_arms.items()]
    for measure in cfg.measures:
        for alpha in cfg.alphas:
            name = curious_name(measure, alpha)
            on = ["moe.curiosity.enabled=true", f"moe.curiosity.measure={measure}", f"moe.curiosity.alpha={alpha}"]
            arms.append(Arm(name, [PLAIN], arm_bench(cfg, name, [PLAIN], on), measure, alpha))
    return arms


def mlp_macs(in_dim: int, hidden: list[int], num_classes: int) -> int:
    """Multiply-accumulates per sample of an MLP ``in_dim -> hidden... -> num_classes``."""
    widths = [in_dim, *hidden, num_classes]
    return sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def read_records(arm: Arm, folds: list[int], macs: int) -> list[dict]:
    """One record per (model, fold, seed) of the arm's plan, read from its ``metrics.json``."""
    records = []
    root = Path(arm.bench.output_dir) / arm.bench.tag
    for model in arm.models:
        for seed in arm.bench.seed_list():
            for k in folds:
                m = json.loads((fold_dir(root, model, k, seed) / "metrics.json").read_text())
                moe = m.get("moe")
                curious = bool(moe and moe["curiosity"]["enabled"])
                records.append({
                    "arm": arm.name if moe else canonical_name(m["model"]),
                    "kind": "single" if not moe else ("curious" if curious else "moe"),
                    "sweep": arm.measure is not None,
                    "model": m["model"], "fold": k, "seed": seed,
                    "measure": moe["curiosity"]["measure"] if curious else None,
                    "alpha": moe["curiosity"]["alpha"] if curious else None,
                    "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "stored_bytes": m["stored_bytes"],
                    "active_bytes": m.get("active_bytes") or m["stored_bytes"],
                    "macs": moe["macs_per_sample"] if moe else macs,
                    "train_seconds": m["train"]["train_seconds"],
                    **({} if not moe else {
                        "formats": moe["formats"],
                        "usage": [e["usage_fraction"] for e in moe["experts"]],
                        "expert_accuracy": [e["expert_accuracy_on_all"] for e in moe["experts"]],
                        "router_bytes": moe["router_bytes"],
                        "routes_changed_by_curiosity": moe["routes_changed_by_curiosity"],
                        "routes_changed_vs_constant_u": moe["routes_changed_vs_constant_u"],
                    }),
                })
    return records


def over_folds(runs: list[dict], key: str) -> dict:
    """Seeds averaged within each fold, then ``aggregate`` (mean, std, 95 % t-interval) over folds.

    Written here for this study; the bench summary aggregates over folds x seeds (one value per run).
    """
    by_fold: dict[int, list[float]] = {}
    for r in runs:
        if r.get(key) is not None:
            by_fold.setdefault(r["fold"], []).append(float(r[key]))
    return aggregate([float(np.mean(v)) for _, v in sorted(by_fold.items())])


def paired(a: list[dict], b: list[dict], key: str = "macro_f1") -> dict:
    """``a - b`` paired by (fold, seed), seeds averaged within each fold, then aggregated over folds."""
    other = {(r["fold"], r["seed"]): r[key] for r in b}
    diffs = [{"fold": r["fold"], "d": r[key] - other[(r["fold"], r["seed"])]} for r in a
             if (r["fold"], r["seed"]) in other]
    return over_folds(diffs, "d")


def expert_summary(runs: list[dict]) -> dict[str, dict]:
    """Per expert format over an MoE arm's runs: how many runs had it, its mean usage and its mean accuracy alone
    on the whole test fold (means over the runs that had it)."""
    by_format: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        for fmt, usage, accuracy in zip(r["formats"], r["usage"], r["expert_accuracy"], strict=True):
            by_format.setdefault(fmt, []).append((usage, accuracy))
    return {fmt: {"runs": len(v), "usage": float(np.mean([u for u, _ in v])),
                  "solo_accuracy": float(np.mean([a for _, a in v]))} for fmt, v in by_format.items()}


def front_single(singles: dict[str, dict], cost: str, budget: float) -> str | None:
    """The single format with the best mean macro-F1 among those whose mean ``cost`` is at most ``budget``."""
    fits = [name for name, s in singles.items() if s[cost]["mean"] <= budget]
    return max(fits, key=lambda name: singles[name]["macro_f1"]["mean"]) if fits else None


KEYS = ("macro_f1", "accuracy", "active_bytes", "stored_bytes", "macs", "train_seconds",
        "routes_changed_by_curiosity", "routes_changed_vs_constant_u")


def summarise(records: list[dict], arms: list[Arm]) -> dict:
    """Per arm: aggregates of ``KEYS``, paired differences against the plain MoE and every single format, and
    its position against the single-format fronts (active bytes, MACs)."""
    by_arm: dict[str, list[dict]] = {}
    for r in records:
        by_arm.setdefault(r["arm"], []).append(r)
    summary = {name: {"kind": runs[0]["kind"], "sweep": runs[0]["sweep"], "measure": runs[0]["measure"],
                      "alpha": runs[0]["alpha"], "n_runs": len(runs), **{k: over_folds(runs, k) for k in KEYS}}
               for name, runs in by_arm.items()}
    singles = {n: s for n, s in summary.items() if s["kind"] == "single"}
    for name, s in summary.items():
        if s["kind"] == "single":
            continue
        runs = by_arm[name]
        s["experts"] = expert_summary(runs)
        s["vs_plain_moe"] = paired(runs, by_arm[PLAIN]) if name != PLAIN else None
        s["vs_single"] = {single: paired(runs, by_arm[single]) for single in singles}
        for cost in ("active_bytes", "macs"):
            best = front_single(singles, cost, s[cost]["mean"])
            s[f"front_{cost}"] = {"single": best, "margin": paired(runs, by_arm[best]) if best else None}
    return summary


def above_front(s: dict, cost: str) -> str:
    """Where an MoE arm lies against one front: ``above|below <single> by <margin> ± <CI>``, flagged when the
    interval excludes 0."""
    front = s[f"front_{cost}"]
    if front["single"] is None:
        return "cheaper than every single format"
    m = front["margin"]
    if m["mean"] is None:
        return "n/a"
    sure = m["ci95"] is not None and abs(m["mean"]) > m["ci95"]
    ci = "" if m["ci95"] is None else f" ± {m['ci95']:.4f}"
    side = "above" if m["mean"] > 0 else "below"
    return f"{side} {front['single']} by {abs(m['mean']):.4f}{ci}{' (CI excludes 0)' if sure else ''}"


def tables(summary: dict) -> str:
    """The markdown tables: every arm, then each MoE arm's paired difference against every single format."""
    def routes(s: dict, key: str) -> str:
        return "-" if s[key]["mean"] is None else f"{100 * s[key]['mean']:.1f}%"

    rows = []
    for name, s in summary.items():
        moe = s["kind"] != "single"
        rows.append([
            name, fmt_ci(s["macro_f1"]), f"{s['active_bytes']['mean']:,.0f}", f"{s['stored_bytes']['mean']:,.0f}",
            f"{s['macs']['mean']:,.0f}", routes(s, "routes_changed_by_curiosity"),
            routes(s, "routes_changed_vs_constant_u"),
            fmt_ci(s["vs_plain_moe"]) if moe and s["vs_plain_moe"] else "-",
            above_front(s, "active_bytes") if moe else "-", above_front(s, "macs") if moe else "-",
        ])
    main = markdown_table(["arm", "macro-F1", "active bytes", "stored bytes", "MACs/sample", "routes changed",
                           "vs constant u", "Δ vs plain MoE", "vs active-bytes front", "vs MACs front"], rows)
    singles = [n for n, s in summary.items() if s["kind"] == "single"]
    pair_rows = [[name, *(fmt_ci(s["vs_single"][x], 3) for x in singles)]
                 for name, s in summary.items() if s["kind"] != "single"]
    pairs = markdown_table(["MoE arm", *(f"− {x}" for x in singles)], pair_rows)
    return f"{main}\nPaired macro-F1 differences (MoE arm − single format, by fold and seed):\n\n{pairs}"


COLOURS = dict(zip(MEASURES, ("tab:red", "tab:green", "tab:purple"), strict=True))
MARKERS = ("s", "D", "P", "X", "v", "<", ">", "h")
OTHER_COLOURS = ("k", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:orange", "tab:gray", "navy")


def panel(ax, summary: dict, cost: str, label: str) -> None:
    """One panel: macro-F1 (mean ± 95 % CI over folds) against ``cost`` (log x) for every arm, and the
    single-format front as a step line."""
    def point(s: dict, **style) -> None:
        ax.errorbar(s[cost]["mean"], s["macro_f1"]["mean"], yerr=s["macro_f1"]["ci95"] or 0, capsize=3, **style)

    singles = {n: s for n, s in summary.items() if s["kind"] == "single"}
    for name, s in singles.items():
        point(s, fmt="o", color="tab:blue")
        ax.annotate(name, (s[cost]["mean"], s["macro_f1"]["mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8, color="tab:blue")
    order = sorted(singles.values(), key=lambda s: s[cost]["mean"])
    best = list(np.maximum.accumulate([s["macro_f1"]["mean"] for s in order]))
    right = max(s[cost]["mean"] for s in summary.values())
    ax.step([s[cost]["mean"] for s in order] + [right], best + best[-1:], where="post", color="tab:blue", alpha=0.4,
            label="single-format front")
    others = [name for name, s in summary.items() if s["kind"] != "single" and not s["sweep"]]
    for name, marker, colour in zip(others, MARKERS, OTHER_COLOURS, strict=False):
        point(summary[name], fmt=marker, color=colour, label=f"MoE: {name}")
    for j, (measure, colour) in enumerate(COLOURS.items()):
        arms = sorted((s for s in summary.values() if s["sweep"] and s["measure"] == measure), key=lambda s: s["alpha"])
        if not arms:
            continue
        ax.plot([s[cost]["mean"] for s in arms], [s["macro_f1"]["mean"] for s in arms], "-", alpha=0.5,
                color=colour)
        for i, s in enumerate(arms):
            point(s, fmt="^", color=colour, label=f"curiosity: {measure}" if i == 0 else None)
            ax.annotate(f"α={s['alpha']:g}", (s[cost]["mean"], s["macro_f1"]["mean"]), textcoords="offset points",
                        xytext=(5, -12 - 8 * j), fontsize=7, color=colour)
    if cost == "active_bytes":
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", style="plain")
    ax.set_xlabel(label)
    ax.set_ylabel("macro-F1 (mean ± 95 % CI over folds)")
    ax.grid(alpha=0.3)


def plot(summary: dict, title: str):
    """Macro-F1 against mean active bytes and against MACs per sample, every arm on the same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panel(axes[0], summary, "active_bytes", "mean active bytes per sample (log)")
    panel(axes[1], summary, "macs", "MACs per sample")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def moe_curiosity(cfg: MoECuriosityConfig) -> dict:
    """Run (or resume, with ``bench.resume``) every arm, then aggregate, tabulate and plot."""
    cfg.validate()
    arms = plan(cfg)
    ds = load_dataset(cfg.bench)
    folds = [f.k for f in make_folds(ds, cfg.bench.cv.folds, cfg.bench.cv.n_folds, seed=cfg.bench.seed)]
    macs = mlp_macs(ds.n_features, list(cfg.bench.model.hidden), ds.n_classes)
    wall = {}
    start = time.perf_counter()
    for i, arm in enumerate(arms, 1):
        log.info("moe-curiosity: arm %d/%d %s (%s)", i, len(arms), arm.name, ", ".join(arm.models))
        t0 = time.perf_counter()
        run_benchmark(arm.bench)
        wall[arm.name] = time.perf_counter() - t0
    total = time.perf_counter() - start
    records = [r for arm in arms for r in read_records(arm, folds, macs)]
    summary = summarise(records, arms)
    table_name = cfg.bench.data.path or "bundled FSDD table"
    seeds = len(cfg.bench.seed_list())
    title = f"{cfg.tag}: {table_name} ({len(folds)} folds x {seeds} seed{'s' if seeds > 1 else ''})"
    table = f"### moe-curiosity ({title})\n\n{tables(summary)}"
    results = {"study": "moe-curiosity", "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
               "folds": folds, "seeds": cfg.bench.seed_list(), "wall_seconds": {"total": total, "arms": wall},
               "records": records, "summary": summary}
    out = cfg.out
    write_json(out / "results.json", results)
    write_text(out / "table.md", table)
    save_figure(plot(summary, title), out / "plot.png", dpi=110, bbox_inches="tight")
    return results
