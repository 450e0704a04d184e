"""The AVX2 variants are tested on AVX-512 machines too: this folder's tests run again in a process whose numba
target is an AVX2-only CPU (``kernels.avx2_environment``), so both paths are covered on every CI machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwave import kernels

pytestmark = pytest.mark.skipif(not kernels.FAST_KERNELS, reason=f"fast kernels unavailable: {kernels.REASON}")
FORCED = "QWAVE_TEST_FORCED_AVX2"
# This folder's files that no ISA choice reaches (the cache folder, the threads chosen by load and by work): the main
# run covers them, so the forced process reruns only the kernels, their dispatch and their chains.
ISA_FREE = ("test_cache.py", "test_load.py", "test_work.py")


def test_forced_process_compiles_the_avx2_variants():
    if not os.environ.get(FORCED):
        pytest.skip("checked inside the forced AVX2 process")
    from qwave.kernels import _simd, int8

    assert int8.ISA == "avx2" and not _simd.HAS_AVX512_VNNI and not _simd.HAS_VPOPCNTDQ


def test_kernel_tests_pass_with_numba_targeting_an_avx2_only_cpu():
    from qwave.kernels import _simd

    if os.environ.get(FORCED):
        pytest.skip("this is the forced AVX2 process")
    if not (_simd.HAS_AVX512_VNNI or _simd.HAS_VPOPCNTDQ):
        pytest.skip("this CPU has no AVX-512: the tests of this run already exercised the AVX2 variants")
    env = {**os.environ, **kernels.avx2_environment(), FORCED: "1"}
    folder = Path(__file__).parent
    ignored = [f"--ignore={folder / name}" for name in ISA_FREE]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *ignored,
                             str(folder)], env=env, cwd=folder.parents[1], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
