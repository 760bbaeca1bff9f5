"""The eval's statistics on tables whose answers are known: the paired bootstrap interval, the seed-to-seed noise
band and the verdict, Wilson intervals on unique questions."""

from __future__ import annotations

import math
import random

import pytest

from medo1.eval.stats import PairedDifference, beyond_noise, noise_band, paired_bootstrap, wilson_interval


def test_identical_differences_have_a_zero_width_interval():
    d = paired_bootstrap([0.6, 0.3, 1.0, 0.1], [0.5, 0.2, 0.9, 0.0])
    assert d.difference == pytest.approx(0.1)
    assert (d.low, d.high) == (pytest.approx(0.1), pytest.approx(0.1))
    assert d.excludes_zero and d.questions == 4


def test_two_questions_interval_is_the_exact_bootstrap_distribution():
    # Differences 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
    # 97.5th percentiles are exactly 0 and 1, and the interval does not exclude 0.
    d = paired_bootstrap([1.0, 1.0], [1.0, 0.0])
    assert (d.difference, d.low, d.high) == (0.5, 0.0, 1.0)
    assert not d.excludes_zero


def test_interval_on_a_table_like_the_demo_matches_the_normal_approximation():
    """48 questions, rewards in {0, 0.1, 1} as the answer-match reward gives them, 4 samples each averaged: the
    percentile bootstrap of the paired mean agrees with mean +- 1.96 sd / sqrt(n) (the differences are near
    normal at this n) to within 0.001 (the half-width is 0.005), and it is the same on every run (seeded)."""
    rng = random.Random(7)
    baseline, model = [], []
    for _ in range(48):
        base = [rng.choice([0.0, 0.0, 0.1, 0.1, 0.1, 1.0] if rng.random() < 0.1 else [0.0, 0.1]) for _ in range(4)]
        better = [min(1.0, r + rng.choice([0.0, 0.0, 0.1])) if r == 0.0 else r for r in base]
        baseline.append(sum(base) / 4)
        model.append(sum(better) / 4)
    d = paired_bootstrap(model, baseline)
    diffs = [m - b for m, b in zip(model, baseline)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    assert d.difference == pytest.approx(mean)
    assert d.low == pytest.approx(mean - 1.96 * sd / math.sqrt(48), abs=0.001)
    assert d.high == pytest.approx(mean + 1.96 * sd / math.sqrt(48), abs=0.001)
    assert d.excludes_zero and d.low > 0
    assert paired_bootstrap(model, baseline) == d  # seeded: a report is reproducible
    assert paired_bootstrap(model, baseline, seed=1) != d  # and the seed is the only source of its randomness


def test_pairing_sees_a_small_gain_that_separate_intervals_miss():
    # The baseline's questions range from hard to easy; the model adds 0.05 to each. Two separate Wilson
    # intervals overlap almost entirely; the paired interval is tight around 0.05.
    baseline = [i / 50 for i in range(50)]
    model = [b + 0.05 for b in baseline]
    paired = paired_bootstrap(model, baseline)
    assert paired.low == pytest.approx(0.05) and paired.high == pytest.approx(0.05)
    lo_model, _ = wilson_interval(sum(model), 50)
    _, hi_base = wilson_interval(sum(baseline), 50)
    assert lo_model < hi_base


def test_paired_values_must_line_up():
    with pytest.raises(ValueError, match="3 for the model but 2 for the baseline"):
        paired_bootstrap([1, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="no questions"):
        paired_bootstrap([], [])


def test_noise_band_and_verdict():
    seed_to_seed = [PairedDifference(-0.003, -0.02, 0.015, 48), PairedDifference(0.011, -0.01, 0.03, 48)]
    band = noise_band(seed_to_seed)
    assert band == pytest.approx(0.011)  # the largest seed-to-seed difference, either sign
    assert noise_band([]) is None
    assert beyond_noise(PairedDifference(0.035, 0.014, 0.061, 48), band) is True
    assert beyond_noise(PairedDifference(0.009, 0.001, 0.02, 48), band) is False  # excludes 0, inside the band
    assert beyond_noise(PairedDifference(0.035, -0.01, 0.08, 48), band) is False  # larger, but includes 0
    assert beyond_noise(PairedDifference(-0.05, -0.08, -0.02, 48), band) is True  # a loss beyond the noise
    assert beyond_noise(PairedDifference(0.035, 0.014, 0.061, 48), None) is None  # no seed-to-seed runs


def test_wilson_interval_with_fractional_successes_on_unique_questions():
    # 78 unique questions each asked 5 times (GPQA in the published file), 60% right: the interval is the one
    # of 78 questions, not of 390 rows.
    low, high = wilson_interval(0.6 * 78, 78)
    low_rows, high_rows = wilson_interval(0.6 * 390, 390)
    assert high - low > 2 * (high_rows - low_rows) * 0.9
    assert wilson_interval(6, 12) == pytest.approx(wilson_interval(6.0, 12))
