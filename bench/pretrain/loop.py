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
  pretrain.json        the settings, the manifest id, the step reached and the wall time.

Resuming (`--resume`) is exact: the clip order of epoch e is a permutation seeded by (seed, e) and
the crop offsets of step s are seeded by (seed, s), so they need no saved state, and the torch
and context generators that the objectives draw from are restored from the checkpoint. A killed
run resumed from step k ends at the same weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import __version__
from bench.data.audio import load_audio
from bench.checkpoints import atomic_torch_save
from bench.errors import ConfigError
from bench.data.manifest import Manifest
from bench.files import atomic_write_bytes
from bench.pretrain.objective import CropInfo, PretextContext, hidden_parameter_names, pretext_factory
from bench.records import git_commit
from bench.registry import count_parameters, create_encoder, split_spec
from bench.runtime import flush_denormals
from bench.data.tasks import resolve_task

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

    def validated(self) -> "PretrainConfig":
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
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or not self.splits:
            raise ConfigError(f"splits must be a non-empty subset of {', '.join(SPLITS)}, got {list(self.splits)}")
        return self

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the budget may grow)."""
        d = asdict(self)
        for k in ("steps", "epochs", "save_every", "log_every"):
            d.pop(k)
        d["splits"] = list(self.splits)
        return d


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


class CropSampler:
    """Batches of random crops; a pure function of (seed, step), so resuming needs no state."""

    def __init__(self, manifest: Manifest, splits: tuple[str, ...], batch_size: int, crop_samples: int,
                 seed: int, align: int = 1) -> None:
        in_splits = manifest.table["split"].isin(splits).to_numpy()
        if not in_splits.any():
            raise ConfigError(f"{manifest.path}: no clips in split(s) {', '.join(splits)} to pretrain on.")
        self.rows = np.flatnonzero(in_splits)
        self.clip_ids = manifest.table["clip_id"].to_numpy()[self.rows]
        self.paths = [manifest.resolve(p) for p in manifest.table["audio_path"].to_numpy()[self.rows]]
        self.batch_size, self.crop_samples, self.seed, self.align = batch_size, crop_samples, seed, max(1, align)
        self.steps_per_epoch = max(1, len(self.paths) // batch_size)  # the last partial batch is dropped
        self._order_epoch, self._order = -1, None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, CropInfo]:
        """The crops of `step` (or the `part` of them that one distributed rank trains on)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = np.random.default_rng(_seed_of(self.seed, "order", epoch)).permutation(len(self.paths))
            self._order_epoch = epoch
        picks = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        # Every crop's start is drawn whatever `part` is, so a rank's crops are those of the full batch.
        rng = np.random.default_rng(_seed_of(self.seed, "crop", step))
        draws = rng.random(len(picks))
        picks, draws = picks[part], draws[part]
        wav = torch.zeros(len(picks), self.crop_samples)
        lengths = torch.zeros(len(picks), dtype=torch.long)
        starts = torch.zeros(len(picks), dtype=torch.long)
        for i, (k, u) in enumerate(zip(picks, draws)):
            audio = load_audio(self.paths[k])
            slots = max(0, len(audio) - self.crop_samples) // self.align + 1
            start = int(u * slots) * self.align
            piece = audio[start:start + self.crop_samples]
            wav[i, :len(piece)] = torch.from_numpy(piece)
            lengths[i], starts[i] = len(piece), start
        info = CropInfo(rows=[int(self.rows[k]) for k in picks], clip_ids=[str(self.clip_ids[k]) for k in picks],
                        starts=starts)
        return wav, lengths, info


def _write_curve(out: Path, rows: list[dict[str, Any]], title: str) -> None:
    if not rows:
        return
    columns = list(rows[0])
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "loss.csv", buf.getvalue().encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [c for c in columns if c == "loss" or c.startswith("loss_")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    for c in losses:
        ax.plot(steps, [r.get(c, float("nan")) for r in rows], label=c, linewidth=1.5 if c == "loss" else 0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over logging window)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(losses) > 1:
        ax.legend(fontsize=7, ncol=2)
    png = io.BytesIO()
    fig.tight_layout()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "loss.png", png.getvalue())


