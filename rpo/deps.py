"""DVC dependencies that are the truth: every project file a stage's command imports, read from the code.

A stage's code dependencies are the import closure of `rpo/cli.py` (which names its command
handlers as strings, so it imports little), `rpo/stages/__init__.py` and the stage's own module:
every `import` and `from ... import` of a project module anywhere in a file (inside functions
too), each package's `__init__.py`, and, where a module calls rpo.registry to load a plug-in
(`model_path(...)`, `judge(...)`, `plugin("<group>", ...)`), the modules the project registers
under that entry-point group in pyproject.toml. Named models that live inside the project (the world's weights) are
data the stage reads: their folders are dependencies too.

`rpo dvc sync` writes the rpo stages of dvc.yaml from this and from the stages' specs (data
dependencies, params, outputs); `rpo dvc sync --check` says whether dvc.yaml is up to date.
"""

from __future__ import annotations

import ast
import functools
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = ("rpo/cli.py", "rpo/stages/__init__.py")


@functools.lru_cache(maxsize=None)
def _pyproject(root: Path) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def packages(root: Path = REPO) -> dict[str, Path]:
    """Top-level package name -> its folder, for the packages this project ships (pyproject's wheel packages)."""
    listed = _pyproject(root)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return {Path(p).name: root / p for p in listed}


def entry_points(group: str, root: Path = REPO) -> list[str]:
    return list(_pyproject(root)["project"].get("entry-points", {}).get(group, {}).values())


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The project file of dotted module `name` (a module or a package's __init__), or None if not ours."""
    top, *rest = name.split(".")
    base = packages(root).get(top)
    if base is None:
        return None
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    for top, base in packages(root).items():
        if path.is_relative_to(base):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is in none of the project's packages")


def imported(path: Path, root: Path = REPO) -> set[Path]:
    """Project files that `path` imports anywhere in its body, plugin modules included."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from rpo import artifacts` imports a module
        elif isinstance(node, ast.Call) and here not in ("rpo.registry", "rpo.deps"):  # the mechanism, not a use
            group = _plugin_group(node)
            if group:
                names.update(t.split(":")[0] for t in entry_points(group, root))
    files = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            f = module_file(".".join(parts[:i]), root)
            if f:
                files.add(f)
    return files


def _plugin_group(call: ast.Call) -> str | None:
    """The entry-point group a call of rpo.registry loads from: `model_path(...)`, `judge(...)`, or
    `plugin("<group>", ...)` / `plugins("<group>")`; None for any other call."""
    from rpo.registry import GROUP_OF

    name = getattr(call.func, "id", getattr(call.func, "attr", None))
    if name in GROUP_OF:
        return GROUP_OF[name]
    if name in ("plugin", "plugins") and call.args and isinstance(call.args[0], ast.Constant):
        return call.args[0].value
    return None


def closure(files, root: Path = REPO) -> set[Path]:
    todo, seen = [Path(f) for f in files], set()
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += imported(f, root) - seen
    return seen


def closure_code(files: list[str], root: Path = REPO) -> list[str]:
    """The project files an `rpo` command whose handler lives in `files` imports, relative to `root`, sorted."""
    start = [root / e for e in (*ENTRY, *files)]
    return sorted(p.relative_to(root).as_posix() for p in closure(start, root))


def stage_code(stage: str, root: Path = REPO) -> list[str]:
    """The project files a stage's command imports, relative to `root`, sorted."""
    return closure_code([f"rpo/stages/{stage}.py"], root)


def model_dirs(cfg, stage: str, root: Path = REPO) -> list[str]:
    """Folders inside the project that the stage loads as models (registered names such as the world's),
    and the data files of the judge it runs."""
    from rpo import config as C
    from rpo import params as P
    from rpo import registry
    from rpo.stages import reads, spec

    values = C.to_dict(cfg)
    out = {_inside(Path(registry.model_path(P.get(values, key), build=False)), root) for key in spec(stage).models}
    if reads(stage, "evaluate.judges", cfg) and cfg.evaluate.judges != "none":
        judge = registry.plugin("rpo.judges", cfg.evaluate.judges)
        out.update(_inside(Path(f), root) for f in judge.data_files())
    return sorted(o for o in out if o)


def _inside(path: Path, root: Path) -> str | None:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) and path.exists() else None


# --- dvc.yaml ------------------------------------------------------------------------------


def command(stage: str) -> str:
    from rpo.stages import spec

    return f"rpo stage {stage}" + (" --subject ${item}" if spec(stage).per_subject else "")


def render(stage: str, cfg, root: Path = REPO, paths=None, cmd: str | None = None, params=None,
           values: dict | None = None) -> dict:
    """The dvc.yaml entry of `stage`: its data and code dependencies, params and outputs.

    `paths` (rpo.artifacts.Paths with subject `${item}`) places inputs and outputs (an ablation
    moves some under their variant's folder); `cmd` and `params` replace the stage's own; `values`
    fills params references (`${paths.subjects}`) for a dvc.yaml beside which no params.yaml lies.
    """
    from rpo.artifacts import Paths
    from rpo.stages import spec

    s = spec(stage)
    paths = paths or Paths(Path("."), "${item}")

    def where(name: str) -> str:
        if s.per_subject and isinstance(getattr(Paths, name, None), property):
            return getattr(paths, name).as_posix()
        for key, value in (values or {}).items():
            name = name.replace("${" + key + "}", value)
        return name

    body = {"cmd": cmd or command(stage),
            "deps": [where(d) for d in s.deps] + model_dirs(cfg, stage, root) + stage_code(stage, root),
            "params": list(params if params is not None else s.params_for(cfg))}
    for kind in ("outs", "metrics"):
        if getattr(s, kind):
            body[kind] = [where(o) for o in getattr(s, kind)]
    if s.plots:
        body["plots"] = [{where(o): {"x": x, "y": y}} for o, x, y in s.plots]
    return {"foreach": "${subjects}", "do": body} if s.per_subject else body


def rendered(cfg, root: Path = REPO) -> dict:
    from rpo.stages import STAGES

    return {name: render(name, cfg, root) for name in STAGES}


def sync(root: Path = REPO, check: bool = False) -> list[str]:
    """Write the rpo stages of root/dvc.yaml (other stages, comments and plots kept); the names that changed.

    With `check`, nothing is written.
    """
    from ruamel.yaml import YAML

    from rpo.artifacts import atomic_file
    from rpo.params import load_config

    cfg = load_config(root / "params.yaml")
    rt = YAML()
    rt.width = 120
    path = root / "dvc.yaml"
    doc = rt.load(path.read_text())
    stages = doc.setdefault("stages", {})
    changed = []
    for name, body in rendered(cfg, root).items():
        if _plain(stages.get(name)) != body:
            changed.append(name)
            stages[name] = body
    if changed and not check:
        import io

        buf = io.StringIO()
        rt.dump(doc, buf)
        with atomic_file(path) as tmp:
            tmp.write_text(buf.getvalue())
    return changed


def _plain(node):
    """ruamel's commented containers as plain dicts and lists, for comparison."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def cli(args) -> int:
    changed = sync(Path.cwd(), check=args.check)
    if args.check:
        if changed:
            print(f"dvc.yaml: stages {', '.join(changed)} do not match the code; run `rpo dvc sync`")
            return 1
        print("dvc.yaml: every stage's dependencies match its code")
        return 0
    print(f"dvc.yaml: rewrote {', '.join(changed)}" if changed else "dvc.yaml: already up to date")
    return 0
