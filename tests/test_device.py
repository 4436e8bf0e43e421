"""Device placement and mixed precision (bench.device), on the CPU: the options, their errors, the
identities they change and do not change, bf16 pretraining against fp32, and the pretraining
batch producer in loader workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data.feature_cache import FeatureCache
from bench.device import autocast, describe, grad_scaler, resolve_device
from bench.errors import ConfigError
from bench.evaluate.features import ResidentBatches
from bench.evaluate.identity import RunConfig, config_hash
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.registry import create_encoder

SMALL_RESNET = {"stage_channels": [8, 8, 16, 16]}


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as a CPU-only one, even where torch sees a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_device_options_resolve_and_cuda_without_a_gpu_is_a_clear_error(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"--device {spec}: no usable CUDA device here; found torch .*"
                                              r"CUDA device\(s\) visible.*--device cpu"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.parametrize("argv", [
    ["run", "--encoder", "mfcc39", "--task", "embedded:small", "--device", "cuda"],
    ["pretrain", "apc", "--data", "embedded:small", "--steps", "1", "--device", "cuda"],
])
def test_the_cli_says_what_it_found_instead_of_a_traceback(no_cuda, argv, capsys, tmp_path):
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert "no usable CUDA device here" in err and "Traceback" not in err


def test_sweep_refuses_cuda_before_planning(no_cuda, capsys, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("name: t\nrecords: runs.jsonl\ngrid:\n  encoder: [mfcc39]\n  task: [embedded:small]\n")
    assert main(["-q", "sweep", str(config), "--device", "cuda:0"]) == 2
    assert "no usable CUDA device here" in capsys.readouterr().err


def test_a_bad_device_spelling_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--encoder", "mfcc39", "--task", "embedded:small", "--device", "gpu"])
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_describe_names_the_cpu_model_and_precision():
    d = describe(torch.device("cpu"), "bf16")
    assert d["device"] == "cpu" and d["precision"] == "bf16" and d["device_name"]


def test_precision_is_in_the_run_identity_only_when_not_fp32():
    base = RunConfig(encoder="mfcc39", task="embedded:small")
    assert config_hash(RunConfig(encoder="mfcc39", task="embedded:small", precision="fp32"), "m", None) \
        == config_hash(base, "m", None)
    assert config_hash(RunConfig(encoder="mfcc39", task="embedded:small", precision="bf16"), "m", None) \
        != config_hash(base, "m", None)
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        RunConfig(encoder="mfcc39", task="embedded:small", precision="fp8").validated()


def test_precision_is_in_the_cache_key_only_when_not_fp32(tiny_corpus, tmp_path):
    cache = FeatureCache(tmp_path)
    encoder = create_encoder("logmel")
    fp32 = cache.key(encoder, tiny_corpus.manifest)
    assert cache.key(encoder, tiny_corpus.manifest, precision="fp32") == fp32
    assert cache.key(encoder, tiny_corpus.manifest, precision="bf16") != fp32


def test_autocast_and_scaler_are_no_ops_in_fp32_and_active_otherwise():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 8)
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    assert grad_scaler(torch.device("cpu"), "fp16").is_enabled()


def _loss_rows(folder) -> list[dict]:
    import csv

    with open(folder / "loss.csv") as handle:
        return list(csv.DictReader(handle))


# bf16 keeps 8 bits of mantissa: a 20-step curve of the paper's encoder family stays within 2% of
# fp32 at every logged step (measured on this corpus: at most 0.6%, mean 0.16%).
BF16_TOLERANCE = 0.02


def test_bf16_pretraining_on_the_cpu_stays_within_tolerance_of_fp32(tiny_corpus, tmp_path):
    curves = {}
    for precision in ("fp32", "bf16"):
        config = PretrainConfig(encoder="av-audio", data=str(tiny_corpus.manifest.path), steps=20, batch_size=4,
                                log_every=2, encoder_kwargs=SMALL_RESNET, precision=precision)
        summary = pretrain(config, tmp_path / precision, progress=False, device="cpu")
        assert summary["precision"] == precision and summary["device"] == "cpu"
        curves[precision] = np.array([float(r["loss"]) for r in _loss_rows(tmp_path / precision)])
    assert len(curves["fp32"]) == 10
    assert not np.array_equal(curves["fp32"], curves["bf16"])  # bf16 really ran
    relative = np.abs(curves["bf16"] - curves["fp32"]) / np.abs(curves["fp32"])
    assert relative.max() <= BF16_TOLERANCE, relative


def test_fp16_pretraining_scales_the_loss_and_a_resume_must_keep_the_precision(tiny_corpus, tmp_path):
    config = PretrainConfig(encoder="av-audio", data=str(tiny_corpus.manifest.path), steps=2, batch_size=4,
                            encoder_kwargs=SMALL_RESNET, precision="fp16")
    pretrain(config, tmp_path, progress=False, device="cpu")
    saved = torch.load(tmp_path / "checkpoint-last.pt", weights_only=False)
    assert saved["identity"]["precision"] == "fp16" and saved["scaler"]["scale"] > 0
    grown = PretrainConfig(**{**config.__dict__, "steps": 3, "precision": "fp32"})
    with pytest.raises(ConfigError, match="different settings \\(precision\\)"):
        pretrain(grown, tmp_path, resume=True, progress=False, device="cpu")


@pytest.mark.parametrize("encoder,kwargs", [("av-joint", SMALL_RESNET), ("apc", {"num_layers": 1, "hidden_size": 16})])
def test_loader_workers_give_byte_identical_loss_curves(encoder, kwargs, tiny_corpus, tmp_path):
    """The batch of a step is a pure function of (seed, step): 0 or 2 worker processes, same curve."""
    curves = {}
    for workers in (0, 2):
        config = PretrainConfig(encoder=encoder, data=str(tiny_corpus.manifest.path), steps=6, batch_size=4,
                                log_every=1, encoder_kwargs=kwargs, loader_workers=workers)
        summary = pretrain(config, tmp_path / str(workers), progress=False, device="cpu")
        assert summary["config"]["loader_workers"] == workers
        curves[workers] = (tmp_path / str(workers) / "loss.csv").read_bytes()
    assert curves[0] == curves[2]


def test_the_visual_objective_reads_its_frames_in_the_loader_workers(tiny_corpus, tmp_path, monkeypatch):
    """With workers, every step finds its crops' mouth frames already read (CropInfo.extras)."""
    from encoders.visual import VisualPretext

    original, seen = VisualPretext.targets, []

    def targets(self, info, out_lengths, frames):
        seen.append("mouth_frames" in info.extras)
        return original(self, info, out_lengths, frames)

    monkeypatch.setattr(VisualPretext, "targets", targets)
    config = PretrainConfig(encoder="av-visual", data=str(tiny_corpus.manifest.path), steps=3, batch_size=4,
                            encoder_kwargs=SMALL_RESNET, loader_workers=1)
    pretrain(config, tmp_path, progress=False, device="cpu")
    assert seen[:3] == [True, True, True]


