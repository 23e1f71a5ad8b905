"""The typed configuration: one SPEC, frozen sections, YAML 1.2 numbers, presets that each hold their values once."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import REPO
from rpo import config as C
from rpo import params as P
from rpo import presets


def test_every_key_of_params_yaml_is_a_field_of_a_frozen_section():
    params = P.load(REPO / "params.yaml")
    cfg = C.from_dict(params)
    assert C.to_dict(cfg) == params  # nothing lost or added between the file and the typed config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.beta = 2.0  # type: ignore[misc]
    assert isinstance(cfg.train.learning_rate, float) and isinstance(cfg.ablate.lambda_vals, tuple)


def test_yaml_1_2_numbers_in_the_file_and_in_overrides():
    assert P.parse_override("train.learning_rate=1e-3") == ("train.learning_rate", 0.001)
    assert P.parse_override("labels.tau=5E-2") == ("labels.tau", 0.05)
    assert P.parse_override("validate.early_stopping=false") == ("validate.early_stopping", False)
    text = (REPO / "params.yaml").read_text().replace("learning_rate: 0.0003", "learning_rate: 3e-4")
    assert "3e-4" in text and P.yaml_load(text)["train"]["learning_rate"] == 3e-4


def test_an_integer_given_for_a_float_becomes_a_float_and_a_bool_is_no_number():
    params = P.apply_overrides(P.load(REPO / "params.yaml"), {"train.learning_rate": 1})
    assert C.from_dict(P.validate(params)).train.learning_rate == 1.0
    with pytest.raises(P.ParamsError, match="train.beta: must be a number, got True"):
        P.validate(P.apply_overrides(params, {"train.beta": True}))


def test_the_defaults_are_the_papers_settings():
    paper = C.Config()
    assert (paper.model.base, paper.model.resolution, paper.reward.model) == (
        "stabilityai/stable-diffusion-2-1", 512, "kakaobrain/align-base")
    assert (paper.train.learning_rate, paper.train.max_steps, paper.train.beta, paper.validate.every) == (5e-6, 400, 1.0, 40)
    assert presets.departures("paper") == {}  # the paper preset is the defaults, nothing more


def test_presets_list_only_departures_and_switching_ends_in_the_same_file(tmp_path):
    for name in presets.names():
        assert all(C.default(k) != v for k, v in presets.departures(name).items()), name
    ours = tmp_path / "params.yaml"
    ours.write_text((REPO / "params.yaml").read_text())
    presets.apply("tiny", ours)
    presets.apply("paper", ours)
    direct = tmp_path / "direct.yaml"
    direct.write_text((REPO / "params.yaml").read_text())
    presets.apply("paper", direct)
    assert P.load(ours) == P.load(direct)
    assert P.load(ours)["subjects"] == P.load(REPO / "params.yaml")["subjects"]  # the user's keys are kept


def test_the_shipped_params_are_the_world_preset():
    shipped = P.load(REPO / "params.yaml")
    assert all(P.get(shipped, k) == v for k, v in presets.load("world").items())


def test_a_preset_may_not_set_the_users_own_keys(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("subjects: [dog]\n")
    monkeypatch.setattr(presets, "HERE", tmp_path)
    with pytest.raises(P.ParamsError, match="keys a preset cannot set: \\['subjects'\\]"):
        presets.departures("mine")
