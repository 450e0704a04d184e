"""The cross-validation benchmark: configs, model kinds, the runner, per-fold outputs and summaries."""
