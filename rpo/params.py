"""params.yaml: reading it (YAML 1.2), dotted overrides, and validation against the SPEC before any model loads.

A typo, a wrong type or an out-of-range value fails at once with the key's name and the file.
Numbers are read as YAML 1.2 reads them (`1e-3` is a number, as DVC reads it too), in the file,
in presets and in `--set` overrides alike.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

from rpo import config as C


class ParamsError(ValueError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


def yaml_load(text: str):
    """YAML 1.2 (ruamel's safe loader): the reading DVC itself gives params.yaml."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def yaml_dump(data) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


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
    """`params` unchanged if every key of the SPEC is there and valid and no other key is; else ParamsError."""
    from rpo import registry

    errors = []
    for key in C.SPEC:
        try:
            value = get(params, key)
        except KeyError:
            errors.append(f"{key}: missing")
            continue
        problem = C.problem(key, value)
        if problem is None and key == "evaluate.judges" and value != "none" and value not in registry.judge_names():
            problem = f"must be none or a registered judge ({', '.join(registry.judge_names()) or 'none installed'}), got {value!r}"
        if problem:
            errors.append(f"{key}: {problem}")
    errors += _combinations(params) if not errors else []
    errors += [f"{k}: unknown key" for k in params if k not in C.SECTIONS and k not in C.SPEC]
    for section, body in params.items():
        if section in C.SECTIONS and isinstance(body, dict):
            errors += [f"{section}.{k}: unknown key" for k in body if f"{section}.{k}" not in C.SPEC]
        elif section in C.SECTIONS:
            errors.append(f"{section}: must be a mapping of keys, got {body!r}")
    if errors:
        raise ParamsError(f"{source}: invalid parameters:\n  " + "\n  ".join(errors))
    return params


def _combinations(params: dict) -> list[str]:
    """Keys that are valid alone but not together (the model family's keys are checked by `rpo check`)."""
    method, rank = get(params, "train.method"), get(params, "train.lora_rank")
    if method in C.TOKEN_METHODS and rank > 0:
        return [f"train.lora_rank: must be 0 with train.method {method} (it trains no LoRA adapters), got {rank}"]
    if get(params, "train.text_encoder_lora") and rank == 0:
        return ["train.text_encoder_lora: needs train.lora_rank > 0 (the text encoders' adapters have that rank)"]
    if get(params, "train.text_encoder_lora") and method != "rpo":
        return [f"train.text_encoder_lora: RPO only, got train.method {method}"]
    return []


def apply_overrides(params: dict, overrides: dict | None) -> dict:
    """A copy with dotted-key overrides applied, e.g. {"train.max_steps": 200}."""
    out = copy.deepcopy(params)
    for key, value in (overrides or {}).items():
        if key not in C.SPEC:
            raise ParamsError(f"override {key}: unknown key")
        set_key(out, key, value)
    return out


def parse_override(text: str) -> tuple[str, object]:
    """'train.max_steps=200' -> ('train.max_steps', 200); values are YAML 1.2 scalars ('1e-3' is a number)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        parsed = yaml_load(value) if value.strip() else value
    except Exception as e:  # ruamel raises several error types for broken YAML
        raise ParamsError(f"override {key.strip()}: {value!r} is not a YAML value ({e})") from e
    return key.strip(), parsed


def read(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found")
    try:
        params = yaml_load(path.read_text())
    except Exception as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


def load(path: str | Path = "params.yaml", overrides: dict | None = None) -> dict:
    """params.yaml with overrides, validated: the plain mapping (what DVC reads, what presets rewrite)."""
    return validate(apply_overrides(read(path), overrides), str(path))


def load_config(path: str | Path = "params.yaml", overrides: dict | None = None) -> C.Config:
    return C.from_dict(load(path, overrides))


def overrides_from_args(args) -> dict:
    """`--set KEY=VALUE` options as a dict."""
    return dict(parse_override(o) for o in getattr(args, "set", None) or [])


def config_from_args(args) -> C.Config:
    """The config a command runs with: `--params` with its `--set` overrides."""
    return load_config(args.params, overrides_from_args(args))
