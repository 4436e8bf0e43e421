"""Where torch runs and in what precision: the `--device` and `--precision` options of every stage.

Device. `auto` is the first visible CUDA device when torch sees one, else the CPU; `cuda` and
`cuda:N` must exist, or the command stops with what was found (the torch build, the device count,
CUDA_VISIBLE_DEVICES) instead of a traceback deep in a forward pass. Under torchrun, `auto` and
`cuda` mean `cuda:LOCAL_RANK`, one GPU per rank. A sweep's local executor pins every worker to one
GPU through CUDA_VISIBLE_DEVICES, so `cuda` inside a worker is that GPU.

Precision. `fp32` is the default everywhere (the paper's numbers and every committed record are
fp32). `bf16` and `fp16` run the forward passes under `torch.autocast`; `fp16` also scales the loss
(`torch.amp.GradScaler`) so small gradients do not flush to zero. Parameters and optimiser state
stay fp32. A non-default precision changes features and losses, so it is part of a run's identity;
the device is not (records name it).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from bench.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device_spec(spec: str) -> str:
    """The spelling of a device option (auto, cpu, cuda, cuda:N); availability is checked later."""
    if not isinstance(spec, str) or not _SPEC.match(spec.strip()):
        raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N (N a device index)")
    return spec.strip()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def _what_was_found() -> str:
    build = torch.version.cuda
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"torch {torch.__version__} ({'CUDA ' + build + ' build' if build else 'a CPU-only build'}), "
            f"{torch.cuda.device_count() if build else 0} CUDA device(s) visible"
            + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""))


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch.device an option names, checked against this machine."""
    spec = check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise ConfigError(f"--device {spec}: no usable CUDA device here; found {_what_was_found()}. Use "
                          "--device cpu (or auto), or install a CUDA build of torch on a machine with a GPU.")
    if spec in ("auto", "cuda"):
        local_rank = os.environ.get("LOCAL_RANK")  # torchrun: one GPU per rank
        index = int(local_rank) if local_rank is not None else 0
    else:
        index = int(spec.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {spec}: cuda:{index} does not exist; found {_what_was_found()}. Devices "
                          f"are numbered 0..{count - 1} after CUDA_VISIBLE_DEVICES is applied.")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """What the record names: the GPU's name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index or 0)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def autocast(device: torch.device, precision: str):
    """The forward-pass context of a precision: autocast for bf16/fp16, nothing for fp32."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a pass-through GradScaler for fp32 and bf16, whose range needs none)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=check_precision(precision) == "fp16")


def describe(device: torch.device, precision: str) -> dict:
    """The device and precision fields every record and pretraining summary carries."""
    device = torch.device(device)
    return {"device": str(device), "device_name": device_name(device), "precision": precision}
