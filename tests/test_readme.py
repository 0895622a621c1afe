"""The README's "Write your own loss" example works as pasted: importable by `module:attr` from the
working directory, and its value and gradients match the formula it states."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from pipeline.losses import get_loss

README = Path(__file__).resolve().parents[1] / "README.md"


def _loss_example() -> str:
    section = README.read_text().split("### Write your own loss", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_loss_example_matches_its_formula(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(_loss_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_losses", raising=False)
    loss = get_loss("my_losses:FocalLoss", gamma=1.5)

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    value = loss(type("Out", (), {"logits": logits})(), labels)
    (grad,) = torch.autograd.grad(value, logits)

    ref_logits = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(ref_logits[:, :-1], -1)
    target = labels[:, 1:]
    mask = target != -100
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    p = torch.exp(-nll.detach())
    expected = ((1 - p) ** 1.5 * nll)[mask].sum() / mask.sum()
    (ref_grad,) = torch.autograd.grad(expected, ref_logits)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, ref_grad)
    assert get_loss("focal").gamma == 2.0  # importing it registered the name too


def test_readme_python_api_example_runs(capsys):
    """The README's Python API example, as written (real SmolLM2 from the offline asset)."""
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md#python-api", "exec"), {})
    out = capsys.readouterr().out
    assert "kept: quantile" in out and out.count("│") > 10  # the kept rows with their reasons


def test_readme_data_example_runs_and_drops_what_it_says(tmp_path, monkeypatch, capsys):
    """The README's no-model data example, as pasted: the near copy and the evaluation leak are dropped
    with reasons, the broken record is quarantined."""
    section = README.read_text().split("<!-- readme:data-example -->", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "dropped: dedup (exact); duplicate of" in out and "dropped: decontaminate" in out
    assert "missing_field" in out
