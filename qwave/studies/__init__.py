"""Quantization studies: real int8 PTQ against FP32, QAT against PTQ at equal budget, a bit-width sweep, and
whether the MoE's curiosity routing buys accuracy per byte (``moe-curiosity``, built on ``qwave bench`` runs).

Each study trains on the table's folds (inner validation split for early stopping, the reported fold never seen),
evaluates the saved and reloaded packed artifacts, and writes ``results.json``, ``table.md`` and ``plot.png``
under ``<output_dir>/<tag>/``.
"""

from qwave.studies.bit_sweep import bit_sweep
from qwave.studies.common import StudyConfig
from qwave.studies.moe_curiosity import MoECuriosityConfig, moe_curiosity
from qwave.studies.ptq_int8 import ptq_int8
from qwave.studies.qat_vs_ptq import qat_vs_ptq

__all__ = ["MoECuriosityConfig", "StudyConfig", "bit_sweep", "moe_curiosity", "ptq_int8", "qat_vs_ptq"]
