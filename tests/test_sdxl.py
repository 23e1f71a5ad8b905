"""Stable Diffusion XL: the family read from model_index.json, SDXL's added conditioning in the loss and in
generation, LoRA on the U-Net and both text encoders, checkpoints, the kohya single file, `rpo check`,
the published architecture on the CPU, and tiny-sdxl through every stage (DVC)."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO, SMALL, copy_project, dvc, git_init, rpo, run_stages
from rpo import artifacts as A
from rpo import checkpoints, family, presets
from rpo import params as P
from rpo.config import Train
from rpo.generate import generate, load_pipeline
from rpo.train import (TextAdapters, encode_conditioning, frozen_reference, rpo_step_losses, trainable_unets,
                       training_scheduler)

sys.path.insert(0, str(REPO))  # bench/ is a folder of scripts beside the package, not an installed module

CPU = torch.device("cpu")
FAST_SDXL = {**presets.load("tiny-sdxl"), **SMALL}
SUBJECT = "duck_toy"
PROMPTS = ["a photo of sks toy", "a sks toy on the Moon", "a green sks toy"]  # c_inst, then two pair prompts


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-sdxl", CPU)


def _batch(cond: dict, res: int = 32, latent: int = 16, seed: int = 0) -> dict:
    """Two pairs: references of other photo sizes and crops than the generated images, as in a real run."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 4, latent, latent)
    return {"z_ref": torch.randn(shape, generator=g), "z_gen": torch.randn(shape, generator=g),
            "c_inst": cond["embeds"][:1].expand(2, -1, -1), "c_pair": cond["embeds"][1:],
            "pooled_inst": cond["pooled"][:1].expand(2, -1), "pooled_pair": cond["pooled"][1:],
            "time_ref": torch.tensor([[48.0, 64, 0, 11, res, res], [res, 40, 0, 4, res, res]]),
            "time_gen": torch.tensor([[res, res, 0, 0, res, res]] * 2, dtype=torch.float32),
            "y": torch.tensor([1.0, 0.0]), "p": torch.tensor([0.6, 0.4]),
            "text_inst": PROMPTS[:1] * 2, "text_pair": PROMPTS[1:]}


def test_the_family_is_read_from_model_index_and_another_pipeline_is_named_before_any_weight(tmp_path):
    assert family.detect("tiny") is family.SD and family.detect("tiny-sdxl") is family.SDXL
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    # the folder holds no weights at all: only the family check can give this error
    with pytest.raises(family.FamilyError, match="is a KandinskyV22Pipeline .*StableDiffusionXLPipeline"):
        load_pipeline(str(tmp_path), CPU)


