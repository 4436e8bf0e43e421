"""bench.evaluate.metrics against values worked out by hand on small score lists.

Convention in the comments: a trial is accepted when score >= threshold; thresholds are the
distinct scores in ascending order, then +inf. Each line lists (P_fa, P_miss) at that threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.evaluate.metrics import accuracy, det_curve, equal_error_rate, min_dcf, unweighted_average_recall


def trials(targets: list[float], nontargets: list[float]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(targets + nontargets)
    labels = np.array([1] * len(targets) + [0] * len(nontargets))
    # Shuffle so that nothing depends on the order trials come in.
    order = np.random.default_rng(0).permutation(len(scores))
    return scores[order], labels[order]


# targets 0.9 0.8 0.6 0.3 / non-targets 0.7 0.5 0.2 0.1
#   t=0.1 (1, 0)   t=0.2 (.75, 0)   t=0.3 (.5, 0)   t=0.5 (.5, .25)   t=0.6 (.25, .25)
#   t=0.7 (.25, .5)   t=0.8 (0, .5)   t=0.9 (0, .75)   t=inf (0, 1)
# P_fa = P_miss exactly at t=0.6: EER = 0.25.
CROSSING = trials([0.9, 0.8, 0.6, 0.3], [0.7, 0.5, 0.2, 0.1])


def test_eer_exact_crossing() -> None:
    assert equal_error_rate(*CROSSING) == pytest.approx(0.25)


def test_det_curve_points() -> None:
    p_fa, p_miss = det_curve(*CROSSING)
    np.testing.assert_allclose(p_fa, [1, .75, .5, .5, .25, .25, 0, 0, 0])
    np.testing.assert_allclose(p_miss, [0, 0, 0, .25, .25, .5, .5, .75, 1])


def test_eer_interpolates_between_operating_points() -> None:
    # targets 0.9 0.7 0.2 / non-targets 0.8 0.6 0.5 0.3 0.1 (3 vs 5: steps of 1/3 and 1/5)
    #   t=0.1 (1, 0)  t=0.2 (.8, 0)  t=0.3 (.8, 1/3)  t=0.5 (.6, 1/3)  t=0.6 (.4, 1/3)  t=0.7 (.2, 1/3)
    # gap P_fa - P_miss is +1/15 at t=0.6 and -2/15 at t=0.7: the segment from (.4, 1/3) to
    # (.2, 1/3) meets P_fa = P_miss a third of the way along, at P_fa = .4 - .2/3 = 1/3 = P_miss.
    assert equal_error_rate(*trials([0.9, 0.7, 0.2], [0.8, 0.6, 0.5, 0.3, 0.1])) == pytest.approx(1 / 3)


def test_eer_with_tied_scores() -> None:
    # targets 0.9 0.6 0.4 0.4 / non-targets 0.4 0.4 0.3 0.1: four trials tie at 0.4.
    #   t=0.1 (1, 0)  t=0.3 (.75, 0)  t=0.4 (.5, 0)  t=0.6 (0, .5)  t=0.9 (0, .75)  t=inf (0, 1)
    # Crossing between (.5, 0) and (0, .5): the tie moves both rates at once, halfway gives .25.
    assert equal_error_rate(*trials([0.9, 0.6, 0.4, 0.4], [0.4, 0.4, 0.3, 0.1])) == pytest.approx(0.25)


def test_eer_all_scores_equal_is_chance() -> None:
    # One threshold: (1, 0), then +inf: (0, 1); the diagonal segment meets P_fa = P_miss at 0.5.
    assert equal_error_rate([0.3] * 6, [1, 0, 1, 0, 1, 0]) == pytest.approx(0.5)


def test_perfect_and_inverted_scores() -> None:
    perfect = trials([0.9, 0.8, 0.7, 0.6], [0.4, 0.3, 0.2, 0.1])
    inverted = trials([0.4, 0.3, 0.2, 0.1], [0.9, 0.8, 0.7, 0.6])
    # Perfect: at t=0.6 (0, 0). Inverted: at t=0.6 every target is missed and every non-target
    # accepted, (1, 1), so the curve never gets below the anti-diagonal: EER 1.
    assert equal_error_rate(*perfect) == 0.0
    assert equal_error_rate(*inverted) == pytest.approx(1.0)
    assert min_dcf(*perfect) == 0.0
    # Inverted: the best is the trivial reject-all system, whose normalised cost is 1.
    assert min_dcf(*inverted) == pytest.approx(1.0)


def test_min_dcf_default_parameters() -> None:
    # p_target 0.01, unit costs: normaliser min(0.01, 0.99) = 0.01, so the normalised cost is
    # P_miss + 99 P_fa. Any P_fa > 0 costs >= 24.75; P_fa = 0 points: (0, .5) -> 0.5,
    # (0, .75) -> 0.75, (0, 1) -> 1. Minimum 0.5.
    assert min_dcf(*CROSSING) == pytest.approx(0.5)


def test_min_dcf_picks_a_different_point_with_other_costs() -> None:
    # p_target 0.5, c_miss 1, c_fa 0.5: DCF = 0.5 P_miss + 0.25 P_fa, normaliser min(.5, .25) = .25,
    # normalised 2 P_miss + P_fa: (1,0) 1, (.75,0) .75, (.5,0) .5, (.5,.25) 1, (.25,.25) .75,
    # (.25,.5) 1.25, (0,.5) 1, (0,.75) 1.5, (0,1) 2. Minimum 0.5 at t=0.3.
    assert min_dcf(*CROSSING, p_target=0.5, c_miss=1.0, c_fa=0.5) == pytest.approx(0.5)
    # p_target 0.25, unit costs: normalised P_miss + 3 P_fa: minimum (0, .5) -> 0.5; p_target 0.5:
    # P_miss + P_fa, minimum 0.5 at (.5, 0), (.25, .25) and (0, .5).
    assert min_dcf(*CROSSING, p_target=0.25) == pytest.approx(0.5)
    # A case where a non-zero P_fa wins: targets .9 .8 .7 .6 / non-targets .75 .3 .2 .1, p_target .5
    # (P_miss + P_fa): t=.6 gives (.25, 0) -> .25; t=.3 (.5, 0), t=.7 (.25, .25), t=.8 (0, .5) all .5.
    # With the default p_target 0.01 the same scores cost P_miss + 99 P_fa, minimum (0, .5) -> .5.
    one_high_nontarget = trials([0.9, 0.8, 0.7, 0.6], [0.75, 0.3, 0.2, 0.1])
    assert min_dcf(*one_high_nontarget, p_target=0.5) == pytest.approx(0.25)
    assert min_dcf(*one_high_nontarget) == pytest.approx(0.5)


def test_min_dcf_never_exceeds_one() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        labels[:2] = (0, 1)
        assert min_dcf(rng.normal(size=40), labels) <= 1.0 + 1e-12


def test_verification_input_errors() -> None:
    with pytest.raises(ValueError, match="no trials"):
        equal_error_rate([], [])
    with pytest.raises(ValueError, match="no non-target trials"):
        equal_error_rate([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="no target trials"):
        min_dcf([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        det_curve([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        equal_error_rate([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match=r"1 \(target\) or 0"):
        equal_error_rate([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="p_target"):
        min_dcf(*CROSSING, p_target=1.0)


def test_accuracy_and_uar() -> None:
    targets = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 2]
    # 6 of 8 right; recalls: class 0 3/4, class 1 1/2, class 2 2/2 -> UAR (.75 + .5 + 1) / 3 = .75
    assert accuracy(targets, preds) == pytest.approx(0.75)
    assert unweighted_average_recall(targets, preds, 3) == pytest.approx(0.75)
    # Class 3 exists in the label space but not in the test set: it does not count.
    assert unweighted_average_recall(targets, preds, 4) == pytest.approx(0.75)
    # Imbalance: always predicting the majority class scores high accuracy but UAR 1/3.
    assert accuracy([0] * 8 + [1, 2], [0] * 10) == pytest.approx(0.8)
    assert unweighted_average_recall([0] * 8 + [1, 2], [0] * 10, 3) == pytest.approx(1 / 3)


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="no test clips"):
        accuracy([], [])
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="class index 3 outside 0..2"):
        unweighted_average_recall([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="integer class indices"):
        accuracy([0.0, 1.0], [0, 1])
