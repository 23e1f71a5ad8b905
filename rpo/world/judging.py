"""The evaluate stage's world hook (`evaluate.judges: world`): exact answers per generated image.

For each image and its prompt: is it the subject (pattern, mark, class noun, and the shape and
colour the subject has unless the prompt changes them)? Is everything the prompt asks for and
this world can draw (context, colour, shape, style) there? Did the subject's home background
leak into a prompt that asks for another context? Prompts with nothing drawable (`a shiny V k`)
get no prompt verdict; subjects outside the world get prompt verdicts only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rpo.world.grammar import parse
from rpo.world.judges import Judges
from rpo.world.pipeline import model_path
from rpo.world.subjects import world_subject

# per-image verdicts; their means over a model's images go into metrics/<subject>.json
VERDICTS = ("judge_subject", "judge_mark", "judge_prompt", "judge_context", "judge_both", "judge_home")


class WorldJudge:
    def __init__(self, subject_name: str, token: str):
        self.judges = Judges.from_pretrained(model_path("world-judges"))
        self.subject = world_subject(subject_name)
        self.token = token
        self.rows: dict[str, list[dict]] = {}

    def add(self, which: str, images, prompts: list[str]) -> None:
        """Judge one model's evaluation images (`which`: selected or base)."""
        pred = self.judges.predict(images)
        self.rows[which] = [{"prompt": p, **self.verdict({a: v[k] for a, v in pred.items()}, p)}
                            for k, p in enumerate(prompts)]

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

    def summary(self, which: str) -> dict:
        """Mean of each verdict over the images that have one (None: not applicable)."""
        df = pd.DataFrame(self.rows.get(which, []))
        out = {}
        for v in VERDICTS:
            if v in df:
                values = df[v].dropna().astype(float)
                out[v] = float(values.mean()) if len(values) else None
        return out

    def write(self, folder: Path) -> None:
        """Every verdict and what the judges saw, per model and image: `judges.parquet`."""
        pd.DataFrame([{"model": w, **r} for w, rows in self.rows.items() for r in rows]).to_parquet(folder / "judges.parquet")


def world_judge(ev: dict, subject_name: str, token: str) -> WorldJudge | None:
    return WorldJudge(subject_name, token) if ev.get("judges", "none") == "world" else None

