"""Task specs: subsets of a manifest by column conditions, for cross-dataset train/eval tasks."""

import pytest

from bench.data.tasks import resolve_task, split_subset
from bench.errors import ConfigError


def test_split_subset_reads_conditions():
    assert split_subset("embedded:small") == ("embedded:small", [])
    assert split_subset("x[accent=en,en-us; snr_db>=20]") == ("x", [("accent", "=", "en,en-us"),
                                                                     ("snr_db", ">=", "20")])
    with pytest.raises(ConfigError, match="cannot read the condition"):
        split_subset("x[accent~en]")
    with pytest.raises(ConfigError, match="empty condition"):
        split_subset("x[ ]")


def test_a_subset_is_a_derived_manifest_with_the_base_splits(tiny_corpus):
    base = tiny_corpus.manifest
    accents = sorted(base.table["accent"].unique())
    spec = f"{base.path}[accent={accents[0]}]"
    subset = resolve_task(spec)
    expected = base.table[base.table["accent"] == accents[0]]
    assert sorted(subset.table["clip_id"]) == sorted(expected["clip_id"])
    assert dict(zip(subset.table["clip_id"], subset.table["split"])) == dict(zip(expected["clip_id"], expected["split"]))
    assert subset.manifest_id != base.manifest_id and subset.meta["derived_from"]["manifest_id"] == base.manifest_id
    assert all(subset.resolve(p).is_file() for p in subset.table["audio_path"])
    assert resolve_task(spec).manifest_id == subset.manifest_id  # written once, read again
    complement = resolve_task(f"{base.path}[accent!={accents[0]}]")
    assert len(complement.table) + len(subset.table) == len(base.table)
    dry = resolve_task(f"{base.path}[reverb_rt60=0]")  # a numeric column compares as numbers (0 == 0.0)
    assert len(dry.table) == int((base.table["reverb_rt60"] == 0).sum()) > 0
    loud = resolve_task(f"{base.path}[snr_db>=20]")
    assert (loud.table["snr_db"] >= 20).all() and len(loud.table) == int((base.table["snr_db"] >= 20).sum())


def test_a_subset_of_the_embedded_corpus_has_the_same_id_in_any_data_folder(tmp_path, monkeypatch):
    """Records of a subset task are keyed on its manifest id: two machines (data folders) that build
    the same corpus must derive the same subset manifest, byte for byte."""
    import shutil

    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig

    ids = []
    for name in ("one", "two"):
        monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / name))
        corpus = build_corpus(CorpusConfig.from_size("small", speakers=8, words=3, renditions=2), progress=False)
        subset = resolve_task(f"{corpus.manifest.path}[rendition=0]")
        assert all(subset.resolve(p).is_file() for p in subset.table["audio_path"])
        ids.append(subset.manifest_id)
        if name == "one":  # the first machine's folder is gone: nothing may point into it
            shutil.rmtree(tmp_path / "one")
    assert ids[0] == ids[1]


def test_bad_subsets_name_the_column_and_the_fix(tiny_corpus):
    path = tiny_corpus.manifest.path
    with pytest.raises(ConfigError, match="no column 'nope'"):
        resolve_task(f"{path}[nope=1]")
    with pytest.raises(ConfigError, match="numeric"):
        resolve_task(f"{path}[accent<3]")
    with pytest.raises(ConfigError, match="no clip meets"):
        resolve_task(f"{path}[accent=klingon]")


def test_checkpoint_paths_may_start_with_the_data_directory(monkeypatch, tmp_path):
    from bench.registry import split_spec

    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path))
    assert split_spec("av-joint@$AVBENCH_DATA/pretrained/x/encoder.pt") == (
        "av-joint", str(tmp_path / "pretrained" / "x" / "encoder.pt"))
    assert split_spec("apc@${AVBENCH_DATA}/a.pt")[1] == str(tmp_path / "a.pt")
    assert split_spec("apc@rel/a.pt") == ("apc", "rel/a.pt") and split_spec("mfcc39") == ("mfcc39", None)


def test_the_cli_runs_a_verification_task_and_prints_its_metrics(tiny_corpus, tmp_path, capsys):
    import json

    from bench.cli import main

    records = tmp_path / "runs.jsonl"
    code = main(["-q", "run", "--encoder", "mfcc39", "--task", str(tiny_corpus.path), "--task-type",
                 "speaker-verification", "--epochs", "1", "--lr", "1e-3", "--batch-size", "8", "--pooling", "mean",
                 "--records", str(records)])
    assert code == 0
    out = capsys.readouterr().out
    assert "speaker-verification" in out and "eer" in out and "min_dcf" in out
    record = json.loads(records.read_text().splitlines()[-1])
    assert record["task_type"] == "speaker-verification" and record["label_column"] == "speaker"
    assert 0.0 <= record["metrics"]["eer"] <= 1.0 and len(record["trial_scores"]) == len(record["trial_labels"]) > 0


def test_a_run_tested_on_another_task_records_it_separately(tiny_corpus, tmp_path):
    from bench.evaluate.identity import RunConfig
    from bench.evaluate.run import run_experiment
    from bench.records import read_records

    base = tiny_corpus.manifest
    median = float(base.table["snr_db"].median())
    own, other = (f"{base.path}[snr_db{op}{median}]" for op in (">=", "<"))
    config = RunConfig(encoder="mfcc39", task=own, epochs=1, lr=1e-3, batch_size=8, eval_tasks=(own, other))
    records = tmp_path / "runs.jsonl"
    main = run_experiment(config, records, progress=False)
    cross, last = read_records(records)
    assert last["config_hash"] == main["config_hash"], "the main record is written last"
    assert (cross["train_task"], cross["eval_task"], cross["eval_of"]) == (own, other, main["config_hash"])
    test = resolve_task(other).split("test")
    assert len(cross["test_predictions"]) == len(test) and cross["config_hash"] != main["config_hash"]
    assert set(cross["per_class_test_acc"]) == set(main["labels"])
    hits = sum(t == p for t, p in zip(cross["test_targets"], cross["test_predictions"]))
    assert cross["metrics"]["accuracy"] == round(hits / len(test), 6)


def test_verification_across_corpora_scores_the_other_corpus_trials(tiny_corpus, small_corpus, tmp_path):
    """Cross-corpus speaker verification: the head trained on one corpus embeds the other's trial clips."""
    import json

    from bench.cli import main
    from bench.data.task_types import build_task_view

    records = tmp_path / "runs.jsonl"
    assert main(["-q", "run", "--encoder", "mfcc39", "--task", str(tiny_corpus.path), "--task-type",
                 "speaker-verification", "--epochs", "1", "--lr", "1e-3", "--batch-size", "8", "--pooling", "mean",
                 "--eval-task", str(small_corpus.path), "--records", str(records)]) == 0
    cross, main_record = [json.loads(line) for line in records.read_text().splitlines()[-2:]]
    assert cross["eval_of"] == main_record["config_hash"] and cross["task_name_eval"] == small_corpus.path.name
    trials = build_task_view(small_corpus.manifest, "speaker-verification").trials
    assert len(cross["trial_scores"]) == len(trials) and cross["trial_labels"] == trials["label"].astype(int).tolist()
    assert 0.0 <= cross["metrics"]["eer"] <= 1.0 and cross["trials_hash"] != main_record["trials_hash"]
    assert cross["test_predictions"] is None and cross["metrics"]["accuracy"] is None
