"""MFCC-39 and log-mel: parity with librosa on real corpus clips, padding invariance, registry."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import torch

from baselines import functional as AF
from baselines.spectral import LogMel, MFCC39
from bench.data.audio import load_audio
from bench.data.corpus.build import build_corpus
from bench.data.corpus.embedded import CorpusConfig
from bench.errors import ConfigError
from bench.registry import create_encoder, list_encoders

SR = 16_000
# The framing every spectral baseline uses, passed to librosa as-is.
FRAMING = dict(sr=SR, n_fft=512, win_length=400, hop_length=160)

# Tolerances. The algorithm is exact: in float64 both sides agree to ~1e-6 (test_float64_parity).
# In float32 the difference is FFT roundoff: torch's float32 FFT is a true float32 transform
# (~1e-7 of the frame's peak magnitude), while numpy's is as accurate as float64, so bins 70-90 dB
# below the clip's peak differ by up to ~6e-4 dB in a mel band (99.9th percentile ~2e-4 dB), and
# MFCCs (values up to ~600) by up to ~2.5e-4. The bounds below leave a margin of about 3-4x.
LOGMEL_DB_ATOL = 2e-3
MFCC_ATOL = 1e-3
DELTA_ATOL = 1e-4      # deltas of the same (librosa) MFCC input: float32 sums over 9 frames
FLOAT64_ATOL = 1e-5


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    # A clean channel: band-limited clips (telephone, low-passed codecs) have mel bands 100 dB and
    # more below their peak, where float32 FFT roundoff reaches 2.5e-2 dB (measured: webcam+mp3-24k,
    # mel band 77, -102 dB re peak); the parity bounds above are for wideband speech.
    corpus = build_corpus(CorpusConfig.from_size("small", speakers=4, words=3, renditions=1, channels="none"),
                          out_root=tmp_path_factory.mktemp("corpora"), workers=2, progress=False)
    wavs = [load_audio(corpus.manifest.resolve(p)) for p in corpus.manifest.table["audio_path"]]
    assert len(wavs) == 12 and all(w.dtype == np.float32 and len(w) == SR for w in wavs)
    return wavs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-10) -> None:
    # A max-abs check: torch.testing.assert_close costs over a second of lazy imports on first use.
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


def _one(wav: np.ndarray, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(wav).to(dtype)[None], torch.tensor([len(wav)])


def _librosa_mfcc(y: np.ndarray, n_mels: int = 40) -> np.ndarray:
    return librosa.feature.mfcc(y=y, n_mfcc=13, n_mels=n_mels, **FRAMING)


def _librosa_logmel(y: np.ndarray) -> np.ndarray:
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, n_mels=80, **FRAMING), top_db=None)


def test_mfcc_and_deltas_match_librosa(clips):
    enc = MFCC39(normalize=False)
    worst = {"mfcc": 0.0, "delta": 0.0, "delta2": 0.0, "delta_fn": 0.0, "delta2_fn": 0.0}
    for y in clips:
        ref = _librosa_mfcc(y)
        ref_d1, ref_d2 = librosa.feature.delta(ref), librosa.feature.delta(ref, order=2)
        wav, lengths = _one(y)
        raw, frames = enc.mfcc(wav, lengths)
        feats, out_lengths = enc(wav, lengths)
        assert raw.shape == (1, 13, ref.shape[1]) and int(frames) == int(out_lengths) == ref.shape[1] == 101
        feats = feats[0].T.numpy()
        np.testing.assert_array_equal(feats[:13], raw[0].numpy())
        worst["mfcc"] = max(worst["mfcc"], np.abs(raw[0].numpy() - ref).max())
        worst["delta"] = max(worst["delta"], np.abs(feats[13:26] - ref_d1).max())
        worst["delta2"] = max(worst["delta2"], np.abs(feats[26:] - ref_d2).max())
        # The delta function alone, on librosa's own MFCCs: isolates the Savitzky-Golay/interp edges.
        ref_t = torch.from_numpy(ref)[None]
        worst["delta_fn"] = max(worst["delta_fn"], np.abs(AF.deltas(ref_t, 9, 1)[0].numpy() - ref_d1).max())
        worst["delta2_fn"] = max(worst["delta2_fn"], np.abs(AF.deltas(ref_t, 9, 2)[0].numpy() - ref_d2).max())
    print("max abs diff vs librosa:", {k: float(v) for k, v in worst.items()})
    assert worst["mfcc"] < MFCC_ATOL
    assert worst["delta"] < MFCC_ATOL and worst["delta2"] < MFCC_ATOL
    assert worst["delta_fn"] < DELTA_ATOL and worst["delta2_fn"] < DELTA_ATOL


def test_logmel_matches_librosa(clips):
    enc = LogMel(normalize=False)
    worst = 0.0
    for y in clips:
        ref = _librosa_logmel(y)
        feats, lengths = enc(*_one(y))
        assert feats.shape == (1, ref.shape[1], 80) and int(lengths) == ref.shape[1]
        worst = max(worst, float(np.abs(feats[0].T.numpy() - ref).max()))
    print(f"logmel max abs diff vs librosa: {worst:.2e} dB")
    assert worst < LOGMEL_DB_ATOL


def test_float64_parity_shows_the_algorithm_is_exact(clips):
    """Computed in float64 on both sides, only the float32-rounded filterbanks differ."""
    mfcc, logmel = MFCC39(normalize=False).double(), LogMel(normalize=False).double()
    for y in clips[:3]:
        y64 = y.astype(np.float64)
        raw, _ = mfcc.mfcc(*_one(y, torch.float64))
        assert np.abs(raw[0].numpy() - _librosa_mfcc(y64)).max() < FLOAT64_ATOL
        feats, _ = logmel(*_one(y, torch.float64))
        assert np.abs(feats[0].T.numpy() - _librosa_logmel(y64)).max() < FLOAT64_ATOL


def test_stft_and_power_to_db_match_librosa(clips):
    y = clips[0]
    for window in ("hann", "hamming"):
        ref = np.abs(librosa.stft(y.astype(np.float64), n_fft=512, win_length=400, hop_length=160,
                                  window=window)) ** 2
        ours = AF.stft_power(torch.from_numpy(y).double()[None], 512, 400, 160, window=window)[0].numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    S = librosa.feature.melspectrogram(y=y, n_mels=40, **FRAMING)
    for top_db in (None, 80.0, 20.0):
        ref = librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=top_db)
        np.testing.assert_allclose(AF.power_to_db(torch.from_numpy(S)[None], top_db=top_db)[0].numpy(), ref,
                                   atol=1e-4)
        np.testing.assert_allclose(AF.power_to_db(torch.from_numpy(S), top_db=top_db).numpy(), ref, atol=1e-4)
    # top_db's peak comes from valid frames only: loud padding must not raise the floor.
    padded = torch.cat([torch.from_numpy(S), torch.full((40, 20), 1e6)], dim=1)[None]
    clipped = AF.power_to_db(padded, top_db=20.0, lengths=torch.tensor([S.shape[1]]))[0, :, :S.shape[1]]
    np.testing.assert_allclose(clipped.numpy(), librosa.power_to_db(S, top_db=20.0), atol=1e-4)


def test_deltas_edges_short_rows_and_lengths():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 30, generator=gen, dtype=torch.float64)
    for order in (1, 2):
        for T in (9, 10, 30):  # 9: the whole row is one window
            ref = librosa.feature.delta(x[0, :, :T].numpy(), width=9, order=order)
            np.testing.assert_allclose(AF.deltas(x[:1, :, :T], 9, order)[0].numpy(), ref, atol=1e-12)
        # Per-row lengths: each row's deltas equal those of the row cut to its length, zeros beyond.
        lengths = torch.tensor([30, 17, 4])  # 4 < width: the fit covers the 4 frames
        out = AF.deltas(x, 9, order, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            assert_close(out[b, :, :n], AF.deltas(x[b:b + 1, :, :n], 9, order)[0])
            assert not out[b, :, n:].any()
    # A straight line has slope 1 and no curvature everywhere, edges included, even in short rows.
    line = torch.arange(6, dtype=torch.float64).expand(1, 2, 6)
    assert_close(AF.deltas(line, 9, 1), torch.ones_like(line))
    assert_close(AF.deltas(line, 9, 2), torch.zeros_like(line))


def test_cmvn_uses_valid_frames_only():
    x = torch.randn(2, 3, 20, dtype=torch.float64)
    x[1, :, 12:] = 1e6  # padding that would dominate the statistics if it were used
    out = AF.cmvn(x, torch.tensor([20, 12]))
    assert_close(out[1, :, :12], AF.cmvn(x[1:, :, :12])[0])
    assert not out[1, :, 12:].any()
    assert_close(out[1, :, :12].mean(-1), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert_close(out[1, :, :12].std(-1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4)  # eps=1e-5


@pytest.mark.parametrize("name", ["mfcc39", "logmel"])
def test_padding_does_not_leak(clips, name):
    enc = create_encoder(name)
    short = torch.from_numpy(clips[0][:12345])
    longer = torch.from_numpy(clips[1])
    alone, alone_len = enc(short[None], torch.tensor([12345]))
    batch = torch.empty(2, SR).uniform_(-1, 1)  # loud noise as padding: it must be ignored
    batch[0, :12345], batch[1] = short, longer
    feats, lengths = enc(batch, torch.tensor([12345, SR]))
    assert lengths.tolist() == [1 + 12345 // 160, 101] == [alone_len.item(), 101]
    assert enc.output_lengths(torch.tensor([12345, SR])).tolist() == lengths.tolist()
    assert feats.shape == (2, 101, enc.dim)
    # Every valid frame matches, the last ones too: samples past the length are zeroed before the
    # STFT, exactly as a lone clip is centre-padded with zeros.
    assert_close(feats[0, :78], alone[0], atol=1e-5)
    assert not feats[0, 78:].any()
    alone_long, _ = enc(longer[None], torch.tensor([SR]))
    assert_close(feats[1], alone_long[0], atol=1e-5)
    # Per-utterance CMVN over the valid frames.
    assert_close(feats[0, :78].mean(0), torch.zeros(enc.dim), atol=1e-4)
    assert_close(feats[0, :78].std(0, unbiased=False), torch.ones(enc.dim), atol=1e-3)


def test_short_clip_and_gradient():
    enc = create_encoder("mfcc39")
    wav = (0.1 * torch.randn(2, 4000)).requires_grad_()
    feats, lengths = enc(wav, torch.tensor([4000, 500]))  # 500 samples: 4 frames, fewer than the delta window
    assert lengths.tolist() == [26, 4] and torch.isfinite(feats).all()
    create_encoder("logmel")(wav, torch.tensor([4000, 500]))[0].sum().backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all() and wav.grad[0].abs().sum() > 0


def test_registry_dims_config_and_kwargs():
    assert {"mfcc39", "logmel"} <= set(list_encoders())
    mfcc, logmel = create_encoder("mfcc39"), create_encoder("logmel")
    assert isinstance(mfcc, MFCC39) and isinstance(logmel, LogMel)
    assert (mfcc.dim, mfcc.frame_rate, mfcc.name) == (39, 100.0, "mfcc39")
    assert (logmel.dim, logmel.frame_rate, logmel.name) == (80, 100.0, "logmel")
    for enc in (mfcc, logmel):
        assert not enc.trainable and not enc.needs_pretraining
        assert list(enc.parameters()) == [] and enc.state_dict() == {}
        json.dumps(enc.config(), sort_keys=True, allow_nan=False)  # it feeds the feature-cache key
    wide = create_encoder("mfcc39", n_mels=64, n_mfcc=20)
    assert wide.dim == 60 and wide.fbank.shape == (64, 257)
    assert wide.config() != mfcc.config() and wide.config()["n_mels"] == 64
    assert create_encoder("logmel", normalize=False).config() != logmel.config()
    assert mfcc.config()["n_mels"] == 40 and mfcc.config()["top_db"] == 80.0
    with pytest.raises(ConfigError, match="does not accept"):
        create_encoder("logmel", n_mfcc=13)
    with pytest.raises(ConfigError, match="n_mfcc must be in 1..n_mels"):
        create_encoder("mfcc39", n_mfcc=41)
