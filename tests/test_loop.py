"""The shared downstream loop: model, label subsets, runs, records, sweeps, tables and the CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.data.datasets import label_subset
from bench.errors import ConfigError
from bench.evaluate.downstream import BiGRUClassifier
from bench.evaluate.identity import RunConfig
from bench.evaluate.run import run_experiment
from bench.records import append_record, read_records
from bench.registry import Encoder, _REGISTRY, register_encoder
from bench.results.write import write_tables
from bench.sweep.config import load_sweep
from bench.sweep.run import run_sweep

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def conv_encoder():
    """A tiny trainable raw-audio encoder, registered for the finetune and scratch tests."""

    class TinyConv(Encoder):
        frame_rate, dim = 100.0, 8

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 8, kernel_size=400, stride=160, padding=200)

        def forward(self, wav, lengths):
            return self.conv(wav[:, None]).transpose(1, 2), self.output_lengths(lengths)

    register_encoder("tiny-conv-test")(TinyConv)
    yield "tiny-conv-test"
    _REGISTRY.pop("tiny-conv-test", None)


def _config(tiny_corpus, **kw) -> RunConfig:
    values = dict(encoder="mfcc39", task=str(tiny_corpus.path), epochs=2, lr=1e-3, batch_size=8, seed=3)
    values.update(kw)
    return RunConfig.from_dict(values)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_never_leaks_into_the_classifier(pooling):
    torch.manual_seed(0)
    model = BiGRUClassifier(5, 4, hidden=16, pooling=pooling).eval()
    clip = torch.randn(1, 7, 5)
    alone = model(clip, torch.tensor([7]))
    padded = torch.cat([clip, torch.full((1, 5, 5), 1e3)], dim=1)  # loud garbage as padding
    batch = torch.cat([padded, torch.randn(1, 12, 5)])
    together = model(batch, torch.tensor([7, 12]))
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)
    # With no padding in the batch the plain path is taken; it must equal the packed one.
    full = torch.randn(3, 9, 5)
    plain = model(full, torch.tensor([9, 9, 9]))
    packed = model(torch.cat([full, torch.zeros(3, 1, 5)], dim=1), torch.tensor([9, 9, 9]))
    torch.testing.assert_close(plain, packed, atol=1e-5, rtol=1e-5)


def test_label_subsets_are_class_balanced_and_nested(small_corpus):
    train = small_corpus.manifest.split("train")
    previous = set(train["clip_id"])
    for fraction in (0.5, 0.2, 0.1, 0.05):
        subset = label_subset(train, fraction)
        ids = set(subset["clip_id"])
        assert ids <= previous, f"the {fraction} subset is not inside the larger one"
        counts = subset["label"].value_counts()
        assert counts.max() - counts.min() <= 1 and counts.index.nunique() == train["label"].nunique()
        previous = ids
    with pytest.raises(ValueError):
        label_subset(train, 0.0)


def test_run_is_deterministic_recorded_and_skipped(tiny_corpus, tmp_path):
    config = _config(tiny_corpus)
    first = run_experiment(config, tmp_path / "a.jsonl", progress=False)
    second = run_experiment(config, tmp_path / "b.jsonl", progress=False)
    assert first["history"] != [] and len(first["history"]) == 2
    for key in ("test_acc", "val_acc", "best_epoch", "confusion"):
        assert first[key] == second[key]
    assert [h["train_loss"] for h in first["history"]] == [h["train_loss"] for h in second["history"]]
    # The second run reads the feature cache: no encoder forward pass.
    assert first["counters"]["encoder_forward_clips"] == len(tiny_corpus.manifest.table)
    counts = {k: v for k, v in second["counters"].items() if k != "feature_seconds"}
    assert counts == {"encoder_forward_clips": 0, "cache_hits": 1, "cache_misses": 0}
    # The feature stage's time is its own counter, a part of the run's wall time.
    assert 0 < first["counters"]["feature_seconds"] <= first["wall_seconds"]
    assert 0 <= second["counters"]["feature_seconds"] < first["counters"]["feature_seconds"]
    for key in ("config_hash", "manifest_id", "train_subset_hash", "git_commit", "per_class_test_acc",
                "wall_seconds", "avbench_version"):
        assert key in first
    assert len(first["confusion"]) == 3 and sum(map(sum, first["confusion"])) == 6

    again = run_experiment(config, tmp_path / "a.jsonl", progress=False)
    assert again["skipped"] and len(read_records(tmp_path / "a.jsonl")) == 1
    forced = run_experiment(config, tmp_path / "a.jsonl", progress=False, force=True)
    assert not forced.get("skipped") and len(read_records(tmp_path / "a.jsonl")) == 2


def test_changed_setting_or_label_fraction_is_a_new_run(tiny_corpus, tmp_path):
    records = tmp_path / "runs.jsonl"
    a = run_experiment(_config(tiny_corpus, epochs=1), records, progress=False)
    b = run_experiment(_config(tiny_corpus, epochs=1, label_fraction=0.5), records, progress=False)
    assert a["config_hash"] != b["config_hash"] and b["train_clips"] < a["train_clips"]
    assert a["train_subset_hash"] != b["train_subset_hash"]


def test_finetune_and_scratch_train_the_encoder(tiny_corpus, tmp_path, conv_encoder):
    for mode in ("finetune", "scratch"):
        record = run_experiment(_config(tiny_corpus, encoder=conv_encoder, mode=mode, epochs=1, encoder_lr=1e-4),
                                tmp_path / "runs.jsonl", progress=False)
        assert record["mode"] == mode and record["encoder_params"] > 0
        # Every epoch passes train and valid clips through the encoder, plus the test clips once.
        assert record["counters"]["encoder_forward_clips"] == 36 + 6 + 6
    with pytest.raises(ConfigError, match="no trainable parameters"):
        run_experiment(_config(tiny_corpus, mode="finetune"), tmp_path / "x.jsonl", progress=False)
    with pytest.raises(ConfigError, match="drop the checkpoint"):
        _config(tiny_corpus, encoder=f"{conv_encoder}@x.pt", mode="scratch")


def test_a_random_encoder_is_the_same_network_for_a_seed_whatever_ran_before(tiny_corpus, tmp_path, conv_encoder):
    config = _config(tiny_corpus, encoder=conv_encoder, mode="frozen", epochs=1)
    first = run_experiment(config, tmp_path / "a.jsonl", progress=False)
    torch.rand(17)  # an earlier run in the same worker leaves the global generator elsewhere
    second = run_experiment(config, tmp_path / "b.jsonl", progress=False)
    # Same weights, so the same cache entry: the random network is not encoded twice.
    assert {k: v for k, v in second["counters"].items() if k != "feature_seconds"} == {
        "encoder_forward_clips": 0, "cache_hits": 1, "cache_misses": 0}
    assert second["test_acc"] == first["test_acc"]
    assert [h["train_loss"] for h in second["history"]] == [h["train_loss"] for h in first["history"]]
    other_seed = run_experiment(_config(tiny_corpus, encoder=conv_encoder, mode="frozen", epochs=1, seed=4),
                                tmp_path / "c.jsonl", progress=False)
    assert other_seed["counters"]["cache_misses"] == 1


def test_scratch_starts_from_the_encoders_own_initialiser(tiny_corpus, tmp_path, monkeypatch):
    import bench.evaluate.run

    class ConstantInit(Encoder):
        frame_rate, dim = 100.0, 4

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 4, kernel_size=400, stride=160, padding=200)
            nn.init.constant_(self.conv.weight, 0.5)  # an init torch's default reset would replace

        def forward(self, wav, lengths):
            return self.conv(wav[:, None]).transpose(1, 2), self.output_lengths(lengths)

    built = []
    create = bench.evaluate.run.create_encoder
    monkeypatch.setattr(bench.evaluate.run, "create_encoder", lambda *a, **kw: built.append(create(*a, **kw)) or built[-1])
    register_encoder("constant-init-test")(ConstantInit)
    try:
        # An encoder lr so small that Adam's steps (about lr each) leave the weights where they began.
        run_experiment(_config(tiny_corpus, encoder="constant-init-test", mode="scratch", epochs=1, encoder_lr=1e-12),
                       tmp_path / "runs.jsonl", progress=False)
    finally:
        _REGISTRY.pop("constant-init-test", None)
    torch.testing.assert_close(built[0].conv.weight.detach(), torch.full((4, 1, 400), 0.5), atol=1e-9, rtol=0)


def test_bad_run_settings_name_the_field():
    with pytest.raises(ConfigError, match="mode must be one of"):
        RunConfig.from_dict({"encoder": "mfcc39", "task": "x", "mode": "thaw"})
    with pytest.raises(ConfigError, match=r"unknown run setting\(s\) \['epoch'\]"):
        RunConfig.from_dict({"encoder": "mfcc39", "task": "x", "epoch": 3})
    with pytest.raises(ConfigError, match="not a manifest"):
        run_experiment(RunConfig(encoder="mfcc39", task="no-such-corpus"), "/tmp/unused.jsonl", progress=False)


def test_paper_protocol_is_the_default():
    config = RunConfig(encoder="mfcc39", task="x")
    assert (config.epochs, config.lr, config.batch_size, config.pooling) == (50, 1e-4, 32, "last")
    assert [config.lr_at(e) for e in (1, 40, 41, 50)] == [1e-4, 1e-4, 1e-5, 1e-5]


def test_records_survive_a_torn_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_record(path, {"status": "ok", "config_hash": "a"})
    with open(path, "a") as fh:
        fh.write('{"status": "ok", "config_ha')  # a crash mid-write
    append_record(path, {"status": "ok", "config_hash": "b"})
    assert [r["config_hash"] for r in read_records(path)] == ["a", "b"]


def test_sweep_records_failures_goes_on_and_resumes(tiny_corpus, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
name: test
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39, no-such-encoder]
seeds: [0, 1]
train: {{epochs: 1, lr: 1.0e-3, batch_size: 8}}
records: {tmp_path / 'runs.jsonl'}
tables: {tmp_path / 'results'}
""")
    assert main(["-q", "sweep", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("FAILED") == 2 and "unknown encoder 'no-such-encoder'" in err
    records = read_records(tmp_path / "runs.jsonl")
    assert [r["status"] for r in records].count("ok") == 2
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and "Traceback" in failed[0]["traceback"]
    # Re-running does no new training for the recorded runs, and retries only the failed ones.
    sweep = load_sweep(config)
    summary = run_sweep(sweep, progress=False)
    assert summary["ran"] == 0 and summary["skipped"] == 2 and len(summary["failed"]) == 2
    # Deleting one record re-runs only that run.
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    kept = [l for l in lines if not (json.loads(l).get("seed") == 1 and json.loads(l)["status"] == "ok")]
    (tmp_path / "runs.jsonl").write_text("\n".join(kept) + "\n")
    summary = run_sweep(load_sweep(config), progress=False)
    assert summary["ran"] == 1 and summary["skipped"] == 1


def test_bad_sweep_configs_are_refused_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [x]\nencoders: [mfcc39]\nseed: [0]\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['seed'\]"):
        load_sweep(bad)
    bad.write_text("tasks: [x]\nencoders: [mfcc39]\ntrain: {epochs: 0}\n")
    with pytest.raises(ConfigError, match="epochs and batch_size must be positive"):
        load_sweep(bad)
    bad.write_text("tasks: [x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)


def test_tables_are_a_pure_byte_identical_function_of_the_records(tiny_corpus, tmp_path):
    records = tmp_path / "runs.jsonl"
    for seed in (0, 1):
        run_experiment(_config(tiny_corpus, epochs=1, seed=seed), records, progress=False)
    run_experiment(_config(tiny_corpus, epochs=1, seed=0, label_fraction=0.5), records, progress=False)
    first = [p.read_bytes() for p in write_tables(records, tmp_path / "a")]
    second = [p.read_bytes() for p in write_tables(records, tmp_path / "b")]
    assert first == second
    markdown = first[0].decode()
    assert "| hand-crafted | mfcc39 | frozen |" in markdown and "| 100% | 50% |" in markdown
    # The only row is best in both columns (bold); the 50% cell has 1 of the table's 2 seeds (dagger).
    assert re.search(r"\| mfcc39 \| frozen \| \*\*\d+\.\d\d ± \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \(2\)\*\* \| "
                     r"\*\*\d+\.\d\d ± n/a \[\d+\.\d\d, \d+\.\d\d\] \(1\)†\*\* \|", markdown)
    assert "Budget: 1 epoch; Adam, lr 0.001" in markdown


def test_tables_never_mix_records_from_two_builds_of_the_same_task(tmp_path):
    # `embedded:default` names a corpus spec; a new generator version gives a new corpus id, and
    # its numbers must not be averaged with the old corpus's as if they were extra seeds.
    config = {"epochs": 5, "lr": 1e-3, "lr_drop_epoch": 4, "lr_after_drop": 1e-4, "batch_size": 32,
              "pooling": "last", "hidden": 256, "layers": 2, "encoder_lr": None}
    lines = []
    for corpus, acc in (("embedded-aaaaaaaaaaaa", 0.80), ("embedded-bbbbbbbbbbbb", 0.90)):
        lines.append(json.dumps({"status": "ok", "config_hash": corpus, "task": "embedded:default",
                                 "task_name": corpus, "encoder": "mfcc39", "mode": "frozen",
                                 "label_fraction": 1.0, "seed": 0, "test_acc": acc, "val_acc": acc,
                                 "best_epoch": 5, "wall_seconds": 1.0, "config": config}))
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    markdown = write_tables(tmp_path / "runs.jsonl", tmp_path)[0].read_text()
    assert re.findall(r"## Table \d+\. Words, embedded:default\n", markdown) == [
        "## Table 1. Words, embedded:default\n", "## Table 2. Words, embedded:default\n"]
    assert "corpus `embedded-aaaaaaaaaaaa`" in markdown and "corpus `embedded-bbbbbbbbbbbb`" in markdown
    assert "| mfcc39 | frozen | **80.00 ± n/a [n/a] (1)** |" in markdown
    assert "| mfcc39 | frozen | **90.00 ± n/a [n/a] (1)** |" in markdown


def test_cli_list_shows_dims_and_rates(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mfcc39"]["dim"] == 39 and rows["mfcc39"]["frame_rate"] == 100
    assert rows["logmel"]["dim"] == 80 and rows["logmel"]["params"] == 0


def _readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {re.escape(marker)} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"README has no example marked {marker}"
    return match.group(1)


def test_readme_add_your_own_encoder_example_runs_as_written(small_corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_encoder.py").write_text(_readme_block("my_encoder.py"))
    command = shlex.split(_readme_block("command").strip())
    assert command[0] == "avbench"
    monkeypatch.chdir(tmp_path)
    try:
        assert main(command[1:]) == 0
    finally:
        _REGISTRY.pop("frame-energy", None)
    out = capsys.readouterr().out
    assert "frame-energy on embedded:small" in out and "test accuracy" in out
    assert read_records(tmp_path / "my_runs.jsonl")[0]["encoder"] == "frame-energy"


def test_a_killed_run_resumes_from_its_last_epoch_with_identical_results(tiny_corpus, tmp_path, monkeypatch):
    import bench.evaluate.training as training

    config = _config(tiny_corpus, epochs=3, seed=11)
    reference = run_experiment(config, tmp_path / "reference.jsonl", progress=False)

    real_predict, calls = training.predict, {"n": 0}

    def dies_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # validation of epoch 3: epochs 1-2 are checkpointed
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(training, "predict", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "resumed.jsonl", progress=False)
    assert read_records(tmp_path / "resumed.jsonl") == []
    monkeypatch.setattr(training, "predict", real_predict)
    resumed = run_experiment(config, tmp_path / "resumed.jsonl", progress=False)
    assert resumed["resumed_from_epoch"] == 3 and reference["resumed_from_epoch"] is None
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed["history"]) == strip(reference["history"])
    for key in ("test_acc", "val_acc", "best_epoch", "confusion", "config_hash", "test_predictions"):
        assert resumed[key] == reference[key]
    assert not training.state_path(resumed["config_hash"]).exists(), "a finished run leaves no checkpoint"


def test_a_checkpoint_counts_by_content_not_path(tiny_corpus, tmp_path):
    import shutil

    from bench.pretrain.loop import PretrainConfig, pretrain

    pretrain(PretrainConfig(encoder="apc", data=str(tiny_corpus.path), steps=1, batch_size=4,
                            encoder_kwargs={"num_layers": 1, "hidden_size": 16}), tmp_path / "a", progress=False)
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "a" / "encoder.pt", tmp_path / "moved" / "encoder.pt")
    records = tmp_path / "runs.jsonl"
    kwargs = dict(task=str(tiny_corpus.path), epochs=1, encoder_kwargs={"num_layers": 1, "hidden_size": 16})
    first = run_experiment(RunConfig(encoder=f"apc@{tmp_path / 'a' / 'encoder.pt'}", **kwargs), records, progress=False)
    again = run_experiment(RunConfig(encoder=f"apc@{tmp_path / 'moved' / 'encoder.pt'}", **kwargs), records,
                           progress=False)
    assert again.get("skipped") and again["config_hash"] == first["config_hash"]
    assert first["encoder"] == f"apc@{first['checkpoint_hash'][:8]}"  # tables show no local path


def test_records_carry_per_clip_predictions_k_shot_subsets_and_a_step_budget(tiny_corpus, tmp_path):
    from bench.evaluate.scoring import clip_order_hash

    records = tmp_path / "runs.jsonl"
    full = run_experiment(_config(tiny_corpus, epochs=1), records, progress=False)
    test = tiny_corpus.manifest.split("test")
    labels = full["labels"]
    assert full["test_targets"] == [labels.index(x) for x in test["label"]]
    assert len(full["test_predictions"]) == len(test)
    assert full["test_clip_ids_hash"] == clip_order_hash(test["clip_id"].tolist())
    hits = sum(t == p for t, p in zip(full["test_targets"], full["test_predictions"]))
    assert full["metrics"]["accuracy"] == full["test_acc"] == round(hits / len(test), 6)
    assert full["budget"] == {"unit": "epochs", "value": 1} and full["task_type"] == "words"

    one_shot = run_experiment(_config(tiny_corpus, epochs=1, k_shot=1), records, progress=False)
    assert one_shot["train_clips"] == len(labels) and one_shot["k_shot"] == 1
    assert one_shot["config_hash"] != full["config_hash"]

    # 7 optimizer steps over 2 rounds (3 + 4), whatever the size of the labelled subset.
    steps = run_experiment(_config(tiny_corpus, epochs=2, k_shot=1, budget_steps=7), records, progress=False)
    assert [h["steps"] for h in steps["history"]] == [3, 4]
    assert steps["budget"] == {"unit": "steps", "value": 7}
    with pytest.raises(ConfigError, match="budget_steps"):
        _config(tiny_corpus, epochs=5, budget_steps=2).validated()
    with pytest.raises(ConfigError, match="k_shot"):
        _config(tiny_corpus, k_shot=2, label_fraction=0.5).validated()


def test_settings_added_later_keep_the_hashes_of_earlier_records():
    # The committed reference records were hashed before task_type, k_shot, budget_steps,
    # eval_tasks and label_map existed; at their defaults these must not change any hash.
    from bench.evaluate.identity import config_hash

    config = RunConfig(encoder="mfcc39", task="embedded:default", epochs=5, lr=1e-3, lr_drop_epoch=4,
                       lr_after_drop=1e-4)
    assert config_hash(config, "39340193f535afe8", None) == "ed682ec8ba995d9f"
    assert config_hash(RunConfig(**{**config.__dict__, "k_shot": 1}), "39340193f535afe8", None) != "ed682ec8ba995d9f"


def test_a_run_already_running_elsewhere_is_waited_for_not_trained_twice(tiny_corpus, tmp_path):
    import threading

    import bench.evaluate.identity as identity

    config = _config(tiny_corpus, epochs=1, seed=21)
    finished_elsewhere = run_experiment(config, tmp_path / "elsewhere.jsonl", progress=False)
    records, outcome = tmp_path / "runs.jsonl", {}
    with identity.exclusive_run(finished_elsewhere["config_hash"]):  # another process is running it
        waiter = threading.Thread(target=lambda: outcome.update(run_experiment(config, records, progress=False)))
        waiter.start()
        waiter.join(timeout=3.0)
        assert waiter.is_alive() and read_records(records) == []  # it waits instead of training
        append_record(records, finished_elsewhere)  # ... until the other process records the run
    waiter.join(timeout=60)
    assert outcome["skipped"] and outcome["config_hash"] == finished_elsewhere["config_hash"]
    assert len(read_records(records)) == 1
