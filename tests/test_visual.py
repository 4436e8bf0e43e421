"""The visual pretext: mouth frames (embedded corpus and LRW-format video), their alignment with the
audio encoders' 25 Hz frames, the speech-driven generator and its losses, snapshots, and the
`logmel-l1` encoder (the earlier visual method)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn
from test_prepare_lrw import mux_audio

import encoders.logmel_l1  # noqa: F401  (registers logmel-l1 and its pretext)
from bench.data.manifest import read_manifest, write_manifest
from bench.data.mouth_frames import (SAMPLES_PER_FRAME, MouthFrameSource, evenly_spaced_rows, first_video_frames,
                                     video_frame_of_sample)
from bench.data.prepare.lrw import DEFAULT_MOUTH_CROP, prepare_lrw
from bench.errors import ConfigError
from bench.pretrain.loop import CropSampler, PretrainConfig, pretrain
from bench.pretrain.objective import CropInfo, PretextContext, pretext_factory
from bench.registry import count_parameters, create_encoder
from encoders.logmel_l1 import LogMelL1Encoder, logmel_l1_pretext
from encoders.mouth_adversary import Adversary
from encoders.mouth_generator import SpeechDrivenGenerator
from encoders.resnet1d import ResNet18Audio, ResNet1dEncoder
from encoders.visual import VisualPretext, generation_l1, masked_l1

TINY = dict(channels=(8, 16, 16), id_dim=16, audio_dim=16, noise_dim=4)
TINY_RESNET = (8, 8, 16, 16)


def _pretext(manifest, encoder=None, seed: int = 0, **kw) -> VisualPretext:
    torch.manual_seed(seed)
    encoder = encoder or ResNet1dEncoder(TINY_RESNET)
    context = PretextContext(manifest=manifest, generator=torch.Generator().manual_seed(seed))
    return VisualPretext(encoder, context, **{**TINY, **kw})


def _batch(manifest, batch_size: int = 4, step: int = 0):
    return CropSampler(manifest, ("train",), batch_size, 16_000, seed=0, align=SAMPLES_PER_FRAME).batch(step)


# --- alignment ----------------------------------------------------------------------------------

LENGTHS = [640, 1_000, 12_345, 15_340, 16_000, 16_300, 18_560, 640 * 7 + 611, 640 * 7 + 612, 640 * 3 + 620]


def test_encoder_frames_map_one_to_one_onto_video_frames():
    assert [video_frame_of_sample(s) for s in (0, 639, 640, 16_000)] == [0, 0, 1, 25]
    assert first_video_frames([0, 640, 2_560]).tolist() == [0, 1, 4]
    with pytest.raises(ConfigError, match="crop_align=640"):
        first_video_frames([0, 100])
    logmel = LogMelL1Encoder()
    for n in LENGTHS:
        for count in (int(ResNet18Audio.output_lengths(torch.tensor(n))), int(logmel.output_lengths(torch.tensor(n)))):
            # Every encoder frame k has its 40 ms piece [640k, 640k + 640) starting inside the crop,
            # and every whole piece has its frame: floor(n / 640) <= count <= ceil(n / 640).
            assert n // 640 <= count <= -(-n // 640), (n, count)
        assert int(logmel.output_lengths(torch.tensor(n))) == n // 640
    # The ResNet keeps a last partial piece from 612 samples on; 1 s and LRW's 1.16 s are whole pieces.
    assert int(ResNet18Audio.output_lengths(torch.tensor(640 * 7 + 611))) == 7
    assert int(ResNet18Audio.output_lengths(torch.tensor(640 * 7 + 612))) == 8
    assert [int(ResNet18Audio.output_lengths(torch.tensor(n))) for n in (16_000, 18_560)] == [25, 29]


@pytest.mark.parametrize("which", ["resnet", "logmel-l1"])
def test_encoder_frame_k_listens_to_its_own_40ms(which):
    """Changing the audio of video frame j changes encoder frame j the most (random weights: on
    average over j for the log-mel stack, whose receptive field reaches into both neighbours)."""
    torch.manual_seed(0)
    enc = (ResNet1dEncoder(TINY_RESNET) if which == "resnet" else LogMelL1Encoder(channels=(32, 32))).eval()
    wav = 0.1 * torch.randn(1, 16_000)
    profile = torch.zeros(5)  # change of frames j-2 .. j+2
    with torch.no_grad():
        base, _ = enc(wav, torch.tensor([16_000]))
        for j in range(2, 23, 2):
            moved = wav.clone()
            moved[0, 640 * j:640 * (j + 1)] += 0.5 * torch.randn(640)
            feats, _ = enc(moved, torch.tensor([16_000]))
            change = (feats - base)[0].norm(dim=-1)
            profile += change[j - 2:j + 3] / change.max()
            if which == "resnet":
                assert int(change.argmax()) == j, (j, change)
    assert int(profile.argmax()) == 2, profile


def test_crops_get_the_frames_of_their_span_and_the_clip_end_is_masked(tiny_corpus):
    pretext = _pretext(tiny_corpus.manifest)
    manifest = tiny_corpus.manifest
    row = int(np.flatnonzero((manifest.table["split"] == "train").to_numpy())[0])
    clip = tiny_corpus.frames(manifest.table["clip_id"].iloc[row]).astype(np.float32) / 255.0
    assert clip.shape[0] == 25  # 1 s clip, 25 fps
    # Crops whose sample counts are not multiples of 640 (a clip's tail): 15,340 = 23 pieces + 620.
    n = 15_340
    out_lengths = ResNet18Audio.output_lengths(torch.tensor([n, n, n, 16_000]))
    assert out_lengths.tolist() == [24, 24, 24, 25]
    info = CropInfo(rows=[row] * 4, clip_ids=["x"] * 4, starts=torch.tensor([0, 640, 1_280, 0]))
    real, stills, valid = pretext.targets(info, out_lengths, 25)
    assert valid.sum(1).tolist() == [24, 24, 23, 25]  # start 1280 + 24 frames would pass frame 24, the last
    for b, first in enumerate([0, 1, 2, 0]):
        k = int(valid[b].sum())
        assert np.array_equal(real[b, :k].numpy(), clip[first:first + k])
        assert torch.count_nonzero(real[b, k:]) == 0 or b == 0
    still = tiny_corpus.identity_frame(manifest.table["speaker"].iloc[row]) / np.float32(255.0)
    assert np.array_equal(stills[0].numpy(), still)
    with pytest.raises(ConfigError, match="video frame boundary"):
        pretext.targets(CropInfo(rows=[row], clip_ids=["x"], starts=torch.tensor([320])), out_lengths[:1], 25)


# --- frame sources ------------------------------------------------------------------------------

def test_mouth_frames_of_the_embedded_corpus(tiny_corpus):
    source = MouthFrameSource(tiny_corpus.manifest, size=64)
    assert source.kind == "embedded"
    table = tiny_corpus.manifest.table
    row = 5
    whole, n = source.frames(row, 0, 25)
    assert n == 25 and whole.dtype == np.float32 and whole.shape == (25, 64, 64)
    assert np.array_equal(whole, tiny_corpus.frames(table["clip_id"].iloc[row]) / np.float32(255.0))
    tail, n = source.frames(row, 20, 10)
    assert n == 5 and np.array_equal(tail[:5], whole[20:]) and not tail[5:].any()
    still = tiny_corpus.identity_frame(table["speaker"].iloc[row]) / np.float32(255.0)
    assert np.array_equal(source.identity(row), still)
    assert source.clip_frames(row) is source.clip_frames(row)  # cached
    small = MouthFrameSource(tiny_corpus.manifest, size=32)
    assert small.frames(row, 0, 3)[0].shape == (3, 32, 32)
    mean = source.mean_frame("train", 8)
    assert mean.shape == (64, 64) and 0.0 < mean.mean() < 1.0


CROP = DEFAULT_MOUTH_CROP  # (79, 115, 96, 96)


def _write_mp4(path: Path, seconds: float = 1.16, frames: int = 29) -> None:
    """An LRW-like clip: 256x256 mpeg4 video at 25 fps whose mouth box darkens to light frame by frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y, w, h = CROP
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 256, 256, "yuv420p"
        audio = container.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        for i in range(frames):
            img = np.full((256, 256, 3), 220, np.uint8)
            img[y:y + h, x:x + w] = 30 + 6 * i
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        n = int(round(seconds * 16_000))
        tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(n) / 16_000)).astype(np.float32)
        mux_audio(container, audio, tone)


