"""How much of a frozen representation's variance each factor of the corpus explains, read from the
feature cache (no encoder is run): a diagnostic for why a representation wins or loses a task.

For each cache entry it pools every clip's frames to their mean and prints:
- participation ratio of the pooled features (effective number of dimensions in use, 1..dim);
- pooled / frame variance: the share of the frames' variance left in the clip means. Near 0 for a
  representation normalised per clip (mfcc39's per-utterance mean removal), whose eta^2 then
  reads chance whatever the frames hold: this diagnostic says nothing about such a one;
- eta^2 per manifest column (speaker, label, emotion, channel): the share of the pooled features'
  total variance that lies between that column's groups. Chance level is about
  (groups - 1) / (clips - 1), printed beside it: a factor the features ignore sits near chance;
- cosine EER: speaker verification with no training at all, every pair of test-split clip means
  scored by cosine similarity, on the raw means and on means standardised per dimension with the
  training split's mean and deviation. A representation whose z-scored EER is far below its raw one
  holds speaker information that a few dominant dimensions hide from an unnormalised downstream.

    python benchmarks/feature_variance.py [--encoder av-joint] [--columns speaker,label,emotion]

Entries are found in $AVBENCH_DATA/cache/features; `--encoder` keeps those of one encoder name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.cache_entry import CachedFeatures
from bench.evaluate.metrics import equal_error_rate
from bench.paths import data_dir


def pooled(entry: CachedFeatures) -> tuple[np.ndarray, float]:
    """(clip means, total variance of the frames about their global mean)."""
    means, total, square, frames = [], 0.0, 0.0, 0
    for i in range(len(entry.clip_ids)):
        x = entry.get(i).astype(np.float64)
        means.append(x.mean(axis=0))
        total, square, frames = total + x.sum(axis=0), square + (x ** 2).sum(axis=0), frames + len(x)
    frame_variance = float((square / frames - (total / frames) ** 2).sum())
    return np.stack(means), frame_variance


def participation_ratio(x: np.ndarray) -> float:
    eig = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0.0, None)
    return float(eig.sum() ** 2 / max((eig ** 2).sum(), 1e-30))


def eta_squared(x: np.ndarray, groups: pd.Series) -> float:
    """Between-group share of the total variance, summed over dimensions."""
    centred = x - x.mean(axis=0)
    total = float((centred ** 2).sum())
    between = sum(len(idx) * float((centred[idx].mean(axis=0) ** 2).sum())
                  for idx in groups.groupby(groups).indices.values())
    return between / total if total > 0 else float("nan")


def cosine_eer(x: np.ndarray, speakers: np.ndarray, limit: int = 1500) -> float:
    """EER (%) of cosine scoring over every pair of rows (at most `limit` rows, the first ones)."""
    x, speakers = x[:limit], speakers[:limit]
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    upper = np.triu_indices(len(x), k=1)
    scores = (unit @ unit.T)[upper]
    return 100.0 * equal_error_rate(scores, (speakers[:, None] == speakers[None, :])[upper].astype(int))


def verification_cells(x: np.ndarray, rows: pd.DataFrame) -> list[str]:
    """[raw cosine EER, z-scored cosine EER] on the test split, z-scoring with the training split."""
    if not {"split", "speaker"} <= set(rows) or not (rows["split"] == "train").any():
        return ["-", "-"]
    split = rows["split"].to_numpy()
    test = x[split == "test"]
    speakers = rows["speaker"].astype(str).to_numpy()[split == "test"]
    if len(set(speakers)) < 2:
        return ["-", "-"]
    train = x[split == "train"]
    z = (test - train.mean(axis=0)) / np.maximum(train.std(axis=0), 1e-12)
    return [f"{cosine_eer(test, speakers):.1f}", f"{cosine_eer(z, speakers):.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default=None, help="keep the entries of this encoder name")
    parser.add_argument("--columns", default="speaker,label,emotion,channel")
    parser.add_argument("--cache", type=Path, default=None, help="default: $AVBENCH_DATA/cache/features")
    args = parser.parse_args()
    root = args.cache or data_dir() / "cache" / "features"
    columns = [c for c in args.columns.split(",") if c]
    print("encoder | weights | corpus | clips | participation ratio | pooled / frame variance | " + " | ".join(
        f"eta2 {c} (chance)" for c in columns) + " | cosine EER % (raw) | cosine EER % (z-scored)")
    for folder in sorted(p for p in root.iterdir() if (p / "meta.json").is_file()):
        meta = json.loads((folder / "meta.json").read_text())
        if args.encoder and meta.get("encoder") != args.encoder:
            continue
        manifest = pd.read_csv(meta["manifest_path"]).set_index("clip_id")
        entry = CachedFeatures.open(folder)
        x, frame_variance = pooled(entry)
        rows = manifest.loc[entry.clip_ids]
        cells = []
        for column in columns:
            if column not in rows:
                cells.append("-")
                continue
            groups = rows[column].astype(str).reset_index(drop=True)
            chance = (groups.nunique() - 1) / (len(groups) - 1)
            cells.append(f"{eta_squared(x, groups):.3f} ({chance:.3f})")
        corpus = Path(meta["manifest_path"]).parent.name.rsplit("-", 1)[0]
        print(f"{meta['encoder']} | {(meta.get('weights_sha256') or 'none')[:8]} | {corpus} | {len(x)} | "
              f"{participation_ratio(x):.1f} | {float(x.var(axis=0).sum()) / max(frame_variance, 1e-30):.3f} | "
              + " | ".join(cells + verification_cells(x, rows.reset_index())))


if __name__ == "__main__":
    main()
