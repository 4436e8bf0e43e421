"""Pretraining as a stage of the sweep (bench.sweep.pretraining): entries declared in the config,
`NAME@pretrained:ENTRY` encoders, checkpoints built once before the runs that need them, resumed
after a kill, built once by two sweeps at once, and recorded beside the runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import yaml

from bench.errors import ConfigError
from bench.files import file_sha256
from bench.paths import pretrained_dir
from bench.records import append_record, pretraining_records_path, read_records
from bench.sweep.config import load_sweep
from bench.sweep.cost import dry_run_report
from bench.sweep.run import run_sweep

APC = {"num_layers": 1, "hidden_size": 16}


def _write_sweep(tmp_path: Path, data: str, name: str = "stage", **changes) -> Path:
    spec = {"name": name, "tasks": [data], "encoders": ["apc@pretrained:apc-tiny"], "label_fractions": [1.0],
            "train": {"epochs": 1, "hidden": 8, "layers": 1, "batch_size": 8, "encoder_kwargs": APC},
            "pretraining": {"apc-tiny": {"encoder": "apc", "data": data, "steps": 4, "batch_size": 4,
                                         "encoder_args": APC, "save_every": 2, "log_every": 1}},
            "records": str(tmp_path / f"{name}.jsonl")}
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def own_data(tmp_path, monkeypatch):
    """A data folder of this test's own, so checkpoints built by other tests are never found."""
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_entries_are_checked_and_name_the_fix(tmp_path):
    data = "embedded:small"
    entry = {"encoder": "apc", "data": data, "steps": 4}
    cases = [
        ({"pretraining": {"apc-tiny": {**entry, "command": "avbench pretrain apc"}}}, r"unknown key\(s\) \['command'\].*drop `command`"),
        ({"pretraining": {"apc-tiny": {"data": data, "steps": 4}}}, r"pretraining.apc-tiny: give encoder"),
        ({"pretraining": {"apc-tiny": {**entry, "steps": None}}}, r"pretraining.apc-tiny: give the budget"),
        ({"pretraining": {"apc-tiny": {**entry, "encoder": "mfcc39"}}}, r"pretraining.apc-tiny: .*mfcc39"),
        ({"encoders": ["apc@pretrained:apc-other"]}, r"names pretraining entry 'apc-other'.*declared: \['apc-tiny'\]"),
        ({"encoders": ["wav2vec@pretrained:apc-tiny"]}, r"entry 'apc-tiny', which trains 'apc'"),
        ({"encoders": ["mfcc39"]}, r"\['apc-tiny'\] not used by any encoder"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_sweep(_write_sweep(tmp_path, data, **changes))
    sweep = load_sweep(_write_sweep(tmp_path, data))
    assert sweep.pretraining["apc-tiny"].steps == 4 and sweep.pretraining["apc-tiny"].encoder_kwargs == APC


def test_a_sweep_builds_its_checkpoint_once_and_its_records_cite_it(tiny_corpus, own_data, tmp_path):
    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data)
    sweep = load_sweep(config)
    before = dry_run_report(sweep, device="cpu")
    assert "cannot start" not in before and "to build" in before and "3-step probe here" in before

    summary = run_sweep(load_sweep(config), progress=False)
    assert summary["pretrained"] == 1 and summary["ran"] == 1 and not summary["failed"]
    [built] = read_records(pretraining_records_path(sweep.records))
    [run] = read_records(sweep.records)
    folder = pretrained_dir(built["identity"])
    assert built["name"] == "apc-tiny" and built["step"] == 4 and built["device"] == "cpu"
    assert built["checkpoint_hash"] == file_sha256(folder / "encoder.pt")[:16] == run["checkpoint_hash"]
    assert run["pretraining_identity"] == built["identity"]
    assert run["config"]["encoder"] == f"apc@pretrained:{built['identity']}"
    assert (sweep.records.parent / built["files"] / "loss.csv").is_file()  # the curve kept beside the records

    again = run_sweep(load_sweep(config), progress=False)
    assert again["pretrained"] == 0 and again["ran"] == 0 and again["skipped"] == 1
    assert len(read_records(pretraining_records_path(sweep.records))) == 1
    assert "complete here" in dry_run_report(load_sweep(config), device="cpu")


def test_recorded_runs_need_no_rebuild_and_a_rebuild_matches_them(tiny_corpus, own_data, tmp_path, monkeypatch):
    """A fresh machine (empty data folder) with the records: the dry run and the sweep match the
    recorded runs through the pretraining records, and building nothing; a new run rebuilds the
    checkpoint, which is the recorded one, bit for bit."""
    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data)
    run_sweep(load_sweep(config), progress=False)
    [built] = read_records(pretraining_records_path(load_sweep(config).records))
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "fresh"))
    report = dry_run_report(load_sweep(config), device="cpu")
    assert "recorded 1" in report and "not needed: its runs are recorded" in report
    summary = run_sweep(load_sweep(config), progress=False)
    assert summary["pretrained"] == 0 and summary["skipped"] == 1
    assert not pretrained_dir(built["identity"]).exists()
    # A later build of the identity elsewhere that did not reproduce the bits (another CPU, another
    # thread count): the runs made on the first build still count as recorded.
    append_record(pretraining_records_path(load_sweep(config).records), {**built, "checkpoint_hash": "0" * 16})
    assert "recorded 1" in dry_run_report(load_sweep(config), device="cpu")

    grown = _write_sweep(tmp_path, data, seeds=[0, 1])  # one more run: the checkpoint is needed again
    summary = run_sweep(load_sweep(grown), progress=False)
    assert summary["pretrained"] == 1 and summary["ran"] == 1 and summary["skipped"] == 1
    assert file_sha256(pretrained_dir(built["identity"]) / "encoder.pt") == built["checkpoint_sha256"]


