"""Figures of `avbench tables`, drawn from the tables' cells (bench.results.tables), never from training.

Per table: a label-efficiency plot (PNG and SVG; the table's first metric against the label fraction
on a log axis, one line per encoder row with its bootstrap CI band), for classification tasks a
per-class accuracy heat map of the best proposed and the best baseline row at 100% and 1% labels,
and for verification tasks one DET plot per label column.

Each encoder has one colour in every plot: a fixed palette for the known encoders, and a hue from
a hash of the name for any other, so colours never depend on which encoders a table happens to
hold; the mode is the line style. Figures are built on matplotlib.figure.Figure (Agg, no pyplot
state) and saved without dates or version stamps and with a fixed SVG hash salt, so the same
records give byte-identical files.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import re

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from scipy.stats import norm

from bench.evaluate.metrics import det_curve, equal_error_rate
from bench.results.tables import METRICS, Row, Table, column_label

PALETTE = {"av-joint": "#d62728", "av-audio": "#ff7f0e", "av-visual": "#e377c2", "logmel-l1": "#1f77b4",
           "pase+": "#2ca02c", "apc": "#9467bd", "wav2vec": "#8c564b", "wav2vec_large": "#17becf",
           "mfcc39": "#7f7f7f", "logmel": "#bcbd22", "resnet18-scratch": "#000000"}
LINESTYLES = {"frozen": "-", "finetune": "--", "scratch": ":"}
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
# Past the textbook 40%: the weak systems of a small synthetic corpus sit near chance (50%).
DET_TICKS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8]
MAX_CLASS_TICKS = 60  # beyond this (speaker-id) class names are unreadable; the heat map keeps its columns


def encoder_colour(encoder_name: str) -> str:
    if encoder_name in PALETTE:
        return PALETTE[encoder_name]
    hue = int.from_bytes(hashlib.sha256(encoder_name.encode()).digest()[:4], "big") / 2 ** 32
    r, g, b = colorsys.hsv_to_rgb(hue, 0.7, 0.75)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _line_label(row: Row) -> str:
    return row.label + ("" if row.mode == "frozen" else f" ({row.mode_text})")


def _save(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "avbench", "svg.fonttype": "path"}):
        fig.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight", metadata=SAVE_METADATA[fmt])
    return buffer.getvalue()


def label_efficiency(table: Table) -> Figure | None:
    metric = METRICS[table.metrics[0]]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    fractions = set()
    for row in table.rows:
        points = sorted(((col[1], cell) for (r, col), cell in table.cells[metric.key].items()
                         if r == row and not col[0]), key=lambda p: p[0])
        if not points:
            continue
        x = [f for f, _ in points]
        fractions.update(x)
        colour = encoder_colour(row.encoder_name)
        ax.plot(x, [c.mean * metric.scale for _, c in points], marker="o", color=colour,
                linestyle=LINESTYLES.get(row.mode, "-."), label=_line_label(row))
        if any(c.ci for _, c in points):
            band = np.array([c.ci if c.ci else (np.nan, np.nan) for _, c in points]) * metric.scale
            ax.fill_between(x, band[:, 0], band[:, 1], color=colour, alpha=0.15, linewidth=0)
    if not fractions:
        return None  # only k-shot columns: no label-fraction axis
    ax.set_xscale("log")
    ax.set_xticks(sorted(fractions), [f"{100 * f:g}%" for f in sorted(fractions)])
    ax.minorticks_off()
    ax.set_xlabel("labelled training fraction")
    ax.set_ylabel(metric.title)
    ax.set_title(f"{table.heading} ({table.key.task_name})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig


def per_class_accuracy(record: dict) -> np.ndarray | None:
    """Accuracy per class of record["labels"] (NaN for a class without test clips), from the run's
    confusion matrix: a cross-dataset record's confusion is of its own test set, while its
    per_class_test_acc may be the training task's. Older records without one use per_class_test_acc."""
    labels = record.get("labels") or []
    if record.get("confusion"):
        confusion = np.asarray(record["confusion"], dtype=float)
        totals = confusion.sum(axis=1)
        return np.divide(np.diag(confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)
    per_class = record.get("per_class_test_acc")
    if not per_class or not labels:
        return None
    return np.array([np.nan if per_class.get(c) is None else per_class[c] for c in labels], dtype=float)


def _best(cells, column, keep) -> tuple[Row, object] | None:
    candidates = [(row, cell) for (row, col), cell in sorted(cells.items(), key=lambda kv: kv[0][0].sort_key())
                  if col == column and keep(row) and all(per_class_accuracy(r) is not None for r in cell.runs)]
    return max(candidates, key=lambda rc: rc[1].mean) if candidates else None  # first of equals: row order


def per_class_heatmap(table: Table) -> Figure | None:
    if "accuracy" not in table.metrics:
        return None
    picks = []
    for column in ((False, 1.0), (False, 0.01)):
        for keep in (lambda row: row.group == "proposed", lambda row: row.group != "proposed"):
            best = _best(table.cells["accuracy"], column, keep)
            if best:
                picks.append((f"{_line_label(best[0])} @ {column_label(column)}", best[1]))
    if not picks:
        return None
    classes = picks[0][1].runs[0]["labels"]
    rows = []
    for _, cell in picks:
        per_seed = np.array([per_class_accuracy(r) for r in cell.runs])
        seen = (~np.isnan(per_seed)).sum(axis=0)
        rows.append(np.where(seen > 0, np.nansum(per_seed, axis=0) / np.maximum(seen, 1), np.nan))
    fig = Figure(figsize=(min(20.0, 2.5 + 0.3 * len(classes)), 1.6 + 0.45 * len(picks)))
    ax = fig.add_subplot()
    image = ax.imshow(np.array(rows) * 100, vmin=0, vmax=100, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(picks)), [label for label, _ in picks], fontsize=8)
    if len(classes) <= MAX_CLASS_TICKS:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_xlabel(f"class ({len(classes)})")
    ax.set_title(f"Per-class test accuracy (%), mean over seeds: {table.heading}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    return fig


def det_plot(table: Table, column) -> Figure | None:
    curves = []
    for row in table.rows:
        cell = table.cells["eer"].get((row, column))
        if cell is None or any(r.get("trial_scores") is None or r.get("trial_labels") is None for r in cell.runs):
            continue
        # Trials of all seeds pooled into one curve: one line per encoder, as the table has one cell.
        scores = np.concatenate([r["trial_scores"] for r in cell.runs])
        labels = np.concatenate([r["trial_labels"] for r in cell.runs])
        curves.append((row, *det_curve(scores, labels), equal_error_rate(scores, labels)))
    if not curves:
        return None
    fig = Figure(figsize=(5.2, 5.2))
    ax = fig.add_subplot()
    lo, hi = DET_TICKS[0], DET_TICKS[-1]
    for row, p_fa, p_miss, eer in curves:
        ax.plot(norm.ppf(np.clip(p_fa, lo / 2, 1 - lo / 2)), norm.ppf(np.clip(p_miss, lo / 2, 1 - lo / 2)),
                color=encoder_colour(row.encoder_name), linestyle=LINESTYLES.get(row.mode, "-."),
                label=f"{_line_label(row)}, EER {100 * eer:.2f}%")
    ticks = norm.ppf(DET_TICKS)
    tick_labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, tick_labels)
    ax.set_yticks(ticks, tick_labels)
    ax.set_xlim(norm.ppf(lo), norm.ppf(hi))
    ax.set_ylim(norm.ppf(lo), norm.ppf(hi))
    ax.set_xlabel("false-alarm probability (%)")
    ax.set_ylabel("miss probability (%)")
    ax.set_title(f"DET, {column_label(column)} labels, seeds pooled: {table.heading}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.plot([norm.ppf(lo), norm.ppf(hi)], [norm.ppf(lo), norm.ppf(hi)], color="0.6", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=7, loc="best")
    return fig


def table_figures(table: Table) -> dict[str, tuple[str, bytes]]:
    """File name -> (description, bytes) of every figure of one table."""
    figures = {}
    fig = label_efficiency(table)
    if fig is not None:
        for fmt in ("png", "svg"):
            figures[f"{table.id}-label-efficiency.{fmt}"] = (f"label efficiency, {table.heading}", _save(fig, fmt))
    fig = per_class_heatmap(table)
    if fig is not None:
        figures[f"{table.id}-per-class.png"] = (f"per-class accuracy, {table.heading}", _save(fig, "png"))
    if "eer" in table.metrics:
        for column in table.columns:
            fig = det_plot(table, column)
            if fig is not None:
                slug = re.sub(r"[^A-Za-z0-9]+", "", column_label(column).replace("%", "pct"))
                figures[f"{table.id}-det-{slug}.png"] = (f"DET curves, {column_label(column)} labels, {table.heading}",
                                                       _save(fig, "png"))
    return figures
