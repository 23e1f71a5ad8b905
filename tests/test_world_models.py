"""The world's committed models: loaded by the product's own loading path, offline, and good at their jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from rpo.encoders import HFDualEncoder, HFImageEncoder
from rpo.registry import model_path as resolve
from rpo.generate import load_pipeline
from rpo_world.data import batch
from rpo_world.grammar import CONTEXTS, SHAPES
from rpo_world.judges import HEADS, Judges, accuracy
from rpo_world.weights import NAMES
from rpo_world.weights import path as model_path
from rpo_world.probe import probe_scenes, prompt_following

MB = 2**20


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def judges():
    return Judges.from_pretrained(model_path("world-judges"))


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("world", torch.device("cpu"))


def test_committed_weights_are_small_half_precision_safetensors():
    from safetensors import safe_open

    for name in NAMES:
        files = list(model_path(name).rglob("*"))
        assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")], name
        for f in (f for f in files if f.suffix == ".safetensors"):
            assert f.stat().st_size < 30 * MB, f
            with safe_open(f, "pt") as st:
                floats = {st.get_slice(k).get_dtype() for k in st.keys()} - {"I64"}
                assert floats == {"F16"}, (f, floats)


def test_world_names_resolve_to_the_committed_directories_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in NAMES:
        assert Path(resolve(name)).is_dir() and Path(resolve(name)) == model_path(name)


def test_judges_read_fresh_renders(judges):
    """>= 0.99 on every attribute, except patterns under the Van Gogh style (no evaluation prompt asks for it)."""
    images, scenes, _ = batch(987_654, 0, 2048, "judge")  # a seed no training batch used
    acc = accuracy(judges, images, scenes)
    assert set(acc) == {f"acc_{k}" for k in HEADS}
    assert min(v for k, v in acc.items() if k != "acc_pattern") >= 0.99, acc
    assert acc["acc_pattern"] >= 0.985, acc  # measured 0.992: 16 of its 17 errors are on styled scenes
    plain = [i for i, s in enumerate(scenes) if s.style is None]
    assert min(accuracy(judges, images[plain], [scenes[i] for i in plain]).values()) >= 0.995


def test_reward_and_metric_encoders_load_as_real_ones_do():
    clip = HFDualEncoder("world-clip")
    dino = HFImageEncoder("world-dino")
    images, scenes, _ = batch(5, 0, 8, "encoder")
    from PIL import Image

    pil = [Image.fromarray(im) for im in images]
    img, txt = clip.embed_images(pil), clip.embed_texts(["a red toy on the beach", "a blue pet in the snow"])
    assert img.shape[0] == 8 and txt.shape[0] == 2
    assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-4)
    assert dino.embed_images(pil).shape[0] == 8


# Measured on the committed model at the world preset's guidance 4 (20 DDIM steps, 128 prompts for each of the seeds
# 11, 12, 21, 22; `rpo-world probe`): shape 0.982, colour 0.986, pattern 0.807, noun 1.000, context 1.000 over the 512
# (the model before the text encoder trained with the U-Net: shape 0.44 to 0.51, pattern 0.35 to 0.43, colour 0.91).
# This test's seed 11 alone: shape 0.984, colour 0.977, pattern 0.695, noun 1.000 (its prompts' patterns are the
# hardest of the four). 128 samples carry a standard error of 0.04 on pattern and at most 0.015 on the others:
# the floors sit about 2 to 3 of them below seed 11's values, room for another CPU's arithmetic (bf16 with AMX).
FLOORS = {"sample_context": 0.95, "sample_colour": 0.94, "sample_shape": 0.94, "sample_pattern": 0.62, "sample_noun": 0.95}
# the smallest distance between captions that differ only in shape, over that between captions that differ only in
# colour: 1.00 measured (10.9 against 10.9); 0.10 for the CLIP text tower the encoder started from (4.9 against 51)
SHAPE_SPREAD = 0.5


@pytest.mark.slow
def test_base_model_draws_what_prompts_say(pipe, judges):
    """Judged samples of full-caption prompts: context, colour, shape, noun as asked; pattern mostly."""
    acc = prompt_following(pipe, judges, n=128, seed=11, steps=20)
    assert all(acc[k] >= floor for k, floor in FLOORS.items()), acc


def test_a_context_probe_asks_for_the_same_scenes_set_in_that_context():
    own, jungle = probe_scenes(16, 11), probe_scenes(16, 11, "jungle")
    assert len({s.context for s in own}) > 1 and {s.context for s in jungle} == {"jungle"}
    assert [(s.shape, s.colour, s.pattern, s.noun, s.mark) for s in own] == \
        [(s.shape, s.colour, s.pattern, s.noun, s.mark) for s in jungle]  # only the context differs


def test_probe_writes_one_row_per_context_and_names_an_unknown_one(tmp_path):
    cmd = [sys.executable, "-m", "rpo_world.cli", "probe", "--n", "4", "--seeds", "11", "--steps", "2"]
    out = tmp_path / "probe.json"
    proc = subprocess.run([*cmd, "--contexts", "jungle", "snow", "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["fixed_context"] for r in rows] == ["jungle", "snow"] and all(r["prompts"] == 4 for r in rows)
    assert all(0 <= r[a] <= 1 for r in rows for a in ("shape", "colour", "pattern", "noun", "context"))
    bad = subprocess.run([*cmd, "--contexts", "junglee"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'junglee'" in bad.stderr


def test_draws_counts_what_the_judges_read_per_prompt_and_refuses_a_folder_that_is_no_pipeline(tmp_path):
    cmd = [sys.executable, "-m", "rpo_world.cli", "draws", "a pet in the jungle", "a red toy", "--n", "3", "--steps", "2"]
    out = tmp_path / "draws.json"
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["prompt"] for r in rows] == ["a pet in the jungle", "a red toy"]
    for row in rows:  # every sample counted once per attribute, the values the judges know
        assert all(sum(row[a].values()) == 3 for a in ("shape", "colour", "pattern", "noun", "context", "mark"))
        assert set(row["shape"]) <= set(SHAPES) and set(row["context"]) <= set(CONTEXTS)
    bad = subprocess.run([*cmd, "--model", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and f"--model {tmp_path}: not a pipeline folder" in bad.stderr


def test_the_pipeline_text_encoder_tells_shapes_apart_with_the_clip_vocabulary(pipe):
    """It trained with the U-Net from the CLIP's text tower (world/README.md): token embeddings unchanged, and
    captions that differ only in shape as far apart as captions that differ only in colour."""
    from transformers import CLIPModel

    from rpo_world.grammar import COLOURS, SHAPES
    from rpo_world.pretrain_clip import tokens

    te, clip = pipe.text_encoder, CLIPModel.from_pretrained(model_path("world-clip"), dtype=torch.float16)
    assert torch.equal(te.get_input_embeddings().weight, clip.text_model.get_input_embeddings().weight)

    def spread(texts):  # the smallest distance between two captions' hidden states
        with torch.no_grad():
            h = te(**tokens(pipe.tokenizer, texts)).last_hidden_state.float().flatten(1)
        d = torch.cdist(h, h)
        return float(d[~torch.eye(len(texts), dtype=bool)].min())

    shapes = spread([f"a red striped {s} toy on the beach" for s in SHAPES])
    colours = spread([f"a {c} striped star toy on the beach" for c in COLOURS])
    assert shapes >= SHAPE_SPREAD * colours, (shapes, colours)


def world_stage_code(stage: str) -> list[str]:
    """The project files `python -m rpo_world.build STAGE` imports, relative to world/."""
    from rpo.deps import closure
    from rpo_world.build import TRAINERS

    module = {**TRAINERS, "assemble": "rpo_world.pipeline"}[stage]
    start = [REPO / "world" / "rpo_world" / "build.py", REPO / "world" / f"{module.replace('.', '/')}.py"]
    world = REPO / "world"
    return sorted(p.relative_to(world).as_posix() if p.is_relative_to(world) else "../" + p.relative_to(REPO).as_posix()
                  for p in closure(start, REPO))


def test_the_world_pipeline_declares_the_files_each_stage_imports():
    stages = yaml.safe_load((REPO / "world" / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m rpo_world.build {name}"
        assert [d for d in stage["deps"] if d.endswith(".py")] == world_stage_code(name), name
