"""Model families: Stable Diffusion 1.x/2.x and Stable Diffusion XL, told apart by the base's model_index.json.

One object per family holds what differs between them, so each stage keeps one code path: the
diffusers pipeline that loads the base, its text encoders, how prompts become the U-Net's
conditioning (SD: the text encoder's last hidden states; SDXL: both encoders' penultimate states
side by side, the second encoder's pooled projection and, per image, the size and crop "time ids"
that diffusers' SDXL pipelines and DreamBooth-LoRA script pass as `added_cond_kwargs`), and what
classifier-free guidance uses as the unconditional prompt.

Telling the family loads no weights: it reads model_index.json of a registered name, a local folder
or a hub id (that file alone, through huggingface_hub's cache). Light to import: no torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rpo.params import ParamsError

log = logging.getLogger("rpo")

SD_SCALING = 0.18215  # AutoencoderKL's default scaling_factor (SD 1.x/2.x VAE configs may leave it out)


class FamilyError(ParamsError):
    """The base model is of no supported family, or a parameter does not fit its family."""


class IndexUnavailable(FamilyError):
    """A hub model's configuration is neither in the Hugging Face cache nor reachable."""


@dataclass(frozen=True)
class Family:
    name: str  # "sd" or "sdxl": what rpo.config's family-only keys name
    title: str
    pipeline: str  # the diffusers pipeline class, as model_index.json's `_class_name` says it
    text_encoders: tuple[str, ...]  # pipeline components, in the order the pipeline concatenates them

    @property
    def pooled(self) -> bool:
        """SDXL's U-Net also takes a pooled text embedding and the time ids (`added_cond_kwargs`)."""
        return len(self.text_encoders) > 1

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def load_options(self) -> dict:
        """from_pretrained's options besides the components: no safety checker, no invisible watermark
        (the watermark would make pixels depend on whether its package is installed)."""
        if self.pooled:
            return {"add_watermarker": False}
        return {"safety_checker": None, "requires_safety_checker": False, "feature_extractor": None}

    def encoders(self, pipe) -> dict:
        """The pipeline's text encoders by component name."""
        return {name: getattr(pipe, name) for name in self.text_encoders}

    def encode(self, pipe, prompts: list[str], device) -> dict:
        """Each prompt's conditioning exactly as the pipeline computes it for its own call: {"embeds": (N, 77, D)},
        and for SDXL {"pooled": (N, P)} too. Not under no_grad: text-encoder adapters train through it."""
        if self.pooled:
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            return {"embeds": embeds, "pooled": pooled}
        embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
        return {"embeds": embeds}

    def zero_unconditional(self, pipe) -> bool:
        """SDXL base guides against zeros, not against the empty prompt's embedding (force_zeros_for_empty_prompt)."""
        return self.pooled and bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    @staticmethod
    def call_inputs(cond: dict, uncond: dict) -> dict:
        """The pipeline call's text inputs for conditionings from `encode`."""
        inputs = {"prompt_embeds": cond["embeds"], "negative_prompt_embeds": uncond["embeds"]}
        if "pooled" in cond:
            inputs.update(pooled_prompt_embeds=cond["pooled"], negative_pooled_prompt_embeds=uncond["pooled"])
        return inputs


SD = Family("sd", "Stable Diffusion 1.x/2.x", "StableDiffusionPipeline", ("text_encoder",))
SDXL = Family("sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline", ("text_encoder", "text_encoder_2"))
FAMILIES = (SD, SDXL)
TITLES = {f.name: f.title for f in FAMILIES}


def time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> list[int]:
    """SDXL's size conditioning of one image, in the order of diffusers' `_get_add_time_ids`:
    original (height, width), crop (top, left), target (height, width)."""
    return [*original_hw, *crop_top_left, *target_hw]


def added_conditions(pooled, time_ids_) -> dict | None:
    """The U-Net's `added_cond_kwargs`: SDXL's pooled text embedding and time ids; None for SD."""
    return None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids_}


# --- which family ---------------------------------------------------------------------------


def _config_file(name: str, inside: str, key: str) -> Path:
    """`inside` (a file of a diffusers folder) of a registered name, a local folder or a hub id; no weights."""
    from rpo.registry import model_path

    folder = Path(model_path(name))
    if folder.is_dir():
        path = folder / inside
        if not path.exists():
            raise FamilyError(f"{key}: {folder} has no {inside} (not a diffusers folder)")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FamilyError(f"{key}: {name}: no such folder, registered model or hub id (owner/name)")
    return _hub_file(name, inside, key)


