"""Paired statistics over seeds. Methods that share a seed's diffusion model (guide, gr, ddgr) — or
sweep points of one seed — are paired measurements: their per-seed difference cancels the variance
the diffusion model, the class order and the initialisation put into both. We report the mean
difference with a Student-t confidence interval over seeds, not unpaired means ± std.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from scipy import stats

TIE = 1e-6  # a per-seed difference this small is float noise: a tie, counted as neither higher nor lower


@dataclass(frozen=True)
class Paired:
    """Mean of per-seed differences with its confidence interval."""

    n: int
    mean: float
    std: float  # of the differences (ddof 1); nan for one seed
    low: float  # confidence interval; nan for fewer than two seeds
    high: float
    wins: int  # seeds whose difference is above +TIE
    level: float = 0.95
    ties: int = 0  # seeds whose |difference| ≤ TIE

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (1 seed)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    @property
    def count(self) -> str:
        """Seeds higher out of seeds, ties named apart: "3/5" or "3/5, 1 tied"."""
        return seeds_higher(self.wins, self.n, self.ties)


def seeds_higher(higher: int, n: int, tied: int = 0) -> str:
    return f"{higher}/{n}" + (f", {tied} tied" if tied else "")


def paired_ci(differences, level: float = 0.95) -> Paired:
    """Mean and two-sided Student-t interval of paired differences (one per seed)."""
    d = [float(x) for x in differences]
    if not d:
        raise ValueError("paired_ci: no differences")
    n, mean = len(d), sum(d) / len(d)
    wins, ties = sum(x > TIE for x in d), sum(abs(x) <= TIE for x in d)
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan, wins, level, ties)
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return Paired(n, mean, std, mean - half, mean + half, wins, level, ties)


def paired_differences(values: Mapping[tuple, float], baseline: object) -> dict[object, dict]:
    """From values[(arm, seed)] → {arm: {seed: value − values[(baseline, seed)]}} for every arm ≠
    baseline, over the seeds both have. (`arm` is a method, or a sweep point.)"""
    base = {seed: v for (arm, seed), v in values.items() if arm == baseline}
    out: dict[object, dict] = {}
    for (arm, seed), v in values.items():
        if arm != baseline and seed in base:
            out.setdefault(arm, {})[seed] = v - base[seed]
    return out
