"""Task types: how one manifest is read as a words, speaker-id, speaker-verification or emotion task.

A manifest (bench.data.manifest) is one table of clips with a speaker-disjoint train/valid/test split.
`build_task_view` turns it into a `TaskView`: which column holds the class, the class list, and
the clips of each split (and of each fold, and the verification trials, where the task has them).
Views are computed, never stored, so a manifest stays the single source of truth; the one thing
written is a generated trial list, saved beside the manifest so every run scores the same trials.

- words: `label`, the manifest's own split.
- speaker-id (closed set: the test clips are new utterances of the training speakers): `speaker`.
  A corpus with its own utterance-level identification split has a column `iden_split` (1 train,
  2 valid, 3 test; VoxCeleb1's iden_split.txt) and it is used as is, over the rows that have it.
  Otherwise the manifest's split is speaker-disjoint, so only its *train* speakers are used, and
  each speaker's utterances are dealt 80/10/10 into train/valid/test in the order of
  sha256(f"{split_seed}:{clip_id}"): at least one utterance per split, so a speaker needs three
  (speakers with fewer are dropped and counted in `dropped`). The deal depends only on the clip
  ids and `split_seed`, not on the run seed, so every run tests on the same clips.
- speaker-verification: the head is trained as speaker-id on the training speakers (the view
  above) and scored on trials between utterances of speakers it never saw. Trials come from the
  corpus when manifest.json names a `trials` file (lines "LABEL ENROLL TEST", LABEL 1 for the
  same speaker, clip ids or the corpus's relative wav paths); its speakers are then removed from
  training. Otherwise they are generated from the clips outside the train split whose speakers
  are not trained on (bench.data.trials: balanced, seeded) and saved beside the manifest as
  trials-<seed>.txt in the same format.
- emotion: `emotion`. A corpus with a `fold` column (else `session`: IEMOCAP) is evaluated over
  its folds: fold k tests on fold value k, validates on the next fold value (cyclically, in sorted
  order) and trains on the rest (`split_of_fold`); `splits` is the first fold and `folds` all of
  them. Without folds, the manifest's split is used as is. `label_map` maps each corpus's labels
  into a shared space for cross-dataset runs (bench.data.label_maps; prepare/label_maps/emotion.yaml), dropping
  the labels mapped to null and counting them per original label in `dropped`.

`accent_held_out_view` is a words task trained on some accents and tested on others.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.data.label_maps import apply_label_map, corpus_key, load_label_map
from bench.data.manifest import SPLITS, Manifest
from bench.data.trials import DEFAULT_NUM_TRIALS, ensure_trials, load_trials
from bench.errors import ConfigError

log = logging.getLogger("avbench.task_types")

TASK_TYPES = ("words", "speaker-id", "speaker-verification", "emotion")
LABEL_COLUMNS = {"words": "label", "speaker-id": "speaker", "speaker-verification": "speaker",
                 "emotion": "emotion"}
IDEN_SPLIT_COLUMN = "iden_split"
IDEN_SPLIT_CODES = {1: "train", 2: "valid", 3: "test"}
# Per speaker: at least one utterance each to valid and test, about this fraction of them.
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True, eq=False)  # DataFrames have no single truth value to compare by
class TaskView:
    """One manifest read as one task type.

    task_type: one of TASK_TYPES. label_column: the column the classifier predicts.
    labels: the sorted class names (for a mapped emotion view, the whole shared space, so that
      class indices agree between corpora). splits: "train"/"valid"/"test" -> rows of the manifest
      (its columns, in manifest order). folds: for corpora with folds, one such dict per fold, in
      sorted fold order (splits is folds[0]); else None. trials: verification only, columns
      label (1 target, 0 non-target), enroll, test (clip ids). trial_clips: the manifest rows of
      every clip the trials name. dropped: rows left out, counted per original label (an emotion
      code mapped to nothing, a speaker with too few utterances). notes: how the view was made.
    """

    task_type: str
    label_column: str
    labels: list[str]
    splits: dict[str, pd.DataFrame]
    folds: list[dict[str, pd.DataFrame]] | None = None
    trials: pd.DataFrame | None = None
    trial_clips: pd.DataFrame | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    notes: str = ""


def _require(manifest: Manifest, column: str, task_type: str, fix: str) -> None:
    if column not in manifest.table.columns:
        raise ConfigError(f"{manifest.path}: task type {task_type!r} needs the column {column!r}, which "
                          f"this manifest lacks. {fix}")


def _check_splits(manifest: Manifest, task_type: str, splits: dict[str, pd.DataFrame], what: str = "") -> None:
    empty = [name for name in SPLITS if splits[name].empty]
    if empty:
        raise ConfigError(f"{manifest.path}: the {' and '.join(empty)} split(s) of the {task_type} task{what} "
                          "are empty; a run needs train, valid and test clips. Use a corpus with more "
                          "speakers (or utterances per speaker).")


def build_task_view(manifest: Manifest, task_type: str, *, label_map: str | Path | None = None,
                    split_seed: int = 0, trials_seed: int = 0,
                    num_trials: int = DEFAULT_NUM_TRIALS) -> TaskView:
    """The view of `manifest` as `task_type` (see the module docstring for each type's rules).

    label_map: emotion only; a mapping file, or the name of one in bench/data/prepare/label_maps
      ("emotion"). split_seed: speaker-id's utterance deal. trials_seed/num_trials: generated
      verification trials (a corpus's own trial list is used whole).
    """
    if task_type not in TASK_TYPES:
        raise ConfigError(f"task type {task_type!r}: choose one of {', '.join(TASK_TYPES)}")
    if label_map is not None and task_type != "emotion":
        raise ConfigError(f"label_map applies to emotion tasks only, not {task_type!r}")
    if task_type == "words":
        splits = {name: manifest.split(name) for name in SPLITS}
        _check_splits(manifest, task_type, splits)
        return TaskView(task_type, "label", sorted(manifest.table["label"].unique()), splits,
                        notes="the manifest's own split")
    if task_type == "emotion":
        return _emotion_view(manifest, label_map)
    splits, dropped, notes = speaker_id_splits(manifest, split_seed)
    if task_type == "speaker-id":
        _check_splits(manifest, task_type, splits)
        return TaskView(task_type, "speaker", sorted(splits["train"]["speaker"].unique()), splits,
                        dropped=dropped, notes=notes)
    return _verification_view(manifest, splits, dropped, notes, trials_seed, num_trials)


# --- speaker identification -------------------------------------------------------------------

def speaker_id_splits(manifest: Manifest, split_seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict[str, int], str]:
    """(splits, dropped speakers -> utterances, notes) of the closed-set speaker-id task."""
    _require(manifest, "speaker", "speaker-id", "Every manifest needs a speaker column; re-run the preparer.")
    table = manifest.table
    if IDEN_SPLIT_COLUMN in table.columns and table[IDEN_SPLIT_COLUMN].notna().any():
        codes = pd.to_numeric(table[IDEN_SPLIT_COLUMN], errors="coerce")
        bad = table[IDEN_SPLIT_COLUMN].notna() & ~codes.isin(list(IDEN_SPLIT_CODES))
        if bad.any():
            raise ConfigError(f"{manifest.path}: column {IDEN_SPLIT_COLUMN!r} holds "
                              f"{table.loc[bad, IDEN_SPLIT_COLUMN].iloc[0]!r}; it must be 1 (train), 2 (valid), "
                              "3 (test) or empty. Re-run the preparer.")
        splits = {name: table[codes == code] for code, name in IDEN_SPLIT_CODES.items()}
        trained = set(splits["train"]["speaker"])
        for name in ("valid", "test"):
            unseen = sorted(set(splits[name]["speaker"]) - trained)
            if unseen:
                raise ConfigError(f"{manifest.path}: {len(unseen)} speaker(s) of {IDEN_SPLIT_COLUMN} {name} have "
                                  f"no training utterance, first {unseen[0]}; a closed-set identification "
                                  "split needs every speaker in train. Re-prepare from the official list.")
        return splits, {}, f"the corpus's utterance-level {IDEN_SPLIT_COLUMN}"
    rows = table[table["split"] == "train"]
    assigned, dropped = deal_utterances(rows, split_seed)
    if dropped:
        log.warning("%s: speaker-id leaves out %d speaker(s) with fewer than 3 utterances (%d clips)",
                    manifest.path, len(dropped), sum(dropped.values()))
    splits = {name: rows[assigned == name] for name in SPLITS}
    notes = (f"train-split speakers only; each speaker's utterances dealt "
             f"{1 - 2 * HELD_OUT_FRACTION:.0%}/{HELD_OUT_FRACTION:.0%}/{HELD_OUT_FRACTION:.0%} by "
             f"sha256(split_seed={split_seed}:clip_id)")
    return splits, dropped, notes


def deal_utterances(rows: pd.DataFrame, split_seed: int = 0) -> tuple[pd.Series, dict[str, int]]:
    """Per row: "train"/"valid"/"test" (or None for a dropped speaker); dropped speaker -> clips.

    Each speaker's clips are ordered by sha256(f"{split_seed}:{clip_id}"); the first
    max(1, round(10%)) go to test, the next as many to valid, the rest to train.
    """
    keys = [hashlib.sha256(f"{split_seed}:{c}".encode()).hexdigest() for c in rows["clip_id"]]
    order = pd.Series(keys, index=rows.index)
    assigned = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    dropped: dict[str, int] = {}
    for speaker, index in rows.groupby("speaker", sort=True).groups.items():
        ranked = order.loc[index].sort_values(kind="stable").index
        n = len(ranked)
        if n < 3:
            dropped[str(speaker)] = n
            continue
        held = max(1, int(n * HELD_OUT_FRACTION + 0.5))
        assigned.loc[ranked[:held]] = "test"
        assigned.loc[ranked[held:2 * held]] = "valid"
        assigned.loc[ranked[2 * held:]] = "train"
    return assigned, dropped


# --- speaker verification ---------------------------------------------------------------------

def _verification_view(manifest: Manifest, splits: dict[str, pd.DataFrame], dropped: dict[str, int], notes: str,
                       trials_seed: int, num_trials: int) -> TaskView:
    table = manifest.table
    if manifest.meta.get("trials"):
        path = manifest.resolve(manifest.meta["trials"])
        trials = load_trials(path, table)
        named = set(trials["enroll"]) | set(trials["test"])
        trial_speakers = set(table.loc[table["clip_id"].isin(named), "speaker"])
        before = set(splits["train"]["speaker"])
        splits = {name: rows[~rows["speaker"].isin(trial_speakers)] for name, rows in splits.items()}
        notes += f"; trials from the corpus ({path.name}), their {len(trial_speakers)} speaker(s) kept out of training"
        if before & trial_speakers:
            log.info("%s: %d trial speaker(s) removed from speaker-id training", manifest.path,
                     len(before & trial_speakers))
    else:
        trained = set(splits["train"]["speaker"])
        unseen = table[(table["split"] != "train") & ~table["speaker"].isin(trained)]
        if unseen["speaker"].nunique() < 2:
            raise ConfigError(
                f"{manifest.path}: speaker verification needs utterances of at least 2 speakers that "
                f"training never sees (outside the train split), found {unseen['speaker'].nunique()}. "
                "Give the corpus's trial list (a 'trials' entry in manifest.json; for VoxCeleb1 put "
                "veri_test2.txt beside wav/ and re-run `avbench prepare voxceleb1`), or use a corpus "
                "with speaker-disjoint valid/test speakers.")
        trials, path = ensure_trials(manifest, unseen, trials_seed, num_trials)
        notes += f"; {len(trials)} generated trials over {unseen['speaker'].nunique()} unseen speakers ({path.name})"
    _check_splits(manifest, "speaker-verification", splits, " (training speakers)")
    named = set(trials["enroll"]) | set(trials["test"])
    return TaskView("speaker-verification", "speaker", sorted(splits["train"]["speaker"].unique()), splits,
                    trials=trials, trial_clips=table[table["clip_id"].isin(named)], dropped=dropped, notes=notes)


# --- emotion ----------------------------------------------------------------------------------

def split_of_fold(fold_values: Sequence[int], test_fold: int) -> dict[int, str]:
    """Fold value -> split when `test_fold` is tested: the next value (cyclically) validates."""
    values = sorted(set(int(v) for v in fold_values))
    if len(values) < 3:
        raise ConfigError(f"folds {values}: train, valid and test need 3 folds at least")
    if test_fold not in values:
        raise ConfigError(f"fold {test_fold} is not one of the folds {values}")
    k = values.index(test_fold)
    valid_fold = values[(k + 1) % len(values)]
    return {v: "test" if v == test_fold else "valid" if v == valid_fold else "train" for v in values}


def _emotion_view(manifest: Manifest, label_map: str | Path | None) -> TaskView:
    _require(manifest, "emotion", "emotion",
             "Prepare an emotion corpus (`avbench prepare cremad|ravdess|iemocap PATH`) or use the "
             "embedded corpus, whose clips carry an emotion style.")
    table = manifest.table
    dropped: dict[str, int] = {}
    labels = None
    notes = ""
    if label_map is not None:
        mapping = load_label_map(label_map)
        table, dropped = apply_label_map(table, mapping, corpus_key(manifest), manifest.path)
        labels = sorted(mapping.shared)
        notes = f"labels mapped by {mapping.source.name}; "
    labels = labels or sorted(table["emotion"].unique())
    fold_column = next((c for c in ("fold", "session") if c in table.columns), None)
    if fold_column is None:
        splits = {name: table[table["split"] == name] for name in SPLITS}
        _check_splits(manifest, "emotion", splits)
        return TaskView("emotion", "emotion", labels, splits, dropped=dropped, notes=notes + "the manifest's own split")
    values = pd.to_numeric(table[fold_column], errors="coerce")
    if values.isna().any() or (values != values.round()).any():
        first = table.loc[values.isna() | (values != values.round()), fold_column].iloc[0]
        raise ConfigError(f"{manifest.path}: column {fold_column!r} must hold integer fold numbers; found "
                          f"{first!r}. Re-run the preparer.")
    values = values.astype(int)
    folds = []
    for test_fold in sorted(values.unique()):
        role = values.map(split_of_fold(values.unique(), test_fold))
        splits = {name: table[role == name] for name in SPLITS}
        _check_splits(manifest, "emotion", splits, f" (test {fold_column} {test_fold})")
        folds.append(splits)
    return TaskView("emotion", "emotion", labels, folds[0], folds=folds, dropped=dropped,
                    notes=notes + f"leave-one-{fold_column}-out over {len(folds)} {fold_column}s, "
                                  f"the next {fold_column} validates")


# --- accents ----------------------------------------------------------------------------------

def accent_held_out_view(manifest: Manifest, train_accents: Sequence[str], test_accents: Sequence[str]) -> TaskView:
    """A words task trained on some accents and tested on others.

    train/valid: the manifest's train/valid clips whose accent is in `train_accents`; test: every
    clip (of any split) whose accent is in `test_accents`. The manifest's split is speaker-disjoint
    and the accent sets are disjoint, so no test speaker is heard in training; the manifest's test
    clips of training accents are not used (counted in notes).
    """
    _require(manifest, "accent", "words (accent held out)",
             "Only corpora with an accent per clip (the embedded corpus) support accent splits.")
    table = manifest.table
    train_set, test_set = set(train_accents), set(test_accents)
    available = sorted(table["accent"].astype(str).unique())
    for name, chosen in (("train", train_set), ("test", test_set)):
        if not chosen:
            raise ConfigError(f"accent split: no {name} accents given; choose from {', '.join(available)}")
        unknown = sorted(chosen - set(available))
        if unknown:
            raise ConfigError(f"{manifest.path}: {name} accent(s) {unknown} do not occur; choose from "
                              f"{', '.join(available)}")
    if train_set & test_set:
        raise ConfigError(f"accent split: {sorted(train_set & test_set)} are both train and test accents; "
                          "held-out accents must not be trained on")
    in_train = table["accent"].isin(train_set)
    splits = {"train": table[in_train & (table["split"] == "train")],
              "valid": table[in_train & (table["split"] == "valid")],
              "test": table[table["accent"].isin(test_set)]}
    heard = set(splits["train"]["speaker"]) | set(splits["valid"]["speaker"])
    shared = sorted(heard & set(splits["test"]["speaker"]))
    if shared:
        raise ConfigError(f"{manifest.path}: speaker {shared[0]} has clips of both train and test accents; "
                          "accent splits need one accent per speaker")
    _check_splits(manifest, "words", splits, " (accent held out)")
    unused = len(table) - sum(len(rows) for rows in splits.values())
    return TaskView("words", "label", sorted(table["label"].unique()), splits,
                    notes=f"train accents {sorted(train_set)}, test accents {sorted(test_set)} (all their "
                          f"speakers); {unused} clip(s) of other accents or of training-accent test speakers unused")
