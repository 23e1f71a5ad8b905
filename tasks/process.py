"""Run a command in a run's workspace and stream its output into the run's log as it comes.

Stage commands print their own progress (DVC's "Running stage", the stage's log lines,
tqdm bars); forwarding each line is how the Prefect log says how far a stage is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

# `rpo` exits 2 with "rpo: error: ..." when params, a subject folder or a photo is wrong
BAD_INPUT = re.compile(r"rpo: error: (.*)")
_LINE_END = re.compile(rb"[\r\n]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor between nested bars


class CommandError(RuntimeError):
    """A command failed; the message ends with the last lines of its output."""


class BadInputError(CommandError):
    """Params, a subject folder or a photo is wrong: a retry cannot help, the user must fix the input."""


def environment(workspace: Path) -> dict[str, str]:
    """The workspace's checkout first on the Python path (the core and the world plug-in), so `rpo ...` stage
    commands run the run's own library."""
    paths = [str(workspace), str(Path(workspace) / "world"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `rpo`, `dvc` of this env
        "DVC_NO_ANALYTICS": "1",
        "TQDM_MININTERVAL": "10",  # one progress line per bar every 10 s in the log, not hundreds
    }


def run(cmd: list[str], workspace: Path, log=None, skip: re.Pattern | None = None) -> str:
    """Run `cmd` in `workspace`, logging every output line but those `skip` matches; return the output."""
    proc = subprocess.Popen(cmd, cwd=workspace, env=environment(workspace), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    for line in _lines(proc.stdout):
        if log and not (skip and skip.search(line)):
            log.info("%s", line)
        lines.append(line)
    if proc.wait() != 0:
        raise _error(cmd, proc.returncode, lines)
    return "\n".join(lines)


def _lines(stream):
    """Decoded, non-empty lines; a carriage return (a tqdm update) ends a line too."""
    buffer = b""
    while chunk := stream.read1(65536):
        *done, buffer = _LINE_END.split(buffer + chunk)
        yield from (s for s in map(_clean, done) if s)
    if tail := _clean(buffer):
        yield tail


def _clean(raw: bytes) -> str:
    return _ANSI.sub("", raw.decode(errors="replace")).strip()


def _error(cmd: list[str], code: int, lines: list[str]) -> CommandError:
    bad = [m.group(1) for line in lines if (m := BAD_INPUT.search(line))]
    if bad:
        return BadInputError(bad[-1])
    tail = "\n".join(deque(lines, maxlen=15))
    return CommandError(f"`{' '.join(cmd[2:] if cmd[:2] == [sys.executable, '-m'] else cmd)}` exited with {code}:\n{tail}")
