"""The model out and in use: `rpo export` (diffusers folder, LoRA files A1111 and ComfyUI load) and `rpo sample`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import FAST, copy_project, rpo, run_stages
from rpo import artifacts as A
from rpo import checkpoints

SUBJECT = "duck_toy"

# a process that has diffusers and torch but not this project: what a user's own script is
PLAIN = """
import sys, numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], torch_dtype=torch.float32)  # fp16 stored; a CPU runs fp32
image = pipe("a sks toy on the beach", num_inference_steps=2, height=32, width=32,
             generator=torch.Generator().manual_seed(0)).images[0]
assert not [m for m in sys.modules if m == "rpo" or m.startswith(("rpo.", "rpo_world"))]
print(type(pipe).__name__, pipe.unet.dtype, image.size, float(np.asarray(image).std()))
"""


def _plain(folder):
    out = subprocess.run([sys.executable, "-c", PLAIN, str(folder)], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_export_loads_with_plain_diffusers_and_draws(pipeline_run, tmp_path):
    out = tmp_path / "duck"
    rpo(pipeline_run, "export", "--subject", SUBJECT, "--out", str(out))
    cls, dtype, *size = _plain(out)
    assert (cls, dtype) == ("StableDiffusionPipeline", "torch.float32")
    from safetensors import safe_open

    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # stored in half precision by default
    card = (out / "README.md").read_text()
    step = A.read_json(A.Paths(pipeline_run, SUBJECT).selection)["step"]
    assert f"step {step}" in card and "`sks toy`" in card and "a sks toy on the beach" in card
    assert all("_name_or_path" not in json.loads(c.read_text()) for c in out.rglob("config.json"))  # no clone's path
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # nothing half-written beside it


def test_export_refuses_a_taken_folder_and_names_the_stage_a_missing_model_needs(pipeline_run, project, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    proc = rpo(pipeline_run, "export", "--subject", SUBJECT, "--out", str(taken), check=False)
    assert proc.returncode == 2 and f"{taken}: already exists (pass --overwrite" in proc.stderr
    proc = rpo(project, "export", "--subject", SUBJECT, "--out", str(tmp_path / "new"), check=False)
    assert proc.returncode == 2 and f"run `dvc repro select@{SUBJECT}`" in proc.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_lora_run_exports_its_adapter_in_diffusers_and_kohya_form(tmp_path):
    root = copy_project(tmp_path / "lora", {**FAST, "train.lora_rank": 4, "train.learning_rate": 0.05})
    ctx = run_stages(root, SUBJECT, ["prior", "score", "labels", "finetune", "select"])
    out = tmp_path / "export"
    rpo(root, "export", "--subject", SUBJECT, "--out", str(out), "--dtype", "fp32")
    kohya = out / "lora" / f"{SUBJECT}_kohya.safetensors"
    assert (out / "lora" / checkpoints.LORA).exists() and kohya.exists()
    from safetensors.torch import load_file

    keys = list(load_file(kohya))
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    downs = [k for k in keys if k.endswith(".lora_down.weight")]
    assert downs and all(k.replace(".lora_down.weight", ".alpha") in keys for k in downs)

    from diffusers import StableDiffusionPipeline

    from rpo.registry import model_path

    fused = StableDiffusionPipeline.from_pretrained(out).unet
    base = StableDiffusionPipeline.from_pretrained(model_path("tiny"))
    g = torch.Generator().manual_seed(0)
    z, c, t = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 32, generator=g), torch.tensor([500])
    with torch.no_grad():
        before = base.unet(z, t, c).sample
        base.load_lora_weights(str(kohya))  # the single file, as A1111 and ComfyUI read it
        after = base.unet(z, t, c).sample
        assert torch.allclose(after, fused(z, t, c).sample, atol=1e-4)
    assert not torch.allclose(before, after, atol=1e-4)  # the adapter changes the model
    assert A.read_json(ctx.paths.selection)["step"] in (2, 4)


def test_sample_draws_n_images_and_a_grid_and_the_same_seed_gives_the_same_bytes(pipeline_run, tmp_path):
    import numpy as np
    from PIL import Image

    args = ["sample", "--subject", SUBJECT, "--prompt", "a {V} {k} on the beach", "-n", "3", "--steps", "2"]
    first = rpo(pipeline_run, *args, "--out", str(tmp_path / "a")).stdout
    assert "3 images of 'a sks toy on the beach'" in first
    rpo(pipeline_run, *args, "--out", str(tmp_path / "b"))
    rpo(pipeline_run, *args, "--out", str(tmp_path / "c"), "--batch-size", "2")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["000000.png", "000001.png", "000002.png", "grid.png"]
    for name in names[:3]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        a, c = (np.asarray(Image.open(tmp_path / d / name), dtype=np.int16) for d in ("a", "c"))
        assert np.abs(a - c).max() <= 2  # each image has its own seed: batching moves only the last bits
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "a" / names[1]).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--prompt", "   "], "--prompt: must not be empty"),
    (["--prompt", "a {X} toy"], "unknown placeholders ['X']"),
    (["--prompt", "a {V} toy", "-n", "0"], "-n: must be >= 1, got 0"),
])
def test_sample_refuses_bad_requests_before_loading_a_model(pipeline_run, tmp_path, args, message):
    proc = rpo(pipeline_run, "sample", "--subject", SUBJECT, *args, "--out", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()
