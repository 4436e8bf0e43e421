"""wav2vec 1.0: published sizes, conv arithmetic, padding invariance, checkpoint formats, pretext.

Checkpoints are written here in the published formats (fairseq's `wav2vec_large.pt`: argparse
`args` + `model` state dict, in torch's legacy serialization as that 2019 file; s3prl's converted
{"task_cfg", "model_cfg", "model_weight"}) with the real key names and shapes and random weights.
Most tests use a small-channel copy of the architectures to stay fast.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from baselines.wav2vec import Wav2Vec, Wav2VecPretext
from baselines.wav2vec_arch import BASE_ARCH, LARGE_ARCH, auto_offset, conv_output_lengths, parse_conv_layers
from bench.errors import ConfigError
from bench.pretrain.objective import PretextContext, pretext_factory
from bench.registry import count_parameters, create_encoder

SR = 16_000
# The published strides and kernels with few channels; 32 -> 48 exercises residual_proj.
SMALL = dict(conv_feature_layers="[(32, 10, 5), (32, 8, 4)] + [(32, 4, 2)] * 3 + [(32, 1, 1)]",
             conv_aggregator_layers="[(48, 2, 1), (48, 3, 1), (48, 4, 1)]")
LARGE_FEATURE_SPEC = ("[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), (512, 1, 1), "
                      "(512, 1, 1)]")
LARGE_AGGREGATOR_SPEC = "[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]"


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included (their init of 1/0 would hide a swapped key)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / max(1.0, p[0].numel()) ** 0.5)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def fairseq_args(**overrides) -> argparse.Namespace:
    """`args` as fairseq's README command for wav2vec_large leaves them (argparse names)."""
    args = dict(arch="wav2vec", task="audio_pretraining", criterion="wav2vec", optimizer="adam",
                lr=[1e-06], min_lr=1e-09, max_lr=0.005, lr_scheduler="cosine", warmup_updates=500,
                warmup_init_lr=1e-07, max_update=400000, max_sample_size=150000, max_tokens=1500000,
                sample_rate=16000, fp16=True, num_workers=6, conv_feature_layers=LARGE_FEATURE_SPEC,
                conv_aggregator_layers=LARGE_AGGREGATOR_SPEC, skip_connections_agg=True, residual_scale=0.5,
                log_compression=True, num_negatives=10, prediction_steps=12, sample_distance=None,
                cross_sample_negatives=0, dropout=0.0, dropout_features=0.0, dropout_agg=0.0, encoder="cnn",
                aggregator="cnn", skip_connections_feat=False, gru_dim=512, no_conv_bias=False,
                agg_zero_pad=False, balanced_classes=False, project_features="none",
                non_affine_group_norm=False, offset="auto")
    args.update(overrides)
    return argparse.Namespace(**args)


