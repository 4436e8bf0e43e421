"""The published HEAR packages against avbench: hearvalidator on bench.hear, hearbaseline as hear:hearbaseline.

Runs where they import: `tox -e hear` (see tox.ini: tensorflow-cpu, which hearvalidator imports
at its top, and hearbaseline 2021.1.1 without its numpy==1.19.2/numba==0.48 pins, beside librosa
0.9.2, the last librosa that takes the positional sample rate its naive model passes). In the core
environment the module is skipped.

- `hear-validator bench.hear -m SPEC -d cpu`, the validator's own command line, for mfcc39, apc and
  av-joint; apc and av-joint from checkpoints that avbench's pretraining wrote (2 steps on the tiny
  corpus), passed as a bare path, as heareval's `--model` would pass it.
- hear:hearbaseline: rate, size and frames from the module; padded clips give the frames of the
  clips alone, clip by clip and batched; `avbench run` trains the BiGRU on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("hearvalidator", reason="hearvalidator is not installed: run `tox -e hear`")
hearbaseline = pytest.importorskip("hearbaseline", reason="hearbaseline is not installed: run `tox -e hear`")

from test_audiovisual import SMALL_RESNET  # noqa: E402

from bench.registry import create_encoder  # noqa: E402


def _validator(spec: str, tmp_path) -> str:
    exe = shutil.which("hear-validator") or str(os.path.join(os.path.dirname(sys.executable), "hear-validator"))
    result = subprocess.run([exe, "bench.hear", "-m", spec, "-d", "cpu"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("Looks good!")
    return result.stdout


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_corpus):
    from bench.pretrain.loop import PretrainConfig, pretrain

    out = {}
    for name, kwargs in (("apc", {"num_layers": 2, "hidden_size": 32}), ("av-joint", SMALL_RESNET)):
        folder = tmp_path_factory.mktemp(name)
        pretrain(PretrainConfig(encoder=name, data=str(tiny_corpus.path), steps=2, batch_size=2, save_every=2,
                                crop_seconds=0.5, encoder_kwargs=kwargs), folder, progress=False)
        out[name] = folder / "encoder.pt"
    return out


def test_hearvalidator_passes_mfcc39(tmp_path):
    assert "Model sample rate is: 16000" in _validator("mfcc39", tmp_path)


@pytest.mark.parametrize("name", ["apc", "av-joint"])
def test_hearvalidator_passes_pretrained_checkpoints(name, checkpoints, tmp_path):
    out = _validator(str(checkpoints[name]), tmp_path)
    assert "Received embedding of shape" in out


def test_hearbaseline_is_an_encoder_with_its_own_rate_and_frames():
    encoder = create_encoder("hear:hearbaseline")
    assert (encoder.sample_rate, encoder.dim) == (44_100, 4096)
    assert encoder.frame_rate == pytest.approx(20.0) and encoder.first_frame_centre_s == 0.0
    assert encoder.config()["distribution"] == "hearbaseline"
    assert encoder.config()["distribution_version"] == hearbaseline.__version__
    for n in (1, 2204, 2205, 44_100, 50_000):
        alone, _ = hearbaseline.get_timestamp_embeddings(torch.rand(1, n) * 2 - 1, encoder.model)
        assert int(encoder.output_lengths(torch.tensor([n]))[0]) == alone.shape[1] == n // 2205 + 1


@pytest.mark.parametrize("batch_clips", [False, True])
def test_hearbaseline_padded_clips_give_the_frames_of_the_clips_alone(batch_clips):
    encoder = create_encoder("hear:hearbaseline", batch_clips=batch_clips)
    generator = torch.Generator().manual_seed(0)
    lengths = [30_000, 44_100, 12_000]
    wav = torch.zeros(3, 44_100)
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.rand(n, generator=generator) * 2 - 1
    feats, out = encoder(wav, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_len = encoder(wav[i:i + 1, :n], torch.tensor([n]))
        assert int(out[i]) == int(alone_len[0]) == n // 2205 + 1
        torch.testing.assert_close(feats[i, : int(out[i])], alone[0], rtol=1e-4, atol=1e-3)


def test_avbench_run_trains_on_hearbaseline(tiny_corpus, tmp_path):
    from bench.cli import main
    from bench.records import read_records

    records = tmp_path / "runs.jsonl"
    assert main(["-q", "run", "--encoder", "hear:hearbaseline", "--task", str(tiny_corpus.path), "--epochs", "2",
                 "--lr-drop-epoch", "1", "--records", str(records)]) == 0
    (record,) = read_records(records)
    assert record["encoder"] == "hear:hearbaseline" and record["status"] == "ok"
