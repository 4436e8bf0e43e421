"""`results/README.md`: the index of what `avbench tables` wrote, the sweeps and git commits behind
each file, and the pretraining runs of the pretraining records beside the records
(bench.results.pretraining)."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.records import sidecar_path
from bench.results.pretraining import render_pretraining


def render(index: list[tuple[str, str, list[dict]]], records: list[dict], summary: dict[str, Any],
           records_path: Path, out_dir: Path, pretraining: list[dict] = ()) -> str:
    """The whole README: one row per written file, then the pretraining runs of `pretraining` (the
    pretraining records) and the run `records` (every tabled one) that evaluated each."""
    return (render_files(index, summary, records_path, sweeps_by_run(records_path))
            + render_pretraining(list(pretraining), records, records_path, out_dir))


def sweep_entries(records_path: Path) -> dict[str, dict[str, Any]]:
    """The sweeps sidecar beside the records (runs.jsonl -> runs.sweeps.json): sweep name -> its entry
    (config path relative to the records' folder, description, config_hashes, ...); {} without one."""
    sidecar = sidecar_path(records_path)
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{sidecar}: not valid JSON ({exc}); fix or delete it (it only names sweeps).") from exc


def sweeps_by_run(records_path: Path) -> dict[str, list[str]]:
    """Run config hash -> names of the sweeps that planned it, from the sweeps sidecar."""
    entries = sweep_entries(records_path)
    names: dict[str, list[str]] = defaultdict(list)
    for name, entry in sorted(entries.items()):
        for config_hash in entry.get("config_hashes", []):
            names[config_hash].append(name)
    return names


def render_files(index: list[tuple[str, str, list[dict]]], summary: dict[str, Any], source: Path,
                  sweeps: dict[str, list[str]]) -> str:
    out = io.StringIO()
    out.write(f"# Generated results\n\nEverything listed here is written by `avbench tables` from `{source.name}` "
              f"(a pure function of it, with sweep names from `{source.stem}.sweeps.json` and pretraining runs from "
              f"`{source.stem}.pretraining.jsonl`: the same records give "
              f"byte-identical files); do not edit by hand. Records: {summary['ok']} successful run(s) tabled, "
              f"{summary['superseded']} replaced by a later record of the same run, {len(summary['failed'])} "
              "failed.\n\n| file | contents | sweeps | git commits |\n|---|---|---|---|\n")
    for name, what, records in index:
        # A cross-dataset record is an extra test of the run it names in eval_of.
        names = sorted({n for r in records for n in ([r["sweep"]] if r.get("sweep") else
                                                     sweeps.get(r.get("eval_of") or r["config_hash"], []))})
        out.write(f"| [{name}]({name}) | {what} | {', '.join(names) or '—'} | {commits_text(records)} |\n")
    return out.getvalue()


# Beyond this many, a file's commits are counted, not listed: a list of 70 hashes per row hides the table.
LISTED_COMMITS = 3


def commits_text(records: list[dict]) -> str:
    """The git commits behind `records`: listed when few, else counted (each run's stays in its record)."""
    commits = sorted({str(r.get("git_commit") or "unknown") for r in records})
    if len(commits) <= LISTED_COMMITS:
        return ", ".join(c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits)
    dirty = sum(c.endswith("-dirty") for c in commits)
    return (f"{len(commits)} commits" + (f", {dirty} of them with uncommitted changes" if dirty else "")
            + " (each run's `git_commit` is in its record)")
