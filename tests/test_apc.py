"""APC: Kaldi fbank vs an independent numpy reference, framing, padding, s3prl checkpoints, pretext.

The numpy reference below is written from Kaldi's formulas (feature-window.cc, mel-computations.cc,
as torchaudio.compliance.kaldi documents them), one frame at a time in float64; it shares no code
with baselines.kaldi. The s3prl checkpoints are written in s3prl's format (upstream/apc/expert.py:
ckpt["config"]["data"]["audio"], ckpt["config"]["model"]["paras"], ckpt["model"]) with the key
names and shapes of s3prl's upstream/apc/apc.py, and the GRU reference is the GRU equations.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from baselines import kaldi
from baselines.apc import APC, APCPretext, apc_pretext
from bench.errors import ConfigError
from bench.pretrain.objective import PretextContext, pretext_factory
from bench.registry import count_parameters, create_encoder, list_encoders

SR = 16_000
# Tolerances. float64 on both sides: the algorithms agree to roundoff (~1e-12 seen; 1e-9 allowed).
# float32 on our side: torch's float32 FFT errs by ~1e-7 of a frame's peak magnitude, so a mel band
# 60-80 dB below the frame's peak moves by up to ~1e-4 in natural log (measured max ~8e-5 on these
# signals); the bound leaves a margin of ~6x. After CMVN (std ~1-3 nats) errors shrink.
FLOAT64_ATOL = 1e-9
LOGMEL_ATOL = 5e-4
GRU_ATOL = 1e-5  # float32 GRU vs float64 numpy on identical inputs, hidden 32, ~100 steps


# ------------------------------------------------------------------------------- references
def kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def reference_fbank(y: np.ndarray, window: str = "hamming", num_bins: int = 80, low: float = 20.0,
                    high: float = 8000.0) -> np.ndarray:
    """compute-fbank-feats with dither 0, snip_edges, 25 ms / 10 ms, pre-emphasis 0.97, log power."""
    y = np.asarray(y, dtype=np.float64)
    size, shift, n_fft = 400, 160, 512
    n = np.arange(size)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))
    win = {"hamming": 0.54 - 0.46 * np.cos(2 * np.pi * n / (size - 1)), "hanning": hann,
           "povey": hann ** 0.85, "rectangular": np.ones(size),
           "blackman": 0.42 - 0.5 * np.cos(2 * np.pi * n / (size - 1)) + 0.08 * np.cos(4 * np.pi * n / (size - 1))}[window]
    # Mel filters: triangles linear in mel, centres evenly spaced between mel(low) and mel(high).
    m_lo, m_hi = kaldi_mel(low), kaldi_mel(high)
    step = (m_hi - m_lo) / (num_bins + 1)
    fft_mel = kaldi_mel(np.arange(n_fft // 2 + 1) * SR / n_fft)
    filters = np.zeros((num_bins, n_fft // 2 + 1))
    for b in range(num_bins):
        left, centre, right = m_lo + b * step, m_lo + (b + 1) * step, m_lo + (b + 2) * step
        for k in range(n_fft // 2):  # Kaldi leaves the Nyquist bin out
            if left < fft_mel[k] <= centre:
                filters[b, k] = (fft_mel[k] - left) / (centre - left)
            elif centre < fft_mel[k] < right:
                filters[b, k] = (right - fft_mel[k]) / (right - centre)
    count = 1 + (len(y) - size) // shift
    out = np.zeros((count, num_bins))
    for t in range(count):
        frame = y[t * shift: t * shift + size].copy()
        frame -= frame.mean()
        emphasised = frame.copy()
        emphasised[1:] -= 0.97 * frame[:-1]
        emphasised[0] -= 0.97 * frame[0]
        spectrum = np.abs(np.fft.rfft(np.concatenate([emphasised * win, np.zeros(n_fft - size)]))) ** 2
        out[t] = np.log(np.maximum(filters @ spectrum, np.finfo(np.float32).eps))
    return out


def reference_cmvn(x: np.ndarray) -> np.ndarray:
    """s3prl's CMVN module: (x - mean) / (1e-10 + std), torch's std being the unbiased one."""
    return (x - x.mean(0)) / (1e-10 + x.std(0, ddof=1))


def reference_gru_stack(feats: np.ndarray, state: dict, num_layers: int, residual: bool = True) -> list[np.ndarray]:
    """s3prl's APC forward in eval mode, with the GRU written out (PyTorch gate order r, z, n)."""
    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    x = np.asarray(feats, dtype=np.float64)
    outs = []
    for i in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = (state[f"rnn_layers.{i}.{k}"].double().numpy()
                                  for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
        H = w_hh.shape[1]
        h = np.zeros(H)
        out = np.zeros((x.shape[0], H))
        for t in range(x.shape[0]):
            gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
            r = sigmoid(gi[:H] + gh[:H])
            z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
            cand = np.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1.0 - z) * cand + z * h
            out[t] = h
        if residual and i > 0:
            out = out + x
        outs.append(out)
        x = out
    return outs


