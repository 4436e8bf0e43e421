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

import copy
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
from bench.data import CachedFeatureDataset, WaveformDataset, label_subset, pad_collate, subset_hash
from bench.downstream import POOLINGS, BiGRUClassifier
from bench.errors import ConfigError
from bench.manifest import file_sha256
from bench.records import append_record, completed, git_commit, read_records
from bench.registry import count_parameters, create_encoder, split_spec
from bench.tasks import resolve_task

log = logging.getLogger("avbench.runner")

MODES = ("frozen", "finetune", "scratch")


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
        if self.mode == "scratch" and (self.checkpoint or split_spec(self.encoder)[1]):
            raise ConfigError(f"mode scratch trains {self.encoder!r} from random weights: drop the checkpoint")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values).validated()

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
    payload = {"config": settings, "manifest_id": manifest_id, "checkpoint_hash": checkpoint_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def flush_denormals() -> bool:
    """Treat denormal floats as zero on CPU.

    Late in training, GRU gradients and Adam moments underflow into denormals, which x86 CPUs
    process about 25x slower: measured here, an epoch of 256 clips went from 7 s to 182 s. Values
    that small change nothing a classifier learns. Threads inherit the mode when they are created,
    so the CLI calls this before torch starts its thread pool.
    """
    return bool(torch.set_flush_denormal(True))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _reinitialise(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


class _EncoderClassifier(nn.Module):
    """Encoder and BiGRU trained together (finetune and scratch modes)."""

    def __init__(self, encoder: nn.Module, head: BiGRUClassifier) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, feat_lengths = self.encoder(wav, lengths)
        return self.head(feats, feat_lengths)


def _state_path(chash: str) -> Path:
    from bench.paths import data_dir

    return data_dir() / "runs" / chash / "state.pt"


def _evaluate(model: nn.Module, loader: DataLoader, num_classes: int) -> tuple[float, np.ndarray]:
    """Accuracy and confusion matrix [true, predicted]."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    with torch.inference_mode():
        for x, lengths, y in loader:
            pred = model(x, lengths).argmax(1)
            np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
    total = confusion.sum()
    return (float(np.trace(confusion) / total) if total else 0.0), confusion


def run_experiment(config: RunConfig, records_path: str | Path, *, force: bool = False, progress: bool = True,
                   cache=None) -> dict[str, Any]:
    """Run one experiment and append its record; return the record (or the existing one if skipped)."""
    from tqdm import tqdm

    config = config.validated()
    denormals_flushed = flush_denormals()
    started = time.time()
    manifest = resolve_task(config.task, progress=progress)
    encoder_name, at_checkpoint = split_spec(config.encoder)
    checkpoint = config.checkpoint or at_checkpoint
    ckpt_hash = file_hash(checkpoint) if checkpoint and Path(checkpoint).is_file() else None
    if checkpoint and ckpt_hash is None:
        raise ConfigError(f"{checkpoint}: checkpoint not found (encoder {config.encoder!r}).")
    chash = config_hash(config, manifest.manifest_id, ckpt_hash)
    if not force:
        done = completed(read_records(records_path)).get(chash)
        if done is not None:
            log.info("skipping %s on %s (%s): already recorded as %s", config.encoder, config.task, config.mode, chash)
            return {**done, "skipped": True}

    labels = manifest.labels
    label_index = {label: i for i, label in enumerate(labels)}
    train_rows = label_subset(manifest.split("train"), config.label_fraction)
    splits = {"train": train_rows, "valid": manifest.split("valid"), "test": manifest.split("test")}
    for name, rows in splits.items():
        if rows.empty:
            raise ConfigError(f"{manifest.path}: the {name} split is empty; a run needs train, valid and test clips.")

    encoder = create_encoder(encoder_name, checkpoint=checkpoint if config.mode != "scratch" else None,
                             **config.encoder_kwargs)
    if config.mode == "scratch":
        _reinitialise(encoder, config.seed)
    if config.mode != "frozen" and count_parameters(encoder) == 0:
        raise ConfigError(f"encoder {encoder_name!r} has no trainable parameters: use --mode frozen")

    counters = {"encoder_forward_clips": 0, "cache_hits": 0, "cache_misses": 0}
    if config.mode == "frozen":
        if cache is None:
            from bench.cache import FeatureCache

            cache = FeatureCache()
        cached = cache.get_or_build(encoder, manifest, progress=progress)
        counters["encoder_forward_clips"] += cached.stats.forward_clips
        counters["cache_hits" if cached.stats.hit else "cache_misses"] += 1
    # Seed after the cache: building it draws random numbers (loader workers) that a hit does
    # not, and the training must not depend on whether the features were cached already.
    generator = seed_everything(config.seed)
    if config.mode == "frozen":
        datasets = {name: CachedFeatureDataset(cached, rows["clip_id"].tolist(),
                                               [label_index[x] for x in rows["label"]])
                    for name, rows in splits.items()}
        head = BiGRUClassifier(encoder.dim, len(labels), config.hidden, config.layers, config.pooling)
        model: nn.Module = head
        groups = [{"params": head.parameters(), "lr": config.lr, "base_lr": config.lr}]
    else:
        datasets = {name: WaveformDataset(manifest, rows, [label_index[x] for x in rows["label"]])
                    for name, rows in splits.items()}
        head = BiGRUClassifier(encoder.dim, len(labels), config.hidden, config.layers, config.pooling)
        model = _EncoderClassifier(encoder, head)
        enc_lr = config.encoder_lr or config.lr
        groups = [{"params": head.parameters(), "lr": config.lr, "base_lr": config.lr},
                  {"params": encoder.parameters(), "lr": enc_lr, "base_lr": enc_lr}]
    optimizer = torch.optim.Adam(groups)
    loaders = {
        "train": DataLoader(datasets["train"], batch_size=config.batch_size, shuffle=True, generator=generator,
                            collate_fn=pad_collate),
        "valid": DataLoader(datasets["valid"], batch_size=max(64, config.batch_size), collate_fn=pad_collate),
        "test": DataLoader(datasets["test"], batch_size=max(64, config.batch_size), collate_fn=pad_collate),
    }

    history = []
    best = {"epoch": 0, "val_acc": -1.0, "state": None}
    # Each finished epoch is checkpointed, so a killed run resumes where it stopped and, with the
    # shuffling generator restored, ends with the same numbers as an uninterrupted one.
    state_path = _state_path(chash)
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
        log.info("resuming %s from epoch %d (%s)", config.encoder, first_epoch, state_path)
    bar = tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.encoder} {config.mode}", unit="epoch",
               initial=first_epoch - 1, total=config.epochs, disable=not progress)
    for epoch in bar:
        scale = config.lr_at(epoch) / config.lr
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        model.train()
        losses = []
        epoch_start = time.time()
        for x, lengths, y in loaders["train"]:
            loss = nn.functional.cross_entropy(model(x, lengths), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} "
                                         f"({config.encoder} on {config.task}); lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if config.mode != "frozen":
                counters["encoder_forward_clips"] += len(y)
        val_acc, _ = _evaluate(model, loaders["valid"], len(labels))
        if config.mode != "frozen":
            counters["encoder_forward_clips"] += len(datasets["valid"])
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 6),
                        "val_acc": round(val_acc, 6), "lr": config.lr_at(epoch),
                        "seconds": round(time.time() - epoch_start, 2)})
        if val_acc > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val_acc, "state": copy.deepcopy(model.state_dict())}
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val=f"{val_acc:.3f}", best=f"{best['val_acc']:.3f}@{best['epoch']}")
        if epoch < config.epochs:
            atomic_torch_save(state_path, {"epoch": epoch, "model": model.state_dict(),
                                           "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                           "torch_rng": torch.get_rng_state(), "history": history, "best": best})

    model.load_state_dict(best["state"])
    test_acc, confusion = _evaluate(model, loaders["test"], len(labels))
    if config.mode != "frozen":
        counters["encoder_forward_clips"] += len(datasets["test"])
    per_class = {label: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
                 for i, label in enumerate(labels)}
    record = {
        "status": "ok",
        "config_hash": chash,
        "config": asdict(config),
        # Tables show this: the name, and for pretrained weights their content hash, not a local path.
        "encoder": encoder_name if ckpt_hash is None else f"{encoder_name}@{ckpt_hash[:8]}",
        "encoder_name": encoder_name,
        "checkpoint_path": str(checkpoint) if checkpoint else None,
        "checkpoint_hash": ckpt_hash,
        "encoder_params": count_parameters(encoder),
        "task": config.task,
        "task_name": manifest.meta.get("name", manifest.path.parent.name),
        "manifest_id": manifest.manifest_id,
        "mode": config.mode,
        "label_fraction": config.label_fraction,
        "seed": config.seed,
        "train_clips": len(train_rows),
        "train_subset_hash": subset_hash(train_rows["clip_id"]),
        "labels": labels,
        "history": history,
        "best_epoch": best["epoch"],
        "val_acc": round(best["val_acc"], 6),
        "test_acc": round(test_acc, 6),
        "per_class_test_acc": per_class,
        "confusion": confusion.tolist(),
        "counters": counters,
        "wall_seconds": round(time.time() - started, 2),
        "resumed_from_epoch": resumed_from,
        "git_commit": git_commit(),
        "avbench_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "flush_denormal": denormals_flushed,
    }
    append_record(records_path, record)
    if state_path.parent.is_dir():
        import shutil

        shutil.rmtree(state_path.parent, ignore_errors=True)
    return record
