"""`avbench sweep CONFIG.yaml`: a grid of runs, planned, costed, and executed by bench.sweep.executors.

    name: quick                       # description, deviations_from_paper: optional, kept in the sidecar
    tasks: [embedded:default]         # cross-dataset: train_task: X (or tasks: [X, Y]) and eval_tasks: [Y, Z]
    task_types: [words]               # default; also speaker-id, speaker-verification, emotion
    encoders: [mfcc39, logmel]        # or `paper`: the nine encoders of the paper's tables
    modes: [frozen]                   # default: each encoder's default_mode (resnet18-scratch: scratch)
    label_fractions: [1.0, 0.1]       # or `paper`; default [1.0], or none when k_shots are given
    k_shots: [1, 5]                   # k labelled clips per class: extra grid points
    seeds: 3                          # a list, or n for seeds 0..n-1; default [0]
    budget: epochs                    # the train epochs (default), or "steps:N" optimizer steps
    train: {epochs: 12, lr: 1.0e-3, lr_drop_epoch: 9, lr_after_drop: 1.0e-4, batch_size: 32}
    pretraining: {apc: {data: embedded:default, steps: 20000}}   # free-form, per encoder
    records: results/runs.jsonl       # optional, relative to the current folder
    tables: results                   # optional: regenerate tables there after the sweep

Runs already recorded (same config hash) are skipped, so a re-run does only what is missing or
failed, and a killed sweep loses only its runs in flight (which resume from their last finished
epoch). Records do not know which sweep made them, so the sweep's own facts (config path,
pretraining, budget, description, deviations, its runs' config hashes) go to a sidecar beside the
records, `runs.jsonl` -> `runs.sweeps.json`, one entry per sweep name. The entry's run hashes accumulate
over invocations, so a sweep grown in stages (an encoder or seeds added later) still names every run it made.

`--dry-run` resolves tasks (for the config hashes) but builds no features and trains nothing: it
counts recorded, failed-before and remaining runs, and costs the remaining ones from the training
seconds per clip-epoch of earlier records of the same frame rate and mode.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.files import atomic_write_bytes
from bench.records import DEFAULT_RECORDS, completed, read_records, sidecar_path
from bench.evaluate.identity import RunConfig, run_identity
from bench.data.task_types import TASK_TYPES
from bench.registry import create_encoder, encoder_entry, split_spec

log = logging.getLogger("avbench.sweep")

LIST_KEYS = ("tasks", "task_types", "encoders", "modes", "label_fractions", "k_shots", "seeds", "eval_tasks")
TOP_KEYS = set(LIST_KEYS) | {"name", "description", "deviations_from_paper", "train", "records", "tables",
                             "train_task", "budget", "pretraining"}
# Set by the grid, never in `train:` (run setting -> the sweep key that sets it).
GRID_SETTINGS = {"task": "tasks", "encoder": "encoders", "mode": "modes", "label_fraction": "label_fractions",
                 "seed": "seeds", "k_shot": "k_shots", "task_type": "task_types", "eval_tasks": "eval_tasks",
                 "budget_steps": "budget"}
PAPER_ENCODERS = ["av-joint", "av-audio", "av-visual", "logmel-l1", "pase+", "apc", "wav2vec", "mfcc39",
                  "resnet18-scratch"]
PAPER_LABEL_FRACTIONS = [1.0, 0.5, 0.2, 0.1, 0.05, 0.01]


def default_seconds_per_clip_epoch(frame_rate: float) -> float:
    """Frozen-feature BiGRU training seconds per clip and epoch, for when no record has measured it.

    The nominal figures for 2 CPU cores and the paper's head: 45 s per 2,880 clips at 100 Hz and
    15 s at 25 Hz, other rates on the line through them (a fixed cost plus one per frame). A busy
    machine is slower (the reference records in results/ took 95-350 s per 2,880 clips at 100 Hz),
    which is why measured records, when there are any, take precedence.
    """
    return (5.0 + 0.4 * frame_rate) / 2880


@dataclass
class Sweep:
    name: str
    runs: list[RunConfig]
    records: Path
    tables: Path | None
    source: Path
    description: str = ""
    deviations: list = field(default_factory=list)
    pretraining: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)  # {"unit": "epochs"|"steps", "value": int}
    not_applicable: list = field(default_factory=list)  # "encoder in mode": grid points that cannot run


@dataclass
class PlannedRun:
    config: RunConfig
    label: str
    config_hash: str | None  # None: the task or checkpoint does not resolve (the run will fail, recorded)
    problem: str | None = None
    manifest: Any = None


def _list(spec: dict, key: str, path: Path, default: list | None, paper: list | None = None) -> list | None:
    value = spec.get(key)
    if value is None:
        return default
    if paper is not None and value == "paper":
        return list(paper)
    if key == "seeds" and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return list(range(value))
    if not isinstance(value, list) or not value:
        extra = " or `paper`" if paper is not None else (" or a count n (seeds 0..n-1)" if key == "seeds" else "")
        raise ConfigError(f"{path}: '{key}' must be a non-empty list{extra}, got {value!r}.")
    return value


def _budget(spec: dict, path: Path) -> int | None:
    """`budget: epochs` -> None (the train epochs); `budget: "steps:N"` -> N."""
    value = str(spec.get("budget", "epochs")).strip()
    if value == "epochs":
        return None
    unit, _, number = value.partition(":")
    if unit.strip() == "steps" and number.strip().isdigit() and int(number) > 0:
        return int(number)
    raise ConfigError(f"{path}: budget must be 'epochs' or 'steps:N' with N a positive integer, got {value!r}.")


def default_mode(encoder: str, train: dict) -> str:
    """The mode an encoder is evaluated in when the sweep names none: its class's `default_mode`.

    resnet18-scratch declares "scratch" (the paper's supervised reference trains from random
    weights); everything else, and any encoder given a checkpoint, is probed frozen.
    """
    name, checkpoint = split_spec(encoder)
    if checkpoint or train.get("checkpoint"):
        return "frozen"
    try:
        factory = encoder_entry(name.partition(":")[0]).factory
    except ConfigError:  # unknown encoder: its runs fail and are recorded as such
        return "frozen"
    return getattr(factory, "default_mode", "frozen")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep config not found.")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep config is a mapping with keys {sorted(TOP_KEYS)}.")
    unknown = sorted(set(spec) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}.")
    train = spec.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: 'train' must be a mapping of run settings (epochs, lr, ...).")
    clash = sorted(set(train) & set(GRID_SETTINGS))
    if clash:
        raise ConfigError(f"{path}: train.{clash[0]} is set by the sweep key "
                          f"'{GRID_SETTINGS[clash[0]]}', not in 'train'.")

    # Cross-dataset: `train_task` (one) or `tasks` (a generalisation matrix: every task trained,
    # each tested on every one of `eval_tasks`), with `eval_tasks`.
    if ("train_task" in spec and "eval_tasks" not in spec) or ("train_task" in spec and "tasks" in spec):
        raise ConfigError(f"{path}: a cross-dataset sweep gives 'train_task' (or 'tasks') with 'eval_tasks'; "
                          "an in-domain sweep gives 'tasks' only.")
    tasks = [spec["train_task"]] if "train_task" in spec else _list(spec, "tasks", path, None)
    eval_tasks = [str(t) for t in _list(spec, "eval_tasks", path, [])]
    encoders = _list(spec, "encoders", path, None, PAPER_ENCODERS)
    for key, values in (("tasks", tasks), ("encoders", encoders)):
        if not values:
            raise ConfigError(f"{path}: '{key}' must list at least one entry"
                              + (" (or be `paper`)." if key == "encoders" else "."))
    k_shots = _list(spec, "k_shots", path, [])
    fractions = _list(spec, "label_fractions", path, [] if k_shots else [1.0], PAPER_LABEL_FRACTIONS)
    if any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in k_shots):
        raise ConfigError(f"{path}: 'k_shots' must list positive integers (clips per class), got {k_shots!r}.")
    label_points = [(float(f), None) for f in fractions] + [(1.0, int(k)) for k in k_shots]
    task_types = _list(spec, "task_types", path, ["words"])
    if not set(task_types) <= set(TASK_TYPES):
        raise ConfigError(f"{path}: task_types {sorted(set(map(str, task_types)) - set(TASK_TYPES))} unknown; "
                          f"known: {', '.join(TASK_TYPES)}.")
    modes = _list(spec, "modes", path, None)
    seeds = _list(spec, "seeds", path, [0])
    budget_steps = _budget(spec, path)
    pretraining = spec.get("pretraining") or {}
    if not isinstance(pretraining, dict):
        raise ConfigError(f"{path}: 'pretraining' maps each encoder to a description of its pretraining.")
    stray = sorted(set(map(str, pretraining)) - {str(e) for e in encoders} - {split_spec(str(e))[0] for e in encoders})
    if stray:
        raise ConfigError(f"{path}: 'pretraining' describes {stray}, not in encoders {[str(e) for e in encoders]}.")

    runs, not_applicable = [], []
    for task, task_type, encoder in itertools.product(tasks, task_types, encoders):
        encoder_modes = modes or [default_mode(str(encoder), train)]
        # A grid that names modes for all encoders (the paper's: finetune and frozen) meets encoders
        # with nothing to train (mfcc39, logmel): those points are left out and listed, not failed.
        if any(m != "frozen" for m in encoder_modes) and not _has_parameters(str(encoder), train):
            dropped = [m for m in encoder_modes if m != "frozen"]
            not_applicable += [f"{encoder} in mode {m}" for m in dropped]
            encoder_modes = [m for m in encoder_modes if m == "frozen"]
        for mode, (fraction, k), seed in itertools.product(encoder_modes, label_points, seeds):
            try:
                runs.append(RunConfig.from_dict({
                    **train, "task": str(task), "task_type": str(task_type), "encoder": str(encoder), "mode": mode,
                    "label_fraction": fraction, "k_shot": k, "seed": int(seed), "budget_steps": budget_steps,
                    "eval_tasks": eval_tasks}))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: {exc}") from exc
    # Seeds outermost: a sweep stopped early (or still running) has every encoder and label point at
    # its first seeds, i.e. a complete if less certain table, rather than some encoders missing.
    runs.sort(key=lambda run: run.seed)  # stable: the grid's order within a seed
    return Sweep(name=str(spec.get("name") or path.stem), runs=runs, source=path,
                 records=Path(spec.get("records") or DEFAULT_RECORDS),
                 tables=Path(spec["tables"]) if spec.get("tables") else None,
                 description=str(spec.get("description") or "").strip(),
                 deviations=list(spec.get("deviations_from_paper") or []), pretraining=pretraining,
                 budget=runs[0].budget(), not_applicable=sorted(set(not_applicable)))


def _has_parameters(encoder: str, train: dict) -> bool:
    """Whether the encoder has weights to train (an unknown encoder counts as yes: its runs fail, recorded)."""
    from bench.registry import count_parameters

    try:
        return count_parameters(create_encoder(split_spec(encoder)[0], **(train.get("encoder_kwargs") or {}))) > 0
    except Exception:  # noqa: BLE001 - any failure to build it is reported by its runs
        return True


def run_label(config: RunConfig) -> str:
    labels = f"{config.k_shot}-shot" if config.k_shot else f"{100 * config.label_fraction:g}% labels"
    evals = f" -> {','.join(config.eval_tasks)}" if config.eval_tasks else ""
    kind = "" if config.task_type == "words" else f" {config.task_type}"
    return f"{config.encoder} on {config.task}{evals}{kind} ({config.mode}, {labels}, seed {config.seed})"


def plan_runs(sweep: Sweep, progress: bool = False) -> list[PlannedRun]:
    """Each run with the config hash run_experiment will give it (tasks are resolved, once each)."""
    from bench.data.tasks import resolve_task

    manifests: dict[str, Any] = {}
    checkpoints: dict[str, str | None] = {}
    plan = []
    for config in sweep.runs:
        try:
            if config.task not in manifests:
                manifests[config.task] = resolve_task(config.task, progress=progress)
            manifest = manifests[config.task]
            chash = run_identity(config, manifest.manifest_id, checkpoints)[2]
            plan.append(PlannedRun(config, run_label(config), chash, manifest=manifest))
        except Exception as exc:  # the run itself will fail with this error and be recorded
            plan.append(PlannedRun(config, run_label(config), None, problem=f"{type(exc).__name__}: {exc}"))
    return plan


def write_sidecar(sweep: Sweep, plan: list[PlannedRun]) -> Path:
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
                               "deviations_from_paper": sweep.deviations, "pretraining": sweep.pretraining,
                               "budget": sweep.budget,
                               "config_hashes": sorted(earlier | {p.config_hash for p in plan if p.config_hash})}
        atomic_write_bytes(path, (json.dumps(entries, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def run_sweep(sweep: Sweep, *, force: bool = False, progress: bool = True, executor=None,
              plugins: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Run every configuration not yet recorded; return counts of done and skipped runs and the failures.

    `executor` is one of bench.sweep.executors' (default: inline, one run after another in this process).
    """
    from bench.sweep.executors import InlineExecutor

    plan = plan_runs(sweep, progress=progress)
    write_sidecar(sweep, plan)
    if sweep.not_applicable:
        log.info("not applicable, left out of the grid: %s", ", ".join(sweep.not_applicable))
    done = {} if force else completed(read_records(sweep.records))
    summary: dict[str, Any] = {"ran": 0, "skipped": 0, "failed": []}
    jobs = []
    for i, run in enumerate(plan, 1):
        if run.config_hash in done:
            summary["skipped"] += 1
        else:
            jobs.append({"index": i, "label": f"[{i}/{len(plan)}] {run.label}", "config": asdict(run.config)})
    if summary["skipped"]:
        log.info("sweep %s: %d of %d run(s) already recorded in %s", sweep.name, summary["skipped"], len(plan),
                 sweep.records)
    for job, outcome in (executor or InlineExecutor(progress=progress)).execute(
            jobs, sweep.records, force=force, plugins=plugins):
        if outcome["status"] == "failed":
            log.error("%s failed: %s", job["label"], outcome["error"])
            summary["failed"].append(f"{job['label']}: {outcome['error']}")
        elif outcome["status"] == "skipped":  # recorded by another process since planning
            summary["skipped"] += 1
        else:
            summary["ran"] += 1
            log.info("%s: test %.2f%% (best val %.2f%% at epoch %d), %.0f s", job["label"], 100 * outcome["test_acc"],
                     100 * outcome["val_acc"], outcome["best_epoch"], outcome["wall_seconds"])
    return summary