def test_resident_batches_equal_the_streaming_loader_batches(tiny_corpus, tmp_path):
    """Features held on the device give the same batches, in the same order, as the DataLoader."""
    from torch.utils.data import DataLoader

    from bench.data.datasets import CachedFeatureDataset, pad_collate

    cached = FeatureCache(tmp_path).get_or_build(create_encoder("logmel"), tiny_corpus.manifest, progress=False)
    clip_ids = tiny_corpus.manifest.table["clip_id"].tolist()[:21]
    labels = list(range(len(clip_ids)))
    stream = DataLoader(CachedFeatureDataset(cached, clip_ids, labels), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(3), collate_fn=pad_collate)
    resident = ResidentBatches(cached, clip_ids, labels, torch.device("cpu"), 4, shuffle=True,
                               generator=torch.Generator().manual_seed(3))
    pairs = list(zip(stream, resident, strict=True))
    assert len(pairs) == 6
    for (x, n, y), (rx, rn, ry) in pairs:
        assert torch.equal(x, rx) and torch.equal(n, rn) and torch.equal(y, ry)


def test_a_run_record_names_device_and_precision_and_bf16_is_another_run(tiny_corpus, tmp_path):
    from bench.evaluate.run import run_experiment

    records = tmp_path / "runs.jsonl"
    common = dict(encoder="logmel", task=str(tiny_corpus.manifest.path), epochs=1, batch_size=8, hidden=8, layers=1)
    fp32 = run_experiment(RunConfig(**common), records, progress=False, device="cpu")
    bf16 = run_experiment(RunConfig(**common, precision="bf16"), records, progress=False, device="cpu")
    assert (fp32["device"], fp32["precision"]) == ("cpu", "fp32") and fp32["device_name"]
    assert bf16["precision"] == "bf16" and bf16["config_hash"] != fp32["config_hash"]
    assert [json.loads(line)["precision"] for line in records.read_text().splitlines()] == ["fp32", "bf16"]


def test_building_a_feature_cache_leaves_the_global_torch_stream_alone(tiny_corpus, tmp_path):
    """A pretext built after its target cache must start from the same weights on a miss and a hit."""
    draws = []
    for _ in range(2):  # the first call builds the entry, the second finds it
        torch.manual_seed(0)
        FeatureCache(tmp_path).get_or_build(create_encoder("logmel"), tiny_corpus.manifest, progress=False)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])


def test_loader_workers_default_to_none_on_the_cpu_and_the_cores_on_a_gpu(monkeypatch):
    from bench.pretrain.loop import auto_loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert auto_loader_workers(torch.device("cpu")) == 0
    assert auto_loader_workers(torch.device("cuda", 0)) == 8
    assert auto_loader_workers(torch.device("cuda", 0), processes=4) == 3


def test_the_saved_encoder_state_keeps_its_type_and_module_metadata():
    """encoder.pt holds state_dict() as it is (an OrderedDict with `_metadata`), moved to the host."""
    from bench.pretrain.loop import host_state_dict

    encoder = create_encoder("av-audio", **SMALL_RESNET)
    state = host_state_dict(encoder)
    assert type(state) is type(encoder.state_dict()) and state._metadata == encoder.state_dict()._metadata
