"""LRW (Lip Reading in the Wild) into an avbench manifest, with its audio extracted to wav.

The extracted archive looks like::

    lipread_mp4/
      ABOUT/train/ABOUT_00001.mp4     25 fps, 29 frames (1.16 s), 256x256 face crop, AAC audio
      ABOUT/train/ABOUT_00001.txt     "Text: ABOUT", ..., "Duration: 0.53 seconds" (the word)
      ABOUT/val/...  ABOUT/test/...

Audio models read wav files, not mp4, and decoding AAC on every epoch would dominate training, so
the audio track of every clip is decoded once (PyAV), validated with the same checks as any other
corpus (bench.data.prepare.common.probe_audio) and written as 16-bit PCM under `OUT/audio/`. The video
stays where it is; the manifest points at it and the meta records the mouth crop to apply.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from bench.data.audio import TARGET_SAMPLE_RATE, AudioError, audio_info
from bench.data.manifest import write_manifest
from bench.data.prepare.common import BadAudioLog, CorpusLayoutError, existing_folder, probe_audio
from bench.errors import ConfigError
from bench.paths import prepared_dir
from bench.data.video import (VideoError, audio_track_length, check_crop, decode_audio_track, parse_crop,
                              video_info)

log = logging.getLogger("avbench.prepare.lrw")

# LRW folder name -> manifest split.
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
EXPECTED_FRAMES = 29
EXPECTED_FPS = 25.0
# A fixed box around the mouth in LRW's 256x256 face-centred frames (x, y, w, h). It is a default
# for corpora without per-clip landmarks, not a measured track: override it with `mouth_crop`.
DEFAULT_MOUTH_CROP = (79, 115, 96, 96)
# LRW publishes no speaker identities (clips come from BBC broadcasts); every clip gets this speaker.
UNKNOWN_SPEAKER = "unknown"
POSE_COLUMNS = ("clip_id", "yaw", "pitch", "roll")
AUDIO_FOLDER = "audio"

_DURATION = re.compile(r"Duration:\s*([0-9]*\.?[0-9]+)\s*seconds", re.IGNORECASE)


class PrepareOptionError(CorpusLayoutError, ConfigError):
    """An option given to the LRW preparer (head-pose file, mouth crop) that cannot be used.

    A CorpusLayoutError subclass so that the CLI prints it as a clean error, not a traceback.
    """


@dataclass(frozen=True)
class _Clip:
    word: str
    folder: str  # LRW split folder: train, val or test
    mp4: Path

    @property
    def clip_id(self) -> str:
        return f"{self.word}/{self.folder}/{self.mp4.stem}"

    @property
    def split(self) -> str:
        return SPLIT_FOLDERS[self.folder]


def _fix_hint() -> str:
    return ("Pass the extracted LRW folder lipread_mp4 (holding WORD/train, WORD/val, WORD/test) or "
            "its parent; re-extract the archive if it is incomplete.")


def find_lrw_root(root: str | Path) -> Path:
    """The lipread_mp4 folder, given either it or its parent."""
    root = existing_folder(root, _fix_hint())
    if (root / "lipread_mp4").is_dir():
        root = root / "lipread_mp4"
    return root.resolve()


def _scan(root: Path) -> list[_Clip]:
    """Every clip in the tree, checking the layout as it goes."""
    words = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith((".", "_")))
    if not words:
        raise CorpusLayoutError(f"{root}: no word folders (ABOUT/, ABSOLUTELY/, ...) found. {_fix_hint()}")
    clips: list[_Clip] = []
    for word in words:
        missing = [f for f in SPLIT_FOLDERS if not (root / word / f).is_dir()]
        if missing:
            raise CorpusLayoutError(
                f"{root / word}: the word folder lacks the split subfolder(s) {', '.join(missing)} "
                f"(each LRW word has train/, val/ and test/). {_fix_hint()}")
        found = 0
        for folder in SPLIT_FOLDERS:
            split_dir = root / word / folder
            for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
                if not (entry.is_file() and entry.name.endswith(".mp4")):
                    continue
                mp4 = Path(entry.path)
                if not mp4.stem.startswith(f"{word}_"):
                    raise CorpusLayoutError(
                        f"{mp4}: the clip name does not start with its word folder's name "
                        f"'{word}_' (LRW names clips WORD_NNNNN.mp4). Move it into the folder of "
                        "its word, or out of the corpus.")
                clips.append(_Clip(word, folder, mp4))
                found += 1
        if not found:
            raise CorpusLayoutError(f"{root / word}: the word folder holds no .mp4 clips. {_fix_hint()}")
    return clips


def parse_word_duration(txt: Path) -> float | None:
    """The word's duration in seconds from an LRW .txt ("Duration: 0.53 seconds"), if present."""
    try:
        match = _DURATION.search(txt.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return float(match.group(1)) if match else None


def _mouth_crop(mouth_crop: str | Sequence[int] | None) -> tuple[int, int, int, int]:
    try:
        crop = parse_crop(mouth_crop)
    except ValueError as exc:
        raise PrepareOptionError(f"--mouth-crop: {exc}") from None
    return crop if crop is not None else DEFAULT_MOUTH_CROP


def _load_head_pose(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """clip key -> (yaw, pitch, roll) in degrees, from a CSV with columns clip_id,yaw,pitch,roll."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrepareOptionError(f"{path}: head-pose file not found. Pass a CSV with columns "
                                 f"{','.join(POSE_COLUMNS)}, or leave out --head-pose.")
    try:
        table = pd.read_csv(path, dtype={"clip_id": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise PrepareOptionError(f"{path}: cannot be parsed as CSV ({exc}).") from exc
    missing = [c for c in POSE_COLUMNS if c not in table.columns]
    if missing:
        raise PrepareOptionError(f"{path}: head-pose file lacks column(s) {', '.join(missing)}; "
                                 f"it needs {','.join(POSE_COLUMNS)} (angles in degrees).")
    for col in POSE_COLUMNS[1:]:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0.0))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise PrepareOptionError(f"{path}: column {col!r} holds {table[col].iloc[row]!r} at data "
                                     f"row {row + 1}; every angle must be a number of degrees.")
        table[col] = values.astype(float)
    keys = table["clip_id"].fillna("").astype(str).str.strip()
    keys = keys.str.replace("\\", "/", regex=False).str.replace(r"\.mp4$", "", regex=True)
    if (keys == "").any():
        raise PrepareOptionError(f"{path}: column 'clip_id' is empty in {int((keys == '').sum())} row(s).")
    dup = keys.duplicated()
    if dup.any():
        raise PrepareOptionError(f"{path}: clip_id {keys[dup].iloc[0]!r} appears more than once; "
                                 "give one pose per clip.")
    return {k: (float(y), float(p), float(r))
            for k, y, p, r in zip(keys, table["yaw"], table["pitch"], table["roll"])}


def _filter_by_pose(clips: list[_Clip], pose: dict[str, tuple[float, float, float]], source: Path,
                    max_pose_deg: float) -> list[_Clip]:
    """Clips whose |yaw|, |pitch| and |roll| are all <= max_pose_deg.

    A pose is looked up by full clip id (WORD/train/WORD_00001) first, then by mp4 stem
    (WORD_00001). LRW restarts its numbering in every split, so a stem that names clips in several
    splits is ambiguous and refused rather than applied to all of them.
    """
    stem_count: dict[str, int] = {}
    for clip in clips:
        stem_count[clip.mp4.stem] = stem_count.get(clip.mp4.stem, 0) + 1
    kept: list[_Clip] = []
    unlisted: list[str] = []
    for clip in clips:
        angles = pose.get(clip.clip_id)
        if angles is None and clip.mp4.stem in pose:
            if stem_count[clip.mp4.stem] > 1:
                raise PrepareOptionError(
                    f"{source}: clip_id {clip.mp4.stem!r} is ambiguous: LRW has a clip of that name "
                    "in more than one split. Key the pose file by WORD/split/WORD_NNNNN "
                    f"(e.g. {clip.clip_id}).")
            angles = pose[clip.mp4.stem]
        if angles is None:
            unlisted.append(clip.clip_id)
        elif max(abs(a) for a in angles) <= max_pose_deg:
            kept.append(clip)
    if unlisted:
        raise PrepareOptionError(
            f"{source}: {len(unlisted)} clip(s) have no head pose, first: {unlisted[0]}. Head-pose "
            "filtering needs a pose for every clip; add the missing rows (clip_id as WORD/split/"
            "WORD_NNNNN or WORD_NNNNN), or leave out --head-pose.")
    return kept


def _to_pcm16(wav: np.ndarray) -> np.ndarray:
    """Quantise to int16 here rather than in soundfile, so that validation sees exactly the samples
    load_audio will read back (int16 / 32768), e.g. a whisper that rounds to all-zero is caught."""
    return np.round(np.clip(wav, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _existing_wav(wav_path: Path, expected: int | None) -> np.ndarray | None:
    """The int16 samples of an already extracted wav of the right length, else None."""
    if expected is None or not wav_path.is_file():
        return None
    try:
        if audio_info(wav_path) != (expected, TARGET_SAMPLE_RATE, 1):
            return None
        data, _ = sf.read(str(wav_path), dtype="int16")
    except (AudioError, RuntimeError):  # soundfile raises LibsndfileError, a RuntimeError
        return None
    return data if data.shape == (expected,) else None


def _write_wav_atomic(wav_path: Path, pcm: np.ndarray) -> None:
    """Temp file in the same folder + os.replace: an interrupted run never leaves half a wav."""
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=wav_path.parent, prefix=f".{wav_path.stem}.", suffix=".wav.tmp")
    os.close(fd)
    try:
        sf.write(tmp, pcm, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_lrw(root: str | Path, out_dir: str | Path | None = None, *, on_bad_audio: str = "error",
                head_pose: str | Path | None = None, max_pose_deg: float = 10.0,
                mouth_crop: str | Sequence[int] | None = None, progress: bool = True) -> Path:
    """Extract LRW's audio, check every clip, and write the manifest; return manifest.csv's path.

    - clip_id "WORD/FOLDER/WORD_NNNNN" with FOLDER the LRW folder (train, val, test) so ids map
      back to files; split: train -> train, val -> valid, test -> test; label: the word folder's
      name as LRW spells it (upper case).
    - speaker: "unknown" for every clip, because LRW publishes no speaker identities. Do not use
      speaker-disjoint evaluation on LRW; its official splits are what results are reported on.
    - audio_path: `audio/WORD/FOLDER/WORD_NNNNN.wav`, relative to the manifest folder (16 kHz 16-bit
      PCM, decoded with PyAV). A wav that already exists with the length the mp4 header promises is
      reused, so an interrupted run resumes where it stopped.
    - video_path: the absolute path of the mp4. Each clip must have a video stream of 29 frames at
      25 fps; a clip that does not, or whose audio is missing/corrupt/silent/NaN, is a bad clip and
      follows `on_bad_audio` ('error' stops naming it, 'skip' lists it in the meta).
    - word_duration: seconds, from the "Duration:" line of the .txt beside the mp4, when present.
    - mouth_crop: (x, y, w, h) or "x,y,w,h"; default DEFAULT_MOUTH_CROP, a fixed box for the
      256x256 LRW frames. It is recorded in the meta for the video front end and checked to lie
      inside every clip's frame.
    - head_pose: optional CSV clip_id,yaw,pitch,roll (degrees; clip_id as above or the mp4 stem).
      Only clips with every |angle| <= max_pose_deg are kept; every clip must be listed.

    `out_dir` defaults to bench.paths.prepared_dir("lrw").
    """
    crop = _mouth_crop(mouth_crop)
    if not (math.isfinite(max_pose_deg) and max_pose_deg >= 0):
        raise PrepareOptionError(f"--max-pose {max_pose_deg!r}: must be a finite angle >= 0 degrees.")
    bad = BadAudioLog(on_bad_audio)  # checks the policy name before any work is done
    root = find_lrw_root(root)
    clips = _scan(root)
    total = len(clips)
    clips, pose_meta = _apply_head_pose(clips, head_pose, max_pose_deg)

    out = Path(out_dir).expanduser() if out_dir is not None else prepared_dir("lrw")
    out = out.resolve()
    rows = []
    reused = 0
    for clip in tqdm(clips, desc="extracting lrw audio", unit="clip", disable=not progress):
        extracted = _extract_clip(clip, out, crop, bad)
        if extracted is not None:
            row, was_reused = extracted
            rows.append(row)
            reused += was_reused
    log.info("lrw: %s; reused %d already extracted wav(s)", bad.report(), reused)

    table = pd.DataFrame(rows, columns=["clip_id", "audio_path", "label", "speaker", "split",
                                        "num_samples", "sample_rate", "video_path", "word_duration"])
    if table["word_duration"].isna().all():
        table = table.drop(columns="word_duration")
    meta = {
        "name": "lrw",
        "source": str(root),
        "speaker_ids": False,
        "mouth_crop": list(crop),  # [x, y, w, h], ready for bench.data.video.read_video_frames(crop=...)
        "mouth_crop_is_default": crop == DEFAULT_MOUTH_CROP,
        "video": {"frames": EXPECTED_FRAMES, "fps": EXPECTED_FPS},
        "head_pose": pose_meta,
        "clips_found": total,
        "skipped_files": bad.skipped,
        "labels": sorted(table["label"].unique().tolist()),
    }
    return write_manifest(table, out, meta)


def _apply_head_pose(clips: list[_Clip], head_pose: str | Path | None,
                     max_pose_deg: float) -> tuple[list[_Clip], dict[str, Any] | None]:
    """Keep the clips within `max_pose_deg` of frontal; return them and the meta's head_pose entry."""
    if head_pose is None:
        return clips, None
    total = len(clips)
    pose_path = Path(head_pose).expanduser().resolve()
    clips = _filter_by_pose(clips, _load_head_pose(pose_path), pose_path, max_pose_deg)
    log.info("head pose: kept %d of %d clips within %g degrees", len(clips), total, max_pose_deg)
    return clips, {"file": str(pose_path), "max_pose_deg": float(max_pose_deg),
                   "filtered_out": total - len(clips), "kept": len(clips)}


def _extract_clip(clip: _Clip, out: Path, crop: tuple[int, int, int, int],
                  bad: BadAudioLog) -> tuple[dict[str, Any], bool] | None:
    """Check one clip's video and audio, write its wav unless a complete one is there, and return
    its manifest row and whether the wav was reused; None for a bad clip (`bad` has handled it)."""
    wav_rel = f"{AUDIO_FOLDER}/{clip.word}/{clip.folder}/{clip.mp4.stem}.wav"
    wav_path = out / wav_rel
    try:
        info = video_info(clip.mp4)
        if info["frames"] != EXPECTED_FRAMES or round(info["fps"]) != round(EXPECTED_FPS):
            raise VideoError(
                f"{clip.mp4}: the video has {info['frames']} frames at {info['fps']:g} fps; LRW "
                f"clips have {EXPECTED_FRAMES} frames at {EXPECTED_FPS:g} fps. Re-download the "
                "clip, or remove it.")
        expected = audio_track_length(clip.mp4)
        pcm = _existing_wav(wav_path, expected)
        fresh = pcm is None
        if fresh:
            pcm = _to_pcm16(decode_audio_track(clip.mp4))
    except AudioError as exc:  # VideoError included: a clip is bad whichever stream is broken
        bad.handle(clip.mp4, exc)
        return None
    try:
        check_crop(crop, info["width"], info["height"], clip.mp4)
    except VideoError as exc:  # the option is wrong, not the clip: never skip over it
        raise PrepareOptionError(f"--mouth-crop: {exc}") from None
    result = probe_audio(clip.mp4, bad, waveform=pcm.astype(np.float32) / 32768,
                         sample_rate=TARGET_SAMPLE_RATE)
    if result is None:
        return None
    if fresh:
        _write_wav_atomic(wav_path, pcm)
    num_samples, sample_rate = result
    row = {
        "clip_id": clip.clip_id,
        "audio_path": wav_rel,
        "label": clip.word,
        "speaker": UNKNOWN_SPEAKER,
        "split": clip.split,
        "num_samples": num_samples,
        "sample_rate": sample_rate,
        "video_path": str(clip.mp4),
        "word_duration": parse_word_duration(clip.mp4.with_suffix(".txt")),
    }
    return row, not fresh
