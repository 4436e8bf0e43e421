"""The study report as `report.md` and a self-contained `report.html` (plots inlined as PNG data URIs).

Pure functions of a bench.results.report.Report: the same records give the same bytes. The HTML
needs no server and fetches nothing; a short inline script only counts the images that decoded
(`data-images-loaded` on <html>), which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from bench.results.pretraining import budget_text, build_key, movement_text, trained_text
from bench.results.stats import BOOTSTRAP_RESAMPLES
from bench.results.study_cost import hours_text
from bench.results.report import PRIMARY_METRIC, REPORT_GROUPS, CellStats, Report
from bench.results.report_tests import ALPHA, Test, family_summary, finding
from bench.results.tables import METRICS

TASK_TITLES = {"words": "words", "speaker-id": "speaker id", "speaker-verification": "speaker verification (EER)",
               "emotion": "emotion"}


def _fmt(metric: str, value: float | None) -> str:
    return METRICS[metric].fmt(value)


def cell_text(report: Report, key: tuple[str, str, str]) -> str:
    cell = report.cells.get(key)
    if cell is None:
        return "—"
    metric = PRIMARY_METRIC[key[1]]
    ci = "" if cell.ci is None else f" [{_fmt(metric, cell.ci[0])}, {_fmt(metric, cell.ci[1])}]"
    mark = "‡" if cell.one_seed else ""
    return f"{_fmt(metric, cell.mean)}{ci} (n={len(cell.values)}){mark}"


def one_seed_legend(report: Report, legend: str) -> str:
    """`legend` (what ‡ means) when some cell carries the mark, else nothing: a key to no mark misleads."""
    return legend if any(cell.one_seed for cell in report.cells.values()) else ""


def main_table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["group", "representation"] + [f"{TASK_TITLES[t]}, {s}" for t, s in report.columns]
    rows = [[group, rep] + [cell_text(report, (rep, t, s)) for t, s in report.columns]
            for rep, group in report.representations.items()]
    return header, rows


def gap_rows(report: Report) -> list[list[str]]:
    rows = []
    for (rep, task), cell in sorted(report.gaps.items(), key=lambda kv: (list(report.representations).index(kv[0][0]),
                                                                          kv[0][1])):
        metric = PRIMARY_METRIC[task]
        ci = "no interval (one pair)" if cell.ci is None else f"[{_fmt(metric, cell.ci[0])}, {_fmt(metric, cell.ci[1])}]"
        rows.append([rep, TASK_TITLES[task], _fmt(metric, cell.mean), ci, str(len(cell.values)),
                     unseen_text(metric, cell)])
    return rows


def unseen_text(metric: str, gap: CellStats) -> str:
    """The gap read in words, so its sign needs no thought: an EER gap is negative when the unseen corpus is worse."""
    loss = gap.mean if METRICS[metric].higher_is_better else -gap.mean
    text = f"{'worse' if loss > 0 else 'better'} by {_fmt(metric, abs(gap.mean))}"
    return text + (", CI includes 0" if gap.ci is None or gap.ci[0] <= 0 <= gap.ci[1] else "")


def test_rows(tests: list[Test]) -> list[list[str]]:
    def p_text(p: float) -> str:  # a bootstrap p at its floor is a bound, not a value
        return f"≤{p:.3g}" if p <= 1.0 / BOOTSTRAP_RESAMPLES else f"{p:.3g}"

    return [[t.a, t.b, f"{TASK_TITLES[t.task]}, {t.setting}", f"{_fmt(t.metric, t.mean_a)} vs {_fmt(t.metric, t.mean_b)}",
             p_text(t.p) if "bootstrap" in t.detail else f"{t.p:.3g}", f"{t.p_holm:.3g}",
             "yes" if t.p_holm < ALPHA else "no", t.detail] for t in tests]


def families(report: Report) -> list[tuple[str, list[Test], str]]:
    """(title, its tests, their summary) per comparison, in the config's order; one with no pair yet is kept."""
    out = []
    for family in report.comparisons:
        tests = [t for t in report.tests if t.family == family]
        out.append((f"{family[0]} against {family[1]}", tests, family_summary(family, tests)))
    return out


