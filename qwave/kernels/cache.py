"""Where numba keeps the compiled kernels between processes (``cache=True``), chosen before any kernel is defined.

Compiling every kernel variant a CPU uses takes tens of seconds; loading them from the cache takes well under a
second. numba caches next to the source (``qwave/kernels/__pycache__``) when that folder is writable. For an
install a user cannot write to (a system or shared site-packages), qwave points numba at a per-user folder,
``$XDG_CACHE_HOME/qwave/numba`` (default ``~/.cache/qwave/numba``), so the first run compiles once and every later
run loads. ``NUMBA_CACHE_DIR``, when set, is the user's choice and always wins.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made and a file can be written in it (numba's own test)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/qwave/numba``, or ``~/.cache/qwave/numba`` when ``XDG_CACHE_HOME`` is unset or empty."""
    base = environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path(environ.get("HOME", "~")).expanduser() / ".cache") / "qwave" / "numba"


def choose_cache_dir(environ: Mapping[str, str], package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The folder to give numba as ``NUMBA_CACHE_DIR``, or ``None`` to keep numba's in-tree ``__pycache__``."""
    chosen = environ.get("NUMBA_CACHE_DIR", "").strip()
    if chosen:
        return Path(chosen)
    if writable(package_dir / "__pycache__"):
        return None
    return user_cache_dir(environ)


def configure() -> Path:
    """Point numba's cache at ``choose_cache_dir(os.environ)`` and return where the compiled kernels go. Call it
    before the kernel modules are imported (numba picks a function's cache folder when it is decorated); child
    processes inherit the choice through ``NUMBA_CACHE_DIR``."""
    folder = choose_cache_dir(os.environ)
    if folder is None:
        return PACKAGE_DIR / "__pycache__"
    from numba.core import config

    os.environ["NUMBA_CACHE_DIR"] = config.CACHE_DIR = str(folder)
    return folder
