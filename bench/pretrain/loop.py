"""`avbench pretrain NAME --data MANIFEST`: self-supervised pretraining with one shared loop.

Every method gets the same thing: the manifest's audio (labels ignored), random crops of
`crop_seconds`, batches of `batch_size`, Adam, and a budget in optimizer steps (`--steps`) or in
passes over the clips (`--epochs`, turned into steps). So APC, wav2vec and PASE+ can be given the
same data and the same budget, and differ only in their objective (bench/pretrain/objective.py).

The output folder holds:
  checkpoint-last.pt   everything needed to resume (weights, optimizer, random states, loss rows),
                       written atomically every `save_every` steps and at the end;
  encoder.pt           the encoder alone (`{"format": "avbench-pretrain/1", "encoder": state_dict,
                       ...}`): evaluate it as `NAME@OUT/encoder.pt`; rewritten at every save, so
                       it always matches checkpoint-last.pt;
  loss.csv, loss.png   the loss curve (mean of each logged quantity over `log_every` steps);
  pretrain.json        the settings, the manifest id, the step reached, the wall time, and the
                       device (its name) and precision the run used.

Device and precision (bench.device): the pretext trains on `--device` (auto: the GPU when there is
one), its forward under autocast for `--precision bf16|fp16` (fp16 with loss scaling); fp32 is the
default. A non-default precision is part of what a resumed run must match. Batches come from
bench.pretrain.batches, made in this process or by `--loader-workers` processes: the same bytes
either way, so loss curves do not depend on the worker count (tested).

Resuming (`--resume`) is exact: the clip order of epoch e is a permutation seeded by (seed, e) and
the crop offsets of step s are seeded by (seed, s), so they need no saved state, and the torch
and context generators that the objectives draw from are restored from the checkpoint. A killed
run resumed from step k ends at the same weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__
from bench.checkpoints import atomic_torch_save
from bench.data.manifest import Manifest
from bench.data.tasks import resolve_task
from bench.device import DEFAULT_PRECISION, autocast, check_precision, describe, grad_scaler, resolve_device
from bench.errors import ConfigError
from bench.files import atomic_write_bytes
from bench.pretrain.batches import CropSampler, _seed_of, batch_stream
from bench.pretrain.curve import write_curve
from bench.pretrain.distributed import Distributed
from bench.pretrain.objective import (CropInfo, Pretext, PretextContext, check_fits, objective_factory,
                                     own_objective, resolve_objective)
from bench.records import git_commit
from bench.registry import count_parameters, create_encoder, split_spec
from bench.runtime import flush_denormals

log = logging.getLogger("avbench.pretrain")

FORMAT = "avbench-pretrain/1"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PretrainConfig:
    encoder: str
    data: str
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    crop_seconds: float = 1.0
    lr: float | None = None            # None: the objective's own default (Pretext.default_lr)
    max_grad_norm: float | None = 10.0
    seed: int = 0
    splits: tuple[str, ...] = ("train",)
    save_every: int = 500
    log_every: int = 10
    encoder_kwargs: dict = field(default_factory=dict)
    pretext_kwargs: dict = field(default_factory=dict)
    precision: str = DEFAULT_PRECISION  # autocast dtype of the forward pass: fp32, bf16 or fp16
    loader_workers: int | None = 0      # processes making batches ahead of the step (0: in the loop; None: auto)
    # The objective (bench.pretrain.objective); None: the encoder's own. Naming the encoder's own
    # objective is the same as naming none, so that identities and checkpoints stay as they were.
    objective: str | None = None

    @property
    def objective_name(self) -> str:
        """The objective this run trains with: the one named, else the encoder's own."""
        return resolve_objective(self.encoder, self.objective)

    def validated(self) -> "PretrainConfig":
        if self.objective is not None and self.objective == own_objective(self.encoder):
            return replace(self, objective=None).validated()
        if split_spec(self.encoder)[1]:
            raise ConfigError(f"pretrain starts from random weights: give the bare name, not {self.encoder!r} "
                              "(use --resume to continue a run)")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give the budget as exactly one of --steps N or --epochs E")
        if (self.steps is not None and self.steps < 1) or (self.epochs is not None and self.epochs <= 0):
            raise ConfigError(f"the budget must be positive (steps {self.steps}, epochs {self.epochs})")
        if self.batch_size < 1 or self.crop_seconds <= 0 or self.save_every < 1 or self.log_every < 1:
            raise ConfigError("batch_size, crop_seconds, save_every and log_every must be positive")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        check_precision(self.precision)
        self.objective_name  # an unknown objective, or an encoder without one and none named, fails here
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ConfigError(f"loader_workers must be >= 0, got {self.loader_workers}")
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or not self.splits:
            raise ConfigError(f"splits must be a non-empty subset of {', '.join(SPLITS)}, got {list(self.splits)}")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        """The budget in optimizer steps: --steps, or --epochs passes turned into steps."""
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * steps_per_epoch))

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the budget may grow)."""
        d = asdict(self)
        # Batches do not depend on the worker count; a default precision adds nothing, so runs
        # checkpointed before the option existed still resume.
        for k in ("steps", "epochs", "save_every", "log_every", "loader_workers"):
            d.pop(k)
        if d["precision"] == DEFAULT_PRECISION:
            d.pop("precision")
        if d["objective"] is None:  # the encoder's own: identities made before objectives were separate
            d.pop("objective")
        d["splits"] = list(self.splits)
        return d


@dataclass
class Session:
    """One pretraining run in progress: what it trains, and how far it has come."""

    config: PretrainConfig
    out: Path
    dist: Distributed
    device: torch.device
    scaler: torch.amp.GradScaler
    manifest: Manifest
    encoder: torch.nn.Module
    context: PretextContext
    pretext: Pretext
    sampler: CropSampler
    optimizer: torch.optim.Optimizer
    total_steps: int
    lr: float
    identity: dict[str, Any]
    denormals_flushed: bool
    step: int = 0
    rows: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def last(self) -> Path:
        return self.out / "checkpoint-last.pt"


def pretrain(config: PretrainConfig, out: str | Path, *, resume: bool = False, force: bool = False,
             progress: bool = True, stop_after: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Pretrain `config.encoder` with its objective; return the summary written to pretrain.json.

    `stop_after` ends the run after that many steps as if killed (tests and benchmarks use it).
    `device`: auto, cpu, cuda or cuda:N (bench.device). Under torchrun the same call trains
    data-parallel (see `Distributed`), each rank on its own GPU when there are GPUs.
    """
    config = config.validated()
    placed = resolve_device(device)
    dist = Distributed(placed)
    if config.loader_workers is None:
        config = replace(config, loader_workers=auto_loader_workers(placed, dist.world))
    part = dist.part(config.batch_size)
    out = Path(out)
    last = out / "checkpoint-last.pt"
    if last.exists() and not (resume or force):
        raise ConfigError(f"{out} already holds a pretraining checkpoint ({last.name}); pass --resume to continue "
                          "it, --force to start over, or choose another --out.")
    if resume and not last.exists():
        raise ConfigError(f"--resume: no {last} to resume from; drop --resume to start a new run.")
    session = start_session(config, out, dist, placed, progress)
    if resume:
        _resume(session)
    elif force and dist.writer:
        last.unlink(missing_ok=True)
    if dist.writer:
        out.mkdir(parents=True, exist_ok=True)
    end = session.total_steps if stop_after is None else min(session.total_steps, session.step + stop_after)
    summary = _train(session, part, end, progress)
    dist.barrier()
    if summary is None:  # nothing to do: already at the budget
        summary = json.loads((out / "pretrain.json").read_text()) if (out / "pretrain.json").exists() \
            else _save(session)
    return summary if dist.writer else {}


