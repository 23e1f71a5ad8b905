"""Plug-ins: named models and per-image judges that packages add to the core, through entry points.

- group `rpo.models`: a module with `NAMES` (tuple of model names) and `path(name) -> Path`, the
  directory the name stands for (built on first use, or shipped with the package). The core's own
  tiny models are registered this way (`tiny = "rpo.tiny"` in pyproject.toml), the world's too.
- group `rpo.judges`: a module with `judge(subject, token)`, an object with `add(which, images,
  prompts)`, `summary(which) -> dict` and `write(folder)`; `evaluate.judges: NAME` selects it, and
  every number of its summary becomes a column of the subject's metrics and of the report.

A module is imported only when one of its names is used. `rpo.deps` reads a module's calls of
these functions (GROUP_OF, and `plugin("<group>", ...)`) to add the group's modules to the DVC
dependencies of the stages that make them.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from types import ModuleType


GROUP_OF = {"model_path": "rpo.models", "judge": "rpo.judges"}  # the entry-point group each lookup loads from


@functools.lru_cache(maxsize=None)
def _declared(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)}


def plugin(group: str, name: str) -> ModuleType:
    """The module registered as `name` under `group`, imported."""
    return importlib.import_module(_declared(group)[name])


def plugins(group: str) -> dict[str, ModuleType]:
    """Every module registered under `group`, imported."""
    return {name: plugin(group, name) for name in _declared(group)}


def model_path(name: str, build: bool = True) -> str:
    """A registered name becomes its directory; anything else (a hub id, a local path) is returned as it is.

    `build=False` only says where a model built on first use (the tiny ones) would be, without building it.
    """
    for module in plugins("rpo.models").values():
        if name in module.NAMES:
            locate = module.path if build else getattr(module, "location", module.path)
            return str(locate(name))
    return name


def judge_names() -> list[str]:
    return sorted(_declared("rpo.judges"))


def judge(name: str, subject: str, token: str):
    """The judge `evaluate.judges` names for one subject, or None for "none"."""
    if name == "none":
        return None
    return plugin("rpo.judges", name).judge(subject, token)