def test_mouth_frames_of_an_lrw_manifest(tmp_path):
    root = tmp_path / "lipread_mp4"
    for folder, stem in (("train", "ABOUT_00001"), ("train", "ABOUT_00002"), ("val", "ABOUT_00001")):
        _write_mp4(root / "ABOUT" / folder / f"{stem}.mp4")
    (root / "ABOUT" / "test").mkdir()
    manifest = read_manifest(prepare_lrw(root, tmp_path / "prepared", progress=False))
    assert manifest.meta["mouth_crop"] == list(CROP)
    source = MouthFrameSource(manifest, size=64)
    assert source.kind == "video"
    row = int(np.flatnonzero((manifest.table["split"] == "train").to_numpy())[0])
    frames, n = source.frames(row, 0, 29)
    assert n == 29 and frames.shape == (29, 64, 64) and frames.dtype == np.float32
    # The mouth box alone (no bright surround leaks in), uniform, getting lighter frame by frame.
    means = frames.reshape(29, -1).mean(1)
    assert frames[0].max() < 0.3 and frames.std(axis=(1, 2)).max() < 0.03
    assert np.all(np.diff(means) > 0) and 0.4 < means[-1] - means[0] < 0.8
    tail, n = source.frames(row, 25, 10)
    assert n == 4 and np.array_equal(tail[:4], frames[25:]) and not tail[4:].any()
    # LRW has no neutral still: the identity frame is the clip's own first frame.
    assert np.array_equal(source.identity(row), frames[0])
    # The pretext runs on it: the loop's aligned crops of a 1.16 s clip start at frames 0..4.
    pretext = _pretext(manifest)
    wav, lengths, info = CropSampler(manifest, ("train",), 2, 16_000, seed=0, align=640).batch(0)
    assert all(int(s) % 640 == 0 and int(s) <= 2_560 for s in info.starts)
    out = pretext(wav, lengths, info=info)
    assert torch.isfinite(out["loss"])


