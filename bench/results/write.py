"""`avbench tables`: every file of results/ from the run records.

Outputs (all byte-identical for the same records: sorted keys, fixed bootstrap seeds, fixed float
formats, plots without dates): results.md, results.csv (one row per cell and metric), results.tex
(booktabs), significance.md/.csv, generalisation.md/.csv when there are cross-dataset runs,
plots/ (bench.results.plots) and README.md, the index of all of them with the git commits behind
them and the sweeps, named in the sweep sidecar beside the records (runs.sweeps.json). The
pretraining records beside them (runs.pretraining.jsonl, bench.results.pretraining) give the
pretraining runs' budget and wall time, in README.md and under each table of results.md.
"""

from __future__ import annotations

from pathlib import Path

from bench.files import atomic_write_bytes
from bench.records import pretraining_records_path, read_pretraining_records, read_records
from bench.results import index as results_index, plots
from bench.results.render import generalisation, render_csv, render_latex, render_markdown
from bench.results.significance import significance
from bench.results.tables import collect


def write_tables(records_path: str | Path, out_dir: str | Path) -> list[Path]:
    records_path = Path(records_path)
    records = read_records(records_path)
    pretraining = read_pretraining_records(pretraining_records_path(records_path))
    tables, summary = collect(records, str(records_path))
    everything = [r for t in tables for r in t.records]
    files: dict[str, bytes] = {
        "results.md": render_markdown(tables, summary, pretraining).encode(),
        "results.csv": render_csv(tables).encode(), "results.tex": render_latex(tables).encode()}
    index = [("results.md", "all tables (Markdown)", everything), ("results.csv", "one row per cell and metric",
                                                                   everything),
             ("results.tex", "all tables (LaTeX, booktabs)", everything)]
    sig_md, sig_csv = significance(tables)
    files.update({"significance.md": sig_md.encode(), "significance.csv": sig_csv.encode()})
    index += [("significance.md", "paired McNemar tests, Holm-adjusted", everything),
              ("significance.csv", "the same, one row per comparison", everything)]
    cross = generalisation(tables)
    if cross is not None:
        files.update({"generalisation.md": cross[0].encode(), "generalisation.csv": cross[1].encode()})
        cross_records = [r for t in tables if t.cross for r in t.records]
        index += [("generalisation.md", "cross-dataset matrices", cross_records),
                  ("generalisation.csv", "the same, one row per matrix cell", cross_records)]
    for table in tables:
        for name, (what, data) in sorted(plots.table_figures(table).items()):
            files[f"plots/{name}"] = data
            index.append((f"plots/{name}", what, table.records))
    out_dir = Path(out_dir)
    study_text, study_files = study_section(records_path, records, pretraining)
    files.update(study_files)
    files["README.md"] = (study_text + results_index.render(index, everything, summary, records_path, out_dir,
                                                            pretraining)).encode()
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return [out_dir / name for name in files]


STUDY = "question"  # the sweep whose report results/README.md opens with
REALISM_LINES = ("mouth opening", "nearest-centroid", "  frames ", "  tracks ", "  audio ")


def realism_notes(records_path: Path) -> dict[str, list[str]]:
    """Corpus name -> the headline lines of its committed `avbench corpus check` output
    (<records folder>/corpus/check-<corpus>.txt), for the report's setup."""
    notes = {}
    for path in sorted((records_path.parent / "corpus").glob("check-*.txt")):
        lines = [" ".join(line.split()) for line in path.read_text().splitlines() if line.startswith(REALISM_LINES)]
        if lines:
            notes[path.stem.removeprefix("check-")] = lines
    return notes


def report_files(sweep, records: list, planned: set[str], pretraining: list, records_path: Path):
    """(the Report of `sweep` from its planned runs' records, {"report.md": ..., "report.html": ...})."""
    from bench.results.pretraining import loss_movements
    from bench.results.report import build_report
    from bench.results.report_render import render_html, render_markdown as report_markdown

    report = build_report(sweep, records, planned, pretraining, realism_notes(records_path),
                          loss_movements(pretraining, records_path.parent))
    return report, {"report.md": report_markdown(report).encode(), "report.html": render_html(report).encode()}


def study_section(records_path: Path, records: list, pretraining: list) -> tuple[str, dict[str, bytes]]:
    """The opening of results/README.md: the study's main table and its report files, when the sweeps
    sidecar names the study's config and runs; else how to make them."""
    from bench.results.report_render import families, main_table_rows, markdown_table, one_seed_legend
    from bench.sweep.config import load_sweep

    entry = results_index.sweep_entries(records_path).get(STUDY)
    if not entry or not entry.get("config_hashes"):
        return (f"# The study\n\nThe study `configs/{STUDY}.yaml` has no records here yet: `avbench sweep "
                f"configs/{STUDY}.yaml` runs it, then `avbench tables` (or `avbench report configs/{STUDY}.yaml`) "
                f"writes its report to {STUDY}/report.md and {STUDY}/report.html and its main table here.\n\n"), {}
    sweep = load_sweep(records_path.parent / entry["config"])
    report, files = report_files(sweep, records, set(entry["config_hashes"]), pretraining, records_path)
    text = (f"# The study\n\n**{report.question}**\n\n{markdown_table(*main_table_rows(report))}\nMean [95% CI] "
            f"(n runs over corpora and seeds); accuracy (%), EER (%) for verification; CI: t over seeds"
            f"{one_seed_legend(report, '; ‡ one seed (bootstrap CI over the test items)')}.\n\n"
            + "".join(f"- {summary}\n" for _, _, summary in families(report))
            + f"\nThe whole report, with the generalisation gaps, the paired tests and every finding: "
            f"[{STUDY}/report.md]({STUDY}/report.md), [{STUDY}/report.html]({STUDY}/report.html).\n\n")
    return text, {f"{STUDY}/{name}": data for name, data in files.items()}


def write_report(config_path: str | Path, records_path: str | Path | None = None,
                 out_dir: str | Path | None = None) -> list[Path]:
    """results/<name>/report.md and report.html for the sweep config, from the records its runs wrote."""
    from bench.errors import ConfigError
    from bench.sweep.config import load_sweep

    sweep = load_sweep(config_path)
    records_path = Path(records_path or sweep.records)
    if not records_path.is_file():
        raise ConfigError(f"{records_path}: no run records yet; run `avbench sweep {config_path}` first.")
    planned = set(results_index.sweep_entries(records_path).get(sweep.name, {}).get("config_hashes", []))
    if not planned:
        raise ConfigError(f"{records_path}: no run of the sweep {sweep.name!r} is recorded (its sidecar "
                          f"{records_path.stem}.sweeps.json names none); run `avbench sweep {config_path}` first.")
    _, files = report_files(sweep, read_records(records_path), planned,
                            read_pretraining_records(pretraining_records_path(records_path)), records_path)
    out_dir = Path(out_dir or Path("results") / sweep.name)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return [out_dir / name for name in files]
