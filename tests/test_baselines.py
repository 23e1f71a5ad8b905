"""The paper's baselines in RPO's pipeline (train.method): only the intended weights change, prior preservation reads
the class images, exact resume holds, a checkpoint loads back for evaluation as the trained model, and the params
each stage declares to DVC are the ones it reads.

Tiny models on the CPU, in fp32 (`model.dtype: fp32`), so "unchanged" means bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import numpy as np
import pytest
import torch

from conftest import FAST, REPO, copy_project, rpo, run_stages
from rpo import ablation, checkpoints, stages
from rpo import artifacts as A
from rpo import params as P
from rpo.config import BASELINE_METHODS, TOKEN_METHODS, from_dict
from rpo.context import context
from rpo.embeddings import EMBEDS, add_token
from rpo.generate import encode_prompts, generate_jobs, load_pipeline
from rpo.methods import DreamBooth, cross_attention_kv
from rpo.train import PairData, train, training_scheduler

CPU = torch.device("cpu")
STEPS = 3
# rates that move the tiny models visibly in three steps (the defaults are the scripts' for SD)
RATES = {"train.learning_rate": 1e-3, "train.ti_learning_rate": 5e-2, "train.cd_learning_rate": 1e-2}
SUBJECT, TOKEN = "duck_toy", "sks"


def _cfg(method: str, **over):
    params = P.apply_overrides(P.load(REPO / "params.yaml"), {
        **FAST, "model.dtype": "fp32", "train.method": method, "train.max_steps": STEPS, "validate.every": STEPS,
        "prior.class_images": 3, **RATES, **over})
    return from_dict(P.validate(params))


def _pipe(method: str):
    pipe = load_pipeline("tiny", CPU)
    if method in TOKEN_METHODS:
        add_token(pipe.tokenizer, pipe.text_encoder, TOKEN, "toy")
    return pipe


def _data(pipe, n_pairs: int = 4, n_class: int = 3, seed: int = 0) -> PairData:
    g = torch.Generator().manual_seed(seed)
    tok, inst = pipe.tokenizer, f"a photo of {TOKEN} toy"
    return PairData(
        ref_latents=torch.randn(2, 4, 16, 16, generator=g), gen_latents=torch.randn(n_pairs, 4, 16, 16, generator=g),
        inst_embeds=encode_prompts(pipe, [inst], CPU), prompt_embeds=encode_prompts(pipe, [f"a {TOKEN} toy"], CPU),
        ref_index=np.arange(n_pairs) % 2, gen_index=np.arange(n_pairs), prompt_index=np.zeros(n_pairs, int),
        p=np.full(n_pairs, 0.5), labels=np.zeros((2, n_pairs), np.int8),
        class_latents=torch.randn(n_class, 4, 16, 16, generator=g),
        class_embeds=encode_prompts(pipe, ["a photo of toy"], CPU),
        inst_ids=tok(inst, padding="max_length", max_length=tok.model_max_length, truncation=True,
                     return_tensors="pt").input_ids)


def _weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def _changed(before: dict, module) -> set[str]:
    after = module.state_dict()
    return {n for n, w in before.items() if after[n].shape != w.shape or not torch.equal(after[n], w)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("baselines") / "project", {**FAST, "model.dtype": "fp32"})


@pytest.fixture(scope="module", params=BASELINE_METHODS)
def trained(request, project):
    """A few steps of one method through the shared loop; the Validator's own checkpoint call at the last step."""
    method = request.param
    cfg = _cfg(method)
    pipe = _pipe(method)
    before = {name: _weights(getattr(pipe, name)) for name in ("unet", "text_encoder", "vae")}
    rows, folder = [], project / method / "step"
    learns_token = method in TOKEN_METHODS

    def validate(step, unet):
        checkpoints.save(unet, folder, method=method, text=(pipe.tokenizer, pipe.text_encoder) if learns_token else None)

    train(pipe, _data(pipe), cfg.train, validate_every=STEPS, seed=0, device=CPU, ref_dtype=torch.float32,
          on_validate=validate, on_log=rows.append)
    return {"method": method, "cfg": cfg, "pipe": pipe, "before": before, "rows": rows, "folder": folder}


