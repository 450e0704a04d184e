"""Gathering results of several jobs (a Hydra multirun or separate runs) into one summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qwave.bench.overview import write_overview
from qwave.bench.provenance import summarize_plan
from qwave.bench.summary import print_table

PLAN = "plan.json"  # written by each job of a multirun into its Hydra job directory


class GatherCallback(Callback):
    """After a multirun, rebuild the model summaries and ``<output_dir>/<tag>/summary.csv`` from the jobs of this
    sweep (their plans), so folds left under the tag by earlier runs never count."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for stale in Path(config.hydra.sweep.dir).glob(f"*/{PLAN}"):
            stale.unlink()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        plans = [json.loads(p.read_text()) for p in sorted(Path(config.hydra.sweep.dir).glob(f"*/{PLAN}"))]
        by_root: dict[str, list[dict]] = {}
        for plan in plans:
            by_root.setdefault(plan["root"], []).extend(plan["jobs"])
        for root, entries in by_root.items():
            rows = summarize_plan(Path(root), entries)
            write_overview(Path(root), rows)
            print_table(rows, f"qwave bench (multirun) {root}")
