"""Dataset layouts: a folder of files -> items with their label, official fold, group and class names.

Each layout returns :class:`Item` rows whose ``meta`` holds the table's metadata columns in table order, so the
extracted table mirrors the reference tables (fsdd: fold, name, speaker, take, label; esc50: fold, name, clip,
take, label, category, class_id). ``group`` repeats the recording / speaker id so that folds keep it together.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwave.errors import DataError

ESC50_SUPER = ("Animals", "Natural soundscapes", "Human non-speech", "Interior sounds", "Exterior noises")
ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESC50_NAME = re.compile(r"^(?P<fold>\d+)-(?P<clip>[^-]+)-(?P<take>[A-Za-z]+)-(?P<target>\d+)\.")
FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9]+)_(?P<take>\d+)\.")


@dataclass(frozen=True)
class Item:
    """One input file and its metadata columns (in table order)."""

    path: Path
    meta: dict


@dataclass
class Layout:
    """The items of a dataset folder, the class names by label, and files the layout could not use."""

    name: str
    items: list[Item]
    classes: dict[int, str]
    skipped: list[tuple[str, str]]


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist or is not a folder.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    if not files:
        raise DataError(f"input folder {root} holds no files ending in {', '.join(suffixes)}.")
    return files


def _table_name(path: Path) -> str:
    """File name as the table's ``name``: a rendered ``x.wav.png`` is named after its audio clip ``x.wav``."""
    name = path.name
    return name[: -len(".png")] if name.lower().endswith(".png") and "." in name[: -len(".png")] else name


def _unmatched(layout: str, path: Path, pattern: str, skip_bad: bool, skipped: list) -> None:
    reason = f"name does not match the {layout} pattern {pattern}"
    if not skip_bad:
        raise DataError(f"file {path} does not match the {layout} naming {pattern} (use --skip-bad to skip it).")
    skipped.append((str(path), reason))


def esc50(root: Path, suffixes: tuple[str, ...], skip_bad: bool = False) -> Layout:
    """ESC-50 names ``{fold}-{clip}-{take}-{target}``; label = target, class_id = target // 10 (super-category)."""
    items, skipped = [], []
    for path in _files(root, suffixes):
        match = ESC50_NAME.match(path.name)
        if not match or not 0 <= int(match["target"]) < 50:
            _unmatched("esc50", path, "{fold}-{clip}-{take}-{target}.wav", skip_bad, skipped)
            continue
        target = int(match["target"])
        meta = {"fold": int(match["fold"]), "name": _table_name(path), "clip": match["clip"],
                "take": match["take"], "label": target, "category": ESC50_SUPER[target // 10],
                "class_id": target // 10, "group": match["clip"]}
        items.append(Item(path, meta))
    return Layout("esc50", items, dict(enumerate(ESC50_CLASSES)), skipped)


def fsdd(root: Path, suffixes: tuple[str, ...], skip_bad: bool = False) -> Layout:
    """FSDD names ``{digit}_{speaker}_{take}``; fold = 1-based index of the speaker among sorted speaker names."""
    matched, skipped = [], []
    for path in _files(root, suffixes):
        match = FSDD_NAME.match(path.name)
        if match:
            matched.append((path, match))
        else:
            _unmatched("fsdd", path, "{digit}_{speaker}_{take}.wav", skip_bad, skipped)
    folds = {speaker: i + 1 for i, speaker in enumerate(sorted({m["speaker"] for _, m in matched}))}
    items = [Item(path, {"fold": folds[m["speaker"]], "name": _table_name(path), "speaker": m["speaker"],
                         "take": int(m["take"]), "label": int(m["digit"]), "category": DIGITS[int(m["digit"])],
                         "group": m["speaker"]})
             for path, m in matched]
    return Layout("fsdd", items, dict(enumerate(DIGITS)), skipped)


def _urbansound_metadata(root: Path) -> Path:
    for candidate in (root / "metadata" / "UrbanSound8K.csv", root / "UrbanSound8K.csv",
                      root.parent / "metadata" / "UrbanSound8K.csv"):
        if candidate.is_file():
            return candidate
    raise DataError(f"no UrbanSound8K metadata CSV found for {root} (looked for metadata/UrbanSound8K.csv).")


def urbansound8k(root: Path, suffixes: tuple[str, ...], skip_bad: bool = False,
                 metadata: Path | None = None) -> Layout:
    """UrbanSound8K from its metadata CSV: fold 1-10, classID as label, class as category, fsID as group."""
    if not root.is_dir():
        raise DataError(f"input folder {root} does not exist or is not a folder.")
    metadata = metadata or _urbansound_metadata(root)
    with open(metadata, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"slice_file_name", "fsID", "fold", "classID", "class"}
    if not rows or not needed <= set(rows[0]):
        raise DataError(f"metadata file {metadata} lacks the columns {', '.join(sorted(needed))}.")
    audio_dirs = [root / "audio", root]
    items, skipped, classes = [], [], {}
    for row in sorted(rows, key=lambda r: (int(r["fold"]), r["slice_file_name"])):
        fold, name = int(row["fold"]), row["slice_file_name"]
        path = next((d / f"fold{fold}" / name for d in audio_dirs if (d / f"fold{fold}" / name).is_file()), None)
        if path is None:
            if not skip_bad:
                raise DataError(f"audio file fold{fold}/{name} listed in {metadata} is missing under {root} "
                                f"(use --skip-bad to skip missing files).")
            skipped.append((f"fold{fold}/{name}", "listed in the metadata but missing"))
            continue
        label = int(row["classID"])
        classes[label] = row["class"]
        items.append(Item(path, {"fold": fold, "name": name, "label": label, "category": row["class"],
                                 "group": row["fsID"]}))
    return Layout("urbansound8k", items, dict(sorted(classes.items())), skipped)


def folders(root: Path, suffixes: tuple[str, ...], skip_bad: bool = False) -> Layout:
    """One sub-folder per class (sorted names -> labels 0..k-1); no official folds."""
    files = _files(root, suffixes)
    class_names = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if not class_names:
        raise DataError(f"input folder {root} has no class sub-folders (the folders layout needs root/<class>/file).")
    labels = {name: i for i, name in enumerate(class_names)}
    items, skipped = [], []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            if not skip_bad:
                raise DataError(f"file {path} is not inside a class sub-folder (use --skip-bad to skip it).")
            skipped.append((str(path), "not inside a class sub-folder"))
            continue
        items.append(Item(path, {"name": str(path.relative_to(root)), "label": labels[parts[0]],
                                 "category": parts[0]}))
    return Layout("folders", items, {i: n for n, i in labels.items()}, skipped)


LAYOUTS: dict[str, Callable[..., Layout]] = {
    "esc50": esc50, "urbansound8k": urbansound8k, "fsdd": fsdd, "folders": folders,
}


def read_layout(name: str, root: Path, suffixes: tuple[str, ...], skip_bad: bool = False,
                metadata: Path | None = None) -> Layout:
    """Items of ``root`` under layout ``name`` (one of :data:`LAYOUTS`)."""
    if name not in LAYOUTS:
        raise DataError(f"layout {name!r} is unknown; choose one of {', '.join(LAYOUTS)}.")
    if name == "urbansound8k":
        return urbansound8k(root, suffixes, skip_bad, metadata)
    if metadata is not None:
        raise DataError(f"--metadata is only used by the urbansound8k layout, not {name}.")
    return LAYOUTS[name](root, suffixes, skip_bad)
