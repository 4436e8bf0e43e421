"""The cost of a sweep, for `avbench sweep --dry-run`.

`--dry-run` resolves tasks (for the config hashes) but builds no features and trains nothing: it
counts recorded, failed-before and remaining runs, and costs the remaining ones from the training
seconds per clip-epoch of earlier records of the same frame rate and mode.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from dataclasses import asdict

from bench.evaluate.identity import RunConfig
from bench.records import completed, read_records
from bench.registry import create_encoder, split_spec
from bench.sweep.config import Sweep
from bench.sweep.pretraining import Stage, known_checkpoints, resolve_stages
from bench.sweep.pretraining_cost import pretraining_report
from bench.sweep.run import PlannedRun, plan_runs

log = logging.getLogger("avbench.sweep")


def default_seconds_per_clip_epoch(frame_rate: float) -> float:
    """Frozen-feature BiGRU training seconds per clip and epoch, for when no record has measured it.

    The nominal figures for 2 CPU cores and the paper's head: 45 s per 2,880 clips at 100 Hz and
    15 s at 25 Hz, other rates on the line through them (a fixed cost plus one per frame). A busy
    machine is slower (the reference records in results/ took 95-350 s per 2,880 clips at 100 Hz),
    which is why measured records, when there are any, take precedence.
    """
    return (5.0 + 0.4 * frame_rate) / 2880



_RATES: dict[tuple, float] = {}


def frame_rate(encoder: str, encoder_kwargs: dict | None = None) -> float | None:
    """Feature frame rate of an encoder (built without weights: the rate never depends on them)."""
    key = (split_spec(encoder)[0], json.dumps(encoder_kwargs or {}, sort_keys=True, default=str))
    if key not in _RATES:
        try:
            _RATES[key] = float(create_encoder(key[0], **(encoder_kwargs or {})).frame_rate)
        except Exception as exc:  # unknown or unbuildable here: no timing for it
            log.debug("no frame rate for %s: %s", encoder, exc)
            _RATES[key] = None
    return _RATES[key]


def measured_seconds_per_clip_epoch(records: list[dict]) -> dict[tuple[float, str], float]:
    """(frame rate, mode) -> median over earlier runs' epochs of epoch seconds / training clips."""
    samples = defaultdict(list)
    for r in records:
        if r.get("status") != "ok" or not r.get("train_clips") or not r.get("history"):
            continue
        rate = frame_rate(r.get("encoder_name") or r["encoder"], (r.get("config") or {}).get("encoder_kwargs"))
        if rate is not None:
            samples[(rate, r["mode"])] += [h["seconds"] / r["train_clips"] for h in r["history"] if "seconds" in h]
    return {key: statistics.median(values) for key, values in samples.items() if values}


def _clip_passes(run: PlannedRun) -> int:
    """Training clips a run passes through the head: budget x training clips, summed over folds."""
    from bench.data.datasets import label_subset
    from bench.data.task_types import build_task_view

    view = build_task_view(run.manifest, run.config.task_type)
    folds = view.folds or [view.splits]
    if run.config.budget_steps:
        return run.config.budget_steps * run.config.batch_size * len(folds)
    return run.config.epochs * sum(len(label_subset(f["train"], run.config.label_fraction, k_shot=run.config.k_shot,
                                                    label_column=view.label_column)) for f in folds)


def _failed_key(config: dict) -> str | None:
    try:
        return json.dumps(asdict(RunConfig(**config)), sort_keys=True, default=str)
    except (TypeError, ValueError):  # a record from an older RunConfig with fields since removed
        return None


