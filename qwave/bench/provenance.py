"""Which run wrote a fold, so a tag never mixes runs.

* Every fold's ``metrics.json`` carries a **fingerprint** of the resolved configuration that produced it: the data
  file's content (sha256 and size of the bytes that were parsed), the columns used, the model kind and its
  options, training, the folds (mode, count, seed, and the exact test rows of this fold) and the seed. Settings
  that do not change the result (device, threads, plots, paths of the outputs) are left out.
* ``resume=true`` skips a fold only when its recorded fingerprint equals the planned one, and otherwise says what
  differs and trains it again.
* Summaries count only the jobs of the current plan, after checking that each of their ``metrics.json`` still
  holds this plan's fingerprint.
* One writer per tag: a plain run holds an exclusive lock on ``<tag>/.lock``; the jobs of one Hydra multirun hold
  it shared (they write different folds), and every job also holds an exclusive lock on its own fold directory.
  A run also holds a shared lock on the ``.lock`` of every tag folder above its own, so ``output_dir=<out>/<tag>``
  cannot write inside a live plain run's tag, nor a plain run start on a tag a nested run is writing in.
  A second writer is refused at once with one line. The locks are ``flock`` locks, released by the system when a
  process dies, so an interrupted run never leaves a tag locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qwave.errors import ConfigError, QwaveError

log = logging.getLogger(__name__)

LOCK = ".lock"  # in the tag directory
JOB_LOCK = ".writing"  # in a fold directory while its job runs


def file_identity(ds) -> dict:
    """Size and sha256 of the table's bytes as they were read and parsed into ``ds`` (never read again, so a
    file rewritten meanwhile cannot lend the run another version's identity)."""
    return {"bytes": int(ds.file_bytes), "sha256": ds.file_sha256}


def job_config(cfg, ds, data_file: dict, kind, fold, seed: int) -> dict:
    """What determines one job's result (``cfg``: the BenchConfig, ``ds``: the loaded table, ``data_file``:
    ``file_identity`` of the table, ``kind``: the ModelKind, ``fold``: the Fold)."""
    test_rows = hashlib.sha256(np.ascontiguousarray(fold.test, dtype=np.int64).tobytes()).hexdigest()
    data = asdict(cfg.data)
    data.pop("path")
    record = {
        "data": {**data_file, **data, "columns_used": {"features": list(ds.feature_names)}},
        "model": {"name": kind.name, "method": kind.method, **asdict(cfg.model)},
        "train": asdict(cfg.train),
        "cv": {**asdict(cfg.cv), "split_seed": cfg.seed, "fold": int(fold.k), "test_rows_sha256": test_rows},
        "seed": int(seed),
    }
    if kind.method == "moe":
        record["moe"] = asdict(cfg.moe)
    return record


def fingerprint(config: dict) -> dict:
    """``{"sha256": digest of the canonical JSON of config, "config": config}``, as stored in metrics.json."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "config": config}


def _flat(value, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix.rstrip("."): value}
    return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}


def differences(old: dict, new: dict, limit: int = 4) -> str:
    """``train.epochs: 100 -> 3; data.sha256: 1a2b.. -> 9f8e..`` for the first ``limit`` differing settings."""
    a, b = _flat(old), _flat(new)
    changed = [k for k in sorted(a.keys() | b.keys()) if a.get(k, "absent") != b.get(k, "absent")]

    def show(v) -> str:
        text = json.dumps(v, default=str) if not isinstance(v, str) else v
        return text if len(text) <= 24 else text[:10] + ".."

    parts = [f"{k}: {show(a.get(k, 'absent'))} -> {show(b.get(k, 'absent'))}" for k in changed[:limit]]
    return "; ".join(parts) + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def recorded(out_dir: Path) -> dict | None:
    """The metrics record a fold directory holds, or None when it has none (or an unreadable one)."""
    path = Path(out_dir) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resumable(out_dir: Path, planned: dict, label: str) -> bool:
    """True when the fold's metrics.json was made by exactly the planned job; otherwise say why it is rerun."""
    record = recorded(out_dir)
    if record is None:
        return False
    old = record.get("fingerprint") or {}
    if old.get("sha256") == planned["sha256"]:
        return True
    why = differences(old.get("config") or {}, planned["config"]) if old else "it records no fingerprint"
    log.warning("%s: not resumed, its metrics.json was made by another configuration (%s); training it again",
                label, why)
    return False


def plan_records(entries: list[tuple[Path, str]]) -> list[dict]:
    """The metrics records of a plan's jobs (fold directory, fingerprint sha256), each checked to be this plan's."""
    records = []
    for out_dir, sha in entries:
        record = recorded(out_dir)
        if record is None or (record.get("fingerprint") or {}).get("sha256") != sha:
            raise QwaveError(f"{out_dir}/metrics.json is missing or was written by another run during this one; "
                             "run the benchmark again (one writer per tag)")
        records.append(record)
    return records


@contextmanager
def _flock(path: Path, mode: int, busy: str) -> Iterator[int]:
    """Hold ``flock(mode)`` on ``path`` (created if needed) or raise ConfigError(busy) at once if it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            raise ConfigError(busy + (f" ({holder})" if holder else "")) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not removed by its previous holder between our open and our lock
            break
        os.close(fd)
    try:
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        yield fd
    finally:
        os.close(fd)


@contextmanager
def tag_lock(root: Path, shared: bool = False) -> Iterator[None]:
    """One writer per tag: exclusive for a plain run, shared by the jobs of one multirun (``shared``)."""
    busy = (f"{root} is being written by another qwave bench; wait for it to finish or use another tag "
            "(tag=...)")
    root = Path(root).absolute()
    with ExitStack() as stack:
        for parent in root.parents:
            if (parent / LOCK).is_file():
                stack.enter_context(_flock(parent / LOCK, fcntl.LOCK_SH,
                                           f"{root} lies inside {parent}, which another qwave bench is writing; "
                                           "choose an output_dir outside it"))
        stack.enter_context(_flock(root / LOCK, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, busy))
        yield


@contextmanager
def job_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on one fold directory while its job runs (removed afterwards)."""
    path = Path(out_dir) / JOB_LOCK
    busy = f"{out_dir} is being written by another qwave bench; use another tag (tag=...)"
    with _flock(path, fcntl.LOCK_EX, busy):
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def plan_entries(jobs) -> list[dict]:
    """The plan as JSON data: one ``{"model", "dir", "fingerprint"}`` per job (for a multirun's gather)."""
    return [{"model": job.kind.name, "dir": str(job.out_dir), "fingerprint": job.fingerprint["sha256"]}
            for job in jobs]


def summarize_plan(root: Path, entries: list[dict]) -> list[dict]:
    """Model summaries and ``<root>/summary.csv`` from exactly the plan's jobs; returns the table rows."""
    from qwave.bench.summary import summarize_model, write_tag_summary

    models: dict[str, list[tuple[Path, str]]] = {}
    for entry in entries:
        models.setdefault(entry["model"], []).append((Path(entry["dir"]), entry["fingerprint"]))
    for name, jobs in models.items():
        summarize_model(Path(root) / name, plan_records(jobs))
    return write_tag_summary(Path(root), models=list(models))