def test_the_sdxl_loss_is_the_hand_computed_one_with_each_images_added_conditioning(base):
    unet, sched = base.unet, training_scheduler(base)
    ref = frozen_reference(unet, torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference that differs from eps_theta, so Delta is not 0
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _batch(encode_conditioning(base, PROMPTS, CPU))
    with torch.no_grad():
        out = rpo_step_losses(unet, ref, sched, batch, beta=2.0, share_noise=False, ref_prompt="instance",
                              generator=torch.Generator().manual_seed(3))
        # by hand: the same draws, one U-Net call per image, x_ref on c_inst and its photo's time ids, x_gen on c
        g = torch.Generator().manual_seed(3)
        z = torch.cat([batch["z_ref"], batch["z_gen"]])
        noise, t = torch.randn(z.shape, generator=g), torch.randint(0, 1000, (4,), generator=g)
        z_t = sched.add_noise(z, noise, t)
        text = [(batch["c_inst"][i], batch["pooled_inst"][i], batch["time_ref"][i]) for i in range(2)] + \
               [(batch["c_pair"][i], batch["pooled_pair"][i], batch["time_gen"][i]) for i in range(2)]

        def error(model, i):
            c, pooled, ids = text[i]
            eps = model(z_t[i:i + 1], t[i:i + 1], c[None],
                        added_cond_kwargs={"text_embeds": pooled[None], "time_ids": ids[None]}).sample
            return ((eps - noise[i:i + 1]) ** 2).mean()  # epsilon-prediction: the target is the noise

        l_theta = torch.stack([error(unet, i) for i in range(4)])
        l_ref = torch.stack([error(ref, i) for i in range(4)])
    delta = 2.0 * ((l_ref[:2] - l_theta[:2]) - (l_ref[2:] - l_theta[2:]))
    y = batch["y"]
    l_pref = -(y * F.logsigmoid(delta) + (1 - y) * F.logsigmoid(-delta)).mean()
    assert delta.abs().mean() > 1e-3  # the preference term is not trivially ln 2 here
    assert out["l_sim"].item() == pytest.approx(l_theta[:2].mean().item(), rel=1e-4)
    assert out["delta_abs"].item() == pytest.approx(delta.abs().mean().item(), rel=1e-3)
    assert out["l_pref"].item() == pytest.approx(l_pref.item(), rel=1e-4)
    # the time ids reach the U-Net: a generated image of another size gives another margin
    with torch.no_grad():
        other = rpo_step_losses(unet, ref, sched, {**batch, "time_gen": batch["time_gen"] * 4}, beta=2.0,
                                share_noise=False, ref_prompt="instance", generator=torch.Generator().manual_seed(3))
    assert other["l_sim"].item() == pytest.approx(out["l_sim"].item(), rel=1e-6)  # x_ref's conditioning unchanged
    assert abs(other["delta_abs"].item() - out["delta_abs"].item()) > 1e-5


def test_text_encoder_lora_trains_only_adapters_and_eps_ref_is_the_base_model(base):
    pipe = load_pipeline("tiny-sdxl", CPU)
    batch = _batch(encode_conditioning(pipe, PROMPTS, CPU))  # encoded before any adapter: the base encoders
    unet, ref = trainable_unets(pipe.unet, Train(lora_rank=4, text_encoder_lora=True), CPU, torch.float32)
    text = TextAdapters(pipe, 4, CPU, torch.float32)
    sched = training_scheduler(pipe)

    def losses(b):
        return rpo_step_losses(unet, ref, sched, b, beta=1.0, share_noise=False, ref_prompt="instance",
                               generator=torch.Generator().manual_seed(0))

    with torch.no_grad():  # fresh adapters change nothing: theta and ref agree, text included
        assert losses(text.condition(batch))["delta_abs"].item() < 1e-6
    torch.manual_seed(2)
    with torch.no_grad():  # adapters as after some training
        for model in (unet, *text.encoders.values()):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
    conditioned = text.condition(batch)
    assert not torch.allclose(conditioned["c_pair"], conditioned["ref_c_pair"], atol=1e-3)
    assert not torch.allclose(conditioned["pooled_pair"], conditioned["ref_pooled_pair"], atol=1e-3)
    # eps_ref: the base model, U-Net and text encoders with every adapter off
    mine = encode_conditioning(base, PROMPTS, CPU)
    assert torch.allclose(conditioned["ref_c_pair"], mine["embeds"][1:], atol=1e-6)
    z, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([10, 700])
    with torch.no_grad():
        eps_ref = ref(z, t, conditioned["ref_c_pair"], added_cond_kwargs={
            "text_embeds": conditioned["ref_pooled_pair"], "time_ids": batch["time_gen"]}).sample
        eps_base = base.unet(z, t, mine["embeds"][1:], added_cond_kwargs={
            "text_embeds": mine["pooled"][1:], "time_ids": batch["time_gen"]}).sample
    assert torch.allclose(eps_ref, eps_base, atol=1e-5)
    out = losses(conditioned)
    assert out["delta_abs"].item() > 1e-4
    out["loss"].backward()
    for model in (unet, *text.encoders.values()):
        trained = {n for n, p in model.named_parameters() if p.grad is not None}
        assert trained and all("lora_" in n for n in trained), type(model).__name__
        assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in pipe.vae.parameters())


