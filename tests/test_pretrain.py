"""The shared self-supervised pretraining loop: budget, checkpoints, exact resume, curves, CLI.

The loop is exercised with a deliberately small encoder and objective defined here (a strided
conv that predicts the next frame's log energy), so these tests take seconds; the real
objectives (APC, wav2vec, PASE+) have their own tests in their files and go through this loop in
tests/test_baselines.py.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.errors import ConfigError
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.pretrain.objective import _PRETEXTS, Pretext, PretextContext, register_pretext
from bench.registry import _REGISTRY, Encoder, create_encoder, register_encoder


class FrameConv(Encoder):
    name = "test-frameconv"
    frame_rate = 100.0
    dim = 8
    needs_pretraining = True

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv1d(1, dim, 400, stride=160)

    def output_lengths(self, lengths):
        return torch.div(torch.as_tensor(lengths) - 400, 160, rounding_mode="floor") + 1

    def forward(self, wav, lengths):
        frames = self.output_lengths(lengths)
        # Log power of learned projections of each 25 ms frame: enough to predict frame energy.
        return torch.log(self.conv(wav.unsqueeze(1)).pow(2) + 1e-4).transpose(1, 2), frames


class NextEnergy(Pretext):
    default_lr = 1e-2

    def __init__(self, encoder: FrameConv, context: PretextContext, n_ahead: int = 1) -> None:
        super().__init__()
        self.encoder, self.n_ahead = encoder, n_ahead
        self.head = nn.Linear(encoder.dim, 1)
        self.dropout = nn.Dropout(0.2)  # draws from torch's RNG: resume must restore it

    def forward(self, wav, lengths, info=None):
        feats, frames = self.encoder(wav, lengths)
        energy = torch.log(wav.unfold(1, 400, 160).pow(2).mean(-1) + 1e-6)
        energy = energy - energy.mean(1, keepdim=True)
        pred = self.head(self.dropout(feats)).squeeze(-1)
        k = self.n_ahead
        mask = torch.arange(feats.shape[1] - k)[None] < (frames - k)[:, None]
        err = (pred[:, :-k] - energy[:, k:feats.shape[1]]).abs()
        # A noise draw from the context generator, as contamination would: resume must restore it.
        jitter = torch.rand((), generator=self.encoder_generator) * 1e-6
        return {"loss": (err * mask).sum() / mask.sum() + jitter, "loss_l1": (err * mask).sum() / mask.sum(),
                "frames": mask.sum()}

    def config(self):
        return {"n_ahead": self.n_ahead}


@pytest.fixture
def toy_pretext():
    register_encoder("test-frameconv")(FrameConv)

    @register_pretext("test-frameconv")
    def factory(encoder, context, n_ahead: int = 1):
        p = NextEnergy(encoder, context, n_ahead)
        p.encoder_generator = context.generator
        return p

    yield "test-frameconv"
    _REGISTRY.pop("test-frameconv", None)
    _PRETEXTS.pop("test-frameconv", None)


def _config(corpus, **kw):
    base = dict(encoder="test-frameconv", data=str(corpus.path), steps=12, batch_size=4, crop_seconds=0.5,
                save_every=4, log_every=2, seed=3)
    base.update(kw)
    return PretrainConfig(**base)


def test_pretrain_writes_checkpoints_curve_and_a_loadable_encoder(toy_pretext, tiny_corpus, tmp_path):
    summary = pretrain(_config(tiny_corpus), tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert summary["step"] == 12 and summary["total_steps"] == 12 and summary["lr"] == 1e-2
    assert summary["clips"] == 36  # train split only: labels ignored, test speakers stay unseen
    for name in ("checkpoint-last.pt", "encoder.pt", "loss.csv", "loss.png", "pretrain.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "loss_l1", "frames", "epoch"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # a learnable toy target: the loss must fall
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "pretrain.json").read_text())["pretext"] == {"n_ahead": 1}
    trained = create_encoder(f"test-frameconv@{out / 'encoder.pt'}")
    saved = torch.load(out / "encoder.pt", weights_only=True)
    assert torch.equal(trained.conv.weight, saved["encoder"]["conv.weight"])
    assert not torch.equal(trained.conv.weight, create_encoder("test-frameconv").conv.weight)


def test_a_killed_pretraining_resumes_to_the_same_final_weights(toy_pretext, tiny_corpus, tmp_path):
    pretrain(_config(tiny_corpus), tmp_path / "straight", progress=False)
    pretrain(_config(tiny_corpus), tmp_path / "killed", progress=False, stop_after=5)  # killed after step 5
    assert json.loads((tmp_path / "killed" / "pretrain.json").read_text())["step"] == 5
    summary = pretrain(_config(tiny_corpus), tmp_path / "killed", resume=True, progress=False)
    assert summary["step"] == 12
    a = torch.load(tmp_path / "straight" / "encoder.pt", weights_only=True)["encoder"]
    b = torch.load(tmp_path / "killed" / "encoder.pt", weights_only=True)["encoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The budget may grow on resume; the settings may not.
    assert pretrain(_config(tiny_corpus, steps=14), tmp_path / "killed", resume=True, progress=False)["step"] == 14
    with pytest.raises(ConfigError, match="batch_size"):
        pretrain(_config(tiny_corpus, batch_size=2, steps=20), tmp_path / "killed", resume=True, progress=False)


def test_pretrain_refuses_to_overwrite_and_checks_its_settings(toy_pretext, tiny_corpus, tmp_path):
    pretrain(_config(tiny_corpus, steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--resume to continue"):
        pretrain(_config(tiny_corpus, steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="no .*checkpoint-last.pt to resume"):
        pretrain(_config(tiny_corpus, steps=2), tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(ConfigError, match="exactly one of --steps N or --epochs E"):
        _config(tiny_corpus, epochs=1.0).validated()
    with pytest.raises(ConfigError, match="splits"):
        _config(tiny_corpus, splits=("training",)).validated()
    with pytest.raises(ConfigError, match="no objective of its own"):
        pretrain(_config(tiny_corpus, encoder="mfcc39"), tmp_path / "mfcc", progress=False)
    assert pretrain(_config(tiny_corpus, steps=None, epochs=2.0), tmp_path / "ep", progress=False)["step"] == 18


def test_cli_pretrain_then_evaluate_the_checkpoint(toy_pretext, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["-q", "pretrain", "test-frameconv", "--data", str(tiny_corpus.path), "--steps", "4",
                 "--batch-size", "4", "--crop-seconds", "0.5", "--pretext-arg", "n_ahead=2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"encoder: test-frameconv@{out / 'encoder.pt'}" in printed
    assert json.loads((out / "pretrain.json").read_text())["pretext"] == {"n_ahead": 2}
    assert main(["-q", "pretrain", "test-frameconv", "--data", str(tiny_corpus.path), "--steps", "4",
                 "--out", str(out)]) == 2  # exists: a clear error, not a traceback
    assert "pass --resume" in capsys.readouterr().err
    assert main(["-q", "run", "--encoder", f"test-frameconv@{out / 'encoder.pt'}", "--task", str(tiny_corpus.path),
                 "--epochs", "1", "--records", str(tmp_path / "runs.jsonl")]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_crops_come_with_their_rows_and_aligned_starts(tiny_corpus):
    from bench.data.audio import load_audio
    from bench.pretrain.loop import CropSampler

    manifest = tiny_corpus.manifest
    sampler = CropSampler(manifest, ("train",), batch_size=6, crop_samples=9_000, seed=1, align=640)
    wav, lengths, info = sampler.batch(3)
    assert len(info.rows) == 6 and (info.starts % 640 == 0).all()
    for i, row in enumerate(info.rows):
        clip = manifest.table.iloc[row]
        assert clip["clip_id"] == info.clip_ids[i] and clip["split"] == "train"
        audio = load_audio(manifest.resolve(clip["audio_path"]))
        start = int(info.starts[i])
        assert torch.equal(wav[i, :lengths[i]], torch.from_numpy(audio[start:start + 9_000]))
    # A rank's part of the batch is exactly that part of the full batch.
    part_wav, _, part_info = sampler.batch(3, slice(2, 4))
    assert torch.equal(part_wav, wav[2:4]) and part_info.rows == info.rows[2:4]


def test_one_ddp_step_on_two_cpu_processes_equals_the_single_process_step(tiny_corpus, tmp_path):
    """`torchrun --nproc_per_node 2 avbench pretrain ...`: gloo, half the global batch per rank."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # APC without dropout: every crop is a whole 1 s clip, so each rank's loss is a mean over the
    # same number of frames, and the mean of the two ranks' gradients is the full batch's gradient.
    args = ["-q", "pretrain", "apc", "--data", str(tiny_corpus.path), "--steps", "2", "--batch-size", "8",
            "--encoder-arg", "num_layers=2", "--encoder-arg", "hidden_size=32", "--encoder-arg", "dropout=0"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "bench.cli", *args,
                           "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "encoder.pt", weights_only=True)["encoder"]
    two = torch.load(tmp_path / "two" / "encoder.pt", weights_only=True)["encoder"]
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    from bench.pretrain.loop import _seed_of

    torch.manual_seed(_seed_of(0, "init") % 2**63)  # the initial weights, as pretrain() draws them
    start = create_encoder("apc", num_layers=2, hidden_size=32, dropout=0).state_dict()
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-4  # the steps did move the weights
    summary = json.loads((tmp_path / "two" / "pretrain.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 2
    # Both ranks' random states were saved: a 2-process run resumes only with 2 processes.
    with pytest.raises(ConfigError, match="saved by 2 process"):
        pretrain(PretrainConfig(encoder="apc", data=str(tiny_corpus.path), steps=3, batch_size=8,
                                encoder_kwargs={"num_layers": 2, "hidden_size": 32, "dropout": 0}),
                 tmp_path / "two", resume=True, progress=False)
