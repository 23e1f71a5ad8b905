"""The TPU path, run on the CPU: torch_xla's device with PJRT_DEVICE=CPU, in the `tpu` extra's environment.

    UV_PROJECT_ENVIRONMENT=.venv-tpu uv sync --frozen --extra tpu
    PJRT_DEVICE=CPU .venv-tpu/bin/python -m pytest -q -n 0 tests/test_xla.py     (.ci/run's second step)

Skipped where torch_xla is not installed (the default environment). The bundled subject runs through every
stage twice, on the eager CPU and under `device: auto` with PJRT_DEVICE=CPU, both in fp32, and the XLA run's
artifacts must equal the CPU run's within the tolerances below.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("torch_xla", reason="torch_xla is not installed: uv sync --extra tpu")

from conftest import FAST, copy_project, run_stages  # noqa: E402

pytestmark = pytest.mark.slow
SUBJECT = FAST["subjects"][0]
EXACT = {"model.dtype": "fp32", "train.mixed_precision": "fp32", "evaluate.base_images": False}
MODEL_STAGES = ("prior", "score", "finetune", "evaluate")
# ops torch_xla 2.9 runs on the host here: transformers' text towers read their padding mask
# (_local_scalar_dense), and the U-Net's upsampling backward is lowered for TPUs only
KNOWN_FALLBACKS = {"aten::_local_scalar_dense", "aten::upsample_nearest2d_backward"}


@pytest.fixture(scope="module")
def pjrt_cpu():
    old = os.environ.get("PJRT_DEVICE")
    os.environ["PJRT_DEVICE"] = "CPU"
    yield
    if old is None:
        os.environ.pop("PJRT_DEVICE")
    else:
        os.environ["PJRT_DEVICE"] = old


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("cpu") / "project", {**FAST, **EXACT, "device": "cpu"})
    run_stages(root, SUBJECT)
    return root


@pytest.fixture(scope="module")
def xla_run(tmp_path_factory, pjrt_cpu, cpu_run):
    root = copy_project(tmp_path_factory.mktemp("xla") / "project", {**FAST, **EXACT, "device": "auto"})
    run_stages(root, SUBJECT)
    return root


def run_log(root, stage: str) -> dict:
    return json.loads((root / "logs" / SUBJECT / f"{stage}.json").read_text())


def test_device_auto_runs_every_model_stage_on_xla(xla_run):
    for stage in MODEL_STAGES:
        log = run_log(xla_run, stage)
        assert log["device"] == "xla:0", log
        assert log["xla_compilations"] > 0 and log["xla_executions"] > 0, log
        assert set(log["xla_fallback_ops"]) <= KNOWN_FALLBACKS, log
    metrics = json.loads((xla_run / "metrics" / f"{SUBJECT}.json").read_text())
    assert {"dino", "clip_i", "clip_t", "reward"} <= set(metrics)


def test_generation_on_xla_draws_the_cpu_images(cpu_run, xla_run):
    manifest = pd.read_parquet(cpu_run / "data" / "prior" / SUBJECT / "manifest.parquet")
    for path in manifest["path"]:
        a = np.asarray(Image.open(cpu_run / path), dtype=np.int16)
        b = np.asarray(Image.open(xla_run / path), dtype=np.int16)
        assert np.abs(a - b).max() <= 2, path  # 8-bit pixels; measured: at most 1


def test_scoring_on_xla_gives_the_cpu_scores(cpu_run, xla_run):
    a = pd.read_parquet(cpu_run / "data" / "rewards" / f"{SUBJECT}.parquet")
    b = pd.read_parquet(xla_run / "data" / "rewards" / f"{SUBJECT}.parquet")
    for col in ("align_i", "align_t", "reward"):
        np.testing.assert_allclose(b[col], a[col], atol=1e-4, err_msg=col)  # measured: 1.6e-5


def test_finetune_on_xla_gives_the_cpu_losses_and_weights(cpu_run, xla_run):
    la, lb = (pd.read_parquet(r / "data" / "labels" / f"{SUBJECT}.parquet") for r in (cpu_run, xla_run))
    assert la["y"].tolist() == lb["y"].tolist()  # the same labels (P differs in the 5th decimal)
    np.testing.assert_allclose(lb["p"], la["p"], atol=1e-4)
    a, b = (pd.read_csv(r / "models" / SUBJECT / "train_log.csv") for r in (cpu_run, xla_run))
    assert list(a.columns) == list(b.columns) and list(a["step"]) == list(b["step"])
    for col in ("loss", "l_sim", "l_pref", "grad_norm"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-4, atol=1e-6, err_msg=col)  # measured: 1e-6
    from safetensors.torch import load_file

    last = f"step_{FAST['train.max_steps']:05d}/diffusion_pytorch_model.safetensors"
    wa, wb = (load_file(r / "models" / SUBJECT / "checkpoints" / last) for r in (cpu_run, xla_run))
    assert wa.keys() == wb.keys()
    for k in wa:  # fp16 checkpoints, saved from the device
        np.testing.assert_allclose(wb[k].float().numpy(), wa[k].float().numpy(), atol=2e-3, err_msg=k)  # 1.1e-4


def test_evaluation_on_xla_gives_the_cpu_metrics(cpu_run, xla_run):
    a, b = (json.loads((r / "metrics" / f"{SUBJECT}.json").read_text()) for r in (cpu_run, xla_run))
    for k in ("dino", "clip_i", "clip_t", "reward"):
        assert b[k] == pytest.approx(a[k], abs=1e-4), k


def test_training_graphs_compile_once(xla_run):
    """A longer run in the same process compiles nothing new: every step and validation has the shapes of
    the first run's, so a run's compilations do not grow with its steps."""
    from rpo import params as P

    params = P.apply_overrides(P.load(xla_run / "params.yaml"), {"train.max_steps": 6})
    run_stages(xla_run, SUBJECT, ["finetune"], params)
    log = run_log(xla_run, "finetune")
    assert log["xla_compilations"] == 0, log
