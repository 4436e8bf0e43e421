"""`avbench report`: the study report as a pure function of one sweep's records, in Markdown and in
a self-contained HTML page that a real headless browser renders without errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_tables import make_record

from bench.records import sidecar_path
from bench.results.report import build_report, report_group
from bench.results.report_tests import finding
from bench.results.report_render import render_html, render_markdown
from bench.results.write import write_report
from bench.sweep.config import load_sweep

CORPORA = ("embedded-aaaa", "embedded-bbbb")
SUPERVISED = {"pretraining_objective": "supervised", "pretraining_labels": "speaker"}


def study_records(n_right_av=(80, 78), n_right_sup=(60, 62), cross_drop=10):
    """av-joint and a speaker-supervised ResNet18, words, trained on each corpus with seeds 0 and 1 and
    tested in-domain and on the other corpus; plus mfcc39 in-domain only."""
    records = []
    for corpus_index, corpus in enumerate(CORPORA):
        other = CORPORA[1 - corpus_index]
        for seed in (0, 1):
            for encoder, extra, n_right in (("av-joint@pretrained:aaaa", {}, n_right_av[seed]),
                                            ("resnet18@pretrained:bbbb", SUPERVISED, n_right_sup[seed])):
                task = f"embedded:{corpus}"
                main = make_record(encoder, seed=seed, n_right=n_right, task=task, task_name=corpus,
                                   checkpoint_hash=encoder[-4:] * 4, **extra)
                cross = make_record(encoder, seed=seed, n_right=n_right - cross_drop, task=task, task_name=corpus,
                                    eval_task=f"embedded:{other}", task_name_eval=other, eval_of=main["config_hash"],
                                    **extra)
                records += [main, cross]
            records.append(make_record("mfcc39", seed=seed, n_right=70, task=f"embedded:{corpus}", task_name=corpus))
    return records


class FakeSweep:
    """What build_report reads of a bench.sweep.config.Sweep (load_sweep makes real ones below)."""
    name, question, description, deviations = "study", "Does it generalise?", "", ["5 epochs"]

    class _Run:
        task_type, eval_tasks = "words", ("x",)

        def __init__(self, encoder):
            self.encoder = encoder

    runs = [_Run("av-joint@pretrained:aaaa"), _Run("mfcc39"), _Run("apc@pretrained:cccc")]


def planned(records):
    return {r["config_hash"] for r in records if not r.get("eval_of")}


def test_groups_follow_what_trained_the_weights():
    assert report_group({"encoder": "av-joint@x"}) == "audiovisual SSL"
    assert report_group({"encoder": "av-audio@x"}) == "audio SSL"
    assert report_group({"encoder": "resnet18@x", **SUPERVISED}) == "supervised"
    assert report_group({"encoder": "resnet18@x", "pretraining_objective": "dino"}) == "speaker SSL"
    assert report_group({"encoder": "resnet18-scratch", "mode": "frozen"}) == "random"
    assert report_group({"encoder": "mfcc39"}) == "hand-crafted"


def test_cells_pool_corpora_and_seeds_with_a_t_interval():
    records = study_records()
    report = build_report(FakeSweep, records, planned(records))
    assert list(report.representations) == ["av-joint", "resnet18+supervised[speaker]", "mfcc39"]
    cell = report.cells[("av-joint", "words", "in-domain")]
    assert sorted(cell.values) == [0.78, 0.78, 0.8, 0.8] and cell.ci_kind == "t over 2 seeds"
    assert cell.ci[0] < cell.mean < cell.ci[1] and cell.mean == pytest.approx(0.79)
    cross = report.cells[("av-joint", "words", "cross-corpus")]
    assert cross.mean == pytest.approx(0.69) and len(cross.values) == 4
    gap = report.gaps[("av-joint", "words")]
    assert gap.values == pytest.approx([0.1] * 4) and gap.mean == pytest.approx(0.1)
    assert ("mfcc39", "words") not in report.gaps
    assert "mfcc39: words, cross-corpus" in report.missing


def test_the_gap_is_read_in_words_whatever_the_metric_direction():
    from bench.results.report import CellStats
    from bench.results.report_render import unseen_text

    # Accuracy 10 points lower on the unseen corpus, and an EER 6 points higher: both are worse there.
    assert unseen_text("accuracy", CellStats([0.1] * 4, 0.1, (0.08, 0.12), "t")) == "worse by 10.00"
    assert unseen_text("eer", CellStats([-0.06] * 4, -0.06, (-0.09, -0.03), "t")) == "worse by 6.00"
    assert unseen_text("eer", CellStats([0.01, -0.01], 0.01, (-0.02, 0.04), "t")) == "better by 1.00, CI includes 0"
    records = study_records()
    text = render_markdown(build_report(FakeSweep, records, planned(records)))
    assert "| av-joint | words | 10.00 | [10.00, 10.00] | 4 | worse by 10.00 |" in text


def test_paired_tests_are_holm_corrected_and_findings_cite_their_numbers():
    records = study_records()
    report = build_report(FakeSweep, records, planned(records))
    assert [(t.a, t.b, t.setting) for t in report.tests] == [
        ("av-joint", "resnet18+supervised[speaker]", "in-domain"),
        ("av-joint", "resnet18+supervised[speaker]", "cross-corpus")]
    for test in report.tests:
        assert test.p_holm == pytest.approx(min(1.0, 2 * test.p)) or test.p_holm >= test.p
        assert test.p_holm < 0.05 and "McNemar on 200 test clips" in test.detail
    sentence = finding(report.tests[0])
    assert sentence.startswith("av-joint is significantly better than resnet18+supervised[speaker] on words, "
                               "in-domain (test accuracy 79.00% vs 61.00%, p_Holm = ")


def test_each_comparison_the_config_names_is_its_own_holm_family(tmp_path):
    from bench.errors import ConfigError

    records = study_records()

    class TwoComparisons(FakeSweep):
        comparisons = [("audiovisual SSL", "supervised"), ("av-joint", "mfcc39")]

    report = build_report(TwoComparisons, records, planned(records))
    first = [t for t in report.tests if t.family == ("audiovisual SSL", "supervised")]
    (second,) = [t for t in report.tests if t.family == ("av-joint", "mfcc39")]  # mfcc39 ran in-domain only
    assert len(first) == 2 and (second.a, second.b, second.setting) == ("av-joint", "mfcc39", "in-domain")
    # Holm within each family: a family of one test keeps its p; the first family's two share theirs.
    assert second.p_holm == second.p
    assert sorted(t.p_holm for t in first) == pytest.approx(sorted(stats_holm([t.p for t in first])))
    assert "significantly better than mfcc39 on words, in-domain (test accuracy 79.00% vs 70.00%" in finding(second)
    text = render_markdown(report)
    assert text.index("### audiovisual SSL against supervised") < text.index("### av-joint against mfcc39")
    assert text.count("### av-joint against mfcc39") == 2  # its test table, then its findings
    assert ("**av-joint against mfcc39: of 1 paired tests (pairs x tasks x settings), av-joint is significantly "
            "better in 1, significantly worse in 0, and not significantly different in 0") in text

    class Typo(FakeSweep):
        comparisons = [("audiovisual SSL", "supervisd")]
        source = tmp_path / "study.yaml"

    with pytest.raises(ConfigError, match=r"study.yaml: comparisons name 'supervisd', which is neither a report group"):
        build_report(Typo, records, planned(records))


def stats_holm(pvalues):
    from bench.results.stats import holm_bonferroni

    return holm_bonferroni(pvalues)


def test_comparisons_are_read_from_the_config_and_checked(tmp_path):
    from bench.errors import ConfigError

    base = "name: study\ntasks: ['embedded:small']\nencoders: [mfcc39]\n"
    config = tmp_path / "study.yaml"
    config.write_text(base)
    assert load_sweep(config).comparisons == []  # the report's default: audiovisual SSL vs supervised
    config.write_text(base + "comparisons: ['audiovisual SSL vs supervised', ' av-joint vs av-audio ']\n")
    assert load_sweep(config).comparisons == [("audiovisual SSL", "supervised"), ("av-joint", "av-audio")]
    for bad in ("['av-joint versus av-audio']", "['av-joint vs av-joint']", "[]", "'av-joint vs av-audio'"):
        config.write_text(base + f"comparisons: {bad}\n")
        with pytest.raises(ConfigError, match="study.yaml: .*comparisons"):
            load_sweep(config)


def test_a_difference_within_noise_is_reported_as_not_significant():
    records = study_records(n_right_av=(61, 60), n_right_sup=(60, 61))
    report = build_report(FakeSweep, records, planned(records))
    assert all(t.p_holm > 0.05 for t in report.tests)
    assert "do not differ significantly" in finding(report.tests[0])
    assert "is significantly better in 0, significantly worse in 0, and not significantly different in 2" in \
        render_markdown(report)


def test_verification_is_tested_on_eer_with_a_paired_bootstrap():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 100 + [0] * 100)
    good, poor = labels + rng.normal(0, 0.6, 200), labels + rng.normal(0, 2.0, 200)
    records = []
    for seed in (0, 1):
        for encoder, extra, scores in (("av-joint@pretrained:aaaa", {}, good), ("resnet18@pretrained:bbbb", SUPERVISED, poor)):
            records.append(make_record(encoder, seed=seed, task_type="speaker-verification", task_name=CORPORA[0],
                                       trial_scores=scores + 0.01 * seed, trial_labels=labels, **extra))
    report = build_report(FakeSweep, records, planned(records))
    (test,) = report.tests
    assert test.metric == "eer" and test.mean_a < test.mean_b and test.p_holm < 0.05
    assert "significantly better" in finding(test) and "equal error rate" in finding(test)


def test_markdown_has_the_question_main_table_and_generated_limitations():
    records = study_records()
    text = render_markdown(build_report(FakeSweep, records, planned(records)))
    assert "**Question.** Does it generalise?" in text
    # Generated corpora are named by their ids; the setup says which task spec each one is.
    assert "Corpora: embedded-aaaa (embedded:embedded-aaaa), embedded-bbbb (embedded:embedded-bbbb)." in text
    assert "| audiovisual SSL | av-joint | 79.00 [" in text and "(n=4)" in text
    assert "## Findings" in text and "p_Holm" in text
    assert "A vs B: the means over the runs both have" in text
    assert "2 of the 2 corpora (embedded-aaaa, embedded-bbbb) are synthetic" in text
    assert ("2 cell(s) of the configured grid have no record yet: mfcc39: words, cross-corpus; "
            "apc: every task (no record).") in text


def test_a_row_that_pools_runs_of_two_builds_of_its_checkpoint_says_so():
    records = study_records()
    assert "different checkpoints" not in render_markdown(build_report(FakeSweep, records, planned(records)))
    rebuilt = next(r for r in records if r["encoder"].startswith("av-joint") and r["seed"] == 1 and not r.get("eval_of"))
    rebuilt["checkpoint_hash"] = "ffff" * 4  # seed 1 on one corpus ran after a rebuild with other bits
    report = build_report(FakeSweep, records, planned(records))
    assert report.mixed_checkpoints == {"av-joint": {"aaaa" * 4: 3, "ffff" * 4: 1}}
    assert ("av-joint's row pools runs of 2 different checkpoints (aaaaaaaaaaaaaaaa: 3 run(s), ffffffffffffffff: "
            "1 run(s)): its pretraining was built more than once") in render_markdown(report)


def test_the_cost_splits_pretraining_features_and_downstream_and_counts_each_run_once():
    from bench.results.study_cost import study_costs

    records = study_records()  # 12 runs (8 with a cross-corpus test, whose record shares the run's wall time)
    runs = [r for r in records if not r.get("eval_of")]
    for i, r in enumerate(records):
        r.update(device="cpu", device_name="EPYC", threads=2, wall_seconds=100.0 if not r.get("eval_of") else 99.0)
    for i, r in enumerate(runs[::2]):  # half the runs measured their feature stage: one extracted, five read
        r["counters"] = {"feature_seconds": 40.0, "cache_misses": int(i == 0)}
    builds = [{"seconds": 3600.0, "threads": 1, "device": "cpu", "device_name": "EPYC"}]
    stages = {c.stage: c for c in study_costs(records, builds)}
    assert list(stages) == ["pretraining", "feature extraction (frozen encoders, cached)",
                            "downstream training and tests", "total"]
    assert (stages["pretraining"].seconds, stages["pretraining"].core_seconds) == (3600.0, 3600.0)
    features = stages["feature extraction (frozen encoders, cached)"]
    assert (features.jobs, features.seconds, features.core_seconds) == (6, 240.0, 480.0)
    assert features.note.startswith("1 run(s) extracted")
    downstream = stages["downstream training and tests"]
    assert (downstream.jobs, downstream.seconds, downstream.median_seconds) == (12, 6 * 60.0 + 6 * 100.0, 80.0)
    assert downstream.note.startswith("6 run(s) recorded before feature time was measured")
    total = stages["total"]
    assert (total.jobs, total.seconds, total.core_seconds) == (13, 3600.0 + 1200.0, 3600.0 + 2400.0)
    assert total.devices == "cpu (EPYC), 1 thread; cpu (EPYC), 2 threads"
    text = render_markdown(build_report(FakeSweep, records, planned(records)))
    assert "## Compute, by stage" in text and "| downstream training and tests | 12 | 0.27 h (960 s) | 0.53 | 80 s |" in text


def test_write_report_reads_the_sweep_its_records_and_its_sidecar(tmp_path):
    records = study_records()
    config = tmp_path / "study.yaml"
    config.write_text("name: study\nquestion: >\n  Does joint audiovisual self-supervision generalise?\n"
                      "tasks: ['embedded:small']\nencoders: [mfcc39]\nrecords: runs.jsonl\n")
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in records) + json.dumps(make_record("logmel")) + "\n")
    sidecar_path(runs).write_text(json.dumps({"study": {"config_hashes": sorted(planned(records))}}))
    written = write_report(config, runs, tmp_path / "out")
    assert [p.name for p in written] == ["report.md", "report.html"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Does joint audiovisual self-supervision generalise?" in text and "logmel" not in text
    assert "1 not in this study" in text  # the logmel record of another sweep is counted, not used
    assert load_sweep(config).question == "Does joint audiovisual self-supervision generalise?"
    first = (tmp_path / "out" / "report.html").read_bytes()
    write_report(config, runs, tmp_path / "out")
    assert (tmp_path / "out" / "report.html").read_bytes() == first  # a pure function of the records


def test_the_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the HTML render test needs it")
    records = study_records()
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(FakeSweep, records, planned(records))))
    assert "http://" not in page.read_text() and "https://" not in page.read_text()  # self-contained
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(command + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded and int(loaded.group(2)) >= 1 and loaded.group(1) == loaded.group(2)
    assert 'id="main-table"' in dom.stdout and "av-joint" in dom.stdout
    shot = subprocess.run(command + [f"--screenshot={tmp_path / 'report.png'}", "--window-size=1280,2000",
                                     page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and (tmp_path / "report.png").stat().st_size > 10_000


def test_results_readme_opens_with_the_study_main_table(tmp_path):
    from bench.results.write import write_tables

    runs = tmp_path / "results" / "runs.jsonl"
    runs.parent.mkdir()
    records = study_records()
    runs.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_tables(runs, runs.parent)
    assert (runs.parent / "README.md").read_text().startswith("# The study\n\nThe study `configs/question.yaml` has "
                                                              "no records here yet")
    assert not any("report" in p.name for p in written)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "question.yaml").write_text(
        "name: question\nquestion: Does it generalise?\ntasks: ['embedded:small']\nencoders: [mfcc39]\n")
    sidecar_path(runs).write_text(json.dumps({"question": {"config": "../configs/question.yaml",
                                                           "config_hashes": sorted(planned(records))}}))
    write_tables(runs, runs.parent)
    readme = (runs.parent / "README.md").read_text()
    assert readme.startswith("# The study\n\n**Does it generalise?**\n\n| group | representation | words, in-domain |")
    assert "| audiovisual SSL | av-joint | 79.00 [" in readme and "[question/report.md](question/report.md)" in readme
    assert ("- audiovisual SSL against supervised: of 2 paired tests (pairs x tasks x settings), audiovisual SSL is "
            "significantly better in 2, significantly worse in 0") in readme
    assert (runs.parent / "question" / "report.html").is_file()


def test_one_seed_over_two_corpora_gets_a_bootstrap_interval_inside_the_metric_range():
    """Two corpora and one seed: the corpora are not replicates, so no t interval over them."""
    records = [r for r in study_records(n_right_av=(95, 78)) if r["seed"] == 0]
    report = build_report(FakeSweep, records, planned(records))
    cell = report.cells[("av-joint", "words", "in-domain")]
    assert cell.ci_kind == "bootstrap over test items" and len(cell.values) == 2
    assert 0.0 <= cell.ci[0] < cell.mean < cell.ci[1] <= 1.0 and cell.ci[1] - cell.ci[0] < 0.15
    gap = report.gaps[("av-joint", "words")]
    assert gap.ci_kind == "bootstrap over test items" and gap.ci[0] < gap.mean < gap.ci[1]
    assert "‡ marks a cell of one seed" in render_markdown(report)
    full = build_report(FakeSweep, study_records(n_right_av=(95, 78)), planned(study_records(n_right_av=(95, 78))))
    assert "‡" not in render_markdown(full) and "‡" not in render_html(full)  # no key to a mark no cell carries


def test_limitations_say_how_far_each_pretraining_loss_moved_and_flag_a_flat_one(tmp_path):
    from bench.errors import ConfigError
    from bench.results.pretraining import loss_movements

    records = study_records()
    build = {"kind": "pretraining", "status": "ok", "identity": "1d1d1d1d1d1d1d1d", "encoder": "av-joint",
             "checkpoint_hash": "aaaa" * 4, "files": "pretraining/av-joint", "step": 400, "total_steps": 400,
             "clips": 3200, "settings": {"batch_size": 8, "crop_seconds": 1.0}, "data_name": "embedded-aaaa"}
    curve = tmp_path / "pretraining" / "av-joint" / "loss.csv"
    curve.parent.mkdir(parents=True)
    # 20 logged rows: the first tenth (2 rows) averages 2.0 and the last 1.5, a 25% fall.
    curve.write_text("step,epoch,loss,loss_video,accuracy\n" + "".join(
        f"{5 * (i + 1)},0.1,{2.0 if i < 2 else 1.5 if i >= 18 else 1.7},9,{0.1 if i < 2 else 0.3}\n"
        for i in range(20)))
    text = render_markdown(build_report(FakeSweep, records, planned(records), [build], {},
                                        loss_movements([build], tmp_path)))
    assert ("- av-joint was pretrained for 400 steps x batch 8, 1 s crops (1.00 epochs) on embedded-aaaa; its loss "
            "went from 2 (mean of steps 5-10) to 1.5 (steps 95-100), -25.0%; accuracy 0.1 -> 0.3.\n") in text
    curve.write_text("step,epoch,loss\n" + "".join(f"{5 * (i + 1)},0.1,{10.9 + 0.01 * (i % 2)}\n" for i in range(20)))
    text = render_markdown(build_report(FakeSweep, records, planned(records), [build], {},
                                        loss_movements([build], tmp_path)))
    assert "The loss moved less than 5% of its start over the whole budget: read this checkpoint as barely trained" in text
    curve.unlink()
    text = render_markdown(build_report(FakeSweep, records, planned(records), [build], {},
                                        loss_movements([build], tmp_path)))
    assert "on embedded-aaaa; no loss curve kept." in text
    curve.write_text("step,epoch,loss\n5,0.1,2.0\n10,0.1,nan?\n")
    with pytest.raises(ConfigError, match=r"pretraining/av-joint/loss.csv: the pretraining curve needs numeric"):
        loss_movements([build], tmp_path)
