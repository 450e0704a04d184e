"""Dataclass configuration of a benchmark run; registered as the schema of the Hydra config ``bench.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass

from qwave.data.input_quant import INPUT_QUANT_MODES
from qwave.data.normalize import Normalize
from qwave.data.table import AUTO
from qwave.errors import ConfigError
from qwave.moe.config import MoEConfig
from qwave.settings import SEED_MAX, need_choice, need_float, need_int, need_name
from qwave.train import TrainConfig

DEFAULT_MODELS = ["fp32", "8", "4", "bitnet", "1"]


@dataclass
class DataConfig:
    """Which table to read and which columns play which role.

    ``path`` None: the bundled ESC-50 table; ``bundled:fsdd`` etc.: another bundled table. ``fold`` / ``group``
    / ``id``: a column name (it must exist), ``auto`` (the column ``fold`` / ``group`` / ``name`` when the table
    has one; else stratified folds, no groups, row numbers) or None (not used).
    """

    path: str | None = None
    label: str = "label"
    fold: str | None = AUTO
    group: str | None = AUTO
    id: str | None = AUTO
    features: list[str] | None = None
    drop: list[str] = field(default_factory=list)
    normalize: str = "standard"
    input_quant: str = "float32"


@dataclass
class CVConfig:
    """``folds``: official (from the fold column), stratified (seeded, grouped when a group column exists), auto."""

    folds: str = "auto"
    n_folds: int = 5
    val_fraction: float = 0.15


@dataclass
class ModelConfig:
    """Classifier shape and quantization policy shared by every single model.

    ``layer_formats`` gives every linear layer its own format (mixed precision; a model name such as ``1-1-8``
    does the same per model). ``ptq_min_agreement`` is the PTQ gate: a ``ptq*`` model whose top-1 agreement with
    its FP32 model on the calibration rows falls below it is reported with a warning, or refused when
    ``ptq_strict``. ``activation``: ``relu``, ``hardtanh``, or ``auto`` (hardtanh where a layer binarises or
    ternarises its input, whose sign of a ReLU output would be constant). ``weight_only``: integer and ternary
    formats keep float activations (their ``activations="float"`` option) instead of their default per-row int8
    activations (W4A8, W2A8, W1.58A8).
    """

    hidden: list[int] = field(default_factory=lambda: [640, 320])
    dropout: float = 0.3
    layer_norm: bool = False
    keep_last_fp: bool = False
    group_size: int | None = None
    weight_only: bool = False
    layer_formats: list[str] | None = None
    activation: str = "auto"
    ptq_min_agreement: float = 0.9
    ptq_strict: bool = False


@dataclass
class BenchConfig:
    """A benchmark: models x seeds x folds on one table, written under ``output_dir/tag``."""

    tag: str = "default"
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    seed: int = 0
    seeds: list[int] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    device: str = "auto"
    threads: int | None = None
    output_dir: str = "outputs"
    resume: bool = False
    quiet: bool = False
    save_artifacts: bool = True
    plots: bool = True
    energy: bool = False

    def seed_list(self) -> list[int]:
        """The seeds to run: ``seeds`` when given, else the single ``seed``."""
        return list(self.seeds) if self.seeds else [self.seed]


def config_keys(schema: type = BenchConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the benchmark's schema (``train.epochs``, ``moe.curiosity.alpha``, ...), nodes included."""
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if kind is not None and is_dataclass(kind):
            keys += config_keys(kind, f"{key}.")
    return keys


def validate(cfg: BenchConfig) -> None:
    """Every value of a benchmark configuration a run would hand to torch, numpy or the file system, checked at
    once (before any output is written or any job trains), each failure one line naming the key."""
    need_name("tag", cfg.tag, ConfigError)
    need_int("seed", cfg.seed, 0, SEED_MAX, ConfigError)
    for i, seed in enumerate(cfg.seeds or []):
        need_int(f"seeds[{i}]", seed, 0, SEED_MAX, ConfigError)
    if cfg.seeds and len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds={list(cfg.seeds)} names a seed twice")
    if cfg.threads is not None:
        need_int("threads", cfg.threads, 1, 4096, ConfigError)
    need_choice("device", cfg.device, ("auto", "cpu", "cuda"), ConfigError)
    _validate_models(cfg)
    d = cfg.data
    roles = {"label": d.label, "fold": d.fold, "group": d.group, "id": d.id}
    for name in d.drop:
        role = next((r for r, column in roles.items() if column == name), None)
        if role is not None:
            raise ConfigError(f"data.drop={list(d.drop)} drops {name!r}, the {role} column (data.{role})")
    need_choice("data.normalize", d.normalize, Normalize.MODES, ConfigError)
    need_choice("data.input_quant", d.input_quant, INPUT_QUANT_MODES, ConfigError)
    need_choice("cv.folds", cfg.cv.folds, ("auto", "official", "stratified"), ConfigError)
    need_int("cv.n_folds", cfg.cv.n_folds, 2, error=ConfigError)
    need_float("cv.val_fraction", cfg.cv.val_fraction, 0.0, 1.0, low_open=True, high_open=True, error=ConfigError)
    m = cfg.model
    for i, width in enumerate(m.hidden):
        need_int(f"model.hidden[{i}]", width, 1, 1 << 20, ConfigError)
    need_float("model.dropout", m.dropout, 0.0, 1.0, high_open=True, error=ConfigError)
    if m.group_size is not None:
        need_int("model.group_size", m.group_size, 1, error=ConfigError)
    need_choice("model.activation", m.activation, ("auto", "relu", "hardtanh"), ConfigError)
    need_float("model.ptq_min_agreement", m.ptq_min_agreement, 0.0, 1.0, error=ConfigError)
    cfg.train.validate()


def _validate_models(cfg: BenchConfig) -> None:
    """Every model name resolves to a model kind, none twice; the MoE settings when a moe model is listed."""
    from qwave.bench.models import resolve_kind

    if not cfg.models:
        raise ConfigError("models is empty; name at least one model, e.g. models=[fp32]")
    kinds = [resolve_kind(name) for name in cfg.models]
    names = [kind.name for kind in kinds]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"models={list(cfg.models)} names {', '.join(twice)} more than once")
    if any(kind.method == "moe" for kind in kinds):
        cfg.moe.validate()