def test_a_manifest_without_video_is_refused(tiny_corpus, tmp_path):
    table = tiny_corpus.manifest.table.drop(columns=["mouth_track"])
    table["audio_path"] = [str(tiny_corpus.manifest.resolve(p)) for p in table["audio_path"]]
    manifest = read_manifest(write_manifest(table, tmp_path / "audio-only", {"name": "audio-only"}))
    with pytest.raises(ConfigError, match="needs video") as err:
        MouthFrameSource(manifest)
    assert str(manifest.path) in str(err.value)
    with pytest.raises(ConfigError, match="needs video"):
        _pretext(manifest)
    with pytest.raises(ConfigError, match="no manifest"):
        VisualPretext(ResNet1dEncoder(TINY_RESNET), PretextContext(), **TINY)
    with pytest.raises(ConfigError, match="25 fps"):
        VisualPretext(create_encoder("logmel"), PretextContext(manifest=tiny_corpus.manifest), **TINY)


# --- generator and losses -----------------------------------------------------------------------

def test_generator_output_shape_range_and_noise():
    torch.manual_seed(0)
    gen = SpeechDrivenGenerator(16, size=64, **TINY).eval()
    still, audio = torch.rand(2, 64, 64), torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        out = gen(still, audio, valid, generator=torch.Generator().manual_seed(1))
        again = gen(still, audio, valid, generator=torch.Generator().manual_seed(1))
        other = gen(still, audio, valid, generator=torch.Generator().manual_seed(2))
    assert out.shape == (2, 5, 64, 64)
    assert out[valid].min() > 0.0 and out[valid].max() < 1.0 and torch.count_nonzero(out[~valid]) == 0
    # Untrained, the generator copies the still: its edit of the still starts at zero.
    copies = still.clamp(1e-3, 1 - 1e-3).unsqueeze(1).expand(-1, 5, -1, -1)
    assert torch.allclose(out[valid], copies[valid], atol=1e-5)
    with torch.no_grad():
        torch.nn.init.normal_(gen.decoder.out.weight, std=0.1)
        out = gen(still, audio, valid, generator=torch.Generator().manual_seed(1))
        again = gen(still, audio, valid, generator=torch.Generator().manual_seed(1))
        other = gen(still, audio, valid, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(out[valid], copies[valid], atol=1e-3)
    assert torch.equal(out, again) and not torch.equal(out, other)  # the temporal noise is used
    # The documented default size: 2,186,334 parameters with a 512-d encoder.
    assert count_parameters(SpeechDrivenGenerator(512)) == 2_186_334
    with pytest.raises(ConfigError, match="multiple of 16"):
        SpeechDrivenGenerator(16, size=40)


def test_l1_counts_valid_frames_only():
    torch.manual_seed(0)
    gen, real = torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    valid = torch.tensor([[True, True, False, False], [True, False, False, False]])
    expected = torch.cat([(gen - real)[0, :2].abs().flatten(), (gen - real)[1, :1].abs().flatten()]).mean()
    assert torch.allclose(masked_l1(gen, real, valid), expected)
    garbage = gen.clone()
    garbage[~valid] = 7.0
    assert torch.allclose(masked_l1(garbage, real, valid), expected)


def test_the_pretext_loss_falls_on_a_fixed_batch(tiny_corpus):
    # 32x32 frames and 2 crops keep the 60 steps to a few seconds on one CPU thread. The untrained
    # generator copies the still, so the first loss is the identity baseline's; learning the mouth's
    # motion must take the loss clearly below it (measured: 0.0067 -> 0.0048 in 60 steps).
    pretext = _pretext(tiny_corpus.manifest, size=32)
    wav, lengths, info = _batch(tiny_corpus.manifest, batch_size=2)
    optimizer = torch.optim.Adam(pretext.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        out = pretext(wav, lengths, info=info)
        assert set(out) == {"loss", "loss_l1"}
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.85 * losses[0], losses
    # The encoder is what is being trained: it got gradients.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pretext.encoder.parameters())


def test_adversarial_training_steps_its_own_discriminators(tiny_corpus):
    pretext = _pretext(tiny_corpus.manifest, adversarial=True)
    disc = {id(p) for p in pretext.adversary.parameters()}
    assert disc and not disc & {id(p) for p in pretext.parameters()}
    assert count_parameters(pretext) == count_parameters(pretext.encoder) + count_parameters(pretext.generator)
    wav, lengths, info = _batch(tiny_corpus.manifest, batch_size=2)
    optimizer = torch.optim.Adam(pretext.parameters(), lr=1e-3)  # what the loop does
    wrapper = nn.ModuleDict({"visual": pretext})  # a joint objective would include the discriminators
    d_before = [p.detach().clone() for p in pretext.adversary.parameters()]
    g_before = [p.detach().clone() for p in pretext.generator.parameters()]
    for _ in range(2):
        out = pretext(wav, lengths, info=info)
        assert {"loss", "loss_l1", "loss_adv_frame", "loss_adv_seq", "disc_frame", "disc_seq"} <= set(out)
        assert all(torch.isfinite(v) for v in out.values())
        optimizer.zero_grad()
        out["loss"].backward()
        # The generator's loss gives the discriminators no gradient, even through the wrapper.
        assert all(p.grad is None for p in wrapper.parameters() if id(p) in disc)
        torch.nn.utils.clip_grad_norm_(pretext.parameters(), 10.0)
        optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(d_before, pretext.adversary.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(g_before, pretext.generator.parameters()))
    # Checkpoints carry the discriminators and their optimiser: a fresh pretext resumes them.
    state = pretext.state_dict()
    assert "adversary._extra_state" in state and any(k.startswith("adversary.frame_d.") for k in state)
    fresh = _pretext(tiny_corpus.manifest, seed=1, adversarial=True)
    fresh.load_state_dict(state)
    a, b = pretext.adversary.optimizer.state_dict(), fresh.adversary.optimizer.state_dict()
    assert all(torch.equal(a["state"][i]["exp_avg"], b["state"][i]["exp_avg"]) for i in a["state"])
    # Evaluation does not train the discriminators.
    fresh.eval()
    frozen = [p.detach().clone() for p in fresh.adversary.parameters()]
    with torch.no_grad():
        out = fresh(wav, lengths, info=info)
    assert "disc_frame" not in out and all(torch.equal(a, p) for a, p in zip(frozen, fresh.adversary.parameters()))
    assert isinstance(fresh.adversary, Adversary)


def test_snapshot_writes_a_grid_and_three_l1s(tiny_corpus, tmp_path):
    from PIL import Image

    pretext = _pretext(tiny_corpus.manifest, snapshot_clips=3, mean_frame_clips=6)
    rng, ctx = torch.get_rng_state(), pretext.context.generator.get_state()
    metrics = pretext.snapshot(tmp_path / "out", 7)
    png = tmp_path / "out" / "frames-step000007.png"
    assert png.is_file()
    with Image.open(png) as img:
        assert img.mode == "L" and img.size[0] >= 9 * 64 and img.size[1] >= 6 * 64
    assert {"l1_generated", "l1_identity", "l1_mean_frame"} <= set(metrics)
    assert all(0.0 < metrics[k] < 1.0 for k in ("l1_generated", "l1_identity", "l1_mean_frame"))
    assert metrics["clips"] == 3 and metrics["frames"] == 75
    # Nothing the training run depends on moved.
    assert pretext.training and torch.equal(rng, torch.get_rng_state())
    assert torch.equal(ctx, pretext.context.generator.get_state())
    # The identity baseline is what it says: the still repeated, on the held-out split (valid).
    rows = evenly_spaced_rows(tiny_corpus.manifest, "valid", 3)
    errors = [np.abs(pretext.mouths.frames(r, 0, 25)[0] - pretext.mouths.identity(r)).mean() for r in rows]
    assert metrics["l1_identity"] == pytest.approx(float(np.mean(errors)), rel=1e-5)
    again = generation_l1(pretext, tiny_corpus.manifest, "valid", 3)
    assert again == {k: v for k, v in metrics.items()}
    assert set(generation_l1(pretext, None, "test", 2)) == set(metrics)


def test_the_loop_pretrains_logmel_l1_adversarially_and_resumes_exactly(tiny_corpus, tmp_path):
    import json

    def config(**kw):
        return PretrainConfig(encoder="logmel-l1", data=str(tiny_corpus.path), steps=4, batch_size=2, save_every=2,
                              log_every=1, encoder_kwargs={"channels": [16, 32]},
                              pretext_kwargs={**TINY, "channels": [8, 16, 16], "size": 32, "adversarial": True,
                                              "snapshot_clips": 2, "mean_frame_clips": 4}, **kw)

    straight = pretrain(config(), tmp_path / "straight", progress=False)
    pretrain(config(), tmp_path / "killed", progress=False, stop_after=2)
    resumed = pretrain(config(), tmp_path / "killed", resume=True, progress=False)
    assert straight["step"] == resumed["step"] == 4
    a = torch.load(tmp_path / "straight" / "checkpoint-last.pt", weights_only=False)["pretext"]
    b = torch.load(tmp_path / "killed" / "checkpoint-last.pt", weights_only=False)["pretext"]
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))  # discriminators included
    assert straight["pretext_params"] == count_parameters(create_encoder("logmel-l1", channels=[16, 32])) + \
        straight["pretext"]["generator_params"]
    assert [s["step"] for s in straight["snapshots"]] == [2, 4]
    assert {"l1_generated", "l1_identity", "l1_mean_frame"} <= set(straight["snapshots"][-1])
    assert straight["snapshots"] == resumed["snapshots"]
    assert (tmp_path / "straight" / "frames-step000004.png").is_file()
    rows = json.loads((tmp_path / "straight" / "pretrain.json").read_text())
    assert rows["pretext"]["adversarial"] is True


