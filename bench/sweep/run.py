"""`avbench sweep CONFIG.yaml`: plan the runs of a sweep and hand the missing ones to an executor
(bench.sweep.executors).

Runs already recorded (same config hash) are skipped, so a re-run does only what is missing or
failed, and a killed sweep loses only its runs in flight (which resume from their last finished
epoch). Records do not know which sweep made them, so the sweep's own facts (config path,
pretraining, budget, description, deviations, its runs' config hashes) go to a sidecar beside the
records, `runs.jsonl` -> `runs.sweeps.json`, one entry per sweep name. The entry's run hashes accumulate
over invocations, so a sweep grown in stages (an encoder or seeds added later) still names every run it made.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from bench.errors import ConfigError
from bench.evaluate.identity import RunConfig, checkpoint_of, run_identity
from bench.files import atomic_write_bytes
from bench.records import completed, read_records, sidecar_path
from bench.sweep.config import Sweep
from bench.sweep.pretraining import Stage, known_checkpoints, resolve_stages, stage_of

log = logging.getLogger("avbench.sweep")


@dataclass
class PlannedRun:
    config: RunConfig
    label: str
    config_hash: str | None  # None: the task or checkpoint does not resolve (the run will fail, recorded)
    problem: str | None = None
    manifest: Any = None


def run_label(config: RunConfig) -> str:
    labels = f"{config.k_shot}-shot" if config.k_shot else f"{100 * config.label_fraction:g}% labels"
    evals = f" -> {','.join(config.eval_tasks)}" if config.eval_tasks else ""
    kind = "" if config.task_type == "words" else f" {config.task_type}"
    return f"{config.encoder} on {config.task}{evals}{kind} ({config.mode}, {labels}, seed {config.seed})"


def plan_runs(sweep: Sweep, progress: bool = False, checkpoints: dict[str, list[str]] | None = None,
              recorded: Iterable[str] = ()) -> list[PlannedRun]:
    """Each run with the config hash run_experiment will give it (tasks are resolved, once each).

    `checkpoints`: path -> the content hashes, latest first, that earlier builds of a checkpoint not
    (yet) on this machine recorded (bench.sweep.pretraining.known_checkpoints). A run takes the first
    whose config hash is `recorded`, else the latest: builds of one identity on machines that did
    not reproduce each other's bits each keep the runs made on them."""
    from bench.data.tasks import resolve_task

    manifests: dict[str, Any] = {}
    checkpoints, recorded, memo = dict(checkpoints or {}), set(recorded), {}
    plan = []
    for config in sweep.runs:
        try:
            if config.task not in manifests:
                manifests[config.task] = resolve_task(config.task, progress=progress)
            manifest = manifests[config.task]
            checkpoint = checkpoint_of(config)
            candidates = checkpoints.get(checkpoint) or [None]
            hashes = [run_identity(config, manifest.manifest_id, memo if c is None else {checkpoint: c})[2]
                      for c in candidates]
            chash = next((h for h in hashes if h in recorded), hashes[0])
            plan.append(PlannedRun(config, run_label(config), chash, manifest=manifest))
        except Exception as exc:  # the run itself will fail with this error and be recorded
            plan.append(PlannedRun(config, run_label(config), None, problem=f"{type(exc).__name__}: {exc}"))
    return plan