def auto_loader_workers(device: torch.device, processes: int = 1) -> int:
    """None's meaning: on the CPU none (the cores train); on a GPU the cores of this process's
    share but one, at most 8, so that the accelerator never waits for a batch."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // max(1, processes) - 1))


def start_session(config: PretrainConfig, out: Path, dist: Distributed, device: torch.device, progress: bool) -> Session:
    """Build the encoder, its objective, the crops and the optimizer, each from its own seed."""
    denormals_flushed = flush_denormals()
    manifest = resolve_task(config.data, progress=progress and dist.writer)
    torch.manual_seed(_seed_of(config.seed, "init") % 2**63)
    encoder = create_encoder(config.encoder, **config.encoder_kwargs)
    noise = [manifest.resolve(p) for p in manifest.meta.get("noise_sources", [])]
    context = PretextContext(sample_rate=encoder.sample_rate, noise_sources=noise, manifest=manifest,
                             generator=torch.Generator().manual_seed(_seed_of(config.seed, "context") % 2**63),
                             device=device, progress=progress and dist.writer)
    check_fits(config.objective_name, encoder)
    pretext = objective_factory(config.objective_name)(encoder, context, **config.pretext_kwargs).to(device)
    sampler = CropSampler(manifest, tuple(config.splits), config.batch_size,
                          int(round(config.crop_seconds * 16_000)), config.seed, align=pretext.crop_align)
    total_steps = config.total_steps(sampler.steps_per_epoch)
    lr = config.lr if config.lr is not None else pretext.default_lr
    optimizer = torch.optim.Adam(pretext.parameters(), lr=lr)
    identity = {**config.identity(), "manifest_id": manifest.manifest_id, "lr": lr}
    if dist.active:
        # Ranks draw different dropout masks, negatives and contamination; resuming restores each.
        torch.manual_seed(_seed_of(config.seed, "rank", dist.rank) % 2**63)
        context.generator.manual_seed(_seed_of(config.seed, "context", dist.rank) % 2**63)
    return Session(config, out, dist, device, grad_scaler(device, config.precision), manifest, encoder, context,
                    pretext, sampler, optimizer, total_steps, lr, identity, denormals_flushed)


def _resume(s: Session) -> None:
    """Continue from checkpoint-last.pt: weights, optimizer, every rank's random streams, the curve."""
    saved = torch.load(s.last, map_location="cpu", weights_only=False)
    if saved.get("format") != FORMAT:
        raise ConfigError(f"{s.last}: not an avbench pretraining checkpoint (format {saved.get('format')!r}).")
    if saved["identity"] != s.identity:
        diff = sorted(k for k in set(s.identity) | set(saved["identity"])
                      if s.identity.get(k) != saved["identity"].get(k))
        raise ConfigError(f"{s.last}: --resume with different settings ({', '.join(diff)}); a resumed run must "
                          "match the one it continues (only --steps/--epochs may grow).")
    # Checkpoints written before distributed training held one process's random states.
    saved.setdefault("rng", [{"torch": saved.get("torch_rng"), "context": saved.get("context_rng")}])
    if len(saved["rng"]) != s.dist.world:
        raise ConfigError(f"{s.last}: saved by {len(saved['rng'])} process(es); resume it with as many "
                          f"(now {s.dist.world}), or the random streams would not continue.")
    s.pretext.load_state_dict(saved["pretext"])
    s.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"][s.dist.rank]["torch"])
    s.context.generator.set_state(saved["rng"][s.dist.rank]["context"])
    if s.device.type == "cuda" and saved["rng"][s.dist.rank].get("cuda") is not None:
        torch.cuda.set_rng_state(saved["rng"][s.dist.rank]["cuda"], s.device)  # dropout masks drawn on the GPU
    if saved.get("scaler"):
        s.scaler.load_state_dict(saved["scaler"])
    s.step, s.rows, s.snapshots, s.elapsed = saved["step"], saved["rows"], saved.get("snapshots", []), saved["seconds"]
    if s.step >= s.total_steps:
        log.info("%s is already at step %d of %d", s.out, s.step, s.total_steps)
    else:
        log.info("resuming %s at step %d of %d", s.config.encoder, s.step, s.total_steps)


