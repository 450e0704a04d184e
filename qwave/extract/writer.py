"""Table output: Parquet (zstd) or CSV chosen by extension, written atomically, with a sidecar JSON.

Large folders are written as chunk files in ``<out>.parts/`` as they are embedded; ``resume`` reads the chunks
already there (and the files already reported bad), so a stopped run continues where it stopped. The chunks are
merged into ``<out>`` at the end (:meth:`PartsWriter.merge`, :meth:`PartsWriter.commit`) and the parts folder
is removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qwave.atomic import check_writable, write_json, write_with
from qwave.errors import DataError

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def check_output_path(out: Path) -> None:
    """Fail early when ``out`` has an unsupported extension or its folder cannot hold it."""
    if not out.name.lower().endswith(TABLE_SUFFIXES):
        raise DataError(f"output {out} must end in {', '.join(TABLE_SUFFIXES)} (Parquet by default, CSV on request).")
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"output folder {out.parent} is not a folder.")
    check_writable(out, "--out")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Parquet with zstd; float columns byte-stream-split without dictionaries (about a third smaller); atomic."""
    floats = [str(c) for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    other = [c for c in table.column_names if c not in floats]
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", compression_level=9,
                                                use_dictionary=other or False, use_byte_stream_split=floats or False))


def write_table(frame: pd.DataFrame, out: Path) -> None:
    """Parquet for ``.parquet``, CSV (gzip for ``.csv.gz``) otherwise; atomic."""
    check_output_path(out)
    if out.name.lower().endswith(".parquet"):
        write_parquet(frame, out)
    else:
        compression = "gzip" if out.name.lower().endswith(".gz") else None
        write_with(out, lambda tmp: frame.to_csv(tmp, index=False, compression=compression), suffix=".tmp")


def sidecar_path(out: Path) -> Path:
    """``table.parquet`` -> ``table.parquet.json``."""
    return out.with_name(out.name + ".json")


class PartsWriter:
    """Accumulates embedded rows in chunk files under ``<out>.parts/``; resumable; merged by :meth:`merge`."""

    def __init__(self, out: Path, config: dict, resume: bool = False, chunk_files: int = 256):
        self.out, self.chunk_files = out, max(1, chunk_files)
        self.config = json.loads(json.dumps(config))
        self.folder = out.with_name(out.name + ".parts")
        self.state_path = self.folder / "state.json"
        self.pending: list[pd.DataFrame] = []
        self.skipped: list[dict] = []
        self.parts = 0
        if self.folder.exists() and not resume:
            raise DataError(f"a partial extraction exists at {self.folder}; pass --resume to continue it "
                            f"or delete that folder to start again.")
        if resume and self.state_path.is_file():
            state = json.loads(self.state_path.read_text())
            if state["config"] != self.config:
                changed = sorted(k for k in set(state["config"]) | set(self.config)
                                 if state["config"].get(k) != self.config.get(k))
                raise DataError(f"--resume with different settings than the partial run at {self.folder} "
                                f"(changed: {', '.join(changed)}).")
            self.skipped = state["skipped"]
            self.parts = len(sorted(self.folder.glob("part-*.parquet")))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save_state()

    def done(self) -> set[str]:
        """Relative paths already embedded or reported bad in earlier runs."""
        names = {s["path"] for s in self.skipped}
        for part in sorted(self.folder.glob("part-*.parquet")):
            names.update(pd.read_parquet(part, columns=["path"])["path"])
        return names

    def add(self, rows: pd.DataFrame) -> None:
        """Queue embedded rows; a chunk file is written every ``chunk_files`` rows."""
        self.pending.append(rows)
        if sum(len(p) for p in self.pending) >= self.chunk_files:
            self.flush()

    def skip(self, path: str, reason: str) -> None:
        """Record a bad file (kept across resumes, listed in the sidecar)."""
        self.skipped.append({"path": path, "reason": reason})
        self._save_state()

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = pd.concat(self.pending, ignore_index=True)
        part = self.folder / f"part-{self.parts:05d}.parquet"
        write_with(part, lambda tmp: chunk.to_parquet(tmp, index=False))
        self.parts += 1
        self.pending = []
        self._save_state()

    def _save_state(self) -> None:
        write_json(self.state_path, {"config": self.config, "skipped": self.skipped})

    def merge(self, order: list[str]) -> pd.DataFrame:
        """All rows written so far, sorted by ``order`` (relative paths)."""
        self.flush()
        parts = [pd.read_parquet(p) for p in sorted(self.folder.glob("part-*.parquet"))]
        if not parts:
            raise DataError(f"no file could be embedded, so {self.out} was not written.")
        frame = pd.concat(parts, ignore_index=True).drop_duplicates("path", keep="last")
        rank = {path: i for i, path in enumerate(order)}
        return frame.sort_values("path", key=lambda s: s.map(rank)).reset_index(drop=True)

    def commit(self, frame: pd.DataFrame, sidecar: dict) -> None:
        """Write the table and its sidecar JSON, then remove the parts folder."""
        write_table(frame, self.out)
        write_json(sidecar_path(self.out), sidecar)
        shutil.rmtree(self.folder)