def save_fairseq(path, args: argparse.Namespace, model_state: dict) -> None:
    torch.save({"args": args, "model": model_state,
                "optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
                "extra_state": {"train_iterator": {"epoch": 90, "iterations_in_epoch": 0}, "val_loss": 1.5},
                "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-9, "params": [0]}]}},
               path, _use_new_zipfile_serialization=False)


def full_model_state(pretext: Wav2VecPretext) -> dict:
    """fairseq's Wav2VecModel state dict: the encoder's keys plus wav2vec_predictions.*."""
    state = {k: v.clone() for k, v in pretext.encoder.state_dict().items()}
    state.update({f"wav2vec_predictions.{k}": v.clone() for k, v in pretext.wav2vec_predictions.state_dict().items()})
    return state


@pytest.fixture(scope="module")
def large_pretext() -> Wav2VecPretext:
    torch.manual_seed(0)
    encoder = create_encoder("wav2vec_large")
    pretext = pretext_factory("wav2vec_large")(encoder, PretextContext())
    randomise(pretext)
    return pretext.eval()


def small(name: str = "wav2vec_large", **kw) -> Wav2Vec:
    torch.manual_seed(1)
    encoder = create_encoder(name, **{**SMALL, **kw})
    randomise(encoder, seed=1)
    return encoder.eval()


# ---------------------------------------------------------------------------------------------


def test_published_sizes_and_keys(large_pretext):
    base = create_encoder("wav2vec")
    base_pretext = pretext_factory("wav2vec")(base, PretextContext())
    large = large_pretext.encoder
    head = 512 * 512 * 12 + 512  # ConvTranspose2d(512, 512, (1, 12)) weight + bias
    # Measured: base 12,344,832 (+3,146,240 head); large 29,390,848 (+3,146,240 = 32,537,088).
    assert count_parameters(base) == 12_344_832
    assert count_parameters(base_pretext) == 12_344_832 + head
    assert count_parameters(large) == 29_390_848
    assert count_parameters(large_pretext) == 32_537_088
    assert (base.name, base.dim, base.frame_rate, base.needs_pretraining) == ("wav2vec", 512, 100.0, True)
    assert (large.name, large.dim, large.frame_rate) == ("wav2vec_large", 512, 100.0)
    shapes = {k: tuple(v.shape) for k, v in large_pretext.state_dict().items()}
    assert shapes["encoder.feature_extractor.conv_layers.0.0.weight"] == (512, 1, 10)
    assert shapes["encoder.feature_extractor.conv_layers.6.0.weight"] == (512, 512, 1)
    assert shapes["encoder.feature_extractor.conv_layers.6.2.bias"] == (512,)
    assert shapes["encoder.feature_aggregator.conv_layers.11.1.weight"] == (512, 512, 13)
    assert shapes["encoder.feature_aggregator.conv_layers.11.3.weight"] == (512,)
    assert shapes["wav2vec_predictions.project_to_steps.weight"] == (512, 512, 1, 12)
    assert not any("residual_proj" in k or "conv_layers.0.0.bias" in k for k in shapes)
    assert large_pretext.offset == auto_offset(LARGE_ARCH["conv_feature_layers"]) == 3
    assert large.receptive_field == base.receptive_field == 465 and large.hop == 160


def test_frame_arithmetic(large_pretext):
    lengths = torch.tensor([0, 10, 464, 465, 624, 625, 1000, 8000, 16000, 16001, 48000])
    expected = torch.where(lengths >= 465, torch.div(lengths - 465, 160, rounding_mode="floor") + 1, 0)
    for arch in (BASE_ARCH, LARGE_ARCH):
        assert torch.equal(conv_output_lengths(lengths, arch["conv_feature_layers"]), expected)
    assert int(expected[lengths == 16000]) == 98  # one second -> 98 frames
    encoder = small()
    for n in (464, 465, 625, 1000, 16000):
        feats, frames = encoder(torch.randn(1, n), torch.tensor([n]))
        assert feats.shape == (1, int(encoder.output_lengths(torch.tensor(n))), 48)
        assert feats.shape[1] == int(frames[0])
    with torch.no_grad():
        feats, frames = large_pretext.encoder(torch.randn(1, SR), torch.tensor([SR]))
    assert feats.shape == (1, 98, 512) and frames.tolist() == [98] and torch.isfinite(feats).all()


@pytest.mark.parametrize("name,kw", [("wav2vec_large", {}),  # skips, residual_proj, log compression
                                      ("wav2vec", {}),        # no skips, replication padding
                                      ("wav2vec_large", {"agg_zero_pad": True, "non_affine_group_norm": True})])
def test_padding_does_not_leak(name, kw):
    encoder = small(name, **kw)
    torch.manual_seed(2)
    lengths = torch.tensor([12000, 7000, 900, 300])  # 300 < the 465-sample receptive field: no frame
    wav = torch.randn(4, 12000)  # noise, not zeros, beyond each length: it must not matter
    with torch.no_grad():
        feats, frames = encoder(wav, lengths)
        assert frames.tolist() == encoder.output_lengths(lengths).tolist() == [73, 41, 3, 0]
        for b, n in enumerate(lengths.tolist()):
            alone, alone_frames = encoder(wav[b:b + 1, :n], torch.tensor([n]))
            assert int(alone_frames) == int(frames[b])
            assert max_diff(feats[b, : frames[b]], alone[0]) < 1e-5
            assert (feats[b, frames[b]:] == 0).all()


def test_fairseq_checkpoint_loads_and_reproduces(large_pretext, tmp_path):
    path = tmp_path / "wav2vec_large.pt"
    save_fairseq(path, fairseq_args(), full_model_state(large_pretext))
    wav = torch.randn(2, 4000)
    lengths = torch.tensor([4000, 2500])
    loaded = create_encoder(f"wav2vec_large@{path}").eval()
    with torch.no_grad():
        expected = large_pretext.encoder(wav, lengths)
        got = loaded(wav, lengths)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The pretext loads the prediction head too.
    pretext = pretext_factory("wav2vec_large")(create_encoder("wav2vec_large"), PretextContext())
    pretext.load_published(path)
    for k, v in large_pretext.wav2vec_predictions.state_dict().items():
        assert torch.equal(pretext.wav2vec_predictions.state_dict()[k], v)
    # The base encoder refuses it and names the right one.
    with pytest.raises(ConfigError, match=r"use encoder 'wav2vec_large'") as err:
        create_encoder("wav2vec", checkpoint=path)
    assert "conv_feature_layers" in str(err.value) and "log_compression" in str(err.value)


def test_fairseq_args_missing_fields_take_base_defaults(tmp_path):
    """A 2019 Namespace lacks later fields; fairseq's base_wav2vec_architecture fills them."""
    encoder = small("wav2vec")
    pretext = Wav2VecPretext(encoder, PretextContext())
    layers = {"conv_feature_layers": SMALL["conv_feature_layers"],
              "conv_aggregator_layers": SMALL["conv_aggregator_layers"]}
    path = tmp_path / "old.pt"
    save_fairseq(path, argparse.Namespace(arch="wav2vec", **layers), full_model_state(pretext))
    loaded = create_encoder("wav2vec", checkpoint=path, **SMALL)
    wav = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(loaded(wav, torch.tensor([4000]))[0], encoder(wav, torch.tensor([4000]))[0])
    # Refusals: a wav2vec 2.0 arch, an unsupported option.
    save_fairseq(path, argparse.Namespace(arch="wav2vec2"), full_model_state(pretext))
    with pytest.raises(ConfigError, match="not wav2vec 1.0"):
        create_encoder("wav2vec", checkpoint=path, **SMALL)
    save_fairseq(path, argparse.Namespace(arch="wav2vec", vq_type="gumbel", **layers), full_model_state(pretext))
    with pytest.raises(ConfigError, match="vq-wav2vec"):
        create_encoder("wav2vec", checkpoint=path, **SMALL)


def test_s3prl_converted_checkpoint_loads(tmp_path):
    encoder = small()
    pretext = Wav2VecPretext(encoder, PretextContext())
    randomise(pretext, seed=3)
    # s3prl's upstream/wav2vec/convert.py: OmegaConf.to_container(cfg["task"]), (cfg["model"]), state["model"].
    model_cfg = {"_name": "wav2vec", "prediction_steps": 12, "sample_distance": None, "cross_sample_negatives": 0,
                 "num_negatives": 10, **SMALL, "dropout": 0.0, "dropout_features": 0.0,
                 "dropout_agg": 0.0, "aggregator": "cnn", "gru_dim": 512, "no_conv_bias": False,
                 "agg_zero_pad": False, "skip_connections_feat": False, "skip_connections_agg": True,
                 "residual_scale": 0.5, "log_compression": True, "balanced_classes": False,
                 "project_features": "none", "non_affine_group_norm": False, "offset": "auto",
                 "activation": "relu", "vq_type": "none", "vq_vars": 320, "vq_groups": 2, "vq_dim": 0,
                 "vq_depth": 1, "combine_groups": False, "vq_temp": [2.0, 0.5, 0.999995], "vq_gamma": 0.25,
                 "infonce": False}
    task_cfg = {"_name": "audio_pretraining", "data": "/manifest/path", "sample_rate": 16000, "normalize": False,
                "enable_padding": False, "max_sample_size": 150000, "min_sample_size": None}
    path = tmp_path / "wav2vec_large_converted.pt"
    torch.save({"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": full_model_state(pretext)}, path)
    loaded = create_encoder(f"wav2vec_large@{path}", **SMALL)
    wav = torch.randn(2, 6000)
    with torch.no_grad():
        assert torch.equal(loaded(wav, torch.tensor([6000, 6000]))[0], encoder(wav, torch.tensor([6000, 6000]))[0])
    other = Wav2VecPretext(small(), PretextContext())
    other.load_published(path)
    assert torch.equal(other.wav2vec_predictions.project_to_steps.weight,
                       pretext.wav2vec_predictions.project_to_steps.weight)


def test_wrong_weights_fail_listing_keys(tmp_path):
    base = small("wav2vec", conv_feature_layers="[(32, 10, 5), (32, 8, 4)] + [(32, 4, 2)] * 3")
    large = small("wav2vec_large")
    # avbench format (the pretraining loop's) with another architecture's weights.
    path = tmp_path / "avbench.pt"
    torch.save({"format": "avbench-pretrain/1", "encoder": base.state_dict()}, path)
    with pytest.raises(ConfigError) as err:
        create_encoder("wav2vec_large", checkpoint=path, **SMALL)
    msg = str(err.value)
    assert "feature_extractor.conv_layers.5.0.weight" in msg and "residual_proj.0.weight" in msg
    # ... and the right one loads.
    torch.save({"format": "avbench-pretrain/1", "encoder": large.state_dict()}, path)
    create_encoder("wav2vec_large", checkpoint=path, **SMALL)
    # fairseq format whose args match but whose state dict does not: every key listed.
    state = full_model_state(Wav2VecPretext(large, PretextContext()))
    state.pop("feature_aggregator.conv_layers.2.1.bias")
    state["feature_aggregator.conv_layers.3.1.weight"] = torch.zeros(48, 48, 5)
    state["feature_extractor.conv_layers.0.0.weight"] = torch.zeros(32, 1, 11)
    path = tmp_path / "broken.pt"
    save_fairseq(path, fairseq_args(**SMALL), state)
    with pytest.raises(ConfigError) as err:
        create_encoder("wav2vec_large", checkpoint=path, **SMALL)
    msg = str(err.value)
    assert "Missing keys: feature_aggregator.conv_layers.2.1.bias" in msg
    # Only that key: the head (wav2vec_predictions.*) is dropped, not reported as unexpected.
    assert "Unexpected keys: feature_aggregator.conv_layers.3.1.weight. Shape" in msg
    assert "feature_extractor.conv_layers.0.0.weight: checkpoint (32, 1, 11) vs model (32, 1, 10)" in msg


class Evil:
    """A class a checkpoint must not be able to instantiate."""

    def __reduce__(self):
        # os.getpid, not print: Ray (imported by another test) replaces builtins.print.
        return (os.getpid, ())


def test_disallowed_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"args": Evil(), "model": {}}, path)
    refused = r"refused to load a wav2vec checkpoint: it pickles an object of type \S*getpid\..*weights_only=True"
    with pytest.raises(ConfigError, match=refused):
        create_encoder("wav2vec", checkpoint=path)