def test_batched_sdxl_generation_is_one_plain_pipeline_call_per_image(base):
    prompts, seeds = ["a sks toy on the Moon", "a green sks toy", "a sks toy on the Moon"], [11, 12, 13]
    batched = generate(base, prompts, seeds, steps=2, guidance=5.0, resolution=32, batch_size=3)
    plain = [base(p, generator=torch.Generator("cpu").manual_seed(s), num_inference_steps=2, guidance_scale=5.0,
                  height=32, width=32).images[0] for p, s in zip(prompts, seeds)]
    pixels = [np.stack([np.asarray(im, dtype=np.int16) for im in ims]) for ims in (batched, plain)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 2  # unconditional half from zeros, time ids from the size
    assert np.abs(pixels[0][0] - pixels[0][2]).max() > 2  # same prompt, another seed: the comparison can fail


def test_time_ids_are_each_photos_size_and_crop_or_the_resolution():
    from rpo.stages.finetune import time_ids

    photos = [Image.new("RGB", (640, 480)), Image.new("RGB", (300, 500))]
    ctx = SimpleNamespace(resolution=32, cfg=SimpleNamespace(train=SimpleNamespace(time_ids="image")))
    pipe = type("StableDiffusionXLPipeline", (), {})()  # the family is all time_ids needs of the pipeline
    ids = time_ids(ctx, pipe, photos, photos[:1])
    # 640x480 resized to 43x32: the centre crop starts 6 px in from the left; 300x500 to 32x53: 10 px down
    assert ids["ref_time_ids"].tolist() == [[480, 640, 0, 6, 32, 32], [500, 300, 10, 0, 32, 32]]
    ctx.cfg.train.time_ids = "resolution"
    assert time_ids(ctx, pipe, photos, photos[:1])["gen_time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    """A pipeline with trained-looking LoRA on the U-Net and both text encoders, and its saved checkpoint."""
    pipe = load_pipeline("tiny-sdxl", CPU)
    unet, _ = trainable_unets(pipe.unet, Train(lora_rank=4, text_encoder_lora=True), CPU, torch.float32)
    text = TextAdapters(pipe, 4, CPU, torch.float32)
    torch.manual_seed(4)
    with torch.no_grad():
        for model in (unet, *text.encoders.values()):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "step_00010"
    checkpoints.save(unet, folder, text_encoders=text.encoders)
    return pipe, folder


def _outputs(pipe) -> tuple[torch.Tensor, ...]:
    """The text conditioning of a prompt and the U-Net's prediction on it: what a LoRA changes."""
    with torch.no_grad():
        cond = family.SDXL.encode(pipe, ["a sks toy"], CPU)
        z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        eps = pipe.unet(z, torch.tensor([500]), cond["embeds"], added_cond_kwargs={
            "text_embeds": cond["pooled"], "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}).sample
    return cond["embeds"], cond["pooled"], eps


def _same(a, b, atol=1e-5) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(_outputs(a), _outputs(b)))


def test_a_lora_checkpoint_exports_to_a_plain_sdxl_folder_that_draws(base, lora_checkpoint, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    trained, folder = lora_checkpoint
    assert [f.name for f in folder.iterdir()] == [checkpoints.LORA]
    assert checkpoints.lora_parts(folder) == {"unet", "text_encoder", "text_encoder_2"}
    model = checkpoints.pipeline(folder, base)
    assert type(model) is StableDiffusionXLPipeline and model.vae is base.vae and model.unet is not base.unet
    assert not getattr(model.unet, "peft_config", None)  # fused: the base model's speed
    assert _same(model, trained) and not _same(base, trained, atol=1e-3)  # and `base` is left as it was
    model.save_pretrained(tmp_path / "export", safe_serialization=True)
    plain = StableDiffusionXLPipeline.from_pretrained(tmp_path / "export", use_safetensors=True)
    image = plain("a sks toy", num_inference_steps=2, height=32, width=32,
                  generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32) and _same(plain, trained)


def test_the_kohya_single_file_loads_through_diffusers(lora_checkpoint, tmp_path):
    from safetensors.torch import load_file

    trained, folder = lora_checkpoint
    file = checkpoints.save_kohya(folder, tmp_path / "duck_toy.safetensors")
    state = load_file(file)
    modules = {k.split(".")[0] for k in state}
    assert {re.match(r"lora_(unet|te1|te2)_", m).group(1) for m in modules} == {"unet", "te1", "te2"}
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules  # kohya's (and A1111's) names
    assert all(float(state[f"{m}.alpha"]) == 4 and state[f"{m}.lora_down.weight"].shape[0] == 4 for m in modules)
    fresh = load_pipeline("tiny-sdxl", CPU)
    fresh.load_lora_weights(str(file))
    assert _same(fresh, trained)


def test_full_fine_tuning_with_v_prediction_on_sdxl(tmp_path):
    pipe = load_pipeline("tiny-sdxl-v", CPU)
    sched = training_scheduler(pipe)
    assert sched.config.prediction_type == "v_prediction"
    unet, ref = trainable_unets(pipe.unet, Train(), CPU, torch.float32)
    out = rpo_step_losses(unet, ref, sched, _batch(encode_conditioning(pipe, PROMPTS, CPU)), beta=1.0,
                          share_noise=True, ref_prompt="pair", generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["delta_abs"].item() < 1e-5
    assert unet.add_embedding.linear_1.weight.grad.abs().sum() > 0  # the pooled text and time ids are learned from
    checkpoints.save(unet, tmp_path / "full")
    loaded = checkpoints.load(tmp_path / "full", pipe.unet)
    assert loaded.config.addition_embed_type == "text_time"
    assert torch.allclose(loaded.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight.half().float())


def _check(root, *overrides, ok=False):
    proc = rpo(root, *[a for o in overrides for a in ("--set", o)], "check", check=False)
    assert proc.returncode == (0 if ok else 2), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_rpo_check_refuses_what_does_not_fit_the_base_models_family_naming_the_key(tmp_path):
    root = copy_project(tmp_path / "project", {**SMALL, **presets.load("tiny")})
    err = _check(root, "train.time_ids=resolution", "model.vae=tiny-sdxl-vae")  # SDXL's on an SD base
    assert "train.time_ids: Stable Diffusion XL only, and model.base tiny is Stable Diffusion 1.x/2.x" in err
    assert "model.vae: tiny-sdxl-vae has scaling_factor 0.13025" in err  # another latent space
    assert "model.vae: tiny has scaling_factor 0.18215" in _check(root, "model.base=tiny-sdxl", "model.vae=tiny")
    (tmp_path / "kandinsky").mkdir()
    (tmp_path / "kandinsky" / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline"}')
    assert "is a KandinskyV22Pipeline" in _check(root, f"model.base={tmp_path / 'kandinsky'}")
    _check(root, "model.base=tiny-sdxl", "model.vae=tiny-sdxl-vae", "train.time_ids=resolution", ok=True)
    with pytest.raises(P.ParamsError, match="train.text_encoder_lora: needs train.lora_rank > 0"):
        P.load(root / "params.yaml", {"train.text_encoder_lora": True})


def test_the_sdxl_architecture_builds_from_the_published_configs_and_trains_on_the_cpu():
    from diffusers import UNet2DConditionModel

    from bench.models import build, config

    with torch.device("meta"):  # full width, no memory: SDXL base 1.0's U-Net has 2567.5 M weights
        unet = UNet2DConditionModel.from_config(config("unet", arch="sdxl"))
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 2567.5
    sdxl = load_pipeline(build(divisor=8, arch="sdxl")["base"], CPU)
    assert family.of(sdxl) is family.SDXL and sdxl.unet.config.block_out_channels == [40, 80, 160]
    assert sdxl.unet.config.transformer_layers_per_block == [1, 2, 10] and sdxl.unet.config.cross_attention_dim == 256
    assert sdxl.text_encoder_2.config.num_hidden_layers == 32 and sdxl.vae.config.scaling_factor == 0.13025
    cfg = P.load_config(REPO / "params.yaml", presets.departures("paper-sdxl")).train
    unet, ref = trainable_unets(sdxl.unet, cfg, CPU, torch.float32)
    out = rpo_step_losses(unet, ref, training_scheduler(sdxl), _batch(encode_conditioning(sdxl, PROMPTS, CPU), 64, 8),
                          beta=1.0, share_noise=cfg.share_noise, ref_prompt=cfg.ref_prompt,
                          generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    trained = {n for n, p in unet.named_parameters() if p.grad is not None}
    assert torch.isfinite(out["loss"]) and trained and all("lora_" in n for n in trained)
    image = generate(sdxl, ["a sks dog"], [0], steps=1, guidance=5.0, resolution=64, batch_size=1)[0]
    assert image.size == (64, 64)


@pytest.mark.slow
def test_text_encoder_lora_with_a_separate_vae_through_finetune_select_and_evaluate(tmp_path):
    params = {**FAST_SDXL, "model.base": "tiny-sdxl-v", "model.vae": "tiny-sdxl-vae", "train.text_encoder_lora": True,
              "train.ref_prompt": "pair", "train.time_ids": "resolution", "evaluate.base_images": False}
    root = copy_project(tmp_path / "project", params)
    ctx = run_stages(root, SUBJECT)
    for step in (2, 4):
        assert checkpoints.lora_parts(ctx.paths.checkpoints / f"step_{step:05d}") == \
            {"unet", "text_encoder", "text_encoder_2"}
    assert A.read_json(ctx.paths.selection)["vae"] == "tiny-sdxl-vae"
    metrics = A.read_json(ctx.paths.metrics)
    assert -1 <= metrics["clip_t"] <= 1 and 0 <= metrics["reward"] <= 1
    assert metrics["images_per_prompt"] == SMALL["evaluate.images_per_prompt"] and "base_dino" not in metrics


@pytest.mark.slow
def test_tiny_sdxl_runs_every_stage_through_dvc(tmp_path):
    root = copy_project(tmp_path / "project", FAST_SDXL)
    git_init(root)
    first = dvc(root, "repro").stdout
    stages = {f"{s}@{SUBJECT}" for s in ("prior", "class_prior", "score", "labels", "finetune", "select", "evaluate")}
    assert set(re.findall(r"Running stage '([^']+)'", first)) == stages | {"check", "report"}
    paths = A.Paths(root, SUBJECT)
    validation = A.read_table(paths.validation, A.VALIDATION).to_pandas()
    assert sorted(validation["step"].unique()) == [0, 2, 4] and validation["align_t"].between(0, 1).all()
    for folder in paths.checkpoints.iterdir():  # LoRA of rank 4 on the U-Net: the preset
        assert [f.name for f in folder.iterdir()] == [checkpoints.LORA] and checkpoints.lora_parts(folder) == {"unet"}
    selection = A.read_json(paths.selection)
    assert selection["base_model"] == "tiny-sdxl" and (paths.selected / "unet" / checkpoints.LORA).exists()
    metrics = A.read_json(paths.metrics)
    assert all(-1 <= metrics[k] <= 1 for k in ("dino", "clip_i", "clip_t", "base_dino", "base_clip_t"))  # cosines
    assert 0 <= metrics["reward"] <= 1 and metrics["selected_step"] == selection["step"]
    assert f"| {SUBJECT} |" in (root / "reports" / "summary.md").read_text()
    assert json.loads(dvc(root, "status", "--json").stdout or "{}") == {}
