"""One training loop for every model kind: AdamW, LR schedule, label smoothing, early stopping on inner-val macro-F1.

A model may define ``aux_loss() -> Tensor`` (e.g. a Mixture-of-Experts load-balancing term computed during its
last forward); the loop adds it to the classification loss. Nothing else differs between model kinds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from qwave.data.balance import class_weights
from qwave.errors import ConfigError
from qwave.eval.metrics import macro_f1
from qwave.eval.timing import predict_logits
from qwave.settings import need_float, need_int

SCHEDULES = ("cosine", "constant", "onecycle")
SAMPLERS = ("none", "balanced")


@dataclass
class TrainConfig:
    """Optimiser, schedule and early-stopping settings shared by every model kind."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    patience: int = 30
    class_weights: bool = True
    sampler: str = "none"
    grad_clip: float = 1.0

    def validate(self) -> None:
        """Fail early, naming the option, on values the loop cannot use."""
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"train.sampler={self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need_float("train.lr", self.lr, 0.0, low_open=True, error=ConfigError)
        need_float("train.weight_decay", self.weight_decay, 0.0, error=ConfigError)
        need_float("train.grad_clip", self.grad_clip, 0.0, error=ConfigError)
        need_int("train.warmup_epochs", self.warmup_epochs, 0, error=ConfigError)


@dataclass
class TrainResult:
    """What training did: per-epoch curves, the restored best epoch and its inner-validation score."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_macro_f1: float = float("nan")
    epochs_run: int = 0
    train_seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA device is available; use device=auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not one of auto, cpu, cuda")
    return torch.device(device)


def lr_factor(epoch: float, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at a (fractional) epoch: linear warm-up, then the schedule."""
    if cfg.schedule == "constant":
        return 1.0
    warm = max(cfg.warmup_epochs, 0)
    if warm and epoch < warm:
        return (epoch + 1e-3) / warm
    if cfg.schedule == "onecycle":
        return max(1.0 - (epoch - warm) / max(cfg.epochs - warm, 1), 0.0) + 1e-3
    progress = min((epoch - warm) / max(cfg.epochs - warm, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) + 1e-3


def _batches(n: int, cfg: TrainConfig, y: np.ndarray, gen: torch.Generator) -> list[torch.Tensor]:
    if cfg.sampler == "balanced":
        counts = np.bincount(y)
        weights = torch.as_tensor(1.0 / counts[y], dtype=torch.double)
        order = torch.multinomial(weights, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    return list(order.split(cfg.batch_size))


def train_model(
    model: nn.Module,
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    cfg: TrainConfig,
    seed: int,
    device: torch.device | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train in place on the fit rows; select and restore the epoch with the best macro-F1 on the val rows.

    The val rows come from the training folds (see ``qwave.data.inner_split``); the reported test fold is never
    passed here.
    """
    cfg.validate()
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    Xf = torch.as_tensor(X_fit, dtype=torch.float32, device=device)
    yf = torch.as_tensor(y_fit, dtype=torch.long, device=device)
    Xv = torch.as_tensor(X_val, dtype=torch.float32, device=device)
    weight = class_weights(y_fit, num_classes).to(device) if cfg.class_weights and cfg.sampler == "none" else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    val_criterion = nn.CrossEntropyLoss()
    # The fused AdamW kernel (CPU and CUDA) halves the step time of these small models; same update rule.
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    result = TrainResult()
    best_state, best_f1, stale = None, -1.0, 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        batches = _batches(len(Xf), cfg, y_fit, gen)
        total = 0.0
        for step, idx in enumerate(batches):
            for group in optimiser.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch + step / len(batches), cfg)
            idx = idx.to(device)
            logits = model(Xf[idx])
            loss = criterion(logits, yf[idx])
            aux = getattr(model, "aux_loss", None)
            if callable(aux):
                loss = loss + aux()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        val_logits = predict_logits(model, Xv)
        val_pred = val_logits.argmax(1).cpu().numpy()
        val_f1 = macro_f1(y_val, val_pred)
        val_loss = float(val_criterion(val_logits, torch.as_tensor(y_val, device=device))) if len(y_val) else 0.0
        record = {"epoch": epoch + 1, "train_loss": total / len(Xf), "val_loss": val_loss, "val_macro_f1": val_f1}
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        if val_f1 > best_f1:
            best_f1, stale, result.best_epoch = val_f1, 0, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.best_val_macro_f1 = best_f1
    result.epochs_run = len(result.history)
    result.train_seconds = time.perf_counter() - start
    return result
