"""One run of the shared evaluation loop: encoder x task x mode x label fraction x seed -> record.

Protocol defaults follow the paper (PROTOCOL.md): Adam, cross-entropy, 50 epochs, lr 1e-4 for
epochs 1-40 and 1e-5 for 41-50, batch 32. The model is chosen by validation accuracy; the test
accuracy reported is that of the best-validation epoch's weights (test is evaluated once, after
training, on those weights).

Modes:
  frozen    features are computed once into the feature cache and the encoder never trains;
  finetune  the encoder (from its checkpoint) trains with the classifier, at `encoder_lr`;
  scratch   the encoder is randomly initialised and trains with the classifier on labels only.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench import __version__
from bench.checkpoints import atomic_torch_save
from bench.data.datasets import CachedFeatureDataset, WaveformDataset, label_subset, pad_collate, subset_hash
from bench.evaluate.downstream import POOLINGS, BiGRUClassifier
from bench.errors import ConfigError
from bench.files import file_sha256
from bench.paths import expand_path
from bench.records import append_record, completed, git_commit, read_records
from bench.registry import count_parameters, create_encoder, split_spec
from bench.runtime import flush_denormals
from bench.data.tasks import resolve_task

log = logging.getLogger("avbench.runner")

MODES = ("frozen", "finetune", "scratch")
LATER_SETTINGS = {"task_type": "words", "k_shot": None, "budget_steps": None, "eval_tasks": (),
                  "label_map": None}


@dataclass(frozen=True)
class RunConfig:
    encoder: str
    task: str
    mode: str = "frozen"
    epochs: int = 50
    lr: float = 1e-4
    lr_drop_epoch: int | None = 40      # after this epoch the lr becomes lr_after_drop
    lr_after_drop: float = 1e-5
    encoder_lr: float | None = None     # finetune/scratch; None means the same as lr
    batch_size: int = 32
    label_fraction: float = 1.0
    seed: int = 0
    pooling: str = "last"
    hidden: int = 256
    layers: int = 2
    checkpoint: str | None = None
    encoder_kwargs: dict = field(default_factory=dict)
    task_type: str = "words"            # words | speaker-id | speaker-verification | emotion
    k_shot: int | None = None           # k labelled clips per class instead of a label fraction
    budget_steps: int | None = None     # a fixed number of optimizer steps instead of `epochs` passes
    eval_tasks: tuple = ()              # other tasks (same label space) to test the trained model on
    label_map: str | None = None        # emotion: map each corpus's labels to a shared space (label_maps/)

    def validated(self) -> "RunConfig":
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be positive (got {self.epochs}, {self.batch_size})")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.lr <= 0 or self.lr_after_drop <= 0 or (self.encoder_lr is not None and self.encoder_lr <= 0):
            raise ConfigError("learning rates must be positive")
        if self.k_shot is not None and (self.k_shot < 1 or self.label_fraction != 1.0):
            raise ConfigError(f"k_shot must be a positive count with label_fraction 1.0, got k_shot={self.k_shot}, "
                              f"label_fraction={self.label_fraction}")
        if self.budget_steps is not None and self.budget_steps < self.epochs:
            raise ConfigError(f"budget_steps ({self.budget_steps}) must be at least epochs ({self.epochs}): the "
                              "steps are spread over `epochs` validation rounds")
        if self.mode == "scratch" and (self.checkpoint or split_spec(self.encoder)[1]):
            raise ConfigError(f"mode scratch trains {self.encoder!r} from random weights: drop the checkpoint")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; known: {sorted(known)}")
        if isinstance(values.get("eval_tasks"), (list, str)):
            tasks = values["eval_tasks"]
            values = {**values, "eval_tasks": tuple([tasks] if isinstance(tasks, str) else tasks)}
        return cls(**values).validated()

    def budget(self) -> dict[str, Any]:
        if self.budget_steps is not None:
            return {"unit": "steps", "value": self.budget_steps}
        return {"unit": "epochs", "value": self.epochs}

    def lr_at(self, epoch: int) -> float:
        """Learning rate of the classifier in 1-based `epoch`."""
        return self.lr_after_drop if self.lr_drop_epoch is not None and epoch > self.lr_drop_epoch else self.lr


def file_hash(path: str | Path | None) -> str | None:
    return file_sha256(path)[:16] if path else None


def config_hash(config: RunConfig, manifest_id: str, checkpoint_hash: str | None) -> str:
    """Identity of a run: its settings, the manifest content and the checkpoint content.

    A checkpoint counts by its content, not its path: the same weights under another folder (a
    colleague's clone, a moved run) are the same run, and overwritten weights are a new one.
    """
    settings = {**asdict(config), "encoder": split_spec(config.encoder)[0], "checkpoint": None}
    # Settings added after records were first published count only when set, so the runs recorded
    # before them keep their hashes (and are not re-run).
    for name, default in LATER_SETTINGS.items():
        if settings[name] == default:
            del settings[name]
    payload = {"config": settings, "manifest_id": manifest_id, "checkpoint_hash": checkpoint_hash}
    if config.mode == "scratch":
        # Scratch runs once reset every layer to torch's default init, overriding the encoder's own
        # (kaiming fan-out for the ResNet); runs from its own initialiser are new runs.
        payload["init"] = "encoder"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_identity(config: RunConfig, manifest_id: str, hashes: dict | None = None) -> tuple[str | None, str | None, str]:
    """(checkpoint path, checkpoint content hash, config hash) of a run: what skipping keys on.

    `hashes` memoises checkpoint hashes across calls (a sweep plans many runs of one checkpoint).
    """
    checkpoint = expand_path(config.checkpoint) if config.checkpoint else split_spec(config.encoder)[1]
    ckpt_hash = None
    if checkpoint:
        hashes = {} if hashes is None else hashes
        if checkpoint not in hashes:
            hashes[checkpoint] = file_hash(checkpoint) if Path(checkpoint).is_file() else None
        ckpt_hash = hashes[checkpoint]
        if ckpt_hash is None:
            raise ConfigError(f"{checkpoint}: checkpoint not found (encoder {config.encoder!r}).")
    return checkpoint, ckpt_hash, config_hash(config, manifest_id, ckpt_hash)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class _EncoderClassifier(nn.Module):
    """Encoder and BiGRU trained together (finetune and scratch modes)."""

    def __init__(self, encoder: nn.Module, head: BiGRUClassifier) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def embed(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head.embed(*self.encoder(wav, lengths))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, feat_lengths = self.encoder(wav, lengths)
        return self.head(feats, feat_lengths)


def _state_path(chash: str, fold: int | None = None) -> Path:
    from bench.paths import data_dir

    return data_dir() / "runs" / chash / ("state.pt" if fold is None else f"state-fold{fold}.pt")


@contextlib.contextmanager
def _exclusive_run(chash: str):
    """Hold an exclusive flock on the run's lock file (data dir runs/<hash>.lock) while it runs."""
    path = _state_path(chash).parent.with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("run %s is running in another process; waiting for it", chash)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) as class indices, in the loader's (fixed) order."""
    model.eval()
    targets, preds = [], []
    with torch.inference_mode():
        for x, lengths, y in loader:
            preds.append(model(x, lengths).argmax(1).numpy())
            targets.append(y.numpy())
    return np.concatenate(targets), np.concatenate(preds)


