"""Reading other toolkits' published checkpoints without running their pickled code.

Published checkpoints are pickles. fairseq's hold an argparse `Namespace` of training arguments,
and training bookkeeping (`extra_state`, optimizer history) may hold numpy scalars and arrays.
`torch.load(weights_only=True)` refuses all of those by default, while a plain `torch.load` would
run whatever the file names. So avbench allows exactly these data-only types and nothing else:
a file that pickles any other global is refused, with the global named.
"""

from __future__ import annotations

import argparse
import importlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import ConfigError
from bench.files import atomic_write_bytes


def _numpy_multiarray() -> Any:
    """numpy._core.multiarray (numpy 2), else numpy.core.multiarray (numpy 1.x, whose numpy._core is
    only a stub without it: the HEAR environment runs numpy 1.26)."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "scalar"):
            return module
    raise ImportError("numpy has neither numpy._core.multiarray nor numpy.core.multiarray")


def _numpy_data_globals() -> list[Any]:
    """numpy's scalar/array reconstruction helpers: they rebuild values from bytes, nothing more."""
    multiarray = _numpy_multiarray()
    found = [multiarray.scalar, multiarray._reconstruct, np.dtype, np.ndarray]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes through their classes
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return found


DATA_GLOBALS: tuple[Any, ...] = (argparse.Namespace, *_numpy_data_globals())


def load_published_checkpoint(path: str | Path, what: str, allowed: tuple[Any, ...] = DATA_GLOBALS,
                              mmap: bool = False) -> Any:
    """torch.load(path) allowing tensors, plain containers and the `allowed` globals only.

    `what` names the model family in error messages ("a wav2vec checkpoint"). The default
    `allowed` is argparse.Namespace and numpy data; `mmap` maps a zip-format file instead of
    reading it (for vetting a large file before another library loads it).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found.")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a class refusal: a corrupt or foreign file
            raise ConfigError(f"{path}: cannot be read as a torch checkpoint ({exc}).") from exc
        permitted = ("argparse.Namespace and numpy values" if allowed is DATA_GLOBALS
                     else ", ".join(f"{g.__module__}.{g.__qualname__}" for g in allowed))
        raise ConfigError(
            f"{path}: refused to load {what}: it pickles an object of type {found.group(1)}. avbench reads "
            f"checkpoints with torch.load(weights_only=True), allowing only tensors, plain containers and "
            f"{permitted}, because unpickling anything else can run code. If you trust the file, re-save just "
            "its config and state dict entries as plain dicts.") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read as a torch checkpoint ({exc}).") from exc


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save that replaces `path` whole or not at all: a kill mid-save leaves the previous file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
