"""The bundled default table: loadable with the benchmark's defaults, small, and rebuilt exactly by its command."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwave.cli import main
from qwave.data import TableSpec, load_table
from qwave.extract import ExtractConfig, extract_table

DATASETS = Path(__file__).resolve().parents[2] / "qwave" / "datasets"
BUNDLED = DATASETS / "fsdd_logmel.parquet"


def test_bundled_table_loads_with_the_benchmark_defaults_and_stays_small() -> None:
    dataset = load_table(TableSpec(str(BUNDLED), label="label", fold="fold", id="name"))
    assert dataset.X.shape == (3000, 160) and dataset.X.dtype == np.float32 and dataset.n_classes == 10
    assert sorted(set(dataset.fold)) == [1, 2, 3, 4, 5, 6]
    frame = pd.read_parquet(BUNDLED, columns=["fold", "speaker"])
    assert frame.groupby("fold")["speaker"].nunique().eq(1).all()  # one speaker per fold: leave-one-speaker-out
    assert BUNDLED.stat().st_size < 2_000_000


def test_bundled_table_is_what_its_recorded_command_gives_on_the_real_recordings(require_shared, tmp_path) -> None:
    recordings = require_shared("fsdd/recordings")
    sidecar = json.loads((DATASETS / "fsdd_logmel.parquet.json").read_text())
    argv = shlex.split(sidecar["command"])
    assert argv[:3] == ["qwave", "extract", "../shared/data/fsdd/recordings"]
    assert sidecar["backbone"]["spec"] == "mfcc-segments" and sidecar["frontend"]["n_mels"] == 32
    sample = tmp_path / "sample"
    sample.mkdir()
    names = ["0_george_0.wav", "5_nicolas_17.wav", "9_yweweler_49.wav", "3_theo_8.wav"]
    for name in names:
        (sample / name).symlink_to(recordings / name)
    table = extract_table(ExtractConfig(input_dir=sample, out=tmp_path / "t.parquet", layout="fsdd", n_mels=32,
                                        backbone="mfcc-segments", n_mfcc=20, segments=6)).table
    bundled = pd.read_parquet(BUNDLED).set_index("name").loc[names]
    columns = [str(i) for i in range(160)]
    # The bundled file was written on one CPU; FFT and BLAS take other code paths on others (seen: up to 1.9e-6
    # apart on an AVX2-only AMD EPYC against the AVX-512 Xeon that wrote it), so floats agree to a stated tolerance.
    np.testing.assert_allclose(table.set_index("name").loc[names, columns].to_numpy(), bundled[columns].to_numpy(),
                               rtol=1e-5, atol=1e-5)


PRETRAINED_TABLES = {
    # bundled file: (backbone, shared data folder, sample files to re-extract, rows, features, folds)
    "esc50_efficientnet_lite0.parquet": ("efficientnet-lite0", "esc50/specs",
                                         ["1-100032-A-0.wav.png", "2-118459-B-32.wav.png",
                                          "3-170377-A-38.wav.png", "3-98869-A-46.wav.png"], 1200, 1280, [1, 2, 3]),
    "fsdd_speech_embedding.parquet": ("speech-embedding", "fsdd/recordings",
                                      ["0_george_0.wav", "5_nicolas_17.wav", "9_yweweler_49.wav", "3_theo_8.wav"],
                                      3000, 288, [1, 2, 3, 4, 5, 6]),
}


@pytest.mark.parametrize("name", sorted(PRETRAINED_TABLES))
def test_pretrained_bundled_tables_load_with_the_benchmark_defaults_and_stay_small(name: str) -> None:
    backbone, _, _, rows, dim, folds = PRETRAINED_TABLES[name]
    dataset = load_table(TableSpec(str(DATASETS / name), label="label", fold="fold", id="name"))
    assert dataset.X.shape == (rows, dim) and sorted(set(dataset.fold)) == folds
    frame = pd.read_parquet(DATASETS / name)
    assert frame[str(dim - 1)].dtype == np.float16  # stored as float16 (same macro-F1 as float32, half the bytes)
    assert frame["backbone"].eq(backbone).all()
    if name.startswith("esc50"):  # 50 classes with the 5 super-categories beside them
        assert dataset.n_classes == 50 and frame["category"].nunique() == 5
        assert (frame["class_id"] == frame["label"] // 10).all()
    assert (DATASETS / name).stat().st_size < 2_500_000


@pytest.mark.parametrize("name", sorted(PRETRAINED_TABLES))
def test_pretrained_bundled_tables_are_what_their_recorded_commands_give(name: str, require_shared,
                                                                         tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="the pretrained extra is not installed: pip install '.[pretrained]'")
    backbone, folder, names, _, dim, _ = PRETRAINED_TABLES[name]
    source = require_shared(folder)
    sidecar = json.loads((DATASETS / f"{name}.json").read_text())
    argv = shlex.split(sidecar["command"])
    assert argv[:3] == ["qwave", "extract", f"../shared/data/{folder}"] and f"--backbone {backbone}" in " ".join(argv)
    sample = tmp_path / "sample"
    sample.mkdir()
    for file in names:
        (sample / file).symlink_to(source / file)
    assert main(["extract", str(sample), *argv[3:argv.index("--out")], "--out", str(tmp_path / "t.parquet"),
                 "--quiet"]) == 0
    again = pd.read_parquet(tmp_path / "t.parquet").set_index("name")
    bundled = pd.read_parquet(DATASETS / name).set_index("name").loc[again.index]
    columns = [str(i) for i in range(dim)]
    # float16 storage: a float32 value and its float16 rounding differ by up to 2^-11 relative; convolution and
    # FFT sums differ by CPU in the last float32 bits, which can move a value across a float16 rounding boundary:
    # so re-extraction agrees to one float16 step (relative 2^-10) plus a small absolute term near zero.
    np.testing.assert_allclose(again[columns].to_numpy(np.float32), bundled[columns].to_numpy(np.float32),
                               rtol=2 ** -10, atol=1e-3)
