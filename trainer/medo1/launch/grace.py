"""How long a stage's pods get between SIGTERM and SIGKILL (terminationGracePeriodSeconds), sized from the
checkpoint the stage writes as `medo1 plan` sizes it: on preemption, a node drain or a deletion the trainer
finishes its optimizer step and saves (`medo1.training.preemption`), and a 7B PPO checkpoint (~227 GiB) takes about
twice as long to write as the SFT one the chart's 600 s were sized for.

    grace = max(floor, ceil10(MARGIN * (checkpoint bytes / checkpointWriteGBps + STEP_S)))

checkpointWriteGBps (chart value, default 0.5 GB/s) is the aggregate write bandwidth assumed for the
checkpoints volume, a modest NFS / CephFS class; the floor is the stage's terminationGracePeriodSeconds
(stages.<name> / jobs.<name>, else the chart's). A stage no plan can size (a CPU run, translate, upload, a model
not known here) gets the floor. torchrun's TORCH_ELASTIC_SHUTDOWN_TIMEOUT follows: the grace less 30 s for
torchrun itself to exit (helm/medo1/templates/_helpers.tpl medo1.env).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from medo1 import chart

log = logging.getLogger(__name__)

STEP_S = 60
"""Time to finish the optimizer step in progress before the save starts."""
MARGIN = 2
"""For a busy shared file system."""
SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"


def floor_s(stage: str, values: dict[str, Any]) -> int:
    """The stage's own terminationGracePeriodSeconds, else the chart's (values merged with the defaults)."""
    for section in ("stages", "jobs"):
        configured = (values.get(section, {}).get(stage) or {}).get("terminationGracePeriodSeconds")
        if configured:
            return int(configured)
    return int(values["terminationGracePeriodSeconds"])


def grace_period_s(stage: str, values: dict[str, Any], recipe: str | None = None) -> tuple[int, str]:
    """(seconds, how they were reached) for `stage` as chart `values` (not yet merged) launch it; `recipe`: a
    Trainer v2 runtime's own."""
    from medo1.plan.check import fit_check

    merged = chart.with_chart_defaults(values)
    floor = floor_s(stage, merged)
    check = fit_check(stage, values, recipe=recipe)
    if check is None or check.plan is None:
        return floor, f"{floor} s (the stage's terminationGracePeriodSeconds: no checkpoint size for it here)"
    size = float((check.plan.checkpoint or {}).get("per_checkpoint") or 0)
    if not size:
        return floor, f"{floor} s (the stage's terminationGracePeriodSeconds: it writes no checkpoint)"
    bandwidth = float(merged["checkpointWriteGBps"])
    derived = math.ceil(MARGIN * (size / (bandwidth * 1e9) + STEP_S) / 10) * 10
    how = (
        f"{max(floor, derived)} s: a {size / 2**30:.0f} GiB checkpoint at {bandwidth:g} GB/s plus a {STEP_S} s step, "
        f"x{MARGIN} = {derived} s, floor {floor} s"
    )
    return max(floor, derived), how


def apply_grace_period(job: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Set every pod template's terminationGracePeriodSeconds and torchrun's shutdown timeout (PyTorchJob, Job)."""
    for _, template in chart.pod_templates(job):
        template["spec"]["terminationGracePeriodSeconds"] = seconds
        for container in template["spec"].get("containers", []):
            for env in container.get("env", []):
                if env.get("name") == SHUTDOWN_ENV:
                    env["value"] = str(max(30, seconds - 30))
    return job
