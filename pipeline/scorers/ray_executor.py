"""Score shards on Ray actors that each load the model once (optional extra `ray`).

Imported only when `score_cached(..., executor="ray")` asks for it. Connects to a running cluster
when `ray.init()` was already called (e.g. `ray.init(address="auto")`), else starts a local one.
Each actor asks for one GPU when the driver sees CUDA, else one CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

from pipeline.scorers.base import ScoreContext


class ShardScorer:
    """Holds one scorer instance and one ScoreContext (so one loaded model) and scores the shards it is sent."""

    def __init__(self, scorer: str, params: dict[str, Any], ctx_args: dict[str, Any]):
        from pipeline.scorers import get_scorer

        self.scorer, self.ctx = get_scorer(scorer, **params), ScoreContext(**ctx_args)

    def score(self, i: int, shard: pl.DataFrame) -> tuple[int, Any]:
        """(i, the scorer's result on `shard`): the index travels back with the result."""
        return i, self.scorer(shard, self.ctx)


def score_shards(
    scorer: str, ctx: ScoreContext, params: dict[str, Any], shards: dict[int, pl.DataFrame], num_workers: int = 2
) -> Iterator[tuple[int, Any]]:
    """Yield (shard index, scorer result) as Ray actors finish them (in completion order)."""
    import ray
    import torch
    from ray.util import ActorPool

    if not shards:
        return
    if not ray.is_initialized():
        ray.init(num_cpus=max(num_workers, 1), include_dashboard=False, log_to_driver=False)
    resources = {"num_gpus": 1} if torch.cuda.is_available() else {"num_cpus": 1}
    actor_cls = ray.remote(**resources)(ShardScorer)
    n = max(1, min(num_workers, len(shards)))
    actors = [actor_cls.remote(scorer, params, ctx.settings()) for _ in range(n)]
    pool = ActorPool(actors)
    for i, shard in shards.items():
        pool.submit(lambda a, v: a.score.remote(*v), (i, shard))
    try:
        while pool.has_next():
            yield pool.get_next_unordered()
    finally:
        for a in actors:
            ray.kill(a)
