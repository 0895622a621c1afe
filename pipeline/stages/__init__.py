"""Stages: typed, cached steps that flows wire together (a layer between reports and flows).

A stage (`pipeline.stages.base.Stage`) is a pydantic model of its inputs with `compute` and `result`;
ONE mechanism (`run_stage`) keys its folder on those inputs and the code of every layer and part it
runs, locks it, skips it when complete and runs it as a Prefect task. `plan.build_plan` turns a recipe
into its typed sections and built parts once; `wiring` is what every flow shares (curate, train,
evaluate, publish). A part declares what it needs (`Part.needs`); stages provide it, by declaration,
never by a part's name.
"""

from pipeline.stages.base import ModelRef, Output, Selection, Split, Stage, log, publish, run_stage
from pipeline.stages.data import Data, LoadData, LoadSubset, Subset
from pipeline.stages.evaluate import Evaluate, Evaluation
from pipeline.stages.plan import Plan, build_plan
from pipeline.stages.score import Score, Scores
from pipeline.stages.select import Select
from pipeline.stages.train import Train, Trained

__all__ = ["Data", "Evaluate", "Evaluation", "LoadData", "LoadSubset", "ModelRef", "Output", "Plan", "Score",
           "Scores", "Select", "Selection", "Split", "Stage", "Subset", "Train", "Trained", "build_plan", "log",
           "publish", "run_stage"]
