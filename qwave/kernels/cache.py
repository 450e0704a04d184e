"""Where numba keeps the compiled kernels between processes (``cache=True``), chosen before any kernel is defined.

Compiling every kernel variant a CPU uses takes tens of seconds; loading them from the cache takes well under a
second. The compiled kernels go next to the source (``qwave/kernels/__pycache__/numba-<digest>``) when that folder is
writable; for an install a user cannot write to (a system or shared site-packages), to a per-user folder,
``$XDG_CACHE_HOME/qwave/numba/<digest>`` (default ``~/.cache/qwave``). ``<digest>`` is a hash of the kernel
sources: numba invalidates a cached function only when its own file changes, not when a jitted function it calls
from another file does, so a cache kept across an upgrade or an edit could run machine code built against the old
callee (seen as segfaults). A folder per source digest makes every change of the kernels compile afresh.
``NUMBA_CACHE_DIR``, when set, is the user's choice and always wins (used as it is).

Several processes may compile into one folder at once (``qwave doctor --jobs``, a multirun's parallel jobs, two
commands on a cold cache). numba names a new entry's data file after the entries its index holds when it reads it,
so two processes adding different entries of one function (two signatures, or the native and the AVX2 target) can
both take ``name.1.nbc``: one index then points at the other's machine code, which segfaults when loaded (seen in
this project's worktrees). ``serialize_cache_writes`` makes each save (read the index, pick the name, write the index
and the data) hold an exclusive lock on the folder's ``.qwave-lock``.

numba names a function's machine code after its qualified name, argument types and a counter of the process that
compiled it. Two variants made by one factory (``_driver(wide)``: the same ``_driver.<locals>.gemm``, the same
argument types) compiled in two processes can therefore get one symbol name, and once both are loaded from the
cache into one process, a caller linked against one runs the other (seen: the AVX-512 fp16 chain ran the AVX2 work
items, logits off by 1e5). ``variant(name)`` renames a factory's function per variant before it is jitted.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable)

PACKAGE_DIR = Path(__file__).resolve().parent


def variant(name: str) -> Callable[[F], F]:
    """A decorator (below ``@njit``) giving a factory-made function the qualified name ``<qualname>_<name>``: its
    machine code's symbol and its cache files are then its variant's own (see the module docstring)."""

    def rename(fn: F) -> F:
        fn.__name__, fn.__qualname__ = f"{fn.__name__}_{name}", f"{fn.__qualname__}_{name}"
        return fn

    return rename


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
    serialize_cache_writes()
    return folder


LOCK_NAME = ".qwave-lock"


def serialize_cache_writes() -> bool:
    """Make every numba cache save exclusive between processes and threads (an ``flock`` on ``LOCK_NAME`` in the
    entry's folder, held while numba reads its index, names the data file and writes both). Returns whether saves
    are locked: not on a system without ``fcntl`` (Windows), where concurrent cold compiles stay numba's own."""
    if sys.platform == "win32":
        return False
    import fcntl

    from numba.core.caching import IndexDataCacheFile

    save = IndexDataCacheFile.save
    if getattr(save, "locked", False):
        return True

    def locked_save(self, key, data) -> None:
        os.makedirs(self._cache_path, exist_ok=True)
        with open(os.path.join(self._cache_path, LOCK_NAME), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                save(self, key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    locked_save.locked = True
    locked_save.__wrapped__ = save
    IndexDataCacheFile.save = locked_save
    return True
