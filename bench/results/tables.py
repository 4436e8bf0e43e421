"""`avbench tables`: result tables, significance tests and plots as a pure function of runs.jsonl.

No torch, no data: only the run records. A *table* holds the runs of one task (train and eval
task, corpus id, manifest, task type) under one training protocol: every config field that is not
the encoder, mode, label budget or seed is part of the protocol, so runs that differ in anything
else never share a cell. Its rows are encoders (with mode, encoder lr and encoder kwargs), grouped
as proposed / self-supervised / hand-crafted / supervised / other; its columns are label fractions
(100% .. 1%) and then k-shot subsets. A cell is the seed mean ± std (ddof=1), the 95% bootstrap
interval over test items (bench.results.stats) and the number of seeds; a cell with fewer seeds than the
table expects gets a dagger, and the best cell of each column is bold.

Significance: the proposed encoder (av-joint, else the best of av-audio/av-visual in that table)
against every baseline row in each column, by exact McNemar on the same test clips (equal
test_clip_ids_hash) with seed-majority correctness per clip (bench.results.stats.paired_mcnemar), and
Holm-Bonferroni over the comparisons of one table. Verification tables have no per-clip
correctness and get their bootstrap CIs only.

Outputs (all byte-identical for the same records: sorted keys, fixed bootstrap seeds, fixed float
formats, plots without dates): results.md, results.csv (one row per cell and metric), results.tex
(booktabs), significance.md/.csv, generalisation.md/.csv when there are cross-dataset runs,
plots/ (bench.results.plots) and README.md, the index of all of them with the git commits behind them and
the sweeps, named in the sweep sidecar beside the records (runs.sweeps.json).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.results import stats
from bench.errors import ConfigError
from bench.files import atomic_write_bytes
from bench.records import read_records

GROUPS = ("proposed", "self-supervised", "hand-crafted", "supervised", "other")
PROPOSED = ("av-joint", "av-audio", "av-visual")  # preference order when av-joint is absent
SELF_SUPERVISED = ("logmel-l1", "pase+", "apc", "wav2vec", "wav2vec_large")
HAND_CRAFTED = ("mfcc39", "logmel")
SUPERVISED = ("resnet18-scratch",)
MODES = ("frozen", "finetune", "scratch")
# Config fields that place a run inside a table (row, column, seed, task) or do not change its
# training (eval_tasks: extra test sets; budget_steps: in the record's budget); the rest is protocol.
NOT_PROTOCOL = {"encoder", "task", "task_type", "train_task", "eval_task", "eval_tasks", "mode", "label_fraction",
                "k_shot", "seed", "checkpoint", "encoder_kwargs", "encoder_lr", "expected_seeds", "budget_steps"}
REQUIRED = ("config", "config_hash", "encoder", "task", "mode", "label_fraction", "seed")
ALPHA = 0.05


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


def group_of(encoder_name: str, mode: str) -> str:
    if mode == "scratch" or encoder_name in SUPERVISED:
        return "supervised"
    if encoder_name in PROPOSED:
        return "proposed"
    if encoder_name in SELF_SUPERVISED or encoder_name.startswith("s3prl:"):
        return "self-supervised"
    return "hand-crafted" if encoder_name in HAND_CRAFTED else "other"


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
        digest = hashlib.sha1(json.dumps(self.key).encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + "-" + digest

    @property
    def heading(self) -> str:
        return f"{self.key.train_task} → {self.key.eval_task}" if self.cross else self.key.eval_task

    @property
    def caption(self) -> str:
        eval_part = f"Trained on `{self.key.train_task}`, tested on `{self.key.eval_task}`" if self.cross \
            else f"Task `{self.key.eval_task}`"
        return f"{eval_part} ({self.key.task_type}), corpus `{self.key.task_name}` " \
               f"(manifest `{self.key.manifest_id}`). {describe_protocol(json.loads(self.key.protocol))}."


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
    tables: dict[tuple, Table] = {}
    for r in latest.values():
        config = r["config"]
        budget = r.get("budget") or {"unit": "epochs", "value": config.get("epochs")}
        # An unset setting (None, empty) equals one absent from older records.
        protocol = {k: v for k, v in config.items() if k not in NOT_PROTOCOL and v not in (None, [], {}, ())}
        protocol.update(budget_unit=budget["unit"], budget_value=budget["value"])
        corpus = r.get("task_name_eval") or r.get("task_name", "")  # a cross-dataset record's own test corpus
        key = (r.get("eval_task") or r["task"], r.get("train_task") or r["task"], corpus,
               r.get("manifest_id", ""), r.get("task_type") or "words", json.dumps(protocol, sort_keys=True))
        table = tables.setdefault(key, Table(TableKey(*key)))
        mode, name = r["mode"], r.get("encoder_name") or r["encoder"].split("@")[0]
        encoder_lr = None if mode == "frozen" else config.get("encoder_lr")
        row = Row(group_of(name, mode), r["encoder"], name, mode, encoder_lr,
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


def _footnotes(table: Table, metric: str) -> list[str]:
    cells = table.cells[metric].values()
    notes = []
    if any(c.short for c in cells):
        notes.append(f"† fewer seeds than the {table.expected_seeds} this table expects (the configured "
                     f"expected_seeds, else the most any cell has); shown, not hidden.")
    for note in sorted({c.ci_note for c in cells if c.ci is None}):
        notes.append(f"[n/a]: {sum(c.ci_note == note for c in cells)} cell(s) without a CI: {note}.")
    if table.missing_metric[metric]:
        notes.append(f"{table.missing_metric[metric]} run(s) of this table do not record {metric}; "
                     f"their cells use the seeds that do.")
    return notes


def _body(table: Table, metric: str, bold, escape=str, empty: str = "—"):
    """(first row of its group?, row, cell texts) of one table and metric, best cells passed to `bold`."""
    previous = None
    for row in table.rows:
        texts = []
        for column in table.columns:
            cell = table.cells[metric].get((row, column))
            text = empty if cell is None else escape(cell_text(cell, METRICS[metric]) + ("†" if cell.short else ""))
            texts.append(bold(text) if cell is not None and cell.best else text)
        yield row.group != previous, row, texts
        previous = row.group


def render_markdown(tables: list[Table], summary: dict[str, Any]) -> str:
    out = io.StringIO()
    out.write("# avbench results\n\nGenerated by `avbench tables` from the run records; do not edit by hand.\n"
              "Each cell: mean ± std over seeds [95% bootstrap CI over test clips or trials, "
              f"{stats.BOOTSTRAP_RESAMPLES} resamples, seeds averaged per resample] (number of seeds). "
              "Bold: best in its column. Columns are label fractions, then k-shot training subsets. "
              "Paired significance tests: significance.md.\n")
    for table in tables:
        out.write(f"\n## {table.heading}\n\n{table.caption} Table id `{table.id}`.\n")
        for metric in table.metrics:
            out.write(f"\n**{METRICS[metric].title}**\n\n| group | encoder | mode | "
                      + " | ".join(map(column_label, table.columns)) + " |\n|---|---|---|"
                      + "---:|" * len(table.columns) + "\n")
            for first, row, texts in _body(table, metric, bold=lambda text: f"**{text}**"):
                out.write(f"| {row.group if first else ''} | {row.label} | {row.mode_text} | {' | '.join(texts)} |\n")
            out.write("".join(f"\n{note}\n" for note in _footnotes(table, metric)))
    if summary["failed"]:
        out.write(f"\n{len(summary['failed'])} failed run record(s) are not in the tables; see the records "
                  "(status \"failed\").\n")
    if summary["superseded"]:
        out.write(f"\n{summary['superseded']} record(s) were replaced by a later record of the same run.\n")
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


CSV_COLUMNS = ("table_id", "train_task", "eval_task", "task_name", "manifest_id", "task_type", "budget_unit",
               "budget_value", "protocol", "metric", "higher_is_better", "group", "encoder", "encoder_name", "mode",
               "encoder_lr", "encoder_kwargs", "column", "label_fraction", "k_shot", "n_seeds", "expected_seeds",
               "fewer_seeds", "seeds", "mean", "std", "ci_low", "ci_high", "ci_note", "best", "val_acc_mean",
               "best_epoch_mean", "wall_seconds_mean")


def render_csv(tables: list[Table]) -> str:
    """One row per cell and metric, values in the records' units (0..1), every statistic."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in tables:
        p = json.loads(t.key.protocol)
        for metric in t.metrics:
            for row in t.rows:
                for column in t.columns:
                    cell = t.cells[metric].get((row, column))
                    if cell is None:
                        continue
                    ci = cell.ci or (None, None)
                    means = [_num(float(np.mean([r[k] for r in cell.runs]))
                                  if all(r.get(k) is not None for r in cell.runs) else None)
                             for k in ("val_acc", "best_epoch", "wall_seconds")]
                    writer.writerow([
                        t.id, t.key.train_task, t.key.eval_task, t.key.task_name, t.key.manifest_id, t.key.task_type,
                        p["budget_unit"], p["budget_value"], t.key.protocol, metric, METRICS[metric].higher_is_better,
                        row.group, row.encoder, row.encoder_name, row.mode,
                        "" if row.encoder_lr is None else f"{row.encoder_lr:g}", row.kwargs, column_label(column),
                        "" if column[0] else f"{column[1]:g}", f"{column[1]:g}" if column[0] else "", len(cell.runs),
                        t.expected_seeds, cell.short, " ".join(str(r["seed"]) for r in cell.runs), _num(cell.mean),
                        _num(cell.std), _num(ci[0]), _num(ci[1]), cell.ci_note, cell.best, *means])
    return out.getvalue()


