"""The shared downstream training loop: rounds of training, validation after each, the best
validation round's weights kept, and every finished round saved so a killed run resumes.

Protocol defaults follow the paper (PROTOCOL.md): Adam, cross-entropy, 50 epochs, lr 1e-4 for
epochs 1-40 and 1e-5 for 41-50, batch 32. The model is chosen by validation accuracy; the test
accuracy reported is that of the best-validation epoch's weights (bench.evaluate.run tests once,
after training, on those weights).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.checkpoints import atomic_torch_save
from bench.device import autocast, grad_scaler
from bench.evaluate.downstream import BiGRUClassifier
from bench.evaluate.identity import RunConfig, run_dir

log = logging.getLogger("avbench.runner")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class EncoderClassifier(nn.Module):
    """Encoder and BiGRU trained together (finetune and scratch modes).

    The encoder's forward runs in the run's precision (autocast for bf16/fp16), the BiGRU head in
    fp32 as in frozen mode, where it reads fp32 copies of the cached features.
    """

    def __init__(self, encoder: nn.Module, head: BiGRUClassifier, precision: str = "fp32") -> None:
        super().__init__()
        self.encoder, self.head, self.precision = encoder, head, precision

    def features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(wav.device, self.precision):
            feats, feat_lengths = self.encoder(wav, lengths)
        return feats.float(), feat_lengths

    def embed(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head.embed(*self.features(wav, lengths))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(*self.features(wav, lengths))


def device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def state_path(chash: str, fold: int | None = None) -> Path:
    """The resumable state of a run's training (of one fold, for tasks with folds)."""
    return run_dir(chash) / ("state.pt" if fold is None else f"state-fold{fold}.pt")


def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) as class indices, in the loader's (fixed) order."""
    model.eval()
    device = device_of(model)
    targets, preds = [], []
    with torch.inference_mode():
        for x, lengths, y in loader:
            preds.append(model(x.to(device), lengths.to(device)).argmax(1).cpu().numpy())
            targets.append(y.numpy())
    return np.concatenate(targets), np.concatenate(preds)


def embed(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """Pooled clip embeddings (the layer before the classifier), in the loader's order."""
    model.eval()
    device = device_of(model)
    with torch.inference_mode():
        return np.concatenate([model.embed(x.to(device), lengths.to(device)).cpu().numpy() for x, lengths, _ in loader])


def rounds(config: RunConfig) -> list[int | None]:
    """Optimizer steps per training round: None is one full pass (the epoch budget).

    With a step budget the steps are spread evenly over `epochs` rounds, so validation, model
    selection and the lr drop happen as often as under the epoch budget; at 1% labels, where an
    epoch is a single batch, the budget is then the same number of updates as at 100%.
    """
    if config.budget_steps is None:
        return [None] * config.epochs
    total, n = config.budget_steps, config.epochs
    return [total * r // n - total * (r - 1) // n for r in range(1, n + 1)]


def batches(loader: DataLoader, steps: int | None):
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


def fit(config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, loaders: dict[str, DataLoader],
        generator: torch.Generator, state_file: Path, *, force: bool, progress: bool, counters: dict,
        encoder_trains: bool) -> tuple[list, dict, int | None]:
    """Train with per-round checkpoints and best-validation selection; returns (history, best, resumed_from)."""
    from tqdm import tqdm

    history: list[dict] = []
    best: dict[str, Any] = {"epoch": 0, "val_acc": -1.0, "state": None}
    device = device_of(model)
    cuda = device.type == "cuda"
    # Loss scaling only where fp16 runs a trained encoder (the head is always fp32); else a no-op.
    scaler = grad_scaler(device, config.precision if encoder_trains else "fp32")
    # Each finished round is checkpointed, so a killed run resumes where it stopped and, with the
    # shuffling generator restored, ends with the same numbers as an uninterrupted one.
    first_epoch, resumed_from = 1, None
    if force:
        state_file.unlink(missing_ok=True)
    elif state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        history, best = saved["history"], saved["best"]
        first_epoch = resumed_from = saved["epoch"] + 1
        log.info("resuming %s from round %d (%s)", config.encoder, first_epoch, state_file)
    per_round = rounds(config)
    bar = tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.encoder} {config.mode}", unit="epoch",
               initial=first_epoch - 1, total=config.epochs, disable=not progress)
    for epoch in bar:
        scale = config.lr_at(epoch) / config.lr
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        model.train()
        losses = []
        epoch_start = time.time()
        for x, lengths, y in batches(loaders["train"], per_round[epoch - 1]):
            x, lengths, y = (t.to(device, non_blocking=cuda) for t in (x, lengths, y))
            loss = nn.functional.cross_entropy(model(x, lengths), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} "
                                         f"({config.encoder} on {config.task}); lower the lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            if encoder_trains:
                counters["encoder_forward_clips"] += len(y)
        targets, preds = predict(model, loaders["valid"])
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
            atomic_torch_save(state_file, {"epoch": epoch, "model": model.state_dict(),
                                           "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                           "torch_rng": torch.get_rng_state(), "history": history, "best": best,
                                           **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})})
    model.load_state_dict(best["state"])
    return history, best, resumed_from
