"""Prefect flows. Importing this package configures Prefect for quiet, zero-config local use.

With no server configured, Prefect starts a temporary local server per process (SQLite under
$PREFECT_HOME); offline it would log telemetry errors, so analytics are off unless the user set them.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")

FLOWS = {
    "sft_math": "pipeline.flows.sft_math:sft_math_flow",
    "curate": "pipeline.flows.curate:curate_flow",
    "train": "pipeline.flows.train:train_flow",
    "evaluate": "pipeline.flows.evaluate:evaluate_flow",
}


def get_flow(name: str):
    """The flow function a recipe's `flow:` names (registered name or module:attr)."""
    import importlib

    target = FLOWS.get(name, name)
    module, _, attr = target.partition(":")
    if not attr:
        raise KeyError(f"unknown flow {name!r} (known: {', '.join(FLOWS)}; or give module:attr)")
    return getattr(importlib.import_module(module), attr)
