"""Named parameter presets: `rpo preset paper` rewrites params.yaml in place, keeping its comments.

A preset is a flat YAML file of dotted keys beside this module. Only the keys it names
change; `subjects`, `seed` and every other key stay as the user set them.
"""

from __future__ import annotations

import io
from pathlib import Path

import yaml

from rpo import params as P
from rpo.artifacts import atomic_file

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load(name: str) -> dict:
    path = HERE / f"{name}.yaml"
    if not path.exists():
        raise P.ParamsError(f"unknown preset {name!r} (known: {', '.join(names())})")
    values = yaml.safe_load(path.read_text())
    unknown = [k for k in values if k not in P.SPEC]
    if unknown:
        raise P.ParamsError(f"{path}: unknown keys {unknown}")
    return values


def apply(name: str, params_path: str | Path = "params.yaml") -> dict:
    """Set the preset's keys in `params_path` (round-trip YAML, so comments survive); validate first."""
    from ruamel.yaml import YAML

    params_path = Path(params_path)
    values = load(name)
    P.validate(P.apply_overrides(P.load(params_path), values), f"{params_path} with preset {name}")
    rt = YAML()  # round-trip mode keeps comments and key order
    doc = rt.load(params_path.read_text())
    for key, value in values.items():
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value
    buf = io.StringIO()
    rt.dump(doc, buf)
    with atomic_file(params_path) as tmp:
        tmp.write_text(buf.getvalue())
    return values
