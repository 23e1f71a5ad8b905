"""Bad input fails early and clearly; photos in any PIL mode load upright and RGB; interrupted stages leave no output."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image

from conftest import FAST, copy_project, rpo, run_stages, write_params
from rpo.images import load_rgb

SUBJECT = "duck_toy"


@pytest.fixture
def empty_cache(tmp_path):
    """An empty model cache: a stage that built or loaded a tiny model would fill it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return {"RPO_CACHE": str(cache)}, cache


def _fails(root, env, *args, match: str):
    proc = rpo(root, *args, check=False, env=env[0])
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(env[1].iterdir()) == [], "a model was built or loaded before the input was checked"
    return proc.stderr


def _subject_dir(root):
    return root / "data" / "subjects" / SUBJECT


def test_unknown_subject(project, empty_cache):
    _fails(project, empty_cache, "stage", "prior", "--subject", "no_such_dog", match="unknown subject 'no_such_dog'")


def test_subject_folder_without_images(project, empty_cache):
    for img in _subject_dir(project).glob("*.jpg"):
        img.unlink()
    _fails(project, empty_cache, "stage", "prior", "--subject", SUBJECT, match=f"{_subject_dir(project)}: no images")


def test_numbers_in_yaml_1_2_form_are_numbers(project, empty_cache):
    _fails(project, empty_cache, "--set", "train.learning_rate=fast", "check",
           match="train.learning_rate: must be a number, got 'fast'")
    # a check that passes reads the base model's model_index.json (and builds a tiny model for that)
    out = rpo(project, "--set", "train.learning_rate=1e-3", "--set", "labels.tau=2E-1", "check", env=empty_cache[0])
    assert f"{SUBJECT}: 4 images" in out.stdout


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all", b"\xff\xd8\xff\xe0garbage"])
def test_corrupt_or_non_image_file(project, empty_cache, content):
    bad = _subject_dir(project) / "01.jpg"
    bad.write_bytes(content)
    _fails(project, empty_cache, "stage", "score", "--subject", SUBJECT, match=f"{bad}: not a readable image")


def test_image_smaller_than_the_model_resolution(project, empty_cache):
    small = _subject_dir(project) / "02.jpg"
    Image.new("RGB", (20, 24), "red").save(small)
    _fails(project, empty_cache, "stage", "finetune", "--subject", SUBJECT,
           match=f"{small}: 20x24 px is smaller than the model's resolution 32 px")


@pytest.mark.parametrize("key,value,message", [
    ("validate.lambda_val", 1.5, "validate.lambda_val: must be <= 1.0, got 1.5"),
    ("reward.lambda_train", -0.1, "reward.lambda_train: must be >= 0.0, got -0.1"),
    ("train.max_steps", -5, "train.max_steps: must be >= 1, got -5"),
    ("train.max_steps", "many", "train.max_steps: must be an integer, got 'many'"),
    ("train.share_noise", "yes", "train.share_noise: must be true or false"),
])
def test_invalid_params_name_the_key(project, empty_cache, key, value, message):
    params = yaml.safe_load((project / "params.yaml").read_text())
    section, name = key.split(".")
    params[section][name] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _fails(project, empty_cache, "stage", "prior", "--subject", SUBJECT, match=message)


