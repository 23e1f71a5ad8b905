"""Named presets: `rpo preset paper` rewrites params.yaml in place, keeping its comments.

A preset is a YAML file of dotted keys beside this module that lists only where it departs from
the paper's settings, the defaults of rpo.config. Applying one sets every key a preset may set
(all but `subjects`, `unique_token`, `seed`, `device` and `paths`) to the preset's value or the
default, so switching presets in any order ends in the same file, and each value lives in one place.
"""

from __future__ import annotations

import io
from pathlib import Path

from rpo import config as C
from rpo import params as P
from rpo.artifacts import atomic_file

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def departures(name: str) -> dict:
    """The keys a preset sets to other values than the paper's."""
    path = HERE / f"{name}.yaml"
    if not path.exists():
        raise P.ParamsError(f"unknown preset {name!r} (known: {', '.join(names())})")
    values = P.yaml_load(path.read_text()) or {}
    unknown = [k for k in values if k not in C.SPEC or not C.SPEC[k].metadata["preset"]]
    if unknown:
        raise P.ParamsError(f"{path}: keys a preset cannot set: {unknown}")
    return values


def load(name: str) -> dict:
    """Every key the preset sets, dotted: the paper's defaults with the preset's departures."""
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k in C.preset_keys() for v in [C.default(k)]}
    return {**defaults, **departures(name)}


def apply(name: str, params_path: str | Path = "params.yaml") -> dict:
    """Set the preset's keys in `params_path` (round-trip YAML: comments survive); validated first."""
    from ruamel.yaml import YAML

    params_path = Path(params_path)
    values = load(name)
    P.validate(P.apply_overrides(P.read(params_path), values), f"{params_path} with preset {name}")
    rt = YAML()  # round-trip mode keeps comments and key order
    doc = rt.load(params_path.read_text())
    for key, value in values.items():
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    buf = io.StringIO()
    rt.dump(doc, buf)
    with atomic_file(params_path) as tmp:
        tmp.write_text(buf.getvalue())
    return values


def cli(args) -> None:
    values = apply(args.name, args.params)
    print(f"{args.params}: preset {args.name!r} ({len(departures(args.name))} keys differ from the paper's; "
          f"{len(values)} set)")
    if (Path(args.params).parent / "dvc.yaml").exists():
        from rpo.deps import sync

        changed = sync(Path(args.params).resolve().parent)
        if changed:
            print(f"dvc.yaml: model folders of stages {', '.join(changed)} updated")
