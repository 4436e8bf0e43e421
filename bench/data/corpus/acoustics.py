"""Acoustic degradations of the embedded corpus: coloured noise, babble, reverberation, SNR mixing.

Pure numpy functions of an explicit random generator, so a clip's degradation is fixed by its seed.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

# Spectral slope exponent beta of 1/f^beta power: white 0, pink 1, brown 2.
COLOURED_NOISE_BETA = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def coloured_noise(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of length n with a 1/f^beta power spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (beta / 2.0), n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def synthetic_rir(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: a direct path, then exponentially decaying noise (60 dB in rt60)."""
    n = max(int(rt60_s * sample_rate), 2)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)
    pre_delay = int(0.002 * sample_rate)
    tail[:pre_delay] = 0.0
    rir = 0.5 * tail / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
    rir[0] = 1.0
    return rir / np.sqrt(np.sum(rir ** 2))


def reverberate(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve and keep the original length, rescaled to the dry signal's peak."""
    wet = fftconvolve(wav, rir)[: len(wav)]
    peak_dry, peak_wet = np.max(np.abs(wav)), np.max(np.abs(wet))
    return (wet * (peak_dry / peak_wet) if peak_wet > 0 else wet).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, active: slice) -> np.ndarray:
    """Add noise so that speech power over its active span is `snr_db` above the noise power."""
    speech_power = float(np.mean(speech[active] ** 2))
    noise_power = float(np.mean(noise ** 2)) + 1e-20
    scale = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(np.float32)


def babble(utterances: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS babble of length n: utterances placed at random offsets, overlapping, summed."""
    out = np.zeros(n, dtype=np.float64)
    for utt in utterances:
        utt = utt[:n] / (np.sqrt(np.mean(utt ** 2)) + 1e-12)
        start = int(rng.integers(-len(utt) // 2, n - len(utt) // 2))
        lo, hi = max(start, 0), min(start + len(utt), n)
        out[lo:hi] += utt[lo - start: hi - start]
    rms = np.sqrt(np.mean(out ** 2))
    if rms == 0:
        return coloured_noise(n, 1.0, rng)
    return (out / rms).astype(np.float32)
