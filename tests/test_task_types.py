"""bench.data.task_types: each task type's view of a manifest, trials, folds, label maps, accent splits.

Manifests here are written with bench.data.manifest.write_manifest from small tables (views read only
the table, never the audio); the embedded-corpus test runs on the real tiny corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.data.label_maps import apply_label_map, load_label_map
from bench.data.manifest import read_manifest, write_manifest
from bench.data.prepare import cremad, iemocap, ravdess
from bench.data.task_types import accent_held_out_view, build_task_view, deal_utterances, split_of_fold
from bench.data.trials import DEFAULT_NUM_TRIALS, generate_trials, load_trials, trials_text
from bench.errors import ConfigError


def manifest_of(folder: Path, rows: list[dict], meta: dict | None = None):
    table = pd.DataFrame(rows)
    for column, value in (("num_samples", 16_000), ("sample_rate", 16_000)):
        table[column] = value
    table["audio_path"] = [f"audio/{c}.wav" for c in table["clip_id"]]
    return read_manifest(write_manifest(table, folder, {"name": "toy", **(meta or {})}))


def speaker_corpus(folder: Path, splits: dict[str, dict[str, int]], **extra) -> object:
    """Speakers -> utterance counts per split, words cycling a/b/c, e.g. {"train": {"s1": 20}}."""
    rows = []
    for split, speakers in splits.items():
        for speaker, n in speakers.items():
            for k in range(n):
                rows.append({"clip_id": f"{speaker}/u{k:03d}", "label": "abc"[k % 3], "speaker": speaker,
                             "split": split, **{key: f(speaker, k) for key, f in extra.items()}})
    return manifest_of(folder, rows)


SPEAKERS = {"train": {"s1": 20, "s2": 10, "s3": 3, "s4": 2}, "valid": {"v1": 4}, "test": {"t1": 5, "t2": 6}}


def test_words_view_is_the_manifest_split(tmp_path: Path) -> None:
    manifest = speaker_corpus(tmp_path, SPEAKERS)
    view = build_task_view(manifest, "words")
    assert view.task_type == "words" and view.label_column == "label" and view.labels == ["a", "b", "c"]
    for split in ("train", "valid", "test"):
        assert view.splits[split]["clip_id"].tolist() == manifest.split(split)["clip_id"].tolist()
    assert view.folds is None and view.trials is None and view.dropped == {}


def test_speaker_id_deals_train_speakers_utterances(tmp_path: Path) -> None:
    manifest = speaker_corpus(tmp_path, SPEAKERS)
    view = build_task_view(manifest, "speaker-id")
    assert view.label_column == "speaker"
    # s4 has 2 utterances: it cannot be in all three splits, so it is dropped and counted.
    assert view.labels == ["s1", "s2", "s3"] and view.dropped == {"s4": 2}
    counts = {split: rows.groupby("speaker").size().to_dict() for split, rows in view.splits.items()}
    # 20 -> 2 test, 2 valid, 16 train; 10 -> 1/1/8; 3 -> 1/1/1 (at least one each).
    assert counts == {"train": {"s1": 16, "s2": 8, "s3": 1}, "valid": {"s1": 2, "s2": 1, "s3": 1},
                      "test": {"s1": 2, "s2": 1, "s3": 1}}
    ids = [set(rows["clip_id"]) for rows in view.splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Same seed, same deal; another split seed deals differently; the run seed plays no part.
    again = build_task_view(manifest, "speaker-id")
    assert all(again.splits[s]["clip_id"].tolist() == view.splits[s]["clip_id"].tolist() for s in view.splits)
    other = build_task_view(manifest, "speaker-id", split_seed=1)
    assert other.splits["test"]["clip_id"].tolist() != view.splits["test"]["clip_id"].tolist()
    # The splits keep manifest order (sorted clip ids), so test-clip order is stable across runs.
    assert view.splits["test"]["clip_id"].is_monotonic_increasing


def test_deal_is_by_hash_of_clip_id(tmp_path: Path) -> None:
    import hashlib

    rows = pd.DataFrame({"clip_id": [f"x{k}" for k in range(10)], "speaker": "s"})
    assigned, dropped = deal_utterances(rows, split_seed=7)
    ranked = sorted(rows["clip_id"], key=lambda c: hashlib.sha256(f"7:{c}".encode()).hexdigest())
    assert assigned.tolist() == [{ranked[0]: "test", ranked[1]: "valid"}.get(c, "train") for c in rows["clip_id"]]
    assert dropped == {}


def test_speaker_id_uses_an_utterance_level_iden_split(tmp_path: Path) -> None:
    rows = [{"clip_id": f"{s}/{k}", "label": s, "speaker": s, "split": "train", "iden_split": code}
            for s in ("a", "b") for k, code in enumerate((1, 1, 2, 3))]
    rows.append({"clip_id": "c/0", "label": "c", "speaker": "c", "split": "test", "iden_split": None})
    view = build_task_view(manifest_of(tmp_path, rows), "speaker-id")
    assert {s: sorted(r["clip_id"]) for s, r in view.splits.items()} == {
        "train": ["a/0", "a/1", "b/0", "b/1"], "valid": ["a/2", "b/2"], "test": ["a/3", "b/3"]}
    assert view.labels == ["a", "b"]
    rows[3]["speaker"] = rows[3]["label"] = "z"  # a test utterance of a speaker never trained on
    with pytest.raises(ConfigError, match="no training utterance, first z"):
        build_task_view(manifest_of(tmp_path / "bad", rows), "speaker-id")


def test_generated_trials(tmp_path: Path) -> None:
    manifest = speaker_corpus(tmp_path, SPEAKERS)
    view = build_task_view(manifest, "speaker-verification", num_trials=20)
    trials = view.trials
    speaker = dict(zip(manifest.table["clip_id"], manifest.table["speaker"]))
    assert (trials["label"] == 1).sum() == (trials["label"] == 0).sum() == 10
    assert all((speaker[a] == speaker[b]) == bool(lab) for lab, a, b in trials.itertuples(index=False))
    assert len({(a, b) for _, a, b in trials.itertuples(index=False)}) == 20  # no repeated pair
    trial_speakers = {speaker[c] for c in set(trials["enroll"]) | set(trials["test"])}
    assert trial_speakers <= {"v1", "t1", "t2"}  # speakers outside the train split only
    assert view.labels == ["s1", "s2", "s3"] and not trial_speakers & set(view.labels)
    assert set(view.trial_clips["clip_id"]) == set(trials["enroll"]) | set(trials["test"])
    # Saved beside the manifest in the VoxCeleb format, and read back identically.
    path = tmp_path / "trials-0-n20.txt"
    assert path.read_text() == trials_text(trials)
    assert path.read_text().splitlines()[0].split()[0] in ("0", "1")
    pd.testing.assert_frame_equal(load_trials(path, manifest.table), trials)
    stamp = path.stat().st_mtime_ns
    assert build_task_view(manifest, "speaker-verification", num_trials=20).trials.equals(trials)
    assert path.stat().st_mtime_ns == stamp  # identical trials: the file is not rewritten
    other = build_task_view(manifest, "speaker-verification", num_trials=20, trials_seed=1).trials
    assert (tmp_path / "trials-1-n20.txt").is_file() and not other.equals(trials)


def test_trial_generation_is_capped_and_balanced() -> None:
    clips = pd.DataFrame({"clip_id": ["a1", "a2", "a3", "b1", "b2"], "speaker": ["a", "a", "a", "b", "b"]})
    # Target pairs: a has 3, b has 1 -> 4; non-target pairs 3 * 2 = 6. Asking for 100 gives 4 + 4.
    trials = generate_trials(clips, seed=0, num_trials=100)
    assert trials["label"].value_counts().to_dict() == {1: 4, 0: 4}
    pairs = {(a, b) for label, a, b in trials.itertuples(index=False) if label == 1}
    assert pairs == {("a1", "a2"), ("a1", "a3"), ("a2", "a3"), ("b1", "b2")}  # every target pair
    assert all(a[0] != b[0] for label, a, b in trials.itertuples(index=False) if label == 0)
    with pytest.raises(ConfigError, match="2 speakers"):
        generate_trials(clips[clips["speaker"] == "a"])


def test_default_trial_file_name(tmp_path: Path) -> None:
    manifest = speaker_corpus(tmp_path, {"train": {"s1": 5}, "valid": {"v1": 40}, "test": {"t1": 40}})
    view = build_task_view(manifest, "speaker-verification", trials_seed=4)
    assert (tmp_path / "trials-4.txt").is_file() and len(view.trials) == DEFAULT_NUM_TRIALS


def test_corpus_trials_keep_their_speakers_out_of_training(tmp_path: Path) -> None:
    rows = [{"clip_id": f"{s}/v/{k:05d}", "label": s, "speaker": s, "split": "train", "iden_split": code}
            for s in ("id1", "id2", "id3") for k, code in enumerate((1, 1, 2, 3))]
    (tmp_path / "trials.txt").write_text("1 id3/v/00000.wav id3/v/00001.wav\n0 id3/v/00002 id1/v/00000.wav\n\n")
    manifest = manifest_of(tmp_path, rows, {"trials": "trials.txt"})
    view = build_task_view(manifest, "speaker-verification")
    assert view.trials.values.tolist() == [[1, "id3/v/00000", "id3/v/00001"], [0, "id3/v/00002", "id1/v/00000"]]
    # id1 and id3 are trial speakers: only id2 is left to train on.
    assert view.labels == ["id2"]
    assert set(view.splits["train"]["speaker"]) == {"id2"}


@pytest.mark.parametrize("text, message", [
    ("1 id3/v/00000 id3/v/00009\n0 id3/v/00000 id1/v/00000\n", "'id3/v/00009' is not a clip"),
    ("0 id3/v/00000 id3/v/00001\n1 id3/v/00000 id3/v/00002\n", "labelled 0 but .* the same speaker"),
    ("1 id3/v/00000\n", r"trials.txt:1: expected 'LABEL ENROLL TEST'"),
    ("1 id3/v/00000 id3/v/00001\n", "needs both target"),
])
def test_bad_trial_lists(tmp_path: Path, text: str, message: str) -> None:
    rows = [{"clip_id": f"{s}/v/{k:05d}", "label": s, "speaker": s, "split": "train"}
            for s in ("id1", "id3") for k in range(3)]
    (tmp_path / "trials.txt").write_text(text)
    manifest = manifest_of(tmp_path, rows, {"trials": "trials.txt"})
    with pytest.raises(ConfigError, match=message):
        load_trials(tmp_path / "trials.txt", manifest.table)


def test_verification_without_unseen_speakers(tmp_path: Path) -> None:
    rows = [{"clip_id": f"{s}/{k}", "label": s, "speaker": s, "split": "train", "iden_split": code}
            for s in ("a", "b") for k, code in enumerate((1, 1, 2, 3))]
    with pytest.raises(ConfigError, match="veri_test2.txt") as exc:
        build_task_view(manifest_of(tmp_path, rows), "speaker-verification")
    assert str(tmp_path / "manifest.csv") in str(exc.value)


def test_split_of_fold() -> None:
    assert split_of_fold([1, 2, 3, 4, 5], 1) == {1: "test", 2: "valid", 3: "train", 4: "train", 5: "train"}
    assert split_of_fold([5, 1, 3], 5) == {5: "test", 1: "valid", 3: "train"}  # cyclic in sorted order
    with pytest.raises(ConfigError, match="3 folds"):
        split_of_fold([1, 2], 1)
    with pytest.raises(ConfigError, match="fold 9"):
        split_of_fold([1, 2, 3], 9)


def emotion_rows(codes: dict[str, str], fold_column: str | None = "fold", folds: int = 5) -> list[dict]:
    rows = []
    for f in range(1, folds + 1):
        for k, (code, name) in enumerate(codes.items()):
            row = {"clip_id": f"f{f}_{k}", "label": name, "emotion": name, "emotion_code": code,
                   "speaker": f"spk{f}", "split": split_of_fold(range(1, folds + 1), 1)[f]}
            if fold_column:
                row[fold_column] = f
            rows.append(row)
    return rows


def test_emotion_folds(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, emotion_rows(cremad.EMOTIONS), {"name": "crema-d"})
    view = build_task_view(manifest, "emotion")
    assert view.label_column == "emotion" and view.labels == sorted(cremad.EMOTIONS.values())
    assert len(view.folds) == 5 and view.splits is view.folds[0]
    for k, fold in enumerate(view.folds, start=1):
        assert set(fold["test"]["fold"]) == {k}
        assert set(fold["valid"]["fold"]) == {k % 5 + 1}
        assert set(fold["train"]["fold"]) == set(range(1, 6)) - {k, k % 5 + 1}
    # IEMOCAP-style: a session column instead of fold.
    session = manifest_of(tmp_path / "s", emotion_rows(iemocap.KEPT, "session"), {"name": "iemocap"})
    assert [set(f["test"]["session"]) for f in build_task_view(session, "emotion").folds] == [{1}, {2}, {3}, {4}, {5}]
    # No folds: the manifest's own split.
    plain = manifest_of(tmp_path / "p", emotion_rows(cremad.EMOTIONS, None))
    view = build_task_view(plain, "emotion")
    assert view.folds is None and set(view.splits["test"]["speaker"]) == {"spk1"}


def test_emotion_needs_the_column(tmp_path: Path) -> None:
    manifest = speaker_corpus(tmp_path, SPEAKERS)
    with pytest.raises(ConfigError, match="needs the column 'emotion'") as exc:
        build_task_view(manifest, "emotion")
    assert str(tmp_path / "manifest.csv") in str(exc.value) and "avbench prepare cremad" in str(exc.value)
    with pytest.raises(ConfigError, match="choose one of words"):
        build_task_view(manifest, "phonemes")


def test_shipped_label_map_covers_every_preparer_code() -> None:
    mapping = load_label_map("emotion")
    assert mapping.shared == ("neutral", "happy", "sad", "angry")
    assert set(mapping.corpora["crema-d"]) == set(cremad.EMOTIONS)
    assert set(mapping.corpora["ravdess"]) == set(ravdess.EMOTIONS)
    assert set(mapping.corpora["iemocap"]) == set(iemocap.KEPT)
    assert mapping.corpora["iemocap"]["exc"] == "happy"


def test_label_map_applied_to_codes(tmp_path: Path) -> None:
    # RAVDESS codes "01".."08" must survive the CSV round trip as strings.
    manifest = manifest_of(tmp_path, emotion_rows(ravdess.EMOTIONS), {"name": "ravdess"})
    assert manifest.table["emotion_code"].iloc[0] == "01"
    view = build_task_view(manifest, "emotion", label_map="emotion")
    assert view.labels == ["angry", "happy", "neutral", "sad"]
    # calm, fearful, disgust, surprised dropped: one clip of each per fold, 5 folds.
    assert view.dropped == {"02": 5, "06": 5, "07": 5, "08": 5}
    kept = pd.concat(view.folds[0].values())
    assert len(kept) == 20 and set(kept["emotion"]) == set(view.labels)
    assert set(kept.loc[kept["emotion_original"] == "01", "emotion"]) == {"neutral"}


def test_label_map_errors(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, emotion_rows({**cremad.EMOTIONS, "XYZ": "weird"}), {"name": "crema-d"})
    mapping = load_label_map("emotion")
    with pytest.raises(ConfigError, match=r"\['XYZ'\] of corpus 'crema-d' are not in .*emotion.yaml"):
        apply_label_map(manifest.table, mapping, "crema-d", manifest.path)
    with pytest.raises(ConfigError, match="no entry for corpus 'msp'"):
        apply_label_map(manifest.table, mapping, "msp", manifest.path)
    bad = tmp_path / "map.yaml"
    bad.write_text("shared: [a, b]\ncorpora:\n  x:\n    01: a\n")
    with pytest.raises(ConfigError, match="quote codes"):
        load_label_map(bad)
    bad.write_text("shared: [a, b]\ncorpora:\n  x:\n    'n': c\n")
    with pytest.raises(ConfigError, match="maps to 'c', which is not in shared"):
        load_label_map(bad)
    with pytest.raises(ConfigError, match="shipped maps \\(emotion\\)"):
        load_label_map("nonexistent")
    with pytest.raises(ConfigError, match="emotion tasks only"):
        build_task_view(manifest, "words", label_map="emotion")


def test_accent_held_out_view(tmp_path: Path) -> None:
    accent = {"s1": "en", "s2": "en-us", "s3": "en", "s4": "en-us", "v1": "en", "t1": "en-029", "t2": "en"}
    manifest = speaker_corpus(tmp_path, SPEAKERS, accent=lambda s, k: accent[s])
    view = accent_held_out_view(manifest, ["en", "en-us"], ["en-029"])
    assert view.task_type == "words"
    assert set(view.splits["train"]["speaker"]) == {"s1", "s2", "s3", "s4"}
    assert set(view.splits["valid"]["speaker"]) == {"v1"}
    assert set(view.splits["test"]["speaker"]) == {"t1"}  # t2 speaks a training accent: unused
    assert "6 clip(s)" in view.notes
    with pytest.raises(ConfigError, match="both train and test"):
        accent_held_out_view(manifest, ["en"], ["en", "en-029"])
    with pytest.raises(ConfigError, match=r"\['fr'\] do not occur; choose from en, en-029, en-us"):
        accent_held_out_view(manifest, ["en"], ["fr"])
    with pytest.raises(ConfigError, match="valid split"):
        accent_held_out_view(manifest, ["en-us"], ["en-029"])  # no valid speaker has en-us
    with pytest.raises(ConfigError, match="needs the column 'accent'"):
        accent_held_out_view(speaker_corpus(tmp_path / "x", SPEAKERS), ["en"], ["en-us"])


@pytest.mark.slow
def test_embedded_corpus_views(tiny_corpus) -> None:
    manifest = tiny_corpus.manifest
    table = manifest.table
    train_speakers = set(manifest.split("train")["speaker"])
    sid = build_task_view(manifest, "speaker-id")
    assert set(sid.labels) == train_speakers and sid.dropped == {}
    for speaker, rows in table[table["split"] == "train"].groupby("speaker"):
        assert all((sid.splits[s]["speaker"] == speaker).any() for s in ("train", "valid", "test"))
    ver = build_task_view(manifest, "speaker-verification")
    named = set(ver.trials["enroll"]) | set(ver.trials["test"])
    assert set(table.loc[table["clip_id"].isin(named), "speaker"]) == set(table.loc[table["split"] != "train", "speaker"])
    assert (ver.trials["label"] == 1).sum() == (ver.trials["label"] == 0).sum() > 0
    assert (manifest.root / "trials-0.txt").is_file()
    meta = json.loads((manifest.root / "manifest.json").read_text())
    assert "trials" not in meta  # generated trials live beside the manifest, not in it
    emo = build_task_view(manifest, "emotion", label_map="emotion")
    assert emo.labels == ["angry", "happy", "neutral", "sad"] and emo.dropped == {}
    accents = table.groupby("split")["accent"].agg(set)
    view = accent_held_out_view(manifest, sorted(accents["train"] | accents["valid"]),
                                sorted(accents["test"] - accents["train"] - accents["valid"]))
    assert not set(view.splits["test"]["speaker"]) & train_speakers
