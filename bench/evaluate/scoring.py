"""Scoring a trained run: classification metrics and confusion on the test split, cosine scoring
of verification trials, and the trained model tested on other tasks (cross-dataset)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from torch import nn

from bench.data.task_types import build_task_view
from bench.data.tasks import resolve_task
from bench.errors import ConfigError
from bench.evaluate.features import RunFeatures
from bench.evaluate.identity import RunConfig
from bench.evaluate.metrics import accuracy, equal_error_rate, min_dcf, unweighted_average_recall
from bench.evaluate.training import embed, predict

log = logging.getLogger("avbench.runner")


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted]."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, preds), 1)
    return confusion


def per_class_accuracy(confusion: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """Recall of each class (row i of the confusion matrix is class labels[i]); None where it has no clip."""
    return {label: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
            for i, label in enumerate(labels)}


def classification_metrics(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, float]:
    return {"accuracy": round(accuracy(targets, preds), 6),
            "uar": round(unweighted_average_recall(targets, preds, num_classes), 6)}


def clip_order_hash(clip_ids) -> str:
    """Identity of an ordered list of test clips: runs compare clip by clip only when it matches."""
    return hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()[:16]



def verify(model: nn.Module, view, features: RunFeatures) -> dict[str, Any]:
    """Cosine scoring of the view's trials with the trained head's pooled embeddings."""
    trials = view.trials
    clips = sorted(set(trials["enroll"]) | set(trials["test"]))
    table = features.manifest.table.set_index("clip_id")
    missing = [c for c in clips if c not in table.index]
    if missing:
        raise ConfigError(f"{features.manifest.path}: {len(missing)} trial clip(s) are not in the manifest, "
                          f"e.g. {missing[:3]}; regenerate the trial list.")
    rows = table.loc[clips].reset_index()
    emb = embed(model, features.loader(rows, [0] * len(rows)))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    index = {c: i for i, c in enumerate(clips)}
    scores = np.einsum("ij,ij->i", emb[[index[c] for c in trials["enroll"]]], emb[[index[c] for c in trials["test"]]])
    labels = trials["label"].to_numpy().astype(int)
    return {"metrics": {"eer": round(equal_error_rate(scores, labels), 6),
                        "min_dcf": round(min_dcf(scores, labels, p_target=0.01), 6)},
            "trial_scores": [round(float(x), 6) for x in scores], "trial_labels": labels.tolist(),
            "trials_hash": clip_order_hash([f"{a} {b}" for a, b in zip(trials["enroll"], trials["test"])])}


def cross_evaluate(config: RunConfig, eval_task: str, model: nn.Module, encoder: nn.Module,
                   label_index: dict[str, int], cache, counters: dict, progress: bool,
                   device=None) -> dict[str, Any]:
    """The trained model tested on another task's test split, on the labels both tasks share.

    Speaker verification needs no shared labels: the trained head embeds the other corpus's trial
    clips (speakers it never saw) and the trials are cosine-scored, as on the training corpus."""
    manifest = resolve_task(eval_task, progress=progress)
    view = build_task_view(manifest, config.task_type, label_map=config.label_map)
    if config.task_type == "speaker-verification":
        features = RunFeatures(config, encoder, manifest, cache, counters, progress, device=device)
        verification = verify(model, view, features)
        # The speaker-id scores of the training corpus do not describe this corpus: they are cleared.
        return {"eval_task": eval_task, "task_name_eval": manifest.meta.get("name", manifest.path.parent.name),
                "manifest_id": manifest.manifest_id, "metrics": {**verification.pop("metrics"), "accuracy": None},
                "test_acc": None, "confusion": None, "test_clip_ids_hash": None, "test_targets": None,
                "test_predictions": None, "per_class_test_acc": None, "eval_dropped_labels": {}, **verification}
    test = view.splits["test"]
    known = test[view.label_column].isin(label_index)
    dropped = test.loc[~known, view.label_column].value_counts().sort_index().to_dict()
    if dropped:
        log.warning("%s: %d test clip(s) with labels the training task lacks are not scored: %s", eval_task,
                    int(sum(dropped.values())), dropped)
    test = test[known]
    if test.empty:
        raise ConfigError(f"{eval_task}: no test clip has a label of the training task {config.task!r}; map both "
                          "to a shared label space (bench/data/prepare/label_maps).")
    features = RunFeatures(config, encoder, manifest, cache, counters, progress, device=device)
    targets, preds = predict(model, features.loader(test, [label_index[x] for x in test[view.label_column]]))
    confusion = confusion_matrix(targets, preds, len(label_index))
    metrics = classification_metrics(targets, preds, len(label_index))
    return {"eval_task": eval_task, "task_name_eval": manifest.meta.get("name", manifest.path.parent.name),
            "manifest_id": manifest.manifest_id, "metrics": metrics, "test_acc": metrics["accuracy"],
            "confusion": confusion.tolist(), "test_clip_ids_hash": clip_order_hash(test["clip_id"].tolist()),
            "test_targets": targets.tolist(), "test_predictions": preds.tolist(),
            "per_class_test_acc": per_class_accuracy(confusion, list(label_index)),
            "eval_dropped_labels": {str(k): int(v) for k, v in dropped.items()}}
