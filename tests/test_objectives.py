"""The objectives registry (bench.pretrain.objective): objectives apart from encoders, the
encoder's own as the default (so every committed identity stays), what each objective needs,
`avbench list --objectives`, plugin objectives, sweep entries with `objective:` and the tables'
grouping of what an objective trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import ConfigError
from bench.pretrain import objective as objectives
from bench.pretrain.loop import PretrainConfig
from bench.pretrain.stage import pretraining_identity
from bench.registry import create_encoder
from bench.results.tables import display_name, group_of

REPO = Path(__file__).resolve().parents[1]


def test_every_committed_pretraining_identity_is_unchanged():
    """The identities of the committed checkpoints, recomputed by today's code: those made before
    objectives were separate name none and get the encoder's own."""
    records = [json.loads(line) for line in (REPO / "results" / "runs.pretraining.jsonl").read_text().splitlines()]
    own = [r for r in records if "objective" not in r["settings"]]
    assert len(own) >= 7
    for r in records:
        settings = {k: v for k, v in r["settings"].items() if k != "splits"}
        config = PretrainConfig(**settings, splits=tuple(r["settings"]["splits"]))
        assert pretraining_identity(config, r["manifest_id"], r["total_steps"]) == r["identity"], r["name"]


def test_naming_the_encoders_own_objective_is_naming_none():
    plain = PretrainConfig(encoder="apc", data="embedded:small", steps=4)
    named = PretrainConfig(encoder="apc", data="embedded:small", steps=4, objective="apc").validated()
    assert named.objective is None and named.identity() == plain.validated().identity()
    assert "objective" not in plain.validated().identity()
    assert pretraining_identity(named, "m", 4) == pretraining_identity(plain, "m", 4)
    other = PretrainConfig(encoder="resnet18", data="embedded:small", steps=4, objective="dino").validated()
    assert other.identity()["objective"] == "dino"
    assert pretraining_identity(other, "m", 4) != pretraining_identity(
        PretrainConfig(encoder="resnet18", data="embedded:small", steps=4, objective="simclr"), "m", 4)


def test_an_objective_that_does_not_fit_or_is_missing_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown objective 'byol'.*dino"):
        PretrainConfig(encoder="resnet18", data="x", steps=1, objective="byol").validated()
    with pytest.raises(ConfigError, match="'resnet18' has no objective of its own; choose one with --objective"):
        PretrainConfig(encoder="resnet18", data="x", steps=1).validated()
    with pytest.raises(ConfigError, match="objective 'apc' does not fit encoder 'resnet18': it trains only apc"):
        objectives.check_fits("apc", create_encoder("resnet18"))
    with pytest.raises(ConfigError, match="'mfcc39': mfcc39 has no trainable parameters"):
        objectives.check_fits("simclr", create_encoder("mfcc39"))
    assert objectives.ObjectiveNeeds(frame_rate=25.0).misfits(create_encoder("apc")) == \
        ["it needs frames at 25 Hz, apc gives 100 Hz"]