def test_unknown_and_missing_keys(project, empty_cache):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["max_stepz"] = 3
    del params["labels"]["tau"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    err = _fails(project, empty_cache, "check", match="train.max_stepz: unknown key")
    assert "labels.tau: missing" in err


def test_missing_upstream_artifact_names_the_file(project, empty_cache):
    _fails(project, empty_cache, "stage", "select", "--subject", SUBJECT,
           match=f"{project / 'models' / SUBJECT / 'validation.parquet'}: missing")


def _exif_rotated(path):
    im = Image.new("RGB", (40, 20), "white")
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    im.save(path, exif=exif)


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here")
@pytest.mark.parametrize("how", ["device=xla", "PJRT_DEVICE=TPU"])
def test_xla_without_torch_xla_names_the_extra(project, empty_cache, how):
    """`device: xla`, or `auto` under PJRT_DEVICE, without the tpu extra: exit 2 before any model loads."""
    overrides, env = (["--set", how], {}) if how.startswith("device") else ([], {"PJRT_DEVICE": "TPU"})
    empty_cache[0].update(env)
    _fails(project, empty_cache, *overrides, "stage", "prior", "--subject", SUBJECT,
           match="needs torch_xla, which is not installed: install it with `uv sync --extra tpu`")


def test_pick_device_without_torch_xla(monkeypatch):
    from rpo.device import DeviceError, pick_device
    from rpo.params import ParamsError

    monkeypatch.setitem(sys.modules, "torch_xla", None)  # as if not installed, in either environment
    with pytest.raises(DeviceError, match="device: xla needs torch_xla") as e:
        pick_device("xla")
    assert isinstance(e.value, ParamsError)  # the CLI's user error: one line, exit code 2
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(DeviceError, match="PJRT_DEVICE=TPU needs torch_xla"):
            pick_device("auto")
    assert pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "MPO", "EXIF"])
def test_any_pil_mode_becomes_upright_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.{'jpg' if mode in ('CMYK', 'MPO', 'EXIF') else 'png'}"
    if mode == "EXIF":
        _exif_rotated(path)
    elif mode == "MPO":
        frames = [Image.new("RGB", (40, 30), c) for c in ("blue", "yellow")]
        frames[0].save(path, format="MPO", save_all=True, append_images=frames[1:])
    elif mode == "RGBA":
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(path)  # fully transparent red
    else:
        Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode).save(path)
    im = load_rgb(path)
    assert im.mode == "RGB"
    if mode == "EXIF":
        assert im.size == (20, 40)
        assert im.getpixel((10, 2))[0] > 200 and im.getpixel((10, 2))[1] < 80  # the red band is now on top
    else:
        assert im.size == (40, 30)
    if mode == "RGBA":
        assert im.getpixel((5, 5)) == (255, 255, 255)  # transparent pixels on white, not black
    if mode == "MPO":
        assert Image.open(path).format == "MPO" and im.getpixel((5, 5))[2] > 200  # first picture: blue


