"""Atomic file writes: every output goes to a temporary name in the same folder and is renamed into place.

An interrupted run therefore leaves either the previous file or the complete new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qwave.errors import ConfigError


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp creates 0600; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(target: str | Path, option: str, directory: bool = False) -> None:
    """Fail now, in one line naming ``option``, when ``target`` (a file, or a folder with ``directory``) could not
    be written: checked before the work whose result it receives, not after. Creates the folder if needed."""
    target = Path(target)
    if directory and target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {target} is a file, not a folder")
    if not directory and target.is_dir():
        raise ConfigError(f"{option} {target} is a folder; give a file name")
    folder = target if directory else target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".qwave-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{option} {target}: cannot write there ({err.strerror or err})") from None


@contextmanager
def atomic_dir(target: Path):
    """A new folder beside ``target`` to fill: when the block ends it replaces ``target`` (the old folder removed only
    after the rename); on any error it is removed and ``target`` stays as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def umask() -> int:
    """The process umask (``os.umask`` can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (NaN becomes null) to ``path`` atomically."""
    write_text(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_csv`` or ``fig.savefig``) and rename its file to ``path``."""
    with atomic_path(path, suffix=suffix or Path(path).suffix) as tmp:
        writer(tmp)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value
