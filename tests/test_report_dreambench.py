"""The DreamBench catalog and import, and the ablation plan: no model is loaded here."""

from __future__ import annotations

import shutil

import pytest
import yaml
from PIL import Image

from conftest import DREAMBENCH, FAST, REPO, copy_project, rpo
from rpo import ablation
from rpo import params as P
from rpo.dreambench import CATALOG, DreamBenchError, add_subjects, check, read_classes
from rpo.subjects import load_subject


def test_catalog_holds_the_30_subjects_and_agrees_with_the_dataset():
    assert len(CATALOG) == 30
    assert sorted(n for n, e in CATALOG.items() if e.live) == \
        ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert read_classes(DREAMBENCH) == {n: e.class_noun for n, e in CATALOG.items()}
    check(DREAMBENCH, list(CATALOG))  # raises unless every folder is present with a usable number of photos


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


def test_full_size_mpo_originals_are_stored_upright_and_bounded(tmp_path):
    dataset = _full_size_copy(tmp_path)
    assert Image.open(next((dataset / "can").iterdir())).format == "MPO"
    (subject,) = add_subjects(dataset, tmp_path / "subjects", ["can"], min_size=512, max_size=1024)
    sizes = {Image.open(p).size for p in subject.images}
    assert sizes == {(1024, 1365)}  # 2048 x 1536 turned upright by EXIF, short side bounded to 1024
    with pytest.raises(DreamBenchError, match="below model.resolution"):
        add_subjects(dataset, tmp_path / "other", ["can"], min_size=512, max_size=256)


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "can"), "can: missing subject folder"),
    (lambda d: [p.unlink() for p in sorted((d / "can").iterdir())[1:]], "1 photos, expected"),
    (lambda d: (d / "prompts_and_classes.txt").write_text("can,bottle\n"), "class of 'can' is 'bottle'"),
    (lambda d: (d / "prompts_and_classes.txt").unlink(), "prompts_and_classes.txt: missing"),
    (lambda d: (d / "can" / "00.mpo").write_bytes(b"not an image"), "00.mpo: not a readable image"),
])
def test_a_missing_or_malformed_subject_folder_is_named(tmp_path, damage, message):
    dataset = _full_size_copy(tmp_path)
    damage(dataset)
    with pytest.raises(ValueError, match=message):
        add_subjects(dataset, tmp_path / "subjects", ["can"])
    assert not (tmp_path / "subjects" / "can").exists()


def test_the_cli_reports_a_bad_dataset_path_and_unknown_names(tmp_path):
    root = copy_project(tmp_path / "project", FAST)
    bad = rpo(root, "subjects", "add-dreambench", "--dataset", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "nowhere: no such DreamBench folder" in bad.stderr
    unknown = rpo(root, "subjects", "add-dreambench", "--dataset", str(DREAMBENCH), "unicorn", check=False)
    assert unknown.returncode == 2 and "not DreamBench subjects: unicorn" in unknown.stderr


# --- the ablation plan -------------------------------------------------------------------


def _params(**overrides):
    return P.apply_overrides(P.load(REPO / "params.yaml"), {**FAST, **overrides})


def test_tables_2_and_3_need_two_training_runs_and_reuse_the_main_row():
    params = _params(**{"validate.lambda_val": 0.3, "validate.early_stopping": True})
    rows = ablation.rows(params)
    assert [v.name for _, v in rows[2]] == ["lsim-last30", "rpo-last30", "lsim-es30", "rpo-es30"]
    assert [v.name for _, v in rows[3]] == ["rpo-es30", "rpo-es50", "rpo-es70"]
    assert {v.training for v in ablation.variants(params)} == {"rpo", "lsim"}
    assert ablation.main_variant(params) == ablation.Variant.parse("rpo-es30")


def test_the_generated_pipeline_trains_once_per_subject_and_moves_only_its_own_outputs():
    params = _params(**{"subjects": ["duck_toy", "dog"]})
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = ablation.pipeline(main, params, ["duck_toy", "dog"])["stages"]
    assert [s for s in stages if s.startswith("finetune")] == ["finetune-lsim"]
    assert "select-rpo-es30" not in stages  # the main pipeline's own row is not computed again
    lsim = stages["finetune-lsim"]["do"]
    assert "train.beta" not in lsim["params"] and "train.learning_rate" in lsim["params"]
    assert "ablations/lsim/models/${item}/checkpoints" in lsim["outs"] and "data/prior/${item}" in lsim["deps"]
    es50 = stages["select-rpo-es50"]["do"]  # selects from the main training's records
    assert "models/${item}/validation.parquet" in es50["deps"] and "validate.lambda_val" not in es50["params"]
    assert "ablations/lsim/models/${item}/validation.parquet" in stages["select-lsim-es30"]["do"]["deps"]
    ev = stages["evaluate-lsim-last30"]["do"]
    assert "ablations/lsim-last30/models/${item}/selected" in ev["deps"] and "evaluate.base_images" not in ev["params"]
    assert "metrics/dog.json" in stages["report"]["deps"]


def test_bad_ablation_requests_fail_before_any_work(tmp_path):
    with pytest.raises(P.ParamsError, match="0.01 grid"):
        ablation.rows(_params(**{"ablate.lambda_vals": [0.333]}))
    with pytest.raises(P.ParamsError, match="train.beta"):
        ablation.rows(_params(**{"train.beta": 0.0}))
    root = copy_project(tmp_path / "project", FAST)
    out = rpo(root, "ablate", "dog", check=False)
    assert out.returncode == 2 and "not in params.yaml `subjects`" in out.stderr
    assert not (root / "ablations").exists()
