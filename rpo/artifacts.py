"""Where every artifact lives, the Parquet schemas (declared once, checked on read), atomic writes.

Every artifact is written under a temporary name in the same directory and renamed into
place, so an interrupted stage never leaves a half-written file that the next stage reads
as complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Paths:
    """Per-subject artifact paths of DESIGN.md section 2, relative to a project root."""

    root: Path
    subject: str

    @property
    def prior_dir(self) -> Path:
        return self.root / "data" / "prior" / self.subject

    @property
    def prior_manifest(self) -> Path:
        return self.prior_dir / "manifest.parquet"

    @property
    def rewards(self) -> Path:
        return self.root / "data" / "rewards" / f"{self.subject}.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "data" / "labels" / f"{self.subject}.parquet"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / self.subject

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / "checkpoints"

    @property
    def validation(self) -> Path:
        return self.model_dir / "validation.parquet"

    @property
    def train_log(self) -> Path:
        return self.model_dir / "train_log.csv"

    @property
    def selected(self) -> Path:
        return self.model_dir / "selected"

    @property
    def selection(self) -> Path:
        return self.model_dir / "selection.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval" / self.subject

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.subject}.json"


# --- schemas: one per Parquet artifact -------------------------------------------------

PRIOR_MANIFEST = pa.schema([
    ("prompt_index", pa.int32()), ("prompt", pa.string()), ("image_index", pa.int32()),
    ("seed", pa.int64()), ("path", pa.string()), ("sha256", pa.string()),
])
REWARDS = pa.schema([
    ("kind", pa.string()),  # "ref" or "gen"
    ("image", pa.string()), ("prompt_index", pa.int32()), ("prompt", pa.string()),
    ("align_i", pa.float64()), ("align_t", pa.float64()), ("reward", pa.float64()),
])
LABELS = pa.schema([
    ("pair_id", pa.int32()), ("ref_image", pa.string()), ("gen_image", pa.string()),
    ("prompt_index", pa.int32()), ("prompt", pa.string()),
    ("r_ref", pa.float64()), ("r_gen", pa.float64()), ("p", pa.float64()),
    ("draw", pa.int32()), ("y", pa.int8()),
])
VALIDATION = pa.schema([
    ("step", pa.int32()), ("prompt_index", pa.int32()), ("prompt", pa.string()), ("image_index", pa.int32()),
    ("seed", pa.int64()), ("path", pa.string()), ("align_i", pa.float64()), ("align_t", pa.float64()),
])
EVAL_IMAGES = pa.schema([
    ("model", pa.string()),  # "selected" or "base"
    ("prompt_index", pa.int32()), ("prompt", pa.string()), ("image_index", pa.int32()), ("seed", pa.int64()),
    ("path", pa.string()), ("dino", pa.float64()), ("clip_i", pa.float64()), ("clip_t", pa.float64()),
    ("align_i", pa.float64()), ("align_t", pa.float64()), ("reward", pa.float64()),
])


class ArtifactError(RuntimeError):
    """An input artifact is missing or malformed; the message names the file."""


def write_table(rows: list[dict] | pa.Table, schema: pa.Schema, path: Path) -> Path:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    table = table.select(schema.names).cast(schema)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet artifact and check it against its declared schema."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing (run the stage that writes it first)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ArtifactError(f"{path}: not a readable Parquet file ({e})") from e
    missing = [f.name for f in schema if f.name not in table.schema.names]
    wrong = [f"{f.name} is {table.schema.field(f.name).type}, expected {f.type}"
             for f in schema if f.name in table.schema.names and table.schema.field(f.name).type != f.type]
    if missing or wrong:
        raise ArtifactError(f"{path}: schema mismatch: " + "; ".join([f"missing column {m}" for m in missing] + wrong))
    return table.select(schema.names)


def write_json(obj, path: Path) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: Path):
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: missing (run the stage that writes it first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary directory beside `path`; swap it into place only if the block succeeds.

    If another process completed `path` first, its result is kept and ours dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