def test_a_checkpoint_here_unlike_the_recorded_build_is_named_before_its_runs_are_run_again(
        tiny_corpus, own_data, tmp_path, caplog):
    """The data folder holds a build of the entry whose bits differ from the recorded one (built on
    another machine): the dry run and the sweep say so, and the runs are run again on this build."""
    import torch

    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data)
    run_sweep(load_sweep(config), progress=False)
    [built] = read_records(pretraining_records_path(load_sweep(config).records))
    encoder = pretrained_dir(built["identity"]) / "encoder.pt"
    saved = torch.load(encoder, map_location="cpu", weights_only=False)
    first = next(iter(saved["encoder"]))
    saved["encoder"][first] = saved["encoder"][first] + 1e-3
    torch.save(saved, encoder)
    here = file_sha256(encoder)[:16]

    report = dry_run_report(load_sweep(config), device="cpu")
    assert f"complete here (checkpoint {here}, not a recorded build: {built['checkpoint_hash']})" in report
    assert f"checkpoint {here} differs from the recorded build {built['checkpoint_hash']}" in report
    with caplog.at_level("WARNING", logger="avbench"):
        summary = run_sweep(load_sweep(config), progress=False)
    assert f"differs from the recorded build {built['checkpoint_hash']}" in caplog.text
    assert summary["ran"] == 1 and summary["skipped"] == 0
    assert [r["checkpoint_hash"] for r in read_records(load_sweep(config).records)] == [built["checkpoint_hash"], here]


def test_a_checkpoint_just_built_unlike_the_recorded_build_is_named(tiny_corpus, own_data, tmp_path, monkeypatch,
                                                                    caplog):
    """A fresh data folder whose records name a build with other bits (made on another machine): the
    sweep rebuilds the checkpoint for a new run and warns that it is not the recorded build."""
    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data)
    run_sweep(load_sweep(config), progress=False)
    records = pretraining_records_path(load_sweep(config).records)
    [built] = read_records(records)
    records.write_text(json.dumps({**built, "checkpoint_hash": "0" * 16}) + "\n")  # the only recorded build
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "fresh"))
    grown = _write_sweep(tmp_path, data, seeds=[0, 1])
    with caplog.at_level("WARNING", logger="avbench"):
        summary = run_sweep(load_sweep(grown), progress=False)
    assert summary["pretrained"] == 1
    assert f"checkpoint {built['checkpoint_hash']} differs from the recorded build {'0' * 16}" in caplog.text


def _sweep_killed_at_step_2(config: str, data: str) -> None:
    """A sweep process killed (SIGKILL) right after its pretraining saved step 2 of 4."""
    os.environ["AVBENCH_DATA"] = data
    from bench.pretrain import stage

    real = stage.pretrain

    def killed(*args, **kwargs):
        real(*args, **{**kwargs, "stop_after": 2})
        os.kill(os.getpid(), signal.SIGKILL)

    stage.pretrain = killed
    run_sweep(load_sweep(config), progress=False)


