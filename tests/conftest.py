"""Shared fixtures. Every test session gets its own AVBENCH_DATA, so tests never touch a user's
cache and `embedded:small` resolves to the corpus built here once per session."""

from __future__ import annotations

import os

import pytest
import torch

from bench.data.corpus.build import build_corpus
from bench.data.corpus.embedded import CorpusConfig

# As the CLI does: before torch creates its thread pool, so every worker thread inherits it
# (see bench.runtime.flush_denormals).
torch.set_flush_denormal(True)

# Few enough clips that a training epoch takes about a second: 6 train, 1 valid, 1 test speaker.
# The training tests' thresholds (a loss that falls 10% in 24 steps, DINO's collapse without
# centering) were set on clean audio. With the default channel mix on these 48 clips, measured:
# simclr's 24-step curve is too noisy to show its trend (last/first 0.87 here, 0.94 in CI), and DINO
# without centering stays at batch entropy 0.66 after 60 steps (threshold 0.62). The channels have
# their own tests (tests/test_channels.py), so the corpus these tests train on keeps a clean channel.
TINY_CORPUS = dict(speakers=8, words=3, renditions=2, channels="none")


@pytest.fixture(scope="session", autouse=True)
def avbench_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("avbench-data")
    old = os.environ.get("AVBENCH_DATA")
    os.environ["AVBENCH_DATA"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AVBENCH_DATA", None)
    else:
        os.environ["AVBENCH_DATA"] = old


@pytest.fixture(scope="session")
def small_corpus(avbench_data):
    """The `--size small` corpus (600 clips), at the place `embedded:small` resolves to."""
    return build_corpus(CorpusConfig.from_size("small"), progress=False)


@pytest.fixture(scope="session")
def tiny_corpus(avbench_data):
    """48 clips of 3 words: for tests that train."""
    return build_corpus(CorpusConfig.from_size("small", **TINY_CORPUS), progress=False)
