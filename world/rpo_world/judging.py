"""The world's judge for the evaluate stage (`evaluate.judges: world`; entry point group `rpo.judges`).

Exact answers per generated image.

For each image and its prompt: is it the subject (pattern, mark, class noun, and the shape and
colour the subject has unless the prompt changes them)? Is everything the prompt asks for and
this world can draw (context, colour, shape, style) there? Did the subject's home background
leak into a prompt that asks for another context? Prompts with nothing drawable (`a shiny V k`)
get no prompt verdict; subjects outside the world get prompt verdicts only.
"""

from __future__ import annotations

from pathlib import Path


from rpo_world.grammar import parse
from rpo_world.judges import Judges
from rpo_world.weights import path as model_path
from rpo_world.subjects import world_subject

# per-image verdicts (yes, no, or None where they do not apply); the evaluate stage records their rates
VERDICTS = ("judge_subject", "judge_mark", "judge_prompt", "judge_context", "judge_both", "judge_home")


class WorldJudge:
    def __init__(self, subject_name: str, token: str):
        self.judges = Judges.from_pretrained(model_path("world-judges"))
        self.subject = world_subject(subject_name)
        self.token = token

    def judge(self, images, prompts: list[str]) -> list[dict]:
        """One row per image: what the judges saw (`seen_*`) and the verdicts."""
        pred = self.judges.predict(images)
        return [{"prompt": p, **self.verdict({a: v[k] for a, v in pred.items()}, p)} for k, p in enumerate(prompts)]

    def verdict(self, seen: dict, prompt: str) -> dict:
        req = parse(prompt, self.token)
        asked = {a: getattr(req, a) for a in ("context", "colour", "shape", "style") if getattr(req, a)}
        row = {f"seen_{a}": v for a, v in seen.items()}
        row["judge_prompt"] = all(seen[a] == v for a, v in asked.items()) if asked else None
        row["judge_context"] = seen["context"] == req.context if req.context else None
        s = self.subject
        if s is not None:
            want = {"shape": req.shape or s.shape, "colour": req.colour or s.colour, "pattern": s.pattern,
                    "mark": s.mark, "noun": s.noun}
            row["judge_subject"] = all(seen[a] == v for a, v in want.items())
            row["judge_mark"] = seen["mark"] == s.mark
            row["judge_both"] = row["judge_subject"] and row["judge_prompt"] if asked else None
            row["judge_home"] = seen["context"] == s.home if req.context and req.context != s.home else None
        return row


def judge(subject_name: str, token: str) -> WorldJudge:
    return WorldJudge(subject_name, token)


def data_files() -> list[Path]:
    """The files this judge loads: DVC dependencies of the evaluate stage (rpo.deps)."""
    return [model_path("world-judges")]

