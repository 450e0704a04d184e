"""Layouts: names and metadata give label, official fold, group and class names; misnamed files need --skip-bad."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwave.errors import DataError
from qwave.extract.layouts import ESC50_CLASSES, read_layout

AUDIO = (".wav",)


def touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_esc50_names_give_fold_clip_take_target_and_super_category(tmp_path: Path) -> None:
    touch(tmp_path, "1-100032-A-0.wav.png", "3-1234-B-49.wav.png", "2-5-A-17.wav.png")
    layout = read_layout("esc50", tmp_path, (".png",))
    rows = {item.meta["name"]: item.meta for item in layout.items}
    assert rows["1-100032-A-0.wav"] == {"fold": 1, "name": "1-100032-A-0.wav", "clip": "100032", "take": "A",
                                        "label": 0, "category": "Animals", "class_id": 0, "group": "100032"}
    assert rows["3-1234-B-49.wav"]["class_id"] == 4 and rows["3-1234-B-49.wav"]["category"] == "Exterior noises"
    assert rows["2-5-A-17.wav"]["class_id"] == 1 and rows["2-5-A-17.wav"]["fold"] == 2
    assert layout.classes[49] == "hand_saw" and len(layout.classes) == len(ESC50_CLASSES) == 50


def test_fsdd_speakers_become_folds_in_sorted_order(tmp_path: Path) -> None:
    touch(tmp_path, "7_theo_12.wav", "0_george_0.wav", "3_jackson_49.wav", "9_george_3.wav")
    layout = read_layout("fsdd", tmp_path, AUDIO)
    meta = {item.meta["name"]: item.meta for item in layout.items}
    assert meta["7_theo_12.wav"] == {"fold": 3, "name": "7_theo_12.wav", "speaker": "theo", "take": 12, "label": 7,
                                     "category": "seven", "group": "theo"}
    assert [meta[n]["fold"] for n in ("0_george_0.wav", "9_george_3.wav", "3_jackson_49.wav")] == [1, 1, 2]


def test_urbansound8k_reads_folds_classes_and_fsid_groups_from_its_metadata(tmp_path: Path) -> None:
    touch(tmp_path, "audio/fold1/100032-3-0-0.wav", "audio/fold10/7061-6-0-0.wav")
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "UrbanSound8K.csv").write_text(
        "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
        "7061-6-0-0.wav,7061,0,4,1,10,6,gun_shot\n"
        "100032-3-0-0.wav,100032,0,0.3,1,1,3,dog_bark\n")
    layout = read_layout("urbansound8k", tmp_path, AUDIO)
    assert [item.meta for item in layout.items] == [
        {"fold": 1, "name": "100032-3-0-0.wav", "label": 3, "category": "dog_bark", "group": "100032"},
        {"fold": 10, "name": "7061-6-0-0.wav", "label": 6, "category": "gun_shot", "group": "7061"}]
    assert layout.items[1].path == tmp_path / "audio" / "fold10" / "7061-6-0-0.wav"
    assert layout.classes == {3: "dog_bark", 6: "gun_shot"}


def test_urbansound8k_missing_audio_is_an_error_unless_skipped(tmp_path: Path) -> None:
    (tmp_path / "UrbanSound8K.csv").write_text("slice_file_name,fsID,fold,classID,class\nx.wav,1,2,0,air\n")
    with pytest.raises(DataError, match="fold2/x.wav listed in .*UrbanSound8K.csv is missing"):
        read_layout("urbansound8k", tmp_path, AUDIO)
    assert read_layout("urbansound8k", tmp_path, AUDIO, skip_bad=True).skipped == [
        ("fold2/x.wav", "listed in the metadata but missing")]


def test_urbansound8k_metadata_without_its_columns_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text("name,label\na.wav,1\n")
    with pytest.raises(DataError, match="meta.csv lacks the columns"):
        read_layout("urbansound8k", tmp_path, AUDIO, metadata=tmp_path / "meta.csv")


def test_folders_layout_labels_sorted_class_folders(tmp_path: Path) -> None:
    touch(tmp_path, "dog/b.wav", "cat/a.wav", "cat/sub/c.wav")
    layout = read_layout("folders", tmp_path, AUDIO)
    assert {item.meta["name"]: (item.meta["label"], item.meta["category"]) for item in layout.items} == {
        "cat/a.wav": (0, "cat"), "cat/sub/c.wav": (0, "cat"), "dog/b.wav": (1, "dog")}
    assert layout.classes == {0: "cat", 1: "dog"}


@pytest.mark.parametrize("layout, good, bad", [("esc50", "1-2-A-3.wav", "song.wav"),
                                               ("fsdd", "1_theo_2.wav", "1-theo.wav"),
                                               ("folders", "cat/a.wav", "loose.wav")])
def test_misnamed_files_are_errors_naming_the_file_or_skipped_with_skip_bad(tmp_path: Path, layout: str,
                                                                            good: str, bad: str) -> None:
    touch(tmp_path, good, bad)
    with pytest.raises(DataError, match=f"{bad}.*--skip-bad"):
        read_layout(layout, tmp_path, AUDIO)
    result = read_layout(layout, tmp_path, AUDIO, skip_bad=True)
    assert len(result.items) == 1 and [Path(p).name for p, _ in result.skipped] == [bad]


def test_unknown_layout_empty_folder_and_misplaced_metadata_option_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="layout 'esc10' is unknown"):
        read_layout("esc10", tmp_path, AUDIO)
    with pytest.raises(DataError, match="holds no files ending in .wav"):
        read_layout("fsdd", tmp_path, AUDIO)
    with pytest.raises(DataError, match="--metadata is only used by the urbansound8k layout"):
        read_layout("fsdd", tmp_path, AUDIO, metadata=tmp_path / "m.csv")