def test_list_objectives_says_what_each_needs_and_fits(capsys):
    assert main(["list", "--objectives", "--json"]) == 0
    rows = {r["objective"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"simclr", "moco", "dino", "supervised", "apc", "av-joint"} <= set(rows)
    for name in ("simclr", "moco", "dino", "supervised"):
        assert {"resnet18", "av-joint", "apc"} <= set(rows[name]["fits"]) and "mfcc39" not in rows[name]["fits"]
    assert rows["apc"]["fits"] == ["apc"] and rows["apc"]["own_objective_of"] == ["apc"]
    assert "labels" in rows["supervised"]["needs"] and "mouth frames" in rows["av-joint"]["needs"]
    assert main(["list", "--objectives"]) == 0
    assert "dino" in capsys.readouterr().out


PLUGIN = '''
from bench.pretrain.objective import ObjectiveNeeds, Pretext, register_objective


class Silence(Pretext):
    def __init__(self, encoder, context):
        super().__init__()
        self.encoder = encoder

    def forward(self, wav, lengths, info=None):
        feats, _ = self.encoder(wav, lengths)
        return {"loss": feats.pow(2).mean()}


@register_objective("silence-demo", needs=ObjectiveNeeds(min_dim=100))
def silence(encoder, context):
    """Drive every feature to zero (a plugin objective)."""
    return Silence(encoder, context)
'''


def test_a_plugin_objective_registers_through_its_entry_point(monkeypatch, tmp_path):
    objectives.list_objectives()  # the built-ins into the real table first
    for table in ("_PRETEXTS", "_VERSIONS", "_NEEDS"):
        monkeypatch.setattr(objectives, table, dict(getattr(objectives, table)))
    monkeypatch.setattr(objectives, "_OBJECTIVES_LOADED", False)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "avb_objective_demo").mkdir()
    (tmp_path / "avb_objective_demo" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "avb_objective_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avb-objective-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[avbench.objectives]\nsilence-demo = avb_objective_demo:silence\n")
    try:
        assert "silence-demo" in objectives.list_objectives()
        assert objectives.objective_needs("silence-demo").min_dim == 100
        objectives.check_fits("silence-demo", create_encoder("resnet18"))  # 512 >= 100
        with pytest.raises(ConfigError, match="at least 100 dimensions, apc gives"):
            objectives.check_fits("silence-demo", create_encoder("apc", hidden_size=16))
    finally:
        sys.modules.pop("avb_objective_demo", None)


def test_a_sweep_entry_takes_an_objective_and_a_label_column(tmp_path):
    from bench.sweep.config import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: t\ntasks: [embedded:small]\nseeds: 1\nmodes: [frozen]\n"
        "encoders: ['resnet18@pretrained:dino', 'resnet18@pretrained:spk', 'av-joint@pretrained:av-dino']\n"
        "pretraining:\n"
        "  dino: {encoder: resnet18, objective: dino, data: embedded:small, steps: 4}\n"
        "  spk: {encoder: resnet18, objective: supervised, label_column: speaker, data: embedded:small, steps: 4}\n"
        "  av-dino: {encoder: av-joint, objective: dino, data: embedded:small, steps: 4}\n")
    sweep = load_sweep(path)
    assert sweep.pretraining["dino"].objective == "dino"
    assert sweep.pretraining["spk"].pretext_kwargs == {"label_column": "speaker"}
    assert sweep.pretraining["av-dino"].encoder == "av-joint"
    path.write_text(path.read_text().replace("label_column: speaker", "label_column: speaker, "
                                             "pretext_args: {label_column: emotion}"))
    with pytest.raises(ConfigError, match="pretraining.spk: label_column and pretext_args.label_column disagree"):
        load_sweep(path)
    path.write_text(path.read_text().replace(", pretext_args: {label_column: emotion}", "")
                    .replace("objective: dino, data", "objective: apc, data", 1))
    with pytest.raises(ConfigError, match="pretraining.dino: objective 'apc' does not fit encoder 'resnet18'"):
        load_sweep(path)


def test_tables_group_a_checkpoint_by_the_objective_that_trained_it():
    record = {"encoder": "resnet18@0123abcd", "pretraining_objective": "supervised", "pretraining_labels": "speaker"}
    assert display_name(record) == "resnet18+supervised[speaker]@0123abcd"
    assert display_name({"encoder": "resnet18@0123abcd", "pretraining_objective": "dino"}) == "resnet18+dino@0123abcd"
    assert display_name({"encoder": "apc@0123abcd"}) == "apc@0123abcd"
    assert group_of("resnet18", "frozen", "supervised") == "supervised"
    assert group_of("resnet18", "frozen", "dino") == "speaker self-supervised"
    assert group_of("av-joint", "frozen", None) == "proposed"
    assert group_of("av-joint", "frozen", "simclr") == "speaker self-supervised"
