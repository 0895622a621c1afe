"""Offline reasoning-gym domains and mixtures as `data.dataset` (pipeline.data.reasoning_gym, load_math)."""

from __future__ import annotations

import pytest

from pipeline.core.config import DataSection, load_recipe
from pipeline.data import fingerprint, load_math
from pipeline.data.math import final_answer, normalize_number
from pipeline.data.reasoning_gym import NUMERIC_DOMAINS, parse_spec, rg_records

SMALL = "rg:chain_sum;max_terms=2;max_digits=1"


def _prompts(splits: dict) -> dict[str, set[str]]:
    return {k: set(v.get_column("prompt").to_list()) for k, v in splits.items()}


def test_parse_spec_settings_and_errors():
    assert parse_spec("rg:leg_counting") == ("leg_counting", {})
    assert parse_spec("rg:chain_sum;max_terms=2;max_digits=1") == ("chain_sum", {"max_terms": 2, "max_digits": 1})
    with pytest.raises(ValueError, match="not a numeric-answer"):
        parse_spec("rg:base_conversion")  # answers such as '3a0' are no number
    with pytest.raises(ValueError, match="is not rg:<name>"):
        parse_spec("rg:chain_sum?max_terms=2")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("rg:chain_sum;max_terms=2;max_terms=3")
    with pytest.raises(ValueError, match="unknown setting 'max_term'"):
        rg_records("rg:chain_sum;max_term=2", 2, 0)
    ops = {r["response"].split(" = ")[0] for r in rg_records("rg:basic_arithmetic;operators=+|-;max_terms=2", 40, 0)}
    assert not any("*" in p or "/" in p for p in ops)  # a tuple setting from `a|b`


def test_rg_domain_splits_are_disjoint_answered_and_deterministic():
    splits = load_math(SMALL, n_train=40, n_val=8, n_test=24, seed=0)
    assert {k: v.height for k, v in splits.items()} == {"train": 40, "validation": 8, "test": 24}
    p = _prompts(splits)
    assert not (p["train"] & p["test"]) and not (p["train"] & p["validation"]) and not (p["validation"] & p["test"])
    for df in splits.values():
        assert set(df.get_column("domain")) == {"chain_sum"}
        for row in df.iter_rows(named=True):
            assert row["response"].rsplit("\n", 1)[-1] == f"#### {row['answer']}"
            assert final_answer(row["response"]) == row["answer"] == normalize_number(row["answer"])
            expression = row["prompt"].rsplit(": ", 1)[1].rstrip(" =")
            assert row["response"].startswith(f"{expression} = ")  # the worked line
    again = load_math(SMALL, n_train=40, n_val=8, n_test=24, seed=0)
    assert all(fingerprint(splits[k]) == fingerprint(again[k]) for k in splits)
    other = load_math(SMALL, n_train=40, n_val=8, n_test=24, seed=1)
    assert fingerprint(other["test"]) != fingerprint(splits["test"])
    # the test split does not depend on how much training data is asked for
    bigger = load_math(SMALL, n_train=80, n_val=8, n_test=24, seed=0)
    assert fingerprint(bigger["test"]) == fingerprint(splits["test"])


def test_too_few_distinct_questions_is_an_error():
    # 1-digit, 2-term sums: at most 10 x 10 x 2 distinct questions
    with pytest.raises(ValueError, match="too few distinct questions"):
        load_math(SMALL, n_train=300, n_val=8, n_test=24, seed=0)


@pytest.mark.parametrize("name", sorted(NUMERIC_DOMAINS))
def test_every_numeric_domain_ends_with_its_answer(name):
    records = rg_records(f"rg:{name}", 12, 0)
    for rec in records:
        assert rec["response"].endswith(f"#### {rec['answer']}")
        assert final_answer(rec["response"]) == normalize_number(rec["answer"]) is not None
    if NUMERIC_DOMAINS[name] is not None:  # a worked line where the metadata allows one
        assert any("\n####" in rec["response"] for rec in records)


def test_worked_lines_of_leg_and_letter_counting_add_up():
    for rec in rg_records("rg:leg_counting", 8, 3):
        total = rec["response"].split("\n")[-2]
        assert total.startswith("Total: ") and total.endswith(f"= {rec['answer']}")
        assert sum(int(x) for x in total[len("Total: "):].split(" = ")[0].split(" + ")) == int(rec["answer"])
    for rec in rg_records("rg:letter_counting", 8, 3):
        assert rec["response"].split("\n")[0].endswith(f"total {rec['answer']}")


def test_mixture_shares_counts_alternates_domains_and_keeps_questions_disjoint():
    spec = ["gsm_symbolic", SMALL, "rg:leg_counting"]
    splits = load_math(spec, n_train=20, n_val=4, n_test=10, seed=0)
    counts = {k: dict(v.group_by("domain").len().iter_rows()) for k, v in splits.items()}
    assert counts["train"] == {"gsm_symbolic": 7, "chain_sum": 7, "leg_counting": 6}
    assert counts["validation"] == {"gsm_symbolic": 2, "chain_sum": 1, "leg_counting": 1}
    assert counts["test"] == {"gsm_symbolic": 4, "chain_sum": 3, "leg_counting": 3}
    # rows alternate, so sft-math's first n_generate test rows cover every domain
    assert splits["test"].get_column("domain").head(6).to_list() == ["gsm_symbolic", "chain_sum", "leg_counting"] * 2
    p = _prompts(splits)
    assert not (p["train"] & p["test"]) and not (p["train"] & p["validation"]) and not (p["validation"] & p["test"])
    for df in splits.values():
        assert all(final_answer(r) == a for r, a in zip(df["response"], df["answer"], strict=True))


def test_lone_gsm_symbolic_keeps_domain_math_and_a_one_item_list_names_it():
    alone = load_math("gsm_symbolic", n_train=6, n_val=2, n_test=2, seed=0)
    listed = load_math(["gsm_symbolic"], n_train=6, n_val=2, n_test=2, seed=0)
    assert set(alone["train"].get_column("domain")) == {"math"}
    assert set(listed["train"].get_column("domain")) == {"gsm_symbolic"}
    assert alone["train"].drop("domain").equals(listed["train"].drop("domain"))


def test_load_math_rejects_unknown_and_duplicate_domains():
    with pytest.raises(ValueError, match="unknown math dataset"):
        load_math("svamp")
    with pytest.raises(ValueError, match="twice"):
        load_math(["rg:chain_sum", SMALL])
    with pytest.raises(ValueError, match="empty"):
        load_math([])


def test_recipe_dataset_field_takes_a_name_or_a_list():
    assert DataSection().dataset == "gsm_symbolic"  # the one default
    assert DataSection(dataset=["gsm_symbolic", SMALL]).dataset == ["gsm_symbolic", SMALL]
    assert DataSection(dataset="rg:leg_counting").dataset == "rg:leg_counting"
    for bad in ("svamp", "rg:Chain Sum", [], ["rg:gcd", "rg:gcd;max_value=50"], "rg:gcd?max_value=50"):
        with pytest.raises(ValueError):
            DataSection(dataset=bad)
    recipe = load_recipe("sft-math", [f"data.dataset=[gsm_symbolic, {SMALL}]"])
    assert recipe["data"]["dataset"] == ["gsm_symbolic", SMALL]