def _train(s: Session, part: slice, end: int, progress: bool) -> dict[str, Any] | None:
    """Optimizer steps up to `end`, logging every log_every and saving every save_every steps;
    return the summary of the last save (None when there was no step to take)."""
    from tqdm import tqdm

    config = s.config
    model = s.dist.wrap(s.pretext)
    s.pretext.train()
    window: dict[str, list[float]] = {}
    bar = tqdm(total=s.total_steps, initial=s.step, desc=f"pretrain {describe_run(config)}", unit="step",
               disable=not (progress and s.dist.writer))
    started = time.time()
    summary = None
    cuda = s.device.type == "cuda"
    batches = batch_stream(s.sampler, part, s.step, end, workers=config.loader_workers,
                           reader=s.pretext.crop_reader(), pin_memory=cuda)
    for wav, lengths, info in batches:
        losses = train_step(s, model, wav, lengths, info)
        for k, v in losses.items():
            window.setdefault(k, []).append(float(v.detach()))
        bar.update(1)
        if s.step % config.log_every == 0 or s.step % config.save_every == 0 or s.step == end:
            row = {"step": s.step, "epoch": round(s.step / s.sampler.steps_per_epoch, 4)}
            row.update(s.dist.mean({k: float(np.mean(v)) for k, v in window.items()}))
            s.rows.append({k: (round(v, 6) if isinstance(v, float) and k not in ("epoch",) else v)
                           for k, v in row.items()})
            window = {}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if s.step % config.save_every == 0 or s.step == end:
            s.elapsed += time.time() - started
            started = time.time()
            summary = _save(s)
    bar.close()
    return summary


