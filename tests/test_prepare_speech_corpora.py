"""The VoxCeleb1, CREMA-D, RAVDESS and IEMOCAP preparers on tiny trees of the real layouts.

Every tree holds real wav files (0.3 s of noise; RAVDESS at its native 48 kHz), named and nested as
in the releases, so the parsing, the audio checks and the task views run on what a user has.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.data.audio import AudioError
from bench.cli import main
from bench.data.manifest import read_manifest
from bench.data.prepare.common import CorpusLayoutError
from bench.data.prepare.cremad import prepare_cremad
from bench.data.prepare.iemocap import prepare_iemocap
from bench.data.prepare.ravdess import prepare_ravdess
from bench.data.prepare.voxceleb1 import prepare_voxceleb1
from bench.data.task_types import build_task_view

SECONDS = 0.3
SAMPLES_16K = 4800


def write_noise(path: Path, sr: int = 16_000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 0.1, int(SECONDS * sr)).astype(np.float32)
    sf.write(path, noise, sr, subtype="PCM_16")


def corrupt(path: Path) -> None:
    path.write_bytes(b"RIFF\x00\x00garbage" + bytes(range(200)))


def prepare(fn, root: Path, out: Path, **kwargs):
    return read_manifest(fn(root, out, progress=False, **kwargs))


# --- VoxCeleb1 ------------------------------------------------------------------------------------

VOX_SPEAKERS = ("id10001", "id10002", "id10270", "id10271")
VOX_VIDEOS = ("1zcIwhmdeo4", "x6uYqmx31kE")


def make_voxceleb1(root: Path, unlisted: bool = True) -> None:
    """4 speakers x 2 videos x 2 utterances; iden_split codes 1,1,2,3 per speaker (the real list
    covers the test speakers too); one extra clip of id10309 not in iden_split; veri_test2.txt
    with 2 target and 2 non-target trials between id10270 and id10271."""
    iden = []
    for s, speaker in enumerate(VOX_SPEAKERS):
        k = 0
        for video in VOX_VIDEOS:
            for n in (1, 2):
                rel = f"{speaker}/{video}/{n:05d}.wav"
                write_noise(root / "wav" / rel, seed=10 * s + k)
                iden.append(f"{(1, 1, 2, 3)[k]} {rel}")
                k += 1
    if unlisted:
        write_noise(root / "wav" / "id10309" / "abcdefghijk" / "00001.wav", seed=99)
    (root / "iden_split.txt").write_text("\n".join(iden) + "\n")
    (root / "veri_test2.txt").write_text(
        "1 id10270/1zcIwhmdeo4/00001.wav id10270/x6uYqmx31kE/00002.wav\n"
        "0 id10270/1zcIwhmdeo4/00001.wav id10271/x6uYqmx31kE/00001.wav\n"
        "1 id10271/1zcIwhmdeo4/00002.wav id10271/x6uYqmx31kE/00001.wav\n"
        "0 id10271/1zcIwhmdeo4/00001.wav id10270/x6uYqmx31kE/00001.wav\n")


def test_voxceleb1_manifest_and_views(tmp_path: Path) -> None:
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    manifest = prepare(prepare_voxceleb1, root, tmp_path / "out")
    t = manifest.table.set_index("clip_id")
    assert len(t) == 17
    row = t.loc["id10001/1zcIwhmdeo4/00001"]
    assert (row["label"], row["speaker"], row["split"], row["iden_split"], row["youtube_id"]) == (
        "id10001", "id10001", "train", 1, "1zcIwhmdeo4")
    assert t.loc["id10001/x6uYqmx31kE/00002", "split"] == "test"
    assert Path(row["audio_path"]) == root.resolve() / "wav" / "id10001" / "1zcIwhmdeo4" / "00001.wav"
    assert set(t["num_samples"]) == {SAMPLES_16K}
    # The clip iden_split does not list: split test, no identification code.
    assert t.loc["id10309/abcdefghijk/00001", "split"] == "test"
    assert np.isnan(t.loc["id10309/abcdefghijk/00001", "iden_split"])
    meta = manifest.meta
    assert meta["trials"] == "trials.txt" and meta["trials_count"] == 4 and meta["trials_dropped"] == 0
    assert meta["unlisted_clips"] == 1 and meta["name"] == "voxceleb1"
    assert (tmp_path / "out" / "trials.txt").read_text().splitlines()[0] == \
        "1 id10270/1zcIwhmdeo4/00001 id10270/x6uYqmx31kE/00002"

    sid = build_task_view(manifest, "speaker-id")
    assert sid.labels == list(VOX_SPEAKERS)
    assert [len(sid.splits[s]) for s in ("train", "valid", "test")] == [8, 4, 4]
    ver = build_task_view(manifest, "speaker-verification")
    assert ver.labels == ["id10001", "id10002"]  # the trial speakers are kept out of training
    assert ver.trials["label"].tolist() == [1, 0, 1, 0]
    assert set(ver.trial_clips["speaker"]) == {"id10270", "id10271"}


def test_voxceleb1_bad_audio_drops_its_trials(tmp_path: Path) -> None:
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    bad = root / "wav" / "id10270" / "1zcIwhmdeo4" / "00001.wav"
    corrupt(bad)
    with pytest.raises(AudioError, match="id10270/1zcIwhmdeo4/00001.wav") as exc:
        prepare(prepare_voxceleb1, root, tmp_path / "out")
    assert "--on-bad-audio skip" in str(exc.value)
    manifest = prepare(prepare_voxceleb1, root, tmp_path / "out", on_bad_audio="skip")
    assert "id10270/1zcIwhmdeo4/00001" not in set(manifest.table["clip_id"])
    assert [s["path"] for s in manifest.meta["skipped_files"]] == [str(bad.resolve())]
    # Two trials use the skipped clip: they are left out and counted.
    assert manifest.meta["trials_count"] == 2 and manifest.meta["trials_dropped"] == 2
    assert len(build_task_view(manifest, "speaker-verification").trials) == 2


def test_voxceleb1_layout_errors(tmp_path: Path) -> None:
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    out = tmp_path / "out"
    (root / "iden_split.txt").rename(root / "iden.bak")
    with pytest.raises(CorpusLayoutError, match="iden_split.txt: split list missing"):
        prepare_voxceleb1(root, out, progress=False)
    (root / "iden.bak").rename(root / "iden_split.txt")

    with (root / "iden_split.txt").open("a") as fh:
        fh.write("1 id10001/1zcIwhmdeo4/00009.wav\n")
    with pytest.raises(CorpusLayoutError, match=r"names 1 file\(s\) that do not exist.*first: id10001/1zcIwhmdeo4/00009"):
        prepare_voxceleb1(root, out, progress=False)
    with (root / "iden_split.txt").open("a") as fh:
        fh.write("7 id10001/1zcIwhmdeo4/00001.wav\n")
    with pytest.raises(CorpusLayoutError, match=r"iden_split.txt:18: expected 'SPLIT"):
        prepare_voxceleb1(root, out, progress=False)
    make_voxceleb1(root)  # restores the lists

    write_noise(root / "wav" / "id10001" / "1zcIwhmdeo4" / "take1.wav")
    with pytest.raises(CorpusLayoutError, match="take1.wav: not a VoxCeleb1 utterance name"):
        prepare_voxceleb1(root, out, progress=False)
    (root / "wav" / "id10001" / "1zcIwhmdeo4" / "take1.wav").unlink()
    write_noise(root / "wav" / "speaker9" / "v" / "00001.wav")
    with pytest.raises(CorpusLayoutError, match="speaker9: not a VoxCeleb1 speaker folder"):
        prepare_voxceleb1(root, out, progress=False)
    with pytest.raises(CorpusLayoutError, match="wav: missing"):
        prepare_voxceleb1(tmp_path, out, progress=False)
    assert not (out / "manifest.csv").exists()


def test_voxceleb1_trials_naming_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    (root / "veri_test2.txt").write_text("1 id10270/1zcIwhmdeo4/00001.wav id10270/zzz/00001.wav\n")
    with pytest.raises(CorpusLayoutError, match="veri_test2.txt:1: id10270/zzz/00001.wav is not under wav/"):
        prepare_voxceleb1(root, tmp_path / "out", progress=False)
    (root / "veri_test2.txt").unlink()
    manifest = prepare(prepare_voxceleb1, root, tmp_path / "out")
    assert manifest.meta["trials"] is None
    # Without a trial list the unlisted speaker is the only unseen one: not enough to verify.
    with pytest.raises(Exception, match="at least 2 speakers"):
        build_task_view(manifest, "speaker-verification")


# --- CREMA-D --------------------------------------------------------------------------------------

CREMA_ACTORS = ("1001", "1002", "1003", "1004", "1005", "1006")


def make_cremad(root: Path) -> list[str]:
    """6 actors x 3 files (ANG, NEU, DIS), the three levels used; returns the stems."""
    stems = []
    for a, actor in enumerate(CREMA_ACTORS):
        for k, (sentence, emotion, level) in enumerate((("DFA", "ANG", "HI"), ("IEO", "NEU", "XX"),
                                                       ("TIE", "DIS", "LO"))):
            stem = f"{actor}_{sentence}_{emotion}_{level}"
            write_noise(root / "AudioWAV" / f"{stem}.wav", seed=3 * a + k)
            stems.append(stem)
    return stems


def test_cremad_manifest_folds_and_label_map(tmp_path: Path) -> None:
    root = tmp_path / "CREMA-D"
    stems = make_cremad(root)
    (root / "AudioWAV" / "notes.txt").write_text("not audio")
    manifest = prepare(prepare_cremad, root, tmp_path / "out")
    t = manifest.table.set_index("clip_id")
    assert sorted(t.index) == sorted(stems)
    row = t.loc["1001_DFA_ANG_HI"]
    assert (row["label"], row["emotion"], row["emotion_code"], row["speaker"], row["sentence"], row["intensity"]) == (
        "angry", "angry", "ANG", "1001", "DFA", "high")
    # Sorted actors dealt round robin into 5 folds: 1001 and 1006 share fold 1.
    assert t.groupby("speaker")["fold"].first().to_dict() == {
        "1001": 1, "1002": 2, "1003": 3, "1004": 4, "1005": 5, "1006": 1}
    assert t.groupby("fold")["split"].first().to_dict() == {1: "test", 2: "valid", 3: "train", 4: "train", 5: "train"}
    assert manifest.meta["ignored_files"] == ["notes.txt"] and manifest.meta["labels"] == ["angry", "disgust", "neutral"]

    view = build_task_view(manifest, "emotion")
    assert len(view.folds) == 5 and set(view.folds[4]["test"]["speaker"]) == {"1005"}
    mapped = build_task_view(manifest, "emotion", label_map="emotion")
    assert mapped.dropped == {"DIS": 6} and mapped.labels == ["angry", "happy", "neutral", "sad"]
    assert set(mapped.splits["train"]["emotion"]) == {"angry", "neutral"}


def test_cremad_errors_and_bad_audio(tmp_path: Path) -> None:
    root = tmp_path / "CREMA-D"
    make_cremad(root)
    out = tmp_path / "out"
    with pytest.raises(CorpusLayoutError, match="no AudioWAV/ folder"):
        prepare_cremad(tmp_path, out, progress=False)
    with pytest.raises(CorpusLayoutError, match=r"cannot make 7 speaker-disjoint folds from 6 speaker\(s\)"):
        prepare_cremad(root, out, folds=7, progress=False)
    write_noise(root / "AudioWAV" / "1001_DFA_JOY_XX.wav")
    with pytest.raises(CorpusLayoutError, match="1001_DFA_JOY_XX.wav: not a CREMA-D file name"):
        prepare_cremad(root, out, progress=False)
    (root / "AudioWAV" / "1001_DFA_JOY_XX.wav").unlink()

    empty = root / "AudioWAV" / "1003_IEO_NEU_XX.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)  # CREMA-D ships such an empty file
    with pytest.raises(AudioError, match="1003_IEO_NEU_XX.wav: the file holds no samples"):
        prepare_cremad(root, out, progress=False)
    manifest = prepare(prepare_cremad, root, out, on_bad_audio="skip")
    assert len(manifest.table) == 17 and "1003_IEO_NEU_XX" not in set(manifest.table["clip_id"])
    assert len(manifest.meta["skipped_files"]) == 1 and "no samples" in manifest.meta["skipped_files"][0]["error"]


# --- RAVDESS --------------------------------------------------------------------------------------

def make_ravdess(root: Path, actors: int = 5) -> None:
    """Per actor: neutral and angry speech (48 kHz, as released), one song file, one video file."""
    for a in range(1, actors + 1):
        folder = root / f"Actor_{a:02d}"
        write_noise(folder / f"03-01-01-01-01-01-{a:02d}.wav", sr=48_000, seed=a)
        write_noise(folder / f"03-01-05-02-02-01-{a:02d}.wav", sr=48_000, seed=50 + a)
        write_noise(folder / f"03-02-03-01-01-01-{a:02d}.wav", sr=48_000, seed=100 + a)  # song
        (folder / f"01-01-03-01-01-01-{a:02d}.mp4").write_bytes(b"video")  # from the video archive


def test_ravdess_manifest(tmp_path: Path) -> None:
    root = tmp_path / "ravdess"
    make_ravdess(root)
    manifest = prepare(prepare_ravdess, root, tmp_path / "out")
    t = manifest.table.set_index("clip_id")
    assert len(t) == 10
    row = t.loc["03-01-05-02-02-01-02"]
    assert (row["label"], row["emotion_code"], row["speaker"], row["gender"], row["intensity"], row["statement"]) == (
        "angry", "05", "Actor_02", "female", "strong", "dogs")
    assert t.loc["03-01-01-01-01-01-01", "gender"] == "male"
    # 48 kHz files are resampled: 0.3 s counts 4800 samples at 16 kHz.
    assert set(t["num_samples"]) == {SAMPLES_16K} and set(t["sample_rate"]) == {16_000}
    assert manifest.meta["filtered_out"] == {"audio-only song": 5, "audio-video speech": 5}
    assert sorted(t.groupby("speaker")["fold"].first()) == [1, 2, 3, 4, 5]
    mapped = build_task_view(manifest, "emotion", label_map="emotion")
    assert mapped.dropped == {} and set(pd.concat(mapped.folds[0].values())["emotion"]) == {"neutral", "angry"}


def test_ravdess_errors(tmp_path: Path) -> None:
    root = tmp_path / "ravdess"
    make_ravdess(root)
    out = tmp_path / "out"
    with pytest.raises(CorpusLayoutError, match="no Actor_NN folders"):
        prepare_ravdess(tmp_path / "ravdess" / "Actor_01", out, progress=False)
    write_noise(root / "Actor_03" / "03-01-05-01-01-01-04.wav")
    with pytest.raises(CorpusLayoutError, match="names actor 04 but lies in Actor_03/"):
        prepare_ravdess(root, out, progress=False)
    (root / "Actor_03" / "03-01-05-01-01-01-04.wav").unlink()
    write_noise(root / "Actor_03" / "03-01-09-01-01-01-03.wav")
    with pytest.raises(CorpusLayoutError, match="emotion 09"):
        prepare_ravdess(root, out, progress=False)
    (root / "Actor_03" / "03-01-09-01-01-01-03.wav").unlink()
    corrupt(root / "Actor_03" / "03-01-01-01-01-01-03.wav")
    with pytest.raises(AudioError, match="03-01-01-01-01-01-03.wav"):
        prepare_ravdess(root, out, progress=False)
    assert len(prepare(prepare_ravdess, root, out, on_bad_audio="skip").table) == 9


# --- IEMOCAP --------------------------------------------------------------------------------------

IEMOCAP_LABELS = (("F000", "neu"), ("M000", "exc"), ("F001", "fru"), ("M001", "ang"), ("F002", "xxx"))


def make_iemocap(root: Path, sessions: int = 3) -> None:
    """Per session one improvised dialogue of 5 labelled utterances (2 outside the 4 classes, whose
    wavs exist too) and one unlabelled wav, with the header and annotator lines of the release."""
    for n in range(1, sessions + 1):
        dialog = f"Ses{n:02d}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, (part, code) in enumerate(IEMOCAP_LABELS):
            utt = f"{dialog}_{part}"
            write_noise(root / f"Session{n}" / "sentences" / "wav" / dialog / f"{utt}.wav", seed=10 * n + k)
            lines += [f"[{1.5 * k:.4f} - {1.5 * k + 1.2:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 3.5000]",
                      "C-E1:\tNeutral;\t()", "A-E2:\tval 3; act 2; dom  3;\t()", ""]
        write_noise(root / f"Session{n}" / "sentences" / "wav" / dialog / f"{dialog}_M099.wav", seed=7)
        path = root / f"Session{n}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        (path.parent / "Categorical").mkdir()


def test_iemocap_manifest_and_sessions(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root)
    manifest = prepare(prepare_iemocap, root, tmp_path / "out")
    t = manifest.table.set_index("clip_id")
    assert len(t) == 9  # 3 kept utterances per session
    row = t.loc["Ses02F_impro01_M000"]
    assert (row["label"], row["emotion_code"], row["speaker"], row["gender"], row["session"], row["fold"]) == (
        "happy", "exc", "Ses02M", "male", 2, 2)
    assert (row["valence"], row["arousal"], row["dominance"], bool(row["improvised"])) == (2.5, 3.0, 3.5, True)
    assert t.loc["Ses01F_impro01_F000", "speaker"] == "Ses01F"
    assert manifest.meta["dropped_labels"] == {"fru": 3, "xxx": 3}
    assert manifest.meta["ignored_files"] == [f"Session{n}/sentences/wav/Ses{n:02d}F_impro01/Ses{n:02d}F_impro01_M099.wav"
                                              for n in (1, 2, 3)]
    assert t.groupby("session")["split"].first().to_dict() == {1: "test", 2: "valid", 3: "train"}
    view = build_task_view(manifest, "emotion")
    assert view.labels == ["angry", "happy", "neutral"]
    assert [sorted(set(f["test"]["session"])) for f in view.folds] == [[1], [2], [3]]
    assert [sorted(set(f["valid"]["session"])) for f in view.folds] == [[2], [3], [1]]


def test_iemocap_errors(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root)
    out = tmp_path / "out"
    labels = root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    text = labels.read_text()
    labels.write_text(text.replace("\tang\t", "\tangry\t"))
    with pytest.raises(CorpusLayoutError, match="Ses02F_impro01.txt:15: unknown emotion 'angry'"):
        prepare_iemocap(root, out, progress=False)
    labels.write_text(text.replace("[4.5000 - 5.7000]", "[4.5000 5.7000]"))
    with pytest.raises(CorpusLayoutError, match="Ses02F_impro01.txt:15: expected"):
        prepare_iemocap(root, out, progress=False)
    labels.write_text(text)
    (root / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_M001.wav").unlink()
    with pytest.raises(CorpusLayoutError,
                       match="Ses03F_impro01_M001.wav: missing, but Ses03F_impro01.txt labels Ses03F_impro01_M001"):
        prepare_iemocap(root, out, progress=False)
    write_noise(root / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_M001.wav")
    corrupt(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav")
    with pytest.raises(AudioError, match="Ses01F_impro01_F000.wav"):
        prepare_iemocap(root, out, progress=False)
    assert len(prepare(prepare_iemocap, root, out, on_bad_audio="skip").table) == 8
    shutil.rmtree(root / "Session3" / "dialog")
    with pytest.raises(CorpusLayoutError, match="Session3/dialog/EmoEvaluation: missing"):
        prepare_iemocap(root, out, progress=False)
    shutil.rmtree(root / "Session3")
    with pytest.raises(CorpusLayoutError, match=r"found 2 Session folder\(s\)"):
        prepare_iemocap(root, out, progress=False)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_prepare_speech_corpora(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cremad(tmp_path / "crema")
    assert main(["-q", "prepare", "cremad", str(tmp_path / "crema"), "--out", str(tmp_path / "o1"),
                 "--folds", "3"]) == 0
    assert "crema-d" in capsys.readouterr().out
    assert set(read_manifest(tmp_path / "o1").table["fold"]) == {1, 2, 3}
    make_voxceleb1(tmp_path / "vox")
    assert main(["-q", "prepare", "voxceleb1", str(tmp_path / "vox"), "--out", str(tmp_path / "o2")]) == 0
    assert "voxceleb1" in capsys.readouterr().out
    make_ravdess(tmp_path / "rav")
    assert main(["-q", "prepare", "ravdess", str(tmp_path / "rav"), "--out", str(tmp_path / "o3")]) == 0
    make_iemocap(tmp_path / "iemo")
    assert main(["-q", "prepare", "iemocap", str(tmp_path / "iemo"), "--out", str(tmp_path / "o4")]) == 0
    capsys.readouterr()
    assert main(["-q", "prepare", "iemocap", str(tmp_path / "nope"), "--out", str(tmp_path / "o5")]) == 2
    assert "avbench: error:" in capsys.readouterr().err
    corrupt(tmp_path / "crema" / "AudioWAV" / "1002_DFA_ANG_HI.wav")
    assert main(["-q", "prepare", "cremad", str(tmp_path / "crema"), "--out", str(tmp_path / "o6")]) == 2
    assert "1002_DFA_ANG_HI.wav" in capsys.readouterr().err
    assert main(["-q", "prepare", "cremad", str(tmp_path / "crema"), "--out", str(tmp_path / "o6"),
                 "--on-bad-audio", "skip"]) == 0
    assert "skipped: 1 bad file(s)" in capsys.readouterr().out
