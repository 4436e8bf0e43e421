"""The study report: one question answered from the records of one sweep, as a pure function of them.

`avbench report CONFIG` reads the run records that the sweep CONFIG planned (the sweeps sidecar
beside the records names them) and the pretraining records behind their checkpoints, and builds:

- the main table: representations (rows, in report groups) by task x setting (in-domain: trained
  and tested on one corpus; cross-corpus: trained on one, tested on the other). A cell pools the
  runs of every training corpus and seed: mean, 95% CI and the count. With two or more runs the
  CI is Student's t over them; with one, it is the bootstrap interval over its test items
  (bench.results.stats), and the cell says which;
- the generalisation gap per representation and task: in-domain minus cross-corpus, paired by
  training corpus and seed, with a t interval;
- paired tests, per task and setting, for each comparison the config names ("A vs B", each side a
  report group or a representation; by default every audiovisual self-supervised representation
  against every supervised one), Holm-corrected within each comparison (bench.results.report_tests);
- findings: one sentence per test, generated from it, and limitations generated from the records;
- the compute the study took, by stage (bench.results.study_cost).

bench.results.report_render writes it as Markdown and as a self-contained HTML page.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from bench.errors import ConfigError
from bench.results import stats
from bench.results.pretraining import LossMovement, build_key, checkpoint_hash, latest_builds
from bench.results.report_tests import DEFAULT_COMPARISONS, Test, run_tests
from bench.results.study_cost import StageCost, study_costs
from bench.results.tables import display_name, metric_value

REPORT_GROUPS = ("audiovisual SSL", "audio SSL", "speaker SSL", "supervised", "hand-crafted", "random", "other")
AUDIOVISUAL = ("av-joint", "av-visual")
AUDIO_SSL = ("av-audio", "logmel-l1", "apc", "wav2vec", "wav2vec_large", "pase+")
HAND_CRAFTED = ("mfcc39", "logmel")
TASKS = ("words", "speaker-id", "speaker-verification", "emotion")
SETTINGS = ("in-domain", "cross-corpus")
PRIMARY_METRIC = {"words": "accuracy", "speaker-id": "accuracy", "speaker-verification": "eer", "emotion": "accuracy"}


def report_group(record: dict[str, Any]) -> str:
    """The report's grouping: by what trained the weights, labels included."""
    objective = record.get("pretraining_objective")
    name = record.get("encoder_name") or record["encoder"].split("@")[0]
    if objective == "supervised" or record.get("mode") == "scratch":
        return "supervised"
    if objective in ("simclr", "moco", "dino"):
        return "speaker SSL"
    name = objective or name
    if name in AUDIOVISUAL:
        return "audiovisual SSL"
    if name in AUDIO_SSL or name.startswith("s3prl:"):
        return "audio SSL"
    if name in HAND_CRAFTED:
        return "hand-crafted"
    if name == "resnet18-scratch":
        return "random"  # frozen at its random initialisation
    return "other"


def representation(record: dict[str, Any]) -> str:
    """A row's readable name: the display name without its checkpoint hash ([label] reads [words])."""
    return display_name(record).split("@")[0].replace("[label]", "[words]")


def corpus_of(task_name: str | None) -> str:
    return re.sub(r"\[.*\]$", "", task_name or "")


def corpus_tasks(records: list[dict[str, Any]]) -> dict[str, str]:
    """Corpus id -> the task spec a sweep names it by (embedded-fa5ce22f5432 -> embedded:default[rendition=0]),
    so the report says which generated corpus is which."""
    named = {}
    for r in records:
        for name, task in ((r.get("task_name"), r.get("task")), (r.get("task_name_eval"), r.get("eval_task"))):
            if name and task:
                named.setdefault(corpus_of(name), task)
    return named


@dataclass
class Unit:
    """One measurement: a representation on a task, trained on one corpus with one seed, tested on one."""
    record: dict[str, Any]
    train_corpus: str
    test_corpus: str
    seed: int
    value: float


