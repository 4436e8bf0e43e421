"""The audio-only pretext of `av-audio`: attribute targets on the 25 Hz grid, their cache, the heads' loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from bench.data.audio import load_audio
from bench.data.manifest import read_manifest, write_manifest
from bench.errors import ConfigError
from bench.paths import data_dir
from bench.pretrain.objective import CropInfo, PretextContext
from encoders.attribute_pretext import AttributePretext, attribute_pretext
from encoders.attribute_target_cache import corpus_statistics, target_cache_key
from encoders.attributes import HOP, PROSODY, AttributeTargets, subframe_centres
from encoders.resnet1d import ResNet18Audio, ResNet1dEncoder

SMALL = (8, 8, 16, 16)  # narrow channels: the architecture is the paper's, the test takes seconds


def _voiced_wav(seconds: float, f0: float = 150.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16_000)) / 16_000
    wav = 0.3 * torch.sin(2 * torch.pi * f0 * t) * (t < seconds / 2) + 0.003 * torch.randn(len(t), generator=g)
    return wav.float()


def _crops(manifest, picks):
    """[(row, start, length)] -> a padded batch, lengths and CropInfo, as the pretraining loop makes them."""
    T = max(n for _, _, n in picks)
    wav, lengths = torch.zeros(len(picks), T), torch.zeros(len(picks), dtype=torch.long)
    for i, (row, start, n) in enumerate(picks):
        audio = load_audio(manifest.resolve(manifest.table["audio_path"].iloc[row]))[start:start + n]
        wav[i, :len(audio)] = torch.from_numpy(audio)
        lengths[i] = len(audio)
    info = CropInfo(rows=[r for r, _, _ in picks], clip_ids=[manifest.table["clip_id"].iloc[r] for r, _, _ in picks],
                    starts=torch.tensor([s for _, s, _ in picks]))
    return wav, lengths, info


def _train_rows(manifest):
    return np.flatnonzero((manifest.table["split"] == "train").to_numpy()).tolist()


def test_targets_lie_on_the_encoders_40ms_grid():
    targets = AttributeTargets()
    assert targets.dim == 13 + 80 + 4 and targets.frame_rate == 25.0
    encoder = ResNet1dEncoder(stage_channels=SMALL).eval()
    lengths = torch.tensor([611, 612, 639, 640, 1_000, 1_251, 1_252, 9_000, 12_600, 12_800, 16_000])
    wav = torch.randn(len(lengths), int(lengths.max())) * 0.1
    with torch.no_grad():
        out, frames = targets(wav, lengths)
        _, enc_frames = encoder(wav, lengths)
    assert frames.tolist() == enc_frames.tolist() == ResNet18Audio.output_lengths(lengths).tolist()
    assert frames.tolist() == [0, 1, 1, 1, 1, 1, 2, 14, 19, 20, 25]  # a last block of >= 612 samples is a frame
    assert out.shape == (len(lengths), 25, 97)
    assert torch.count_nonzero(out[7, 14:]) == 0 and torch.count_nonzero(out[7, :14]) > 0
    # The four 10 ms frames of frame k are centred so that their hops tile [640k, 640(k+1)).
    centres = subframe_centres(torch.arange(5))
    assert centres[3].tolist() == [1_920 + 80, 1_920 + 240, 1_920 + 400, 1_920 + 560]
    assert ((centres - 80) // HOP == torch.arange(5).unsqueeze(1)).all()
    # A click in the middle of block k shows up in frame k's energy and nowhere else.
    energy = targets.slices["prosody"].start + PROSODY.index("log_energy")
    clicks = torch.zeros(3, 16_000)
    for i, k in enumerate((0, 7, 24)):
        clicks[i, HOP * k + HOP // 2] = 1.0
    out, _ = targets(clicks, torch.full((3,), 16_000))
    for i, k in enumerate((0, 7, 24)):
        loud = (out[i, :, energy] > -99.0).nonzero().flatten().tolist()
        assert loud == [k]


def test_targets_are_those_of_the_clip_alone_whatever_the_padding():
    targets = AttributeTargets()
    wav = torch.stack([_voiced_wav(1.0, 150.0, 0), _voiced_wav(1.0, 220.0, 1)])
    lengths = torch.tensor([15_999, 9_321])
    wav[0, 15_998], wav[0, 15_999] = -0.1, 3.0  # a clip ending below zero: no zero crossing into the padding
    wav[1, 9_321:] = 3.0  # garbage in the padding
    out, frames = targets(wav, lengths)
    for i in range(2):
        alone, n = targets(wav[i:i + 1, :lengths[i]], lengths[i:i + 1])
        assert n.item() == frames[i].item()
        torch.testing.assert_close(alone[0], out[i, :n.item()], atol=1e-4, rtol=1e-4)
    # A 150 Hz tone in the first half: voiced there with log F0 = log 150, unvoiced in the silent half.
    f0c, vc = targets.f0_column, targets.voicing_column
    assert (out[0, 1:11, vc] == 1).all() and (out[0, 14:frames[0], vc] == 0).all()
    torch.testing.assert_close(out[0, 1:11, f0c], torch.full((10,), float(np.log(150.0))), atol=0.01, rtol=0)


def test_cached_targets_of_a_crop_equal_the_crops_own_targets(tiny_corpus):
    manifest = tiny_corpus.manifest
    pretext = AttributePretext(ResNet1dEncoder(stage_channels=SMALL), PretextContext(manifest=manifest),
                               progress=False)
    assert pretext.crop_align == 640 and pretext.cache.path.parent == data_dir() / "cache" / "targets"
    row = _train_rows(manifest)[3]
    clip_len = len(load_audio(manifest.resolve(manifest.table["audio_path"].iloc[row])))
    # An interior crop, one from the clip's start, one to its end, and the whole clip.
    picks = [(row, 3 * HOP, 9_000), (row, 0, 9_000), (row, 10 * HOP, clip_len - 10 * HOP), (row, 0, clip_len)]
    wav, lengths, info = _crops(manifest, picks)
    cached, frames = pretext.raw_targets(wav, lengths, info)
    fresh, fresh_frames = pretext.raw_targets(wav, lengths, None)
    assert frames.tolist() == fresh_frames.tolist() == ResNet18Audio.output_lengths(lengths).tolist()
    # Float16 storage: ~3 significant digits. The first/last frame of a crop cut inside the clip
    # differ (the clip sees audio where the crop sees zeros); at the clip's own ends they agree.
    close = dict(atol=0.02, rtol=2e-3)
    edges = {0: (1, frames[0] - 1), 1: (0, frames[1] - 1), 2: (1, frames[2]), 3: (0, frames[3])}
    for i, (a, b) in edges.items():
        torch.testing.assert_close(cached[i, a:b], fresh[i, a:b], **close)
    assert not torch.allclose(cached[0, :1], fresh[0, :1], **close)  # the edge effect is real
    # ... and the targets really are that clip's frames at start // 640.
    whole = torch.from_numpy(pretext.cache.get(row).astype(np.float32))
    torch.testing.assert_close(cached[0, :frames[0]], whole[3:3 + frames[0]])
    # Standardised with the corpus statistics: same numbers either way.
    z_cached = pretext.standardise(cached, frames)
    z_fresh = pretext.standardise(fresh, frames)
    torch.testing.assert_close(z_cached[3], z_fresh[3], atol=0.05, rtol=0)


def test_the_cache_is_built_once_and_keyed_by_manifest_and_config(tiny_corpus, tmp_path, monkeypatch):
    manifest = tiny_corpus.manifest
    calls = []
    forward = AttributeTargets.forward
    monkeypatch.setattr(AttributeTargets, "forward", lambda self, w, n: calls.append(len(w)) or forward(self, w, n))
    encoder = ResNet1dEncoder(stage_channels=SMALL)
    first = AttributePretext(encoder, PretextContext(manifest=manifest), cache_root=tmp_path, progress=False)
    assert sum(calls) == len(manifest.table) and not first.cache.stats.hit
    built = sum(calls)
    second = AttributePretext(encoder, PretextContext(manifest=manifest), cache_root=tmp_path, progress=False)
    assert sum(calls) == built and second.cache.stats.hit  # no clip computed again
    assert second.cache.key == first.cache.key and second.stats == first.stats
    assert (tmp_path / first.cache.key / "index.npz").is_file()
    assert (tmp_path / f"{first.cache.key}.stats.json").is_file()
    assert not list(tmp_path.glob(".*partial*"))
    key = first.cache.key
    assert target_cache_key(AttributeTargets(), manifest, tmp_path) == key
    assert target_cache_key(AttributeTargets(f0_max=400.0), manifest, tmp_path) != key
    assert target_cache_key(AttributeTargets(n_mels=40), manifest, tmp_path) != key
    table = manifest.table.iloc[:-1].copy()
    table["audio_path"] = [str(manifest.resolve(p)) for p in table["audio_path"]]
    other = read_manifest(write_manifest(table, tmp_path / "fewer"))
    assert target_cache_key(AttributeTargets(), other, tmp_path) != key
    # Which heads are trained does not change the targets: the same cache serves every ablation.
    third = AttributePretext(encoder, PretextContext(manifest=manifest), attributes=("prosody",),
                             cache_root=tmp_path, progress=False)
    assert third.cache.key == key and sum(calls) == built


def test_statistics_come_from_the_train_split_only(tiny_corpus, tmp_path):
    manifest = tiny_corpus.manifest
    pretext = AttributePretext(ResNet1dEncoder(stage_channels=SMALL), PretextContext(manifest=manifest),
                               cache_root=tmp_path, progress=False)
    stats = pretext.stats
    rows = _train_rows(manifest)
    assert stats["split"] == "train" and stats["clips"] == len(rows) < len(manifest.table)
    x = np.concatenate([pretext.cache.get(r) for r in rows]).astype(np.float64)
    assert stats["frames"] == len(x)
    t = pretext.target_fn
    mean, std = x.mean(0), x.std(0)
    voiced = x[:, t.voicing_column] >= 0.5
    assert 0 < voiced.sum() < len(x)
    mean[t.f0_column], std[t.f0_column] = x[voiced, t.f0_column].mean(), x[voiced, t.f0_column].std()
    mean[t.voicing_column], std[t.voicing_column] = 0.0, 1.0  # the voicing flag is left as it is
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["std"], np.maximum(std, 1e-3), rtol=1e-5, atol=1e-6)
    # Replacing every valid/test clip by loud noise changes the cache, not the statistics.
    noise = tmp_path / "noise.wav"
    sf.write(noise, np.random.default_rng(0).normal(0, 0.5, 16_000).clip(-1, 1).astype(np.float32), 16_000)
    table = manifest.table.copy()
    table["audio_path"] = [str(manifest.resolve(p)) for p in table["audio_path"]]
    table.loc[table["split"] != "train", "audio_path"] = str(noise)
    noisy = read_manifest(write_manifest(table, tmp_path / "noisy"))
    pd.testing.assert_series_equal(noisy.table["clip_id"], manifest.table["clip_id"])
    other = AttributePretext(ResNet1dEncoder(stage_channels=SMALL), PretextContext(manifest=noisy),
                             cache_root=tmp_path, progress=False)
    assert other.cache.key != pretext.cache.key
    np.testing.assert_allclose(other.stats["mean"], stats["mean"], rtol=1e-9)
    np.testing.assert_allclose(other.stats["std"], stats["std"], rtol=1e-9)
    assert corpus_statistics(other.cache, noisy, t, "valid")["mean"] != stats["mean"]


def test_the_loss_falls_on_a_fixed_batch(tiny_corpus):
    torch.manual_seed(0)
    manifest = tiny_corpus.manifest
    pretext = attribute_pretext(ResNet1dEncoder(stage_channels=SMALL), PretextContext(manifest=manifest),
                                hidden=64, progress=False)
    rows = _train_rows(manifest)
    wav, lengths, info = _crops(manifest, [(rows[0], 0, 9_000), (rows[5], 640, 9_000), (rows[9], 3_200, 9_000),
                                           (rows[20], 5_120, 9_000)])
    optimizer = torch.optim.Adam(pretext.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = pretext(wav, lengths, info)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    assert set(history[0]) == {"loss", "loss_mfcc", "loss_logmel", "loss_prosody"}
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    for a in ("mfcc", "logmel", "prosody"):
        assert history[-1][f"loss_{a}"] < history[0][f"loss_{a}"]


def test_weights_scale_the_total_and_settings_are_checked():
    torch.manual_seed(0)
    wav = torch.stack([_voiced_wav(1.0, 150.0, 0), _voiced_wav(1.0, 200.0, 1)])
    lengths = torch.tensor([16_000, 12_000])
    encoder = ResNet1dEncoder(stage_channels=SMALL).eval()
    plain = AttributePretext(encoder, PretextContext(), hidden=32)  # no manifest: targets on the fly
    assert plain.stats is None and plain.cache is None
    weighted = AttributePretext(encoder, PretextContext(), weights={"mfcc": 2.0, "logmel": 0.5}, hidden=32)
    weighted.heads.load_state_dict(plain.heads.state_dict())
    with torch.no_grad():
        a, b = plain(wav, lengths), weighted(wav, lengths)
    for k in ("loss_mfcc", "loss_logmel", "loss_prosody"):
        torch.testing.assert_close(a[k], b[k])
    torch.testing.assert_close(a["loss"], a["loss_mfcc"] + a["loss_logmel"] + a["loss_prosody"])
    torch.testing.assert_close(b["loss"], 2.0 * a["loss_mfcc"] + 0.5 * a["loss_logmel"] + a["loss_prosody"])
    only = AttributePretext(encoder, PretextContext(), attributes=("prosody",), hidden=32)
    with torch.no_grad():
        assert set(only(wav, lengths)) == {"loss", "loss_prosody"}
    heads = AttributePretext(encoder, PretextContext()).heads  # published width: 512 -> 256 -> 13/80/4 with 512-d
    assert [m.net[2].out_features for m in heads.values()] == [13, 80, 4]
    with pytest.raises(ConfigError, match="attributes"):
        AttributePretext(encoder, PretextContext(), attributes=("mfcc", "pitch"))
    with pytest.raises(ConfigError, match="weights given"):
        AttributePretext(encoder, PretextContext(), attributes=("mfcc",), weights={"logmel": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        AttributePretext(encoder, PretextContext(), weights={"mfcc": -1.0})
    with pytest.raises(ConfigError, match="unknown settings"):
        attribute_pretext(encoder, PretextContext(), n_ahead=3)
    with pytest.raises(ConfigError, match="no manifest"):
        plain(wav, lengths, CropInfo(rows=[0, 1], clip_ids=["a", "b"], starts=torch.tensor([0, 640])))


def test_padding_does_not_change_the_loss(tiny_corpus):
    torch.manual_seed(0)
    manifest = tiny_corpus.manifest
    encoder = ResNet1dEncoder(stage_channels=SMALL).eval()
    rows = _train_rows(manifest)
    wav, lengths, info = _crops(manifest, [(rows[1], 0, 16_000), (rows[2], 1_280, 7_000)])
    padded = torch.cat([wav, torch.full((2, 3_000), 0.7)], dim=1)
    padded[1, 7_000:] = 0.7  # garbage beyond the short crop
    for pretext in (AttributePretext(encoder, PretextContext(), hidden=32),  # per-batch statistics
                    AttributePretext(encoder, PretextContext(manifest=manifest), hidden=32, progress=False)):
        given = info if pretext.cache is not None else None
        with torch.no_grad():
            a, b = pretext(wav, lengths, given), pretext(padded, lengths, given)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiples of 640"):
        pretext(wav, lengths, CropInfo(rows=info.rows, clip_ids=info.clip_ids, starts=torch.tensor([0, 100])))