def limitations(report: Report) -> list[str]:
    """Generated from the records: budgets, corpora, seeds, gaps in the grid."""
    out = []
    for build in report.pretraining:
        movement = report.loss_movements.get(build_key(build))
        curve = "no loss curve kept" if movement is None else movement_text(movement)
        out.append(f"{trained_text(build)} was pretrained for {budget_text(build)} on {build.get('data_name', '?')}; "
                   f"{curve}.")
    for rep, hashes in report.mixed_checkpoints.items():
        out.append(f"{rep}'s row pools runs of {len(hashes)} different checkpoints ("
                   + ", ".join(f"{h}: {n} run(s)" for h, n in sorted(hashes.items())) + "): its pretraining was "
                   "built more than once and did not reproduce its bits (another machine or software version); "
                   "read its cells as a mix of those builds.")
    if report.corpora:
        synthetic = [c for c in report.corpora if c.startswith("embedded")]
        if synthetic:
            out.append(f"{len(synthetic)} of the {len(report.corpora)} corpora ({', '.join(synthetic)}) are synthetic "
                       "(avbench's embedded corpus): voices, rooms and channels are generated, not recorded.")
    counts = sorted({len(c.values) for c in report.cells.values()})
    if counts:
        out.append(f"Runs per cell: {counts[0]}" + (f" to {counts[-1]}" if counts[-1] != counts[0] else "")
                   + f" (seeds {', '.join(map(str, report.seeds))} over {len(report.corpora)} training corpora).")
    one = sum(c.one_seed for c in report.cells.values())
    if one:
        out.append(f"{one} cell(s) rest on one seed: their interval (‡) covers only the finite test sets, not "
                   "the spread over training seeds.")
    if report.missing:
        out.append(f"{len(report.missing)} cell(s) of the configured grid have no record yet: "
                   + "; ".join(report.missing[:12]) + (" ..." if len(report.missing) > 12 else "") + ".")
    if any(report.skipped.values()):
        out.append("Records left out: " + ", ".join(f"{v} {k}" for k, v in report.skipped.items() if v) + ".")
    return out


# A test compares only the runs both sides have, so its means can differ from the main table's cells.
PAIRED_NOTE = ("A vs B: the means over the runs both have (same training corpus, test corpus and seed), "
               "which can differ from the main table's cells while the grid is incomplete. Each comparison below is "
               "one family of tests: p_Holm is Holm-corrected within it.")
NO_PAIR = "No pair of records to test yet."
GAP_HEADER = ["representation", "task", "gap", "95% CI", "pairs", "on the unseen corpus"]
COST_NOTE = ("Summed over the jobs of the records behind this report; jobs that ran in parallel add up, so this is "
             "machine time, not the time a person waited.")
COST_HEADER = ["stage", "jobs", "wall time", "core-hours", "median per job", "device", "note"]


def cost_rows(report: Report) -> list[list[str]]:
    return [[c.stage, str(c.jobs), hours_text(c.seconds), f"{c.core_seconds / 3600:.2f}",
             "—" if c.median_seconds is None else f"{c.median_seconds:,.0f} s", c.devices, c.note]
            for c in report.costs]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _setup_lines(report: Report) -> list[str]:
    corpora = [f"{c} ({report.corpus_tasks[c]})" if c in report.corpus_tasks else c for c in report.corpora]
    lines = [f"Corpora: {', '.join(corpora) or 'none yet'}. Seeds: {', '.join(map(str, report.seeds)) or '—'}."]
    for corpus in report.corpora:
        checks = report.realism.get(corpus)
        lines.append(f"{corpus}, data checks: " + ("; ".join(checks) if checks else
                                                   f"none committed (results/corpus/check-{corpus}.txt)"))
    for build in report.pretraining:
        labels = {"label": "word labels", None: "no labels"}.get(build.get("labels"), f"{build.get('labels')} labels")
        line = (f"{trained_text(build)} saw "
                f"{build.get('data_name', '?')}'s training split ({labels}), {budget_text(build)}.")
        if line not in lines:  # two builds of one recipe (a rebuilt checkpoint) read the same
            lines.append(line)
    lines += [f"Deviation from the paper: {d}" for d in report.deviations]
    groups = {}
    for rep, group in report.representations.items():
        groups.setdefault(group, []).append(rep)
    lines += [f"{g}: {', '.join(groups[g])}" for g in REPORT_GROUPS if g in groups]
    return lines


def render_markdown(report: Report) -> str:
    header, rows = main_table_rows(report)
    out = [f"# {report.name}: the report\n", f"**Question.** {report.question}\n", "## Setup\n"]
    out += [f"- {line}" for line in _setup_lines(report)] + [""]
    out += ["## Main table\n", "Metric: accuracy (%) for words, speaker id and emotion; equal error rate (%, lower "
            "is better) for speaker verification. Each cell: mean [95% CI] (n = runs, over training corpora and "
            "seeds). The CI is Student's t over seeds (each seed's mean over the corpora)"
            + one_seed_legend(report, "; ‡ marks a cell of one seed, whose CI is the bootstrap over its runs' test items")
            + ".\n", markdown_table(header, rows)]
    out += ["## Generalisation gap (in-domain minus cross-corpus)\n",
            markdown_table(GAP_HEADER, gap_rows(report))
            if report.gaps else "No representation has both in-domain and cross-corpus records yet.\n"]
    compared = families(report)
    out += ["## Paired tests\n", PAIRED_NOTE + "\n"]
    for title, tests, _ in compared:
        out += [f"### {title}\n", markdown_table(["A", "B", "task", "A vs B", "p", "p_Holm", f"significant (α = {ALPHA})",
                                                  "test"], test_rows(tests)) if tests else NO_PAIR + "\n"]
    out += ["## Findings\n"]
    for title, tests, summary in compared:
        out += [f"### {title}\n", f"**{summary}**\n"] + [f"- {finding(t)}" for t in tests] + [""]
    out += ["## Compute, by stage\n", COST_NOTE + "\n",
            markdown_table(COST_HEADER, cost_rows(report)) if report.costs else "No record yet.\n"]
    out += ["## Limitations\n"] + [f"- {line}" for line in limitations(report)] + [""]
    return "\n".join(out)