def write_sidecar(sweep: Sweep, plan: list[PlannedRun], stages: list[Stage] = ()) -> Path:
    """Merge this sweep's entry into the sidecar (atomic replace, under a lock against other sweeps)."""
    path = sidecar_path(sweep.records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}); fix or delete it (it only describes sweeps).") from exc
        # Relative to the records' folder where it can be: the sidecar is committed with them.
        source = Path(os.path.relpath(sweep.source.resolve(), path.parent.resolve()))
        # A union over every invocation of the sweep: a sweep grown in stages (more encoders, more
        # seeds) keeps naming the runs its earlier stages recorded.
        earlier = set(entries.get(sweep.name, {}).get("config_hashes", []))
        entries[sweep.name] = {"config": str(source), "description": sweep.description,
                               "deviations_from_paper": sweep.deviations,
                               # Merged too: a sweep run in parts (`--encoders`) keeps every part's entries.
                               "pretraining": {**entries.get(sweep.name, {}).get("pretraining", {}),
                                               **{s.name: {"identity": s.identity, "total_steps": s.total_steps,
                                                           **s.config.identity()} for s in stages if not s.problem}},
                               "budget": sweep.budget,
                               "config_hashes": sorted(earlier | {p.config_hash for p in plan if p.config_hash})}
        atomic_write_bytes(path, (json.dumps(entries, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def run_sweep(sweep: Sweep, *, force: bool = False, progress: bool = True, executor=None,
              plugins: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Build the missing pretraining checkpoints the unrecorded runs need, then run every configuration
    not yet recorded; return counts of done and skipped runs and the failures.

    `executor` is one of bench.sweep.executors' (default: inline, one run after another in this
    process). Two phases: the checkpoints to build and the runs that need none of them, pretraining
    first so it starts first; then the runs of the checkpoints just built.
    """
    from bench.sweep.executors import InlineExecutor

    executor = executor or InlineExecutor(progress=progress)
    stages = resolve_stages(sweep, progress=progress)
    done = {} if force else completed(read_records(sweep.records))
    plan = plan_runs(sweep, progress=progress, checkpoints=known_checkpoints(stages), recorded=done)
    write_sidecar(sweep, plan, stages)  # before any job: a killed sweep still names its runs
    if sweep.not_applicable:
        log.info("not applicable, left out of the grid: %s", ", ".join(sweep.not_applicable))
    summary: dict[str, Any] = {"ran": 0, "skipped": 0, "failed": [], "pretrained": 0, "pretraining_reused": 0}
    pending = [(i, run) for i, run in enumerate(plan, 1) if run.config_hash not in done]
    summary["skipped"] = len(plan) - len(pending)
    unresolved, runnable = [s for s in stages if s.problem], []
    for i, run in pending:
        stage = stage_of(run.config.encoder, unresolved)
        if stage is None:
            runnable.append((i, run))
        else:
            summary["failed"].append(f"[{i}/{len(plan)}] {run.label}: not run, its pretraining {stage.name} cannot "
                                     f"start ({stage.problem})")
    pending = runnable
    if summary["skipped"]:
        log.info("sweep %s: %d of %d run(s) already recorded in %s", sweep.name, summary["skipped"], len(plan),
                 sweep.records)
    to_build = [s for s in stages if not s.complete and not s.problem
                and any(stage_of(r.config.encoder, [s]) for _, r in pending)]
    for stage in stages:
        if stage.problem:
            log.error("pretraining %s cannot start: %s", stage.name, stage.problem)
        elif stage not in to_build:
            log.info("pretraining %s: %s", stage.name, "complete at " + str(stage.folder) if stage.complete
                     else "not needed: every run that evaluates it is recorded")
            if why := stage.unlike_recorded():  # None unless a build is complete here
                log.warning("pretraining %s: %s", stage.name, why)
    later = [(i, r) for i, r in pending if stage_of(r.config.encoder, to_build)]
    waiting = {i for i, _ in later}
    first = [s.job(n, len(to_build)) for n, s in enumerate(to_build, 1)] \
        + [_job(i, run, len(plan)) for i, run in pending if i not in waiting]
    built = _execute(executor, first, sweep, force, plugins, summary)
    failed_stages = {name: outcome["error"] for name, outcome in built.items() if outcome["status"] == "failed"}
    for stage in to_build:
        if why := stage.unlike_recorded(built.get(stage.name, {}).get("checkpoint_hash")):
            log.warning("pretraining %s: %s", stage.name, why)
    if later:  # their checkpoints exist now (or failed): plan them again with the files' hashes
        replan = plan_runs(sweep, progress=progress, checkpoints=known_checkpoints(
            [s for s in stages if s not in to_build]), recorded=done)
        jobs = []
        for i, _ in later:
            run, stage = replan[i - 1], stage_of(replan[i - 1].config.encoder, to_build)
            if stage.name in failed_stages:
                summary["failed"].append(f"[{i}/{len(plan)}] {run.label}: not run, its pretraining {stage.name} "
                                         f"failed ({failed_stages[stage.name]})")
            elif run.config_hash in done:  # the rebuilt checkpoint is the recorded one
                summary["skipped"] += 1
            else:
                jobs.append(_job(i, run, len(plan)))
        # Before these jobs, as before the first ones: a sweep killed while running them still names
        # the runs keyed on the checkpoints it just built, so their records count in its report.
        write_sidecar(sweep, replan, stages)
        _execute(executor, jobs, sweep, force, plugins, summary)
    return summary


def _job(index: int, run: PlannedRun, count: int) -> dict:
    return {"index": index, "label": f"[{index}/{count}] {run.label}", "config": asdict(run.config)}


def _execute(executor, jobs: list[dict], sweep: Sweep, force: bool, plugins, summary: dict) -> dict[str, dict]:
    """Hand `jobs` to the executor, log each outcome into `summary`; return the pretraining entries'
    outcomes by entry name (failed with its error, or built with its checkpoint hash).

    A run that another process is running (a second sweep of the same grid, in another terminal or on
    another machine sharing the data folder) is passed over, not waited for, so the two share the grid;
    once the rest is done, this sweep comes back to the runs it passed over and waits for them."""
    stage_outcomes: dict[str, dict] = {}
    passed_over = list(_log_outcomes(
        executor.execute([{**job, "wait": job.get("kind") == "pretraining"} for job in jobs], sweep.records,
                         force=force, plugins=plugins), summary, stage_outcomes))
    if passed_over:
        log.info("%d run(s) were running in another process when their turn came; waiting for them now: %s",
                 len(passed_over), "; ".join(job["label"] for job in passed_over))
        again = [{**job, "wait": True} for job in passed_over]
        list(_log_outcomes(executor.execute(again, sweep.records, force=force, plugins=plugins), summary,
                           stage_outcomes))
    return stage_outcomes


def _log_outcomes(outcomes, summary: dict, stage_outcomes: dict[str, dict]):
    """Log each (job, outcome) into `summary`, and a pretraining job's into `stage_outcomes` by entry
    name; yield the jobs another process was running."""
    for job, outcome in outcomes:
        pretraining = job.get("kind") == "pretraining"
        if pretraining and outcome["status"] != "busy":
            stage_outcomes[job["name"]] = outcome
        if outcome["status"] == "busy":
            log.info("%s: running in another process; this sweep comes back to it after its other runs", job["label"])
            yield job
        elif outcome["status"] == "failed":
            log.error("%s failed: %s", job["label"], outcome["error"])
            summary["failed"].append(f"{job['label']}: {outcome['error']}")
        elif pretraining:
            summary["pretrained" if outcome["status"] == "ok" else "pretraining_reused"] += 1
            log.info("%s: %s, final loss %s, checkpoint %s", job["label"],
                     "built" if outcome["status"] == "ok" else "built meanwhile by another process",
                     outcome.get("final_loss"), outcome.get("checkpoint_hash"))
        elif outcome["status"] == "skipped":  # recorded by another process since planning
            summary["skipped"] += 1
        else:
            summary["ran"] += 1
            log.info("%s: test %.2f%% (best val %.2f%% at epoch %d), %.0f s", job["label"], 100 * outcome["test_acc"],
                     100 * outcome["val_acc"], outcome["best_epoch"], outcome["wall_seconds"])
