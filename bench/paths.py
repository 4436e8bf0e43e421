"""Where avbench keeps prepared data: manifests, the embedded corpus and (later) feature caches."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """`$AVBENCH_DATA`, else `$XDG_CACHE_HOME/avbench`, else `~/.cache/avbench`."""
    explicit = os.environ.get("AVBENCH_DATA")
    if explicit:
        return Path(explicit).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "avbench"


def prepared_dir(name: str) -> Path:
    """Folder holding the manifest of a prepared real corpus, e.g. `prepared/spc-v0.01`."""
    return data_dir() / "prepared" / name


def corpora_dir() -> Path:
    """Folder holding built embedded corpora, one subfolder per corpus id."""
    return data_dir() / "corpora"


PRETRAINED_PREFIX = "pretrained:"


def pretrained_root() -> Path:
    """Folder holding the pretraining stage's checkpoints, one subfolder per identity."""
    return data_dir() / "pretrained"


def pretrained_dir(identity: str) -> Path:
    """The folder of the pretraining checkpoint whose identity (bench.pretrain.stage) this is."""
    return pretrained_root() / identity


def expand_path(text: str) -> str:
    """`$AVBENCH_DATA/x` (or `${AVBENCH_DATA}`) -> data_dir()/x, then other variables and `~`;
    `pretrained:IDENTITY` -> the encoder.pt of that pretraining identity.

    Sweep configs name pretrained checkpoints under the data directory this way, so one config
    works on every machine whatever its data directory (set or default). A sweep turns its
    `NAME@pretrained:ENTRY` specs into `NAME@pretrained:IDENTITY`, which any process resolves here.
    """
    if text.startswith(PRETRAINED_PREFIX):
        return str(pretrained_dir(text[len(PRETRAINED_PREFIX):]) / "encoder.pt")
    for token in ("${AVBENCH_DATA}", "$AVBENCH_DATA"):
        if text.startswith(token):
            text = str(data_dir()) + text[len(token):]
    return os.path.expanduser(os.path.expandvars(text))
