"""Pretraining as a stage of the pipeline: a checkpoint named by what made it, built once.

`pretraining_identity` hashes what determines the weights: the settings that shape them
(`PretrainConfig.identity()`, less the spelling of the data spec), the budget in steps, the
manifest's content id and the objective's code version (`register_pretext(..., version=)`). Not
in it: how often the run logs or saves, its loader workers and its device. `ensure_pretrained`
then gives the checkpoint of an identity at `$AVBENCH_DATA/pretrained/<identity>/`:

  - already complete there: reused, nothing trains;
  - killed part-way (checkpoint-last.pt short of the budget): resumed, and it ends at the weights
    an uninterrupted run reaches (the loop's resume is exact);
  - missing: trained.

An exclusive lock per identity makes two processes (two sweeps, two workers) that ask for the
same checkpoint build it once: the second waits, then finds it complete. A finished build
appends a pretraining record (identity, settings, manifest id, steps, seconds, device, final
loss, the checkpoint's file hash and a digest of its weights) to `records` when given.

Determinism (measured on the CPU, one thread, two processes, 4 steps of each of the seven
objectives): the weights and loss curves were bitwise equal for every objective. The record
carries both the file's hash and `weights_sha256`, a digest of the tensors alone, which stays
the same when only what is saved around them (the step, the format) changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import __version__
from bench.data.tasks import resolve_task
from bench.files import exclusive_lock, file_sha256
from bench.paths import data_dir
from bench.pretrain.batches import steps_per_epoch
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.pretrain.objective import pretext_version
from bench.records import append_record, git_commit

log = logging.getLogger("avbench.pretrain")

IDENTITY_FORMAT = 1


@dataclass(frozen=True)
class Pretrained:
    """A complete checkpoint of an identity: where it is, and whether this call trained it."""

    identity: str
    folder: Path
    built: bool
    summary: dict

    @property
    def encoder_path(self) -> Path:
        return self.folder / "encoder.pt"

    @property
    def spec(self) -> str:
        """The encoder spec that evaluates it: NAME@PATH."""
        return f"{self.summary['encoder']}@{self.encoder_path}"


def pretraining_identity(config: PretrainConfig, manifest_id: str, total_steps: int) -> str:
    """What makes the weights, as a 16-hex-digit name (see the module doc)."""
    settings = config.validated().identity()
    settings.pop("data")  # the manifest's content counts, not how it was named
    payload = {"format": IDENTITY_FORMAT, "settings": settings, "manifest_id": manifest_id,
               "total_steps": int(total_steps), "objective_version": pretext_version(config.encoder)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def total_steps_of(config: PretrainConfig, manifest) -> int:
    """The budget in optimizer steps, as the loop counts it (from the clips of the splits it reads)."""
    clips = int(manifest.table["split"].isin(config.splits).sum())
    return config.total_steps(steps_per_epoch(clips, config.batch_size))


def pretrained_dir(identity: str) -> Path:
    return data_dir() / "pretrained" / identity


def _exclusive(identity: str):
    return exclusive_lock(pretrained_dir(identity).with_suffix(".lock"), log,
                          "pretraining %s is being built by another process; waiting for it", identity)


def _complete(folder: Path, total_steps: int) -> dict | None:
    """The summary of a finished build in `folder`, else None."""
    try:
        summary = json.loads((folder / "pretrain.json").read_text())
    except (OSError, ValueError):
        return None
    done = summary.get("step", 0) >= total_steps and summary.get("total_steps") == total_steps
    return summary if done and (folder / "encoder.pt").is_file() else None


def weights_sha256(encoder_path: Path) -> str:
    """A digest of the encoder's tensors (names, shapes, dtypes, bytes): the same for the same
    weights, whatever bytes torch.save wrote around them."""
    import torch

    from bench.data.feature_cache import state_digest

    return state_digest(torch.load(encoder_path, map_location="cpu", weights_only=False)["encoder"])


def ensure_pretrained(config: PretrainConfig, *, device: str = "auto", records: str | Path | None = None,
                      progress: bool = True) -> Pretrained:
    """The complete checkpoint of `config`'s identity: reused, resumed or trained (module doc)."""
    config = config.validated()
    manifest = resolve_task(config.data, progress=progress)
    total = total_steps_of(config, manifest)
    identity = pretraining_identity(config, manifest.manifest_id, total)
    folder = pretrained_dir(identity)
    with _exclusive(identity):
        summary = _complete(folder, total)
        if summary is not None:
            log.info("pretraining %s (%s on %s) is complete at %s", identity, config.encoder, config.data, folder)
            return Pretrained(identity, folder, False, summary)
        resume = (folder / "checkpoint-last.pt").is_file()
        started = time.time()
        summary = pretrain(config, folder, resume=resume, progress=progress, device=device)
        if records is not None:
            append_record(records, _record(identity, config, manifest, summary, folder, time.time() - started, resume))
        return Pretrained(identity, folder, True, summary)


def _record(identity: str, config: PretrainConfig, manifest, summary: dict, folder: Path, seconds: float,
            resumed: bool) -> dict[str, Any]:
    encoder_path = folder / "encoder.pt"
    return {
        "kind": "pretraining", "identity": identity, "encoder": config.encoder,
        "settings": {**config.identity(), "steps": config.steps, "epochs": config.epochs},
        "objective_version": pretext_version(config.encoder), "manifest_id": manifest.manifest_id,
        "data_name": summary.get("data_name"), "clips": summary.get("clips"), "step": summary.get("step"),
        "total_steps": summary.get("total_steps"), "seconds_this_call": round(seconds, 1),
        "seconds": summary.get("seconds"), "resumed": resumed, "final_loss": summary.get("final_loss"),
        "final_losses": summary.get("final_row"), "device": summary.get("device"),
        "device_name": summary.get("device_name"), "precision": summary.get("precision"),
        "checkpoint_sha256": file_sha256(encoder_path), "weights_sha256": weights_sha256(encoder_path),
        "path": str(folder), "git_commit": git_commit(), "avbench_version": __version__,
    }
