"""How much of a frozen representation's variance each factor of the corpus explains, read from the
feature cache (no encoder is run): a diagnostic for why a representation wins or loses a task.

For each cache entry it pools every clip's frames to their mean and prints:
- participation ratio of the pooled features (effective number of dimensions in use, 1..dim);
- pooled / frame variance: the share of the frames' variance left in the clip means. Near 0 for a
  representation normalised per clip (mfcc39's per-utterance mean removal), whose eta^2 then
  reads chance whatever the frames hold: this diagnostic says nothing about such a one;
- eta^2 per manifest column (speaker, label, emotion, channel): the share of the pooled features'
  total variance that lies between that column's groups. Chance level is about
  (groups - 1) / (clips - 1), printed beside it: a factor the features ignore sits near chance.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default=None, help="keep the entries of this encoder name")
    parser.add_argument("--columns", default="speaker,label,emotion,channel")
    parser.add_argument("--cache", type=Path, default=None, help="default: $AVBENCH_DATA/cache/features")
    args = parser.parse_args()
    root = args.cache or data_dir() / "cache" / "features"
    columns = [c for c in args.columns.split(",") if c]
    print("encoder | weights | corpus | clips | participation ratio | pooled / frame variance | " + " | ".join(
        f"eta2 {c} (chance)" for c in columns))
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
              + " | ".join(cells))


if __name__ == "__main__":
    main()
