"""The defaults the docs print are the code's: every "`param` (value)" in a part's row of the docs'
tables (scorers, selectors, losses) and in a selector section's "Parameters:" paragraph names a
parameter of that part's class, and a literal value equals the class's default. A default changed
in code but not in the docs (or the reverse) fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from pipeline.losses import LOSSES
from pipeline.scorers import SCORERS
from pipeline.selectors import SELECTORS

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAIR = re.compile(r"`([a-z_][a-z0-9_]*)(?::[^`]*)?`\s*\(([^()]*)\)")
NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")
_MISSING = object()


def literal(text: str):
    """The documented value as Python, or _MISSING when the text describes rather than states it."""
    text = text.strip()
    if "default " in text:
        text = text.split("default ", 1)[1]
    text = re.split(r"[;,]| = ", text, maxsplit=1)[0].strip()  # "1024; paper 8192", "100, capped", "null = ..."
    if NUMBER.fullmatch(text):
        return float(text)
    if text in ("true", "True", "false", "False"):
        return text in ("true", "True")
    if text in ("null", "None"):
        return None
    quoted = re.fullmatch(r'`([^`]+)`|"([^"]+)"', text)
    if quoted:
        return yaml.safe_load(quoted.group(1)) if quoted.group(1) else quoted.group(2)  # `[0, 1]` is a list
    return Word(text) if re.fullmatch(r"[a-z_]+", text) else _MISSING


class Word(str):
    """A bare word: a string default (`order` (lowest)) or a description (`m` (draws)); compared only
    with a string default."""


def documented() -> list[tuple[str, str, str, str]]:
    """(where, registry kind, part name, "`param` (value)" text) for every documented parameter."""
    out = []
    for doc, kind in (("scorers.md", "scorer"), ("selectors.md", "selector"), ("losses.md", "loss")):
        part, in_params = None, False  # a "Parameters:" paragraph belongs to the last `## \`name\`` heading
        for number, line in enumerate((DOCS / doc).read_text().splitlines(), 1):
            if line.startswith("#"):
                heading = re.match(r"#+ `([a-z_0-9]+)`", line)
                part, in_params = (heading.group(1) if heading else None), False
                continue
            in_params = bool(line.strip()) and (in_params or "Parameters" in line)
            row = re.match(r"\| `([a-z_0-9]+)`( \(`[A-Za-z]+`\))? \|", line)
            if row:
                cells = line.split("|")
                if kind == "scorer" and not row.group(2):
                    continue  # a scorer-attribute table (`version`, `needs`, ...), not a scorer's row
                name, text = row.group(1), cells[-2] if kind == "scorer" else cells[3]
            elif in_params and part and not line.startswith("|"):
                name, text = part, line.split("Context:")[0]  # the paragraph's context fields are not parameters
                in_params = "Context:" not in line
            else:
                continue
            for param, value in PAIR.findall(text):
                out.append((f"docs/{doc}:{number}", kind, name, f"`{param}` ({value})"))
    return out


def option_tables() -> list[tuple[str, str, str, str]]:
    """(where, section path, key, documented default) for the rows of an "Options under `train.x`:" table."""
    out = []
    for doc in sorted(DOCS.glob("*.md")):
        section = None
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            under = re.search(r"[Oo]ptions under `([a-z_.]+)`", line)
            if under:
                section = under.group(1)
            elif section and (row := re.match(r"\| `([a-z_]+)` \| ([^|]+) \|", line)):
                out.append((f"docs/{doc.name}:{number}", section, row.group(1), row.group(2).strip()))
            elif section and line.strip() and not line.startswith("|"):
                section = None  # the table ended
    return out


def section_field_default(path: str, key: str):
    """The recipe's default of `path.key` (pydantic), e.g. ("train.masked_thought", "cap") -> 0.4."""
    from pydantic import BaseModel

    from pipeline.core.config import Recipe

    model = Recipe
    for part in path.split("."):
        ann = model.model_fields[part].annotation
        model = next(a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel))
    assert key in model.model_fields, f"{path} has no key {key!r} (it has {sorted(model.model_fields)})"
    default = model.model_fields[key].default
    return default.model_dump() if isinstance(default, BaseModel) else default


OPTIONS = option_tables()


def test_the_docs_option_tables_are_read():
    assert {path for _, path, _, _ in OPTIONS} >= {"train.masked_thought", "train.token_labels"}


@pytest.mark.parametrize("where,path,key,value", OPTIONS, ids=[f"{o[1]}.{o[2]}" for o in OPTIONS])
def test_documented_option_default_is_the_recipe_default(where, path, key, value):
    code_value, doc_value = section_field_default(path, key), literal(value)
    if doc_value is _MISSING and value.startswith("`{"):
        doc_value = yaml.safe_load(value.strip("`"))
    if doc_value is _MISSING:
        return  # described ("the loss's `column_params`")
    if isinstance(doc_value, dict):
        assert {k: code_value[k] for k in doc_value} == doc_value, f"{where}: {path}.{key} is {code_value!r} in code"
        return
    same(where, f"{path}.{key}", code_value, doc_value)


def signature_defaults(kind: str, name: str) -> dict[str, object] | None:
    registry = {"scorer": SCORERS, "selector": SELECTORS, "loss": LOSSES}[kind]
    if name not in registry.names():
        return None
    params = inspect.signature(registry.get(name)).parameters
    return {p: (v.default if v.default is not inspect.Parameter.empty else _MISSING) for p, v in params.items()}


ENTRIES = documented()


def test_the_docs_document_parameters():
    assert len(ENTRIES) > 40  # the parser reads the tables (a broken pattern would pass everything below)
    assert {kind for _, kind, _, _ in ENTRIES} == {"scorer", "selector", "loss"}


@pytest.mark.parametrize("where,kind,name,text", ENTRIES, ids=[f"{e[2]}:{e[3][:30]}" for e in ENTRIES])
def test_documented_default_is_the_code_default(where, kind, name, text):
    defaults = signature_defaults(kind, name)
    if defaults is None:
        pytest.skip(f"{name} is not a registered {kind} (a section about something else)")
    param, value = PAIR.fullmatch(text).groups()
    assert param in defaults, f"{where}: {name} has no parameter {param!r} (it has {sorted(defaults)})"
    doc_value, code_value = literal(value), defaults[param]
    if doc_value is _MISSING or code_value is _MISSING:
        return  # described, not stated ("draws", "minhash 0.8, embedding 0.95"), or a required parameter
    same(where, f"{name}.{param}", code_value, doc_value)


def same(where: str, what: str, code_value, doc_value) -> None:
    """The documented value equals the code's (numbers approximately; a bare word only against a string)."""
    if isinstance(doc_value, Word) and not isinstance(code_value, str):
        return
    if isinstance(code_value, tuple):
        code_value = list(code_value)
    numeric = isinstance(code_value, (int, float, list)) and not isinstance(code_value, bool)
    expected = pytest.approx(doc_value) if numeric and not isinstance(doc_value, (str, bool)) else doc_value
    assert code_value == expected, f"{where}: {what} is {code_value!r} in code, {doc_value!r} in the docs"
