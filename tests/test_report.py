"""Three DreamBench subjects on the tiny models: the report, its pictures, DVC plots, the lambda_val ablation.

The batch runs the stages in-process (one Python process, as the `pipeline_run` fixture does),
then `dvc commit` records them as `dvc repro` would have, so the DVC-driven parts (the report
stage, `dvc plots show`, `rpo ablate`) see a finished main pipeline and reuse it.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import DREAMBENCH, FAST, copy_project, dvc, git_init, needs_dreambench, rpo, run_stages, write_params
from rpo import artifacts as A
from rpo import params as P
from rpo.stages import STAGES
from rpo.subjects import load_subject

SUBJECTS = ["can", "dog", "teapot"]  # two objects, one live subject
GROUPS = {"all": SUBJECTS, "objects": ["can", "teapot"], "live": ["dog"]}
METRICS = ("dino", "clip_i", "clip_t", "reward")
# FAST cut further (one sampler step: the tiny models draw noise anyway), and two validations of one
# training step each, so the validation curve has a choice to make
BATCH = {**FAST, "subjects": SUBJECTS, "prior.images_per_prompt": 1, "prior.num_inference_steps": 1,
         "train.max_steps": 2, "validate.every": 1, "validate.num_inference_steps": 1,
         "evaluate.num_inference_steps": 1}

pytestmark = [pytest.mark.slow, needs_dreambench]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("dreambench") / "project", BATCH)
    rpo(root, "subjects", "add-dreambench", "--dataset", str(DREAMBENCH), *SUBJECTS)
    rpo(root, "stage", "check")
    for subject in SUBJECTS:
        run_stages(root, subject)
    git_init(root)
    dvc(root, "commit", "-f", *(s for s in STAGES if s != "report"))
    repro = dvc(root, "repro")
    return root, repro.stdout


def _metrics(root):
    return {s: {**A.read_json(A.Paths(root, s).about), **A.read_json(A.Paths(root, s).metrics)} for s in SUBJECTS}


def test_the_report_is_a_dvc_stage_over_the_recorded_batch(benchmark):
    root, repro = benchmark
    assert re.findall(r"Running stage '([^']+)'", repro) == ["report"]
    shown = json.loads(dvc(root, "metrics", "show", "--json").stdout)
    assert "reports/summary.json" in json.dumps(shown)


def test_report_rows_equal_the_subject_metrics_they_summarise(benchmark):
    root, _ = benchmark
    metrics, summary = _metrics(root), A.read_json(root / "reports" / "summary.json")
    text = (root / "reports" / "summary.md").read_text()
    assert "| row | n | DINO | CLIP-I | CLIP-T | r_λ (λ = 0.3) | source | models |" in text
    for key, label in (("summary", "RPO"), ("base", "base model")):
        for group, names in GROUPS.items():
            row = summary[key][group]
            assert row["n"] == len(names)
            cells = []
            for m in METRICS:
                values = [metrics[s][m] if key == "summary" else metrics[s][f"base_{m}"] for s in names]
                assert row[m]["mean"] == pytest.approx(np.mean(values))
                assert row[m]["std"] == pytest.approx(np.std(values))
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
            assert f"| {label}, {group} | {len(names)} | " + " | ".join(cells) + " | ours | base tiny " in text


def test_report_labels_published_rows_and_ours_with_their_models(benchmark):
    root, _ = benchmark
    models = _metrics(root)["dog"]["models"]
    summary = A.read_json(root / "reports" / "summary.json")
    text = (root / "reports" / "summary.md").read_text()
    assert summary["models"] == models
    assert f"DINO {models['dino_model']} · CLIP {models['clip_model']}" in text
    assert "| RPO, lambda_val 0.5 | 30 | 0.652 | 0.833 | 0.314 | n/a | published: RPO official README" in text
    assert "| DreamBooth (Stable Diffusion) | 30 | 0.668 | 0.803 | 0.305 |" in text
    rpo_models = "base stabilityai/stable-diffusion-2-1, reward kakaobrain/align-base; DINO facebook/dino-vits16"
    assert rpo_models in text
    # protocol fidelity: the preprocessing actually applied is stated, with the parameter that chose it
    assert "`evaluate.preprocessing: processor`" in text
    assert models["dino_preprocessing"] in text and "centre crop 32x32" in models["dino_preprocessing"]


def test_report_lists_each_subject_with_step_training_time_and_image_counts(benchmark):
    root, _ = benchmark
    text = (root / "reports" / "summary.md").read_text()
    for s, m in _metrics(root).items():
        group = "live" if m["live"] else "object"
        assert (f"| {s} | {m['class_noun']} | {group} | {m['selected_step']} | "
                f"{m['n_references']} | 25 x 1 | {m['dino']:.3f} | {m['clip_i']:.3f} | {m['clip_t']:.3f} |") in text
    timings = (root / "reports" / "timings.md").read_text()
    assert all(f"| {s} | " in timings for s in SUBJECTS)  # wall times beside the report, not in a DVC output


def _not_blank(path) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50, f"{path} looks blank"
    return pixels


def test_report_renders_a_grid_and_a_validation_curve_per_subject(benchmark):
    root, _ = benchmark
    params = P.load(root / "params.yaml")
    for s in SUBJECTS:
        refs = len(load_subject(root / params["paths"]["subjects"], s, check_images=False).images)
        grid = _not_blank(root / "reports" / "figures" / f"{s}_grid.png")
        # rows: references, base model, selected model; columns: the references or 5 prompts
        assert grid.shape == (3 * (160 + 30), 96 + max(refs, 5) * 160)
        curve = _not_blank(root / "reports" / "figures" / f"{s}_curve.png")
        assert curve.shape == (340, 900)


def test_dvc_plots_show_renders_the_curves_with_the_selected_step(benchmark):
    root, _ = benchmark
    data = json.loads(dvc(root, "plots", "show", "--json").stdout)["data"]
    for s, m in _metrics(root).items():
        (curve,) = data[f"reports/curves/{s}.csv"]
        values = curve["content"]["data"]["values"]
        assert {v["field"] for v in values} == {"reward", "align_i", "align_t"}
        assert {v["step"] for v in values if v["selected"] == "True"} == {str(m["selected_step"])}
        assert [p["type"] for p in data[f"reports/figures/{s}_grid.png"]] == ["image"]


def test_lambda_val_ablation_selects_every_row_from_one_training_run(benchmark):
    root, _ = benchmark
    write_params(root, {"ablate.lambda_vals": [0.3, 0.7]})  # one row from the main pipeline, one of its own
    first = rpo(root, "ablate", "dog", "--tables", "3")
    ran = re.findall(r"Running stage '([^']+)'", first.stdout + first.stderr)
    select, evaluate = "select-validate.lambda_val-0.7", "evaluate-evaluate.base_images-false_validate.lambda_val-0.7"
    assert sorted(ran) == [f"ablations/dvc.yaml:{evaluate}@dog", "ablations/dvc.yaml:report",
                           f"ablations/dvc.yaml:{select}@dog"]  # no finetune: the main one is reused
    # DVC's record: the row selected from exactly the outputs recorded for finetune@dog
    main_lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    trained = {o["path"]: o["md5"] for o in main_lock["finetune@dog"]["outs"]}
    lock = yaml.safe_load((root / "ablations" / "dvc.lock").read_text())["stages"]
    used = {d["path"]: d["md5"] for d in lock[f"{select}@dog"]["deps"]}
    for path in ("models/dog/validation.parquet", "models/dog/checkpoints"):
        assert used[path] == trained[path]
    rows = A.read_json(root / "reports" / "ablations.json")["tables"]["Table 3: lambda_val of selection"]
    assert [r["row"] for r in rows] == ["lambda_val = 0.3", "lambda_val = 0.7"]
    assert rows[0]["dino"]["mean"] == pytest.approx(_metrics(root)["dog"]["dino"])
    own = A.read_json(root / "ablations" / "evaluate.base_images-false_validate.lambda_val-0.7" / "metrics" / "dog.json")
    assert rows[1]["reward"]["mean"] == pytest.approx(own["reward"]) and own["lambda_val"] == 0.7
    text = (root / "reports" / "ablations.md").read_text()
    assert "| lambda_val = 0.3* | 1 |" in text and "| lambda_val = 0.7 | 1 |" in text
    assert "| RPO, lambda_val 0.7 | 0.679 | 0.850 | 0.304 |" in text
    paired = rows[1]["minus_main"]  # the same subject and seed as the main row
    assert paired["reward"]["n"] == 1 and "minus_main" not in rows[0]
    assert paired["dino"]["mean"] == pytest.approx(own["dino"] - _metrics(root)["dog"]["dino"])
    assert "Paired differences, row minus the main row" in text
    again = rpo(root, "ablate", "dog", "--tables", "3")
    assert "Running stage" not in again.stdout + again.stderr