@dataclass
class CellStats:
    values: list[float]
    mean: float
    ci: tuple[float, float] | None
    ci_kind: str          # "t over N seeds" | "bootstrap over test items" | reason there is none

    @property
    def one_seed(self) -> bool:
        """No t interval over seeds: the report marks such a cell ‡."""
        return not self.ci_kind.startswith("t over")


@dataclass
class Report:
    name: str
    question: str
    description: str
    deviations: list
    representations: dict[str, str]                   # name -> group, in table order
    units: dict[tuple[str, str, str], list[Unit]]     # (representation, task, setting) -> units
    cells: dict[tuple[str, str, str], CellStats]
    gaps: dict[tuple[str, str], CellStats]            # (representation, task)
    tests: list[Test]
    corpora: list[str]
    seeds: list[int]
    pretraining: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    realism: dict[str, list[str]] = field(default_factory=dict)  # corpus -> its committed data checks
    costs: list[StageCost] = field(default_factory=list)        # compute by stage (bench.results.study_cost)
    corpus_tasks: dict[str, str] = field(default_factory=dict)  # corpus id -> the task spec that named it
    loss_movements: dict[tuple[str, str], LossMovement] = field(default_factory=dict)  # build_key -> its curve
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # the paired-test families, in config order
    mixed_checkpoints: dict[str, dict[str, int]] = field(default_factory=dict)  # row -> {checkpoint hash: runs}

    @property
    def columns(self) -> list[tuple[str, str]]:
        present = {(t, s) for (_, t, s) in self.cells}
        return [(t, s) for t in TASKS for s in SETTINGS if (t, s) in present]


def t_interval(values: list[float], level: float = stats.CI_LEVEL) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def per_seed_means(units: list[Unit]) -> list[float] | None:
    """The cell's value per seed (mean over its corpus pairs), when every seed ran the same corpus pairs."""
    by_seed: dict[int, dict[tuple[str, str], float]] = {}
    for u in units:
        by_seed.setdefault(u.seed, {})[(u.train_corpus, u.test_corpus)] = u.value
    pairs = {frozenset(v) for v in by_seed.values()}
    if len(by_seed) < 2 or len(pairs) != 1:
        return None
    return [float(np.mean(list(by_seed[s].values()))) for s in sorted(by_seed)]


def bootstrap_samples(units: list[Unit], metric: str) -> np.ndarray | None:
    """Resampled values of the cell's mean over runs: each run's test items (clips or trials) resampled
    on their own, the runs averaged per resample. None when a run lacks its per-item results."""
    try:
        return np.mean([stats.bootstrap_metric_samples(u.record, metric) for u in units], axis=0)
    except (KeyError, TypeError, ValueError):
        return None


def _bounded(ci: tuple[float, float], metric: str) -> tuple[float, float]:
    """Accuracy and EER live in [0, 1]; a t interval of few, spread runs can leave it."""
    return max(ci[0], 0.0), min(ci[1], 1.0)


def cell_stats(units: list[Unit], metric: str) -> CellStats:
    """Mean over runs. CI: Student's t over seeds (corpora held fixed) when there are two or more,
    else the bootstrap over the runs' test items."""
    values = [u.value for u in units]
    mean = float(np.mean(values))
    seeds = per_seed_means(units)
    if seeds is not None:
        return CellStats(values, mean, _bounded(t_interval(seeds), metric), f"t over {len(seeds)} seeds")
    samples = bootstrap_samples(units, metric)
    if samples is None:
        return CellStats(values, mean, None, "no per-item results to bootstrap")
    return CellStats(values, mean, stats.percentile_interval(samples), "bootstrap over test items")


def _setting(record: dict[str, Any]) -> tuple[str, str, str] | None:
    """(setting, train corpus, test corpus), or None for an extra test on the training corpus itself."""
    train = corpus_of(record.get("task_name"))
    if not record.get("eval_of"):
        return "in-domain", train, train
    test = corpus_of(record.get("task_name_eval"))
    return (None if test == train else ("cross-corpus", train, test))


