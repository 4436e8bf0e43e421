"""The shared 1D ResNet18 raw-waveform backbone and the `resnet18-scratch` reference."""

from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError
from bench.evaluate.identity import RunConfig
from bench.evaluate.run import run_experiment
from bench.records import read_records
from bench.registry import count_parameters, create_encoder
from encoders.resnet1d import HOP, ResNet18Audio


def test_resnet18_has_the_published_size_and_a_40ms_hop():
    enc = create_encoder("resnet18-scratch").eval()
    # PROTOCOL.md: about 3.85 M parameters, 512-d at 25 Hz (one frame per 25 fps video frame).
    assert count_parameters(enc) == 3_848_576
    assert (enc.dim, enc.frame_rate, HOP) == (512, 25.0, 640)
    feats, frames = enc(torch.randn(2, 16_000), torch.tensor([16_000, 16_000]))
    assert feats.shape == (2, 25, 512) and frames.tolist() == [25, 25]
    lengths = torch.tensor([640, 1_000, 12_345, 12_799, 16_000, 32_000])
    expected = [(-(-(int(t) // 4) // 8)) // 20 for t in lengths]  # ceil(floor(T/4)/8) // 20
    assert ResNet18Audio.output_lengths(lengths).tolist() == expected
    assert expected[-2:] == [25, 50]


def test_padding_never_leaks_into_valid_frames():
    torch.manual_seed(0)
    enc = create_encoder("resnet18-scratch").eval()
    wav = torch.randn(3, 16_000)
    lengths = torch.tensor([16_000, 12_345, 7_000])
    wav[1, 12_345:] = 5.0  # garbage in the padding must not matter
    with torch.no_grad():
        batch, frames = enc(wav, lengths)
        for i in range(3):
            alone, n = enc(wav[i:i + 1, :lengths[i]], lengths[i:i + 1])
            assert n.item() == frames[i].item()
            assert torch.allclose(alone[0], batch[i, :n.item()], atol=1e-5)
            assert torch.count_nonzero(batch[i, n.item():]) == 0


def test_bad_stage_channels_are_refused():
    with pytest.raises(ConfigError, match="stage_channels"):
        create_encoder("resnet18-scratch", stage_channels=(64, 128))


def test_scratch_mode_trains_the_raw_waveform_encoder_with_the_bigru(tiny_corpus, tmp_path):
    # Narrow channels keep the test to seconds; the architecture is otherwise the paper's.
    config = RunConfig(encoder="resnet18-scratch", task=str(tiny_corpus.path), mode="scratch", epochs=2, lr=1e-3,
                       lr_drop_epoch=None, batch_size=8, encoder_kwargs={"stage_channels": [8, 8, 16, 16]})
    record = run_experiment(config, tmp_path / "runs.jsonl", progress=False)
    assert record["status"] == "ok" and record["mode"] == "scratch"
    assert record["encoder_params"] == count_parameters(create_encoder("resnet18-scratch",
                                                                       stage_channels=[8, 8, 16, 16]))
    # Every train clip went through the encoder in each epoch (no cache in scratch mode).
    assert record["counters"]["cache_hits"] == 0 and record["counters"]["encoder_forward_clips"] >= 2 * 36
    assert read_records(tmp_path / "runs.jsonl")[0]["config_hash"] == record["config_hash"]
