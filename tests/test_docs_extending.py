"""docs/extending.md's four parts, saved as the user's my_parts.py, resolve from a recipe and do what it says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from pipeline.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def my_parts(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (tmp_path / "my_parts.py").write_text("\n\n".join(blocks))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_parts", None)
    yield tmp_path
    sys.modules.pop("my_parts", None)


def test_the_pages_command_resolves_every_part(my_parts, capsys):
    command = re.search(r"```bash\n(pipeline run sft-math.*?)```", DOC.read_text(), re.S).group(1)
    args = [a.strip("'") for a in re.findall(r"'[^']*'|\S+", command.replace("\\\n", " "))][2:]
    assert main(["recipes", "--show", *args]) == 0
    shown = capsys.readouterr().out
    assert "my_parts:ResponseLength" in shown and "my_parts:ExcessLoss" in shown
    assert main(["recipes", "--show", *args, "--set", "select.column=ppl"]) == 2
    assert "select.column: no score column 'ppl' (the scorers write: length)" in capsys.readouterr().err


def test_the_pages_parts_compute_what_they_say(my_parts, tiny_model_dir):
    from pipeline.losses import get_loss
    from pipeline.scorers import ScoreContext, get_scorer
    from pipeline.selectors import SelectContext, get_selector, run_selector
    from pipeline.training.columns import COLUMNS, ColumnContext, column_providers

    ex = pl.DataFrame({"id": ["a", "b", "c", "d"], "prompt": ["p"] * 4, "response": ["x", "xxx", "xx", "xxxx"]})
    scores = get_scorer("my_parts:ResponseLength", scale=2.0).score(ex, ScoreContext())
    assert scores["length"].to_list() == [2, 6, 4, 8]
    sel = run_selector(get_selector("shortest_half"), scores, context=SelectContext(examples=ex))
    assert sel["kept"].to_list() == [True, False, True, False] and sel["reason"][0].startswith("kept: length")

    loss = get_loss("excess_loss", scale=2.0)
    assert [p.name for p in column_providers(loss)] == ["ref_nll"]
    nll = torch.rand(2, 5, requires_grad=True)
    ref, mask = torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool)
    value = loss.from_log_probs(-nll, mask, batch={"ref_nll": ref})
    expected = (torch.sigmoid(2.0 * (nll.detach() - ref)) * nll).sum() / 10  # the docstring's formula
    assert torch.allclose(value, expected)
    value.backward()
    assert torch.allclose(nll.grad, torch.sigmoid(2.0 * (nll.detach() - ref)) / 10)  # weights are detached

    share = COLUMNS.build("response_share").compute(ex, ColumnContext(model=tiny_model_dir, max_length=64,
                                                                      cache_root=str(my_parts)))
    assert share["response_share"] == pytest.approx([0.5, 0.75, 2 / 3, 0.8])
