"""Result tables as a pure function of the run records: which runs share a table, row and cell,
and each cell's statistics. No torch, no data: only the records.

A *table* holds the runs of one task (train and eval task, corpus id, manifest, task type) under
one training protocol: every config field that is not the encoder, mode, label budget or seed is
part of the protocol, so runs that differ in anything else never share a cell. Its rows are
encoders (with mode, encoder lr and encoder kwargs), grouped as proposed / self-supervised /
hand-crafted / supervised / other; its columns are label fractions (100% .. 1%) and then k-shot
subsets. A cell is the seed mean ± std (ddof=1), the 95% bootstrap interval over test items
(bench.results.stats) and the number of seeds; a cell with fewer seeds than the table expects
gets a dagger, and the best cell of each column is bold.

bench.results.render writes the tables as Markdown, CSV and LaTeX, bench.results.significance
tests them, and bench.results.write writes every file of results/.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.errors import ConfigError
from bench.results import stats

GROUPS = ("proposed", "self-supervised", "speaker self-supervised", "hand-crafted", "supervised", "other")
PROPOSED = ("av-joint", "av-audio", "av-visual")  # preference order when av-joint is absent
SELF_SUPERVISED = ("logmel-l1", "pase+", "apc", "wav2vec", "wav2vec_large")
HAND_CRAFTED = ("mfcc39", "logmel")
SUPERVISED = ("resnet18-scratch",)
# Objectives not tied to an encoder (objectives/): a checkpoint they trained is grouped by them.
SPEAKER_SELF_SUPERVISED = ("simclr", "moco", "dino")
SUPERVISED_OBJECTIVES = ("supervised",)
MODES = ("frozen", "finetune", "scratch")
# Config fields that place a run inside a table (row, column, seed, task) or do not change its
# training (eval_tasks: extra test sets; budget_steps: in the record's budget); the rest is protocol.
NOT_PROTOCOL = {"encoder", "task", "task_type", "train_task", "eval_task", "eval_tasks", "mode", "label_fraction",
                "k_shot", "seed", "checkpoint", "encoder_kwargs", "encoder_lr", "expected_seeds", "budget_steps"}
REQUIRED = ("config", "config_hash", "encoder", "task", "mode", "label_fraction", "seed")


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    higher_is_better: bool
    scale: float
    decimals: int

    def fmt(self, value: float | None) -> str:
        return "n/a" if value is None else f"{value * self.scale:.{self.decimals}f}"


METRICS = {
    "accuracy": Metric("accuracy", "Test accuracy (%)", True, 100, 2),
    "uar": Metric("uar", "Unweighted average recall (%)", True, 100, 2),
    "eer": Metric("eer", "Equal error rate (%), lower is better", False, 100, 2),
    "min_dcf": Metric("min_dcf", f"minDCF (p_target {stats.DCF_P_TARGET:g}, C_miss {stats.DCF_C_MISS:g}, "
                      f"C_fa {stats.DCF_C_FA:g}), lower is better", False, 1, 4),
}
TASK_METRICS = {"words": ("accuracy",), "speaker-id": ("accuracy",),
                "speaker-verification": ("eer", "min_dcf"), "emotion": ("accuracy", "uar")}


def group_of(encoder_name: str, mode: str, objective: str | None = None) -> str:
    """The row group: by the objective that pretrained the checkpoint when a record names one
    (`pretraining_objective`), else by the encoder, whose name says how it was trained."""
    if objective in SUPERVISED_OBJECTIVES:
        return "supervised"
    if objective in SPEAKER_SELF_SUPERVISED:
        return "speaker self-supervised"
    if objective is not None:
        encoder_name = objective
    if mode == "scratch" or encoder_name in SUPERVISED:
        return "supervised"
    if encoder_name in PROPOSED:
        return "proposed"
    if encoder_name in SELF_SUPERVISED or encoder_name.startswith("s3prl:"):
        return "self-supervised"
    return "hand-crafted" if encoder_name in HAND_CRAFTED else "other"


def display_name(record: dict[str, Any]) -> str:
    """A row's name: NAME@HASH8, or NAME+OBJECTIVE@HASH8 for a checkpoint that an objective other
    than the encoder's own trained (NAME+supervised[speaker]@HASH8 names the labels it saw)."""
    objective = record.get("pretraining_objective")
    if not objective:
        return record["encoder"]
    name, _, checkpoint = record["encoder"].partition("@")
    labels = record.get("pretraining_labels")
    return f"{name}+{objective}" + (f"[{labels}]" if labels else "") + (f"@{checkpoint}" if checkpoint else "")


