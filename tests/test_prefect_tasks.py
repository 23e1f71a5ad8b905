"""The Prefect tasks' helpers without a server: streaming a command's output, input errors, overrides, dvc.lock merge."""

from __future__ import annotations

import logging
import sys

import pytest
import yaml
from conftest import FAST, copy_project

from tasks import dvc, process
from tasks.publish import key
from tasks.workspace import write_params


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def log():
    logger = logging.getLogger("test-prefect-tasks")
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


def test_run_streams_every_line_and_every_progress_update(tmp_path, log):
    script = "import sys; sys.stderr.write('bar 1/3\\rbar 2/3\\r\\x1b[Abar 3/3\\n'); print('done')"
    out = process.run([sys.executable, "-c", script], tmp_path, log)
    assert log.handlers[0].lines == ["bar 1/3", "bar 2/3", "bar 3/3", "done"]
    assert out.splitlines()[-1] == "done"


def test_a_bad_input_fails_without_retry_and_says_why(tmp_path, log):
    script = "import sys; print('rpo: error: data/subjects/x/01.jpg: not a readable image'); sys.exit(2)"
    with pytest.raises(process.BadInputError, match="01.jpg: not a readable image"):
        process.run([sys.executable, "-c", script], tmp_path, log)
    with pytest.raises(process.CommandError, match="exited with 3") as failed:
        process.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path, log)
    assert not isinstance(failed.value, process.BadInputError) and "boom" in str(failed.value)


def test_overrides_go_into_the_workspace_params_validated(tmp_path):
    ws = copy_project(tmp_path / "ws", FAST)
    params = write_params(ws, ["duck_toy"], {"train.max_steps": 200})
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["max_steps"] == 200 == params["train"]["max_steps"]
    with pytest.raises(process.BadInputError, match="train.max_steps: must be >= 1"):
        write_params(ws, ["duck_toy"], {"train.max_steps": 0})
    with pytest.raises(process.BadInputError, match="train.max_stepz: unknown key"):
        write_params(ws, ["duck_toy"], {"train.max_stepz": 1})


def test_merge_lock_adds_stages_locked_elsewhere_and_keeps_its_own(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prior@a": {"cmd": "x"}}}))
    dvc.merge_lock(tmp_path, [{"stage": "evaluate@b", "cmd": "rpo stage evaluate --subject b", "outs": []}])
    stages = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert stages == {"prior@a": {"cmd": "x"}, "evaluate@b": {"cmd": "rpo stage evaluate --subject b", "outs": []}}


def test_artifact_keys_use_only_what_prefect_allows():
    assert key("Duck_Toy 2", "metrics") == "rpo-duck-toy-2-metrics"
