"""The HEAR 2021 API both ways: `hear:MODULE` wraps any HEAR module as an avbench encoder, and
`bench.hear` is a HEAR module for every avbench encoder.

The modules in tests/hear_modules/ are small HEAR modules written for these tests. The published
hearbaseline and hearvalidator run in `tox -e hear` (tests/hear_env/).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_audiovisual import SMALL_RESNET, SMALL_VISUAL

import bench.hear as hear
from bench.data.feature_cache import weights_digest
from bench.errors import ConfigError
from bench.registry import create_encoder

MODULES = Path(__file__).parent / "hear_modules"


@pytest.fixture
def hear_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(MODULES))
    yield


def _clips(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.rand(n, generator=generator) * 2 - 1
    return wav, torch.tensor(lengths)


# ---------------------------------------------------------------------- hear:MODULE as an encoder
def test_a_hear_module_is_an_encoder_with_rate_and_size_from_the_module(hear_modules):
    encoder = create_encoder("hear:toy_hear")
    assert encoder.sample_rate == 22_050 and encoder.dim == 64
    assert encoder.frame_rate == pytest.approx(40.0)           # from the 25 ms timestamps
    assert encoder.first_frame_centre_s == 0.0
    assert not encoder.trainable and not encoder.needs_pretraining


def test_valid_frames_are_the_frames_the_module_gives_the_clip_alone(hear_modules):
    import toy_hear

    encoder = create_encoder("hear:toy_hear")
    for n in (1, 551, 552, 22_050, 22_051, 30_000, 33_076):
        alone, _ = toy_hear.get_timestamp_embeddings(_clips([n])[0], encoder.model)
        # The module may give one frame more (its frame starts round), never fewer.
        assert int(encoder.output_lengths(torch.tensor([n]))[0]) == math.floor(n / 551.25) + 1
        assert alone.shape[1] >= int(encoder.output_lengths(torch.tensor([n]))[0])


@pytest.mark.parametrize("module,batch_clips", [("toy_hear", False), ("toy_hear", True), ("toy_hear_global", False)])
def test_padded_clips_give_the_same_valid_frames_as_unpadded_ones(hear_modules, module, batch_clips):
    encoder = create_encoder(f"hear:{module}", batch_clips=batch_clips)
    lengths = [9_000, 22_050, 15_500, 22_050]
    wav, lens = _clips(lengths)
    wav[0, 9_000:] = 0.7  # padding that is not even zero must not leak
    feats, out = encoder(wav, lens)
    for i, n in enumerate(lengths):
        alone, alone_len = encoder(wav[i:i + 1, :n], lens[i:i + 1])
        assert int(out[i]) == int(alone_len[0])
        torch.testing.assert_close(feats[i, : int(out[i])], alone[0, : int(out[i])], rtol=1e-5, atol=1e-5)
        assert torch.all(feats[i, int(out[i]):] == 0)


def test_batching_padded_clips_is_not_exact_for_a_module_that_normalises_over_the_input(hear_modules):
    """Why clips are grouped by length by default: padding changes such a module's frames."""
    encoder = create_encoder("hear:toy_hear_global", batch_clips=True)
    wav, lens = _clips([9_000, 22_050])
    feats, out = encoder(wav, lens)
    alone, _ = encoder(wav[:1, :9_000], lens[:1])
    assert not torch.allclose(feats[0, : int(out[0])], alone[0, : int(out[0])], atol=1e-3)


def test_uneven_timestamps_are_refused_with_their_spacing(hear_modules):
    with pytest.raises(ConfigError, match=r"not uniformly spaced.*20-30 ms.*30, 20, 30"):
        create_encoder("hear:toy_hear_uneven")


def test_a_missing_module_or_model_file_is_named(hear_modules, tmp_path):
    with pytest.raises(ConfigError, match="no module 'no_such_hear_module'"):
        create_encoder("hear:no_such_hear_module")
    with pytest.raises(ConfigError, match="model file not found"):
        create_encoder(f"hear:toy_hear@{tmp_path / 'missing.pt'}")
    with pytest.raises(ConfigError, match="dotted Python module name"):
        create_encoder("hear:not-a-module")