# ------------------------------------------------------------------------------------ inputs
def speechlike(n: int, seed: int, silence: tuple[int, int] | None = None) -> np.ndarray:
    """Harmonics with a gliding pitch, a noise burst and an amplitude envelope; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 110.0 + 60.0 * np.sin(2 * np.pi * 1.5 * t) + 20.0 * seed
    phase = 2 * np.pi * np.cumsum(f0) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 25))
    y = y * (0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.0 * t)))
    burst = slice(n // 3, n // 3 + n // 8)
    y[burst] += 3.0 * rng.standard_normal(y[burst].shape)
    y = 0.1 * y / np.abs(y).max() + 1e-3 * rng.standard_normal(n)
    if silence is not None:
        y[silence[0]:silence[1]] = 0.0  # digital silence: every band hits Kaldi's epsilon floor
    return y.astype(np.float32)


def s3prl_config(num_layers: int = 3, hidden_size: int = 32, **audio) -> dict:
    """s3prl's pretrain/apc/config_model.yaml, as stored in ckpt["config"]."""
    return {"model": {"paras": {"num_layers": num_layers, "hidden_size": hidden_size, "dropout": 0.1,
                                "residual": True}},
            "task": {"sequence_length": 1500, "n_future": 5},
            "data": {"audio": {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10,
                               "decode_wav": False, **audio}}}


