"""Scale-out run for real: a two-job Hydra sweep through the submitit launcher (the SLURM code path, on this
machine), gathered into one summary at the end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher is not installed: pip install '.[submitit]'")
def test_a_two_job_submitit_sweep_runs_both_jobs_and_gathers_one_summary(separable_table, tmp_path) -> None:
    command = [sys.executable, "-m", "qwave.cli", "bench", "-m", "hydra/launcher=submitit_local",
               "models=[fp32],[8]", f"data.path={separable_table}", "data.group=clip", "model.hidden=[8]",
               "train.epochs=3", "quiet=true", "plots=false", "tag=sweep", f"output_dir={tmp_path / 'out'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    jobs = (tmp_path / "out" / ".multirun" / "sweep" / ".submitit").glob("*/*_0_result.pkl")
    assert len(list(jobs)) == 2  # each job went through submitit: its own process, pickled result and logs
    root = tmp_path / "out" / "sweep"
    summary = pd.read_csv(root / "summary.csv").set_index("model")
    assert sorted(summary.index.astype(str)) == ["8", "fp32"] and summary["runs"].eq(3).all()
    for model in ("fp32", "8"):
        folds = [json.loads(p.read_text()) for p in sorted((root / model).glob("fold_*/metrics.json"))]
        assert [r["fold"] for r in folds] == [1, 2, 3]
        assert np.isclose(summary.loc[model, "macro_f1_mean"], np.mean([r["macro_f1"] for r in folds]))
    assert (root / "report.md").is_file() and (root / "pareto.png").is_file()
    assert "qwave bench (multirun)" in done.stdout
