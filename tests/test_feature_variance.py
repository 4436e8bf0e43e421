"""benchmarks/feature_variance.py: its two statistics on features whose answer is known, and the
script end to end on a real feature cache entry built by a frozen run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "feature_variance.py"


def _module():
    spec = importlib.util.spec_from_file_location("feature_variance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eta_squared_is_one_for_group_means_and_chance_for_noise():
    fv = _module()
    rng = np.random.default_rng(0)
    groups = pd.Series(np.repeat(np.arange(10), 40))
    separated = np.eye(16)[groups.to_numpy()] * 5.0
    assert fv.eta_squared(separated, groups) == 1.0
    noise = rng.normal(size=(400, 16))
    assert abs(fv.eta_squared(noise, groups) - 9 / 399) < 0.02  # (groups - 1) / (clips - 1)


def test_participation_ratio_counts_the_dimensions_in_use():
    fv = _module()
    rng = np.random.default_rng(1)
    assert abs(fv.participation_ratio(rng.normal(size=(5000, 8))) - 8) < 0.3
    one = np.outer(rng.normal(size=5000), np.ones(8)) + 1e-3 * rng.normal(size=(5000, 8))
    assert fv.participation_ratio(one) < 1.01


def test_cosine_eer_is_zero_for_separated_speakers_and_chance_for_noise_and_z_scoring_uses_the_train_split():
    fv = _module()
    rng = np.random.default_rng(2)
    speakers = np.repeat(np.arange(20), 10)
    centres = rng.normal(size=(20, 32))
    assert fv.cosine_eer(centres[speakers] + 0.01 * rng.normal(size=(200, 32)), speakers) == 0.0
    assert abs(fv.cosine_eer(rng.normal(size=(200, 32)), speakers) - 50.0) < 5.0
    # One dimension of huge speaker-independent variance hides the speakers from raw cosine scoring;
    # the training split's statistics shrink it to one dimension among 33, so the z-scored EER drops.
    x = np.concatenate([centres[speakers] + 0.01 * rng.normal(size=(200, 32)),
                        1e4 * rng.normal(size=(200, 1))], axis=1)
    rows = pd.DataFrame({"speaker": speakers, "split": np.where(np.arange(200) % 2, "train", "test")})
    raw, scored = fv.verification_cells(x, rows)
    assert float(raw) > 30.0 and float(scored) < 10.0
    assert fv.verification_cells(x, rows.drop(columns="split")) == ["-", "-"]


def test_the_script_reads_a_cache_entry_a_frozen_run_built(tiny_corpus, tmp_path):
    from bench.data.feature_cache import FeatureCache
    from bench.registry import create_encoder

    cache = FeatureCache(tmp_path / "features")
    cache.get_or_build(create_encoder("logmel"), tiny_corpus.manifest, progress=False)
    out = subprocess.run([sys.executable, str(SCRIPT), "--cache", str(tmp_path / "features"),
                          "--columns", "speaker,label,nonexistent"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}, check=True).stdout
    header, row = out.strip().splitlines()
    assert header.startswith("encoder | weights | corpus | clips | participation ratio")
    cells = row.split(" | ")
    assert header.endswith("cosine EER % (raw) | cosine EER % (z-scored)")
    assert cells[0] == "logmel" and int(cells[3]) == len(tiny_corpus.manifest.table) and cells[-3] == "-"
