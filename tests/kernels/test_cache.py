"""Where numba's compiled kernels are cached: numba's own ``__pycache__`` when the package folder is writable, a
per-user cache folder when it is not, and ``NUMBA_CACHE_DIR`` whenever the user sets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwave.kernels.cache import choose_cache_dir, user_cache_dir


def _unwritable_package(tmp_path: Path) -> Path:
    """A package folder nobody can create a ``__pycache__`` in, root included: its parent is a regular file."""
    blocker = tmp_path / "site-packages"
    blocker.write_text("a file, not a folder")
    return blocker / "qwave" / "kernels"


def test_a_writable_package_keeps_numbas_in_tree_cache(tmp_path):
    package = tmp_path / "qwave" / "kernels"
    assert choose_cache_dir({"HOME": str(tmp_path / "home")}, package) is None
    assert (package / "__pycache__").is_dir()


def test_an_unwritable_package_caches_under_xdg_cache_home(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert choose_cache_dir(env, _unwritable_package(tmp_path)) == tmp_path / "xdg" / "qwave" / "numba"


def test_without_xdg_cache_home_the_user_cache_is_under_home(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": ""}
    assert choose_cache_dir(env, _unwritable_package(tmp_path)) == tmp_path / "home" / ".cache" / "qwave" / "numba"
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