# --- logmel-l1 ----------------------------------------------------------------------------------

def test_logmel_l1_encoder_frames_padding_and_registration(tiny_corpus):
    enc = create_encoder("logmel-l1").eval()
    assert isinstance(enc, LogMelL1Encoder)
    assert (enc.dim, enc.frame_rate, enc.needs_pretraining, enc.trainable) == (512, 25.0, True, True)
    assert count_parameters(enc) == 1_395_200
    assert enc.config()["version"] == 1 and enc.config()["hop"] == 640
    lengths = torch.tensor([16_000, 12_345, 7_000, 300])
    torch.manual_seed(0)
    wav = torch.randn(4, 16_000)
    wav[1, 12_345:] = 5.0  # garbage in the padding must not matter
    with torch.no_grad():
        feats, frames = enc(wav, lengths)
        assert feats.shape == (4, 25, 512) and frames.tolist() == [25, 19, 10, 0]
        for i in range(4):
            alone, n = enc(wav[i:i + 1, :lengths[i]], lengths[i:i + 1])
            assert n.item() == frames[i].item() and alone.shape[1] == n.item()
            assert torch.allclose(alone[0], feats[i, :n.item()], atol=1e-5)
            assert torch.count_nonzero(feats[i, n.item():]) == 0
    with pytest.raises(ConfigError, match="channels"):
        create_encoder("logmel-l1", channels=(256,))
    # Its pretext is the visual one, registered under the encoder's name.
    assert pretext_factory("logmel-l1") is logmel_l1_pretext
    context = PretextContext(manifest=tiny_corpus.manifest, generator=torch.Generator().manual_seed(0))
    small = create_encoder("logmel-l1", channels=(16, 32))
    pretext = pretext_factory("logmel-l1")(small, context, **TINY)
    assert isinstance(pretext, VisualPretext) and pretext.crop_align == 640
    wav, lengths, info = _batch(tiny_corpus.manifest, batch_size=2)
    out = pretext(wav, lengths, info=info)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and small.down[0][0].weight.grad is not None
    assert pretext.config()["frames"]["kind"] == "embedded"
