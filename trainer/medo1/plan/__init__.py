"""`medo1 plan`: per-GPU memory, time and cost of a stage or a whole pipeline before anything runs.

medo1 plan --config recipes/sft-qwen2.5-7b-8xh100.yaml --gpus-per-node 8 --gpu h100-80gb
medo1 plan --profile h100-1node --price-per-gpu-hour 2.5      # every stage the profile enables
"""

from medo1.plan.pipeline import plan_pipeline, plan_recipe
from medo1.plan.stages import Cluster, StagePlan, plan_stage

__all__ = ["Cluster", "StagePlan", "plan_pipeline", "plan_recipe", "plan_stage"]