class _Distributed:
    """torchrun's process group, or a world of one.

    Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1 in the environment) every rank builds the
    same model from the same seed, trains on its slice of each global batch through
    DistributedDataParallel (gloo on CPU, nccl on CUDA), whose gradient all-reduce averages the
    ranks' gradients, and only rank 0 writes files. With equal slices and a loss that is a mean
    over equal-sized parts, one step equals the single-process step on the whole batch (tested).
    BatchNorm statistics stay per rank (SyncBatchNorm has no CPU kernel).
    """

    def __init__(self) -> None:
        import os

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        if self.active:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            if "OMP_NUM_THREADS" not in os.environ:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def part(self, batch_size: int) -> slice:
        if batch_size % self.world:
            raise ConfigError(f"--batch-size {batch_size} must be a multiple of the {self.world} processes: each "
                              "takes an equal slice of every global batch")
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        # DDP gathers parameters submodule by submodule, past a pretext's own named_parameters():
        # name the ones that pretext hides (self-optimised discriminators) so DDP leaves them alone.
        hidden = hidden_parameter_names(module)
        if hidden:
            module._ddp_params_and_buffers_to_ignore = hidden
        return DistributedDataParallel(module, find_unused_parameters=False)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged numbers over ranks, so the curve describes the global batch."""
        if not self.active:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def pretrain(config: PretrainConfig, out: str | Path, *, resume: bool = False, force: bool = False,
             progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain `config.encoder` with its objective; return the summary written to pretrain.json.

    `stop_after` ends the run after that many steps as if killed (tests and benchmarks use it).
    Under torchrun the same call trains data-parallel (see `_Distributed`).
    """
    from tqdm import tqdm

    config = config.validated()
    dist = _Distributed()
    part = dist.part(config.batch_size)
    out = Path(out)
    last = out / "checkpoint-last.pt"
    if last.exists() and not (resume or force):
        raise ConfigError(f"{out} already holds a pretraining checkpoint ({last.name}); pass --resume to continue "
                          "it, --force to start over, or choose another --out.")
    if resume and not last.exists():
        raise ConfigError(f"--resume: no {last} to resume from; drop --resume to start a new run.")
    denormals_flushed = flush_denormals()
    manifest = resolve_task(config.data, progress=progress and dist.writer)
    torch.manual_seed(_seed_of(config.seed, "init") % 2**63)
    encoder = create_encoder(config.encoder, **config.encoder_kwargs)
    noise = [manifest.resolve(p) for p in manifest.meta.get("noise_sources", [])]
    context = PretextContext(sample_rate=encoder.sample_rate, noise_sources=noise, manifest=manifest,
                             generator=torch.Generator().manual_seed(_seed_of(config.seed, "context") % 2**63))
    pretext = pretext_factory(config.encoder)(encoder, context, **config.pretext_kwargs)
    sampler = CropSampler(manifest, tuple(config.splits), config.batch_size,
                          int(round(config.crop_seconds * 16_000)), config.seed, align=pretext.crop_align)
    total_steps = config.steps if config.steps is not None else max(1, math.ceil(config.epochs * sampler.steps_per_epoch))
    lr = config.lr if config.lr is not None else pretext.default_lr
    optimizer = torch.optim.Adam(pretext.parameters(), lr=lr)
    identity = {**config.identity(), "manifest_id": manifest.manifest_id, "lr": lr}
    if dist.active:
        # Ranks draw different dropout masks, negatives and contamination; resuming restores each.
        torch.manual_seed(_seed_of(config.seed, "rank", dist.rank) % 2**63)
        context.generator.manual_seed(_seed_of(config.seed, "context", dist.rank) % 2**63)

    step, rows, snapshots, elapsed = 0, [], [], 0.0
    if resume:
        saved = torch.load(last, map_location="cpu", weights_only=False)
        if saved.get("format") != FORMAT:
            raise ConfigError(f"{last}: not an avbench pretraining checkpoint (format {saved.get('format')!r}).")
        if saved["identity"] != identity:
            diff = sorted(k for k in set(identity) | set(saved["identity"])
                          if identity.get(k) != saved["identity"].get(k))
            raise ConfigError(f"{last}: --resume with different settings ({', '.join(diff)}); a resumed run must "
                              "match the one it continues (only --steps/--epochs may grow).")
        # Checkpoints written before distributed training held one process's random states.
        saved.setdefault("rng", [{"torch": saved.get("torch_rng"), "context": saved.get("context_rng")}])
        if len(saved["rng"]) != dist.world:
            raise ConfigError(f"{last}: saved by {len(saved['rng'])} process(es); resume it with as many "
                              f"(now {dist.world}), or the random streams would not continue.")
        pretext.load_state_dict(saved["pretext"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"][dist.rank]["torch"])
        context.generator.set_state(saved["rng"][dist.rank]["context"])
        step, rows, snapshots, elapsed = saved["step"], saved["rows"], saved.get("snapshots", []), saved["seconds"]
        if step >= total_steps:
            log.info("%s is already at step %d of %d", out, step, total_steps)
        else:
            log.info("resuming %s at step %d of %d", config.encoder, step, total_steps)
    elif force and dist.writer:
        last.unlink(missing_ok=True)
    if dist.writer:
        out.mkdir(parents=True, exist_ok=True)
    model = dist.wrap(pretext)

    def save() -> dict[str, Any]:
        # Every rank takes part in the gather; only rank 0 writes.
        rng = dist.gather({"torch": torch.get_rng_state(), "context": context.generator.get_state()})
        if not dist.writer:
            return {}
        if hasattr(pretext, "snapshot"):  # e.g. generated vs real mouth frames on held-out clips
            pretext.eval()
            with torch.no_grad():
                snapshots.append({"step": step, **pretext.snapshot(out, step)})
            pretext.train()
        summary = {
            "format": FORMAT, "encoder": config.encoder, "config": {**asdict(config), "splits": list(config.splits)},
            "lr": lr, "data": config.data, "manifest_id": manifest.manifest_id,
            "data_name": manifest.meta.get("name", manifest.path.parent.name), "clips": len(sampler.paths),
            "steps_per_epoch": sampler.steps_per_epoch, "step": step, "total_steps": total_steps,
            "epochs_done": round(step / sampler.steps_per_epoch, 3), "seconds": round(elapsed, 1),
            "processes": dist.world, "encoder_params": count_parameters(encoder),
            "pretext_params": count_parameters(pretext), "pretext": pretext.config(),
            "final_loss": rows[-1]["loss"] if rows else None, "snapshots": snapshots,
            "git_commit": git_commit(), "avbench_version": __version__, "torch_version": torch.__version__,
            "flush_denormal": denormals_flushed,
        }
        atomic_torch_save(last, {"format": FORMAT, "identity": identity, "step": step, "rows": rows,
                                 "snapshots": snapshots, "seconds": elapsed, "pretext": pretext.state_dict(),
                                 "optimizer": optimizer.state_dict(), "rng": rng})
        atomic_torch_save(out / "encoder.pt", {"format": FORMAT, "encoder": encoder.state_dict(),
                                               "encoder_name": config.encoder, "encoder_kwargs": config.encoder_kwargs,
                                               "step": step, "manifest_id": manifest.manifest_id})
        _write_curve(out, rows, f"{config.encoder} pretraining on {summary['data_name']}")
        atomic_write_bytes(out / "pretrain.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
        return summary

    pretext.train()
    window: dict[str, list[float]] = {}
    end = total_steps if stop_after is None else min(total_steps, step + stop_after)
    bar = tqdm(total=total_steps, initial=step, desc=f"pretrain {config.encoder}", unit="step",
               disable=not (progress and dist.writer))
    started = time.time()
    summary = None
    while step < end:
        wav, lengths, info = sampler.batch(step, part)
        losses = model(wav, lengths, info=info)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss of {config.encoder} became {loss.item()} at step {step + 1}; "
                                     "lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(pretext.parameters(), config.max_grad_norm)
        optimizer.step()
        step += 1
        for k, v in losses.items():
            window.setdefault(k, []).append(float(v.detach()))
        bar.update(1)
        if step % config.log_every == 0 or step % config.save_every == 0 or step == end:
            row = {"step": step, "epoch": round(step / sampler.steps_per_epoch, 4)}
            row.update(dist.mean({k: float(np.mean(v)) for k, v in window.items()}))
            rows.append({k: (round(v, 6) if isinstance(v, float) and k not in ("epoch",) else v) for k, v in row.items()})
            window = {}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % config.save_every == 0 or step == end:
            elapsed += time.time() - started
            started = time.time()
            summary = save()
    bar.close()
    dist.barrier()
    if summary is None:  # nothing to do: already at the budget
        summary = json.loads((out / "pretrain.json").read_text()) if (out / "pretrain.json").exists() else save()
    return summary if dist.writer else {}
