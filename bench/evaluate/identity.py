"""A run's identity: its settings (RunConfig), the hash that records and skipping key on, and the
per-run lock and folder that the hash names.

A run is identified by its settings, the manifest's content and the checkpoint's content
(`config_hash`); a sweep skips a run whose hash is already recorded, and two processes that reach
the same run take turns on its lock (`exclusive_run`) instead of training it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.device import DEFAULT_PRECISION, check_precision
from bench.errors import ConfigError
from bench.evaluate.downstream import POOLINGS
from bench.files import exclusive_lock, file_sha256
from bench.paths import data_dir, expand_path
from bench.registry import split_spec

log = logging.getLogger("avbench.runner")

MODES = ("frozen", "finetune", "scratch")
LATER_SETTINGS = {"task_type": "words", "k_shot": None, "budget_steps": None, "eval_tasks": (),
                  "label_map": None, "precision": DEFAULT_PRECISION}


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
    precision: str = DEFAULT_PRECISION  # the encoder's forward passes (cache build, finetune): fp32 | bf16 | fp16

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
        check_precision(self.precision)
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


def checkpoint_of(config: RunConfig) -> str | None:
    """The checkpoint file a run loads: `checkpoint`, else the one its encoder spec names."""
    return expand_path(config.checkpoint) if config.checkpoint else split_spec(config.encoder)[1]


def run_identity(config: RunConfig, manifest_id: str, hashes: dict | None = None) -> tuple[str | None, str | None, str]:
    """(checkpoint path, checkpoint content hash, config hash) of a run: what skipping keys on.

    `hashes` memoises checkpoint hashes across calls (a sweep plans many runs of one checkpoint).
    """
    checkpoint = checkpoint_of(config)
    ckpt_hash = None
    if checkpoint:
        hashes = {} if hashes is None else hashes
        if checkpoint not in hashes:
            hashes[checkpoint] = file_hash(checkpoint) if Path(checkpoint).is_file() else None
        ckpt_hash = hashes[checkpoint]
        if ckpt_hash is None:
            raise ConfigError(f"{checkpoint}: checkpoint not found (encoder {config.encoder!r}).")
    return checkpoint, ckpt_hash, config_hash(config, manifest_id, ckpt_hash)


def run_dir(chash: str) -> Path:
    """The data folder of a run in progress: its per-round training states (removed when it ends)."""
    return data_dir() / "runs" / chash


def exclusive_run(chash: str, wait: bool = True):
    """Hold an exclusive flock on the run's lock file (data dir runs/<hash>.lock) while it runs; with
    `wait=False`, raise bench.files.LockBusy if another process holds it."""
    return exclusive_lock(run_dir(chash).with_suffix(".lock"), log,
                          "run %s is running in another process; waiting for it", chash, wait=wait)
