"""`results/README.md`: the index of what `avbench tables` wrote, the sweeps and git commits behind
each file, and the pretraining runs kept beside the records."""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.records import sidecar_path


def render(index: list[tuple[str, str, list[dict]]], records: list[dict], summary: dict[str, Any],
           records_path: Path, out_dir: Path) -> str:
    """The whole README: one row per written file, then the pretraining runs (`records`: every tabled one)."""
    return (render_files(index, summary, records_path, sweeps_by_run(records_path))
            + render_pretraining(records, records_path.parent / "pretraining", out_dir))


def sweeps_by_run(records_path: Path) -> dict[str, list[str]]:
    """Run config hash -> names of the sweeps that planned it, from the sweeps sidecar beside the
    records (runs.jsonl -> runs.sweeps.json), if there is one."""
    sidecar = sidecar_path(records_path)
    if not sidecar.is_file():
        return {}
    try:
        entries = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{sidecar}: not valid JSON ({exc}); fix or delete it (it only names sweeps).") from exc
    names: dict[str, list[str]] = defaultdict(list)
    for name, entry in sorted(entries.items()):
        for config_hash in entry.get("config_hashes", []):
            names[config_hash].append(name)
    return names


def render_files(index: list[tuple[str, str, list[dict]]], summary: dict[str, Any], source: Path,
                  sweeps: dict[str, list[str]]) -> str:
    out = io.StringIO()
    out.write(f"# Generated results\n\nEverything listed here is written by `avbench tables` from `{source.name}` "
              f"(a pure function of it, with sweep names from `{source.stem}.sweeps.json`: the same records give "
              f"byte-identical files); do not edit by hand. Records: {summary['ok']} successful run(s) tabled, "
              f"{summary['superseded']} replaced by a later record of the same run, {len(summary['failed'])} "
              "failed.\n\n| file | contents | sweeps | git commits |\n|---|---|---|---|\n")
    for name, what, records in index:
        # A cross-dataset record is an extra test of the run it names in eval_of.
        names = sorted({n for r in records for n in ([r["sweep"]] if r.get("sweep") else
                                                     sweeps.get(r.get("eval_of") or r["config_hash"], []))})
        commits = sorted({str(r.get("git_commit") or "unknown") for r in records})
        commits = [c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits]
        out.write(f"| [{name}]({name}) | {what} | {', '.join(names) or '—'} | {', '.join(commits)} |\n")
    return out.getvalue()


def render_pretraining(records: list[dict], pretraining_dir: Path, out_dir: Path) -> str:
    """The pretraining runs kept beside the records (`pretraining/NAME/pretrain.json`, as `avbench
    pretrain` wrote it, with its loss curve and frame grids), and the records that evaluated each.

    A record names its checkpoint by path (`checkpoint_path`, and the encoder spec in its config), so
    the match is on the folder: `.../NAME/encoder.pt`.
    """
    summaries = sorted(pretraining_dir.glob("*/pretrain.json"))
    if not summaries:
        return ""
    out = io.StringIO()
    out.write("\n## Pretraining runs\n\nCopied from `avbench pretrain` output folders (`pretrain.json`, loss curve, "
              "frame grids; the checkpoints stay out of git). Evaluated by: the records whose encoder names "
              "`NAME/encoder.pt`.\n\n| folder | encoder | data | budget | wall | final loss | evaluated by | files |\n"
              "|---|---|---|---|---|---|---|---|\n")
    for path in summaries:
        folder = path.parent
        try:
            summary = json.loads(path.read_text())
            config = summary["config"]
            budget = f"{summary['step']} steps x batch {config['batch_size']} ({summary['epochs_done']} epochs)"
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a pretrain.json written by `avbench pretrain` ({exc}); "
                              "fix or remove the folder.") from exc
        suffix = f"/{folder.name}/encoder.pt"
        used = sorted({r["config_hash"] for r in records
                       if any(str(named).endswith(suffix) for named in (r.get("checkpoint_path"),
                                                                        r.get("config", {}).get("encoder")))})
        files = ", ".join(f"[{f.name}]({os.path.relpath(f, out_dir)})" for f in sorted(folder.iterdir())
                          if f.suffix in (".png", ".csv", ".txt", ".json"))
        final = summary.get("final_loss")
        out.write(f"| {folder.name} | {summary['encoder']} | {summary.get('data_name', summary.get('data'))} "
                  f"(manifest {summary.get('manifest_id', '?')}) | {budget} | {summary.get('seconds', 0):,.0f} s "
                  f"x {summary.get('processes', 1)} process(es) | {'—' if final is None else f'{final:.4g}'} | "
                  f"{len(used)} record(s) | {files} |\n")
    return out.getvalue()
