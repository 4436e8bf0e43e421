"""bench.data.video and bench.data.prepare.lrw on real mp4 files (mpeg4 video + AAC audio) written with PyAV."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bench.data.audio import AudioError, load_audio
from bench.cli import main
from bench.data.manifest import read_manifest
from bench.data.prepare.common import CorpusLayoutError
from bench.data.prepare.lrw import DEFAULT_MOUTH_CROP, PrepareOptionError, prepare_lrw
from bench.data.video import VideoError, decode_audio_track, read_video_frames, video_info


def garbage_bytes(n: int) -> bytes:
    """n bytes of noise, seeded: about 1 random blob in 200 happens to open as media (FFmpeg finds a
    frame sync in it), which made os.urandom garbage fail a test now and then."""
    return random.Random(0).randbytes(n)

CLIP_SECONDS = 1.16
CLIP_SAMPLES = 18_560  # 1.16 s at 16 kHz
# AAC works in 1024-sample frames; allow one frame of codec padding either way.
TOLERANCE = 1024
WORDS = ("ABOUT", "BECAUSE")
# LRW restarts its numbering in every split, so the same stem exists in train, val and test.
CLIPS = {"train": ("00001", "00002"), "val": ("00001",), "test": ("00001",)}


def mux_audio(container, stream, signal: np.ndarray, sample_rate: int = 16_000) -> None:
    """Encode a mono float32 signal into an audio stream, in AAC's 1024-sample frames, and flush it."""
    for start in range(0, len(signal), 1024):
        frame = av.AudioFrame.from_ndarray(signal[None, start:start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_clip(path: Path, *, frames: int = 29, video: bool = True, audio: bool = True,
               sample_rate: int = 16_000, freq: float = 440.0, amplitude: float = 0.3) -> None:
    """A real LRW-like mp4: 256x256 mpeg4 video at 25 fps and a mono AAC tone of 1.16 s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("mpeg4", rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 256, 256, "yuv420p"
        if audio:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        if vstream is not None:
            for i in range(frames):
                img = np.full((256, 256, 3), 40, np.uint8)
                img[115 + i:145 + i, 90 + 2 * i:130 + 2 * i] = (200, 180, 160)  # a moving "mouth"
                for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
        if astream is not None:
            n = int(round(CLIP_SECONDS * sample_rate))
            t = np.arange(n) / sample_rate
            signal = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            mux_audio(container, astream, signal, sample_rate)


def make_lrw_tree(parent: Path) -> Path:
    """parent/lipread_mp4/WORD/{train,val,test}/WORD_NNNNN.{mp4,txt}; returns lipread_mp4."""
    root = parent / "lipread_mp4"
    for w, word in enumerate(WORDS):
        for folder, numbers in CLIPS.items():
            for number in numbers:
                stem = f"{word}_{number}"
                write_clip(root / word / folder / f"{stem}.mp4", freq=300.0 + 100 * w + int(number))
                duration = 0.3 + 0.1 * w
                (root / word / folder / f"{stem}.txt").write_text(
                    f"Text:  {word}\nConf:  6\n\nWORD {word}\nDuration: {duration:.2f} seconds\n")
    return root


N_CLIPS = len(WORDS) * sum(len(v) for v in CLIPS.values())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lrw_tree(tmp_path_factory.mktemp("lrw_pristine"))


@pytest.fixture()
def lrw(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the tree (parent folder of lipread_mp4) that a test may change."""
    shutil.copytree(pristine, tmp_path / "LRW" / "lipread_mp4")
    return tmp_path / "LRW" / "lipread_mp4"


# --- bench.data.video -------------------------------------------------------------------------------

def test_video_info_and_frames(pristine: Path) -> None:
    mp4 = pristine / "ABOUT" / "train" / "ABOUT_00001.mp4"
    assert video_info(mp4) == {"frames": 29, "fps": 25.0, "width": 256, "height": 256}
    frames = read_video_frames(mp4, crop=DEFAULT_MOUTH_CROP)
    assert frames.shape == (29, 96, 96) and frames.dtype == np.uint8
    assert len({frames[i].tobytes() for i in range(29)}) > 20  # the content moves frame to frame
    assert read_video_frames(mp4, crop="79,115,96,96").shape == (29, 96, 96)
    assert read_video_frames(mp4, gray=False).shape == (29, 256, 256, 3)
    full = read_video_frames(mp4)
    np.testing.assert_array_equal(full[:, 115:211, 79:175], frames)


def test_video_errors_name_the_file(pristine: Path, tmp_path: Path) -> None:
    mp4 = pristine / "ABOUT" / "train" / "ABOUT_00001.mp4"
    with pytest.raises(VideoError, match=r"ABOUT_00001\.mp4.*outside the 256x256 frame"):
        read_video_frames(mp4, crop=(200, 200, 96, 96))
    with pytest.raises(VideoError, match=r"ABOUT_00001\.mp4.*four integers"):
        read_video_frames(mp4, crop="1,2,3")
    audio_only = tmp_path / "audio_only.mp4"
    write_clip(audio_only, video=False)
    for fn in (video_info, read_video_frames):
        with pytest.raises(VideoError, match=r"audio_only\.mp4.*no video stream"):
            fn(audio_only)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(garbage_bytes(3000))
    with pytest.raises(VideoError, match=r"garbage\.mp4"):
        read_video_frames(garbage)
    with pytest.raises(AudioError, match=r"garbage\.mp4"):
        decode_audio_track(garbage)
    with pytest.raises(VideoError, match=r"missing\.mp4.*no such file"):
        video_info(tmp_path / "missing.mp4")


@pytest.mark.parametrize("sample_rate", [16_000, 48_000])
def test_decode_audio_track(tmp_path: Path, sample_rate: int) -> None:
    mp4 = tmp_path / f"clip_{sample_rate}.mp4"
    write_clip(mp4, sample_rate=sample_rate, freq=500.0)
    wav = decode_audio_track(mp4)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - CLIP_SAMPLES) <= TOLERANCE
    segment = wav[2000:18000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 16_000 / segment.size
    assert abs(peak_hz - 500.0) < 5
    # The AAC encoder delay is removed: the decoded tone is in phase with the one written.
    t = np.arange(wav.size) / 16_000
    reference = 0.3 * np.sin(2 * np.pi * 500.0 * t)
    lags = range(-15, 16)  # within half a period of the 500 Hz tone
    best = max(lags, key=lambda lag: float(np.dot(wav[1000 + lag:17000 + lag], reference[1000:17000])))
    assert abs(best) <= 2
    assert 0.2 < float(np.max(np.abs(wav))) < 0.4


def test_decode_audio_track_without_audio(tmp_path: Path) -> None:
    mp4 = tmp_path / "video_only.mp4"
    write_clip(mp4, audio=False)
    with pytest.raises(AudioError, match=r"video_only\.mp4.*no audio stream"):
        decode_audio_track(mp4)


# --- bench.data.prepare.lrw -------------------------------------------------------------------------

def test_manifest_and_extracted_audio(lrw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = prepare_lrw(lrw.parent, out, progress=False)  # the parent of lipread_mp4 is accepted
    manifest = read_manifest(path)
    t = manifest.table.set_index("clip_id")
    assert len(t) == N_CLIPS
    assert set(t.index) == {f"{w}/{f}/{w}_{n}" for w in WORDS for f, ns in CLIPS.items() for n in ns}
    assert t.loc["ABOUT/val/ABOUT_00001", "split"] == "valid"
    assert t.loc["BECAUSE/test/BECAUSE_00001", "split"] == "test"
    assert t.loc["BECAUSE/train/BECAUSE_00002", "split"] == "train"
    assert manifest.meta["counts"] == {"train": 4, "valid": 2, "test": 2}
    assert manifest.labels == list(WORDS)
    assert manifest.speakers == ["unknown"]
    assert set(t["sample_rate"]) == {16_000}
    row = t.loc["ABOUT/train/ABOUT_00002"]
    assert row["audio_path"] == "audio/ABOUT/train/ABOUT_00002.wav"
    assert Path(row["video_path"]) == lrw.resolve() / "ABOUT" / "train" / "ABOUT_00002.mp4"
    assert t.loc["ABOUT/test/ABOUT_00001", "word_duration"] == pytest.approx(0.3)
    assert t.loc["BECAUSE/test/BECAUSE_00001", "word_duration"] == pytest.approx(0.4)
    for clip_id, r in t.iterrows():
        wav_path = manifest.resolve(r["audio_path"])
        assert wav_path == out / "audio" / f"{clip_id}.wav"
        info = sf.info(str(wav_path))
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert info.frames == r["num_samples"]
        assert abs(info.frames - CLIP_SAMPLES) <= TOLERANCE
    assert load_audio(manifest.audio_path(manifest.table.iloc[0])).size == manifest.table["num_samples"].iloc[0]
    leftovers = [p for p in (out / "audio").rglob("*") if p.is_file() and not p.name.endswith(".wav")]
    assert leftovers == []
    meta = manifest.meta
    assert meta["name"] == "lrw" and meta["source"] == str(lrw.resolve())
    assert meta["mouth_crop"] == list(DEFAULT_MOUTH_CROP) and meta["mouth_crop_is_default"]
    assert meta["head_pose"] is None and meta["skipped_files"] == []
    crop = read_video_frames(row["video_path"], crop=meta["mouth_crop"])
    assert crop.shape == (29, 96, 96)


def test_rerun_reuses_complete_wavs_and_redoes_short_ones(lrw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_lrw(lrw, out, progress=False).read_bytes()
    kept = out / "audio" / "ABOUT" / "train" / "ABOUT_00001.wav"
    short = out / "audio" / "ABOUT" / "val" / "ABOUT_00001.wav"
    os.utime(kept, ns=(1_000_000_000, 1_000_000_000))
    data, sr = sf.read(short, dtype="int16")
    sf.write(short, data[:5000], sr, subtype="PCM_16")  # as if an older run had been cut short
    second = prepare_lrw(lrw, out, progress=False).read_bytes()
    assert second == first
    assert kept.stat().st_mtime_ns == 1_000_000_000  # not rewritten
    assert sf.info(str(short)).frames == len(data)


def test_custom_mouth_crop(lrw: Path, tmp_path: Path) -> None:
    meta = read_manifest(prepare_lrw(lrw, tmp_path / "out", mouth_crop="10,20,64,48",
                                     progress=False)).meta
    assert meta["mouth_crop"] == [10, 20, 64, 48] and not meta["mouth_crop_is_default"]
    meta = read_manifest(prepare_lrw(lrw, tmp_path / "out2", mouth_crop=(1, 2, 3, 4),
                                     progress=False)).meta
    assert meta["mouth_crop"] == [1, 2, 3, 4]
    with pytest.raises(PrepareOptionError, match="mouth-crop.*four integers"):
        prepare_lrw(lrw, tmp_path / "out3", mouth_crop="a,b,c,d", progress=False)
    with pytest.raises(PrepareOptionError, match=r"mouth-crop.*ABOUT_00001\.mp4.*outside"):
        prepare_lrw(lrw, tmp_path / "out4", mouth_crop="200,200,96,96", on_bad_audio="skip",
                    progress=False)


def write_pose(path: Path, rows: list[tuple[str, float, float, float]]) -> Path:
    pd.DataFrame(rows, columns=["clip_id", "yaw", "pitch", "roll"]).to_csv(path, index=False)
    return path


def all_ids() -> list[str]:
    return [f"{w}/{f}/{w}_{n}" for w in WORDS for f, ns in CLIPS.items() for n in ns]


def test_head_pose_filtering(lrw: Path, tmp_path: Path) -> None:
    rows = []
    for clip_id in all_ids():
        if clip_id == "ABOUT/train/ABOUT_00002":
            rows.append(("ABOUT_00002", 0.0, 0.0, 0.0))  # keyed by stem: unique, so accepted
        elif clip_id == "BECAUSE/train/BECAUSE_00002":
            rows.append((clip_id, 12.0, 0.0, 0.0))
        elif clip_id == "ABOUT/val/ABOUT_00001":
            rows.append((clip_id, 1.0, -25.0, 3.0))
        else:
            rows.append((clip_id, 5.0, -9.5, 10.0))  # exactly on the threshold is kept
    pose = write_pose(tmp_path / "pose.csv", rows)
    manifest = read_manifest(prepare_lrw(lrw, tmp_path / "out", head_pose=pose, progress=False))
    ids = set(manifest.table["clip_id"])
    assert ids == set(all_ids()) - {"BECAUSE/train/BECAUSE_00002", "ABOUT/val/ABOUT_00001"}
    assert "ABOUT/train/ABOUT_00002" in ids
    assert manifest.meta["head_pose"] == {"file": str(pose.resolve()), "max_pose_deg": 10.0,
                                          "filtered_out": 2, "kept": N_CLIPS - 2}
    loose = read_manifest(prepare_lrw(lrw, tmp_path / "out2", head_pose=pose, max_pose_deg=30,
                                      progress=False))
    assert len(loose.table) == N_CLIPS and loose.meta["head_pose"]["filtered_out"] == 0


def test_head_pose_must_list_every_clip(lrw: Path, tmp_path: Path) -> None:
    ids = all_ids()
    pose = write_pose(tmp_path / "pose.csv", [(i, 0.0, 0.0, 0.0) for i in ids[2:]])
    with pytest.raises(PrepareOptionError) as exc:
        prepare_lrw(lrw, tmp_path / "out", head_pose=pose, progress=False)
    message = str(exc.value)
    assert str(pose.resolve()) in message and "2 clip(s) have no head pose" in message
    assert f"first: {ids[0]}" in message
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_head_pose_file_errors(lrw: Path, tmp_path: Path) -> None:
    ids = all_ids()
    # One row keyed by a stem that LRW uses in train, val and test: which clip does it mean?
    rows = [(i, 0.0, 0.0, 0.0) for i in ids if not i.endswith("/ABOUT_00001")]
    ambiguous = write_pose(tmp_path / "stems.csv", rows + [("ABOUT_00001", 0.0, 0.0, 0.0)])
    with pytest.raises(PrepareOptionError, match="'ABOUT_00001' is ambiguous.*ABOUT/train/ABOUT_00001"):
        prepare_lrw(lrw, tmp_path / "out", head_pose=ambiguous, progress=False)
    with pytest.raises(PrepareOptionError, match="pose_missing.csv.*not found"):
        prepare_lrw(lrw, tmp_path / "out", head_pose=tmp_path / "pose_missing.csv", progress=False)
    no_roll = tmp_path / "no_roll.csv"
    pd.DataFrame({"clip_id": ids, "yaw": 0.0, "pitch": 0.0}).to_csv(no_roll, index=False)
    with pytest.raises(PrepareOptionError, match="no_roll.csv.*roll"):
        prepare_lrw(lrw, tmp_path / "out", head_pose=no_roll, progress=False)
    text = write_pose(tmp_path / "text.csv", [(i, 0.0, 0.0, 0.0) for i in ids])
    text.write_text(text.read_text().replace(f"{ids[3]},0.0", f"{ids[3]},left"))
    with pytest.raises(PrepareOptionError, match="'yaw' holds 'left' at data row 4"):
        prepare_lrw(lrw, tmp_path / "out", head_pose=text, progress=False)


def test_layout_errors(lrw: Path, tmp_path: Path) -> None:
    with pytest.raises(CorpusLayoutError, match="no such folder") as exc:
        prepare_lrw(tmp_path / "nowhere", tmp_path / "out", progress=False)
    assert str(tmp_path / "nowhere") in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="no word folders") as exc:
        prepare_lrw(tmp_path / "empty", tmp_path / "out", progress=False)
    assert str(tmp_path / "empty") in str(exc.value)

    misnamed = lrw / "ABOUT" / "test" / "BECAUSE_00009.mp4"
    shutil.copy(lrw / "BECAUSE" / "test" / "BECAUSE_00001.mp4", misnamed)
    with pytest.raises(CorpusLayoutError, match=r"BECAUSE_00009\.mp4.*'ABOUT_'"):
        prepare_lrw(lrw, tmp_path / "out", progress=False)
    misnamed.unlink()

    shutil.rmtree(lrw / "BECAUSE" / "val")
    with pytest.raises(CorpusLayoutError, match=r"BECAUSE.*lacks the split subfolder\(s\) val") as exc:
        prepare_lrw(lrw, tmp_path / "out", progress=False)
    assert str(lrw.resolve() / "BECAUSE") in str(exc.value)


@pytest.mark.parametrize("kind", ["no_audio", "no_video", "short_video", "silent", "garbage"])
def test_bad_clips_follow_the_policy(lrw: Path, tmp_path: Path, kind: str) -> None:
    bad = lrw / "BECAUSE" / "train" / "BECAUSE_00002.mp4"
    if kind == "garbage":
        bad.write_bytes(garbage_bytes(5000))
    else:
        write_clip(bad, audio=kind != "no_audio", video=kind != "no_video",
                   frames=20 if kind == "short_video" else 29, amplitude=0.0 if kind == "silent" else 0.3)
    with pytest.raises(AudioError) as exc:
        prepare_lrw(lrw, tmp_path / "out", progress=False)
    assert str(bad.resolve()) in str(exc.value)
    expected = {"no_audio": "no audio stream", "no_video": "no video stream",
                "short_video": "20 frames", "silent": "silence", "garbage": "cannot be opened"}[kind]
    assert expected in str(exc.value)

    manifest = read_manifest(prepare_lrw(lrw, tmp_path / "out", on_bad_audio="skip", progress=False))
    assert len(manifest.table) == N_CLIPS - 1
    assert "BECAUSE/train/BECAUSE_00002" not in set(manifest.table["clip_id"])
    assert [s["path"] for s in manifest.meta["skipped_files"]] == [str(bad.resolve())]
    assert not (tmp_path / "out" / "audio" / "BECAUSE" / "train" / "BECAUSE_00002.wav").exists()


def test_cli_prepare_lrw(lrw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out), "--mouth-crop", "70,110,112,112"]) == 0
    assert "lrw" in capsys.readouterr().out
    assert read_manifest(out).meta["mouth_crop"] == [70, 110, 112, 112]
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out), "--mouth-crop", "70,110"]) == 2
    assert "four integers" in capsys.readouterr().err
    pose = write_pose(tmp_path / "pose.csv", [(i, 0.0, 0.0, 0.0) for i in all_ids()[1:]])
    assert main(["-q", "prepare", "lrw", str(lrw), "--out", str(out), "--head-pose", str(pose)]) == 2
    assert "1 clip(s) have no head pose" in capsys.readouterr().err
