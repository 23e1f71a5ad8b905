"""The evaluate stage's world hook gives exact verdicts on renders whose truth is known."""

from __future__ import annotations

from PIL import Image

from rpo import registry
from rpo_world.judging import WorldJudge
from rpo_world.render import render
from rpo_world.subjects import BY_NAME


def _verdict(judge, scene, prompt, seed=1):
    (row,) = judge.judge([Image.fromarray(render(scene, seed))], [prompt])
    return row


def test_verdicts_on_known_scenes():
    star = BY_NAME["striped_star_toy"]
    judge = WorldJudge(star.name, "sks")
    v = _verdict(judge, star.scene("beach"), "a sks toy on the beach")
    assert (v["judge_subject"], v["judge_context"], v["judge_prompt"], v["judge_both"], v["judge_home"]) == (
        True, True, True, True, False)
    v = _verdict(judge, star.scene(), "a sks toy on the beach")  # the home background leaked
    assert (v["judge_subject"], v["judge_context"], v["judge_home"]) == (True, False, True)
    v = _verdict(judge, BY_NAME["dotted_cross_toy"].scene("beach"), "a sks toy on the beach")
    assert v["judge_subject"] is False and v["judge_context"] is True and v["judge_mark"] is False
    v = _verdict(judge, star.scene("snow", colour="red"), "a red sks toy")  # the prompt recolours the subject
    assert v["judge_subject"] is True and v["judge_prompt"] is True and v["judge_context"] is None
    v = _verdict(judge, star.scene("snow"), "a red sks toy")
    assert v["judge_subject"] is False and v["judge_prompt"] is False
    v = _verdict(judge, star.scene("snow"), "a shiny sks toy")  # nothing drawable asked: no prompt verdict
    assert v["judge_prompt"] is None and v["judge_both"] is None and v["judge_subject"] is True


def test_the_plugin_is_off_unless_asked_and_knows_only_world_subjects():
    assert registry.judge("none", "striped_star_toy", "sks") is None
    assert registry.judge_names() == ["world"]  # registered through pyproject's entry points, not imported by the core
    outsider = registry.judge("world", "duck_toy", "sks")
    (row,) = outsider.judge([Image.fromarray(render(BY_NAME["striped_star_toy"].scene("moon"), 0))],
                            ["a sks toy on the Moon"])
    assert row["judge_context"] is True and "judge_subject" not in row
