"""Command-line options generated from the benchmark's configuration (``BenchConfig``), so that ``qwave train``,
``qwave study`` and ``qwave bench`` share one set of defaults: each option is a dotted key of the schema, its
default read from ``BenchConfig()``, and ``key=value`` overrides reach every other key (``train.weight_decay=0``,
``model.group_size=64``, ...), as on ``qwave bench``'s command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qwave.bench.config import BenchConfig
from qwave.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """A command-line flag standing for one dotted key of ``BenchConfig``."""

    flag: str
    key: str
    help: str
    choices: tuple[str, ...] | None = None


MODEL_OPTIONS = (
    Option("--hidden", "model.hidden", "hidden layer widths"),
    Option("--dropout", "model.dropout", "dropout after each hidden layer"),
    Option("--normalize", "data.normalize", "input normalisation fitted on the fit rows",
           ("raw", "standard", "l2", "min_max")),
)
TRAIN_OPTIONS = (
    Option("--epochs", "train.epochs", "most training epochs"),
    Option("--patience", "train.patience", "early stopping: epochs without a better inner-validation macro-F1"),
    Option("--batch-size", "train.batch_size", "training batch size"),
    Option("--lr", "train.lr", "AdamW learning rate"),
    Option("--val-fraction", "cv.val_fraction", "inner validation split for early stopping"),
)
DEVICE_OPTION = Option("--device", "device", "where to train", ("auto", "cpu", "cuda"))


def default(key: str):
    """The default of a dotted key of ``BenchConfig`` (``train.epochs`` -> 100)."""
    value = BenchConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def add_config_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """One flag per option, typed and defaulted by the schema (a list key takes several values, a boolean key is
    a switch)."""
    for opt in options:
        value = default(opt.key)
        text = f"{opt.help} ({opt.key}; default {value})"
        if isinstance(value, bool):
            parser.add_argument(opt.flag, action="store_false" if value else "store_true", help=text)
        elif isinstance(value, list):
            parser.add_argument(opt.flag, type=type(value[0]), nargs="+", default=list(value), help=text)
        else:
            parser.add_argument(opt.flag, type=type(value), default=value, choices=opt.choices, help=text)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Positional ``key=value`` overrides of any benchmark key."""
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="any qwave bench key, e.g. train.weight_decay=0 model.layer_norm=true")


def bench_config(args: argparse.Namespace, options: tuple[Option, ...], **values) -> BenchConfig:
    """``BenchConfig()`` with the options' values, then ``values`` (dotted keys as ``a__b``), then the overrides."""
    conf = OmegaConf.structured(BenchConfig)
    updates = {opt.key: getattr(args, opt.flag.lstrip("-").replace("-", "_")) for opt in options}
    updates.update({key.replace("__", "."): value for key, value in values.items()})
    try:
        for key, value in updates.items():
            OmegaConf.update(conf, key, value, merge=False)
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(getattr(args, "overrides", None) or [])))
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid option: {' '.join(str(err).split())[:300]}") from None
