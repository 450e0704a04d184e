"""Wall time and peak memory of refusing hostile files (issue 20 item 7): each is built in a temporary folder and
opened by a fresh Python process, whose error line, wall seconds and peak RSS are printed.

Usage: ``PYTHONPATH=. python scripts/edge_caps.py``. The files: an MLP manifest re-signed to ask for 100,000 hidden
layers; an .npz of ~1 MB whose member inflates to 1 GiB of zeros; an .npz of a few hundred bytes whose header
claims 5 GB; a Parquet file of run-length-encoded zeros whose footer declares 5,000,000 rows x 11 columns.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from artifact_files import reseal  # noqa: E402

from qwave import artifact  # noqa: E402
from qwave.nn import MLPClassifier, pack_model, quantize_model  # noqa: E402

# Each child reports its own peak RSS (ru_maxrss of a forked child would include its parent's pages) and, first,
# the peak after its imports alone.
CHILD = """import resource, sys, time
import qwave.artifact, qwave.data
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    {call}
    print("(no error)")
except Exception as err:
    print(f"{{type(err).__name__}}: {{err}}")
print(time.perf_counter() - start, imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
LOAD_ARTIFACT = CHILD.format(call="qwave.artifact.load(sys.argv[1])")
LOAD_TABLE = CHILD.format(call="qwave.data.load_table(qwave.data.TableSpec(sys.argv[1]))")


def deep_mlp(folder: Path) -> Path:
    torch.manual_seed(0)
    target = artifact.save(pack_model(quantize_model(MLPClassifier(12, 4, (10,)), "int8")), folder / "deep")
    reseal(target, lambda m: m["architecture"]["config"].update(hidden=[10] * 100_000))
    return target


def inflating_npz(folder: Path) -> Path:
    path = folder / "inflate.npz"
    header = io.BytesIO()
    rows = 2**30 // (8 * 128)
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (rows, 128)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(1 << 24)
            for _ in range(2**30 // len(zeros)):
                member.write(zeros)
        y = io.BytesIO()
        np.save(y, np.zeros(rows, np.int64))
        archive.writestr("y.npy", y.getvalue())
    return path


def lying_npz(folder: Path) -> Path:
    path = folder / "lying.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 64)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", header.getvalue() + bytes(64))
    return path


def zeros_parquet(folder: Path) -> Path:
    path = folder / "zeros.parquet"
    rows = 5_000_000
    pd.DataFrame({"label": np.zeros(rows, np.int8), **{f"f{j}": np.zeros(rows, np.float32) for j in range(10)}}
                 ).to_parquet(path)
    return path


def refuse(code: str, path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    error, figures = done.stdout.strip().splitlines()[-2:]
    seconds, imported, peak = (float(v) for v in figures.split())
    size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
    print(json.dumps({"file": path.name, "file_bytes": size, "refused_in_s": round(seconds, 3),
                      "rss_after_imports_mib": round(imported / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
                      "error": error[:240]}))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qwave-edge-") as tmp:
        folder = Path(tmp)
        refuse(LOAD_ARTIFACT, deep_mlp(folder))
        for build in (inflating_npz, lying_npz, zeros_parquet):
            refuse(LOAD_TABLE, build(folder))


if __name__ == "__main__":
    main()
