"""Test metrics for classification and speaker verification, in numpy only.

Classification: `accuracy`, and `unweighted_average_recall` (UAR, the mean of per-class recalls,
the usual emotion-recognition figure because emotion corpora are imbalanced).

Verification scores one trial per (enrollment, test) pair; label 1 marks a target trial (same
speaker), 0 a non-target. A trial is accepted when its score is >= the threshold. Every metric
here is computed from the same operating points (`_operating_points`): one per distinct score used
as the threshold, plus threshold +inf (reject everything), so the curve runs from
(P_fa, P_miss) = (1, 0) to (0, 1) and tied scores move together, never in an arbitrary order.

- `equal_error_rate`: the point where P_fa and P_miss cross. Between the last operating point with
  P_fa > P_miss and the first with P_fa <= P_miss, the ROC is taken as the straight segment joining
  them and the EER is where that segment meets P_fa = P_miss (linear interpolation), so the value
  does not jump with the granularity of a small trial list. Perfect separation gives 0, fully
  inverted scores give 1, all-equal scores give 0.5.
- `min_dcf`: the NIST SRE / VoxCeleb detection cost, minimised over those operating points and
  normalised by the cost of the best trivial system (accept all or reject all), so 1.0 means no
  better than that and the value never exceeds 1.
- `det_curve`: the operating points themselves, for plotting.
"""

from __future__ import annotations

import numpy as np


def _class_arrays(targets, preds) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    preds = np.asarray(preds)
    if targets.ndim != 1 or preds.ndim != 1:
        raise ValueError(f"targets and predictions must be 1-D sequences of class indices; got shapes "
                         f"{targets.shape} and {preds.shape}")
    if targets.size == 0:
        raise ValueError("no test clips: a classification metric needs at least one target/prediction pair")
    if targets.shape != preds.shape:
        raise ValueError(f"{targets.size} targets but {preds.size} predictions: pass one prediction per clip")
    for name, values in (("targets", targets), ("predictions", preds)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integer class indices, got dtype {values.dtype}")
    return targets, preds


def accuracy(targets, preds) -> float:
    """Fraction of clips whose predicted class index equals the true one."""
    targets, preds = _class_arrays(targets, preds)
    return float(np.mean(targets == preds))


def unweighted_average_recall(targets, preds, num_classes: int) -> float:
    """Mean over the classes present in `targets` of each class's recall.

    Classes absent from `targets` have no recall and are left out (not counted as 0), so the value
    on a test set lacking a class is the mean over the classes it has. Indices outside
    [0, num_classes) are errors, because they mean the label index and the model disagree.
    """
    targets, preds = _class_arrays(targets, preds)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, values in (("targets", targets), ("predictions", preds)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} hold class index {int(values.min() if values.min() < 0 else values.max())} "
                             f"outside 0..{num_classes - 1}")
    totals = np.bincount(targets, minlength=num_classes)
    hits = np.bincount(targets[targets == preds], minlength=num_classes)
    present = totals > 0
    return float(np.mean(hits[present] / totals[present]))


def _trial_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}")
    if scores.size == 0:
        raise ValueError("no trials: verification metrics need scored target and non-target trials")
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels: pass one label per trial")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} trial score(s) are NaN or Inf; "
                         "the embeddings that produced them are broken")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"trial labels must be 1 (target) or 0 (non-target); found "
                         f"{sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]}")
    n_target = int(labels.sum())
    if n_target == 0 or n_target == labels.size:
        kind = "target" if n_target == 0 else "non-target"
        raise ValueError(f"all {labels.size} trials have the same label: no {kind} trials, so error rates "
                         "are undefined. A trial list needs both target (1) and non-target (0) trials.")
    return scores, labels.astype(bool)


def _operating_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, p_fa, p_miss) for every distinct score as threshold, then +inf; p_fa falls, p_miss rises."""
    scores, is_target = _trial_arrays(scores, labels)
    target_scores = np.sort(scores[is_target])
    nontarget_scores = np.sort(scores[~is_target])
    thresholds = np.append(np.unique(scores), np.inf)
    # Accept when score >= threshold: misses are targets below it, false alarms non-targets at or above.
    p_miss = np.searchsorted(target_scores, thresholds, side="left") / target_scores.size
    p_fa = 1.0 - np.searchsorted(nontarget_scores, thresholds, side="left") / nontarget_scores.size
    return thresholds, p_fa, p_miss


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(p_fa, p_miss) at every operating point, from accept-all (1, 0) to reject-all (0, 1)."""
    _, p_fa, p_miss = _operating_points(scores, labels)
    return p_fa, p_miss


def equal_error_rate(scores, labels) -> float:
    """EER in 0..1, linearly interpolated where P_fa and P_miss cross (see the module docstring)."""
    _, p_fa, p_miss = _operating_points(scores, labels)
    gap = p_fa - p_miss  # starts at 1 (accept all), ends at -1 (reject all), never increases
    i = int(np.argmax(gap <= 0))
    # gap[i - 1] > 0 >= gap[i]; i >= 1 because gap[0] = 1.
    weight = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(p_fa[i - 1] + weight * (p_fa[i] - p_fa[i - 1]))


def min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost (NIST SRE, VoxCeleb: p_target 0.01 or 0.05, unit costs).

    DCF(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target), minimised over the
    operating points and divided by min(c_miss * p_target, c_fa * (1 - p_target)).
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    _, p_fa, p_miss = _operating_points(scores, labels)
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))
