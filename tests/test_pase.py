"""PASE+: published architecture and key names, checkpoint loading, padding, pretext and contamination.

The published FE_e199.ckpt cannot be downloaded here, so checkpoint tests write files in its exact
format (a bare `frontend.state_dict()` with the reference key names, plus the JSON frontend config
beside it) and check the loaded encoder against `reference_frontend` below: a plain, one-clip
transcription of the reference computation (pase WaveFe / FeBlock / SincConv_fast, torchqrnn QRNN,
WaveFe.fuse_skip) that reads the raw state dict, with none of the batching and masking machinery.
"""

from __future__ import annotations

from pathlib import Path
import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import baselines.pase  # noqa: F401  (registers "pase+" and its pretext)
from baselines import pase_workers as PW
from baselines.pase import PASEPlus
from baselines.pase_arch import ARCH_DEFAULTS, PASE_PLUS_CONFIG
from bench.errors import ConfigError
from bench.pretrain.objective import PretextContext, pretext_factory
from bench.registry import count_parameters, create_encoder

SR = 16_000
# A narrow PASE+ (same kernels and strides, fewer channels) for tests that run many forwards.
SMALL = dict(fmaps=[8, 8, 16, 16, 16, 16, 32, 32], emb_dim=16, rnn_dim=32)
SMALL_CFG = {"kwidths": [251, 20, 11, 11, 11, 11, 11, 11], "strides": [1, 10, 2, 1, 2, 1, 2, 2],
             "fmaps": SMALL["fmaps"], "emb_dim": 16, "rnn_dim": 32, "denseskips": True, "norm_out": True,
             "rnn_pool": True, "rnn_layers": 1, "rnn_type": "qrnn"}
