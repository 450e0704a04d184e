"""Where numba's compiled kernels are cached: a folder per kernel-source digest in the package's ``__pycache__`` when
it is writable, in a per-user cache folder when it is not, and ``NUMBA_CACHE_DIR`` whenever the user sets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwave.kernels import cache
from qwave.kernels.cache import PACKAGE_DIR, choose_cache_dir, source_digest, user_cache_dir


def _unwritable_package(tmp_path: Path) -> Path:
    """A package folder nobody can create a ``__pycache__`` in, root included: its parent is a regular file."""
    blocker = tmp_path / "site-packages"
    blocker.write_text("a file, not a folder")
    return blocker / "qwave" / "kernels"


def test_a_writable_package_caches_in_tree_in_a_folder_of_its_source_digest(tmp_path):
    package = tmp_path / "qwave" / "kernels"
    package.mkdir(parents=True)
    (package / "int8.py").write_text("x = 1\n")
    folder = choose_cache_dir({"HOME": str(tmp_path / "home")}, package)
    assert folder.parent == package / "__pycache__" and folder.name.startswith("numba-")
    assert (package / "__pycache__").is_dir()


def test_any_change_of_a_kernel_source_moves_the_cache_to_a_new_folder(tmp_path):
    """numba does not invalidate a caller when a jitted callee in another file changes: a new folder must."""
    package = tmp_path / "qwave" / "kernels"
    package.mkdir(parents=True)
    (package / "int8.py").write_text("x = 1\n")
    (package / "_simd.py").write_text("y = 2\n")
    env = {"HOME": str(tmp_path / "home")}
    before = choose_cache_dir(env, package)
    assert choose_cache_dir(env, package) == before
    (package / "_simd.py").write_text("y = 3\n")
    after = choose_cache_dir(env, package)
    (package / "new.py").write_text("")
    assert len({before, after, choose_cache_dir(env, package)}) == 3


def test_an_unwritable_package_caches_under_xdg_cache_home(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    package = _unwritable_package(tmp_path)
    assert choose_cache_dir(env, package) == tmp_path / "xdg" / "qwave" / "numba" / source_digest(package)


def test_without_xdg_cache_home_the_user_cache_is_under_home(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": ""}
    package = _unwritable_package(tmp_path)
    expected = tmp_path / "home" / ".cache" / "qwave" / "numba" / source_digest(package)
    assert choose_cache_dir(env, package) == expected
    assert user_cache_dir({"HOME": "/somewhere"}) == Path("/somewhere/.cache/qwave/numba")


@pytest.mark.parametrize("writable_package", [True, False])
def test_numba_cache_dir_set_by_the_user_always_wins(tmp_path, writable_package):
    package = tmp_path / "qwave" / "kernels" if writable_package else _unwritable_package(tmp_path)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert choose_cache_dir(env, package) == tmp_path / "mine"


def test_the_choice_reaches_numba_before_the_kernels_are_defined(tmp_path):
    """In a fresh process: numba's own config and every kernel's cache locator use the folder qwave reports."""
    code = ("from numba.core import config; from qwave import kernels; from qwave.kernels import act8; "
            "print(config.CACHE_DIR); print(kernels.status()['cache_dir']); "
            "print(act8.quantize_rows._cache._cache_path)")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "mine")}
    env.pop("QWAVE_DISABLE_FAST_KERNELS", None)
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert lines[0] == lines[1] == str(tmp_path / "mine")
    assert lines[2].startswith(str(tmp_path / "mine"))


def test_by_default_the_kernels_cache_in_their_source_digest_folder(tmp_path):
    """In a fresh process without NUMBA_CACHE_DIR (package writable): the kernels' cache locator is in-tree, in the
    folder of the current sources' digest, and child processes inherit it."""
    code = ("import os; from qwave.kernels import act8; print(act8.quantize_rows._cache._cache_path); "
            "print(os.environ['NUMBA_CACHE_DIR'])")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "QWAVE_DISABLE_FAST_KERNELS")}
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    folder = PACKAGE_DIR / "__pycache__" / f"numba-{source_digest()}"
    assert lines[0].startswith(str(folder)) and lines[1] == str(folder)


def _race(tmp_path, save) -> dict:
    """Two threads add different entries of one function to one cache folder, each reading the index before the
    other writes it (the window widened by a pause after each index read); returns key -> loaded data."""
    import threading
    import time

    from numba.core.caching import IndexDataCacheFile

    load_index = IndexDataCacheFile._load_index

    def slow_load_index(self):
        found = load_index(self)
        time.sleep(0.2)
        return found

    tmp_path.mkdir()
    files = [IndexDataCacheFile(str(tmp_path), "kernel", ("stamp", 1)) for _ in range(2)]
    IndexDataCacheFile._load_index = slow_load_index
    try:
        threads = [threading.Thread(target=save, args=(f, key, f"code of {key}"))
                   for f, key in zip(files, "ab", strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        IndexDataCacheFile._load_index = load_index
    reader = IndexDataCacheFile(str(tmp_path), "kernel", ("stamp", 1))
    return {key: reader.load(key) for key in "ab"}


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_concurrent_cache_saves_of_one_function_keep_each_entry_its_own_data(tmp_path):
    pytest.importorskip("numba")
    from numba.core.caching import IndexDataCacheFile

    assert cache.serialize_cache_writes()
    assert _race(tmp_path / "locked", IndexDataCacheFile.save) == {"a": "code of a", "b": "code of b"}
    # numba's own save, unlocked, loses an entry or points it at the other's data: the race the lock closes
    assert _race(tmp_path / "unlocked", IndexDataCacheFile.save.__wrapped__) != {"a": "code of a", "b": "code of b"}


@pytest.mark.skipif(not __import__("qwave.kernels").kernels.FAST_KERNELS, reason="fast kernels unavailable")
def test_every_jitted_kernel_function_has_a_qualified_name_of_its_own():
    """numba names machine code after the qualified name, the argument types and a per-process counter: two variants
    of one factory sharing a name, compiled in two processes, could get one symbol and run each other's code once
    both are loaded from the cache (the AVX-512 fp16 chain ran the AVX2 work items). Every dispatcher reachable from
    the kernel modules, through closures too, must be named apart (``cache.variant``)."""
    import importlib

    from numba.core.registry import CPUDispatcher

    seen: dict[str, CPUDispatcher] = {}

    def visit(value: object) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        if not isinstance(value, CPUDispatcher) or any(value is d for d in seen.values()):
            return
        name = f"{value.py_func.__module__}.{value.py_func.__qualname__}"
        assert name not in seen, f"two jitted functions are named {name}"
        seen[name] = value
        for cell in value.py_func.__closure__ or ():
            visit(cell.cell_contents)

    for module in ("wa8", "popcount", "half", "act8", "table", "work"):
        for value in vars(importlib.import_module(f"qwave.kernels.{module}")).values():
            visit(value)
    assert any(name.endswith("items_512") for name in seen) and any(name.endswith("items_avx2") for name in seen)