def _figure_png(report: Report) -> bytes | None:
    """Per task column: each representation's mean with its CI, in-domain and cross-corpus side by side."""
    if not report.cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in PRIMARY_METRIC if any(k[1] == t for k in report.cells)]
    reps = list(report.representations)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 0.32 * len(reps) + 1.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = METRICS[PRIMARY_METRIC[task]]
        for offset, setting, colour in ((-0.18, "in-domain", "#1f77b4"), (0.18, "cross-corpus", "#d62728")):
            for i, rep in enumerate(reps):
                cell = report.cells.get((rep, task, setting))
                if cell is None:
                    continue
                lo, hi = cell.ci if cell.ci else (cell.mean, cell.mean)
                ax.errorbar(cell.mean * metric.scale, i + offset, xerr=[[(cell.mean - lo) * metric.scale],
                            [(hi - cell.mean) * metric.scale]], fmt="o", color=colour, ms=4, capsize=2,
                            label=setting)
        ax.set_yticks(range(len(reps)), reps if ax is axes[0][0] else [""] * len(reps), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(TASK_TITLES[task], fontsize=9)
        ax.set_xlabel(metric.title.split(",")[0], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    unique = {}  # one legend entry per setting, from whichever panel shows it first
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _html_table(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table{f" id={chr(34)}{table_id}{chr(34)}" if table_id else ""}><thead><tr>{head}</tr></thead>' \
           f"<tbody>{body}</tbody></table>"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;"
         "padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}img{max-width:100%}")
SELF_CHECK = ("window.addEventListener('load',function(){var i=document.images,n=0;for(var k=0;k<i.length;k++)"
              "{if(i[k].complete&&i[k].naturalWidth>0)n++}document.documentElement.setAttribute('data-images-loaded',"
              "n+'/'+i.length)});")


def render_html(report: Report) -> str:
    header, rows = main_table_rows(report)
    parts: list[Any] = [f"<h1>{html.escape(report.name)}: the report</h1>",
                        f"<p><b>Question.</b> {html.escape(report.question)}</p>", "<h2>Setup</h2><ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in _setup_lines(report)] + ["</ul>", "<h2>Main table</h2>",
              "<p>Accuracy (%) for words, speaker id and emotion; EER (%, lower is better) for speaker verification. "
              "Mean [95% CI] (n runs); CI: t over seeds"
              + one_seed_legend(report, "; ‡: one seed, bootstrap CI over the test items") + ".</p>",
              _html_table(header, rows, "main-table")]
    png = _figure_png(report)
    if png is not None:
        parts.append(f'<img alt="means and 95% intervals per task" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}">')
    parts += ["<h2>Generalisation gap (in-domain minus cross-corpus)</h2>",
              _html_table(GAP_HEADER, gap_rows(report)) if report.gaps
              else "<p>No representation has both in-domain and cross-corpus records yet.</p>",
              "<h2>Paired tests</h2>", f"<p>{html.escape(PAIRED_NOTE)}</p>"]
    compared = families(report)
    for title, tests, _ in compared:
        parts += [f"<h3>{html.escape(title)}</h3>",
                  _html_table(["A", "B", "task", "A vs B", "p", "p_Holm", "significant", "test"], test_rows(tests))
                  if tests else f"<p>{NO_PAIR}</p>"]
    parts.append("<h2>Findings</h2>")
    for title, tests, summary in compared:
        parts += [f"<h3>{html.escape(title)}</h3><p><b>{html.escape(summary)}</b></p><ul>"]
        parts += [f"<li>{html.escape(finding(t))}</li>" for t in tests] + ["</ul>"]
    parts += ["<h2>Compute, by stage</h2>", f"<p>{html.escape(COST_NOTE)}</p>",
              _html_table(COST_HEADER, cost_rows(report), "cost-table") if report.costs else "<p>No record yet.</p>"]
    parts += ["<h2>Limitations</h2><ul>"] + [f"<li>{html.escape(x)}</li>" for x in limitations(report)] + ["</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(report.name)}: report</title><style>{STYLE}</style><script>{SELF_CHECK}</script>"
            "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