def _embed(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """Pooled clip embeddings (the layer before the classifier), in the loader's order."""
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model.embed(x, lengths).numpy() for x, lengths, _ in loader])


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
    from bench.evaluate.metrics import accuracy, unweighted_average_recall

    return {"accuracy": round(accuracy(targets, preds), 6),
            "uar": round(unweighted_average_recall(targets, preds, num_classes), 6)}


def _rounds(config: RunConfig) -> list[int | None]:
    """Optimizer steps per training round: None is one full pass (the epoch budget).

    With a step budget the steps are spread evenly over `epochs` rounds, so validation, model
    selection and the lr drop happen as often as under the epoch budget; at 1% labels, where an
    epoch is a single batch, the budget is then the same number of updates as at 100%.
    """
    if config.budget_steps is None:
        return [None] * config.epochs
    total, n = config.budget_steps, config.epochs
    return [total * r // n - total * (r - 1) // n for r in range(1, n + 1)]


def _batches(loader: DataLoader, steps: int | None):
    """One pass over the loader, or exactly `steps` batches, reshuffling at each new pass."""
    if steps is None:
        yield from loader
        return
    done = 0
    while done < steps:
        for batch in loader:
            yield batch
            done += 1
            if done == steps:
                return


def _fit(config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, loaders: dict[str, DataLoader],
         generator: torch.Generator, state_path: Path, *, force: bool, progress: bool, counters: dict,
         encoder_trains: bool) -> tuple[list, dict, int | None]:
    """Train with per-round checkpoints and best-validation selection; returns (history, best, resumed_from)."""
    from tqdm import tqdm

    history: list[dict] = []
    best: dict[str, Any] = {"epoch": 0, "val_acc": -1.0, "state": None}
    # Each finished round is checkpointed, so a killed run resumes where it stopped and, with the
    # shuffling generator restored, ends with the same numbers as an uninterrupted one.
    first_epoch, resumed_from = 1, None
    if force:
        state_path.unlink(missing_ok=True)
    elif state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history, best = saved["history"], saved["best"]
        first_epoch = resumed_from = saved["epoch"] + 1
        log.info("resuming %s from round %d (%s)", config.encoder, first_epoch, state_path)
    rounds = _rounds(config)
    bar = tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.encoder} {config.mode}", unit="epoch",
               initial=first_epoch - 1, total=config.epochs, disable=not progress)
    for epoch in bar:
        scale = config.lr_at(epoch) / config.lr
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        model.train()
        losses = []
        epoch_start = time.time()
        for x, lengths, y in _batches(loaders["train"], rounds[epoch - 1]):
            loss = nn.functional.cross_entropy(model(x, lengths), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} "
                                         f"({config.encoder} on {config.task}); lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if encoder_trains:
                counters["encoder_forward_clips"] += len(y)
        targets, preds = _predict(model, loaders["valid"])
        val_acc = float((targets == preds).mean())
        if encoder_trains:
            counters["encoder_forward_clips"] += len(targets)
        history.append({"epoch": epoch, "steps": len(losses), "train_loss": round(float(np.mean(losses)), 6),
                        "val_acc": round(val_acc, 6), "lr": config.lr_at(epoch),
                        "seconds": round(time.time() - epoch_start, 2)})
        if val_acc > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val_acc, "state": copy.deepcopy(model.state_dict())}
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val=f"{val_acc:.3f}",
                        best=f"{best['val_acc']:.3f}@{best['epoch']}")
        if epoch < config.epochs:
            atomic_torch_save(state_path, {"epoch": epoch, "model": model.state_dict(),
                                           "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                           "torch_rng": torch.get_rng_state(), "history": history, "best": best})
    model.load_state_dict(best["state"])
    return history, best, resumed_from


def clip_order_hash(clip_ids) -> str:
    """Identity of an ordered list of test clips: runs compare clip by clip only when it matches."""
    return hashlib.sha256("\n".join(clip_ids).encode()).hexdigest()[:16]


class _Features:
    """Datasets for a manifest's clips: cached encoder features (frozen) or waveforms (trained encoder)."""

    def __init__(self, config: RunConfig, encoder: nn.Module, manifest, cache, counters: dict, progress: bool):
        self.manifest, self.cached = manifest, None
        if config.mode == "frozen":
            cached = cache.get_or_build(encoder, manifest, progress=progress)
            counters["encoder_forward_clips"] += cached.stats.forward_clips
            counters["cache_hits" if cached.stats.hit else "cache_misses"] += 1
            if cached.stats.derived_from:  # a miss served by copying another entry's clips
                counters["cache_misses_copied"] = counters.get("cache_misses_copied", 0) + 1
            self.cached = cached

    def dataset(self, rows, labels: list[int]):
        if self.cached is not None:
            return CachedFeatureDataset(self.cached, rows["clip_id"].tolist(), labels)
        return WaveformDataset(self.manifest, rows, labels)


def run_experiment(config: RunConfig, records_path: str | Path, *, force: bool = False, progress: bool = True,
                   cache=None) -> dict[str, Any]:
    """Run one experiment and append its record(s); return the record (or the existing one if skipped).

    A run trains on `config.task` (every fold of it, where the task defines folds) and tests there;
    each of `config.eval_tasks` then adds a record of the same trained model tested on that task.
    The main record is appended last, so a run killed in between is re-run whole.
    """
    from bench.data.task_types import build_task_view

    config = config.validated()
    denormals_flushed = flush_denormals()
    started = time.time()
    manifest = resolve_task(config.task, progress=progress)
    encoder_name = split_spec(config.encoder)[0]
    checkpoint, ckpt_hash, chash = run_identity(config, manifest.manifest_id)
    if not force:
        done = completed(read_records(records_path)).get(chash)
        if done is not None:
            log.info("skipping %s on %s (%s): already recorded as %s", config.encoder, config.task, config.mode, chash)
            return {**done, "skipped": True}

    # One process per run: a second sweep (or a worker left over from a killed one) that reaches
    # the same run waits here, then finds it recorded instead of training it again.
    with _exclusive_run(chash):
        if not force and chash in completed(read_records(records_path)):
            log.info("skipping %s on %s: recorded by another process meanwhile", config.encoder, config.task)
            return {**completed(read_records(records_path))[chash], "skipped": True}
        view = build_task_view(manifest, config.task_type, label_map=config.label_map)
        labels = list(view.labels)
        label_index = {label: i for i, label in enumerate(labels)}
        folds = view.folds or [view.splits]
        for fold in folds:
            for name in ("train", "valid", "test"):
                if fold[name].empty:
                    raise ConfigError(f"{manifest.path}: the {name} split of the {config.task_type} task is empty; a "
                                      "run needs train, valid and test clips.")

        def make_encoder():
            # Weights not loaded from a checkpoint come from the encoder's own initialiser, drawn under
            # the run's seed: the same seed gives the same random network in any process and after any
            # earlier run in a worker, so its features are shared through the cache across tasks.
            torch.manual_seed(config.seed)
            return create_encoder(encoder_name, checkpoint=checkpoint if config.mode != "scratch" else None,
                                  **config.encoder_kwargs)

        encoder = make_encoder()
        if config.mode != "frozen" and count_parameters(encoder) == 0:
            raise ConfigError(f"encoder {encoder_name!r} has no trainable parameters: use --mode frozen")
        encoder_params = count_parameters(encoder)
        counters = {"encoder_forward_clips": 0, "cache_hits": 0, "cache_misses": 0}
        if config.mode == "frozen" and cache is None:
            from bench.data.feature_cache import FeatureCache

            cache = FeatureCache()
        features = _Features(config, encoder, manifest, cache, counters, progress)

        def loader(dataset, shuffle=False, generator=None):
            return DataLoader(dataset, batch_size=config.batch_size if shuffle else max(64, config.batch_size),
                              shuffle=shuffle, generator=generator, collate_fn=pad_collate)

        def rows_and_labels(rows):
            return rows, [label_index[x] for x in rows[view.label_column]]

        fold_results, models = [], []
        for k, splits in enumerate(folds):
            train_rows = label_subset(splits["train"], config.label_fraction, k_shot=config.k_shot,
                                      label_column=view.label_column)
            if k > 0:
                encoder = make_encoder()  # every fold starts from the same weights
            # Seed after the cache: building it draws random numbers (loader workers) that a hit does
            # not, and the training must not depend on whether the features were cached already.
            generator = seed_everything(config.seed)
            head = BiGRUClassifier(encoder.dim, len(labels), config.hidden, config.layers, config.pooling)
            groups = [{"params": head.parameters(), "lr": config.lr, "base_lr": config.lr}]
            model: nn.Module = head
            if config.mode != "frozen":
                model = _EncoderClassifier(encoder, head)
                enc_lr = config.encoder_lr or config.lr
                groups.append({"params": encoder.parameters(), "lr": enc_lr, "base_lr": enc_lr})
            optimizer = torch.optim.Adam(groups)
            loaders = {"train": loader(features.dataset(*rows_and_labels(train_rows)), True, generator),
                       "valid": loader(features.dataset(*rows_and_labels(splits["valid"])))}
            history, best, resumed_from = _fit(
                config, model, optimizer, loaders, generator, _state_path(chash, k if len(folds) > 1 else None),
                force=force, progress=progress, counters=counters, encoder_trains=config.mode != "frozen")
            targets, preds = _predict(model, loader(features.dataset(*rows_and_labels(splits["test"]))))
            if config.mode != "frozen":
                counters["encoder_forward_clips"] += len(targets)
            fold_results.append({"fold": k, "train_rows": train_rows, "history": history, "best": best,
                                 "resumed_from": resumed_from, "test_ids": splits["test"]["clip_id"].tolist(),
                                 "targets": targets, "preds": preds,
                                 "metrics": classification_metrics(targets, preds, len(labels))})
            models.append(model)

        targets = np.concatenate([f["targets"] for f in fold_results])
        preds = np.concatenate([f["preds"] for f in fold_results])
        test_ids = [c for f in fold_results for c in f["test_ids"]]
        confusion = confusion_matrix(targets, preds, len(labels))
        # Over folds the metrics are averaged, as SUPERB does for IEMOCAP's sessions.
        metrics = {name: round(float(np.mean([f["metrics"][name] for f in fold_results])), 6)
                   for name in fold_results[0]["metrics"]}
        extra: dict[str, Any] = {}
        if config.task_type == "speaker-verification":
            extra = _verify(models[0], view, features, loader)
            metrics.update(extra.pop("metrics"))
        first = fold_results[0]
        record = {
            "status": "ok",
            "config_hash": chash,
            "config": asdict(config),
            # Tables show this: the name, and for pretrained weights their content hash, not a local path.
            "encoder": encoder_name if ckpt_hash is None else f"{encoder_name}@{ckpt_hash[:8]}",
            "encoder_name": encoder_name,
            "checkpoint_path": str(checkpoint) if checkpoint else None,
            "checkpoint_hash": ckpt_hash,
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
            "history": first["history"] if len(folds) == 1 else [f["history"] for f in fold_results],
            "best_epoch": first["best"]["epoch"],
            "val_acc": round(float(np.mean([f["best"]["val_acc"] for f in fold_results])), 6),
            "test_acc": metrics["accuracy"],
            "metrics": metrics,
            "folds": None if len(folds) == 1 else [{"fold": f["fold"], "best_epoch": f["best"]["epoch"],
                                                   "val_acc": round(f["best"]["val_acc"], 6), "metrics": f["metrics"]}
                                                  for f in fold_results],
            "per_class_test_acc": per_class_accuracy(confusion, labels),
            "confusion": confusion.tolist(),
            "test_clip_ids_hash": clip_order_hash(test_ids),
            "test_targets": targets.tolist(),
            "test_predictions": preds.tolist(),
            **extra,
            "counters": counters,
            "resumed_from_epoch": first["resumed_from"],
            "git_commit": git_commit(),
            "avbench_version": __version__,
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "flush_denormal": denormals_flushed,
        }
        # The training task's own test is the main record; a sweep lists every task of its matrix here.
        for eval_task in (t for t in config.eval_tasks if t != config.task):
            cross = _cross_evaluate(config, eval_task, models[0], encoder, label_index, cache, counters, loader,
                                    progress)
            append_record(records_path, {**record, **cross, "config_hash": hashlib.sha256(
                f"{chash}:{cross['manifest_id']}".encode()).hexdigest()[:16], "eval_of": chash,
                "wall_seconds": round(time.time() - started, 2)})
        record["wall_seconds"] = round(time.time() - started, 2)
        append_record(records_path, record)
        for k in range(len(folds)):
            state = _state_path(chash, k if len(folds) > 1 else None)
            state.unlink(missing_ok=True)
        try:
            _state_path(chash).parent.rmdir()
        except OSError:
            pass
        return record


def _verify(model: nn.Module, view, features: _Features, loader) -> dict[str, Any]:
    """Cosine scoring of the view's trials with the trained head's pooled embeddings."""
    from bench.evaluate.metrics import equal_error_rate, min_dcf

    trials = view.trials
    clips = sorted(set(trials["enroll"]) | set(trials["test"]))
    table = features.manifest.table.set_index("clip_id")
    missing = [c for c in clips if c not in table.index]
    if missing:
        raise ConfigError(f"{features.manifest.path}: {len(missing)} trial clip(s) are not in the manifest, "
                          f"e.g. {missing[:3]}; regenerate the trial list.")
    rows = table.loc[clips].reset_index()
    emb = _embed(model, loader(features.dataset(rows, [0] * len(rows))))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    index = {c: i for i, c in enumerate(clips)}
    scores = np.einsum("ij,ij->i", emb[[index[c] for c in trials["enroll"]]], emb[[index[c] for c in trials["test"]]])
    labels = trials["label"].to_numpy().astype(int)
    return {"metrics": {"eer": round(equal_error_rate(scores, labels), 6),
                        "min_dcf": round(min_dcf(scores, labels, p_target=0.01), 6)},
            "trial_scores": [round(float(x), 6) for x in scores], "trial_labels": labels.tolist(),
            "trials_hash": clip_order_hash([f"{a} {b}" for a, b in zip(trials["enroll"], trials["test"])])}


def _cross_evaluate(config: RunConfig, eval_task: str, model: nn.Module, encoder: nn.Module,
                    label_index: dict[str, int], cache, counters: dict, loader, progress: bool) -> dict[str, Any]:
    """The trained model tested on another task's test split, on the labels both tasks share."""
    from bench.data.task_types import build_task_view

    manifest = resolve_task(eval_task, progress=progress)
    view = build_task_view(manifest, config.task_type, label_map=config.label_map)
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
    features = _Features(config, encoder, manifest, cache, counters, progress)
    targets, preds = _predict(model, loader(features.dataset(test, [label_index[x] for x in test[view.label_column]])))
    confusion = confusion_matrix(targets, preds, len(label_index))
    metrics = classification_metrics(targets, preds, len(label_index))
    return {"eval_task": eval_task, "task_name_eval": manifest.meta.get("name", manifest.path.parent.name),
            "manifest_id": manifest.manifest_id, "metrics": metrics, "test_acc": metrics["accuracy"],
            "confusion": confusion.tolist(), "test_clip_ids_hash": clip_order_hash(test["clip_id"].tolist()),
            "test_targets": targets.tolist(), "test_predictions": preds.tolist(),
            "per_class_test_acc": per_class_accuracy(confusion, list(label_index)),
            "eval_dropped_labels": {str(k): int(v) for k, v in dropped.items()}}
