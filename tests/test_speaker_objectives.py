"""The objectives not tied to an encoder (objectives/): simclr, moco, dino and supervised on the
1D ResNet18, through the shared pretraining loop.

For each: its loss falls over a few steps on the tiny corpus, a killed run resumes to the weights
of an uninterrupted one (the momentum teachers, the queue and the DINO center included), and the
checkpoint loads as a frozen encoder. For DINO, the teacher neither collapses onto one dimension
nor spreads uniformly after a short run, and without centering it does collapse (so the check can
fail). A narrow ResNet and small heads keep each run to seconds.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bench.evaluate.identity import RunConfig
from bench.evaluate.run import run_experiment
from bench.pretrain.loop import PretrainConfig, pretrain
from bench.registry import create_encoder

NARROW = {"stage_channels": (8, 16, 16, 32)}
SMALL_HEADS = {
    "simclr": {"hidden_dim": 64, "output_dim": 32},
    "moco": {"hidden_dim": 64, "output_dim": 32, "queue_size": 32},
    "dino": {"hidden_dim": 64, "bottleneck_dim": 32, "output_dim": 64, "momentum": 0.9},
    "supervised": {"label_column": "speaker"},
}


def _config(corpus, objective: str, **changes) -> PretrainConfig:
    settings = dict(encoder="resnet18", objective=objective, data=str(corpus.path), steps=24, batch_size=4,
                    lr=5e-3, encoder_kwargs=NARROW, pretext_kwargs=SMALL_HEADS[objective], save_every=1000,
                    log_every=2, seed=1)
    return PretrainConfig(**{**settings, **changes})


def _curve(folder) -> list[dict]:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader((folder / "loss.csv").open())]


def _weights(folder) -> dict:
    return torch.load(folder / "encoder.pt", weights_only=True)["encoder"]


# MoCo's first keys are contrasted with a queue of random vectors, easy negatives: its loss rises
# while the queue fills with real keys (2 steps here), so its curve is compared from then on, over
# a longer run of bigger batches without augmentation (with it, 60 steps of this narrow network
# are too noisy to show a trend). DINO's falling loss is checked with its entropies below.
FALLS = {
    "simclr": ({}, 0),
    "moco": ({"steps": 60, "batch_size": 8, "lr": 2e-3,
              "pretext_kwargs": {**SMALL_HEADS["moco"], "queue_size": 16, "augment": False}}, 1),
    "supervised": ({}, 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(FALLS))
def test_the_loss_falls_over_a_few_steps(objective, tiny_corpus, tmp_path):
    changes, skip = FALLS[objective]
    pretrain(_config(tiny_corpus, objective, **changes), tmp_path / objective, progress=False, device="cpu")
    losses = [row["loss"] for row in _curve(tmp_path / objective)][skip:]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (objective, losses)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["simclr", "moco", "dino", "supervised"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(objective, tiny_corpus, tmp_path):
    config = _config(tiny_corpus, objective, steps=6, save_every=2)
    pretrain(config, tmp_path / "straight", progress=False, device="cpu")
    pretrain(config, tmp_path / "killed", progress=False, device="cpu", stop_after=3)  # killed after step 3
    pretrain(config, tmp_path / "killed", resume=True, progress=False, device="cpu")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # The objective's own state too: teachers, queue, center.
    a = torch.load(tmp_path / "straight" / "checkpoint-last.pt", weights_only=False)["pretext"]
    b = torch.load(tmp_path / "killed" / "checkpoint-last.pt", weights_only=False)["pretext"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["simclr", "moco", "dino", "supervised"])
def test_the_checkpoint_loads_as_a_frozen_encoder(objective, tiny_corpus, tmp_path):
    pretrain(_config(tiny_corpus, objective, steps=2), tmp_path / "run", progress=False, device="cpu")
    saved = torch.load(tmp_path / "run" / "encoder.pt", weights_only=True)
    assert saved["objective"] == objective
    assert saved["labels"] == ("speaker" if objective == "supervised" else None)
    encoder = create_encoder(f"resnet18@{tmp_path / 'run' / 'encoder.pt'}", **NARROW)
    assert all(torch.equal(v, saved["encoder"][k]) for k, v in encoder.state_dict().items())
    assert not torch.equal(encoder.backbone.front[0].weight, create_encoder("resnet18", **NARROW).backbone.front[0].weight)


@pytest.mark.slow
def test_a_supervised_checkpoint_is_recorded_with_the_labels_it_saw(tiny_corpus, tmp_path):
    pretrain(_config(tiny_corpus, "supervised", steps=2), tmp_path / "run", progress=False, device="cpu")
    config = RunConfig.from_dict({"encoder": f"resnet18@{tmp_path / 'run' / 'encoder.pt'}",
                                  "task": str(tiny_corpus.path), "epochs": 1, "encoder_kwargs": NARROW})
    record = run_experiment(config, tmp_path / "runs.jsonl", progress=False, device="cpu")
    assert record["mode"] == "frozen"
    assert (record["pretraining_objective"], record["pretraining_labels"]) == ("supervised", "speaker")


def _dino_entropies(corpus, folder, centering: bool) -> tuple[float, float, float, float]:
    """DINO for 40 steps: (mean teacher entropy, entropy of the batch-mean teacher distribution, over
    the last three logged rows; log of the output dimension; first and last loss)."""
    config = _config(corpus, "dino", steps=40, pretext_kwargs={**SMALL_HEADS["dino"], "centering": centering})
    pretrain(config, folder, progress=False, device="cpu")
    rows = _curve(folder)
    tail = rows[-3:]
    return (sum(r["teacher_entropy"] for r in tail) / 3, sum(r["teacher_batch_entropy"] for r in tail) / 3,
            math.log(SMALL_HEADS["dino"]["output_dim"]), (rows[0]["loss"], rows[-1]["loss"]))


def _collapsed(batch_entropy: float, log_k: float) -> bool:
    """Every clip sends the teacher to (nearly) the same dimension."""
    return batch_entropy < 0.15 * log_k


def _uniform(entropy: float, log_k: float) -> bool:
    """The teacher's distributions are (nearly) flat."""
    return entropy > 0.9 * log_k


@pytest.mark.slow
def test_dino_teacher_neither_collapses_nor_goes_uniform_and_its_loss_falls(tiny_corpus, tmp_path):
    entropy, batch_entropy, log_k, (first, last) = _dino_entropies(tiny_corpus, tmp_path / "dino", centering=True)
    assert not _collapsed(batch_entropy, log_k), (entropy, batch_entropy, log_k)
    assert not _uniform(entropy, log_k), (entropy, batch_entropy, log_k)
    assert last < first


@pytest.mark.slow
def test_dino_without_centering_collapses(tiny_corpus, tmp_path):
    """The check above can fail: with centering removed, the same run collapses onto one dimension."""
    entropy, batch_entropy, log_k, _ = _dino_entropies(tiny_corpus, tmp_path / "dino", centering=False)
    assert _collapsed(batch_entropy, log_k), (entropy, batch_entropy, log_k)