@dataclass(frozen=True)
class Row:
    group: str
    encoder: str            # display name, NAME@HASH8 for a checkpoint
    encoder_name: str
    mode: str
    encoder_lr: float | None
    kwargs: str             # canonical JSON of encoder_kwargs

    def sort_key(self) -> tuple:
        mode_rank = MODES.index(self.mode) if self.mode in MODES else len(MODES)
        return (GROUPS.index(self.group), self.encoder, mode_rank, self.mode,
                -1.0 if self.encoder_lr is None else self.encoder_lr, self.kwargs)

    @property
    def label(self) -> str:
        return self.encoder + ("" if self.kwargs == "{}" else f" {self.kwargs}")

    @property
    def mode_text(self) -> str:
        return self.mode + (f", encoder lr {self.encoder_lr:g}" if self.encoder_lr is not None else "")


def column_label(column: tuple[bool, float]) -> str:
    is_shot, value = column
    return f"{value:g}-shot" if is_shot else f"{100 * value:g}%"


@dataclass
class Cell:
    runs: list[dict[str, Any]]      # the seeds that report this metric, by seed
    mean: float
    std: float | None
    ci: tuple[float, float] | None
    ci_note: str
    best: bool = False
    short: bool = False             # fewer seeds than the table expects


class TableKey(NamedTuple):
    eval_task: str
    train_task: str
    task_name: str          # corpus id
    manifest_id: str
    task_type: str
    protocol: str           # canonical JSON
    # The corpus trained on: a cross-dataset table's own corpus is its test corpus, so without this
    # two corpora behind one spec (embedded:default before and after a generator version) would merge.
    train_name: str = ""


@dataclass
class Table:
    key: TableKey
    runs: dict[Row, dict[tuple[bool, float], dict[int, dict]]] = field(default_factory=dict)
    cells: dict[str, dict[tuple[Row, tuple[bool, float]], Cell]] = field(default_factory=dict)
    expected_seeds: int = 0
    missing_metric: dict[str, int] = field(default_factory=dict)

    @property
    def cross(self) -> bool:
        return self.key.eval_task != self.key.train_task

    @property
    def metrics(self) -> tuple[str, ...]:
        return TASK_METRICS[self.key.task_type]

    @property
    def rows(self) -> list[Row]:
        return sorted(self.runs, key=Row.sort_key)

    @property
    def columns(self) -> list[tuple[bool, float]]:
        return sorted({c for cols in self.runs.values() for c in cols}, key=lambda c: (c[0], -c[1]))

    @property
    def records(self) -> list[dict]:
        return [r for cols in self.runs.values() for seeds in cols.values() for r in seeds.values()]

    @property
    def id(self) -> str:
        name = f"{self.key.train_task}-to-{self.key.eval_task}" if self.cross else self.key.eval_task
        # In-domain tables' ids predate train_name (it repeats their corpus there): they stay as they were.
        digest = hashlib.sha1(json.dumps(self.key[:6] + ((self.key.train_name,) if self.cross else ())).encode()
                              ).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + "-" + digest

    @property
    def heading(self) -> str:
        """A readable title; the full task ids are in the caption under it."""
        where = f"{short_task(self.key.train_task)} → {short_task(self.key.eval_task)}" if self.cross \
            else short_task(self.key.eval_task)
        return f"{self.key.task_type.replace('-', ' ').capitalize()}, {where}"

    @property
    def caption(self) -> str:
        eval_part = f"Trained on `{self.key.train_task}` (corpus `{self.key.train_name}`), tested on " \
                    f"`{self.key.eval_task}`" if self.cross \
            else f"Task `{self.key.eval_task}`"
        return f"{eval_part} ({self.key.task_type}), corpus `{self.key.task_name}` " \
               f"(manifest `{self.key.manifest_id}`). {describe_protocol(json.loads(self.key.protocol))}."