def _hub_file(repo: str, filename: str, key: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename))
    except LocalEntryNotFoundError as e:  # offline and not cached (a subclass of EntryNotFoundError)
        raise IndexUnavailable(f"{key}: {filename} of {repo} is not in the Hugging Face cache and the hub is "
                               f"unreachable") from e
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise FamilyError(f"{key}: {repo} has no {filename} on the Hugging Face hub ({e.__class__.__name__})") from e
    except Exception as e:  # offline, or the hub unreachable: huggingface_hub raises several kinds
        raise IndexUnavailable(f"{key}: {filename} of {repo} is not in the Hugging Face cache and the hub is "
                               f"unreachable ({e.__class__.__name__})") from e


def model_index(base: str) -> dict:
    return json.loads(_config_file(base, "model_index.json", "model.base").read_text())


def detect(base: str) -> Family:
    """The family of base model `base`, from its model_index.json, before any weights load."""
    class_name = model_index(base).get("_class_name")
    for family in FAMILIES:
        if family.pipeline == class_name:
            return family
    known = "; ".join(f"{f.pipeline} ({f.title})" for f in FAMILIES)
    raise FamilyError(f"model.base: {base} is a {class_name} (its model_index.json's _class_name); "
                      f"supported: {known}")


def of(pipe) -> Family:
    """The family of a loaded pipeline."""
    for family in FAMILIES:
        if type(pipe).__name__ == family.pipeline:
            return family
    raise FamilyError(f"a {type(pipe).__name__} is neither {SD.pipeline} nor {SDXL.pipeline}")


def of_unet(unet) -> Family:
    """SDXL's U-Net is the one with the text-and-time added embedding."""
    return SDXL if unet.config.get("addition_embed_type") == "text_time" else SD


def vae_folder(name: str) -> tuple[str, str | None]:
    """(path or hub id, subfolder) of the VAE `model.vae` names: a VAE folder, or a pipeline folder's `vae`."""
    from rpo.registry import model_path

    path = model_path(name)
    return path, "vae" if (Path(path) / "model_index.json").exists() else None


def _vae_config(name: str, key: str, *, base: bool = False) -> dict:
    """config.json of a VAE folder, or of the `vae` folder of a pipeline (the base is always one)."""
    inside = "vae/config.json" if base or vae_folder(name)[1] else "config.json"
    return json.loads(_config_file(name, inside, key).read_text())


def check(cfg) -> Family | None:
    """What `rpo check` checks of the model family, before any weights load: the base is SD or SDXL, keys of the
    other family keep their defaults, and `model.vae` encodes into the base's latent space.

    The family, or None when a hub model's configuration is unreachable offline (the stages load it later,
    and loading names the family again).
    """
    from rpo import config as C
    from rpo.params import get

    try:
        family = detect(cfg.model.base)
        errors, values = [], C.to_dict(cfg)
        for key, only in C.family_keys().items():
            if only != family.name and get(values, key) != C.default(key):
                errors.append(f"{key}: {TITLES[only]} only, and model.base {cfg.model.base} is {family.title} "
                              f"(remove it or set the default {C.default(key)!r})")
        errors += method_fits(family, cfg.train.method)
        if cfg.model.vae != "base":
            errors += _vae_fits(cfg.model.vae, cfg.model.base, family)
    except IndexUnavailable as e:
        log.warning("%s; the model family is checked when the stages load the model", e)
        return None
    if errors:
        raise FamilyError("parameters that do not fit the base model:\n  " + "\n  ".join(errors))
    if family.pooled and cfg.train.lora_rank == 0:
        log.warning("train.lora_rank 0 fine-tunes SDXL's whole U-Net (2.6 B weights: about 52 GiB of GPU memory); "
                    "SDXL is fine-tuned with LoRA (rpo preset paper-sdxl: rank 32)")
    return family


def method_fits(family: Family, method: str) -> list[str]:
    """The baselines (rpo.methods) condition the U-Net as SD 1.x/2.x does (one text encoder, no pooled embedding
    or time ids): on SDXL only rpo trains."""
    if family.pooled and method != "rpo":
        return [f"train.method: {method} trains Stable Diffusion 1.x/2.x only, and the base model is {family.title} "
                f"(SDXL trains with rpo)"]
    return []


def require_method_fits(pipe, method: str) -> None:
    """method_fits of a loaded pipeline: the stages that train or draw for a baseline refuse SDXL even when DVC
    did not re-run the check stage (it does not read train.method, so that a method change re-runs no prior)."""
    errors = method_fits(of(pipe), method)
    if errors:
        raise FamilyError(errors[0])


def _vae_fits(vae: str, base: str, family: Family) -> list[str]:
    mine, theirs = _vae_config(vae, "model.vae"), _vae_config(base, "model.base", base=True)
    for field, default in (("latent_channels", 4), ("scaling_factor", SD_SCALING)):
        if mine.get(field, default) != theirs.get(field, default):
            return [f"model.vae: {vae} has {field} {mine.get(field, default)}, the VAE of {family.title} base "
                    f"{base} {theirs.get(field, default)}: another model family's latent space"]
    return []