def _tex(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    text = re.sub(r"([\\&%$#_{}~^])", lambda m: special.get(m[1], "\\" + m[1]), text)
    return text.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("→", r"$\to$").replace("—", "---")


def render_latex(tables: list[Table]) -> str:
    out = io.StringIO()
    out.write("% Generated by `avbench tables`; needs \\usepackage{booktabs}. Do not edit by hand.\n")
    for table in tables:
        for metric in table.metrics:
            out.write(f"\n\\begin{{table}}[t]\n\\centering\\scriptsize\n\\caption{{{_tex(METRICS[metric].title)}. "
                      f"{_tex(table.caption.replace('`', ''))} Mean $\\pm$ std over seeds [95\\% bootstrap CI] "
                      f"(seeds); best per column in bold.}}\n\\label{{tab:{table.id}-{metric}}}\n"
                      f"\\begin{{tabular}}{{lll{'r' * len(table.columns)}}}\n\\toprule\nGroup & Encoder & Mode & "
                      + " & ".join(_tex(column_label(c)) for c in table.columns) + " \\\\\n")
            for first, row, texts in _body(table, metric, bold=lambda text: f"\\textbf{{{text}}}", escape=_tex,
                                           empty="---"):
                out.write(("\\midrule\n" if first else "") + f"{_tex(row.group) if first else ''} & "
                          f"{_tex(row.label)} & {_tex(row.mode_text)} & " + " & ".join(texts) + " \\\\\n")
            notes = "".join(f"\\par {_tex(note)}\n" for note in _footnotes(table, metric))
            out.write(f"\\bottomrule\n\\end{{tabular}}\n{notes}\\end{{table}}\n")
    return out.getvalue()


def generalisation(tables: list[Table]) -> tuple[str, str] | None:
    """Per encoder row, protocol and label column: train task x eval task of the primary metric."""
    cross_tasks = {t.key.train_task for t in tables if t.cross} | {t.key.eval_task for t in tables if t.cross}
    if not cross_tasks:
        return None
    # (row, protocol, label column) -> (train task, "eval task (corpus)") -> the cell there
    matrices: dict[tuple, dict[tuple[str, str], tuple[Table, Cell]]] = defaultdict(dict)
    for t in tables:
        if t.key.train_task in cross_tasks and t.key.eval_task in cross_tasks:
            for (row, column), cell in t.cells[t.metrics[0]].items():
                where = (t.key.train_task, f"{t.key.eval_task} ({t.key.task_name})")
                matrices[(row, t.key.protocol, column)][where] = (t, cell)
    md = io.StringIO()
    md.write("# Cross-dataset generalisation\n\nGenerated by `avbench tables`. Rows: task trained on; columns: task "
             "tested on (corpus id); the diagonal (italic) is in-domain. Each cell is its eval task's first "
             "metric (accuracy, or EER for verification), mean ± std [95% CI] (seeds).\n")
    rows_csv = io.StringIO()
    writer = csv.writer(rows_csv, lineterminator="\n")
    writer.writerow(["encoder", "mode", "protocol", "column", "train_task", "eval_task", "task_name", "metric",
                     "n_seeds", "mean", "std", "ci_low", "ci_high"])
    for (row, protocol, column), entries in sorted(matrices.items(),
                                                  key=lambda kv: (kv[0][0].sort_key(), kv[0][1], kv[0][2])):
        if not any(t.cross for t, _ in entries.values()):
            continue
        trains, evals = sorted({k[0] for k in entries}), sorted({k[1] for k in entries})
        md.write(f"\n## {row.label} ({row.mode_text}), {column_label(column)} labels\n\n"
                 f"{describe_protocol(json.loads(protocol))}.\n\n| trained on | " + " | ".join(evals) + " |\n|---|"
                 + "---:|" * len(evals) + "\n")
        for train in trains:
            texts = []
            for ev in evals:
                if (train, ev) not in entries:
                    texts.append("—")
                    continue
                t, cell = entries[(train, ev)]
                text = cell_text(cell, METRICS[t.metrics[0]])
                texts.append(text if t.cross else f"_{text}_")
                writer.writerow([row.encoder, row.mode_text, protocol, column_label(column), train, t.key.eval_task,
                                 t.key.task_name, t.metrics[0], len(cell.runs), _num(cell.mean), _num(cell.std),
                                 _num(cell.ci and cell.ci[0]), _num(cell.ci and cell.ci[1])])
            md.write(f"| {train} | " + " | ".join(texts) + " |\n")
    return md.getvalue(), rows_csv.getvalue()


def proposed_encoder(table: Table) -> str | None:
    """av-joint if the table has it, else the best other proposed-group encoder by its mean cell."""
    names = {row.encoder_name for row in table.runs if row.group == "proposed"}
    if not names or "av-joint" in names:
        return "av-joint" if names else None
    metric = METRICS[table.metrics[0]]

    def rank(name: str) -> tuple:
        means = [c.mean for (row, _), c in table.cells[metric.key].items() if row.encoder_name == name]
        score = float(np.mean(means)) if means else 0.0
        return (not means, -score if metric.higher_is_better else score, PROPOSED.index(name))

    return min(names, key=rank)


def compare(proposed: dict[int, dict], baseline: dict[int, dict]) -> dict[str, Any]:
    """McNemar of two cells' runs (seed -> record) over the seeds both have, or why they cannot be compared."""
    seeds = sorted(set(proposed) & set(baseline))
    runs = [proposed[s] for s in seeds] + [baseline[s] for s in seeds]
    if not seeds:
        return {"seeds": [], "status": "not comparable: no seed in common"}
    if any(r.get("test_predictions") is None or r.get("test_targets") is None for r in runs):
        return {"seeds": seeds, "status": "n/a: no per-clip predictions in the records"}
    if len({r.get("test_clip_ids_hash") for r in runs}) != 1 or runs[0]["test_clip_ids_hash"] is None \
            or any(r["test_targets"] != runs[0]["test_targets"] for r in runs):
        return {"seeds": seeds, "status": "not comparable: different test clips"}
    only_proposed, only_baseline, p = stats.paired_mcnemar(
        runs[0]["test_targets"], [proposed[s]["test_predictions"] for s in seeds],
        [baseline[s]["test_predictions"] for s in seeds])
    return {"seeds": seeds, "status": "tested", "b": only_proposed, "c": only_baseline, "p": p}


def significance(tables: list[Table]) -> tuple[str, str]:
    md = io.StringIO()
    md.write("# Paired significance tests\n\nGenerated by `avbench tables`. Test: exact McNemar (two-sided binomial "
             "test on the discordant test clips) on per-clip correctness of the proposed encoder against each "
             "baseline, at each label column, on the same test clips (equal test_clip_ids_hash) and the seeds both "
             "ran. Per clip, a method counts as correct when it is right in more than half of those seeds "
             "(seed-majority; keeps the clip as the independent unit). b: clips only the proposed encoder gets "
             "right; c: clips only the baseline gets right. p-values are adjusted by Holm-Bonferroni across all "
             f"tested comparisons of each table; 'significant' means adjusted p < {ALPHA:g}. The proposed encoder "
             "is av-joint, or the best of av-audio/av-visual in a table without it.\n")
    header = ["table_id", "column", "proposed", "proposed_mode", "baseline", "baseline_mode", "seeds",
              "proposed_acc", "baseline_acc", "b", "c", "p_mcnemar", "p_holm", "verdict"]
    out_csv = io.StringIO()
    writer = csv.writer(out_csv, lineterminator="\n")
    writer.writerow(header)
    accuracy = METRICS["accuracy"]
    for t in tables:
        md.write(f"\n## {t.heading}\n\nTable id `{t.id}`. {t.caption}\n\n")
        if t.key.task_type == "speaker-verification":
            md.write("Omitted: McNemar needs per-clip correctness, which EER/minDCF do not have; compare the "
                     "bootstrap CIs in results.md.\n")
            continue
        name = proposed_encoder(t)
        if name is None:
            md.write("Omitted: no proposed-group encoder (av-joint, av-audio, av-visual) in this table.\n")
            continue
        pairs = [(col, p_row, b_row, compare(t.runs[p_row][col], t.runs[b_row][col]))
                 for col in t.columns
                 for p_row in t.rows
                 if p_row.encoder_name == name and p_row.group == "proposed" and col in t.runs[p_row]
                 for b_row in t.rows if b_row.group != "proposed" and col in t.runs[b_row]]
        tested = [r for *_, r in pairs if r["status"] == "tested"]
        for result, adjusted in zip(tested, stats.holm_bonferroni([r["p"] for r in tested])):
            result["p_holm"] = adjusted
        md.write(f"Proposed: {name}; {len(tested)} comparison(s) tested, Holm-adjusted together.\n\n"
                 "| labels | proposed | baseline | seeds | accuracy % (proposed / baseline) | b | c | p | p (Holm) | "
                 "verdict |\n|---|---|---|---|---|---:|---:|---:|---:|---|\n")
        for col, p_row, b_row, r in pairs:
            accs = [float(np.mean([metric_value(x[s], "accuracy") for s in r["seeds"]])) if r["seeds"] else None
                    for x in (t.runs[p_row][col], t.runs[b_row][col])]
            if r["status"] == "tested":
                verdict = "no significant difference" if r["p_holm"] >= ALPHA else \
                    ("proposed better" if r["b"] > r["c"] else "baseline better")
                stat = [str(r["b"]), str(r["c"]), f"{r['p']:.4g}", f"{r['p_holm']:.4g}"]
            else:
                verdict, stat = r["status"], ["", "", "", ""]
            seeds = " ".join(map(str, r["seeds"]))
            md.write(f"| {column_label(col)} | {p_row.label} ({p_row.mode_text}) | {b_row.label} ({b_row.mode_text}) "
                     f"| {seeds} | {accuracy.fmt(accs[0])} / {accuracy.fmt(accs[1])} | " + " | ".join(stat)
                     + f" | {verdict} |\n")
            writer.writerow([t.id, column_label(col), p_row.label, p_row.mode_text, b_row.label, b_row.mode_text,
                             seeds, *map(_num, accs), *stat, verdict])
    return md.getvalue(), out_csv.getvalue()


def write_tables(records_path: str | Path, out_dir: str | Path) -> list[Path]:
    from bench.results import index as results_index, plots  # matplotlib only when files are written

    records_path = Path(records_path)
    records = read_records(records_path)
    tables, summary = collect(records, str(records_path))
    everything = [r for t in tables for r in t.records]
    files: dict[str, bytes] = {
        "results.md": render_markdown(tables, summary).encode(), "results.csv": render_csv(tables).encode(),
        "results.tex": render_latex(tables).encode()}
    index = [("results.md", "all tables (Markdown)", everything), ("results.csv", "one row per cell and metric",
                                                                   everything),
             ("results.tex", "all tables (LaTeX, booktabs)", everything)]
    sig_md, sig_csv = significance(tables)
    files.update({"significance.md": sig_md.encode(), "significance.csv": sig_csv.encode()})
    index += [("significance.md", "paired McNemar tests, Holm-adjusted", everything),
              ("significance.csv", "the same, one row per comparison", everything)]
    cross = generalisation(tables)
    if cross is not None:
        files.update({"generalisation.md": cross[0].encode(), "generalisation.csv": cross[1].encode()})
        cross_records = [r for t in tables if t.cross for r in t.records]
        index += [("generalisation.md", "cross-dataset matrices", cross_records),
                  ("generalisation.csv", "the same, one row per matrix cell", cross_records)]
    for table in tables:
        for name, (what, data) in sorted(plots.table_figures(table).items()):
            files[f"plots/{name}"] = data
            index.append((f"plots/{name}", what, table.records))
    out_dir = Path(out_dir)
    files["README.md"] = results_index.render(index, everything, summary, records_path, out_dir).encode()
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return [out_dir / name for name in files]
