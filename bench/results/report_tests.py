"""The study report's paired tests (bench.results.report): each comparison a sweep config names
("A vs B", each side a report group or one representation) is one family of tests, per task and
setting, Holm-corrected within it.

A test pairs the runs both sides have (same training corpus, test corpus and seed). Accuracy: exact
McNemar on the test clips, each clip's majority over seeds, the clips of every corpus pair pooled.
EER: a paired bootstrap over trials. Each test gives one finding sentence, with its numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.results import stats
from bench.results.tables import METRICS

ALPHA = 0.05
# The question avbench exists to answer: tested when a sweep config names no `comparisons`.
DEFAULT_COMPARISONS = (("audiovisual SSL", "supervised"),)


@dataclass
class Test:
    task: str
    setting: str
    a: str
    b: str
    metric: str
    mean_a: float
    mean_b: float
    p: float
    detail: str
    p_holm: float = math.nan
    family: tuple[str, str] = DEFAULT_COMPARISONS[0]  # the comparison it belongs to; Holm is within it


def _paired_units(a: list, b: list) -> list[tuple[list, list]]:
    """Per (train, test corpus): the seeds both ran, in seed order."""
    groups = []
    for pair in sorted({(u.train_corpus, u.test_corpus) for u in a}):
        seeds_a = {u.seed: u for u in a if (u.train_corpus, u.test_corpus) == pair}
        seeds_b = {u.seed: u for u in b if (u.train_corpus, u.test_corpus) == pair}
        common = sorted(set(seeds_a) & set(seeds_b))
        if common:
            groups.append(([seeds_a[s] for s in common], [seeds_b[s] for s in common]))
    return groups


def paired_test(a: list, b: list, metric: str) -> tuple[float, str, float, float] | None:
    """(p, what was tested, A's mean, B's mean) on the runs both have; None when nothing pairs up."""
    groups = _paired_units(a, b)
    if not groups:
        return None
    means = (float(np.mean([u.value for ua, _ in groups for u in ua])),
             float(np.mean([u.value for _, ub in groups for u in ub])))
    if metric in ("eer", "min_dcf"):
        try:
            p = stats.paired_verification_p([([u.record["trial_scores"] for u in ua], [u.record["trial_scores"] for u in ub],
                                               ua[0].record["trial_labels"]) for ua, ub in groups], metric)
        except (KeyError, ValueError):
            return None
        runs = sum(len(ua) for ua, _ in groups)
        return p, f"paired bootstrap over trials, {runs} run pair(s)", *means
    b_total = c_total = clips = 0
    for ua, ub in groups:
        targets = ua[0].record.get("test_targets")
        if targets is None or any(u.record.get("test_targets") != targets for u in ua + ub):
            return None
        b_, c_, _ = stats.paired_mcnemar(targets, [u.record["test_predictions"] for u in ua],
                                         [u.record["test_predictions"] for u in ub])
        b_total, c_total, clips = b_total + b_, c_total + c_, clips + len(targets)
    return (stats.mcnemar_exact(b_total, c_total),
            f"exact McNemar on {clips} test clips: A alone right on {b_total}, B alone right on {c_total}", *means)


def comparison_members(side: str, representations: dict[str, str], groups: tuple[str, ...]) -> list[str]:
    """The representations one side of a comparison names: a report group's, or the one named."""
    if side in groups:
        return [rep for rep, group in representations.items() if group == side]
    return [side] if side in representations else []


def run_tests(units: dict[tuple[str, str, str], list], representations: dict[str, str],
              comparisons: list[tuple[str, str]], metrics: dict[str, str], settings: tuple[str, ...],
              groups: tuple[str, ...]) -> list[Test]:
    """Every comparison's tests, A's members against B's, per task (`metrics`: task -> its metric, in order)
    and setting; Holm within each comparison. `representations`: name -> its group, one of `groups`."""
    tests = []
    for family in comparisons:
        pairs = [(a, b) for a in comparison_members(family[0], representations, groups)
                 for b in comparison_members(family[1], representations, groups) if a != b]
        family_tests = []
        for task, metric in metrics.items():
            for setting in settings:
                for a, b in pairs:
                    ua, ub = units.get((a, task, setting), []), units.get((b, task, setting), [])
                    result = paired_test(ua, ub, metric) if ua and ub else None
                    if result is not None:
                        p, detail, mean_a, mean_b = result
                        family_tests.append(Test(task, setting, a, b, metric, mean_a, mean_b, p, detail,
                                                 family=tuple(family)))
        for test, adjusted in zip(family_tests, stats.holm_bonferroni([t.p for t in family_tests])):
            test.p_holm = adjusted
        tests += family_tests
    return tests


def outcome(test: Test) -> str:
    """"better" or "worse" (A than B, significantly after Holm), else "not different"."""
    if test.p_holm >= ALPHA:
        return "not different"
    return "better" if (test.mean_a > test.mean_b) == METRICS[test.metric].higher_is_better else "worse"


def finding(test: Test) -> str:
    """One sentence from one test, with its numbers."""
    m = METRICS[test.metric]
    unit = "%" if m.scale == 100 else ""
    numbers = f"{m.title.split(' (')[0].lower()} {m.fmt(test.mean_a)}{unit} vs {m.fmt(test.mean_b)}{unit}"
    where = f"{test.task}, {test.setting}"
    result = outcome(test)
    if result != "not different":
        return (f"{test.a} is significantly {result} than {test.b} on {where} "
                f"({numbers}, p_Holm = {test.p_holm:.3g}).")
    return (f"{test.a} and {test.b} do not differ significantly on {where} "
            f"({numbers}, p_Holm = {test.p_holm:.3g}).")


def family_summary(family: tuple[str, str], tests: list[Test]) -> str:
    """One sentence counting a comparison's outcomes, from its tests (the findings list them one by one)."""
    a, b = family
    if not tests:
        return f"{a} against {b}: no pair of records to test yet."
    outcomes = [outcome(t) for t in tests]
    better, worse = outcomes.count("better"), outcomes.count("worse")
    return (f"{a} against {b}: of {len(tests)} paired tests (pairs x tasks x settings), {a} is significantly better "
            f"in {better}, significantly worse in {worse}, and not significantly different in "
            f"{len(tests) - better - worse} (p_Holm < {ALPHA}, Holm within this comparison).")