def train_step(s: Session, model: torch.nn.Module, wav: torch.Tensor, lengths: torch.Tensor,
               info: CropInfo) -> dict[str, torch.Tensor]:
    """One optimizer step on one batch (moved to the session's device); returns the logged losses."""
    config, cuda = s.config, s.device.type == "cuda"
    wav, lengths = wav.to(s.device, non_blocking=cuda), lengths.to(s.device, non_blocking=cuda)
    with autocast(s.device, config.precision):
        losses = model(wav, lengths, info=info)
    loss = losses["loss"].float()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"pretraining loss of {describe_run(config)} became {loss.item()} at step {s.step + 1}; "
                                 "lower --lr or check the data")
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if config.max_grad_norm:
        s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the fp16 loss-scaled ones
        torch.nn.utils.clip_grad_norm_(s.pretext.parameters(), config.max_grad_norm)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.step += 1
    return losses


def with_label_column(pretext_kwargs: dict | None, label_column: str | None, names: tuple[str, str]) -> dict:
    """`pretext_kwargs` with the label column a supervised objective learns set from its own option;
    `names` spell the two places it can be given, for the error when they disagree."""
    pretext_kwargs = dict(pretext_kwargs or {})
    if label_column is None:
        return pretext_kwargs
    if pretext_kwargs.get("label_column", label_column) != label_column:
        raise ConfigError(f"{names[0]} and {names[1]} disagree; give one.")
    return {**pretext_kwargs, "label_column": label_column}


def describe_run(config: PretrainConfig) -> str:
    """`apc`, or `resnet18 + dino` when the objective is not the encoder's own."""
    return config.encoder if config.objective is None else f"{config.encoder} + {config.objective}"


def labels_seen(pretext: Pretext) -> str | None:
    """The manifest column a (supervised) objective learned, or None for a self-supervised one."""
    return pretext.config().get("label_column")


