"""bench.results.stats: seed spread, bootstrap intervals, exact McNemar, Holm, checked against hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from bench.evaluate import metrics
from bench.results import stats


def test_mean_std_is_sample_std_and_undefined_for_one_seed():
    mean, std = stats.mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # ddof=1: sqrt(0.02 / 2)
    assert stats.mean_std([0.5]) == (0.5, None)


def _predictions(n_clips: int, accuracy: float, seed: int, n_classes: int = 5):
    rng = np.random.default_rng(seed)
    targets = np.arange(n_clips) % n_classes
    right = rng.random(n_clips) < accuracy
    return targets, np.where(right, targets, (targets + 1) % n_classes)


def test_classification_ci_contains_the_mean_and_is_deterministic():
    targets, first = _predictions(300, 0.8, seed=1)
    _, second = _predictions(300, 0.7, seed=2)
    predictions = np.stack([first, second])
    mean_accuracy = float((predictions == targets).mean())
    lo, hi = stats.classification_ci(targets, predictions, "accuracy")
    assert lo < mean_accuracy < hi and hi - lo < 0.15
    assert stats.classification_ci(targets, predictions, "accuracy") == (lo, hi)
    assert stats.classification_ci(targets, predictions, "accuracy", seed=1) != (lo, hi)

    uar = np.mean([metrics.unweighted_average_recall(targets, p, 5) for p in predictions])
    lo, hi = stats.classification_ci(targets, predictions, "uar")
    assert lo < uar < hi


def test_classification_ci_averages_the_seeds_on_the_same_resampled_clips():
    # One seed right everywhere, one wrong everywhere: every resample averages to exactly 0.5. Pooling
    # clips across seeds instead of pairing them would give a spread around 0.5.
    targets = np.arange(50) % 5
    predictions = np.stack([targets, (targets + 1) % 5])
    assert stats.classification_ci(targets, predictions, "accuracy") == (0.5, 0.5)
    assert stats.classification_ci(targets, predictions, "uar") == (0.5, 0.5)
    with pytest.raises(ValueError, match="unknown classification metric"):
        stats.classification_ci(targets, predictions, "f1")


def test_verification_bootstrap_scores_curves_as_bench_metrics_does():
    rng = np.random.default_rng(0)
    labels = (np.arange(400) % 4 == 0).astype(int)
    scores = np.round(rng.normal(size=(2, 400)) + 1.5 * labels, 1)  # rounded: many tied scores
    for seed_scores in scores:
        p_miss, p_fa = stats._det_rates(seed_scores, labels.astype(float), np.ones((400, 1), dtype=np.int64))
        assert stats._eer(p_miss, p_fa)[0] == pytest.approx(metrics.equal_error_rate(seed_scores, labels))
        assert stats._min_dcf(p_miss, p_fa)[0] == pytest.approx(metrics.min_dcf(seed_scores, labels))
    for metric, function in (("eer", metrics.equal_error_rate), ("min_dcf", metrics.min_dcf)):
        mean = np.mean([function(s, labels) for s in scores])
        lo, hi = stats.verification_ci(scores, labels, metric)
        assert lo < mean < hi
        assert stats.verification_ci(scores, labels, metric) == (lo, hi)


def test_verification_ci_needs_both_kinds_of_trial():
    with pytest.raises(ValueError, match="both target and non-target"):
        stats.verification_ci([[0.1, 0.2, 0.3]], [1, 1, 1], "eer")


def test_mcnemar_exact_hand_computed():
    # b=10, c=2: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 0.0386
    assert stats.mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=5e-5)
    assert stats.mcnemar_exact(2, 10) == stats.mcnemar_exact(10, 2)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0  # 2 * P(X <= 5) > 1 is capped


def test_holm_bonferroni_hand_computed():
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max so far 0.06.
    assert stats.holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_bonferroni([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_mcnemar_counts_seed_majority_correctness_per_clip():
    targets = np.zeros(4, dtype=int)
    # Clip 0: A right in 2 of 3 seeds (majority), B in 1 -> b. Clip 1: A 1 of 3, B 3 of 3 -> c.
    # Clip 2: both right in every seed. Clip 3: both wrong in every seed.
    a = np.array([[0, 1, 0, 1], [0, 1, 0, 1], [1, 0, 0, 1]])
    b = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]])
    assert stats.paired_mcnemar(targets, a, b) == (1, 1, 1.0)
    assert stats.paired_mcnemar(targets, a[:2], b[:2])[:2] == (1, 1)  # 1 of 2 is no majority
