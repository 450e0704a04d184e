"""Command-line options generated from the benchmark's schema (``BenchConfig``), so that ``qwave train``,
``qwave study`` and ``qwave bench`` share one set of defaults: a flag stands for a dotted key, its type and default
read from ``BenchConfig()``; ``key=value`` overrides reach every other key, as on ``qwave bench``."""

from __future__ import annotations

import argparse
import typing

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qwave.bench.config import BenchConfig, validate
from qwave.errors import ConfigError

# (flag, dotted key, help, choices)
MODEL_OPTIONS = (
    ("--hidden", "model.hidden", "hidden layer widths", None),
    ("--dropout", "model.dropout", "dropout after each hidden layer", None),
    ("--normalize", "data.normalize", "normalisation fitted on the fit rows", ("raw", "standard", "l2", "min_max")),
)
TRAIN_OPTIONS = (
    ("--epochs", "train.epochs", "most training epochs", None),
    ("--patience", "train.patience", "early stopping: epochs without a better inner-validation macro-F1", None),
    ("--batch-size", "train.batch_size", "training batch size", None),
    ("--lr", "train.lr", "AdamW learning rate", None),
    ("--val-fraction", "cv.val_fraction", "inner validation split for early stopping", None),
)
DEVICE_OPTION = ("--device", "device", "where to train", ("auto", "cpu", "cuda"))


def default(key: str):
    """The default of a dotted key of ``BenchConfig`` (``train.epochs`` -> 100)."""
    value = BenchConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def value_type(key: str) -> type:
    """The type of a dotted key's values, from its annotation (``model.group_size: int | None`` -> int)."""
    parent, _, name = key.rpartition(".")
    hint = typing.get_type_hints(type(default(parent) if parent else BenchConfig()))[name]
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def add_config_options(parser: argparse.ArgumentParser, options: tuple, overrides: bool = False) -> None:
    """One flag per option (a list key takes several values, a boolean one is a switch); with ``overrides``,
    positional ``key=value`` overrides of any benchmark key."""
    for flag, key, text, choices in options:
        value = default(key)
        text = f"{text} ({key}; default {value})"
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_false" if value else "store_true", help=text)
        elif isinstance(value, list):
            parser.add_argument(flag, type=type(value[0]), nargs="+", default=list(value), help=text)
        else:
            kind = type(value) if value is not None else value_type(key)
            parser.add_argument(flag, type=kind, default=value, choices=choices, help=text)
    if overrides:
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="any qwave bench key, e.g. train.weight_decay=0 model.layer_norm=true")


def bench_config(args: argparse.Namespace, options: tuple, **values) -> BenchConfig:
    """``BenchConfig()`` with the options' values, then ``values`` (dotted keys written ``a__b``), then the
    ``key=value`` overrides."""
    conf = OmegaConf.structured(BenchConfig)
    updates = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, key, *_ in options}
    updates.update({key.replace("__", "."): value for key, value in values.items()})
    try:
        for key, value in updates.items():
            OmegaConf.update(conf, key, value, merge=False)
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(getattr(args, "overrides", None) or [])))
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid option: {' '.join(str(err).split())[:300]}") from None


def validated(cfg: BenchConfig, options: tuple) -> BenchConfig:
    """``cfg`` checked by the benchmark's ``validate``; a failure on an option's key names the option's flag too."""
    try:
        validate(cfg)
    except ConfigError as err:
        flag = next((flag for flag, key, *_ in options if str(err).startswith(key)), None)
        if flag is None:
            raise
        raise ConfigError(f"{flag}: {err}") from None
    return cfg
