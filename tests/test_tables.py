"""`avbench tables` from hand-made run records: cell statistics, marks, significance, files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.evaluate import metrics
from bench.results.render import generalisation, render_csv, render_latex, render_markdown
from bench.results.significance import significance
from bench.results.tables import collect
from bench.results.write import write_tables

LABELS = ["bed", "bird", "cat", "dog"]
N_CLIPS = 100


def make_record(encoder: str = "mfcc39", *, seed: int = 0, fraction: float = 1.0, right=None, n_right: int = 80,
                mode: str = "frozen", task: str = "embedded:default", task_type: str = "words", k_shot=None,
                clip_hash: str = "clips-v1", new_fields: bool = True, trial_scores=None, trial_labels=None,
                config_extra: dict | None = None, **extra) -> dict:
    """A run record as bench.evaluate.run writes it; `right` (per test clip) or `n_right` sets the accuracy.

    new_fields=False gives a record from before task types, metrics and per-clip predictions.
    """
    name = encoder.split("@")[0]
    config = {"batch_size": 32, "checkpoint": None, "encoder": name, "encoder_kwargs": {}, "encoder_lr": None,
              "epochs": 5, "hidden": 256, "label_fraction": fraction, "layers": 2, "lr": 0.001,
              "lr_after_drop": 0.0001, "lr_drop_epoch": 4, "mode": mode, "pooling": "last", "seed": seed,
              "task": task, **(config_extra or {})}
    if right is None:  # the first n_right clips, rotated by seed so seeds differ clip by clip
        right = np.roll(np.arange(N_CLIPS) < n_right, 7 * seed)
    right = np.asarray(right, dtype=bool)
    targets = np.arange(len(right)) % len(LABELS)
    predictions = np.where(right, targets, (targets + 1) % len(LABELS))
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    np.add.at(confusion, (targets, predictions), 1)
    record = {
        "status": "ok", "config": config, "encoder": encoder, "encoder_name": name, "task": task,
        "task_name": "embedded-f6b63032867a", "manifest_id": "39340193f535afe8", "mode": mode,
        "label_fraction": fraction, "seed": seed, "labels": LABELS, "test_acc": float(right.mean()),
        "val_acc": float(right.mean()), "best_epoch": 5, "wall_seconds": 12.5, "confusion": confusion.tolist(),
        "per_class_test_acc": {c: float(right[targets == i].mean()) for i, c in enumerate(LABELS)},
        "git_commit": "125e47f3da04424bd912ae47bdd3d71d979600f9-dirty",
    }
    if new_fields:
        record.update(task_type=task_type, k_shot=k_shot, budget={"unit": "epochs", "value": 5},
                      train_task=task, eval_task=task, test_clip_ids_hash=clip_hash, test_targets=targets.tolist(),
                      test_predictions=predictions.tolist(),
                      metrics={"accuracy": float(right.mean()),
                               "uar": metrics.unweighted_average_recall(targets, predictions, len(LABELS))})
    if trial_scores is not None:
        record["metrics"] = {"eer": metrics.equal_error_rate(trial_scores, trial_labels),
                             "min_dcf": metrics.min_dcf(trial_scores, trial_labels), "accuracy": None}
        record.update(trial_scores=list(trial_scores), trial_labels=list(trial_labels), trials_hash="trials-v1")
    record.update(extra)
    identity = [config, encoder, k_shot, record.get("eval_task"), record["manifest_id"], clip_hash]
    record["config_hash"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return record


def rendered(records):
    tables, summary = collect(records, "runs.jsonl")
    return tables, render_markdown(tables, summary), list(csv.DictReader(io.StringIO(render_csv(tables))))


def cell_row(rows, encoder, column="100%", metric="accuracy"):
    [row] = [r for r in rows if r["encoder"] == encoder and r["column"] == column and r["metric"] == metric]
    return row


def test_cell_is_seed_mean_std_with_a_ci_around_it():
    records = [make_record("mfcc39", seed=s, n_right=n) for s, n in enumerate((70, 80, 90))]
    _, md, rows = rendered(records)
    row = cell_row(rows, "mfcc39")
    assert float(row["mean"]) == pytest.approx(0.8) and float(row["std"]) == pytest.approx(0.1)
    assert row["n_seeds"] == "3" and row["seeds"] == "0 1 2" and row["fewer_seeds"] == "False"
    assert float(row["ci_low"]) < 0.8 < float(row["ci_high"])
    shown = re.search(r"\*\*80\.00 ± 10\.00 \[(\d+\.\d\d), (\d+\.\d\d)\] \(3\)\*\*", md)
    assert shown and [float(x) for x in shown.groups()] == pytest.approx(
        [100 * float(row["ci_low"]), 100 * float(row["ci_high"])], abs=0.006)
    assert "Budget: 5 epochs" in md and "corpus `embedded-f6b63032867a`" in md


def test_best_cell_is_highest_accuracy_and_lowest_eer():
    records = [make_record("mfcc39", n_right=70), make_record("apc@1a2b3c4d", n_right=85),
               make_record("mfcc39", fraction=0.1, n_right=60), make_record("apc@1a2b3c4d", fraction=0.1, n_right=50)]
    _, md, rows = rendered(records)
    assert cell_row(rows, "apc@1a2b3c4d")["best"] == "True" and cell_row(rows, "mfcc39")["best"] == "False"
    assert cell_row(rows, "mfcc39", "10%")["best"] == "True"
    assert "**85.00 ± n/a" in md and "**60.00 ± n/a" in md and "| 100% | 10% |" in md

    labels = [1, 0] * 20
    good = [0.9 if y else 0.1 for y in labels[:-4]] + [0.2, 0.8, 0.2, 0.8]  # two of each kind misordered
    bad = [0.6 if y else 0.4 for y in labels[:-12]] + [0.3, 0.7] * 6
    records = [make_record(enc, task="vox:test", task_type="speaker-verification", trial_scores=scores,
                           trial_labels=labels) for enc, scores in (("av-audio", good), ("mfcc39", bad))]
    _, md, rows = rendered(records)
    for metric in ("eer", "min_dcf"):
        assert cell_row(rows, "av-audio", metric=metric)["best"] == "True"
        assert cell_row(rows, "mfcc39", metric=metric)["best"] == "False"
        assert float(cell_row(rows, "av-audio", metric=metric)["mean"]) < float(
            cell_row(rows, "mfcc39", metric=metric)["mean"])
    assert "Equal error rate (%), lower is better" in md and "minDCF" in md
    assert "McNemar needs per-clip correctness" in significance(collect(records, "x")[0])[0]


def test_cells_short_of_seeds_are_marked_not_hidden():
    records = [make_record("mfcc39", seed=s) for s in range(3)] + [make_record("logmel", seed=s) for s in range(2)]
    _, md, rows = rendered(records)
    assert cell_row(rows, "logmel")["fewer_seeds"] == "True" and cell_row(rows, "mfcc39")["fewer_seeds"] == "False"
    assert "(2)†" in md and "(3)†" not in md and "† fewer seeds than the 3 this table expects" in md

    expecting_five = [make_record("mfcc39", seed=s, config_extra={"expected_seeds": 5}) for s in range(3)]
    _, md, rows = rendered(expecting_five)
    assert cell_row(rows, "mfcc39")["expected_seeds"] == "5" and "(3)†" in md


def test_old_records_without_new_fields_still_render():
    records = [make_record("mfcc39", new_fields=False, n_right=91), make_record("logmel", new_fields=False),
               {"status": "failed", "config": {"encoder": "apc"}, "encoder": "apc", "task": "embedded:default",
                "mode": "frozen", "label_fraction": 1.0, "seed": 0, "error": "boom", "git_commit": "abc"}]
    tables, md, rows = rendered(records)
    assert "**91.00 ± n/a [n/a] (1)**" in md
    assert "2 cell(s) without a CI: the records have no test_predictions/test_targets (older runs)" in md
    assert "1 failed run record(s)" in md
    assert cell_row(rows, "mfcc39")["ci_low"] == "" and tables[0].key.task_type == "words"
    assert "\\toprule" in render_latex(tables)
    # An unset new setting and an absent one are the same protocol: one table, not two.
    new = make_record("apc", config_extra={"budget_steps": None, "eval_tasks": [], "label_map": None})
    assert len(collect(records + [new], "x")[0]) == 1
    # Records gained `precision` later; fp32, its default, is what the older ones ran at.
    fp32 = make_record("pase+", config_extra={"precision": "fp32"})
    assert len(collect(records + [new, fp32], "x")[0]) == 1
    bf16 = make_record("wav2vec", config_extra={"precision": "bf16"})
    assert len(collect(records + [fp32, bf16], "x")[0]) == 2


def test_runs_under_another_protocol_or_corpus_never_share_a_table():
    records = [make_record("mfcc39"), make_record("mfcc39", config_extra={"lr": 0.01}),
               make_record("mfcc39", manifest_id="another-manifest")]
    tables, md, _ = rendered(records)
    assert len(tables) == 3 and "Adam, lr 0.01," in md


def test_a_rerun_replaces_the_earlier_record_and_is_counted():
    tables, summary = collect([make_record("mfcc39", n_right=50), make_record("mfcc39", n_right=90)], "x")
    assert summary["superseded"] == 1 and summary["ok"] == 1
    assert tables[0].cells["accuracy"][next(iter(tables[0].cells["accuracy"]))].mean == pytest.approx(0.9)
    assert "1 record(s) were replaced by a later record of the same run" in render_markdown(tables, summary)


def test_significance_mcnemar_with_holm_across_the_table():
    # Against mfcc39: av-joint alone right on 10 clips, mfcc39 alone on 2 -> p = 0.0386.
    joint = np.arange(N_CLIPS) < 60
    mfcc = joint.copy()
    mfcc[50:60] = False
    mfcc[60:62] = True
    logmel = joint.copy()
    logmel[50:55], logmel[60:65] = False, True  # 5 and 5 -> p = 1
    records = [make_record("av-joint@0badc0de", right=joint), make_record("mfcc39", right=mfcc),
               make_record("logmel", right=logmel), make_record("apc", right=joint, clip_hash="other-clips"),
               make_record("av-audio", right=joint)]
    md, text = significance(collect(records, "x")[0])
    rows = {r["baseline"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {"mfcc39", "logmel", "apc"}  # av-audio is proposed-group, not a baseline
    assert (rows["mfcc39"]["b"], rows["mfcc39"]["c"]) == ("10", "2")
    assert float(rows["mfcc39"]["p_mcnemar"]) == pytest.approx(0.0386, abs=5e-5)
    assert float(rows["mfcc39"]["p_holm"]) == pytest.approx(2 * 0.03857, abs=1e-4)  # 2 tested comparisons
    assert float(rows["logmel"]["p_holm"]) == 1.0
    assert rows["apc"]["verdict"] == "not comparable: different test clips" and rows["apc"]["p_holm"] == ""
    assert rows["mfcc39"]["verdict"] == "no significant difference"
    assert "exact McNemar" in md and "Holm-Bonferroni" in md and "Proposed: av-joint; 2 comparison(s)" in md


def test_significance_falls_back_to_best_proposed_group_encoder_or_says_why_not():
    records = [make_record("av-visual", n_right=60), make_record("av-audio", n_right=75), make_record("mfcc39")]
    md, _ = significance(collect(records, "x")[0])
    assert "Proposed: av-audio" in md
    md, _ = significance(collect([make_record("mfcc39")], "x")[0])
    assert "Omitted: no proposed-group encoder" in md


def test_k_shot_columns_follow_label_fractions():
    records = [make_record("mfcc39", fraction=f) for f in (0.01, 1.0, 0.1)] + \
              [make_record("mfcc39", k_shot=k) for k in (1, 5)]
    _, md, _ = rendered(records)
    assert "| group | encoder | mode | 100% | 10% | 1% | 5-shot | 1-shot |" in md


def test_cross_dataset_generalisation_matrix():
    records = [make_record("mfcc39", task="a:x", n_right=90, task_name="corpus-a"),
               make_record("mfcc39", task="b:y", n_right=80, task_name="corpus-b"),
               make_record("mfcc39", task="a:x", train_task="a:x", eval_task="b:y", n_right=50, clip_hash="b",
                           task_name="corpus-a", task_name_eval="corpus-b")]
    tables, md, _ = rendered(records)
    assert "## Table 2. Words, a:x → b:y" in md
    matrix, text = generalisation(tables)
    assert "| a:x (corpus-a) | _90.00 ± n/a [" in matrix and "| 50.00 ± n/a [" in matrix and "b:y (corpus-b)" in matrix
    assert sorted(r["train_task"] + ">" + r["eval_task"] for r in csv.DictReader(io.StringIO(text))) == \
        ["a:x>a:x", "a:x>b:y", "b:y>b:y"]
    assert generalisation(collect([make_record("mfcc39")], "x")[0]) is None


def test_one_spec_on_two_corpora_is_two_rows_and_unrelated_in_domain_runs_stay_out():
    """embedded:default names another corpus after a generator version: its records must not merge."""
    def cross(corpus: str, n_right: int, seed: int = 0) -> dict:
        return make_record("mfcc39", task="a", train_task="a", eval_task="b", n_right=n_right, clip_hash=corpus,
                           seed=seed, task_name=corpus, task_name_eval="corpus-b", manifest_id="m-b")

    records = [make_record("mfcc39", task="a", n_right=90, task_name="corpus-a-v3", manifest_id="m-a3"),
               make_record("mfcc39", task="b", n_right=80, task_name="corpus-b", manifest_id="m-b"),
               cross("corpus-a-v3", 50), cross("corpus-a-v2", 30),
               # an in-domain run on the old corpus, from another sweep: no cross run trained there names it
               make_record("mfcc39", task="a", n_right=70, task_name="corpus-a-v1", manifest_id="m-a1")]
    tables, md, _ = rendered(records)
    cross_tables = [t for t in tables if t.cross]
    assert len(cross_tables) == 2 and len({t.id for t in cross_tables}) == 2  # kept apart, each with its plot
    assert "Trained on `a` (corpus `corpus-a-v2`), tested on `b`" in md
    matrix, _ = generalisation(tables)
    assert "| a (corpus-a-v3) | _90.00 ± n/a [" in matrix and "| 50.00 ± n/a [" in matrix
    assert "| a (corpus-a-v2) | — | 30.00 ± n/a [" in matrix
    assert "corpus-a-v1" not in matrix
    # Another experiment with the same encoder and protocol (c -> d) gets its own matrix, not more columns.
    records += [make_record("mfcc39", task="c", train_task="c", eval_task="d", n_right=20, clip_hash="d",
                            task_name="corpus-c", task_name_eval="corpus-d", manifest_id="m-d")]
    matrix, _ = generalisation(collect(records, "runs.jsonl")[0])
    assert matrix.count("| trained on |") == 2 and matrix.count("## mfcc39") == 1
    assert "| trained on | d (corpus-d) |\n|---|---:|\n| c (corpus-c) | 20.00 ± n/a [" in matrix


def test_a_record_that_is_not_a_run_record_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"runs.jsonl: record 2 .* lacks \['seed'\]"):
        collect([make_record(), {k: v for k, v in make_record("apc").items() if k != "seed"}], "runs.jsonl")
    with pytest.raises(ConfigError, match="task_type 'dance'"):
        collect([make_record(task_type="dance")], "runs.jsonl")


def test_regeneration_is_byte_identical(tmp_path):
    labels = [1, 0, 0, 0] * 10
    records = [make_record(enc, seed=s, fraction=f, n_right=n - 10 * s)
               for enc, n in (("av-joint@0badc0de", 90), ("mfcc39", 75)) for f in (1.0, 0.01) for s in range(2)]
    records += [make_record(enc, task="vox:test", task_type="speaker-verification",
                            trial_scores=list(np.round(np.linspace(0, 1, 40) + sep * np.array(labels), 3)),
                            trial_labels=labels) for enc, sep in (("av-audio", 0.5), ("mfcc39", 0.2))]
    records_path = tmp_path / "runs.jsonl"
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    first = write_tables(records_path, tmp_path / "one")
    second = write_tables(records_path, tmp_path / "two")
    names = sorted(p.relative_to(tmp_path / "one").as_posix() for p in first)
    assert names == sorted(p.relative_to(tmp_path / "two").as_posix() for p in second)
    assert {n.rsplit(".", 1)[1] for n in names} == {"md", "csv", "tex", "png", "svg"}
    assert any("det" in n for n in names) and any("per-class" in n for n in names)
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    tex = (tmp_path / "one" / "results.tex").read_text()
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    readme = (tmp_path / "one" / "README.md").read_text()
    assert all(f"[{name}]({name})" in readme for name in names if name != "README.md")
    assert "125e47f3da04-dirty" in readme


def test_plots_take_per_class_accuracy_from_the_records_own_confusion_and_fixed_colours():
    from bench.results.plots import PALETTE, encoder_colour, per_class_accuracy

    record = make_record("mfcc39", right=np.arange(N_CLIPS) % 4 != 1)  # class "bird" always wrong
    record["per_class_test_acc"] = {c: 1.0 for c in LABELS}  # stale: a cross-dataset record keeps the training task's
    assert per_class_accuracy(record).tolist() == [1.0, 0.0, 1.0, 1.0]
    old = make_record("mfcc39", new_fields=False)
    del old["confusion"]
    assert per_class_accuracy(old).tolist() == [old["per_class_test_acc"][c] for c in LABELS]

    assert encoder_colour("av-joint") == PALETTE["av-joint"]
    assert encoder_colour("s3prl:hubert") == encoder_colour("s3prl:hubert") != encoder_colour("s3prl:tera")
    assert re.fullmatch(r"#[0-9a-f]{6}", encoder_colour("s3prl:hubert"))


def test_headings_are_readable_and_the_full_task_ids_sit_in_the_caption():
    task = "embedded:default[rendition=0;accent=en,en-gb-scotland,en-gb-x-gbclan,en-gb-x-gbcwmd,en-us-nyc]"
    _, md, _ = rendered([make_record("mfcc39", task=task, task_type="speaker-id")])
    assert "## Table 1. Speaker id, embedded:default (accent: 5 values)\n" in md
    assert f"Task `{task}` (speaker-id)" in md


def test_the_index_lists_a_files_few_commits_and_counts_many():
    from bench.results.index import commits_text

    few = [{"git_commit": "125e47f3da04424bd912ae47bdd3d71d979600f9-dirty"}, {"git_commit": None}]
    assert commits_text(few) == "125e47f3da04-dirty, unknown"
    many = [{"git_commit": f"{i:040x}" + ("-dirty" if i % 2 else "")} for i in range(5)] * 2
    assert commits_text(many) == "5 commits, 2 of them with uncommitted changes (each run's `git_commit` is in its record)"
