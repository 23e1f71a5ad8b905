"""Where every artifact lives, the Parquet schemas (declared once, checked on read), atomic writes.

Every artifact is written under a temporary name and renamed into place, so an interrupted
stage never leaves a half-written file that the next stage reads as complete. Temporaries
live in the project's `.rpo/tmp/` (ignored by git and DVC), never inside a tracked output,
and a stage removes those of processes that no longer run before it writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

@dataclass(frozen=True)
class Paths:
    """Per-subject artifact paths of DESIGN.md section 2.

    `roots` moves the outputs of some stages under another folder (an ablation's variant,
    rpo.ablation); every artifact is found under the root of the stage that writes it.
    """

    root: Path
    subject: str
    roots: dict = field(default_factory=dict, compare=False)

    def of(self, stage: str) -> Path:
        return Path(self.roots.get(stage, self.root))

    # check
    @property
    def checked_dir(self) -> Path:
        return self.of("check") / "data" / "checked"

    @property
    def checked(self) -> Path:
        return self.checked_dir / f"{self.subject}.json"

    # prior
    @property
    def prior_dir(self) -> Path:
        return self.of("prior") / "data" / "prior" / self.subject

    @property
    def prior_manifest(self) -> Path:
        return self.prior_dir / "manifest.parquet"

    # class_prior
    @property
    def class_prior_dir(self) -> Path:
        return self.of("class_prior") / "data" / "class_prior" / self.subject

    @property
    def class_prior_manifest(self) -> Path:
        return self.class_prior_dir / "manifest.parquet"

    # score
    @property
    def rewards(self) -> Path:
        return self.of("score") / "data" / "rewards" / f"{self.subject}.parquet"

    # labels
    @property
    def labels(self) -> Path:
        return self.of("labels") / "data" / "labels" / f"{self.subject}.parquet"

    # finetune
    def _model_dir(self, stage: str) -> Path:
        return self.of(stage) / "models" / self.subject

    @property
    def checkpoints(self) -> Path:
        return self._model_dir("finetune") / "checkpoints"

    @property
    def validation(self) -> Path:
        return self._model_dir("finetune") / "validation.parquet"

    @property
    def validation_images(self) -> Path:
        return self._model_dir("finetune") / "validation"

    @property
    def train_log(self) -> Path:
        return self._model_dir("finetune") / "train_log.csv"

    # select
    @property
    def selected(self) -> Path:
        return self._model_dir("select") / "selected"

    @property
    def selection(self) -> Path:
        return self._model_dir("select") / "selection.json"

    @property
    def validation_curve(self) -> Path:
        return self._model_dir("select") / "validation_curve.csv"

    # evaluate
    @property
    def eval_dir(self) -> Path:
        return self.of("evaluate") / "eval" / self.subject

    @property
    def about(self) -> Path:
        return self.eval_dir / "about.json"

    @property
    def metrics(self) -> Path:
        return self.of("evaluate") / "metrics" / f"{self.subject}.json"

    # not DVC outputs: wall times and devices of the runs, for the report's timing table
    def run_log(self, stage: str) -> Path:
        return self.of(stage) / "logs" / self.subject / f"{stage}.json"


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


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


# --- atomic writes ------------------------------------------------------------------------

TMP = Path(".rpo") / "tmp"


def project_root(path: Path) -> Path | None:
    """The DVC project (a folder with `.dvc/`) that holds `path`, or None."""
    for folder in Path(path).resolve().parents:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _scratch(path: Path) -> Path:
    """Where temporaries for `path` go: the project's .rpo/tmp/<pid> (same filesystem, so a rename is
    atomic, and outside every DVC output and dependency), or beside `path` outside any project."""
    root = project_root(path)
    if root is None:
        return Path(path).parent
    scratch = root / TMP / str(os.getpid())
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove the temporaries of processes that no longer run (killed mid-write); returns what was removed."""
    removed = []
    for folder in (Path(root) / TMP).glob("*"):
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path) -> None:
    """mkstemp/mkdtemp create 0600/0700; an artifact gets what the user's umask gives a new file (0644/0755)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=_scratch(path))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _normal_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _tidy(tmp.parent)


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary directory; swap it into place as `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=_scratch(path)))
    try:
        yield tmp
        _normal_mode(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=_scratch(path)))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _tidy(tmp.parent)


def _tidy(scratch: Path) -> None:
    """A process's scratch folder goes as soon as it is empty: temporaries never outlive a run."""
    if scratch.parent.name == TMP.name:
        with contextlib.suppress(OSError):
            scratch.rmdir()
