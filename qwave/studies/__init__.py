"""Quantization studies: real int8 PTQ against FP32, QAT against PTQ at equal budget, and a bit-width sweep.

Each study trains on the table's folds (inner validation split for early stopping, the reported fold never seen),
evaluates the saved and reloaded packed artifacts, and writes ``results.json``, ``table.md`` and ``plot.png``
under ``<output_dir>/<tag>/``.
"""

from qwave.studies.bit_sweep import bit_sweep
from qwave.studies.common import StudyConfig
from qwave.studies.ptq_int8 import ptq_int8
from qwave.studies.qat_vs_ptq import qat_vs_ptq

STUDIES = {"ptq-int8": ptq_int8, "qat-vs-ptq": qat_vs_ptq, "bit-sweep": bit_sweep}

__all__ = ["STUDIES", "StudyConfig", "bit_sweep", "ptq_int8", "qat_vs_ptq"]
