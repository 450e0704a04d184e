"""Embedding tables, cross-validation folds, normalisation fitted on training rows, class balancing."""

from qwave.data.balance import class_weights
from qwave.data.folds import Fold, inner_split, make_folds
from qwave.data.normalize import Normalize, fit_normalizer
from qwave.data.table import Dataset, TableSpec, load_table

__all__ = [
    "TableSpec", "Dataset", "load_table", "Fold", "make_folds", "inner_split", "Normalize", "fit_normalizer",
    "class_weights",
]
