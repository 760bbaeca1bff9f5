"""The statistics of `medo1 eval` (torch-free): intervals of one model's scores and of paired differences.

The unit of every interval is a unique question. A question's several responses (`samples_per_prompt` samples
under each of `seeds`, and the copies of a question a benchmark file repeats, such as the five copies of each
GPQA question in the published HuatuoGPT-o1 eval file) are averaged into one value first: they are not
independent draws of the benchmark, and counting them as such would make every interval too narrow.

- One model's proportion (accuracy): the Wilson score interval (Wilson 1927) with n = unique questions. With one
  response per question this is the usual interval; with several it is conservative (it treats a question's
  responses as if they always agreed).
- A difference between two models on the same questions (the gain over a baseline): the paired percentile
  bootstrap over questions (Efron & Tibshirani 1993, ch. 13): `resamples` times, draw the questions with
  replacement and take the mean of the per-question differences; the 2.5th and 97.5th percentiles of those means
  are the 95% interval. The draws come from a generator seeded with `bootstrap_seed`, so a report is reproducible.
  Pairing removes the between-question variance both models share (hard questions are hard for both), which is
  why a small gain can be told from noise on 48 questions where two separate intervals would overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WILSON_Z = 1.96  # two-sided 95%
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20240101


def wilson_interval(correct: float, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion `correct / n` (Wilson 1927): sound at small n and at 0 or n
    successes. `correct` may be fractional (a mean over a question's responses, times n)."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of `model - baseline` over the questions both answered, with its paired bootstrap 95% interval."""

    difference: float
    low: float
    high: float
    questions: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "difference": self.difference,
            "ci95": [self.low, self.high],
            "questions": self.questions,
            "excludes_zero": self.excludes_zero,
        }


def paired_bootstrap(
    model: Sequence[float],
    baseline: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference:
    """The mean per-question difference `model[i] - baseline[i]` and its 95% percentile bootstrap interval
    (questions drawn with replacement, `resamples` times, from a generator seeded with `seed`)."""
    import numpy as np

    if len(model) != len(baseline):
        raise ValueError(f"paired values: {len(model)} for the model but {len(baseline)} for the baseline")
    if not model:
        raise ValueError("paired values: no questions")
    differences = np.asarray(model, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    n = len(differences)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # In blocks, so that 10,000 resamples of thousands of questions never hold one huge index array.
    block = max(1, 2_000_000 // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDifference(float(differences.mean()), float(low), float(high), n)


def noise_band(differences: Sequence[PairedDifference]) -> float | None:
    """The largest seed-to-seed difference (absolute) of the baseline's repeated runs; None without any."""
    return max((abs(d.difference) for d in differences), default=None)


def beyond_noise(gain: PairedDifference, band: float | None) -> bool | None:
    """A gain is told from noise when its 95% interval excludes 0 and it is larger than every seed-to-seed
    difference the baseline showed under other sampling seeds (None: no seed-to-seed runs to compare with)."""
    if band is None:
        return None
    return gain.excludes_zero and abs(gain.difference) > band
