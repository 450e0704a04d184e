"""Where numba keeps the compiled kernels between processes (``cache=True``), chosen before any kernel is defined.

Compiling every kernel variant a CPU uses takes tens of seconds; loading them from the cache takes well under a
second. The compiled kernels go next to the source (``qwave/kernels/__pycache__/numba-<digest>``) when that folder is
writable; for an install a user cannot write to (a system or shared site-packages), to a per-user folder,
``$XDG_CACHE_HOME/qwave/numba/<digest>`` (default ``~/.cache/qwave``). ``<digest>`` is a hash of the kernel
sources: numba invalidates a cached function only when its own file changes, not when a jitted function it calls
from another file does, so a cache kept across an upgrade or an edit could run machine code built against the old
callee (seen as segfaults). A folder per source digest makes every change of the kernels compile afresh.
``NUMBA_CACHE_DIR``, when set, is the user's choice and always wins (used as it is).
"""

from __future__ import annotations

import hashlib
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


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """16 hex digits of the sha256 over the kernel sources (every ``*.py`` of ``package_dir``, names and bytes)."""
    digest = hashlib.sha256()
    for source in sorted(package_dir.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/qwave/numba``, or ``~/.cache/qwave/numba`` when ``XDG_CACHE_HOME`` is unset or empty."""
    base = environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path(environ.get("HOME", "~")).expanduser() / ".cache") / "qwave" / "numba"


def choose_cache_dir(environ: Mapping[str, str], package_dir: Path = PACKAGE_DIR) -> Path:
    """The folder to give numba as ``NUMBA_CACHE_DIR``: the user's, else one per kernel-source digest in the
    package's ``__pycache__`` when writable, else in the per-user cache."""
    chosen = environ.get("NUMBA_CACHE_DIR", "").strip()
    if chosen:
        return Path(chosen)
    digest = source_digest(package_dir)
    if writable(package_dir / "__pycache__"):
        return package_dir / "__pycache__" / f"numba-{digest}"
    return user_cache_dir(environ) / digest


def configure() -> Path:
    """Point numba's cache at ``choose_cache_dir(os.environ)`` and return where the compiled kernels go. Call it
    before the kernel modules are imported (numba picks a function's cache folder when it is decorated); child
    processes inherit the choice through ``NUMBA_CACHE_DIR``."""
    folder = choose_cache_dir(os.environ)
    from numba.core import config

    os.environ["NUMBA_CACHE_DIR"] = config.CACHE_DIR = str(folder)
    return folder
