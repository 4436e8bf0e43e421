"""A sweep config: a YAML grid of runs, read and checked into RunConfigs.

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
    pretraining: {apc-b8: {encoder: apc, data: embedded:default, steps: 400, batch_size: 8}}
                                      # built by the sweep; evaluated as encoders: [apc@pretrained:apc-b8]
    records: results/runs.jsonl       # optional, relative to the current folder
    tables: results                   # optional: regenerate tables there after the sweep
    comparisons: ["audiovisual SSL vs supervised", "av-joint vs av-audio"]
                                      # `avbench report`'s paired tests: each "A vs B" (a report group
                                      # or a representation on each side) is one Holm-corrected family

bench.sweep.run plans and runs the grid, bench.sweep.cost estimates it (`--dry-run`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.data.task_types import TASK_TYPES
from bench.errors import ConfigError
from bench.evaluate.identity import RunConfig
from bench.records import DEFAULT_RECORDS
from bench.registry import create_encoder, encoder_entry, split_spec
from bench.sweep.pretraining import check_references, parse_entries

LIST_KEYS = ("tasks", "task_types", "encoders", "modes", "label_fractions", "k_shots", "seeds", "eval_tasks")
TOP_KEYS = set(LIST_KEYS) | {"name", "description", "deviations_from_paper", "train", "records", "tables",
                             "train_task", "budget", "pretraining", "question", "comparisons"}
# Set by the grid, never in `train:` (run setting -> the sweep key that sets it).
GRID_SETTINGS = {"task": "tasks", "encoder": "encoders", "mode": "modes", "label_fraction": "label_fractions",
                 "seed": "seeds", "k_shot": "k_shots", "task_type": "task_types", "eval_tasks": "eval_tasks",
                 "budget_steps": "budget"}
PAPER_ENCODERS = ["av-joint", "av-audio", "av-visual", "logmel-l1", "pase+", "apc", "wav2vec", "mfcc39",
                  "resnet18-scratch"]
PAPER_LABEL_FRACTIONS = [1.0, 0.5, 0.2, 0.1, 0.05, 0.01]



@dataclass
class Sweep:
    name: str
    runs: list[RunConfig]
    records: Path
    tables: Path | None
    source: Path
    description: str = ""
    question: str = ""  # what the study answers (`avbench report` opens with it)
    deviations: list = field(default_factory=list)
    pretraining: dict = field(default_factory=dict)  # entry name -> PretrainConfig (bench.sweep.pretraining)
    budget: dict = field(default_factory=dict)  # {"unit": "epochs"|"steps", "value": int}
    not_applicable: list = field(default_factory=list)  # "encoder in mode": grid points that cannot run
    # The report's paired-test families, (A, B): each side a report group or a representation name;
    # empty: the report's default (bench.results.report.DEFAULT_COMPARISONS).
    comparisons: list = field(default_factory=list)



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


def _comparisons(spec: dict, path: Path) -> list[tuple[str, str]]:
    """`comparisons: ["audiovisual SSL vs supervised", ...]` -> [(A, B), ...]; the names are checked
    against the records' groups and representations when the report is built."""
    value = spec.get("comparisons")
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: 'comparisons' must be a non-empty list of \"A vs B\" strings, got {value!r}.")
    pairs = []
    for item in value:
        a, sep, b = str(item).partition(" vs ")
        if not isinstance(item, str) or not sep or not a.strip() or not b.strip() or a.strip() == b.strip():
            raise ConfigError(f"{path}: comparisons: {item!r} is not \"A vs B\" with two different sides, e.g. "
                              f"\"audiovisual SSL vs supervised\" (report groups) or \"av-joint vs av-audio\".")
        pairs.append((a.strip(), b.strip()))
    return pairs


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
    pretraining = parse_entries(spec.get("pretraining"), path)
    check_references([str(e) for e in encoders], pretraining, path)

    runs, not_applicable = [], []
    for task, task_type, encoder in itertools.product(tasks, task_types, encoders):
        encoder_modes = modes or [default_mode(str(encoder), train)]
        # A grid that names modes for all encoders (the paper's: finetune and frozen) meets encoders
        # with nothing to train (mfcc39, logmel): those points are left out and listed, not failed.
        if any(m != "frozen" for m in encoder_modes) and not _has_parameters(str(encoder), train):
            dropped = [m for m in encoder_modes if m != "frozen"]
            not_applicable += [f"{encoder} in mode {m}" for m in dropped]
            encoder_modes = [m for m in encoder_modes if m == "frozen"]
        # A closed set of speakers does not carry over to another corpus: speaker-id is tested in-domain.
        run_eval_tasks = [] if task_type == "speaker-id" else eval_tasks
        if eval_tasks and not run_eval_tasks:
            not_applicable.append("speaker-id across corpora (a closed set of speakers does not carry over)")
        for mode, (fraction, k), seed in itertools.product(encoder_modes, label_points, seeds):
            try:
                runs.append(RunConfig.from_dict({
                    **train, "task": str(task), "task_type": str(task_type), "encoder": str(encoder), "mode": mode,
                    "label_fraction": fraction, "k_shot": k, "seed": int(seed), "budget_steps": budget_steps,
                    "eval_tasks": run_eval_tasks}))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: {exc}") from exc
    # Seeds outermost: a sweep stopped early (or still running) has every encoder and label point at
    # its first seeds, i.e. a complete if less certain table, rather than some encoders missing.
    runs.sort(key=lambda run: run.seed)  # stable: the grid's order within a seed
    return Sweep(name=str(spec.get("name") or path.stem), runs=runs, source=path,
                 records=Path(spec.get("records") or DEFAULT_RECORDS),
                 tables=Path(spec["tables"]) if spec.get("tables") else None,
                 description=str(spec.get("description") or "").strip(),
                 question=" ".join(str(spec.get("question") or "").split()),
                 deviations=list(spec.get("deviations_from_paper") or []), pretraining=pretraining,
                 budget=runs[0].budget(), not_applicable=sorted(set(not_applicable)),
                 comparisons=_comparisons(spec, path))


