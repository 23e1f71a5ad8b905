"""The world: deterministic renders, captions that parse back, subjects the base model never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rpo.dreambench import EVAL_LIVE, EVAL_OBJECT
from rpo.prompts import TRAIN_LIVE, TRAIN_OBJECT, fill
from rpo_world.data import batch, random_caption, random_scene
from rpo_world.grammar import CONTEXTS, HOME_CONTEXTS, NOUNS, Scene, caption, parse
from rpo_world.render import render
from rpo_world.subjects import HELD_OUT, SUBJECTS, reference_seed

REPO = Path(__file__).resolve().parents[1]


def test_render_is_a_function_of_the_seed():
    scene = Scene("star", "red", "striped", "toy", "beach", "band", "vangogh")
    a, b, c = render(scene, 3), render(scene, 3), render(scene, 4)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    images1, scenes1, captions1 = batch(0, 7, 16, "encoder")
    images2, scenes2, captions2 = batch(0, 7, 16, "encoder")
    assert np.array_equal(images1, images2) and scenes1 == scenes2 and captions1 == captions2


def test_attributes_change_the_picture():
    base = Scene("star", "red", "striped", "toy", "beach")
    for change in ({"shape": "circle"}, {"colour": "blue"}, {"pattern": "plain"}, {"noun": "pet"},
                   {"context": "moon"}, {"mark": "spot"}, {"style": "vangogh"}):
        other = Scene(**{**vars(base), **change})
        assert not np.array_equal(render(base, 1), render(other, 1)), change


def test_captions_parse_back_to_the_attributes_drawn():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = random_scene(rng, "judge")
        text = random_caption(scene, rng)
        req = parse(text)
        assert req.noun == scene.noun and not req.unparsed, text
        for attr in ("shape", "colour", "context", "style"):
            assert getattr(req, attr) in (None, getattr(scene, attr)), text
        assert req.pattern in (None, scene.pattern) or (req.pattern is None and scene.pattern == "plain"), text
    full = caption(Scene("star", "red", "striped", "toy", "beach"))
    assert full == "a red striped star toy on the beach"
    assert vars(parse(full)) == {"noun": "toy", "shape": "star", "colour": "red", "pattern": "striped",
                                 "context": "beach", "style": None, "unparsed": []}


def test_every_product_prompt_is_read_as_the_world_draws_it():
    for templates in (TRAIN_OBJECT, TRAIN_LIVE, EVAL_OBJECT, EVAL_LIVE):
        for noun in NOUNS:
            for prompt in fill(templates, "sks", noun):
                req = parse(prompt, "sks")
                assert req.noun == noun, prompt
    assert parse("a sks toy on the beach", "sks").context == "beach"
    assert parse("a cube shaped sks toy", "sks").shape == "square"
    assert parse("a green sks toy", "sks").colour == "green"
    assert parse("a sks toy in Vincent Van Gogh rendition", "sks").style == "vangogh"
    assert parse("a sks pet is swimming in a pool", "sks").context == "pool"
    hat = parse("a sks pet wearing a red hat", "sks")  # a hat is not drawable: no colour asked
    assert hat.colour is None and hat.unparsed == ["wearing", "red", "hat"]
    drawable = {parse(p, "sks").context for t in (TRAIN_OBJECT, EVAL_OBJECT, TRAIN_LIVE, EVAL_LIVE)
                for p in fill(t, "sks", "toy")} - {None}
    assert drawable == set(CONTEXTS) - set(HOME_CONTEXTS)


def test_subjects_are_new_to_the_diffusion_model():
    _, scenes, _ = batch(0, 0, 2000, "diffusion")
    assert all(s.mark == "none" for s in scenes)
    assert not {(s.shape, s.colour, s.pattern) for s in scenes} & HELD_OUT
    assert len(SUBJECTS) >= 6 and {s.noun for s in SUBJECTS} == set(NOUNS)
    _, judged, _ = batch(0, 0, 2000, "judge")
    assert {(s.shape, s.colour, s.pattern) for s in judged} & HELD_OUT  # the judges do see them


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda s: s.name)
def test_committed_subject_folders_are_the_renders(subject):
    folder = REPO / "data" / "subjects" / subject.name
    meta = yaml.safe_load((folder / "subject.yaml").read_text())
    assert meta == {"class_noun": subject.noun, "live": subject.noun == "pet"}
    files = sorted(folder.glob("*.png"))
    assert 4 <= len(files) <= 6
    for i, path in enumerate(files):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), render(subject.scene(), reference_seed(subject, i)))