def select(records: list[dict[str, Any]], planned: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The latest ok record of every planned run and of its cross-corpus tests; the rest counted."""
    latest: dict[str, dict] = {}
    skipped = {"failed": 0, "not in this study": 0}
    for r in records:
        key = r.get("eval_of") or r.get("config_hash")
        if key not in planned:
            skipped["not in this study"] += 1
            continue
        if r.get("status") != "ok":
            skipped["failed"] += 1
            continue
        latest[f"{r.get('config_hash')}:{r.get('task_name_eval', '')}"] = r
    return list(latest.values()), skipped


def gather(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[Unit]]:
    """Units per (representation, task, setting); of two records of one measurement (a run re-recorded
    under another config hash), the later one counts, as in `avbench tables`."""
    placed_units: dict[tuple, Unit] = {}
    for r in records:
        task = r.get("task_type") or "words"
        placed = _setting(r)
        value = metric_value(r, PRIMARY_METRIC.get(task, "accuracy"))
        if placed is None or value is None or task not in PRIMARY_METRIC:
            continue
        setting, train, test = placed
        key = (representation(r), task, setting, train, test, int(r["seed"]))
        placed_units[key] = Unit(r, train, test, int(r["seed"]), value)
    units: dict[tuple[str, str, str], list[Unit]] = {}
    for (rep, task, setting, *_), unit in placed_units.items():
        units.setdefault((rep, task, setting), []).append(unit)
    return units


def gaps(units: dict[tuple[str, str, str], list[Unit]]) -> dict[tuple[str, str], CellStats]:
    """In-domain minus cross-corpus, paired by (training corpus, seed); CI as for cells (t over seeds,
    else the bootstrap over both test sets)."""
    out = {}
    for (rep, task, setting), cross in units.items():
        if setting != "cross-corpus":
            continue
        inside = {(u.train_corpus, u.seed): u for u in units.get((rep, task, "in-domain"), [])}
        pairs = [(inside[(u.train_corpus, u.seed)], u) for u in cross if (u.train_corpus, u.seed) in inside]
        if not pairs:
            continue
        diffs = [a.value - b.value for a, b in pairs]
        as_units = [Unit(b.record, b.train_corpus, b.test_corpus, b.seed, d) for (a, b), d in zip(pairs, diffs)]
        seeds = per_seed_means(as_units)
        metric = PRIMARY_METRIC[task]
        if seeds is not None:
            out[(rep, task)] = CellStats(diffs, float(np.mean(diffs)), t_interval(seeds), f"t over {len(seeds)} seeds")
            continue
        inside_samples = bootstrap_samples([a for a, _ in pairs], metric)
        cross_samples = bootstrap_samples([b for _, b in pairs], metric)
        ci = None if inside_samples is None or cross_samples is None else \
            stats.percentile_interval(inside_samples - cross_samples)
        out[(rep, task)] = CellStats(diffs, float(np.mean(diffs)), ci, "bootstrap over test items")
    return out


def check_comparisons(sweep, comparisons: list[tuple[str, str]]) -> None:
    """Every side names a report group or one of the sweep's representations (a typo would otherwise
    leave a family silently empty)."""
    configured = configured_representations(sweep)
    unknown = [side for pair in comparisons for side in pair if side not in REPORT_GROUPS and side not in configured]
    if unknown:
        raise ConfigError(f"{getattr(sweep, 'source', sweep.name)}: comparisons name {', '.join(map(repr, unknown))}, "
                          f"which is neither a report group ({', '.join(REPORT_GROUPS)}) nor a representation of "
                          f"this sweep ({', '.join(configured)}).")


def configured_representations(sweep) -> list[str]:
    """The representations the sweep's grid names, read as the report names rows: a checkpoint
    entry of another objective reads NAME+OBJECTIVE, with [words] or [speaker] for a supervised one."""
    names = []
    for run in sweep.runs:
        name, _, checkpoint = run.encoder.partition("@")
        entry = getattr(sweep, "pretraining", {}).get(checkpoint.removeprefix("pretrained:")) if checkpoint else None
        objective = getattr(entry, "objective", None)
        if objective:
            labels = (getattr(entry, "pretext_kwargs", None) or {}).get("label_column")
            name += f"+{objective}" + (f"[{'words' if labels == 'label' else labels}]" if labels else "")
        if name not in names:
            names.append(name)
    return names


def build_report(sweep, records: list[dict[str, Any]], planned_hashes: set[str],
                 pretraining: list[dict[str, Any]] = (), realism: dict[str, list[str]] | None = None,
                 loss_movements: dict[tuple[str, str], LossMovement] | None = None) -> Report:
    """The report of `sweep` (a bench.sweep.config.Sweep) from the records whose runs it planned;
    `loss_movements` (bench.results.pretraining.loss_movements) are the curves of the builds behind them."""
    comparisons = [tuple(pair) for pair in getattr(sweep, "comparisons", None) or DEFAULT_COMPARISONS]
    check_comparisons(sweep, comparisons)
    chosen, skipped = select(records, planned_hashes)
    units = gather(chosen)
    groups = {}
    for r in chosen:
        groups.setdefault(representation(r), report_group(r))
    order = sorted(groups, key=lambda rep: (REPORT_GROUPS.index(groups[rep]), rep))
    representations = {rep: groups[rep] for rep in order}
    cells = {key: cell_stats(u, PRIMARY_METRIC[key[1]]) for key, u in units.items()}
    expected_tasks = sorted({run.task_type for run in sweep.runs}, key=TASKS.index)
    settings = SETTINGS if any(run.eval_tasks for run in sweep.runs) else SETTINGS[:1]
    not_run = [rep for rep in configured_representations(sweep) if rep not in representations]
    missing = [f"{rep}: {task}, {setting}" for rep in representations for task in expected_tasks
               for setting in settings if (rep, task, setting) not in cells
               and not (task == "speaker-id" and setting == "cross-corpus")]  # never run: closed-set speakers
    missing += [f"{rep}: every task (no record)" for rep in not_run]
    used = {r.get("checkpoint_hash") for r in chosen if r.get("checkpoint_hash")}
    # A row pools its runs by name; one entry built twice with different bits (another machine) splits them.
    per_row: dict[str, dict[str, int]] = {}
    for r in chosen:
        if r.get("checkpoint_hash") and not r.get("eval_of"):
            row = per_row.setdefault(representation(r), {})
            row[r["checkpoint_hash"]] = row.get(r["checkpoint_hash"], 0) + 1
    behind = [p for p, _ in latest_builds(list(pretraining)) if checkpoint_hash(p) in used]
    behind_keys = {build_key(b) for b in behind}
    return Report(name=sweep.name, question=getattr(sweep, "question", "") or sweep.description,
                  description=sweep.description, deviations=list(sweep.deviations),
                  representations=representations, units=units, cells=cells, gaps=gaps(units),
                  tests=run_tests(units, representations, comparisons, PRIMARY_METRIC, SETTINGS, REPORT_GROUPS),
                  comparisons=comparisons,
                  mixed_checkpoints={rep: hashes for rep, hashes in per_row.items() if len(hashes) > 1},
                  corpora=sorted({u.train_corpus for us in units.values() for u in us}),
                  seeds=sorted({u.seed for us in units.values() for u in us}), pretraining=behind,
                  missing=missing, skipped=skipped, realism=dict(realism or {}), costs=study_costs(chosen, behind),
                  corpus_tasks=corpus_tasks(chosen),
                  loss_movements={key: movement for key, movement in (loss_movements or {}).items()
                                  if key in behind_keys})
