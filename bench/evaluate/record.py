"""The run record: what one evaluation run appends to the records file (bench.records), built from
the run's identity, its per-fold results and its test scores. Tables are a pure function of these."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__
from bench.data.datasets import subset_hash
from bench.device import describe
from bench.evaluate.identity import RunConfig
from bench.evaluate.scoring import clip_order_hash, confusion_matrix, per_class_accuracy
from bench.paths import pretrained_root
from bench.records import git_commit


def pretraining_identity(checkpoint: str | None) -> str | None:
    """The pretraining stage's identity of a checkpoint it built ($AVBENCH_DATA/pretrained/ID/encoder.pt),
    which names that build's record in the pretraining records; None for any other checkpoint."""
    if not checkpoint:
        return None
    path = Path(checkpoint).resolve()
    built = path.name == "encoder.pt" and path.parent.parent == pretrained_root().resolve()
    # A folder a user named by hand there (pretrained/apc-b8) is no identity.
    return path.parent.name if built and re.fullmatch(r"[0-9a-f]{16}", path.parent.name) else None


def checkpoint_objective(checkpoint: str | None) -> dict[str, Any]:
    """What trained a checkpoint, when `avbench pretrain --objective` named an objective other than
    the encoder's own: {"pretraining_objective", "pretraining_labels"} (the label column a supervised
    objective learned, else None). Empty for every other checkpoint, whose encoder says it."""
    if not checkpoint or not Path(checkpoint).is_file():
        return {}
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file avbench wrote: the encoder's loader reports it
        return {}
    if not isinstance(saved, dict) or not saved.get("objective"):
        return {}
    return {"pretraining_objective": str(saved["objective"]), "pretraining_labels": saved.get("labels")}


def fold_metrics(fold_results: list[dict]) -> dict[str, float]:
    """Metrics averaged over folds, as SUPERB does for IEMOCAP's sessions (one fold: its own)."""
    return {name: round(float(np.mean([f["metrics"][name] for f in fold_results])), 6)
            for name in fold_results[0]["metrics"]}


def build_record(config: RunConfig, *, chash: str, encoder_name: str, checkpoint: str | None, ckpt_hash: str | None,
                 encoder_params: int, manifest, view, labels: list[str], fold_results: list[dict],
                 metrics: dict[str, float], verification: dict[str, Any], counters: dict,
                 denormals_flushed: bool, device: torch.device | None = None) -> dict[str, Any]:
    """The main record of a run: trained on config.task (every fold of it) and tested there."""
    targets = np.concatenate([f["targets"] for f in fold_results])
    preds = np.concatenate([f["preds"] for f in fold_results])
    test_ids = [c for f in fold_results for c in f["test_ids"]]
    confusion = confusion_matrix(targets, preds, len(labels))
    first, several = fold_results[0], len(fold_results) > 1
    return {
        "status": "ok",
        "config_hash": chash,
        "config": asdict(config),
        # Tables show this: the name, and for pretrained weights their content hash, not a local path.
        "encoder": encoder_name if ckpt_hash is None else f"{encoder_name}@{ckpt_hash[:8]}",
        "encoder_name": encoder_name,
        "checkpoint_path": str(checkpoint) if checkpoint else None,
        "checkpoint_hash": ckpt_hash,
        "pretraining_identity": pretraining_identity(checkpoint),
        **checkpoint_objective(checkpoint),
        "encoder_params": encoder_params,
        "task": config.task,
        "task_type": config.task_type,
        "train_task": config.task,
        "eval_task": config.task,
        "task_name": manifest.meta.get("name", manifest.path.parent.name),
        "manifest_id": manifest.manifest_id,
        "mode": config.mode,
        "label_fraction": config.label_fraction,
        "k_shot": config.k_shot,
        "budget": config.budget(),
        "seed": config.seed,
        "train_clips": int(sum(len(f["train_rows"]) for f in fold_results)),
        "train_subset_hash": subset_hash([c for f in fold_results for c in f["train_rows"]["clip_id"]]),
        "labels": labels,
        "label_column": view.label_column,
        "history": [f["history"] for f in fold_results] if several else first["history"],
        "best_epoch": first["best"]["epoch"],
        "val_acc": round(float(np.mean([f["best"]["val_acc"] for f in fold_results])), 6),
        "test_acc": metrics["accuracy"],
        "metrics": metrics,
        "folds": [{"fold": f["fold"], "best_epoch": f["best"]["epoch"], "val_acc": round(f["best"]["val_acc"], 6),
                   "metrics": f["metrics"]} for f in fold_results] if several else None,
        "per_class_test_acc": per_class_accuracy(confusion, labels),
        "confusion": confusion.tolist(),
        "test_clip_ids_hash": clip_order_hash(test_ids),
        "test_targets": targets.tolist(),
        "test_predictions": preds.tolist(),
        **verification,
        "counters": counters,
        "resumed_from_epoch": first["resumed_from"],
        "git_commit": git_commit(),
        "avbench_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # None: libgomp's default (spin, then sleep)
        "flush_denormal": denormals_flushed,
        **describe(device or torch.device("cpu"), config.precision),  # device, device_name, precision
    }


def cross_record(record: dict[str, Any], cross: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """The record of the run's trained model tested on another task: the main record's fields with
    that task's scores, under a hash of (run, eval manifest)."""
    chash = record["config_hash"]
    return {**record, **cross, "config_hash": hashlib.sha256(f"{chash}:{cross['manifest_id']}".encode()).hexdigest()[:16],
            "eval_of": chash, "wall_seconds": wall_seconds}