def _has_parameters(encoder: str, train: dict) -> bool:
    """Whether the encoder has weights to train (an unknown encoder counts as yes: its runs fail, recorded)."""
    from bench.registry import count_parameters

    try:
        return count_parameters(create_encoder(split_spec(encoder)[0], **(train.get("encoder_kwargs") or {}))) > 0
    except Exception:  # noqa: BLE001 - any failure to build it is reported by its runs
        return True


def select_encoders(sweep: Sweep, names: list[str]) -> Sweep:
    """Keep the runs of these encoders and the pretraining entries they evaluate: a part of a grid, run
    now, recorded like the whole. A name is a base name (`av-joint@pretrained:ENTRY` -> av-joint) or a
    pretraining entry (ENTRY), which picks one of several checkpoints of one encoder, e.g. the supervised
    ResNet18 among the ResNet18 objectives."""
    from bench.sweep.pretraining import entry_of

    def names_of(encoder: str) -> set[str]:
        return {encoder.partition("@")[0], entry_of(encoder)} - {None}

    present = sorted({run.encoder.partition("@")[0] for run in sweep.runs})
    entries = sorted({entry_of(run.encoder) for run in sweep.runs} - {None})
    unknown = [n for n in names if n not in present and n not in entries]
    if unknown:
        raise ConfigError(f"{sweep.source}: --encoders names {', '.join(unknown)}, which this sweep does not run; "
                          f"its encoders are {', '.join(present)}"
                          + (f" and its pretraining entries {', '.join(entries)}" if entries else ""))
    runs = [run for run in sweep.runs if names_of(run.encoder) & set(names)]
    used = {entry_of(run.encoder) for run in runs}
    sweep.runs = runs
    sweep.pretraining = {name: config for name, config in sweep.pretraining.items() if name in used}
    return sweep
