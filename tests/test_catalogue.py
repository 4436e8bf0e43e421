"""Every built-in encoder, as `avbench list` shows it: dim, frame rate, and frames for 1 s of audio."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main

# name: (dim, frame rate, frames for 16,000 samples). The 100 Hz frame counts differ by framing:
# librosa-style centred STFT (1 + T // 160), Kaldi snip_edges (1 + (T - 400) // 160), wav2vec's
# unpadded convs (1 + (T - 465) // 160) and PASE+'s padded convs (T // 160).
CATALOGUE = {
    "mfcc39": (39, 100, 101), "logmel": (80, 100, 101), "apc": (512, 100, 98), "wav2vec": (512, 100, 98),
    "wav2vec_large": (512, 100, 98), "pase+": (256, 100, 100), "resnet18-scratch": (512, 25, 25),
    "av-audio": (512, 25, 25), "av-visual": (512, 25, 25), "av-joint": (512, 25, 25), "logmel-l1": (512, 25, 25),
}


def test_avbench_list_shows_every_builtin_encoder(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (dim, rate, _) in CATALOGUE.items():
        assert (rows[name]["dim"], rows[name]["frame_rate"]) == (dim, rate), name
    assert rows["s3prl:<variant>"]["family"] is True


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_one_second_gives_the_expected_frames(name):
    from bench.registry import create_encoder

    dim, _, frames = CATALOGUE[name]
    enc = create_encoder(name).eval()
    with torch.no_grad():
        feats, n = enc(torch.randn(1, 16_000) * 0.1, torch.tensor([16_000]))
    assert feats.shape == (1, frames, dim) and n.tolist() == [frames]
    assert enc.output_lengths(torch.tensor([16_000])).tolist() == [frames]