def test_subjects_add_validates_then_copies(project, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, mode in enumerate(["RGB", "RGBA", "L"]):
        Image.new(mode, (64, 48)).save(photos / f"{i}.png")
    out = rpo(project, "subjects", "add", "cup", "--images", str(photos), "--class-noun", "cup")
    assert "added cup: 3 images" in out.stdout
    dest = project / "data" / "subjects" / "cup"
    assert yaml.safe_load((dest / "subject.yaml").read_text()) == {"class_noun": "cup", "live": False}
    assert "cup" in rpo(project, "subjects", "list").stdout
    assert sorted(p.name for p in dest.glob("*.png")) == ["00.png", "01.png", "02.png"]
    assert all(Image.open(p).mode == "RGB" for p in dest.glob("*.png"))

    (photos / "3.png").write_bytes(b"broken")
    proc = rpo(project, "subjects", "add", "cup2", "--images", str(photos), "--class-noun", "cup", check=False)
    assert proc.returncode == 2 and f"{photos / '3.png'}: not a readable image" in proc.stderr
    assert not (project / "data" / "subjects" / "cup2").exists()
    proc = rpo(project, "subjects", "add", "cup", "--images", str(photos), "--class-noun", "cup", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_paper_preset_rewrites_only_its_keys_and_keeps_comments(project):
    write_params(project, {"subjects": ["duck_toy"], "seed": 7})
    out = rpo(project, "preset", "paper")
    assert "preset 'paper'" in out.stdout
    after = yaml.safe_load((project / "params.yaml").read_text())
    assert after["model"]["base"] == "stabilityai/stable-diffusion-2-1" and after["model"]["resolution"] == 512
    assert after["reward"]["model"] == "kakaobrain/align-base"
    assert after["train"]["max_steps"] == 400 and after["validate"]["every"] == 40
    assert after["seed"] == 7 and after["subjects"] == ["duck_toy"]
    proc = rpo(project, "preset", "nonsense", check=False)
    assert proc.returncode == 2 and "unknown preset 'nonsense'" in proc.stderr


def test_preset_keeps_the_comments_of_the_shipped_params(tmp_path):
    root = copy_project(tmp_path / "fresh")
    comment = "# AdamW, constant schedule"
    assert comment in (root / "params.yaml").read_text()
    rpo(root, "preset", "paper")
    text = (root / "params.yaml").read_text()
    assert comment in text and "5.0e-06" in text.replace("5e-06", "5.0e-06")


@pytest.mark.slow
def test_finetune_killed_half_way_leaves_nothing_that_select_would_take(tmp_path):
    root = copy_project(tmp_path / "kill", {**FAST, "train.max_steps": 400, "validate.every": 2})
    paths = run_stages(root, SUBJECT, ["prior", "score", "labels"]).paths
    proc = subprocess.Popen([sys.executable, "-m", "rpo.cli", "stage", "finetune", "--subject", SUBJECT], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(paths.checkpoints.glob("step_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "finetune ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(paths.checkpoints.glob("step_*")) and not paths.validation.exists()
    # a killed write may leave a hidden temporary; every checkpoint under its final name is whole
    for ckpt in paths.checkpoints.glob("step_*"):
        assert (ckpt / "diffusion_pytorch_model.safetensors").exists() and (ckpt / "config.json").exists()
    select = rpo(root, "stage", "select", "--subject", SUBJECT, check=False)
    assert select.returncode == 2 and "validation.parquet: missing" in select.stderr


# --- every command that takes user input: checked whole before anything is written ---------------------------

LONG = "x" * 300
BAD_REQUESTS = [
    (["subjects", "add", "", "--images", "{photos}", "--class-noun", "cup"], "subject name '': must not be empty"),
    (["subjects", "add", "   ", "--images", "{photos}", "--class-noun", "cup"], "must not be empty"),
    (["subjects", "add", LONG, "--images", "{photos}", "--class-noun", "cup"], "300 characters, at most 64"),
    (["subjects", "add", "cup", "--images", "{photos}", "--class-noun", "   "], "class noun must be a non-empty word"),
    (["subjects", "add", "cup", "--images", "{photos}", "--class-noun", LONG], "is 300 characters, at most 64"),
    (["subjects", "add", "cup", "--images", "{photos}/nowhere", "--class-noun", "cup"], "nowhere: not a directory"),
    (["subjects", "add", "cup", "--images", "{photos}", "--class-noun", "cup", "--max-size", "8"],
     "--max-size 8 px is below model.resolution 32 px"),
    (["subjects", "add", "cup", "--images", "{broken}", "--class-noun", "cup"], "not a readable image"),
    (["--set", "train.max_steps=", "check"], "train.max_steps: must be an integer, got ''"),
    (["--set", "train.max_steps", "check"], "expected KEY=VALUE"),
    (["preset", ""], "unknown preset ''"),
    (["stage", "prior", "--subject", ""], "subject name '': must not be empty"),
    (["stage", "prior", "--subject", LONG], "300 characters, at most 64"),
    (["export", "--subject", SUBJECT, "--out", ""], "--out: must not be empty"),
    (["export", "--subject", SUBJECT, "--out", "{photos}/x", "--step", "-1"], "--step: must be >= 1"),
    (["sample", "--subject", SUBJECT, "--prompt", LONG * 2], "--prompt: 600 characters, at most 500"),
    (["ablate", ""], "subject name '': must not be empty"),
]


@pytest.fixture
def photos(tmp_path):
    good = tmp_path / "photos"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 90, 160)).save(good / f"{i}.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48)).save(broken / f"{i}.png")
    (broken / "2.png").write_bytes(b"half a png")
    return good, broken


def _snapshot(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if ".rpo" not in p.parts}


@pytest.mark.parametrize("args, message", BAD_REQUESTS, ids=[" ".join(a)[:40] for a, _ in BAD_REQUESTS])
def test_a_bad_request_fails_in_one_line_before_anything_is_written(project, photos, args, message):
    good, broken = photos
    args = [a.replace("{photos}", str(good)).replace("{broken}", str(broken)) for a in args]
    before = _snapshot(project)
    proc = rpo(project, *args, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or proc.stderr.startswith("rpo: error: params.yaml")
    assert _snapshot(project) == before  # nothing written, nothing touched


def test_a_multi_subject_import_writes_nothing_when_a_later_photo_is_broken(project, tmp_path):
    from conftest import DREAMBENCH, needs_dreambench  # noqa: F401

    if not (DREAMBENCH / "can").is_dir():
        pytest.skip(f"DreamBench photos not found at {DREAMBENCH}")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "prompts_and_classes.txt").write_text((DREAMBENCH / "prompts_and_classes.txt").read_text())
    for name in ("can", "teapot"):
        (dataset / name).mkdir()
        for p in sorted((DREAMBENCH / name).iterdir())[:3]:
            (dataset / name / p.name).write_bytes(p.read_bytes())
    last = sorted((dataset / "teapot").iterdir())[-1]
    last.write_bytes(b"not a photo")
    proc = rpo(project, "subjects", "add-dreambench", "--dataset", str(dataset), "can", "teapot", check=False)
    assert proc.returncode == 2 and f"{last}: not a readable image" in proc.stderr
    assert not (project / "data" / "subjects" / "can").exists()  # the first subject was not written either


def test_one_photo_works_with_a_warning_and_many_photos_are_all_kept(project, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (64, 64), "red").save(one / "a.png")
    proc = rpo(project, "subjects", "add", "solo", "--images", str(one), "--class-noun", "ball")
    assert "1 photos; the paper uses 3 to 6" in proc.stderr and "added solo: 1 images" in proc.stdout
    many = tmp_path / "many"
    many.mkdir()
    for i in range(14):
        Image.new("RGB", (64, 64), (i * 15, 0, 0)).save(many / f"{i:02d}.png")
    proc = rpo(project, "subjects", "add", "crowd", "--images", str(many), "--class-noun", "ball")
    assert "14 photos; the paper uses 3 to 6 (all 14 are kept)" in proc.stderr and "added crowd: 14 images" in proc.stdout


def test_stale_temporaries_of_a_killed_command_are_removed_and_do_not_break_listing(project):
    stale = project / ".rpo" / "tmp" / "999999999" / ".cup.abc.tmp"  # a pid no process has
    stale.mkdir(parents=True)
    (stale / "00.png").write_bytes(b"half")
    out = rpo(project, "subjects", "list").stdout
    assert SUBJECT in out and "cup" not in out
    assert not (project / ".rpo" / "tmp" / "999999999").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda root: write_params(root, {"subjects": [SUBJECT, "no_such_dog"]}), "unknown subject 'no_such_dog'"),
    (lambda root: (root / "data" / "subjects" / SUBJECT / "02.jpg").write_bytes(b"broken"), "02.jpg: not a readable image"),
])
def test_dvc_repro_stops_at_the_check_before_any_model_stage(tmp_path, damage, message):
    from conftest import dvc, git_init

    root = copy_project(tmp_path / "p", FAST)
    damage(root)
    git_init(root)
    proc = dvc(root, "repro", check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert "Running stage 'check'" in proc.stdout and "Running stage 'prior" not in proc.stdout
    assert not (root / "data" / "prior").exists()
