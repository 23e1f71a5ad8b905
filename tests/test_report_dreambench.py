"""The DreamBench catalog and import, and the ablation plan: no model is loaded here."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import DREAMBENCH, FAST, REPO, copy_project, needs_dreambench, rpo
from rpo import ablation
from rpo import params as P
from rpo.config import from_dict
from rpo.dreambench import CATALOG
from rpo.importer import DreamBenchError, add_dreambench, check_dreambench, read_classes
from rpo.subjects import load_subject


@needs_dreambench
def test_catalog_holds_the_30_subjects_and_agrees_with_the_dataset():
    assert len(CATALOG) == 30
    assert sorted(n for n, e in CATALOG.items() if e.live) == \
        ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert read_classes(DREAMBENCH) == {n: e.class_noun for n, e in CATALOG.items()}
    check_dreambench(DREAMBENCH, list(CATALOG))  # raises unless every folder is present


@needs_dreambench
def test_add_dreambench_imports_subjects_with_class_live_flag_and_credits(tmp_path):
    root = copy_project(tmp_path / "project", FAST)
    out = rpo(root, "subjects", "add-dreambench", "--dataset", str(DREAMBENCH), "dog", "teapot").stdout
    assert "added 2" in out
    dog = load_subject(root / "data" / "subjects", "dog")
    teapot = load_subject(root / "data" / "subjects", "teapot")
    assert (dog.class_noun, dog.live, len(dog.images)) == ("dog", True, len(list((DREAMBENCH / "dog").glob("*.jpg"))))
    assert (teapot.class_noun, teapot.live) == ("teapot", False)
    assert "unsplash.com/@alvannee" in (dog.folder / "CREDITS.md").read_text()  # CC BY 4.0 attribution kept
    again = rpo(root, "subjects", "add-dreambench", "--dataset", str(DREAMBENCH), "dog").stdout
    assert "added 0" in again  # existing subjects are kept, so a re-run after a fix is cheap


def _full_size_copy(tmp_path, name="can"):
    """A DreamBench folder whose `name` holds 2048 px MPO photos rotated by EXIF, like the originals."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    shutil.copy(DREAMBENCH / "prompts_and_classes.txt", dataset)
    (dataset / name).mkdir()
    for i, src in enumerate(sorted((DREAMBENCH / name).glob("*.jpg"))[:3]):
        big = Image.open(src).convert("RGB").resize((2048, 1536))
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees to display upright
        big.save(dataset / name / f"{i:02d}.mpo", format="MPO", save_all=True, append_images=[big], exif=exif)
    return dataset


@needs_dreambench
def test_full_size_mpo_originals_are_stored_upright_and_bounded(tmp_path):
    dataset = _full_size_copy(tmp_path)
    assert Image.open(next((dataset / "can").iterdir())).format == "MPO"
    (subject,) = add_dreambench(dataset, tmp_path / "subjects", ["can"], min_size=512, max_size=1024)
    sizes = {Image.open(p).size for p in subject.images}
    assert sizes == {(1024, 1365)}  # 2048 x 1536 turned upright by EXIF, short side bounded to 1024
    with pytest.raises(ValueError, match="below model.resolution"):
        add_dreambench(dataset, tmp_path / "other", ["can"], min_size=512, max_size=256)


@needs_dreambench
@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "can"), "can: missing subject folder"),
    (lambda d: [p.unlink() for p in sorted((d / "can").iterdir())], "can: no photos"),
    (lambda d: (d / "prompts_and_classes.txt").write_text("can,bottle\n"), "class of 'can' is 'bottle'"),
    (lambda d: (d / "prompts_and_classes.txt").unlink(), "prompts_and_classes.txt: missing"),
    (lambda d: (d / "can" / "00.mpo").write_bytes(b"not an image"), "00.mpo: not a readable image"),
])
def test_a_missing_or_malformed_subject_folder_is_named(tmp_path, damage, message):
    dataset = _full_size_copy(tmp_path)
    damage(dataset)
    with pytest.raises(ValueError, match=message):
        add_dreambench(dataset, tmp_path / "subjects", ["can"])
    assert not (tmp_path / "subjects" / "can").exists()