def test_a_killed_pretraining_stage_resumes_within_the_sweep(tiny_corpus, own_data, tmp_path, monkeypatch):
    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data)
    whole = run_sweep(load_sweep(config, ), progress=False)  # the uninterrupted build, in its own folder
    [uninterrupted] = read_records(pretraining_records_path(load_sweep(config).records))
    assert whole["pretrained"] == 1

    other = tmp_path / "killed-data"
    monkeypatch.setenv("AVBENCH_DATA", str(other))
    killed = _write_sweep(tmp_path, data, name="killed")
    child = multiprocessing.get_context("spawn").Process(target=_sweep_killed_at_step_2, args=(str(killed), str(other)))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    folder = pretrained_dir(uninterrupted["identity"])
    assert json.loads((folder / "pretrain.json").read_text())["step"] == 2 and not (tmp_path / "killed.jsonl").exists()
    assert "to build, resuming at step 2" in dry_run_report(load_sweep(killed), device="cpu")

    summary = run_sweep(load_sweep(killed), progress=False)
    assert summary["pretrained"] == 1 and summary["ran"] == 1
    [resumed] = read_records(pretraining_records_path(load_sweep(killed).records))
    assert resumed["resumed"] is True and resumed["identity"] == uninterrupted["identity"]
    assert resumed["checkpoint_sha256"] == uninterrupted["checkpoint_sha256"]
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]


def _sweep_in_child(config: str, data: str) -> None:
    os.environ["AVBENCH_DATA"] = data
    summary = run_sweep(load_sweep(config), progress=False)
    assert not summary["failed"], summary


def test_two_sweeps_started_together_build_their_shared_checkpoint_once(tiny_corpus, own_data, tmp_path):
    data = str(tiny_corpus.manifest.path)
    configs = [_write_sweep(tmp_path, data, name="first"),
               _write_sweep(tmp_path, data, name="second", label_fractions=[0.5])]
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_sweep_in_child, args=(str(c), str(own_data))) for c in configs]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0, 0]
    built = [r for c in configs for r in read_records(pretraining_records_path(load_sweep(c).records))]
    assert len(built) == 1  # the other sweep waited on the lock and found it complete
    runs = [r for c in configs for r in read_records(load_sweep(c).records)]
    assert len(runs) == 2 and {r["checkpoint_hash"] for r in runs} == {built[0]["checkpoint_hash"]}


def test_an_entry_whose_data_is_missing_stops_only_its_own_runs(tiny_corpus, own_data, tmp_path):
    data = str(tiny_corpus.manifest.path)
    config = _write_sweep(tmp_path, data, encoders=["apc@pretrained:apc-tiny", "mfcc39"],
                          train={"epochs": 1, "hidden": 8, "layers": 1, "batch_size": 8},
                          pretraining={"apc-tiny": {"encoder": "apc", "data": "not-prepared-here", "steps": 4}})
    report = dry_run_report(load_sweep(config), device="cpu")
    assert "cannot start (below)" in report and "apc-tiny cannot start: ConfigError: task 'not-prepared-here'" in report
    summary = run_sweep(load_sweep(config), progress=False)
    assert summary["ran"] == 1 and summary["pretrained"] == 0
    [failed] = summary["failed"]
    assert "not run, its pretraining apc-tiny cannot start" in failed and "not-prepared-here" in failed
    assert [r["encoder"] for r in read_records(load_sweep(config).records)] == ["mfcc39"]


def test_a_sweep_killed_in_the_runs_after_its_pretraining_still_names_them_in_its_sidecar(tiny_corpus, own_data,
                                                                                           tmp_path):
    """The runs of a checkpoint built in the same sweep are planned again once it exists; the sidecar
    must name them before they run, or a kill there leaves their records outside the sweep's report."""
    from bench.records import sidecar_path
    from bench.sweep.executors import InlineExecutor

    class KilledAtTheRuns(InlineExecutor):
        def execute(self, jobs, records, **kw):
            if not any(job.get("kind") == "pretraining" for job in jobs):
                raise KeyboardInterrupt  # the kill, as the runs keyed on the new checkpoint start
            yield from super().execute(jobs, records, **kw)

    config = _write_sweep(tmp_path, str(tiny_corpus.manifest.path))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(config), progress=False, executor=KilledAtTheRuns(progress=False))
    named = set(json.loads(sidecar_path(load_sweep(config).records).read_text())["stage"]["config_hashes"])
    run_sweep(load_sweep(config), progress=False)
    [run] = read_records(load_sweep(config).records)
    assert run["config_hash"] in named