def test_only_the_intended_weights_change(trained):
    method, pipe, before = trained["method"], trained["pipe"], trained["before"]
    unet, text = _changed(before["unet"], pipe.unet), _changed(before["text_encoder"], pipe.text_encoder)
    assert not _changed(before["vae"], pipe.vae)
    if method == "dreambooth":  # the U-Net, nothing else
        assert len(unet) > 0.9 * len(before["unet"]) and not text
        return
    kv = {n for n in before["unet"] if ".attn2.to_k." in n or ".attn2.to_v." in n}
    assert unet == (kv if method == "custom_diffusion" else set())  # every cross-attention k/v, or nothing
    assert kv and kv == set(cross_attention_kv(pipe.unet))
    # the text encoder: its embedding matrix, and in it the new token's row alone
    (embedding,) = [n for n in before["text_encoder"] if n.endswith("token_embedding.weight")]
    assert text == {embedding}
    new = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    old_rows = before["text_encoder"][embedding]
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert new == len(old_rows) - 1 and rows.shape == old_rows.shape
    assert torch.equal(rows[:new], old_rows[:new])
    assert not torch.equal(rows[new], old_rows[new])


def test_the_logged_terms_are_the_methods(trained):
    rows, method = trained["rows"], trained["method"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        if method == "textual_inversion":
            assert r["loss"] == r["l_sim"] and "l_prior" not in r
        else:  # prior preservation, w = 1
            assert r["loss"] == pytest.approx(r["l_sim"] + r["l_prior"], rel=1e-6)
        assert "l_pref" not in r and "delta_abs" not in r


def test_the_checkpoint_loads_back_for_evaluation_as_the_trained_model(trained, project):
    """evaluate's `measure` on the checkpoint draws the images the trained pipeline draws (bit for bit where the
    checkpoint is fp32: the token's embedding, Custom Diffusion's k/v; within fp16 rounding for a whole U-Net)."""
    from rpo.stages.evaluate import jobs_of, measure

    method, cfg, folder, pipe = trained["method"], trained["cfg"], trained["folder"], trained["pipe"]
    files = {p.name for p in folder.iterdir()}
    assert files == {"dreambooth": {"config.json", checkpoints.FULL}, "textual_inversion": {EMBEDS},
                     "custom_diffusion": {checkpoints.CUSTOM, EMBEDS}}[method]
    roots = {s: project / method for s in ("finetune", "select", "evaluate")}
    ctx = context(project, cfg, SUBJECT).with_paths(A.Paths(project, SUBJECT, roots))
    checkpoints.copy_folder(folder, ctx.paths.selected / "unet")
    entries = {"selected": project / method / "selected_images", "base": project / method / "base_images"}
    measure(ctx, entries)

    ev, jobs = cfg.evaluate, jobs_of(ctx)
    ours = generate_jobs(pipe, jobs, steps=ev.num_inference_steps, guidance=ev.guidance_scale, resolution=ctx.resolution,
                         batch_size=ev.batch_size, desc="trained")

    def pixels(which):
        return np.stack([np.asarray(_png(entries[which] / f"p{pi:02d}_{ii:03d}.png"), dtype=np.int16)
                         for pi, ii, _, _ in jobs])

    trained_px = np.stack([np.asarray(im, dtype=np.int16) for im in ours])
    loaded, base = pixels("selected"), pixels("base")
    assert np.abs(trained_px - base).max() > 8  # the trained model draws other images than the base model
    if method == "dreambooth":  # the whole U-Net is saved in fp16
        assert np.abs(trained_px - loaded).mean() < 0.5
        return
    assert np.array_equal(trained_px, loaded)
    # diffusers' own loaders read the same files on the base model, as the model card shows (its Custom Diffusion
    # attention processor sums in another order: within a grey level)
    plain = load_pipeline("tiny", CPU)
    if method == "custom_diffusion":
        plain.unet.load_attn_procs(custom_diffusion_processors(folder / checkpoints.CUSTOM, plain.unet), _pipeline=plain)
        assert sum(type(p).__name__ == "CustomDiffusionAttnProcessor" for p in plain.unet.attn_processors.values()) \
            == len(plain.unet.attn_processors)  # the processors are in place, not silently skipped
    plain.load_textual_inversion(folder, weight_name=EMBEDS)
    theirs = generate_jobs(plain, jobs[:4], steps=ev.num_inference_steps, guidance=ev.guidance_scale,
                           resolution=ctx.resolution, batch_size=4, desc="diffusers")
    assert np.abs(np.stack([np.asarray(im, dtype=np.int16) for im in theirs]) - trained_px[:4]).max() <= 1


def custom_diffusion_processors(path, unet) -> dict:
    """The Custom Diffusion file as diffusers' load_attn_procs takes it: an entry for every attention layer (empty:
    unchanged). diffusers 0.42 also sets the processors only when given `_pipeline`: without it the call does
    nothing, silently."""
    from safetensors.torch import load_file

    kv = load_file(path)
    return kv | {n: {} for n in unet.attn_processors if f"{n}.to_k_custom_diffusion.weight" not in kv}


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").copy()


def test_prior_preservation_reads_the_class_images():
    pipe = _pipe("dreambooth")
    cfg = _cfg("dreambooth").train
    method = DreamBooth(pipe, cfg, CPU, torch.float32)
    data, sched = _data(pipe), training_scheduler(pipe)
    other = dataclasses.replace(data, class_latents=data.class_latents + 1.0)

    def losses(d, weight=1.0):
        method.cfg = dataclasses.replace(cfg, prior_loss_weight=weight)
        with torch.no_grad():
            return method.losses(d, 1, 0, CPU, sched, torch.Generator().manual_seed(0), contextlib.nullcontext)

    a, b, none = losses(data), losses(other), losses(data, weight=0.0)
    assert torch.equal(a["l_sim"], b["l_sim"]) and not torch.equal(a["l_prior"], b["l_prior"])
    assert a["loss"] == pytest.approx(float(a["l_sim"] + a["l_prior"]))
    assert "l_prior" not in none and torch.equal(none["loss"], none["l_sim"])
    # each pass over the class images sees every one of them once, in a seeded order
    seen = [next(i for i, z in enumerate(data.class_latents) if torch.equal(z, data.class_batch(s, 1, 0, CPU)["z_class"][0]))
            for s in range(6)]
    assert sorted(seen[:3]) == sorted(seen[3:]) == [0, 1, 2]


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_a_resumed_run_ends_with_the_same_weights(method):
    cfg = _cfg(method, **{"train.max_steps": 4}).train

    def run(resume_from=None):
        pipe, states = _pipe(method), []
        train(pipe, _data(pipe), cfg, validate_every=2, seed=0, device=CPU, ref_dtype=torch.float32,
              on_validate=lambda step, unet: None, on_log=lambda row: None, resume_from=resume_from,
              on_checkpoint=lambda state: states.append(copy.deepcopy(state)))  # as finetune's Resume saves it
        return pipe, states

    whole, states = run()
    resumed, _ = run(resume_from=states[0])
    assert states[0].step == 2
    for name in ("unet", "text_encoder"):
        a, b = getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_each_stage_declares_the_params_it_reads():
    rpo, db, ti = _cfg("rpo"), _cfg("dreambooth"), _cfg("textual_inversion")
    assert stages.spec("class_prior").params_for(rpo) == ("train.method",)
    assert {"prior.class_images", "seed", "model"} <= set(stages.spec("class_prior").params_for(db))
    assert not stages.reads("prior", "prior.class_images", rpo)
    fine = stages.spec("finetune")
    assert not {"train.prior_loss_weight", "train.ti_learning_rate", "train.cd_learning_rate",
                "train.initializer_token"} & set(fine.params_for(rpo))
    assert {"train.ti_learning_rate", "train.initializer_token"} <= set(fine.params_for(ti))
    assert not {"train.beta", "train.learning_rate", "train.lora_rank"} & set(fine.params_for(ti))
    # a DreamBooth key changes nothing of an RPO run; train.method re-runs the class images and what follows
    assert not any(stages.reached({"prior.class_images": 50, "train.prior_loss_weight": 0.5}, rpo).values())
    reached = {s for s, o in stages.reached({"train.method": "dreambooth"}, rpo).items() if o}
    assert reached == {"class_prior", "finetune", "select", "evaluate"}


def test_a_method_that_trains_no_unet_refuses_lora():
    with pytest.raises(P.ParamsError, match="train.lora_rank: must be 0 with train.method textual_inversion"):
        _cfg("textual_inversion", **{"train.lora_rank": 4})
    with pytest.raises(P.ParamsError, match="train.text_encoder_lora: RPO only, got train.method dreambooth"):
        _cfg("dreambooth", **{"train.lora_rank": 4, "train.text_encoder_lora": True})


def test_the_baselines_refuse_an_sdxl_base_in_one_line(project):
    """`rpo check` names the key and exits 2 (the user-error path); the stages that load the model refuse too."""
    from rpo import family

    proc = rpo(project, "--set", "model.base=tiny-sdxl", "--set", "train.method=custom_diffusion", "check",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "train.method: custom_diffusion trains Stable Diffusion 1.x/2.x only, and the base model is Stable " \
           "Diffusion XL" in proc.stderr
    assert family.method_fits(family.SDXL, "rpo") == family.method_fits(family.SD, "dreambooth") == []


def test_the_baselines_are_rows_of_the_ablation_engine():
    cfg = _cfg("rpo")
    plan = ablation.paper_plan(cfg, [SUBJECT], (2,), BASELINE_METHODS)
    table = plan.tables[ablation.BASELINES_TITLE]
    assert [r.label for r in table] == ["full RPO", "DreamBooth, no early stopping", "DreamBooth, early stopping",
                                        "Textual Inversion, no early stopping", "Textual Inversion, early stopping",
                                        "Custom Diffusion, no early stopping", "Custom Diffusion, early stopping"]
    found = ablation.pipeline(REPO, cfg, plan)["stages"]
    # every baseline shares RPO's prior images, scores and labels; class_prior reads train.method
    assert [s for s in found if s.startswith(("prior", "class_prior", "score", "labels"))] == \
        [f"class_prior-train.method-{m}" for m in BASELINE_METHODS]
    assert "prior.class_images" in found["class_prior-train.method-dreambooth"]["do"]["params"]
    assert found["class_prior-train.method-textual_inversion"]["do"]["params"] == []  # an empty manifest, no model
    ti = found["finetune-train.method-textual_inversion"]["do"]
    assert "train.ti_learning_rate" in ti["params"] and "train.beta" not in ti["params"]
    assert {"data/prior/${item}", "data/labels/${item}.parquet"} <= set(ti["deps"])
    assert "ablations/train.method-dreambooth/data/class_prior/${item}" in \
        found["finetune-train.method-dreambooth"]["do"]["deps"]
    with pytest.raises(P.ParamsError, match="the main training must be rpo"):
        ablation.paper_plan(_cfg("dreambooth"), [SUBJECT], (2,))


@pytest.mark.slow
def test_textual_inversion_end_to_end_evaluates_exports_and_samples_the_learned_token(tmp_path):
    from rpo.export import export
    from rpo.sample import pipeline_for

    over = {**FAST, "train.method": "textual_inversion", "train.ti_learning_rate": 5e-2}
    root = copy_project(tmp_path / "project", over)
    ctx = run_stages(root, SUBJECT, params=P.load(root / "params.yaml"))
    paths = ctx.paths
    assert A.read_table(paths.class_prior_manifest, A.PRIOR_MANIFEST).num_rows == 0  # no class images for TI
    assert {p.name for p in (paths.selected / "unet").iterdir()} == {EMBEDS}
    assert A.read_json(paths.about)["method"] == "textual_inversion"
    images = A.read_table(paths.eval_dir / "images.parquet", A.EVAL_IMAGES).to_pandas()
    sel, base = (images[images["model"] == m].sort_values(["prompt_index", "image_index"]) for m in ("selected", "base"))
    assert (sel["align_t"].to_numpy() != base["align_t"].to_numpy()).any()  # the learned token is in use
    out = export(ctx, tmp_path / "export")
    assert (out / "adapter" / EMBEDS).exists() and "Textual Inversion" in (out / "README.md").read_text()
    exported = load_pipeline(str(out), CPU)
    sampled = pipeline_for(ctx, None, None)
    for pipe in (exported, sampled):
        assert TOKEN in pipe.tokenizer.get_vocab() and len(pipe.tokenizer) == len(load_pipeline("tiny", CPU).tokenizer) + 1