def short_task(task: str) -> str:
    """`embedded:default[rendition=0;snr_db<12]` -> `embedded:default (snr_db<12)`: the corpus and its
    filters, a filter of more than four values counted; rendition 0 is the default view."""
    base, _, filters = task.partition("[")
    parts = []
    for clause in filter(None, filters.rstrip("]").split(";")):
        key, sep, values = clause.partition("=")
        if clause == "rendition=0":
            continue
        many = sep and values.count(",") >= 4
        parts.append(f"{key}: {values.count(',') + 1} values" if many else clause)
    return base + (f" ({', '.join(parts)})" if parts else "")


def describe_protocol(p: dict[str, Any]) -> str:
    rounds = p.get("epochs")
    if p["budget_unit"] == "epochs":
        budget, stage = f"{p['budget_value']} epoch{'s' if p['budget_value'] != 1 else ''}", "epoch"
    else:  # bench.evaluate.run spreads a step budget over `epochs` validation rounds
        budget, stage = f"{p['budget_value']} optimizer steps over {rounds} validation rounds", "round"
    text = f"Budget: {budget}; Adam, lr {p['lr']:g}"
    drop = p.get("lr_drop_epoch")
    if drop is not None and (rounds is None or drop < rounds):
        text += f", then {p['lr_after_drop']:g} after {stage} {drop}"
    text += f", batch {p['batch_size']}, {p['layers']}-layer BiGRU {p['hidden']}, pooling {p['pooling']}"
    known = {"budget_unit", "budget_value", "epochs", "lr", "lr_drop_epoch", "lr_after_drop", "batch_size",
             "layers", "hidden", "pooling"}
    return text + "".join(f", {k} {json.dumps(v, sort_keys=True)}" for k, v in sorted(p.items()) if k not in known)


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    value = (record.get("metrics") or {}).get(metric)
    if value is None and metric == "accuracy":
        value = record.get("test_acc")  # records from before the metrics dict
    return None if value is None else float(value)


def collect(records: list[dict[str, Any]], source: str) -> tuple[list[Table], dict[str, Any]]:
    """Group successful records into tables; failed and superseded records are counted."""
    latest: dict[str, dict] = {}
    summary = {"failed": [], "superseded": 0, "ok": 0}
    for number, r in enumerate(records, 1):
        if r.get("status") == "failed":
            summary["failed"].append(r)
            continue
        missing = [f for f in REQUIRED if f not in r]
        if r.get("status") != "ok" or missing:
            raise ConfigError(f"{source}: record {number} ({r.get('config_hash', 'no config_hash')}) has status "
                              f"{r.get('status')!r} and lacks {missing}; only records written by avbench's runner "
                              f"(status 'ok' or 'failed') can be tabled. Remove or repair that line.")
        task_type = r.get("task_type") or "words"
        if task_type not in TASK_METRICS:
            raise ConfigError(f"{source}: record {number} ({r['config_hash']}) has task_type {task_type!r}; "
                              f"known: {', '.join(TASK_METRICS)}.")
        summary["superseded"] += r["config_hash"] in latest
        latest[r["config_hash"]] = r
    from bench.evaluate.identity import LATER_SETTINGS

    tables: dict[tuple, Table] = {}
    for r in latest.values():
        config = r["config"]
        budget = r.get("budget") or {"unit": "epochs", "value": config.get("epochs")}
        # An unset setting (None, empty), or one at the default it had before it existed (precision
        # fp32), equals one absent from older records.
        protocol = {k: v for k, v in config.items() if k not in NOT_PROTOCOL and v not in (None, [], {}, ())
                    and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}
        protocol.update(budget_unit=budget["unit"], budget_value=budget["value"])
        corpus = r.get("task_name_eval") or r.get("task_name", "")  # a cross-dataset record's own test corpus
        key = (r.get("eval_task") or r["task"], r.get("train_task") or r["task"], corpus,
               r.get("manifest_id", ""), r.get("task_type") or "words", json.dumps(protocol, sort_keys=True),
               r.get("task_name", ""))
        table = tables.setdefault(key, Table(TableKey(*key)))
        mode, name = r["mode"], r.get("encoder_name") or r["encoder"].split("@")[0]
        encoder_lr = None if mode == "frozen" else config.get("encoder_lr")
        objective = r.get("pretraining_objective")
        row = Row(group_of(name, mode, objective), display_name(r), name, mode, encoder_lr,
                  json.dumps(config.get("encoder_kwargs") or {}, sort_keys=True))
        column = (True, float(r["k_shot"])) if r.get("k_shot") else (False, float(r["label_fraction"]))
        seeds = table.runs.setdefault(row, {}).setdefault(column, {})
        # Same run under an older config-hash scheme: the later record replaces it, as a re-run does.
        summary["superseded"] += r["seed"] in seeds
        seeds[r["seed"]] = r
    summary["ok"] = sum(len(s) for t in tables.values() for c in t.runs.values() for s in c.values())
    ordered = [tables[k] for k in sorted(tables)]
    for table in ordered:
        summarise(table)
    return ordered, summary


