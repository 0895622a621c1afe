"""The random baseline selector: exact budget, deterministic per seed, uniform inclusion."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.core.registry import ConfigError
from pipeline.selectors import get_selector, run_selector

SCORES = pl.DataFrame({"id": [f"e{i}" for i in range(40)], "ppl": np.linspace(1, 5, 40)})


def test_exact_budget_and_determinism():
    a = run_selector(get_selector("random", fraction=0.25), SCORES, seed=3)
    b = run_selector(get_selector("random", fraction=0.25), SCORES, seed=3)
    c = run_selector(get_selector("random", fraction=0.25), SCORES, seed=4)
    assert a.get_column("kept").sum() == 10 and a.equals(b) and not a.equals(c)
    assert run_selector(get_selector("random", k=7), SCORES, seed=0).get_column("kept").sum() == 7


def test_inclusion_is_uniform():
    """Every row is kept with probability budget / n: over many seeds, no row is favoured."""
    counts = np.zeros(SCORES.height)
    for seed in range(400):
        counts += run_selector(get_selector("random", k=10), SCORES, seed=seed).get_column("kept").to_numpy()
    p = counts / 400
    assert abs(p.mean() - 0.25) < 1e-12 and p.min() > 0.15 and p.max() < 0.35  # binomial(400, .25) sd ~ .022


def test_needs_exactly_one_budget():
    with pytest.raises(ConfigError, match="exactly one"):
        get_selector("random")
    with pytest.raises(ConfigError, match="exactly one"):
        get_selector("random", fraction=0.5, k=3)
