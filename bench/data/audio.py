"""Reading audio files into validated 16 kHz mono float32 arrays.

Every loader in avbench goes through `load_audio`, so every bad file fails the same way: with an
`AudioError` that names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_SAMPLE_RATE = 16_000

# Below about -120 dBFS a file holds no signal a model could use: treat it as silent.
SILENCE_PEAK = 1e-6


class AudioError(ValueError):
    """A file that cannot be used as audio. The message names the file and the fix."""


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling with the exact rational ratio (22050 -> 16000 is 320/441).

    Polyphase filtering is deterministic and fast for fixed rational ratios, which keeps corpus
    builds byte-identical across runs.
    """
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # imported here: it costs seconds in every new process

    ratio = Fraction(target_sr, orig_sr)
    out = resample_poly(wav.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32)


def check_waveform(wav: np.ndarray, source: str | Path) -> np.ndarray:
    """Raise AudioError for empty, non-finite or all-silent audio; return it unchanged otherwise."""
    if wav.size == 0:
        raise AudioError(f"{source}: the file holds no samples (empty audio). "
                         "Re-export it, or remove it from the corpus.")
    finite = np.isfinite(wav)
    if not finite.all():
        bad = int((~finite).sum())
        raise AudioError(f"{source}: {bad} of {wav.size} samples are NaN or Inf. "
                         "Re-export the file from its source, or remove it.")
    if float(np.max(np.abs(wav))) < SILENCE_PEAK:
        raise AudioError(f"{source}: the audio is all silence (peak below {SILENCE_PEAK:g}). "
                         "Check the recording, or remove it from the corpus.")
    return wav


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) from the header only, raising AudioError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file. Check the path, or re-run the preparer.")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt headers
        raise AudioError(f"{path}: cannot be read as audio ({exc}). "
                         "Re-export it as WAV or FLAC, or remove it.") from exc
    return int(info.frames), int(info.samplerate), int(info.channels)


def load_audio(path: str | Path, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read a file with soundfile, mix to mono, resample to `target_sr`, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file. Check the path, or re-run the preparer.")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: cannot be read as audio ({exc}). "
                         "Re-export it as WAV or FLAC, or remove it.") from exc
    # Validate before mixing: a NaN in one channel must not hide behind the mean.
    check_waveform(data, path)
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = resample(wav, int(sr), target_sr)
    return check_waveform(wav, path)
