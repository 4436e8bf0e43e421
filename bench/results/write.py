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
    files["README.md"] = results_index.render(index, everything, summary, records_path, out_dir,
                                               pretraining).encode()
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return [out_dir / name for name in files]
