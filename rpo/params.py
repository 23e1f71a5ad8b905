"""params.yaml: loading, dotted overrides, and validation before any model is loaded.

Every key is declared once in SPEC with its type and allowed range, so a typo, a wrong
type or an out-of-range value fails at once with the key's name and the file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


def _num(lo=None, hi=None, integer=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}, got {v!r}"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v!r}"
        return None
    return check


def _str(v):
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"


def _bool(v):
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _choice(*options):
    return lambda v: None if v in options else f"must be one of {', '.join(map(str, options))}, got {v!r}"


def _str_list(v):
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        return f"must be a list of names, got {v!r}"
    return None


def _unit_list(v):
    if not isinstance(v, list) or not v or any(UNIT(x) for x in v):
        return f"must be a non-empty list of numbers in [0, 1], got {v!r}"
    return None


POS = _num(lo=1, integer=True)
NONNEG = _num(lo=0, integer=True)
UNIT = _num(0.0, 1.0)
PRECISION = _choice("fp32", "bf16", "fp16", "auto")

SPEC = {
    "subjects": _str_list,
    "unique_token": _str,
    "seed": NONNEG,
    "device": _str,
    "paths.subjects": _str,
    "paths.dreambench": _str,
    "model.base": _str,
    "model.resolution": _num(8, 2048, integer=True),
    "model.dtype": PRECISION,
    "model.attention": _choice("sdpa", "eager"),
    "prior.images_per_prompt": POS,
    "prior.num_inference_steps": POS,
    "prior.guidance_scale": _num(0.0),
    "prior.batch_size": POS,
    "reward.backend": _choice("transformers", "open_clip"),
    "reward.model": _str,
    "reward.lambda_train": UNIT,
    "reward.batch_size": POS,
    "labels.tau": _num(1e-6),
    "labels.draws": POS,
    "train.max_steps": POS,
    "train.batch_size": POS,
    "train.learning_rate": _num(0.0),
    "train.weight_decay": _num(0.0),
    "train.adam_beta1": _num(0.0, 1.0),
    "train.adam_beta2": _num(0.0, 1.0),
    "train.grad_clip": _num(0.0),
    "train.beta": _num(0.0),
    "train.share_noise": _bool,
    "train.ref_prompt": _choice("instance", "pair"),
    "train.mixed_precision": PRECISION,
    "train.gradient_checkpointing": _bool,
    "train.lora_rank": NONNEG,
    "train.compile": _bool,
    "validate.every": POS,
    "validate.images_per_prompt": POS,
    "validate.num_inference_steps": POS,
    "validate.guidance_scale": _num(0.0),
    "validate.lambda_val": UNIT,
    "validate.early_stopping": _bool,
    "validate.keep": _choice("all", "selectable"),
    "evaluate.images_per_prompt": POS,
    "evaluate.num_inference_steps": POS,
    "evaluate.guidance_scale": _num(0.0),
    "evaluate.batch_size": POS,
    "evaluate.dino": _str,
    "evaluate.clip": _str,
    "evaluate.clip_backend": _choice("transformers", "open_clip"),
    "evaluate.preprocessing": _choice("processor", "dino_original"),
    "evaluate.base_images": _bool,
    "evaluate.judges": _choice("none", "world"),
    "ablate.lambda_val": UNIT,
    "ablate.lambda_vals": _unit_list,
}


def get(params: dict, key: str):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_key(params: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def validate(params: dict, source: str = "params.yaml") -> dict:
    errors = []
    for key, check in SPEC.items():
        try:
            value = get(params, key)
        except KeyError:
            errors.append(f"{key}: missing")
            continue
        problem = check(value)
        if problem:
            errors.append(f"{key}: {problem}")
    known_sections = {k.split(".")[0] for k in SPEC}
    errors += [f"{k}: unknown key" for k in params if k not in known_sections]
    for section, body in params.items():
        if isinstance(body, dict):
            errors += [f"{section}.{k}: unknown key" for k in body if f"{section}.{k}" not in SPEC]
    if errors:
        raise ParamsError(f"{source}: invalid parameters:\n  " + "\n  ".join(errors))
    return params


def apply_overrides(params: dict, overrides: dict | None) -> dict:
    """Return a copy with dotted-key overrides applied, e.g. {"train.max_steps": 200}."""
    out = copy.deepcopy(params)
    for key, value in (overrides or {}).items():
        if key not in SPEC:
            raise ParamsError(f"override {key}: unknown key")
        set_key(out, key, value)
    return out


def parse_override(text: str) -> tuple[str, object]:
    """'train.max_steps=200' -> ('train.max_steps', 200); values are YAML scalars."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load(path: str | Path = "params.yaml", overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return validate(apply_overrides(params, overrides), str(path))


def dumps(params: dict) -> str:
    return json.dumps(params, sort_keys=True)
