"""The proposed encoder's registered variants: av-audio, av-visual, av-joint."""

from __future__ import annotations

import json

import pytest
import torch

from bench.errors import ConfigError
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.registry import count_parameters, create_encoder, list_encoders

SMALL_RESNET = {"stage_channels": [8, 8, 16, 16]}
SMALL_VISUAL = {"channels": [8, 16, 16], "id_dim": 16, "audio_dim": 16, "noise_dim": 4, "size": 32,
                "snapshot_clips": 2, "mean_frame_clips": 4}


@pytest.mark.parametrize("name", ["av-audio", "av-visual", "av-joint"])
def test_the_variants_are_the_paper_resnet18_at_25_hz(name):
    assert name in list_encoders()
    enc = create_encoder(name).eval()
    # PROTOCOL.md: about 3.85 M parameters (within 2%), 512-d, one frame per 40 ms.
    assert abs(count_parameters(enc) - 3.85e6) / 3.85e6 < 0.02
    assert enc.needs_pretraining and (enc.dim, enc.frame_rate) == (512, 25.0)
    with torch.no_grad():
        for samples, frames in ((16_000, 25), (18_560, 29)):  # 1 s, and LRW's 1.16 s (29 video frames)
            feats, n = enc(torch.randn(1, samples), torch.tensor([samples]))
            assert feats.shape == (1, frames, 512) and n.item() == frames


def test_joint_pretraining_runs_both_objectives_and_the_checkpoint_is_an_audio_only_encoder(tiny_corpus, tmp_path):
    config = PretrainConfig(encoder="av-joint", data=str(tiny_corpus.path), steps=3, batch_size=4, save_every=3,
                            log_every=1, encoder_kwargs=SMALL_RESNET,
                            pretext_kwargs={"audio_weight": 0.5, "visual": SMALL_VISUAL, "audio": {"hidden": 16}})
    summary = pretrain(config, tmp_path / "joint", progress=False)
    rows = (tmp_path / "joint" / "loss.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"loss", "loss_audio_mfcc", "loss_audio_logmel", "loss_audio_prosody", "loss_visual_l1"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["loss"]) == pytest.approx(
        0.5 * (float(last["loss_audio_mfcc"]) + float(last["loss_audio_logmel"]) + float(last["loss_audio_prosody"]))
        + float(last["loss_visual_l1"]), rel=1e-4)
    snap = summary["snapshots"][-1]
    assert snap["step"] == 3 and {"l1_generated", "l1_identity", "l1_mean_frame"} <= set(snap)
    assert (tmp_path / "joint" / "frames-step000003.png").is_file()
    assert json.loads((tmp_path / "joint" / "pretrain.json").read_text())["pretext"]["audio_weight"] == 0.5
    enc = create_encoder(f"av-joint@{tmp_path / 'joint' / 'encoder.pt'}", **SMALL_RESNET).eval()
    feats, n = enc(torch.randn(2, 16_000), torch.tensor([16_000, 9_000]))
    assert feats.shape == (2, 25, 16) and n.tolist() == [25, 14]


def test_joint_weights_are_checked(tiny_corpus, tmp_path):
    config = PretrainConfig(encoder="av-joint", data=str(tiny_corpus.path), steps=1, batch_size=2,
                            encoder_kwargs=SMALL_RESNET, pretext_kwargs={"audio_weight": 0, "visual_weight": 0})
    with pytest.raises(ConfigError, match="not both 0"):
        pretrain(config, tmp_path / "bad", progress=False)


def test_the_joint_objective_hides_the_nested_discriminators_from_the_loop_and_ddp(tiny_corpus):
    from bench.pretrain.objective import PretextContext, hidden_parameter_names, pretext_factory

    enc = create_encoder("av-joint", **SMALL_RESNET)
    joint = pretext_factory("av-joint")(enc, PretextContext(manifest=tiny_corpus.manifest),
                                        visual={**SMALL_VISUAL, "adversarial": True}, audio={"hidden": 16})
    discriminators = {id(p) for p in joint.visual.adversary.parameters()}
    assert discriminators and not discriminators & {id(p) for p in joint.parameters()}
    hidden = hidden_parameter_names(joint)
    assert hidden and all(name.startswith("visual.adversary.") for name in hidden)
    assert len(hidden) == len(discriminators)


@pytest.mark.parametrize("name,encoder_kwargs", [("av-audio", SMALL_RESNET), ("av-visual", SMALL_RESNET),
                                                 ("av-joint", SMALL_RESNET), ("logmel-l1", {"channels": [16, 32]})])
def test_each_pretrained_variant_fine_tunes_from_its_checkpoint(name, encoder_kwargs, tiny_corpus, tmp_path):
    from bench.evaluate.identity import RunConfig, file_hash
    from bench.evaluate.run import run_experiment
    from bench.records import read_records

    pretext = {} if name == "av-audio" else {"visual": SMALL_VISUAL} if name == "av-joint" else SMALL_VISUAL
    pretrain(PretrainConfig(encoder=name, data=str(tiny_corpus.path), steps=2, batch_size=2, save_every=2,
                            encoder_kwargs=encoder_kwargs, pretext_kwargs=pretext), tmp_path / "pre", progress=False)
    checkpoint = tmp_path / "pre" / "encoder.pt"
    spec = f"{name}@{checkpoint}"
    config = RunConfig.from_dict(dict(encoder=spec, task=str(tiny_corpus.path), mode="finetune", epochs=1, lr=1e-3,
                                      batch_size=8, hidden=8, layers=1, encoder_kwargs=encoder_kwargs))
    run_experiment(config, tmp_path / "runs.jsonl", progress=False)
    (record,) = read_records(tmp_path / "runs.jsonl")
    assert record["status"] == "ok" and record["mode"] == "finetune"
    assert record["checkpoint_hash"] == file_hash(checkpoint)
    # The spec the loop builds its encoder from carries the pretrained weights.
    loaded = create_encoder(spec, **encoder_kwargs).state_dict()
    saved = torch.load(checkpoint, weights_only=True)["encoder"]
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
