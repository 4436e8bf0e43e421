"""bench.data.audio: every way a file can be bad fails with an AudioError that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.data.audio import TARGET_SAMPLE_RATE, AudioError, audio_info, check_waveform, load_audio, resample


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_good_16k_wav_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "good.wav"
    data = tone(0.25, 16_000)
    sf.write(path, data, 16_000, subtype="PCM_16")
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape == (4000,)
    np.testing.assert_allclose(wav, data, atol=1 / 32768 + 1e-7)
    assert audio_info(path) == (4000, 16_000, 1)


def test_stereo_44k_is_mixed_to_mono_and_resampled(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left = tone(0.5, 44_100, 440.0)
    right = tone(0.5, 44_100, 440.0, amp=0.1)
    sf.write(path, np.stack([left, right], axis=1), 44_100, subtype="PCM_16")
    assert audio_info(path) == (22_050, 44_100, 2)
    wav = load_audio(path)
    assert wav.ndim == 1 and wav.dtype == np.float32
    assert wav.shape == (8000,)  # 0.5 s at 16 kHz
    # The mix of 0.3 and 0.1 amplitude channels has amplitude 0.2 (away from the filter edges).
    assert abs(float(np.max(np.abs(wav[1000:-1000]))) - 0.2) < 0.01


def test_non_integer_resample_ratio_length(tmp_path: Path) -> None:
    x = tone(1.0, 22_050)
    y = resample(x, 22_050, 16_000)
    assert y.dtype == np.float32
    assert y.shape == (16_000,)
    # 1000 * 320/441 = 725.6: polyphase output rounds up.
    assert resample(x[:1000], 22_050, 16_000).shape == (726,)
    assert resample(x, 16_000, 16_000) is not None
    assert resample(x, 16_000, 16_000).shape == x.shape


def _assert_names(exc: pytest.ExceptionInfo[AudioError], path: Path, *words: str) -> None:
    message = str(exc.value)
    assert path.name in message, message
    for word in words:
        assert word in message.lower(), message


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt_clip.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    _assert_names(exc, path, "cannot be read")
    with pytest.raises(AudioError) as exc:
        audio_info(path)
    _assert_names(exc, path)


def test_empty_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty_clip.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000, subtype="PCM_16")
    assert path.stat().st_size > 0  # a valid header with no frames, not a missing file
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    _assert_names(exc, path, "empty")


def test_all_zero_wav(tmp_path: Path) -> None:
    path = tmp_path / "silent_clip.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16_000, subtype="PCM_16")
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    _assert_names(exc, path, "silence")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path: Path, value: float) -> None:
    path = tmp_path / "nonfinite_clip.wav"
    data = tone(0.1, 16_000)
    data[100:110] = value
    sf.write(path, data, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    _assert_names(exc, path, "nan or inf")
    assert "10 of 1600" in str(exc.value)


def test_nan_in_one_channel_is_not_hidden_by_mixing(tmp_path: Path) -> None:
    path = tmp_path / "nan_right.wav"
    left = tone(0.1, 16_000)
    right = left.copy()
    right[5] = np.nan
    sf.write(path, np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    _assert_names(exc, path, "nan")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "not_there.wav"
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError) as exc:
            fn(path)
        _assert_names(exc, path, "no such file")


def test_check_waveform_passes_good_audio_through() -> None:
    wav = tone(0.1, TARGET_SAMPLE_RATE)
    assert check_waveform(wav, "x.wav") is wav
    with pytest.raises(AudioError, match="x.wav"):
        check_waveform(np.full(10, 1e-8, dtype=np.float32), "x.wav")