def test_the_cache_identity_holds_the_module_its_source_and_the_model_file(hear_modules, tmp_path):
    import toy_hear

    default = create_encoder("hear:toy_hear")
    state = toy_hear.load_model().state_dict()
    state["projection"] = state["projection"] * 2
    torch.save(state, tmp_path / "toy.pt")
    loaded = create_encoder(f"hear:toy_hear@{tmp_path / 'toy.pt'}")
    assert default.config()["module"] == "toy_hear" and default.config()["source_sha256"]
    assert default.config()["model_file_sha256"] is None and loaded.config()["model_file_sha256"]
    assert weights_digest(default) != weights_digest(loaded)  # the model's weights are the encoder's
    wav, lens = _clips([22_050])
    assert not torch.allclose(default(wav, lens)[0], loaded(wav, lens)[0])
    other = create_encoder("hear:toy_hear_global")
    assert other.config()["source_sha256"] != default.config()["source_sha256"]


def test_a_hear_module_runs_through_avbench_run(hear_modules, tiny_corpus, tmp_path):
    from bench.cli import main
    from bench.records import read_records

    records = tmp_path / "runs.jsonl"
    assert main(["-q", "run", "--encoder", "hear:toy_hear", "--task", str(tiny_corpus.path), "--epochs", "2",
                 "--lr-drop-epoch", "1", "--records", str(records)]) == 0
    (record,) = read_records(records)
    assert record["encoder"] == "hear:toy_hear" and record["status"] == "ok" and 0.0 <= record["test_acc"] <= 1.0


# ---------------------------------------------------------------------- bench.hear as a HEAR module
# The HEAR API's rules (https://hearbenchmark.com/hear-api.html, as hearvalidator 2021.0.2 checks
# them): load_model returns a torch.nn.Module with sample_rate in {16000, 22050, 44100, 48000} and
# int scene_embedding_size and timestamp_embedding_size; get_timestamp_embeddings on [16, 2 s] of
# noise in [-1, 1] returns float32 [16, T, timestamp_embedding_size] and timestamps [16, T] in ms,
# spaced within 1e-3 ms of their mean; get_scene_embeddings on [8, 3.74 s] returns float32
# [8, scene_embedding_size].
def check_hear_rules(module, model_file_path: str) -> None:
    model = module.load_model(model_file_path)
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    audio = torch.rand(16, int(2.0 * model.sample_rate)) * 2 - 1
    embeddings, timestamps = module.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32 and embeddings.shape[0] == 16
    assert embeddings.shape[:2] == timestamps.shape and embeddings.shape[2] == model.timestamp_embedding_size
    spacing = torch.diff(timestamps)
    assert torch.all((spacing - spacing.mean()).abs() < 1e-3)
    scene = module.get_scene_embeddings(torch.rand(8, int(3.74 * model.sample_rate)) * 2 - 1, model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)


@pytest.fixture(scope="module")
def av_joint_checkpoint(tmp_path_factory, tiny_corpus):
    """A real avbench pretraining checkpoint (encoder.pt) of a small av-joint: 2 steps on the tiny corpus."""
    from bench.pretrain.loop import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("av-joint-pretrain")
    pretrain(PretrainConfig(encoder="av-joint", data=str(tiny_corpus.path), steps=2, batch_size=2, save_every=2,
                            encoder_kwargs=SMALL_RESNET, pretext_kwargs={"visual": SMALL_VISUAL, "audio": {"hidden": 16}}),
             out, progress=False)
    return out / "encoder.pt"


@pytest.mark.parametrize("spec", ["mfcc39", "apc", "av-joint"])
def test_avbench_encoders_follow_the_hear_rules(spec):
    check_hear_rules(hear, spec)


