"""Reading published checkpoints: data-only pickles load, anything that could run code is refused."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import pytest
import torch

from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError


def test_fairseq_style_bookkeeping_loads(tmp_path):
    # fairseq checkpoints carry argparse args and numpy values in their training bookkeeping.
    ckpt = {"args": argparse.Namespace(arch="wav2vec", lr=[1e-5]), "model": {"w": torch.ones(2)},
            "extra_state": {"val_loss": np.float64(2.5), "best": np.float32(1.0), "steps": np.int64(7),
                            "history": np.arange(3.0)},
            "optimizer_history": [{"num_updates": 400_000}]}
    torch.save(ckpt, tmp_path / "a.pt")
    loaded = load_published_checkpoint(tmp_path / "a.pt", "a test checkpoint")
    assert loaded["args"].arch == "wav2vec" and float(loaded["extra_state"]["val_loss"]) == 2.5
    assert np.array_equal(loaded["extra_state"]["history"], np.arange(3.0))


def test_other_objects_and_broken_files_are_refused_by_name(tmp_path):
    torch.save({"model": {}, "where": pathlib.PurePosixPath("/x")}, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match=r"b\.pt: refused to load a test checkpoint: it pickles an object of type "
                                          r"pathlib"):
        load_published_checkpoint(tmp_path / "b.pt", "a test checkpoint")
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"c\.pt: cannot be read as a torch checkpoint"):
        load_published_checkpoint(tmp_path / "c.pt", "a test checkpoint")
    with pytest.raises(ConfigError, match=r"d\.pt: a test checkpoint not found"):
        load_published_checkpoint(tmp_path / "d.pt", "a test checkpoint")