def s3prl_state(num_layers: int, hidden: int, feat_dim: int = 80, seed: int = 0) -> OrderedDict:
    """A state dict with s3prl APC's key names and shapes (nn.GRU per layer, postnet Linear)."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(hidden)
    state = OrderedDict()
    for i in range(num_layers):
        n_in = feat_dim if i == 0 else hidden
        for key, shape in (("weight_ih_l0", (3 * hidden, n_in)), ("weight_hh_l0", (3 * hidden, hidden)),
                           ("bias_ih_l0", (3 * hidden,)), ("bias_hh_l0", (3 * hidden,))):
            state[f"rnn_layers.{i}.{key}"] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
    state["postnet.weight"] = (torch.rand(feat_dim, hidden, generator=gen) * 2 - 1) * bound
    state["postnet.bias"] = torch.zeros(feat_dim)
    return state


def assert_close(actual: torch.Tensor, expected, atol: float) -> None:
    expected = torch.as_tensor(np.asarray(expected), dtype=actual.dtype)
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


class Foreign:
    """Not an allowed global for torch.load(weights_only=True)."""


# ------------------------------------------------------------------------------------- fbank
def test_fbank_matches_kaldi_reference():
    clips = [speechlike(SR, 0), speechlike(12345, 1, silence=(3000, 6000)), speechlike(400, 2)]
    worst32 = 0.0
    for y in clips:
        ref = reference_fbank(y)
        feats64, frames = kaldi.fbank(torch.from_numpy(y).double()[None], torch.tensor([len(y)]))
        assert int(frames) == ref.shape[0] == 1 + (len(y) - 400) // 160
        assert_close(feats64[0], ref, FLOAT64_ATOL)
        feats32, _ = kaldi.fbank(torch.from_numpy(y)[None], torch.tensor([len(y)]))
        assert feats32.dtype == torch.float32
        worst32 = max(worst32, (feats32[0].double() - torch.from_numpy(ref)).abs().max().item())
    print(f"float32 fbank max abs diff vs reference: {worst32:.2e}")
    assert worst32 < LOGMEL_ATOL
    # The silent stretch sits at Kaldi's floor, log(float32 eps), in every band.
    silent = kaldi.fbank(torch.from_numpy(clips[1])[None])[0][0, 20:30]
    assert torch.allclose(silent, torch.full_like(silent, math.log(kaldi.FLOAT_EPSILON)))


@pytest.mark.parametrize("window", ["povey", "hanning", "rectangular", "blackman"])
def test_fbank_other_windows_and_mel_range(window):
    y = speechlike(4000, 3)
    feats, _ = kaldi.fbank(torch.from_numpy(y).double(), window_type=window, num_mel_bins=40,
                           low_freq=64.0, high_freq=-400.0)
    assert_close(feats, reference_fbank(y, window, num_bins=40, low=64.0, high=7600.0), FLOAT64_ATOL)


def test_framing_formula_and_short_clips():
    lengths = torch.tensor([400, 559, 560, 16000, 16001, 18560, 399, 0])
    expected = [1 + (n - 400) // 160 if n >= 400 else 0 for n in lengths.tolist()]
    assert expected[:6] == [1, 1, 2, 98, 98, 114]
    assert kaldi.num_frames(lengths, 400, 160).tolist() == expected
    assert kaldi.window_sizes(SR, 25.0, 10.0) == (400, 160, 512)
    enc = APC(num_layers=1, hidden_size=8)
    assert enc.output_lengths(lengths).tolist() == expected
    with pytest.raises(ConfigError, match=r"clip\(s\) \[1\] of the batch have \[399\] samples.*\(400 samples\)"):
        enc(torch.zeros(2, 1000), torch.tensor([1000, 399]))


def test_cmvn_matches_s3prl_and_ignores_padding():
    x = torch.randn(2, 30, 5, dtype=torch.float64)
    x[1, 18:] = 1e6  # padding that would dominate statistics if it were used
    out = kaldi.utterance_cmvn(x, torch.tensor([30, 18]))
    assert_close(out[0], reference_cmvn(x[0].numpy()), 1e-12)
    assert_close(out[1, :18], reference_cmvn(x[1, :18].numpy()), 1e-12)
    assert not out[1, 18:].any()
    # A constant bin (digital silence) becomes 0, not float32 roundoff divided by 1e-10.
    flat = torch.full((1, 98, 3), math.log(kaldi.FLOAT_EPSILON), dtype=torch.float32)
    assert not kaldi.utterance_cmvn(flat).any()


# ----------------------------------------------------------------------------------- encoder
def test_published_size_one_second_clip():
    enc = create_encoder("apc").eval()
    assert isinstance(enc, APC) and "apc" in list_encoders()
    assert (enc.name, enc.dim, enc.frame_rate, enc.needs_pretraining, enc.trainable) == ("apc", 512, 100.0, True, True)
    assert count_parameters(enc) == 4_105_296
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in s3prl_state(3, 512).items()}
    with torch.no_grad():
        feats, lengths = enc(torch.from_numpy(speechlike(SR, 0))[None], torch.tensor([SR]))
    assert feats.shape == (1, 98, 512) and lengths.tolist() == [98] == [1 + (SR - 400) // 160]
    assert torch.isfinite(feats).all()
    cfg = enc.config()
    assert cfg["window_type"] == "hamming" and cfg["num_layers"] == 3 and cfg["layer"] == -1
    assert cfg != create_encoder("apc", layer=1).config()


def test_padding_does_not_leak():
    torch.manual_seed(0)
    enc = APC(num_layers=3, hidden_size=32).eval()
    short, longer = torch.from_numpy(speechlike(9000, 4)), torch.from_numpy(speechlike(SR, 5))
    batch = torch.empty(2, SR).uniform_(-1, 1)  # loud noise as padding: it must be ignored
    batch[0, :9000], batch[1] = short, longer
    with torch.no_grad():
        feats, lengths = enc(batch, torch.tensor([9000, SR]))
        alone, alone_len = enc(short[None], torch.tensor([9000]))
        alone_long, _ = enc(longer[None], torch.tensor([SR]))
        fb, frames = enc.features(batch, torch.tensor([9000, SR]))
        fb_alone, _ = enc.features(short[None], torch.tensor([9000]))
    n = 1 + (9000 - 400) // 160
    assert lengths.tolist() == [n, 98] and alone_len.tolist() == [n] and frames.tolist() == [n, 98]
    assert_close(fb[0, :n], fb_alone[0], 1e-5)
    assert_close(feats[0, :n], alone[0], 1e-5)
    assert_close(feats[1], alone_long[0], 1e-5)
    assert not feats[0, n:].any() and not fb[0, n:].any()
    # Per-utterance CMVN over the valid frames (unbiased std, s3prl's).
    assert_close(fb[0, :n].mean(0), torch.zeros(80), 1e-4)
    assert_close(fb[0, :n].std(0), torch.ones(80), 1e-3)


def test_layer_selection():
    torch.manual_seed(0)
    base = APC(num_layers=3, hidden_size=16).eval()
    wav, lengths = torch.from_numpy(speechlike(6000, 6))[None], torch.tensor([6000])
    with torch.no_grad():
        hiddens = base.encode_features(*base.features(wav, lengths))
        assert len(hiddens) == 3 and all(h.shape == (1, 36, 16) for h in hiddens)
        for layer, index in ((0, 0), (1, 1), (2, 2), (-1, 2), (-3, 0)):
            enc = APC(num_layers=3, hidden_size=16, layer=layer).eval()
            enc.load_state_dict(base.state_dict())
            assert torch.equal(enc(wav, lengths)[0], hiddens[index])
    assert not torch.equal(hiddens[0], hiddens[2])
    for bad in (3, -4):
        with pytest.raises(ConfigError, match="layer must be in -3..2"):
            APC(num_layers=3, layer=bad)


# ------------------------------------------------------------------------------- checkpoints
def test_s3prl_checkpoint_loads_and_reproduces_reference(tmp_path):
    state = s3prl_state(3, 32, seed=1)
    path = tmp_path / "apc_default.ckpt"
    # s3prl checkpoints may carry an argparse Namespace; that one class is allowed.
    torch.save({"config": s3prl_config(3, 32), "model": state, "Args": argparse.Namespace(lr=1e-3)}, path)
    enc = create_encoder(f"apc@{path}", hidden_size=32).eval()
    for key, value in state.items():
        assert torch.equal(enc.state_dict()[key], value)
    y = speechlike(5000, 7)
    with torch.no_grad():
        feats, lengths = enc(torch.from_numpy(y)[None], torch.tensor([len(y)]))
        # The GRU stack on identical (precomputed) input vs the GRU equations in float64.
        fb = torch.from_numpy(reference_cmvn(reference_fbank(y))).float()
        hiddens = enc.encode_features(fb[None], torch.tensor([fb.shape[0]]))
    ref = reference_gru_stack(fb.numpy(), state, 3)
    for ours, theirs in zip(hiddens, ref):
        assert_close(ours[0], theirs, GRU_ATOL)
    # End to end from the waveform: float32 fbank roundoff, damped by CMVN and the GRU.
    assert lengths.tolist() == [1 + (5000 - 400) // 160]
    assert_close(feats[0], ref[-1], 1e-3)
    # The postnet is s3prl's too: its prediction from the last layer.
    assert_close(enc.postnet(hiddens[-1])[0], ref[-1] @ state["postnet.weight"].double().numpy().T, 1e-4)


def test_published_size_s3prl_checkpoint(tmp_path):
    path = tmp_path / "apc_360hr.ckpt"
    torch.save({"config": s3prl_config(3, 512), "model": s3prl_state(3, 512)}, path)
    enc = create_encoder("apc", checkpoint=path).eval()
    with torch.no_grad():
        feats, lengths = enc(torch.from_numpy(speechlike(SR, 8))[None], torch.tensor([SR]))
    assert feats.shape == (1, 98, 512) and torch.isfinite(feats).all()


def test_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "four_layers.ckpt"
    torch.save({"config": s3prl_config(4, 32), "model": s3prl_state(4, 32)}, path)
    with pytest.raises(ConfigError, match=r"config.model.paras.num_layers = 4.*num_layers=4"):
        create_encoder(f"apc@{path}", hidden_size=32)
    assert create_encoder(f"apc@{path}", hidden_size=32, num_layers=4).num_layers == 4  # the advice works
    # A config that matches but weights that do not: every bad key is listed.
    path = tmp_path / "lying.ckpt"
    torch.save({"config": s3prl_config(3, 32), "model": s3prl_state(3, 48)}, path)
    with pytest.raises(ConfigError, match=r"rnn_layers.0.weight_hh_l0: checkpoint \(144, 48\) vs model \(96, 32\)"):
        create_encoder(f"apc@{path}", hidden_size=32)
    state = s3prl_state(3, 32)
    del state["postnet.weight"], state["postnet.bias"]
    state["prenet.layers.0.weight"] = torch.zeros(80, 80)
    torch.save({"config": s3prl_config(3, 32), "model": state}, path)
    with pytest.raises(ConfigError, match=r"Missing keys: postnet.bias, postnet.weight\. "
                                          r"Unexpected keys: prenet.layers.0.weight"):
        create_encoder(f"apc@{path}", hidden_size=32)


@pytest.mark.parametrize("audio, paras, match", [
    ({"frame_shift": 20}, {}, r"config.data.audio.frame_shift = 20 .*frame_shift=20"),
    ({"feat_dim": 40}, {}, r"feat_dim = 40 .*input_size=40"),
    ({"cmvn": False}, {}, r"config.data.audio.cmvn = False"),
    ({"snip_edges": False}, {}, r"snip_edges = False.*does not implement"),
    ({"num_ceps": 13}, {}, r"option\(s\) \['num_ceps'\]"),
    ({"feat_type": "mfcc"}, {}, r"feat_type = 'mfcc'"),
    ({}, {"residual": False}, r"paras.residual = False.*residual=False"),
    ({}, {"vq": {"codebook_size": [128]}}, r"VQ-APC"),
])
def test_checkpoint_config_mismatch(tmp_path, audio, paras, match):
    config = s3prl_config(3, 32, **audio)
    config["model"]["paras"].update(paras)
    path = tmp_path / "apc.ckpt"
    torch.save({"config": config, "model": s3prl_state(3, 32)}, path)
    with pytest.raises(ConfigError, match=match):
        create_encoder(f"apc@{path}", hidden_size=32)


def test_non_hamming_encoder_refused_dither_and_dropout_accepted(tmp_path):
    path = tmp_path / "apc.ckpt"
    torch.save({"config": s3prl_config(3, 32), "model": s3prl_state(3, 32)}, path)
    with pytest.raises(ConfigError, match="Hamming window.*window_type='hamming'"):
        create_encoder(f"apc@{path}", hidden_size=32, window_type="povey")
    torch.save({"config": s3prl_config(3, 32, dither=1.0, energy_floor=0.0), "model": s3prl_state(3, 32)}, path)
    create_encoder(f"apc@{path}", hidden_size=32)  # dither only perturbs; a warning, not an error
    assert create_encoder(f"apc@{path}", hidden_size=32, dropout=0.0).dropout == 0.0  # a training setting


def test_foreign_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"config": s3prl_config(3, 32), "model": s3prl_state(3, 32), "extra": Foreign()}, path)
    with pytest.raises(ConfigError, match="refused to load"):
        create_encoder(f"apc@{path}", hidden_size=32)
    with pytest.raises(ConfigError, match="not found"):
        create_encoder(f"apc@{tmp_path / 'missing.ckpt'}")


def test_avbench_format_and_bare_state_dict(tmp_path):
    torch.manual_seed(3)
    trained = APC(num_layers=2, hidden_size=16)
    path = tmp_path / "pretrained.pt"
    torch.save({"format": "avbench-pretrain/1", "encoder": trained.state_dict(), "step": 7}, path)
    loaded = create_encoder(f"apc@{path}", num_layers=2, hidden_size=16)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())
    torch.save(trained.state_dict(), path)
    create_encoder(f"apc@{path}", num_layers=2, hidden_size=16)
    with pytest.raises(ConfigError, match="Missing keys: rnn_layers.2"):
        create_encoder(f"apc@{path}", num_layers=3, hidden_size=16)


# ----------------------------------------------------------------------------------- pretext
def test_pretext_loss_is_masked_l1_n_ahead():
    torch.manual_seed(0)
    enc = APC(num_layers=2, hidden_size=16).eval()
    pretext = pretext_factory("apc")(enc, PretextContext(), n_ahead=2)
    assert isinstance(pretext, APCPretext) and pretext.encoder is enc and pretext.config()["n_ahead"] == 2
    wav = torch.from_numpy(np.stack([speechlike(4000, 9), speechlike(4000, 10)]))
    lengths = torch.tensor([4000, 2500])
    with torch.no_grad():
        loss = pretext(wav, lengths)["loss"]
        total, count = 0.0, 0
        for b in range(2):  # each clip alone: predict frame t + 2 from h_t
            x, frames = enc.features(wav[b:b + 1, : lengths[b]], lengths[b:b + 1])
            pred = enc.postnet(enc.encode_features(x, frames)[-1])
            total += (pred[0, :-2] - x[0, 2:]).abs().sum().item()
            count += (int(frames) - 2) * 80
        assert loss.item() == pytest.approx(total / count, rel=1e-5)
        wav[1, 2500:] = 1.0  # padding content is not part of the objective
        assert pretext(wav, lengths)["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="n_ahead"):
        apc_pretext(enc, PretextContext(), n_ahead=0)
    with pytest.raises(ConfigError, match="no more than n_ahead=2"):
        pretext(torch.zeros(1, 500), torch.tensor([500]))


def test_pretext_overfits_a_tiny_batch():
    torch.manual_seed(0)
    enc = APC(num_layers=2, hidden_size=32)
    pretext = apc_pretext(enc, PretextContext())  # n_ahead=3
    wav = torch.from_numpy(np.stack([speechlike(2000, 11), speechlike(2000, 12)]))
    lengths = torch.tensor([2000, 1600])
    params = list(pretext.parameters())
    assert {id(p) for p in params} == {id(p) for p in enc.parameters()}  # postnet included, nothing else
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        out = pretext(wav, lengths)
        assert torch.isfinite(out["loss"]) and out["valid_frames"].item() == (11 - 3 + 8 - 3)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    print("apc pretext loss:", [round(v, 3) for v in losses[::5]], round(losses[-1], 3))
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    enc = APC(num_layers=3, hidden_size=32).eval()
    wav = torch.from_numpy(np.stack([speechlike(SR, 13), speechlike(SR, 14)]))
    lengths = torch.tensor([SR, 7000])  # lengths stay on the CPU, as the data loader gives them
    with torch.no_grad():
        cpu, cpu_len = enc(wav, lengths)
        gpu, gpu_len = enc.cuda()(wav.cuda(), lengths)
        loss = apc_pretext(enc)(wav.cuda(), lengths)["loss"]
    assert gpu_len.tolist() == cpu_len.tolist() and torch.isfinite(loss)
    assert_close(gpu.cpu(), cpu.numpy(), 1e-3)