def bootstrap(runs: list[dict[str, Any]], metric: str) -> tuple[tuple[float, float] | None, str]:
    """The CI of one cell, or None and the reason it cannot be computed from these records."""
    verification = metric in ("eer", "min_dcf")
    results, truth, order = ("trial_scores", "trial_labels", "trials_hash") if verification else \
        ("test_predictions", "test_targets", "test_clip_ids_hash")
    if any(r.get(results) is None or r.get(truth) is None for r in runs):
        return None, f"the records have no {results}/{truth} (older runs)"
    if len({r.get(order) for r in runs}) != 1 or any(r[truth] != runs[0][truth] for r in runs):
        return None, f"seeds ran on different {'trial' if verification else 'test clip'} lists"
    if verification:
        return stats.verification_ci([r[results] for r in runs], runs[0][truth], metric), ""
    return stats.classification_ci(runs[0][truth], [r[results] for r in runs], metric), ""


def summarise(table: Table) -> None:
    """Fill table.cells per metric, then mark the best cell per column and the short-of-seeds cells."""
    configured = [r["config"]["expected_seeds"] for r in table.records if r["config"].get("expected_seeds")]
    table.expected_seeds = max(configured) if configured else \
        max(len(s) for cols in table.runs.values() for s in cols.values())
    for metric in table.metrics:
        cells, missing = {}, 0
        for row, cols in table.runs.items():
            for column, seeds in cols.items():
                runs = [seeds[s] for s in sorted(seeds) if metric_value(seeds[s], metric) is not None]
                missing += len(seeds) - len(runs)
                if not runs:
                    continue
                mean, std = stats.mean_std([metric_value(r, metric) for r in runs])
                ci, note = bootstrap(runs, metric)
                cells[(row, column)] = Cell(runs, mean, std, ci, note, short=len(runs) < table.expected_seeds)
        m = METRICS[metric]
        for column in {c for _, c in cells}:
            shown = {key: m.fmt(cell.mean) for key, cell in cells.items() if key[1] == column}
            best = (max if m.higher_is_better else min)(shown.values(), key=float)
            for key, text in shown.items():
                cells[key].best = text == best  # ties as displayed are all marked
        table.cells[metric], table.missing_metric[metric] = cells, missing


def cell_text(cell: Cell, metric: Metric) -> str:
    ci = "n/a" if cell.ci is None else f"{metric.fmt(cell.ci[0])}, {metric.fmt(cell.ci[1])}"
    return f"{metric.fmt(cell.mean)} ± {metric.fmt(cell.std)} [{ci}] ({len(cell.runs)})"
