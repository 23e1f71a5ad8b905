"""The fast paths give what the plain paths give: batched generation, cached prompt embeddings, the
half-precision reference U-Net, LoRA and half-precision checkpoints, the checkpoint keep policy;
and the GPU benchmark's SD 2.1 architecture builds and trains on the CPU at reduced width.

Tolerances: images within 2/255 per pixel (batched convolutions sum in another order); prompt
embeddings exact; the bf16 reference U-Net's per-sample error within 2 % of fp32 and |Delta| < 1e-2;
checkpoints within fp16 rounding (full) or 1e-5 (LoRA, saved in fp32).
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import FAST, REPO, run_stages
from rpo import artifacts as A
from rpo import checkpoints
from rpo import params as P
from rpo.config import Train
from rpo.generate import PromptCache, generate, load_pipeline
from rpo.train import AdaptersOff, add_lora, frozen_reference, rpo_step_losses, trainable_unets, training_scheduler

sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts beside the package, not an installed module

CPU = torch.device("cpu")
PROMPTS = ["a sks toy on the Moon", "a green sks toy", "a sks toy on the Moon", "a green sks toy"]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", CPU)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_batched_generation_with_cached_prompts_matches_one_plain_call_per_image(pipe):
    seeds = [11, 12, 13, 14]
    batched = generate(pipe, PROMPTS, seeds, steps=3, guidance=7.5, resolution=32, batch_size=4)
    plain = [pipe(p, generator=torch.Generator("cpu").manual_seed(s), num_inference_steps=3, guidance_scale=7.5,
                  height=32, width=32).images[0] for p, s in zip(PROMPTS, seeds)]
    assert np.abs(_pixels(batched) - _pixels(plain)).max() <= 2
    # same prompt, other seeds: the images differ, so the comparison above can fail
    assert np.abs(_pixels(batched[:1]) - _pixels(batched[2:3])).max() > 2


def test_prompt_cache_encodes_each_text_once_and_exactly_as_the_pipeline(pipe):
    calls = []
    hook = pipe.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        cache = PromptCache(pipe, CPU)
        first, again = cache(PROMPTS), cache(PROMPTS[::-1] + [""])
    finally:
        hook.remove()
    assert calls == [2, 1]  # two distinct prompts in one call, then only the new negative prompt
    positive, negative = pipe.encode_prompt(PROMPTS, CPU, 1, do_classifier_free_guidance=True)
    assert torch.equal(first, positive)
    assert torch.equal(again[-1], negative[0])
    assert torch.equal(again[:4], first.flip(0))


def _batch(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(3, 77, pipe.text_encoder.config.hidden_size, generator=g)
    return {"z_ref": torch.randn(2, 4, 16, 16, generator=g), "z_gen": torch.randn(2, 4, 16, 16, generator=g),
            "c_inst": emb[:1].expand(2, -1, -1), "c_pair": emb[1:], "y": torch.tensor([1.0, 0.0]),
            "p": torch.tensor([0.6, 0.4])}


def _losses(pipe, unet, ref, seed=0):
    return rpo_step_losses(unet, ref, training_scheduler(pipe), _batch(pipe), beta=1.0, share_noise=False,
                           ref_prompt="instance", generator=torch.Generator().manual_seed(seed))


def test_half_precision_reference_unet_gives_the_fp32_losses(pipe):
    unet = pipe.unet
    with torch.no_grad():
        fp32 = _losses(pipe, unet, frozen_reference(unet, torch.float32))
        bf16 = _losses(pipe, unet, frozen_reference(unet, torch.bfloat16))
    assert fp32["delta_abs"].item() == pytest.approx(0.0, abs=1e-6)
    assert bf16["delta_abs"].item() < 1e-2
    assert bf16["l_sim"].item() == fp32["l_sim"].item()  # L_sim never touches eps_ref
    assert bf16["loss"].item() == pytest.approx(fp32["loss"].item(), rel=2e-2)


def _lora_unet(base, rank=4):
    unet = add_lora(copy.deepcopy(base), rank)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return unet


def _predict(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10, 700]), c).sample


def test_lora_checkpoint_is_small_and_loads_as_the_trained_unet(pipe, tmp_path):
    unet = _lora_unet(pipe.unet)
    checkpoints.save(unet, tmp_path / "lora")
    checkpoints.save(pipe.unet, tmp_path / "full")
    assert [f.name for f in (tmp_path / "lora").iterdir()] == [checkpoints.LORA]
    full_bytes = (tmp_path / "full" / checkpoints.FULL).stat().st_size
    assert (tmp_path / "lora" / checkpoints.LORA).stat().st_size < full_bytes / 5
    loaded = checkpoints.load(tmp_path / "lora", pipe.unet)
    assert not getattr(loaded, "peft_config", None)  # fused: generation runs at the base model's speed
    assert torch.allclose(_predict(loaded), _predict(unet), atol=1e-5)
    assert not torch.allclose(_predict(loaded), _predict(pipe.unet), atol=1e-3)
    # eps_ref under LoRA is the base model, and switching adapters off is undone afterwards
    assert torch.allclose(_predict(AdaptersOff(unet)), _predict(pipe.unet), atol=1e-6)
    assert torch.allclose(_predict(unet), _predict(loaded), atol=1e-5)
    half = checkpoints.load(tmp_path / "full", pipe.unet)
    assert half.dtype == torch.float32 and torch.allclose(_predict(half), _predict(pipe.unet), atol=5e-3)


def test_lora_training_updates_only_the_adapters(pipe):
    cfg = Train(lora_rank=4)
    unet, ref = trainable_unets(copy.deepcopy(pipe.unet), cfg, CPU, torch.float32)
    out = _losses(pipe, unet, ref)
    out["loss"].backward()
    trained = {n for n, p in unet.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    assert all(p.dtype == torch.float32 for n, p in unet.named_parameters() if n in trained)


def _validation(means: dict[int, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"step": s, "align_i": i, "align_t": t} for s, (i, t) in means.items()])


def test_keep_selectable_keeps_every_checkpoint_select_can_pick():
    # step 20 is best on ALIGN-T, 30 on ALIGN-I, 40 in between; 10 is dominated; 50 is the last
    curve = {10: (0.5, 0.5), 20: (0.6, 0.9), 30: (0.9, 0.6), 40: (0.8, 0.8), 50: (0.55, 0.55)}
    kept = checkpoints.selectable_steps(_validation(curve))
    assert kept == {20, 30, 40, 50}
    # pruning after each validation (as finetune does) never drops a step that the full curve selects
    online = set()
    for n in range(1, len(curve) + 1):
        online = (online | {list(curve)[n - 1]}) & checkpoints.selectable_steps(_validation(dict(list(curve.items())[:n])))
    assert online == kept


def test_keep_n_caps_the_checkpoints_and_never_drops_the_one_select_picks():
    from rpo.config import Validate

    # step 20 is the best at lambda_val 0.5; 50 is the last
    curve = {10: (0.5, 0.5), 20: (0.9, 0.9), 30: (0.6, 0.6), 40: (0.7, 0.7), 50: (0.55, 0.55)}
    val = _validation(curve)
    assert checkpoints.kept_steps(val, Validate(keep=2, lambda_val=0.5)) == {20, 50}
    assert checkpoints.kept_steps(val, Validate(keep=1, lambda_val=0.5)) == {20}
    assert checkpoints.kept_steps(val, Validate(keep=3, lambda_val=0.5, early_stopping=False)) == {50, 40, 30}
    online = set()  # pruned after each validation, as finetune does
    for n in range(1, len(curve) + 1):
        online = (online | {list(curve)[n - 1]}) & checkpoints.kept_steps(_validation(dict(list(curve.items())[:n])),
                                                                          Validate(keep=2, lambda_val=0.5))
    assert online == {20, 50}


@pytest.mark.slow
def test_lora_run_with_keep_selectable_feeds_select_and_evaluate(project):
    params = P.load(project / "params.yaml", {"train.lora_rank": 4, "validate.keep": "selectable",
                                              "evaluate.base_images": False, "evaluate.num_inference_steps": 1})
    ctx = run_stages(project, FAST["subjects"][0], params=params)
    validation = A.read_table(ctx.paths.validation, A.VALIDATION).to_pandas()
    kept = {int(d.name.split("_")[1]) for d in ctx.paths.checkpoints.iterdir()}
    assert kept == checkpoints.selectable_steps(validation) and kept <= set(validation["step"])
    assert all([f.name for f in d.iterdir()] == [checkpoints.LORA] for d in ctx.paths.checkpoints.iterdir())
    assert (ctx.paths.selected / "unet" / checkpoints.LORA).exists()
    assert A.read_json(ctx.paths.metrics)["images_per_prompt"] == FAST["evaluate.images_per_prompt"]
    assert all((d / checkpoints.LORA).exists() for d in ctx.paths.checkpoints.iterdir())


def test_sd21_architecture_builds_from_the_published_configs_and_trains_on_the_cpu():
    from diffusers import UNet2DConditionModel

    from bench.models import build, config

    with torch.device("meta"):  # full width, no memory: the published U-Net has 865.9 M weights
        assert round(sum(p.numel() for p in UNet2DConditionModel.from_config(config("unet")).parameters()) / 1e6, 1) == 865.9
    sd = load_pipeline(build(divisor=8)["base"], CPU)
    assert sd.unet.config.attention_head_dim == [5, 10, 20, 20] and sd.unet.config.block_out_channels == [40, 80, 160, 160]
    assert sd.scheduler.config.prediction_type == "v_prediction" and sd.text_encoder.config.num_hidden_layers == 23
    unet, ref = trainable_unets(sd.unet, Train(), CPU, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 77, sd.text_encoder.config.hidden_size, generator=g)
    batch = {"z_ref": torch.randn(1, 4, 8, 8, generator=g), "z_gen": torch.randn(1, 4, 8, 8, generator=g),
             "c_inst": emb[:1], "c_pair": emb[1:2], "y": torch.tensor([1.0]), "p": torch.tensor([0.6])}
    out = rpo_step_losses(unet, ref, training_scheduler(sd), batch, beta=1.0, share_noise=False,
                          ref_prompt="instance", generator=g)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in unet.parameters())
    image = generate(sd, ["a sks dog"], [0], steps=1, guidance=7.5, resolution=64, batch_size=1)[0]
    assert image.size == (64, 64)


@pytest.mark.slow
def test_benchmark_runs_both_procedures_up_to_select_and_reports_cpu_and_kernel_time(tmp_path):
    from bench import run as bench

    smoke = ["prior.num_inference_steps=2", "validate.num_inference_steps=2", "evaluate.num_inference_steps=2",
             "train.max_steps=2", "validate.every=2", "validate.images_per_prompt=1"]
    # up to select: the naive evaluation reloads DINO and CLIP for each of the 25 prompts (45 s at any count)
    args = bench.parse_args(["--threads", "1", "--fraction", "0.25", "--workdir", str(tmp_path), "--until", "select",
                             *[a for s in smoke for a in ("--set", s)]])
    result = bench.run(args)
    rows = {row["stage"]: row for row in result["rows"]}
    assert list(rows) == ["prior", "score", "labels", "finetune", "select"]
    for stage, row in rows.items():
        assert ("naive" in row) == (stage != "select")  # the official code keeps its best pipeline as it trains
        for r in (row[w] for w in ("ours", "naive") if w in row):
            assert 0 <= r["kernel_seconds"] <= r["cpu_seconds"] and r["seconds"] > 0 and r["peak"] > 0
    # the naive procedure validated and kept its best pipeline, as the official code does
    assert list((tmp_path / "naive" / "models" / "duck_toy" / "validation").glob("step_*/*.png"))
    assert (tmp_path / "naive" / "models" / "duck_toy" / "best" / "model_index.json").exists()
    assert torch.backends.cpu.get_cpu_capability() in result["machine"]  # the vector units the kernels used
    text = bench.table(result)
    assert "overall naive/ours" in text and "kernel" in text
