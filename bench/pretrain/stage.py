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
objectives): the weights and loss curves were bitwise equal for every objective. Rebuilt here on
one thread, the committed 400-step apc, wav2vec and logmel-l1 checkpoints reproduced their file
hashes; av-audio and av-visual did not (their curves agree to 5-6 digits, then drift), having been
built in an environment that was not recorded then (results/runs.pretraining.jsonl).
The thread count is part of what makes the weights of the convolutional objectives: 4 steps of
av-joint and of pase+ with 2 threads end at other weights than with 1 (most likely because the
backward pass sums the batch's weight gradients in per-thread chunks, so the order of the float
additions follows the thread count), while apc's are the same. So a checkpoint is reproduced on
the same device with the same thread count (the sweep's local workers get cores // workers
threads: one each by default), and the record names `threads`. It carries both the file's hash
and `weights_sha256`, a digest of the tensors alone, which stays the same when only what is saved
around them (the step, the format) changes.
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
from bench.paths import pretrained_dir
from bench.pretrain.batches import steps_per_epoch
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.pretrain.objective import objective_version
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
               "total_steps": int(total_steps), "objective_version": objective_version(config.objective_name)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def total_steps_of(config: PretrainConfig, manifest) -> int:
    """The budget in optimizer steps, as the loop counts it (from the clips of the splits it reads)."""
    clips = int(manifest.table["split"].isin(config.splits).sum())
    return config.total_steps(steps_per_epoch(clips, config.batch_size))


@dataclass(frozen=True)
class Identity:
    """A pretraining config resolved against its data: its identity, budget in steps and manifest."""

    identity: str
    total_steps: int
    manifest: Any

    @property
    def folder(self) -> Path:
        return pretrained_dir(self.identity)


def resolve_identity(config: PretrainConfig, progress: bool = False) -> Identity:
    """Resolve (and, for the embedded corpus, build) the data, then name what the weights will be."""
    config = config.validated()
    manifest = resolve_task(config.data, progress=progress)
    total = total_steps_of(config, manifest)
    return Identity(pretraining_identity(config, manifest.manifest_id, total), total, manifest)


def _exclusive(identity: str):
    return exclusive_lock(pretrained_dir(identity).with_suffix(".lock"), log,
                          "pretraining %s is being built by another process; waiting for it", identity)


def complete_summary(folder: Path, total_steps: int) -> dict | None:
    """The summary (pretrain.json) of a finished build in `folder`, else None."""
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
                      progress: bool = True, name: str | None = None) -> Pretrained:
    """The complete checkpoint of `config`'s identity: reused, resumed or trained (module doc).

    `records`: the pretraining records file a build appends to; `name`: the sweep entry that asked
    for it, kept in that record."""
    config = config.validated()
    resolved = resolve_identity(config, progress=progress)
    identity, folder = resolved.identity, resolved.folder
    with _exclusive(identity):
        summary = complete_summary(folder, resolved.total_steps)
        if summary is not None:
            log.info("pretraining %s (%s on %s) is complete at %s", identity, config.encoder, config.data, folder)
            return Pretrained(identity, folder, False, summary)
        resume = (folder / "checkpoint-last.pt").is_file()
        if resume:
            log.info("pretraining %s: resuming the killed build in %s", identity, folder)
        started = time.time()
        summary = pretrain(config, folder, resume=resume, progress=progress, device=device)
        if records is not None:
            record_build(records, identity, config, resolved.manifest, summary, folder, time.time() - started,
                         resume, name)
        return Pretrained(identity, folder, True, summary)


def record_build(records: str | Path, identity: str, config: PretrainConfig, manifest, summary: dict,
                 folder: Path, seconds: float, resumed: bool, name: str | None) -> dict:
    """Append the pretraining record of the build in `folder` (with its curves kept beside the
    records) and return it."""
    record = _record(identity, config, manifest, summary, folder, seconds, resumed)
    record = {**record, "name": name,
              "files": _keep_curves(folder, Path(records), identity, record["checkpoint_hash"])}
    append_record(records, record)
    return record


KEPT_FILES = ("pretrain.json", "loss.csv", "loss.png", "visual_generation.txt")


def _keep_curves(folder: Path, records: Path, identity: str, checkpoint_hash: str) -> str:
    """Copy the build's summary, loss curve and frame grids beside the records (the checkpoints stay
    in the data folder, out of git); return that folder relative to the records' folder.

    The folder is named by the identity. When it already holds another build's curves (the same
    identity built again, e.g. on another machine, whose floating point gives other weights), this
    build's go to IDENTITY-CHECKPOINT_HASH instead, so no record loses its curves."""
    import shutil

    kept = records.parent / "pretraining" / identity
    earlier = kept / "loss.csv"
    if earlier.is_file() and earlier.read_bytes() != (folder / "loss.csv").read_bytes():
        kept = kept.with_name(f"{identity}-{checkpoint_hash}")
    kept.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if path.name in KEPT_FILES or (path.name.startswith("frames-") and path.suffix == ".png"):
            shutil.copyfile(path, kept / path.name)
    return f"pretraining/{kept.name}"


def _record(identity: str, config: PretrainConfig, manifest, summary: dict, folder: Path, seconds: float,
            resumed: bool) -> dict[str, Any]:
    import torch

    encoder_path = folder / "encoder.pt"
    checkpoint_sha256 = file_sha256(encoder_path)
    return {
        "kind": "pretraining", "status": "ok", "identity": identity, "encoder": config.encoder,
        "settings": {**config.identity(), "steps": config.steps, "epochs": config.epochs},
        "objective": config.objective_name, "labels": summary.get("labels"),
        "objective_version": objective_version(config.objective_name), "manifest_id": manifest.manifest_id,
        "data_name": summary.get("data_name"), "clips": summary.get("clips"), "step": summary.get("step"),
        "total_steps": summary.get("total_steps"), "seconds_this_call": round(seconds, 1),
        "seconds": summary.get("seconds"), "resumed": resumed, "final_loss": summary.get("final_loss"),
        "final_losses": summary.get("final_row"), "device": summary.get("device"),
        "device_name": summary.get("device_name"), "precision": summary.get("precision"),
        # The first 16 digits are what the runs that evaluate it record as their checkpoint_hash.
        "checkpoint_hash": checkpoint_sha256[:16], "checkpoint_sha256": checkpoint_sha256,
        "weights_sha256": weights_sha256(encoder_path), "path": str(folder), "git_commit": git_commit(),
        "avbench_version": __version__, "torch_version": summary.get("torch_version"),
        # The weights of some objectives depend on it (see the module doc).
        "threads": torch.get_num_threads(),
    }
