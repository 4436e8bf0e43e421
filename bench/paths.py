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


def expand_path(text: str) -> str:
    """`$AVBENCH_DATA/x` (or `${AVBENCH_DATA}`) -> data_dir()/x, then other variables and `~`.

    Sweep configs name pretrained checkpoints under the data directory this way, so one config
    works on every machine whatever its data directory (set or default).
    """
    for token in ("${AVBENCH_DATA}", "$AVBENCH_DATA"):
        if text.startswith(token):
            text = str(data_dir()) + text[len(token):]
    return os.path.expanduser(os.path.expandvars(text))