@needs_dreambench
def test_the_cli_reports_a_bad_dataset_path_and_unknown_names(tmp_path):
    root = copy_project(tmp_path / "project", FAST)
    bad = rpo(root, "subjects", "add-dreambench", "--dataset", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "nowhere: no such DreamBench folder" in bad.stderr
    unknown = rpo(root, "subjects", "add-dreambench", "--dataset", str(DREAMBENCH), "unicorn", check=False)
    assert unknown.returncode == 2 and "not DreamBench subjects: unicorn" in unknown.stderr


# --- the ablation plan -------------------------------------------------------------------


def _cfg(**overrides):
    return from_dict(P.apply_overrides(P.load(REPO / "params.yaml"), {**FAST, **overrides}))


def _plan(cfg, tables=(2, 3), subjects=("duck_toy",)):
    return ablation.paper_plan(cfg, list(subjects), tables)


def test_tables_2_and_3_need_two_training_runs_and_reuse_the_main_row():
    cfg = _cfg(**{"validate.lambda_val": 0.3, "validate.early_stopping": True})
    plan = _plan(cfg)
    trainings = {dict(r.training)["train.beta"] for r in plan.rows}
    assert trainings == {0.0, cfg.train.beta}
    main = [r for r in plan.rows if not ablation.overrides(cfg, r, cfg.seed, plan)]
    assert [r.label for r in main] == ["full RPO", "lambda_val = 0.3"]  # the same settings: one result, shared
    assert plan.base == main[0]


def test_the_generated_pipeline_trains_once_per_subject_and_moves_only_its_own_outputs():
    cfg = _cfg(**{"subjects": ["duck_toy", "dog"]})
    stages = ablation.pipeline(REPO, cfg, _plan(cfg, subjects=("duck_toy", "dog")))["stages"]
    assert [s for s in stages if s.startswith(("prior", "score", "labels", "finetune"))] == ["finetune-train.beta-0.0"]
    lsim = stages["finetune-train.beta-0.0"]["do"]
    assert "train.beta" not in lsim["params"] and "train.learning_rate" in lsim["params"]
    assert "ablations/train.beta-0.0/models/${item}/checkpoints" in lsim["outs"] and "data/prior/${item}" in lsim["deps"]
    assert "--set train.beta=0.0 stage finetune --subject ${item} --ablation" in lsim["cmd"]
    assert lsim["foreach"] == ["duck_toy", "dog"] if "foreach" in lsim else stages["finetune-train.beta-0.0"]["foreach"]
    es50 = stages["select-validate.lambda_val-0.5"]["do"]  # selects from the main training's records
    assert "models/${item}/validation.parquet" in es50["deps"] and "validate.lambda_val" not in es50["params"]
    assert "rpo/stages/select.py" in es50["deps"]  # the same code dependencies as the main stage
    assert "ablations/train.beta-0.0/models/${item}/validation.parquet" in \
        stages["select-train.beta-0.0"]["do"]["deps"]
    ev = stages["evaluate-evaluate.base_images-false_train.beta-0.0_validate.early_stopping-false"]["do"]
    assert "ablations/train.beta-0.0_validate.early_stopping-false/models/${item}/selected" in ev["deps"]
    assert "evaluate.base_images" not in ev["params"]
    assert "metrics/dog.json" in stages["report"]["deps"]


def test_paired_differences_match_each_run_with_the_main_rows_same_subject_and_seed():
    main, other, same = (ablation.Row(label, (("train.beta", beta),), True, 0.3)
                         for label, beta in (("main", 0.1), ("beta 0", 0.0), ("beta 0.2", 0.2)))
    runs = [("a", 0, 0.50, 0.60, 0.50), ("a", 1, 0.60, 0.72, 0.61),  # (subject, seed, main, beta 0, beta 0.2)
            ("b", 0, 0.20, 0.28, 0.18), ("b", 1, 0.30, 0.40, 0.31)]
    df = pd.DataFrame([{"row": r.label, "subject": s, "seed": seed, "judge_both": v}
                       for s, seed, *values in runs for r, v in zip((main, other, same), values)][::-1]  # any order
                      + [{"row": other.label, "subject": "c", "seed": 0, "judge_both": 0.9}])  # no main run to pair
    params = {"train": {"beta": 0.1}, "validate": {"early_stopping": True, "lambda_val": 0.3}}
    assert ablation.is_main(main.settings(), params) and not ablation.is_main(other.settings(), params)
    paired = ablation.minus_main(df, [main, other, same], params, ["judge_both"])
    assert set(paired) == {"beta 0", "beta 0.2"}
    diff = paired["beta 0"]["judge_both"]
    assert diff["n"] == 4 and diff["mean"] == pytest.approx(0.10)  # (0.10 + 0.12 + 0.08 + 0.10) / 4
    assert diff["ci95"] == pytest.approx(3.182 * np.std([0.10, 0.12, 0.08, 0.10], ddof=1) / 2)
    assert ablation.signed(diff).startswith("**+0.100")  # the pairs all agree: outside the interval
    assert not ablation.signed(paired["beta 0.2"]["judge_both"]).startswith("**")  # -0.02 .. +0.01: inside
    assert ablation.minus_main(df, [other, same], params, ["judge_both"]) == {}  # no main row in the table


def test_a_seeds_axis_reruns_the_data_stages_once_per_seed():
    cfg = _cfg(**{"ablate.seeds": [0, 1]})
    stages = ablation.pipeline(REPO, cfg, _plan(cfg, tables=(3,)))["stages"]
    assert [s for s in stages if s.startswith(("prior", "score", "labels", "finetune"))] == \
        ["prior-seed-1", "score-seed-1", "labels-seed-1", "finetune-seed-1"]
    assert "ablations/seed-1/data/prior/${item}" in stages["score-seed-1"]["do"]["deps"]


def test_bad_ablation_requests_fail_before_any_work(tmp_path):
    with pytest.raises(P.ParamsError, match="0.01 grid"):
        _plan(_cfg(**{"ablate.lambda_vals": [0.333], "validate.keep": "selectable"}))
    with pytest.raises(P.ParamsError, match="train.beta"):
        _plan(_cfg(**{"train.beta": 0.0}))
    root = copy_project(tmp_path / "project", FAST)
    out = rpo(root, "ablate", "dog", check=False)
    assert out.returncode == 2 and "not in params.yaml `subjects`" in out.stderr
    assert not (root / "ablations").exists()