# Tiny workers for the training test.
TINY_PRETEXT = dict(hidden_size=32, lps_n_fft=512, decoder_fmaps=(16, 16, 8), decoder_hidden=8)
NO_CONTAMINATION = dict(p_reverb=0, p_overlap=0, p_noise=0, p_bandrop=0, p_lowpass=0, p_chop=0, p_clip=0)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def speechlike(n: int, seed: int, f0: float = 140.0) -> torch.Tensor:
    """A voiced-ish test signal: harmonics of a gliding F0, an envelope, a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f = f0 * (1 + 0.2 * torch.sin(2 * math.pi * 1.5 * t))
    phase = 2 * math.pi * torch.cumsum(f, 0) / SR
    x = sum(torch.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t + seed) ** 2
    return (0.1 * x * env + 0.01 * torch.randn(n, generator=g)).to(torch.float32)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, PReLU slopes and SincNet bands, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("act.weight"):
                t.copy_(0.1 + 0.3 * torch.rand(t.shape, generator=g))
            elif name.endswith("low_hz_") or name.endswith("band_hz_"):
                t.mul_(0.8 + 0.4 * torch.rand(t.shape, generator=g))


# ----------------------------------------------------------------------------- reference transcription
def reference_sinc_filters(low_hz_, band_hz_, k: int = 251) -> torch.Tensor:
    low = 50 + low_hz_.abs()
    high = torch.clamp(low + 50 + band_hz_.abs(), 50, SR / 2)
    n = torch.arange(-(k - 1) // 2, 0, dtype=torch.float32)  # -125 .. -1 (left half)
    w = 0.54 - 0.46 * torch.cos(2 * math.pi * torch.linspace(0, k / 2 - 1, int(k / 2)) / k)
    def two_f_sinc(f):  # 2 f sinc(2 pi f n / sr)
        x = 2 * math.pi * f * n / SR
        return 2 * f * torch.sin(x) / x
    left = (two_f_sinc(high) - two_f_sinc(low)) * w
    band = (high - low)
    filt = torch.cat([left, 2 * band, left.flip(1)], dim=1) / (2 * band)
    return filt.unsqueeze(1)


def reference_frontend(sd: dict, cfg: dict, wav: torch.Tensor) -> torch.Tensor:
    """One clip [T] -> [T', emb_dim], eval mode, exactly as pase's WaveFe.forward computes it."""
    kw, st = cfg["kwidths"], cfg["strides"]
    h = wav.view(1, 1, -1)
    dskips = []
    for i in range(len(kw)):
        p = f"blocks.{i}."
        if i == 0:
            k = kw[0]
            h = F.conv1d(F.pad(h, (k // 2, k // 2), mode="reflect"),
                         reference_sinc_filters(sd[p + "conv.low_hz_"], sd[p + "conv.band_hz_"], k))
        else:
            k, s = kw[i], st[i]
            pad = (k // 2 - 1, k // 2) if (s > 1 or k % 2 == 0) else (k // 2, k // 2)
            h = F.conv1d(F.pad(h, pad, mode="reflect"), sd[p + "conv.weight"], sd[p + "conv.bias"], stride=s)
        h = F.batch_norm(h, sd[p + "norm.running_mean"], sd[p + "norm.running_var"], sd[p + "norm.weight"],
                         sd[p + "norm.bias"], training=False, eps=1e-5)
        h = F.prelu(h, sd[p + "act.weight"])
        if i < len(kw) - 1:
            dskips.append(F.conv1d(h, sd[f"denseskips.{i}.weight"]))
    x = h.permute(2, 0, 1)  # [T, 1, C] as torchqrnn
    source = torch.cat([x, torch.cat([x[:1] * 0, x[:-1]], 0)], 2)
    z, f, o = F.linear(source, sd["rnn.layers.0.linear.weight"], sd["rnn.layers.0.linear.bias"]).chunk(3, dim=2)
    z, f = torch.tanh(z), torch.sigmoid(f)
    c, cells = None, []
    for t in range(x.shape[0]):
        c = f[t] * z[t] if c is None else f[t] * z[t] + (1 - f[t]) * c
        cells.append(c)
    h = (torch.sigmoid(o) * torch.stack(cells)).permute(1, 2, 0)
    y = F.conv1d(h, sd["W.weight"], sd["W.bias"])
    for skip in dskips:  # WaveFe.fuse_skip, densemerge "sum"
        d = skip.shape[2] // y.shape[2]
        if d > 1:
            skip = skip[:, :, :y.shape[2] * d].reshape(1, skip.shape[1], y.shape[2], d).mean(dim=3)
        y = y + skip
    y = F.batch_norm(y, sd["norm_out.running_mean"], sd["norm_out.running_var"], None, None, training=False)
    return y[0].T


# ----------------------------------------------------------------------------- encoder
def test_published_architecture_shapes_keys_and_size():
    enc = create_encoder("pase+").eval()
    assert (enc.dim, enc.frame_rate, enc.needs_pretraining) == (256, 100.0, True)
    with torch.no_grad():
        feats, n = enc(torch.randn(1, SR) * 0.1, torch.tensor([SR]))
    assert feats.shape == (1, 100, 256) and n.tolist() == [100]
    # Output frames: ceil(T / 10) for the stride-10 layer, then four halvings.
    t = torch.arange(enc.min_samples, 40_000, 37)
    assert torch.equal(enc.output_lengths(t), torch.div(torch.div(t + 9, 10, rounding_mode="floor"), 16,
                                                        rounding_mode="floor"))
    # Exact size of the published configuration: 5,766,720 conv-stack + 360,448 dense-skip +
    # 1,574,400 QRNN + 131,328 W parameters (7.83 M).
    print("pase+ parameters:", count_parameters(enc))
    assert count_parameters(enc) == 7_832_896
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["blocks.0.conv.low_hz_"] == (64, 1) and shapes["blocks.0.conv.band_hz_"] == (64, 1)
    assert shapes["blocks.1.conv.weight"] == (64, 64, 20) and shapes["blocks.7.conv.weight"] == (512, 512, 11)
    assert shapes["blocks.7.act.weight"] == (512,) and "blocks.3.norm.num_batches_tracked" in shapes
    assert shapes["denseskips.0.weight"] == (256, 64, 1) and shapes["denseskips.6.weight"] == (256, 512, 1)
    assert "denseskips.7.weight" not in shapes
    assert shapes["rnn.layers.0.linear.weight"] == (1536, 1024) and shapes["rnn.layers.0.linear.bias"] == (1536,)
    assert shapes["W.weight"] == (256, 512, 1) and shapes["norm_out.running_var"] == (256,)
    assert "norm_out.weight" not in shapes  # affine=False
    assert enc.config()["arch"]["rnn_type"] == "qrnn" and enc.config()["feature_version"] >= 1


def test_padding_does_not_leak():
    torch.manual_seed(0)
    enc = PASEPlus(**SMALL)
    randomize(enc)
    lengths = torch.tensor([16_000, 11_111, 6_003])
    wav = torch.stack([speechlike(16_000, s) for s in range(3)])
    batch = wav.clone()
    for b, n in enumerate(lengths):
        batch[b, n:] = 5.0  # garbage beyond the length must be ignored
    enc.eval()
    with torch.no_grad():
        feats, out_len = enc(batch, lengths)
        assert out_len.tolist() == enc.output_lengths(lengths).tolist()
        for b, n in enumerate(lengths.tolist()):
            alone, m = enc(wav[b:b + 1, :n], torch.tensor([n]))
            k = int(m)
            assert max_diff(feats[b, :k], alone[0]) < 1e-5
            assert feats[b, k:].abs().max().item() == 0.0 if k < feats.shape[1] else True
    # Training mode: BatchNorm statistics come from valid frames only, so extra padding changes nothing.
    enc.train()
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    f1, _ = enc(batch, lengths)
    enc.load_state_dict(state)
    f2, _ = enc(F.pad(batch, (0, 3000), value=7.0), lengths)
    assert max_diff(f1, f2[:, :f1.shape[1]]) < 1e-4


def test_gru_variant_packs_sequences_and_keeps_reference_names():
    enc = PASEPlus(**SMALL, rnn_type="gru").eval()
    keys = set(enc.state_dict())
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0_reverse"} <= keys and not any(".layers." in k for k in keys)
    wav = torch.stack([speechlike(12_000, 1), speechlike(12_000, 2)])
    with torch.no_grad():
        feats, _ = enc(wav, torch.tensor([12_000, 8_000]))
        alone, m = enc(wav[1:, :8_000], torch.tensor([8_000]))
    assert max_diff(feats[1, :int(m)], alone[0]) < 1e-5


def test_too_short_clip_is_a_clear_error():
    enc = PASEPlus(**SMALL)
    with pytest.raises(ValueError, match="at least"):
        enc(torch.zeros(1, 100), torch.tensor([100]))


# ----------------------------------------------------------------------------- checkpoints
def _small_reference_checkpoint(tmp_path, name="FE_e199.ckpt", cfg_name="PASE+.cfg", wrap=None):
    torch.manual_seed(1)
    model = PASEPlus(**SMALL)
    randomize(model, seed=3)
    state = model.state_dict()
    path = tmp_path / name
    torch.save(state if wrap is None else wrap(state), path)
    if cfg_name:
        (tmp_path / cfg_name).write_text(json.dumps(SMALL_CFG, indent=1))
    return path, state


def test_reference_checkpoint_with_config_loads_and_reproduces_the_reference(tmp_path):
    path, state = _small_reference_checkpoint(tmp_path)
    enc = create_encoder(f"pase+@{path}").eval()  # default PASE+ build, rebuilt to the config beside it
    assert enc.dim == 16 and enc.arch["fmaps"] == SMALL["fmaps"]
    wav = torch.stack([speechlike(16_000, 7), speechlike(16_000, 8)])
    lengths = torch.tensor([16_000, 9_600])
    with torch.no_grad():
        feats, out_len = enc(wav, lengths)
    for b in range(2):
        ref = reference_frontend(state, SMALL_CFG, wav[b, :int(lengths[b])])
        assert ref.shape == (int(out_len[b]), 16)
        assert max_diff(feats[b, :int(out_len[b])], ref) < 1e-4
    # The Saver ({"step", "state_dict", "optimizer"}) and trainer ({"model", ...}) wrappings, and
    # an explicit config_path, load the same weights.
    for wrap in (lambda s: {"step": 10, "state_dict": s, "optimizer": {"state": {}, "param_groups": []}},
                 lambda s: {"model": s, "global_epoch": 199}):
        sub = tmp_path / f"w{id(wrap)}"
        sub.mkdir()
        p2, _ = _small_reference_checkpoint(sub, name="weights.ckpt", cfg_name=None, wrap=wrap)
        other = create_encoder(f"pase+@{p2}", config_path=str(tmp_path / "PASE+.cfg")).eval()
        with torch.no_grad():
            assert max_diff(other(wav, lengths)[0], feats) < 1e-6


def test_wrong_architecture_checkpoint_lists_mismatching_keys(tmp_path):
    path, _ = _small_reference_checkpoint(tmp_path, cfg_name=None)  # no config: PASE+ is assumed
    with pytest.raises(ConfigError) as err:
        create_encoder(f"pase+@{path}")
    msg = str(err.value)
    assert "Shape mismatches" in msg and "blocks.1.conv.weight: checkpoint (8, 8, 20) vs model (64, 64, 20)" in msg
    assert "config_path" in msg
    # A GRU-variant checkpoint in a QRNN model: every key difference is listed.
    gru = PASEPlus(**SMALL, rnn_type="gru")
    torch.save(gru.state_dict(), tmp_path / "gru.ckpt")
    with pytest.raises(ConfigError) as err:
        create_encoder(f"pase+@{tmp_path / 'gru.ckpt'}", config_path=str(_write(tmp_path / "q.json", SMALL_CFG)))
    msg = str(err.value)
    assert "Missing keys: rnn.layers.0.linear.bias, rnn.layers.0.linear.weight" in msg
    assert "Unexpected keys: rnn.bias_hh_l0" in msg and "rnn.weight_ih_l0_reverse" in msg


def _write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path


def test_checkpoint_with_other_objects_is_refused(tmp_path):
    state = PASEPlus(**SMALL).state_dict()
    # A pathlib object stands for any pickled class: loading it would mean importing and calling it.
    torch.save({"state_dict": state, "save_dir": Path("/tmp")}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ConfigError, match="refused to load a PASE\\+ checkpoint: it pickles an object of type pathlib"):
        create_encoder(f"pase+@{tmp_path / 'unsafe.ckpt'}", **SMALL)


def test_avbench_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(2)
    model = PASEPlus(**SMALL)
    randomize(model, seed=5)
    torch.save({"format": "avbench-pretrain/1", "encoder": model.state_dict(), "encoder_name": "pase+",
                "encoder_kwargs": dict(SMALL), "step": 3}, tmp_path / "encoder.pt")
    enc = create_encoder(f"pase+@{tmp_path / 'encoder.pt'}").eval()  # rebuilt from encoder_kwargs
    model.eval()
    wav = speechlike(8_000, 4)[None]
    with torch.no_grad():
        assert max_diff(enc(wav, torch.tensor([8_000]))[0], model(wav, torch.tensor([8_000]))[0]) == 0.0


def test_reference_configs_are_validated(tmp_path):
    assert ARCH_DEFAULTS["rnn_dim"] == 512 and ARCH_DEFAULTS["denseskips"] and PASE_PLUS_CONFIG["rnn_type"] == "qrnn"
    for bad, match in (({"name": "asppRes"}, "not the WaveFe"), ({"norm_type": "inorm"}, "norm_type"),
                       ({"densemerge": "concat"}, "densemerge"), ({"rnn_type": "sru"}, "rnn_type"),
                       ({"bogus": 1}, "unknown keys")):
        with pytest.raises(ConfigError, match=match):
            PASEPlus(config_path=_write(tmp_path / "bad.cfg", {**SMALL_CFG, **bad}))
    # cfg/frontend/PASE+_gru.cfg (the published GRU variant) builds its bidirectional GRU of 256 units.
    gru_cfg = {**PASE_PLUS_CONFIG, "rnn_type": "GRU"}
    gru = PASEPlus(config_path=_write(tmp_path / "PASE+_gru.cfg", gru_cfg))
    assert count_parameters(gru) == 7_832_896 - 1_574_400 + 2 * 3 * (256 * 512 + 256 * 256 + 2 * 256)
    # A config with only some keys takes WaveFe's defaults for the rest (no RNN, no dense skips).
    enc = PASEPlus(config_path=_write(tmp_path / "plain.cfg", {"fmaps": SMALL["fmaps"], "emb_dim": 8}))
    assert not hasattr(enc, "rnn") and not hasattr(enc, "denseskips") and enc.arch["kwidths"][1] == 10


# ----------------------------------------------------------------------------- contamination
def _contamination(tmp_path=None, **kw):
    noise = []
    if tmp_path is not None:
        rng = np.random.default_rng(0)
        sf.write(tmp_path / "noise.wav", (0.05 * rng.standard_normal(3 * SR)).astype(np.float32), SR)
        noise = [tmp_path / "noise.wav"]
    return PW.Contamination(torch.Generator().manual_seed(0), noise, PW.DEFAULT_PROBS, **kw)


@pytest.mark.parametrize("op", PW.CONTAMINATIONS)
def test_each_contamination_changes_the_input_only_where_valid(op, tmp_path):
    cont = _contamination(tmp_path)
    lengths = torch.tensor([16_000, 12_000, 9_000])
    wav = torch.stack([speechlike(16_000, s) for s in range(3)]) * PW.AF.length_mask(lengths, 16_000)
    which = torch.tensor([True, True, False])
    out = getattr(cont, op)(wav.clone(), lengths, which)
    assert out.shape == wav.shape and torch.isfinite(out).all()
    assert out[2].equal(wav[2])  # not selected: untouched
    for b in range(2):
        n = int(lengths[b])
        assert (out[b, :n] - wav[b, :n]).abs().max() > 1e-3, f"{op} left clip {b} unchanged"
        assert out[b, n:].abs().max().item() == 0.0 if n < 16_000 else True
    again = getattr(_contamination(tmp_path), op)(wav.clone(), lengths, which)
    assert again.equal(out)  # seeded by the generator alone


def test_noise_without_sources_is_skipped_with_one_warning(caplog):
    cont = _contamination(None)
    wav = torch.stack([speechlike(8_000, 1), speechlike(8_000, 2)])
    with caplog.at_level(logging.WARNING, logger="avbench.pase"):
        for _ in range(2):
            assert cont.noise(wav, torch.tensor([8_000, 8_000]), torch.tensor([True, True])).equal(wav)
    assert sum("noise_sources" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------------- targets and pretext
def test_pitch_tracker_finds_f0_and_silence():
    n = SR
    wav = torch.stack([speechlike(n, 0, f0=150.0), torch.zeros(n)])
    f0, voiced = PW.pitch(wav, torch.tensor([n, n]), n // 160)
    t = torch.arange(n // 160) * 160 / SR
    truth = 150 * (1 + 0.2 * torch.sin(2 * math.pi * 1.5 * t))
    inner = voiced[0, 3:-3]
    assert inner.float().mean() > 0.9 and not voiced[1].any()
    rel = ((f0[0, 3:-3] - truth[3:-3]).abs() / truth[3:-3])[inner]
    assert rel.median() < 0.02
    proso = PW.prosody(wav, torch.tensor([n, n]), n // 160)
    assert torch.allclose(proso[1, 0], torch.full((n // 160,), math.log(60.0)))  # no voiced frame: log f0_min


def test_targets_dims_normalisation_and_validity():
    lengths = torch.tensor([16_000, 10_000])
    wav = torch.stack([speechlike(16_000, 0), speechlike(16_000, 1)]) * PW.AF.length_mask(lengths, 16_000)
    targets, frames = PW.compute_targets(wav, lengths, PW.REGRESSION_WORKERS)
    dims = PW.target_dims()
    assert frames.tolist() == [100, 62]
    assert dims == {"lps": 3075, "lps_long": 3075, "fbank": 120, "fbank_long": 120, "gtn": 120, "gtn_long": 120,
                    "mfcc": 39, "mfcc_long": 60, "prosody": 12}
    mask = PW.AF.length_mask(frames, 100).unsqueeze(1).float()
    for name, x in targets.items():
        assert x.shape == (2, dims[name], 100) and torch.isfinite(x).all(), name
        assert x[1, :, 62:].abs().max() == 0
        mean = (x * mask).sum((0, 2)) / mask.sum()
        assert mean.abs().max() < 1e-3, name


def _tiny_setup(seed=0, **kw):
    torch.manual_seed(seed)
    enc = PASEPlus(**SMALL)
    ctx = PretextContext(generator=torch.Generator().manual_seed(seed))
    return pretext_factory("pase+")(enc, ctx, **{**TINY_PRETEXT, **kw})


def test_targets_come_from_the_clean_signal():
    pretext = _tiny_setup(p_reverb=1.0, p_bandrop=1.0, p_chop=1.0, p_clip=1.0, p_noise=0.0, p_overlap=1.0,
                          p_lowpass=1.0)
    seen = {}
    compute, encode = pretext.compute_targets, pretext.encoder.forward
    pretext.compute_targets = lambda w, n: (seen.setdefault("targets", w.clone()), compute(w, n))[1]
    pretext.encoder.forward = lambda w, n: (seen.setdefault("encoder", w.clone()), encode(w, n))[1]
    lengths = torch.tensor([8_000, 6_000])
    wav = torch.stack([speechlike(8_000, 3), speechlike(8_000, 4)])
    wav[1, 6_000:] = 1.0  # padding
    out = pretext(wav, lengths)
    clean = wav * PW.AF.length_mask(lengths, 8_000)
    assert seen["targets"].equal(clean)
    assert (seen["encoder"] - clean).abs().max() > 1e-2  # the encoder saw the contaminated input
    assert set(out) == {"loss", *(f"loss_{w}" for w in PW.DEFAULT_WORKERS)} and torch.isfinite(out["loss"])


def test_pretext_loss_is_finite_and_decreases():
    pretext = _tiny_setup(seed=1, **NO_CONTAMINATION)
    assert pretext.default_lr == 5e-4 and pretext.config()["workers"] == list(PW.DEFAULT_WORKERS)
    wav = torch.stack([speechlike(3_200, s, f0=110.0 + 40 * s) for s in range(3)])
    lengths = torch.tensor([3_200, 3_200, 2_600])
    # The batch is fixed, so its targets are too: compute them once (test_targets_* cover them).
    cache, compute = {}, pretext.compute_targets
    pretext.compute_targets = lambda w, n: cache["t"] if "t" in cache else cache.setdefault("t", compute(w, n))
    opt = torch.optim.Adam(pretext.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = pretext(wav, lengths)
        assert all(torch.isfinite(v) for v in out.values())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append(out["loss"].item())
    print("pase+ tiny pretext loss:", [round(h, 3) for h in history[::5]], round(history[-1], 3))
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3])


def test_pretext_settings_are_checked():
    enc = PASEPlus(**SMALL)
    ctx = PretextContext()
    for kw, match in (({"bogus": 1}, "unknown settings"), ({"workers": ("lps", "nope")}, "unknown workers"),
                      ({"p_noise": 1.5}, r"\[0, 1\]"), ({"decoder_strides": (4, 4, 4)}, "160")):
        with pytest.raises(ConfigError, match=match):
            pretext_factory("pase+")(enc, ctx, **kw)
    one = pretext_factory("pase+")(enc, ctx, workers=("prosody", "mi"), **NO_CONTAMINATION)
    out = one(speechlike(8_000, 0)[None], torch.tensor([8_000]))  # a single clip: info-max skipped
    assert out["loss_mi"].item() == 0.0 and torch.isfinite(out["loss_prosody"])
