"""The typed configuration: one frozen dataclass per section of params.yaml, the one SPEC of every key.

Each field carries its check (type and range) in its metadata; `SPEC` (dotted key -> field) is
read off these classes, so a key is declared once: its type, its range and its default. The
defaults are the paper's settings (DESIGN.md section 1, the official code); presets
(`rpo/presets/*.yaml`) list only where they differ. Stages receive a `Config`, never a raw dict.

Light to import: no torch, no YAML.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

Check = Callable[[Any], "str | None"]


def _num(lo=None, hi=None, integer=False) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v!r}"
        return None
    return check


def _text(v):
    return None if isinstance(v, str) and v.strip() else f"must be a non-empty string, got {v!r}"


def _flag(v):
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _choice(*options) -> Check:
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, options))}, got {v!r}"


def _names(v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in v):
        return f"must be a list of names, got {v!r}"
    return None


def _units(v):
    if not isinstance(v, (list, tuple)) or not v or any(UNIT(x) for x in v):
        return f"must be a non-empty list of numbers in [0, 1], got {v!r}"
    return None


def _keep(v):
    if v in ("all", "selectable") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return None
    return f"must be all, selectable or a number of checkpoints >= 1, got {v!r}"


def _seeds(v):
    if not isinstance(v, (list, tuple)) or any(NONNEG(x) for x in v):
        return f"must be a list of integers >= 0, got {v!r}"
    return None


POS = _num(lo=1, integer=True)
NONNEG = _num(lo=0, integer=True)
UNIT = _num(0.0, 1.0)
PRECISION = _choice("fp32", "bf16", "fp16", "auto")


def key(default, check: Check, *, preset: bool = True, family: str | None = None):
    """A params.yaml key: its default (the paper's value), its check, and whether presets set it.

    Keys that name the user's own things (subjects, seed, paths, device) are never touched by a preset.
    `family` marks a key that means something for one model family only (rpo.family: "sd" or "sdxl"):
    `rpo check` refuses another value than the default on a base model of the other family.
    """
    metadata = {"check": check, "preset": preset, "family": family}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Paths:
    subjects: str = key("data/subjects", _text, preset=False)
    dreambench: str = key("../shared/dreambench", _text, preset=False)


@dataclass(frozen=True)
class Model:
    base: str = key("stabilityai/stable-diffusion-2-1", _text)
    resolution: int = key(512, _num(8, 2048, integer=True))
    dtype: str = key("auto", PRECISION)
    attention: str = key("sdpa", _choice("sdpa", "eager"))
    vae: str = key("base", _text)  # "base": the base model's own VAE; else a hub id, local folder or registered name


@dataclass(frozen=True)
class Prior:
    images_per_prompt: int = key(4, POS)
    num_inference_steps: int = key(50, POS)
    guidance_scale: float = key(7.5, _num(0.0))
    batch_size: int = key(16, POS)
    class_images: int = key(100, POS)  # DreamBooth's class images (diffusers' num_class_images)


@dataclass(frozen=True)
class Reward:
    backend: str = key("transformers", _choice("transformers", "open_clip"))
    model: str = key("kakaobrain/align-base", _text)
    lambda_train: float = key(0.0, UNIT)
    batch_size: int = key(64, POS)


@dataclass(frozen=True)
class Labels:
    tau: float = key(1.0, _num(1e-6))
    draws: int = key(8, POS)


# train.method: RPO, or one of the paper's baselines on the same data, validation and selection (rpo.methods)
METHODS = ("rpo", "dreambooth", "textual_inversion", "custom_diffusion")
BASELINE_METHODS = METHODS[1:]
METHOD_NAMES = {"rpo": "RPO", "dreambooth": "DreamBooth", "textual_inversion": "Textual Inversion",
                "custom_diffusion": "Custom Diffusion"}
TOKEN_METHODS = ("textual_inversion", "custom_diffusion")  # learn a new token's embedding in the text encoder
CLASS_METHODS = ("dreambooth", "custom_diffusion")  # prior preservation on the base model's class images


@dataclass(frozen=True)
class Train:
    method: str = key("rpo", _choice(*METHODS))
    max_steps: int = key(400, POS)
    batch_size: int = key(1, POS)
    learning_rate: float = key(5e-6, _num(0.0))
    weight_decay: float = key(1e-2, _num(0.0))
    adam_beta1: float = key(0.9, _num(0.0, 1.0))
    adam_beta2: float = key(0.999, _num(0.0, 1.0))
    grad_clip: float = key(1.0, _num(0.0))
    beta: float = key(1.0, _num(0.0))
    share_noise: bool = key(False, _flag)
    ref_prompt: str = key("instance", _choice("instance", "pair"))
    mixed_precision: str = key("auto", PRECISION)
    gradient_checkpointing: bool = key(False, _flag)
    lora_rank: int = key(0, NONNEG)
    text_encoder_lora: bool = key(False, _flag)  # LoRA on every text encoder too (rank lora_rank, so lora_rank > 0)
    time_ids: str = key("image", _choice("image", "resolution"), family="sdxl")
    compile: bool = key(False, _flag)
    resume: bool = key(True, _flag)
    prior_loss_weight: float = key(1.0, _num(0.0))  # w of L_prior (dreambooth, custom_diffusion); 0: no class images
    ti_learning_rate: float = key(5e-4, _num(0.0))
    cd_learning_rate: float = key(1e-5, _num(0.0))
    initializer_token: str = key("class_noun", _text)


# the keys of `train` each method reads (rpo.stages.finetune declares only these to DVC): a change of another
# method's key never re-runs a training
TRAIN_COMMON = ("train.method", "train.max_steps", "train.batch_size", "train.weight_decay", "train.adam_beta1",
                "train.adam_beta2", "train.grad_clip", "train.mixed_precision", "train.gradient_checkpointing",
                "train.compile", "train.resume")
TRAIN_KEYS = {
    "rpo": ("train.learning_rate", "train.beta", "train.share_noise", "train.ref_prompt", "train.lora_rank",
            "train.text_encoder_lora", "train.time_ids"),
    "dreambooth": ("train.learning_rate", "train.prior_loss_weight", "train.lora_rank"),
    "textual_inversion": ("train.ti_learning_rate", "train.initializer_token"),
    "custom_diffusion": ("train.cd_learning_rate", "train.prior_loss_weight", "train.initializer_token"),
}


def train_keys(method: str) -> tuple[str, ...]:
    """The `train` keys a training with `method` reads."""
    return TRAIN_COMMON + TRAIN_KEYS[method]


def uses_class_images(train: "Train") -> bool:
    """Does this training read class images (prior preservation with a weight above 0)?"""
    return train.method in CLASS_METHODS and train.prior_loss_weight > 0


@dataclass(frozen=True)
class Validate:
    every: int = key(40, POS)
    at_start: bool = key(True, _flag)
    images_per_prompt: int = key(4, POS)
    num_inference_steps: int = key(50, POS)
    guidance_scale: float = key(7.5, _num(0.0))
    lambda_val: float = key(0.5, UNIT)
    early_stopping: bool = key(True, _flag)
    keep: str | int = key("selectable", _keep)


@dataclass(frozen=True)
class Evaluate:
    images_per_prompt: int = key(4, POS)
    num_inference_steps: int = key(50, POS)
    guidance_scale: float = key(7.5, _num(0.0))
    batch_size: int = key(25, POS)
    dino: str = key("facebook/dino-vits16", _text)
    clip: str = key("openai/clip-vit-base-patch16", _text)
    clip_backend: str = key("transformers", _choice("transformers", "open_clip"))
    preprocessing: str = key("processor", _choice("processor", "dino_original"))
    base_images: bool = key(True, _flag)
    judges: str = key("none", _text)  # "none" or a judge a plug-in registers (rpo.registry), checked on load


@dataclass(frozen=True)
class Ablate:
    lambda_val: float = key(0.3, UNIT)
    lambda_vals: tuple[float, ...] = key((0.3, 0.5, 0.7), _units)
    seeds: tuple[int, ...] = key((), _seeds)


@dataclass(frozen=True)
class Config:
    subjects: tuple[str, ...] = key((), _names, preset=False)
    unique_token: str = key("sks", _text, preset=False)
    seed: int = key(0, NONNEG, preset=False)
    device: str = key("auto", _text, preset=False)
    paths: Paths = field(default_factory=Paths)
    model: Model = field(default_factory=Model)
    prior: Prior = field(default_factory=Prior)
    reward: Reward = field(default_factory=Reward)
    labels: Labels = field(default_factory=Labels)
    train: Train = field(default_factory=Train)
    validate: Validate = field(default_factory=Validate)
    evaluate: Evaluate = field(default_factory=Evaluate)
    ablate: Ablate = field(default_factory=Ablate)


SECTIONS: dict[str, type] = {name: cls for name, cls in typing.get_type_hints(Config).items()
                             if dataclasses.is_dataclass(cls)}


def _spec() -> dict[str, dataclasses.Field]:
    spec = {}
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            spec.update({f"{f.name}.{g.name}": g for g in dataclasses.fields(SECTIONS[f.name])})
        else:
            spec[f.name] = f
    return spec


SPEC: dict[str, dataclasses.Field] = _spec()
"""Every key of params.yaml (dotted) -> its field: its check (`metadata["check"]`) and its default."""


def default(name: str):
    f = SPEC[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def preset_keys() -> list[str]:
    return [k for k, f in SPEC.items() if f.metadata["preset"]]


def problem(name: str, value) -> str | None:
    """What is wrong with `value` for key `name`, or None."""
    return SPEC[name].metadata["check"](value)


def family_keys() -> dict[str, str]:
    """Keys that mean something for one model family only -> that family (rpo.family)."""
    return {k: f.metadata["family"] for k, f in SPEC.items() if f.metadata["family"]}


def from_dict(params: dict) -> Config:
    """The Config of validated params (rpo.params.validate): lists become tuples, integers in float fields floats."""
    def build(cls, values: dict):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            v = values[f.name]
            if f.name in SECTIONS and cls is Config:
                v = build(SECTIONS[f.name], v)
            elif hints[f.name] is float and isinstance(v, int):
                v = float(v)
            elif isinstance(v, list):
                v = tuple(float(x) if hints[f.name] == tuple[float, ...] else x for x in v)
            kwargs[f.name] = v
        return cls(**kwargs)

    return build(Config, params)


def to_dict(cfg) -> dict:
    """The params.yaml mapping of a Config: tuples as lists."""
    return {f.name: to_dict(v) if dataclasses.is_dataclass(v) else list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(cfg) for v in [getattr(cfg, f.name)]}
