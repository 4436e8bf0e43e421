"""Speaker-verification trials: read a corpus's trial list, or generate, save and reload one.

A trial list has one "LABEL ENROLL TEST" line per trial (the VoxCeleb format), LABEL 1 for the
same speaker. A corpus's own list is checked against the manifest, so a list from another version
of the corpus fails here rather than as a silently wrong EER; a generated list is balanced,
seeded, and saved beside the manifest so every run scores the same trials
(bench.data.task_types builds the verification view from them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.manifest import Manifest
from bench.errors import ConfigError
from bench.files import atomic_write_bytes

log = logging.getLogger("avbench.task_types")

TRIAL_COLUMNS = ("label", "enroll", "test")
DEFAULT_NUM_TRIALS = 2000


def _trial_clip_id(token: str, known: dict[str, str]) -> str | None:
    """A trial token as a clip id: the id itself, or the corpus's relative path to its wav."""
    token = token.replace("\\", "/").removeprefix("./")
    if token in known:
        return token
    stem = token.rsplit(".", 1)[0] if "." in token.rsplit("/", 1)[-1] else token
    return stem if stem in known else None


def load_trials(path: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """Read "LABEL ENROLL TEST" lines into a trials frame, checking them against the manifest.

    Every clip must be in `table`, and each label must agree with the manifest's speakers (1 for
    the same speaker): a trial list from another version of the corpus fails here, not as a
    silently wrong EER.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: trial list not found. Restore it, or re-run the preparer that wrote "
                          "the manifest (it records the trial list in manifest.json).")
    speaker_of = dict(zip(table["clip_id"], table["speaker"]))
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise ConfigError(f"{path}:{lineno}: expected 'LABEL ENROLL TEST' with LABEL 1 (same speaker) or 0 "
                              f"(different speakers), got {line.strip()!r}")
        ids = [_trial_clip_id(p, speaker_of) for p in parts[1:]]
        for token, clip in zip(parts[1:], ids):
            if clip is None:
                raise ConfigError(f"{path}:{lineno}: {token!r} is not a clip of the manifest; the trial list "
                                  "and the manifest come from different versions of the corpus, or the clip "
                                  "was skipped as bad audio. Re-run the preparer.")
        same = speaker_of[ids[0]] == speaker_of[ids[1]]
        if same != (parts[0] == "1"):
            raise ConfigError(f"{path}:{lineno}: labelled {parts[0]} but the manifest has {ids[0]} and {ids[1]} "
                              f"spoken by {'the same speaker' if same else 'different speakers'}; the trial "
                              "list does not belong to this manifest.")
        rows.append((int(parts[0]), ids[0], ids[1]))
    trials = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    if trials["label"].nunique() < 2:
        raise ConfigError(f"{path}: {len(trials)} trial(s), but verification needs both target (1) and "
                          "non-target (0) trials.")
    return trials


def generate_trials(clips: pd.DataFrame, seed: int = 0, num_trials: int = DEFAULT_NUM_TRIALS) -> pd.DataFrame:
    """Balanced trials over `clips`: num_trials // 2 target and as many non-target pairs.

    Target pairs are drawn uniformly over all same-speaker pairs (a speaker with n clips weighs
    n(n-1)/2), non-target pairs uniformly over all different-speaker pairs, without repeats; each
    pair lists the smaller clip id as enroll; the trial order is shuffled. When fewer distinct
    pairs exist than asked for, both halves shrink to the smaller count (logged).
    """
    if num_trials < 2:
        raise ConfigError(f"num_trials must be at least 2 (one target, one non-target), got {num_trials}")
    clips = clips.sort_values("clip_id", kind="stable")
    ids = clips["clip_id"].to_numpy()
    speakers = clips["speaker"].to_numpy()
    groups = [np.flatnonzero(speakers == s) for s in sorted(set(speakers))]
    weights = np.array([len(g) * (len(g) - 1) // 2 for g in groups], dtype=np.float64)
    available_target = int(weights.sum())
    available_nontarget = len(ids) * (len(ids) - 1) // 2 - available_target
    if available_target == 0 or available_nontarget == 0:
        raise ConfigError(f"cannot make verification trials from {len(ids)} clip(s) of {len(groups)} speaker(s): "
                          "target trials need a speaker with 2 clips, non-target trials 2 speakers.")
    per_side = min(num_trials // 2, available_target, available_nontarget)
    if per_side < num_trials // 2:
        log.warning("only %d target and %d non-target pairs exist: generating %d of each instead of %d",
                    available_target, available_nontarget, per_side, num_trials // 2)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7B1A15]))
    target: set[tuple[int, int]] = set()
    while len(target) < per_side:
        group = groups[rng.choice(len(groups), p=weights / weights.sum())]
        i, j = rng.choice(group, size=2, replace=False)
        target.add((min(i, j), max(i, j)))
    nontarget: set[tuple[int, int]] = set()
    while len(nontarget) < per_side:
        i, j = rng.integers(len(ids), size=2)
        if speakers[i] != speakers[j]:
            nontarget.add((min(i, j), max(i, j)))
    pairs = [(1, i, j) for i, j in sorted(target)] + [(0, i, j) for i, j in sorted(nontarget)]
    pairs = [pairs[k] for k in rng.permutation(len(pairs))]
    return pd.DataFrame([(label, ids[i], ids[j]) for label, i, j in pairs], columns=list(TRIAL_COLUMNS))


def trials_text(trials: pd.DataFrame) -> str:
    """The VoxCeleb trial format: one "LABEL ENROLL TEST" line per trial."""
    return "".join(f"{int(label)} {a} {b}\n" for label, a, b in trials[list(TRIAL_COLUMNS)].itertuples(index=False))


def generated_trials_path(manifest: Manifest, seed: int, num_trials: int = DEFAULT_NUM_TRIALS) -> Path:
    suffix = "" if num_trials == DEFAULT_NUM_TRIALS else f"-n{num_trials}"
    return manifest.root / f"trials-{seed}{suffix}.txt"


def ensure_trials(manifest: Manifest, clips: pd.DataFrame, seed: int = 0,
                  num_trials: int = DEFAULT_NUM_TRIALS) -> tuple[pd.DataFrame, Path]:
    """Generate the trials over `clips` and save them beside the manifest (atomically) unless the
    file already holds exactly them; return (trials, path). Generation is deterministic, so the
    file only changes when the manifest does."""
    trials = generate_trials(clips, seed, num_trials)
    path = generated_trials_path(manifest, seed, num_trials)
    text = trials_text(trials)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        if path.is_file():
            log.warning("%s held other trials (the manifest changed); rewriting it", path)
        atomic_write_bytes(path, text.encode())
    return trials, path