# --- dry run: counts and cost -------------------------------------------------------------

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


def cost_table(sweep: Sweep) -> tuple[dict[str, dict], dict[str, int]]:
    """Per encoder: runs, recorded, failed (before, and not since recorded), remaining, estimated
    seconds of the remaining runs and where the timing came from; and the runs that cannot start."""
    plan = plan_runs(sweep, progress=False)
    records = read_records(sweep.records)
    done = completed(records)
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


def dry_run_report(sweep: Sweep) -> str:
    """The plan as text: grid size, recorded / failed-before / remaining runs, and the remaining cost."""
    rows, problems = cost_table(sweep)
    total = {k: sum(r[k] for r in rows.values()) for k in ("runs", "recorded", "failed", "remaining", "seconds")}
    lines = [f"sweep {sweep.name}: {total['runs']} run(s) in the grid ({sweep.budget['value']} {sweep.budget['unit']} "
             f"each); records {sweep.records}",
             f"  recorded {total['recorded']}, failed before {total['failed']} (retried), "
             f"remaining {total['remaining']}",
             *([f"  not applicable, left out of the grid: {', '.join(sweep.not_applicable)}"]
               if sweep.not_applicable else []),
             "", f"  {'encoder':<22} {'runs':>5} {'recorded':>9} {'failed':>7} {'remaining':>10} {'est. hours':>11}"
                 "  seconds per clip-epoch from"]
    for encoder, r in rows.items():
        lines.append(f"  {encoder:<22} {r['runs']:>5} {r['recorded']:>9} {r['failed']:>7} {r['remaining']:>10} "
                     f"{r['seconds'] / 3600:>11.2f}  {'; '.join(sorted(r['sources'])) or '-'}")
    lines.append(f"  {'total':<22} {total['runs']:>5} {total['recorded']:>9} {total['failed']:>7} "
                 f"{total['remaining']:>10} {total['seconds'] / 3600:>11.2f}  ({total['seconds'] / 60:.1f} min "
                 "one run at a time; divide by the concurrent runs for wall time)")
    for problem, count in problems.items():
        lines.append(f"  {count} run(s) cannot start, not costed: {problem}")
    return "\n".join(lines)
