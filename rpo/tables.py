"""Markdown tables and the statistics the reports print: mean, std and a 95% interval over runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def stats(values) -> dict:
    """Mean, population std (ddof 0, over subjects as DreamBench reports it), n and the half-width of a
    95% interval of the mean (Student's t; 0 for a single value)."""
    v = pd.Series(values, dtype=float).dropna()
    n = len(v)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    half = float(_t95(n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": n, "ci95": half}


def _t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t (scipy is not a dependency: a table, then the normal limit)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
             12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    below = [d for d in table if d <= dof]
    return table[max(below)] if below and dof <= 120 else 1.960


def cell(stat, digits: int = 3, spread: str = "std") -> str:
    """`mean ± std` (or ± the 95% half-width) of a stats dict, a plain number, or n/a for nothing measured."""
    if stat is None or (isinstance(stat, float) and np.isnan(stat)):
        return "n/a"
    if isinstance(stat, dict):
        if stat.get("mean") is None:
            return "n/a"
        return f"{stat['mean']:.{digits}f} ± {stat[spread]:.{digits}f}"
    return f"{stat:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: a missing value (NaN) becomes null, which every JSON reader accepts."""
    return [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
            for row in df.to_dict(orient="records")]