def test_a_pretraining_checkpoint_alone_names_its_encoder(av_joint_checkpoint):
    check_hear_rules(hear, str(av_joint_checkpoint))
    model = hear.load_model(str(av_joint_checkpoint))
    assert model.spec.startswith("av-joint@") and model.timestamp_embedding_size == 16  # its settings came along
    direct = create_encoder(f"av-joint@{av_joint_checkpoint}", **SMALL_RESNET).eval()
    audio = torch.rand(2, 16_000) * 2 - 1
    with torch.no_grad():
        expected, _ = direct(audio, torch.tensor([16_000, 16_000]))
    torch.testing.assert_close(hear.get_timestamp_embeddings(audio, model)[0], expected)


def test_timestamps_are_the_frame_centres_in_milliseconds():
    model = hear.load_model("mfcc39")               # centred STFT frames: 0, 10, 20 ms ...
    _, timestamps = hear.get_timestamp_embeddings(torch.zeros(1, 16_000), model)
    assert timestamps[0, :3].tolist() == [0.0, 10.0, 20.0] and timestamps.shape[1] == 101
    model = hear.load_model("av-joint")             # 25 Hz frames of 640 samples, centred at 305.5
    _, timestamps = hear.get_timestamp_embeddings(torch.zeros(1, 16_000), model)
    assert timestamps[0, :2].tolist() == pytest.approx([305.5 / 16, 305.5 / 16 + 40.0])


def test_a_sound_shorter_than_a_frame_still_gets_an_embedding():
    model = hear.load_model("av-joint")
    scene = hear.get_scene_embeddings(torch.rand(3, 100) * 2 - 1, model)
    assert scene.shape == (3, 512) and torch.isfinite(scene).all()


def test_load_model_says_how_to_name_the_encoder(monkeypatch, tmp_path):
    monkeypatch.delenv(hear.ENCODER_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match="AVBENCH_HEAR_ENCODER"):
        hear.load_model()
    torch.save(create_encoder("av-joint").state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="does not record its encoder"):
        hear.load_model(str(tmp_path / "bare.pt"))
    monkeypatch.setenv(hear.ENCODER_VARIABLE, "av-joint")
    assert hear.load_model(str(tmp_path / "bare.pt")).spec == f"av-joint@{tmp_path / 'bare.pt'}"
    monkeypatch.setenv(hear.ENCODER_VARIABLE, "mfcc39")
    assert hear.load_model().spec == "mfcc39"
    with pytest.raises(ConfigError, match="unknown encoder 'no-such'"):
        hear.load_model("no-such")


def test_both_ways_at_once_hear_bench_hear_is_the_encoder_itself(monkeypatch):
    """avbench -> HEAR -> avbench: hear:bench.hear gives mfcc39's own features."""
    monkeypatch.setenv(hear.ENCODER_VARIABLE, "mfcc39")
    wrapped, direct = create_encoder("hear:bench.hear"), create_encoder("mfcc39")
    assert wrapped.frame_rate == pytest.approx(100.0) and wrapped.dim == 39
    wav, lens = _clips([16_000, 12_345])
    feats, out = wrapped(wav, lens)
    expected, expected_len = direct(wav, lens)
    assert out.tolist() == expected_len.tolist()
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="notes.pt: not a checkpoint"):
        hear.load_model(str(tmp_path / "notes.pt"))


def test_the_model_file_reaches_load_model_first(hear_modules, tmp_path):
    """A module without default weights: load_model() alone must never be called when a file is given."""
    import toy_hear

    torch.save(toy_hear.load_model().state_dict(), tmp_path / "weights.pt")
    encoder = create_encoder(f"hear:toy_hear_file@{tmp_path / 'weights.pt'}")
    assert encoder.model_file == (tmp_path / "weights.pt").resolve()
    assert create_encoder("hear:toy_hear_file", checkpoint=tmp_path / "weights.pt").dim == 64
    with pytest.raises(ConfigError, match="load_model\\(''\\) failed.*no default weights"):
        create_encoder("hear:toy_hear_file")
