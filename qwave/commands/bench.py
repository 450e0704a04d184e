"""``qwave bench``: the cross-validated benchmark, configured with Hydra (overrides, multirun, launchers)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qwave.bench.config import BenchConfig
from qwave.bench.gather import PLAN
from qwave.errors import QwaveError

ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


@hydra.main(version_base=None, config_path="../conf", config_name="bench")
def _bench(config: DictConfig) -> None:
    from qwave.bench.runner import run_benchmark
    from qwave.bench.summary import print_table

    cfg: BenchConfig = OmegaConf.to_object(config)
    logging.getLogger("qwave").setLevel(logging.WARNING if cfg.quiet else logging.INFO)
    hydra_cfg = HydraConfig.get()
    sweep_plan = Path(hydra_cfg.runtime.output_dir) / PLAN if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        rows = run_benchmark(cfg, sweep_plan)
    except QwaveError as err:
        print(f"qwave bench: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(rows, f"qwave bench: {cfg.output_dir}/{cfg.tag}")
    print(f"report: {cfg.output_dir}/{cfg.tag}/report.md and pareto.png (macro-F1 against size and latency)")


def run(argv: list[str]) -> int:
    """Hand the arguments to Hydra exactly as if ``qwave bench`` were its own script."""
    sys.argv = ["qwave bench", *argv]
    _bench()
    return 0