def cost_table(sweep: Sweep, stages: list[Stage] = ()) -> tuple[dict[str, dict], dict[str, int]]:
    """Per encoder: runs, recorded, failed (before, and not since recorded), remaining, estimated
    seconds of the remaining runs and where the timing came from; and the runs that cannot start.

    A run of a checkpoint the sweep has yet to build is keyed on the hash an earlier build of the
    same identity recorded, else counted as remaining (`stages`: bench.sweep.pretraining)."""
    records = read_records(sweep.records)
    done = completed(records)
    plan = plan_runs(sweep, progress=False, checkpoints=known_checkpoints(stages, placeholder=True), recorded=done)
    failed = {_failed_key(r["config"]) for r in records if r.get("status") == "failed" and r.get("config")}
    measured = measured_seconds_per_clip_epoch(records)
    rows: dict[str, dict] = defaultdict(lambda: {"runs": 0, "recorded": 0, "failed": 0, "remaining": 0,
                                                 "seconds": 0.0, "sources": set()})
    problems: dict[str, int] = defaultdict(int)
    for run in plan:
        row = rows[run.config.encoder]
        row["runs"] += 1
        if run.config_hash in done:
            row["recorded"] += 1
            continue
        row["remaining"] += 1
        row["failed"] += _failed_key(asdict(run.config)) in failed
        if run.problem:
            problems[run.problem] += 1
            continue
        rate = frame_rate(run.config.encoder, run.config.encoder_kwargs)
        per_clip = measured.get((rate, run.config.mode))
        if per_clip is not None:
            row["sources"].add(f"measured {rate:g} Hz {run.config.mode}")
        else:
            per_clip = default_seconds_per_clip_epoch(rate or 100.0)
            row["sources"].add(f"default {rate or 100.0:g} Hz" + ("" if run.config.mode == "frozen"
                                                                   else f", {run.config.mode}: a lower bound"))
        try:
            row["seconds"] += _clip_passes(run) * per_clip
        except Exception as exc:  # e.g. a task type the manifest lacks the columns for: the run will say
            problems[f"{type(exc).__name__}: {exc}"] += 1
    return dict(rows), dict(problems)


def dry_run_report(sweep: Sweep, device: str = "auto") -> str:
    """The plan as text: the pretraining stages and their cost, then the grid: recorded /
    failed-before / remaining runs, and the remaining cost."""
    stages = resolve_stages(sweep)
    rows, problems = cost_table(sweep, stages)
    remaining = {encoder for encoder, row in rows.items() if row["remaining"]}
    stage_lines, stage_seconds = pretraining_report(stages, remaining, device)
    total = {k: sum(r[k] for r in rows.values()) for k in ("runs", "recorded", "failed", "remaining", "seconds")}
    width = max([22, *map(len, rows)])
    lines = [f"sweep {sweep.name}: {total['runs']} run(s) in the grid ({sweep.budget['value']} {sweep.budget['unit']} "
             f"each); records {sweep.records}",
             f"  recorded {total['recorded']}, failed before {total['failed']} (retried), "
             f"remaining {total['remaining']}",
             *([f"  not applicable, left out of the grid: {', '.join(sweep.not_applicable)}"]
               if sweep.not_applicable else []),
             "", f"  {'encoder':<{width}} {'runs':>5} {'recorded':>9} {'failed':>7} {'remaining':>10} {'est. hours':>11}"
                 "  seconds per clip-epoch from"]
    for encoder, r in rows.items():
        lines.append(f"  {encoder:<{width}} {r['runs']:>5} {r['recorded']:>9} {r['failed']:>7} {r['remaining']:>10} "
                     f"{r['seconds'] / 3600:>11.2f}  {'; '.join(sorted(r['sources'])) or '-'}")
    lines.append(f"  {'total':<{width}} {total['runs']:>5} {total['recorded']:>9} {total['failed']:>7} "
                 f"{total['remaining']:>10} {total['seconds'] / 3600:>11.2f}  ({total['seconds'] / 60:.1f} min "
                 "one run at a time; divide by the concurrent runs for wall time)")
    for problem, count in problems.items():
        lines.append(f"  {count} run(s) cannot start, not costed: {problem}")
    if stage_lines:
        lines += ["", *stage_lines, f"  total, pretraining and runs: {(stage_seconds + total['seconds']) / 3600:.2f} "
                  "hours one job at a time"]
    return "\n".join(lines)
