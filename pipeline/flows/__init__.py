"""Prefect flows. Importing this package configures Prefect for quiet, zero-config local use.

With no server configured, Prefect starts a temporary local server per process (a uvicorn
subprocess, SQLite under $PREFECT_HOME); offline it would log telemetry errors, so analytics are off
unless the user set them, and the server is made to exit with the process that started it, even
when that process is killed with SIGKILL.

A recipe's `flow:` names one of the registered flows below, never a user's module; but a recipe may name
any part (scorer, rule, loss, column provider) as `module:attr`, and that imports and runs the module's
code with the user's rights, so a recipe is trusted code. A data card's recorded recipe is not:
`pipeline regenerate` refuses one that names code unless `--allow-code` (`pipeline.flows.regenerate`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from dataclasses import dataclass

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
USER_LOG_LEVEL = os.environ.get("PREFECT_LOGGING_LEVEL")  # the CLI keeps a level the user chose
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")



@dataclass(frozen=True)
class FlowSpec:
    """What a flow declares about the recipes it runs; `pipeline.flows.recipe` checks it before anything runs."""

    target: str  # module:attr of the flow function
    requires: tuple[str, ...] = ()  # recipe keys that must be set
    curates: bool = False  # scores and selects: `select` column names are checked against the scorers'
    evaluates: bool = False  # evaluates on the test split: with `data.source`, `data.test` is required
    scores_reach_training: bool = False  # the score table reaches training (`train.igf_filter` is allowed)
    check: str | None = None  # module:attr of a flow's own check of a plan (e.g. a study's variants)
    repeats: bool = False  # runs the recipe's `variants` over its `seeds` (with an `oracle`); other flows refuse those keys


# Only these flows can be named by a recipe's `flow:` (the flow itself is never a user's module). A recipe
# may name `module:attr` parts (scorer, rule, loss, column provider): that imports and runs the module.
FLOWS = {
    "sft_math": FlowSpec("pipeline.flows.sft_math:sft_math_flow", curates=True, evaluates=True,
                         scores_reach_training=True),
    "curate": FlowSpec("pipeline.flows.curate:curate_flow", curates=True),
    "train": FlowSpec("pipeline.flows.train:train_flow", requires=("data.subset",)),
    "evaluate": FlowSpec("pipeline.flows.evaluate:evaluate_flow", evaluates=True),
    "audit": FlowSpec("pipeline.flows.audit:audit_flow", curates=True, check="pipeline.flows.audit:check_audit"),
    "study": FlowSpec("pipeline.flows.study:study_flow", evaluates=True,  # its cells are sft_math recipes
                      check="pipeline.flows.study:check_study", repeats=True),
}


def get_flow(name: str):
    """The registered flow a recipe's `flow:` names."""
    if name not in FLOWS:
        raise KeyError(f"unknown flow {name!r} (known: {', '.join(FLOWS)})")
    return _load(FLOWS[name].target)


def _load(target: str):
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (Linux prctl)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _server_exits_with_us() -> None:
    """Give Prefect's temporary-server module a `subprocess` whose Popen sets a parent-death signal,
    so `kill -9` of a run leaves no orphaned uvicorn behind (Linux; elsewhere Prefect's own cleanup)."""
    if not sys.platform.startswith("linux"):
        return
    from prefect.server.api import server

    def popen(*args, **kwargs):
        kwargs.setdefault("preexec_fn", _die_with_parent)
        return subprocess.Popen(*args, **kwargs)

    server.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})


_server_exits_with_us()
