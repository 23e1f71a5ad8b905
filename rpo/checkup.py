"""`rpo check`: what the check stage checks (params.yaml, every subject and photo), printed; nothing is written.

It also says when dvc.yaml no longer matches the code and params (`rpo dvc sync` rewrites it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rpo.params import config_from_args
from rpo.stages.check import check_all

log = logging.getLogger("rpo")


def cli(args) -> None:
    cfg = config_from_args(args)
    for s in check_all(Path.cwd(), cfg):
        print(f"{s.name}: {len(s.images)} images, class noun {s.class_noun!r}, {'live' if s.live else 'object'}")
    if (Path.cwd() / "dvc.yaml").exists() and (Path.cwd() / "pyproject.toml").exists():
        from rpo.deps import sync

        stale = sync(Path.cwd(), check=True)
        if stale:
            log.warning("dvc.yaml: stages %s do not match the code and params (e.g. a model or validate.keep "
                        "changed): run `rpo dvc sync`", ", ".join(stale))
