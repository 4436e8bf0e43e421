"""One run of the shared evaluation loop: encoder x task x mode x label fraction x seed -> record.

`run_experiment` is the orchestration; each step lives in its own module of this stage:
identity (config hash, skip, lock), features (cache or waveforms), training (the loop),
scoring (test metrics, verification, cross-task tests) and record (what is appended).

Modes:
  frozen    features are computed once into the feature cache and the encoder never trains;
  finetune  the encoder (from its checkpoint) trains with the classifier, at `encoder_lr`;
  scratch   the encoder is randomly initialised and trains with the classifier on labels only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench.data.datasets import label_subset
from bench.data.task_types import TaskView, build_task_view
from bench.data.tasks import resolve_task
from bench.device import resolve_device
from bench.errors import ConfigError
from bench.evaluate.downstream import BiGRUClassifier
from bench.evaluate.features import RunFeatures
from bench.evaluate.identity import RunConfig, exclusive_run, run_dir, run_identity
from bench.evaluate.record import build_record, cross_record, fold_metrics
from bench.evaluate.scoring import classification_metrics, cross_evaluate, verify
from bench.evaluate.training import EncoderClassifier, fit, predict, seed_everything, state_path
from bench.records import append_record, completed, read_records
from bench.registry import count_parameters, create_encoder, split_spec
from bench.runtime import flush_denormals

log = logging.getLogger("avbench.runner")


def run_experiment(config: RunConfig, records_path: str | Path, *, force: bool = False, progress: bool = True,
                   cache=None, device: str = "auto", wait: bool = True) -> dict[str, Any]:
    """Run one experiment and append its record(s); return the record (or the existing one if skipped).

    `device` (auto, cpu, cuda, cuda:N) is where the encoder and the head run; it is not part of the
    run's identity, but the record names it.

    A run trains on `config.task` (every fold of it, where the task defines folds) and tests there;
    each of `config.eval_tasks` then adds a record of the same trained model tested on that task.
    The main record is appended last, so a run killed in between is re-run whole.

    A run that another process is running waits for it, then returns its record; with `wait=False`
    it raises bench.files.LockBusy instead (a sweep comes back to it after its other runs).
    """
    config = config.validated()
    placed = resolve_device(device)
    denormals_flushed = flush_denormals()
    started = time.time()
    manifest = resolve_task(config.task, progress=progress)
    encoder_name = split_spec(config.encoder)[0]
    checkpoint, ckpt_hash, chash = run_identity(config, manifest.manifest_id)
    if not force and (done := completed(read_records(records_path)).get(chash)) is not None:
        log.info("skipping %s on %s (%s): already recorded as %s", config.encoder, config.task, config.mode, chash)
        return {**done, "skipped": True}

    # One process per run: a second sweep (or a worker left over from a killed one) that reaches
    # the same run waits here (or, told not to wait, moves on), then finds it recorded.
    with exclusive_run(chash, wait=wait):
        if not force and (done := completed(read_records(records_path)).get(chash)) is not None:
            log.info("skipping %s on %s: recorded by another process meanwhile", config.encoder, config.task)
            return {**done, "skipped": True}
        view = _task_view(config, manifest)
        labels = list(view.labels)
        label_index = {label: i for i, label in enumerate(labels)}
        folds = view.folds or [view.splits]
        make_encoder = _encoder_factory(config, encoder_name, checkpoint)
        encoder = make_encoder()
        if config.mode != "frozen" and count_parameters(encoder) == 0:
            raise ConfigError(f"encoder {encoder_name!r} has no trainable parameters: use --mode frozen")
        encoder_params = count_parameters(encoder)
        counters = {"encoder_forward_clips": 0, "cache_hits": 0, "cache_misses": 0}
        if config.mode == "frozen" and cache is None:
            from bench.data.feature_cache import FeatureCache

            cache = FeatureCache()
        features = RunFeatures(config, encoder, manifest, cache, counters, progress, device=placed)

        fold_results, models = [], []
        for k, splits in enumerate(folds):
            train_rows = label_subset(splits["train"], config.label_fraction, k_shot=config.k_shot,
                                      label_column=view.label_column)
            if k > 0:
                encoder = make_encoder()  # every fold starts from the same weights
            result, model = _train_fold(config, k, splits, train_rows, encoder, view, label_index, features, counters,
                                        state_path(chash, k if len(folds) > 1 else None), force=force,
                                        progress=progress)
            fold_results.append(result)
            models.append(model)

        metrics = fold_metrics(fold_results)
        verification: dict[str, Any] = {}
        if config.task_type == "speaker-verification":
            verification = verify(models[0], view, features)
            metrics.update(verification.pop("metrics"))
        record = build_record(config, chash=chash, encoder_name=encoder_name, checkpoint=checkpoint,
                              ckpt_hash=ckpt_hash, encoder_params=encoder_params, manifest=manifest, view=view,
                              labels=labels, fold_results=fold_results, metrics=metrics, verification=verification,
                              counters=counters, denormals_flushed=denormals_flushed, device=placed)
        # The training task's own test is the main record; a sweep lists every task of its matrix here.
        for eval_task in (t for t in config.eval_tasks if t != config.task):
            cross = cross_evaluate(config, eval_task, models[0], encoder, label_index, cache, counters, progress,
                                   device=placed)
            append_record(records_path, cross_record(record, cross, round(time.time() - started, 2)))
        record["wall_seconds"] = round(time.time() - started, 2)
        append_record(records_path, record)
        _remove_training_states(chash, len(folds))
        return record


def _task_view(config: RunConfig, manifest) -> TaskView:
    """The task as the run reads it, refused when a split of any fold is empty."""
    view = build_task_view(manifest, config.task_type, label_map=config.label_map)
    for fold in view.folds or [view.splits]:
        for name in ("train", "valid", "test"):
            if fold[name].empty:
                raise ConfigError(f"{manifest.path}: the {name} split of the {config.task_type} task is empty; a "
                                  "run needs train, valid and test clips.")
    return view


def _encoder_factory(config: RunConfig, encoder_name: str, checkpoint: str | None) -> Callable[[], nn.Module]:
    def make_encoder():
        # Weights not loaded from a checkpoint come from the encoder's own initialiser, drawn under
        # the run's seed: the same seed gives the same random network in any process and after any
        # earlier run in a worker, so its features are shared through the cache across tasks.
        torch.manual_seed(config.seed)
        return create_encoder(encoder_name, checkpoint=checkpoint if config.mode != "scratch" else None,
                              **config.encoder_kwargs)

    return make_encoder


def _train_fold(config: RunConfig, k: int, splits: dict, train_rows, encoder: nn.Module, view: TaskView,
                label_index: dict[str, int], features: RunFeatures, counters: dict, state_file: Path, *,
                force: bool, progress: bool) -> tuple[dict[str, Any], nn.Module]:
    """Train a fresh head (and the encoder, unless frozen) on one fold; test its best-validation weights."""
    def labelled(rows):
        return rows, [label_index[x] for x in rows[view.label_column]]

    # Seed after the cache: building it draws random numbers (loader workers) that a hit does
    # not, and the training must not depend on whether the features were cached already.
    generator = seed_everything(config.seed)
    head = BiGRUClassifier(encoder.dim, len(label_index), config.hidden, config.layers, config.pooling)
    head.to(features.device)
    groups = [{"params": head.parameters(), "lr": config.lr, "base_lr": config.lr}]
    model: nn.Module = head
    if config.mode != "frozen":
        model = EncoderClassifier(encoder.to(features.device), head, config.precision)
        enc_lr = config.encoder_lr or config.lr
        groups.append({"params": encoder.parameters(), "lr": enc_lr, "base_lr": enc_lr})
    optimizer = torch.optim.Adam(groups)
    loaders = {"train": features.loader(*labelled(train_rows), shuffle=True, generator=generator),
               "valid": features.loader(*labelled(splits["valid"]))}
    history, best, resumed_from = fit(config, model, optimizer, loaders, generator, state_file, force=force,
                                      progress=progress, counters=counters, encoder_trains=config.mode != "frozen")
    targets, preds = predict(model, features.loader(*labelled(splits["test"])))
    if config.mode != "frozen":
        counters["encoder_forward_clips"] += len(targets)
    return {"fold": k, "train_rows": train_rows, "history": history, "best": best, "resumed_from": resumed_from,
            "test_ids": splits["test"]["clip_id"].tolist(), "targets": targets, "preds": preds,
            "metrics": classification_metrics(targets, preds, len(label_index))}, model


def _remove_training_states(chash: str, num_folds: int) -> None:
    """A finished run leaves no training state behind (its record holds what matters)."""
    for k in range(num_folds):
        state_path(chash, k if num_folds > 1 else None).unlink(missing_ok=True)
    try:
        run_dir(chash).rmdir()
    except OSError:
        pass
