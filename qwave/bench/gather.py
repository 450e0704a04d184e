"""Gathering results of several jobs (a Hydra multirun or separate runs) into one summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qwave.bench.overview import write_overview
from qwave.bench.summary import print_table, write_tag_summary


class GatherCallback(Callback):
    """After a multirun, rebuild ``<output_dir>/<tag>/summary.csv`` from every job's model summaries."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.output_dir) / config.tag
        if root.exists():
            rows = write_tag_summary(root)
            write_overview(root, rows)
            print_table(rows, f"qwave bench (multirun) {root}")