def test_layer_spec_parser():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3") == BASE_ARCH["conv_feature_layers"]
    assert parse_conv_layers("[(512, 3, 1)] * 9") == BASE_ARCH["conv_aggregator_layers"]
    assert parse_conv_layers(LARGE_AGGREGATOR_SPEC) == LARGE_ARCH["conv_aggregator_layers"]
    for bad in ("__import__('os').system('true')", "[(512, 3)]", "[(512, 0, 1)]", "[]"):
        with pytest.raises(ConfigError):
            parse_conv_layers(bad)
    with pytest.raises(ConfigError, match="stride 1"):
        create_encoder("wav2vec", conv_aggregator_layers="[(512, 3, 2)]")


def test_config_and_registry():
    encoder = create_encoder("wav2vec_large", **SMALL)
    config = encoder.config()
    json.dumps(config)
    assert config["version"] >= 1 and config["conv_aggregator_layers"] == [[48, 2, 1], [48, 3, 1], [48, 4, 1]]
    assert config != create_encoder("wav2vec", **SMALL).config()
    with pytest.raises(ConfigError):
        create_encoder("wav2vec", hidden=3)
    with pytest.raises(ConfigError, match="wav2vec encoder"):
        pretext_factory("wav2vec")(create_encoder("mfcc39"), PretextContext())


