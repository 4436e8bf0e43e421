"""Data-parallel pretraining under torchrun, or a world of one process."""

from __future__ import annotations

from typing import Any

import torch

from bench.errors import ConfigError
from bench.pretrain.objective import hidden_parameter_names


class Distributed:
    """torchrun's process group, or a world of one.

    Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1 in the environment) every rank builds the
    same model from the same seed, trains on its slice of each global batch through
    DistributedDataParallel (gloo on CPU; nccl on CUDA, rank r on cuda:LOCAL_RANK as
    bench.device.resolve_device gives it), whose gradient all-reduce averages the
    ranks' gradients, and only rank 0 writes files. With equal slices and a loss that is a mean
    over equal-sized parts, one step equals the single-process step on the whole batch (tested).
    BatchNorm statistics stay per rank (SyncBatchNorm has no CPU kernel).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        import os

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world > 1
        self.device = torch.device(device or "cpu")
        if self.active:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # nccl's collectives run on the current device
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
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
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged numbers over ranks, so the curve describes the global batch."""
        if not self.active:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        # nccl reduces only device tensors; the float64 values are the same either way.
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.cpu().tolist())}

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
