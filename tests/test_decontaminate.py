"""decontaminate: rows holding an evaluation 13-gram are dropped naming file:line and field, others kept;
every string field of every format; short evaluation texts; missing files; the embedding method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.core.registry import ConfigError
from pipeline.selectors import SELECTORS, SelectContext, get_selector, run_selector
from pipeline.selectors.base import summarize
from pipeline.selectors.decontaminate import Decontaminate, build_index, eval_texts, ngram_matches
from pipeline.selectors.dedup import text_table

QUESTION = ("A train leaves the station at nine in the morning travelling at sixty miles per hour "
            "toward a city three hundred miles away; when does it arrive?")
CHAT_Q = "Summarize the causes of the French Revolution in three sentences for a high school student please."
SHORT_Q = "Name the largest planet in our solar system."  # 8 words: matched whole
TINY_Q = "What is two plus two?"  # 5 words: below min_words, ignored


def write_eval(folder: Path) -> Path:
    path = folder / "eval.jsonl"
    records = [
        {"question": "Unrelated warm-up question about colours of the rainbow and how they form?", "answer": "7"},
        {"question": QUESTION, "answer": "2 pm", "meta": {"source": "gsm-like"}},
        {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": CHAT_Q}]},
        {"question": SHORT_Q, "answer": "Jupiter"},
        {"question": TINY_Q, "answer": "4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def table(prompts: list[str], responses: list[str], messages: list[str | None] | None = None) -> pl.DataFrame:
    n = len(prompts)
    return pl.DataFrame({"id": [f"ex{i}" for i in range(n)], "prompt": prompts, "response": responses,
                         "messages": pl.Series(messages or [None] * n, dtype=pl.String)})


def run(rows: pl.DataFrame, **params) -> pl.DataFrame:
    return run_selector(get_selector("decontaminate", **params), rows.select("id"),
                        context=SelectContext(examples=rows))


def training_rows() -> pl.DataFrame:
    q = QUESTION.split()
    return table(
        [
            "Please solve: " + " ".join(q[3:16]).upper() + "!!",  # 13 words of the question, recased
            "How do I bake bread?",
            "Explain photosynthesis.",
            "Explain orbits.",
            " ".join(q[:12]),  # only 12 words in a row
            "What is two plus two?",
            "x",
        ],
        [
            "It arrives at two in the afternoon.",
            "Mix flour, water, salt and yeast; knead, let it rise, then bake.",
            "Plants turn light, water and carbon dioxide into sugar and oxygen.",
            "Fun fact: name the largest planet in our solar system... it is Jupiter.",
            "Some answer.",
            "Four.",
            "y",
        ],
        [None] * 6 + [json.dumps([{"role": "user", "content": "For my class: " + CHAT_Q[:-1] + ", thanks!"},
                                  {"role": "assistant", "content": "Debt, inequality and ideas."}])],
    )


def test_rows_with_an_eval_13gram_are_dropped_naming_file_line_and_field(tmp_path):
    path = write_eval(tmp_path)
    sel = run(training_rows(), against=[str(path)])
    assert sel["kept"].to_list() == [False, True, True, False, True, True, False]
    q = QUESTION.split()
    gram = " ".join(w.lower() for w in q[3:16])
    assert sel["reason"][0] == f'dropped: decontaminate; 13-gram "{gram}" matches {path}:2 (field question)'
    assert sel["reason"][3] == (f'dropped: decontaminate; 8-gram "name the largest planet in our solar system" '
                                f"matches {path}:4 (field question)")
    assert sel["reason"][6].endswith(f"matches {path}:3 (field messages[1].content)")
    assert sel["reason"][1] == "kept: decontaminate"
    summary = summarize(sel)
    assert summary["kept"] + summary["dropped"] == summary["read"] == 7


def test_ngrams_do_not_span_prompt_and_response(tmp_path):
    q = QUESTION.split()
    rows = table([" ".join(q[:7])], [" ".join(q[7:14])])  # 14 words in a row only across the two fields
    assert run(rows, against=str(write_eval(tmp_path)))["kept"].all()


def test_n_and_min_words(tmp_path):
    path = write_eval(tmp_path)
    rows = training_rows()
    assert run(rows, against=[str(path)], n=12)["kept"][4] is False  # 12 words now suffice
    sel = run(rows, against=[str(path)], min_words=5)  # the 5-word question counts whole now
    assert sel["kept"][5] is False and '5-gram "what is two plus two"' in sel["reason"][5]
    sel = run(rows, against=[str(path)], min_words=13)  # only 13-grams
    assert sel["kept"][3] is True


def test_every_string_of_every_format(tmp_path):
    """csv (line = row + 1), parquet (record number), a JSON array (line of the record), a folder, nested lists."""
    (tmp_path / "a.csv").write_text(f'id,text\n1,hello\n2,"{QUESTION}"\n')
    pl.DataFrame({"x": ["a", "b", "c"], "nested": [None, None, {"choices": ["no", CHAT_Q]}]}).write_parquet(
        tmp_path / "b.parquet")
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "c.json").write_text(json.dumps([{"q": "short"}, {"q": {"deep": [SHORT_Q]}}], indent=2))
    texts = eval_texts([str(tmp_path / "a.csv"), str(tmp_path / "b.parquet"), str(folder)])
    by_text = {t.text: (Path(t.source).name, t.line, t.field) for t in texts}
    assert by_text[QUESTION] == ("a.csv", 3, "text")
    assert by_text[CHAT_Q] == ("b.parquet", 3, "nested.choices[1]")
    assert by_text[SHORT_Q] == ("c.json", 5, "q.deep[0]")  # the line the record starts on
    sel = run(training_rows(), against=[str(tmp_path / "a.csv"), str(tmp_path / "b.parquet"), str(folder)])
    assert sel["kept"].to_list() == [False, True, True, False, True, True, False]
    assert sel["reason"][0].endswith(f"matches {tmp_path / 'a.csv'}:3 (field text)")


def test_missing_file_is_a_one_line_config_error(tmp_path):
    missing = tmp_path / "nope" / "eval.jsonl"
    with pytest.raises(ConfigError, match=f"select.against: {missing}: no such file") as err:
        get_selector("decontaminate", against=[str(missing)])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="select.against: give at least one"):
        get_selector("decontaminate", against=[])
    (tmp_path / "notes.txt").write_text("hello")
    sel = get_selector("decontaminate", against=str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="against: .*notes.txt: cannot read .txt"):
        run_selector(sel, pl.DataFrame({"id": ["a"], "prompt": ["p"], "response": ["r"]}))


def test_chunks_give_the_same_matches(tmp_path):
    rows = pl.concat([training_rows()] * 5).with_columns(pl.format("ex{}", pl.int_range(pl.len())).alias("id"))
    table_ = text_table(rows.select("id"), SelectContext(examples=rows))
    index = build_index(eval_texts([str(write_eval(tmp_path))]))
    whole = ngram_matches(table_, index)
    assert whole.equals(ngram_matches(table_, index, chunk_rows=3))
    assert whole["row"].to_list() == [r + 7 * k for k in range(5) for r in (0, 3, 6)]


def test_bad_lines_and_chat_rows_with_content_parts(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(f'{{"question": "ok"}}\nnot json at all: {QUESTION}\n')
    parts = json.dumps([{"role": "user", "content": [{"type": "text", "text": QUESTION}]},
                        {"role": "assistant", "content": "2 pm"}])
    rows = table(["x", "y"], ["2 pm", "z"], [parts, None])
    sel = run(rows, against=str(path))
    assert sel["kept"].to_list() == [False, True]
    assert sel["reason"][0].endswith(f"matches {path}:2 (field (line))")


def test_a_line_that_is_not_utf8_is_still_matched(tmp_path):
    """An evaluation line with a Latin-1 byte is decoded with replacement and its fields are matched, not skipped."""
    path = tmp_path / "eval.jsonl"
    line = json.dumps({"question": QUESTION + " caf\xe9"}, ensure_ascii=False).encode("latin-1")  # b"caf\xe9"
    path.write_bytes(b'{"question": "ok"}\n' + line + b"\n")
    sel = run(table([" ".join(QUESTION.split()[:13]), "How do I bake bread?"], ["x", "y"]), against=str(path))
    assert sel["kept"].to_list() == [False, True]
    assert sel["reason"][0].endswith(f"matches {path}:2 (field question)")


def test_parameters_are_checked(tmp_path):
    path = str(write_eval(tmp_path))
    assert SELECTORS.get("decontaminate") is Decontaminate
    assert get_selector("decontaminate", against=path).against == [path]
    assert get_selector("decontaminate", against=path, min_words=1, n=1).min_words == 1  # the edges are valid
    for key, value in (("n", 0), ("min_words", 0), ("threshold", 1.5), ("threshold", 0.0), ("method", "fuzzy")):
        with pytest.raises(ConfigError, match=f"select.{key}"):
            get_selector("decontaminate", against=path, **{key: value})


def test_embedding_method_with_a_fake_embedder(tmp_path):
    path = write_eval(tmp_path)
    n_records = 5

    def embed(texts: list[str]) -> np.ndarray:  # record i -> basis vector i
        assert len(texts) == n_records and QUESTION in texts[1]
        return np.eye(n_records, 6, dtype=np.float32)

    v = np.array([[0, 0.97, 0.2, 0, 0, 0], [0, 0.5, 0.5, 0, 0, 0.7], [0, 0, 0, 0, 0, 1]], dtype=np.float32)
    scores = pl.DataFrame({"id": ["a", "b", "c"], "embedding": v.tolist()})
    sel = run_selector(get_selector("decontaminate", against=str(path), method="embedding"), scores,
                       context=SelectContext(extras={"embed_fn": embed}))
    assert sel["kept"].to_list() == [False, True, True]
    assert sel["reason"][0] == f"dropped: decontaminate (embedding); cosine=0.98 with {path}:2"
    with pytest.raises(ConfigError, match="column: decontaminate .embedding. needs the score column 'embedding'"):
        run_selector(get_selector("decontaminate", against=str(path), method="embedding"),
                     scores.drop("embedding"), context=SelectContext(extras={"embed_fn": embed}))


@pytest.mark.integration
def test_embedding_method_with_the_real_embedder(tmp_path):
    """The project's MiniLM embedder on both sides: the evaluation question reworded a little is caught."""
    from pipeline.core.config import DEFAULT_EMBEDDER
    from pipeline.models.embedder import embed_texts, load_embedder

    path = write_eval(tmp_path)
    tok, model = load_embedder(DEFAULT_EMBEDDER)
    texts = [QUESTION.replace("nine", "9") + "\n2 pm", "How do I bake sourdough bread at home?"]
    scores = pl.DataFrame({"id": ["a", "b"], "embedding": list(embed_texts(texts, tok, model))},
                          schema={"id": pl.String, "embedding": pl.List(pl.Float32)})
    sel = run_selector(get_selector("decontaminate", against=str(path), method="embedding"), scores)
    assert sel["kept"].to_list() == [False, True]
    assert f"with {path}:2" in sel["reason"][0]


def test_empty_table_and_empty_eval_set(tmp_path):
    path = write_eval(tmp_path)
    assert run(training_rows().head(0), against=str(path)).height == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run(training_rows(), against=str(empty))["kept"].all()


def test_embedding_method_with_an_empty_eval_set_or_pool_keeps_everything(tmp_path):
    """Nothing to compare against (no records) or nothing to check (no rows): no match, no error."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    scores = pl.DataFrame({"id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]]})
    never = SelectContext(extras={"embed_fn": lambda texts: pytest.fail("nothing to embed")})
    sel = run_selector(get_selector("decontaminate", against=str(empty), method="embedding"), scores, context=never)
    assert sel["kept"].to_list() == [True, True]
    path = write_eval(tmp_path)
    sel = run_selector(get_selector("decontaminate", against=str(path), method="embedding"), scores.head(0),
                       context=never)
    assert sel.height == 0
