"""`avbench sweep CONFIG.yaml`: the grid encoders x tasks x modes x label fractions x seeds.

A sweep config is YAML:

    name: quick
    tasks: [embedded:default]
    encoders: [mfcc39, logmel]
    modes: [frozen]
    label_fractions: [1.0]
    seeds: [0]
    train: {epochs: 12, lr: 1.0e-3, lr_drop_epoch: 9, lr_after_drop: 1.0e-4, batch_size: 32}
    records: results/runs.jsonl      # optional, relative to the current folder
    tables: results                  # optional: regenerate tables there after the sweep

Runs already recorded (same config hash) are skipped, so a re-run only does what is missing or
failed. A run that raises is recorded with status "failed", its error and traceback, and the sweep
goes on; the command then exits non-zero with a summary.
"""

from __future__ import annotations

import itertools
import logging
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.records import DEFAULT_RECORDS, append_record, git_commit
from bench.runner import RunConfig, run_experiment

log = logging.getLogger("avbench.sweep")

GRID_KEYS = ("tasks", "encoders", "modes", "label_fractions", "seeds")
TOP_KEYS = set(GRID_KEYS) | {"name", "description", "deviations_from_paper", "train", "records", "tables"}


@dataclass
class Sweep:
    name: str
    runs: list[RunConfig]
    records: Path
    tables: Path | None
    source: Path


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep config not found.")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep config is a mapping with keys {sorted(TOP_KEYS)}.")
    unknown = sorted(set(spec) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}.")
    for key in ("tasks", "encoders"):
        if not spec.get(key):
            raise ConfigError(f"{path}: '{key}' must list at least one entry.")
    grid = {k: spec.get(k) for k in GRID_KEYS}
    grid["modes"] = grid["modes"] or ["frozen"]
    grid["label_fractions"] = grid["label_fractions"] or [1.0]
    grid["seeds"] = grid["seeds"] or [0]
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(f"{path}: '{key}' must be a list, got {values!r}.")
    train = spec.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: 'train' must be a mapping of run settings (epochs, lr, ...).")
    runs = []
    for task, encoder, mode, fraction, seed in itertools.product(*(grid[k] for k in GRID_KEYS)):
        try:
            runs.append(RunConfig.from_dict({**train, "task": str(task), "encoder": str(encoder), "mode": mode,
                                             "label_fraction": float(fraction), "seed": int(seed)}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    records = Path(spec.get("records") or DEFAULT_RECORDS)
    tables = Path(spec["tables"]) if spec.get("tables") else None
    return Sweep(name=str(spec.get("name") or path.stem), runs=runs, records=records, tables=tables, source=path)


def run_sweep(sweep: Sweep, *, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every configuration in order; return counts of done, skipped and failed runs."""
    summary = {"ran": 0, "skipped": 0, "failed": []}
    for i, config in enumerate(sweep.runs, 1):
        label = f"[{i}/{len(sweep.runs)}] {config.encoder} on {config.task} ({config.mode}, " \
                f"{config.label_fraction:g} labels, seed {config.seed})"
        log.info("%s", label)
        try:
            record = run_experiment(config, sweep.records, force=force, progress=progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken run must not cost the rest of the sweep
            log.error("%s failed: %s", label, exc)
            append_record(sweep.records, {"status": "failed", "config": asdict(config), "encoder": config.encoder,
                                          "task": config.task, "mode": config.mode,
                                          "label_fraction": config.label_fraction, "seed": config.seed,
                                          "error": f"{type(exc).__name__}: {exc}",
                                          "traceback": traceback.format_exc(), "git_commit": git_commit()})
            summary["failed"].append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        summary["skipped" if record.get("skipped") else "ran"] += 1
        if not record.get("skipped"):
            log.info("%s: test %.2f%% (best val %.2f%% at epoch %d), %.0f s", label, 100 * record["test_acc"],
                     100 * record["val_acc"], record["best_epoch"], record["wall_seconds"])
    return summary
