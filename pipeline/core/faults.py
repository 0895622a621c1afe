"""Crash injection for resume tests: `SFT_PIPELINE_CRASH=train:2` kills the process with SIGKILL
right after training checkpoint 2 is saved, `score:1` right after the first score shard is
written, exactly like `kill -9` at that moment."""

from __future__ import annotations

import os
import signal


def crash_point(stage: str) -> int | None:
    """The step at which to crash in `stage`, if the environment asks for one."""
    spec = os.environ.get("SFT_PIPELINE_CRASH", "")
    name, _, step = spec.partition(":")
    return int(step) if name == stage and step.isdigit() else None


def maybe_crash(stage: str, step: int) -> None:
    if crash_point(stage) == step:
        os.kill(os.getpid(), signal.SIGKILL)