def test_negatives_come_from_valid_frames():
    pretext = Wav2VecPretext(small(), PretextContext(generator=torch.Generator().manual_seed(0)), num_negatives=10)
    frames = torch.tensor([50, 5, 2, 0])
    idx = pretext.sample_negatives(frames, 50)
    assert idx.shape == (4, 50, 10)
    for b, n in enumerate(frames.tolist()):
        if n >= 2:
            own = idx[b, :n]
            assert (own < n).all() and (own >= 0).all()
            assert (own != torch.arange(n).reshape(-1, 1)).all()  # never the target itself
    assert set(idx[0, :50].flatten().tolist()) == set(range(50))  # uniform over the whole utterance


def test_pretext_loss_decreases():
    torch.manual_seed(0)
    encoder = create_encoder("wav2vec_large", conv_feature_layers="[(16, 10, 5), (16, 8, 4)] + [(16, 4, 2)] * 3",
                             conv_aggregator_layers="[(16, 2, 1), (16, 3, 1)]")
    pretext = pretext_factory("wav2vec_large")(encoder, PretextContext(generator=torch.Generator().manual_seed(0)),
                                               prediction_steps=4)
    t = torch.arange(3000) / SR
    wav = torch.stack([torch.sin(2 * torch.pi * f * t) * (1 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
                       for f in (220.0, 330.0, 440.0)]) + 0.05 * torch.randn(3, 3000)
    lengths = torch.tensor([3000, 2600, 300])  # the last has no frame: it must not break anything
    optimiser = torch.optim.Adam(pretext.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = pretext(wav, lengths)
        assert set(out) == {"loss", "acc"} and torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    # A batch with nothing to predict gives a zero loss that still backpropagates.
    out = pretext(wav[:, :300], torch.tensor([300, 300, 300]))
    out["loss"].backward()
    assert out["loss"].item() == 0.0


def test_loss_matches_the_definition():
    """The vectorised loss equals fairseq's definition written out: for each valid (b, t, step),
    BCE(<pred_step(c_t), z_{t+offset+step}>, 1) + sum over the K negatives of BCE(<., z_neg>, 0),
    summed and divided by the number of positives."""
    encoder = small(conv_aggregator_layers="[(32, 2, 1)]")
    pretext = Wav2VecPretext(encoder, PretextContext(generator=torch.Generator().manual_seed(0)),
                             prediction_steps=3, num_negatives=2)
    randomise(pretext, seed=4)
    wav, lengths = torch.randn(2, 3000), torch.tensor([3000, 2200])
    with torch.no_grad():
        z, c, frames = encoder.encode(wav, lengths)
        negatives = pretext.sample_negatives(frames, z.shape[-1])
        pretext.sample_negatives = lambda frames, n: negatives
        got = pretext(wav, lengths)
        x = pretext.wav2vec_predictions(c)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    total, count, correct = 0.0, 0, 0
    for b in range(2):
        for step in range(3):
            for t in range(int(frames[b]) - pretext.offset - step):
                target = t + pretext.offset + step
                pred = x[b, :, t, step]
                pos = pred @ z[b, :, target]
                negs = torch.stack([pred @ z[b, :, int(j)] for j in negatives[b, target]])
                total += bce(pos, torch.tensor(1.0), reduction="sum") + bce(negs, torch.zeros(2), reduction="sum")
                count += 1
                correct += int(pos > negs.max())
    assert frames.tolist() == [16, 11] and count == (13 + 12 + 11) + (8 + 7 + 6)
    assert abs(got["loss"].item() - total.item() / count) < 1e-4 * abs(total.item() / count)
    assert abs(got["acc"].item() - correct / count) < 1e-6
