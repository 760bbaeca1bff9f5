"""Before a stage's job is created: its plan (`medo1.plan.check`) for the values the job is rendered from. A
stage whose predicted memory per GPU is over the usable memory is launched with a warning, or refused when
strict (`medo1 launch --strict`, the chart value plan.strict). A stage that could not be planned is treated
the same way: strict launches only what the plan shows to fit."""

from __future__ import annotations

import logging
from typing import Any

from medo1.launch.waiting import LaunchError

log = logging.getLogger(__name__)


class PlanDoesNotFit(LaunchError):
    """A strict launch refused: the stage's plan does not fit its GPUs, or none could be made."""

    exit_code = 3  # as `medo1 plan --strict`


def check_plan(stage: str, values: dict[str, Any], *, strict: bool, recipe: str | None = None) -> None:
    """Log the verdict on `stage` as `values` (chart values, the chart's defaults not yet merged) launch it;
    raise PlanDoesNotFit instead of warning when `strict` or plan.strict."""
    from medo1 import chart
    from medo1.plan.check import fit_check

    check = fit_check(stage, values, recipe=recipe)
    if check is None:
        return
    if check.fits:
        log.info("plan: %s", check.describe())
        return
    if strict or chart.with_chart_defaults(values)["plan"]["strict"]:
        raise PlanDoesNotFit(f"{check.describe()}; not launching it (strict: --strict or plan.strict)")
    log.warning("%s", check.describe())