def objective_metadata(config: PretrainConfig, pretext: Pretext) -> dict[str, Any]:
    """What encoder.pt says about the objective that trained it, when it was not the encoder's own.

    Nothing for the encoder's own objective, so that its encoder.pt is byte for byte what it was
    before objectives were separate (committed records name those files' hashes)."""
    if config.objective is None:
        return {}
    return {"objective": config.objective, "labels": labels_seen(pretext)}


def host_state_dict(module: torch.nn.Module) -> dict:
    """The module's state_dict with every tensor on the host, so the file loads on any machine.

    The same OrderedDict, with its `_metadata` (module versions that loading may consult), as
    state_dict() gives: on the CPU the very same object, so encoder.pt is what it always was.
    """
    state = module.state_dict()
    if all(t.device.type == "cpu" for t in state.values() if isinstance(t, torch.Tensor)):
        return state
    host = type(state)((k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items())
    if hasattr(state, "_metadata"):
        host._metadata = state._metadata
    return host


def _save(s: Session) -> dict[str, Any]:
    """Write checkpoint-last.pt, encoder.pt, the curve and pretrain.json (rank 0); return the summary."""
    # Every rank takes part in the gather; only rank 0 writes.
    rng = s.dist.gather({"torch": torch.get_rng_state(), "context": s.context.generator.get_state(),
                         **({"cuda": torch.cuda.get_rng_state(s.device).cpu()} if s.device.type == "cuda" else {})})
    if not s.dist.writer:
        return {}
    config, manifest, pretext = s.config, s.manifest, s.pretext
    if hasattr(pretext, "snapshot"):  # e.g. generated vs real mouth frames on held-out clips
        pretext.eval()
        with torch.no_grad():
            s.snapshots.append({"step": s.step, **pretext.snapshot(s.out, s.step)})
        pretext.train()
    summary = {
        "format": FORMAT, "encoder": config.encoder, "objective": config.objective_name,
        "labels": labels_seen(pretext), "config": {**asdict(config), "splits": list(config.splits)},
        "lr": s.lr, "data": config.data, "manifest_id": manifest.manifest_id,
        "data_name": manifest.meta.get("name", manifest.path.parent.name), "clips": len(s.sampler.paths),
        "steps_per_epoch": s.sampler.steps_per_epoch, "step": s.step, "total_steps": s.total_steps,
        "epochs_done": round(s.step / s.sampler.steps_per_epoch, 3), "seconds": round(s.elapsed, 1),
        "processes": s.dist.world, "encoder_params": count_parameters(s.encoder),
        "pretext_params": count_parameters(pretext), "pretext": pretext.config(),
        "final_loss": s.rows[-1]["loss"] if s.rows else None, "final_row": s.rows[-1] if s.rows else None,
        "snapshots": s.snapshots,
        "git_commit": git_commit(), "avbench_version": __version__, "torch_version": torch.__version__,
        "flush_denormal": s.denormals_flushed, **describe(s.device, config.precision),
    }
    atomic_torch_save(s.last, {"format": FORMAT, "identity": s.identity, "step": s.step, "rows": s.rows,
                               "snapshots": s.snapshots, "seconds": s.elapsed, "pretext": pretext.state_dict(),
                               "optimizer": s.optimizer.state_dict(), "rng": rng,
                               **({"scaler": s.scaler.state_dict()} if s.scaler.is_enabled() else {})})
    weights = host_state_dict(s.encoder)
    atomic_torch_save(s.out / "encoder.pt", {"format": FORMAT, "encoder": weights,
                                             "encoder_name": config.encoder, "encoder_kwargs": config.encoder_kwargs,
                                             "step": s.step, "manifest_id": manifest.manifest_id,
                                             **objective_metadata(config, pretext)})
    write_curve(s.out, s.rows, f"{describe_run(config)} pretraining on {summary['data_name']}")
    atomic_write_bytes(s.out / "pretrain.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary
