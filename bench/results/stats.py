"""Statistics of the result tables: seed spread, bootstrap intervals, paired tests. numpy/scipy only.

Two sources of variation are reported separately. The spread over training seeds is the mean ± std
(ddof=1) of the per-seed metric. The uncertainty from the finite test set is a 95% percentile
bootstrap interval over test items: the test clips (or verification trials) are resampled with a
fixed generator seed, and on each resample the metric is computed for every seed's run on the
*same* resampled items and averaged over seeds, so the interval belongs to the seed-averaged number
the table shows. Verification trials are resampled within targets and non-targets separately, so
every resample has both kinds and EER/minDCF stay defined.

Verification metrics follow bench.evaluate.metrics (the runner's EER and minDCF) exactly: operating points
at every distinct score (accept when score >= threshold) plus reject-all, the EER interpolated
linearly where miss and false-alarm rates cross, minDCF normalised by the better trivial system.
They are re-implemented here only in a vectorised, weighted form: a bootstrap resample is a count
per trial, and a hundred resamples are scored at once, which bench.evaluate.metrics' one-curve functions
would do a thousand times over per seed.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
DCF_P_TARGET, DCF_C_MISS, DCF_C_FA = 0.01, 1.0, 1.0  # minDCF operating point of the tables
_CHUNK = 100  # resamples per vectorised batch: bounds memory at 100 x n test clips


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1); the std of a single value is undefined (None)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples."""
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def classification_ci(targets, predictions, metric: str, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL) -> tuple[float, float]:
    """Bootstrap interval of seed-averaged accuracy or UAR ("accuracy" | "uar").

    targets: (n_clips,) true class per test clip; predictions: (n_seeds, n_clips), every seed's run on
    the same clips in the same order. Both metrics are linear in per-clip correctness for fixed
    resampled clips, so averaging over seeds equals scoring the seed-mean correctness once.
    """
    if metric not in ("accuracy", "uar"):
        raise ValueError(f"unknown classification metric {metric!r} (accuracy | uar)")
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.atleast_2d(np.asarray(predictions, dtype=np.int64))
    if predictions.shape[1] != len(targets) or len(targets) == 0:
        raise ValueError(f"predictions {predictions.shape} do not match {len(targets)} test targets")
    correct = (predictions == targets).mean(axis=0)
    n_classes = int(targets.max()) + 1
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, len(targets), size=(min(_CHUNK, resamples - start), len(targets)))
        if metric == "accuracy":
            samples.append(correct[idx].mean(axis=1))
        else:
            # Class counts and correct counts per resample in one bincount, offset by resample.
            flat = (np.arange(len(idx))[:, None] * n_classes + targets[idx]).ravel()
            hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=len(idx) * n_classes)
            count = np.bincount(flat, minlength=len(idx) * n_classes).astype(float)
            hits, count = hits.reshape(len(idx), -1), count.reshape(len(idx), -1)
            recall = np.divide(hits, count, out=np.zeros_like(hits), where=count > 0)
            samples.append(recall.sum(axis=1) / (count > 0).sum(axis=1))  # UAR over the classes present
    return percentile_interval(np.concatenate(samples), level)


def _det_rates(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at thresholds 'accept >= s' for each distinct score s ascending, then
    'reject all'. counts: (n_trials, n_curves), how often each trial counts in each curve (a bootstrap
    resample; ones for the plain curve). Returns (n_curves, n_thresholds) arrays."""
    order = np.argsort(scores, kind="stable")
    ends = np.append(np.flatnonzero(np.diff(scores[order])), len(scores) - 1)  # last trial of each tie group
    is_target = labels[order].astype(bool)[:, None]
    weighted = counts[order]  # trial-major, so the cumulative sums run over contiguous rows
    targets = np.cumsum(np.where(is_target, weighted, 0), axis=0)[ends].T
    nontargets = np.cumsum(np.where(is_target, 0, weighted), axis=0)[ends].T
    if (targets[:, -1] == 0).any() or (nontargets[:, -1] == 0).any():
        raise ValueError("verification metrics need both target and non-target trials")
    zero = np.zeros((targets.shape[0], 1))
    return (np.hstack([zero, targets]) / targets[:, -1:],
            1.0 - np.hstack([zero, nontargets]) / nontargets[:, -1:])


def _eer(p_miss: np.ndarray, p_fa: np.ndarray) -> np.ndarray:
    """Per row: linear interpolation where miss and false alarm cross (k >= 1: p_miss[0]=0 < p_fa[0]=1)."""
    k = np.argmax(p_miss >= p_fa, axis=1)[:, None]
    miss0, miss1 = np.take_along_axis(p_miss, k - 1, 1), np.take_along_axis(p_miss, k, 1)
    gap0, gap1 = np.take_along_axis(p_fa - p_miss, k - 1, 1), np.take_along_axis(p_fa - p_miss, k, 1)
    return (miss0 + gap0 / (gap0 - gap1) * (miss1 - miss0))[:, 0]


def _min_dcf(p_miss: np.ndarray, p_fa: np.ndarray, p_target: float = DCF_P_TARGET, c_miss: float = DCF_C_MISS,
             c_fa: float = DCF_C_FA) -> np.ndarray:
    dcf = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return dcf.min(axis=1) / min(c_miss * p_target, c_fa * (1 - p_target))


def _trial_counts(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """(n_trials, size): how often each trial is drawn in each of `size` bootstrap resamples, targets
    and non-targets resampled apart (so every resample has both kinds)."""
    targets, nontargets, n = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0), len(labels)
    if not len(targets) or not len(nontargets):
        raise ValueError("verification metrics need both target and non-target trials")
    picks = np.hstack([rng.choice(targets, (size, len(targets))), rng.choice(nontargets, (size, len(nontargets)))])
    return np.bincount((picks * size + np.arange(size)[:, None]).ravel(), minlength=n * size).reshape(n, size)


def _trial_samples(scores: np.ndarray, labels: np.ndarray, metric: str, rng: np.random.Generator,
                   resamples: int) -> np.ndarray:
    """(n_score_rows, resamples): each row's EER or minDCF on the same bootstrap resamples of the trials,
    so rows (seeds, or two methods) stay paired."""
    score_of = {"eer": _eer, "min_dcf": _min_dcf}[metric]
    chunks = []
    for start in range(0, resamples, _CHUNK):
        counts = _trial_counts(rng, labels, min(_CHUNK, resamples - start))
        chunks.append(np.stack([score_of(*_det_rates(row, labels, counts)) for row in scores]))
    return np.concatenate(chunks, axis=1)


def verification_ci(scores, labels, metric: str, *, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL) -> tuple[float, float]:
    """Bootstrap interval of seed-averaged EER or minDCF ("eer" | "min_dcf") over trials.

    scores: (n_seeds, n_trials) on the same trial list; labels: (n_trials,) 1 target, 0 non-target.
    A resample is a vector of counts per trial, so each seed's DET curve is re-weighted, not re-drawn.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    labels = np.asarray(labels, dtype=float)
    n = len(labels)
    if scores.shape[1] != n:
        raise ValueError(f"trial scores {scores.shape} do not match {n} trial labels")
    if metric not in ("eer", "min_dcf"):
        raise ValueError(f"unknown verification metric {metric!r} (eer | min_dcf)")
    samples = _trial_samples(scores, labels, metric, np.random.default_rng(seed), resamples)
    return percentile_interval(samples.mean(axis=0), level)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: binomial(b + c, 1/2) on the discordant pairs b (A right, B wrong)
    and c (A wrong, B right)."""
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def holm_bonferroni(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (family-wise error control)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty(len(p))
    out[order] = adjusted
    return [float(x) for x in out]


def paired_mcnemar(targets, predictions_a, predictions_b) -> tuple[int, int, float]:
    """Exact McNemar of methods A and B on the same test clips: (b, c, p).

    predictions_*: (n_seeds, n_clips), row s of A paired with row s of B (the same training seed).
    Per clip, a method counts as correct when it is right in more than half of the seeds (a tie is
    not a majority). The test's unit stays the clip, so its independence assumption holds; pooling
    seed-clip pairs instead would count one clip several times and overstate the evidence.
    """
    targets = np.asarray(targets)
    right_a = (np.atleast_2d(predictions_a) == targets).mean(axis=0) > 0.5
    right_b = (np.atleast_2d(predictions_b) == targets).mean(axis=0) > 0.5
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return b, c, mcnemar_exact(b, c)


def paired_verification_p(groups, metric: str = "eer", *, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired bootstrap p of A's minus B's seed-averaged EER (or minDCF), averaged over groups.

    groups: [(scores_a (n_seeds, n_trials), scores_b (n_seeds, n_trials), labels (n_trials,))], one
    per trial list (e.g. per corpus pair). Each resample re-weights every group's trials, within
    targets and non-targets, the same for A and B, so the pairing is kept; p is twice the smaller
    share of resampled differences on either side of zero (floored at one resample's weight).
    """
    rng = np.random.default_rng(seed)
    differences = np.zeros(resamples)
    for scores_a, scores_b, labels in groups:
        scores_a, scores_b = np.atleast_2d(np.asarray(scores_a, float)), np.atleast_2d(np.asarray(scores_b, float))
        samples = _trial_samples(np.vstack([scores_a, scores_b]), np.asarray(labels, dtype=float), metric, rng,
                                 resamples)
        differences += (samples[:len(scores_a)].mean(axis=0) - samples[len(scores_a):].mean(axis=0)) / len(groups)
    share = min(np.mean(differences <= 0), np.mean(differences >= 0))
    return float(min(1.0, max(2.0 * share, 1.0 / resamples)))


def bootstrap_metric_samples(record, metric: str, *, resamples: int = BOOTSTRAP_RESAMPLES,
                             seed: int = BOOTSTRAP_SEED):
    """One run's metric ("accuracy" | "eer" | "min_dcf") on `resamples` bootstrap resamples of its test
    items: clips for accuracy, trials (targets and non-targets apart) for EER and minDCF. Raises
    KeyError/TypeError when the record has no per-item results."""
    rng = np.random.default_rng(seed)
    if metric == "accuracy":
        right = (np.asarray(record["test_predictions"]) == np.asarray(record["test_targets"])).astype(float)
        return np.concatenate([right[rng.integers(0, len(right), (min(_CHUNK, resamples - start), len(right)))]
                               .mean(axis=1) for start in range(0, resamples, _CHUNK)])
    scores = np.asarray([record["trial_scores"]], dtype=float)
    return _trial_samples(scores, np.asarray(record["trial_labels"], dtype=float), metric, rng, resamples)[0]
