"""The pretraining stage of a sweep: its `pretraining:` entries, the `NAME@pretrained:ENTRY` encoders
that use them, and which checkpoints must be built before the runs that evaluate them.

    pretraining:
      av-joint-b8:                    # the entry's name, used as av-joint@pretrained:av-joint-b8
        encoder: av-joint             # the encoder
        objective: av-joint           # default: the encoder's own; any that fits it (simclr, dino,
                                      #   supervised, ...: `avbench list --objectives`)
        label_column: speaker         # what a supervised objective learns (label, speaker, emotion)
        data: embedded:default        # a data spec, as `avbench pretrain --data`
        splits: [train]               # default [train]: test speakers stay unseen
        steps: 400                    # the budget: steps, or epochs (passes over the clips)
        batch_size: 8                 # default 32
        crop_seconds: 1.0             # default 1.0
        lr: 1.0e-3                    # default: the objective's own
        seed: 0                       # default 0
        encoder_args: {}              # and pretext_args: keyword arguments of each
        save_every: 50                # resume granularity and curve resolution: not part of the
        log_every: 5                  #   identity (defaults 50 and 5)

An entry is a `PretrainConfig`. Its identity (bench.pretrain.stage: settings, manifest content,
objective version) names its checkpoint folder, `$AVBENCH_DATA/pretrained/<identity>/`, and the
sweep rewrites `NAME@pretrained:ENTRY` to `NAME@pretrained:<identity>`, which every process
resolves (bench.paths.expand_path). So runs are keyed on the checkpoint's content as before, and
their records name the identity.

A checkpoint is built only when some run that needs it is not yet recorded. Whether it is, for a
checkpoint not on this machine, comes from the pretraining records beside the run records
(`runs.pretraining.jsonl`): an earlier build of the same identity gives the checkpoint hash the
runs were keyed on. A fresh clone therefore skips what the committed records hold without
rebuilding anything, and a rebuild that reproduces the recorded checkpoint (pretraining is
deterministic on one device) keeps every recorded run valid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.paths import PRETRAINED_PREFIX
from bench.records import pretraining_records_path, read_pretraining_records

log = logging.getLogger("avbench.sweep")

# Entry key -> PretrainConfig field (None: the entry's own, not a setting).
ENTRY_KEYS = {"encoder": "encoder", "data": "data", "splits": "splits", "steps": "steps", "epochs": "epochs",
              "batch_size": "batch_size", "crop_seconds": "crop_seconds", "lr": "lr", "seed": "seed",
              "max_grad_norm": "max_grad_norm", "encoder_args": "encoder_kwargs",
              "pretext_args": "pretext_kwargs", "precision": "precision", "save_every": "save_every",
              "log_every": "log_every", "objective": "objective", "label_column": None,
              "description": None}
STAGE_DEFAULTS = {"save_every": 50, "log_every": 5}


def parse_entries(raw: Any, path: Path) -> dict[str, Any]:
    """`pretraining:` -> {entry name: PretrainConfig}, every key and value checked."""
    from bench.pretrain.loop import PretrainConfig, with_label_column
    from bench.pretrain.objective import check_fits
    from bench.registry import create_encoder

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: 'pretraining' maps entry names to pretraining settings "
                          "(encoder, data, steps or epochs, batch_size, ...); see bench/sweep/pretraining.py.")
    entries = {}
    for name, entry in raw.items():
        where = f"{path}: pretraining.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping of settings (encoder, data, steps, ...), got {entry!r}.")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            hint = (" The sweep runs the entry itself: drop `command` and declare its settings as keys."
                    if "command" in unknown else "")
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(ENTRY_KEYS)}.{hint}")
        missing = [k for k in ("encoder", "data") if k not in entry]
        if missing:
            raise ConfigError(f"{where}: give {' and '.join(missing)}.")
        splits = entry.get("splits", ["train"])
        settings = {field: entry[key] for key, field in ENTRY_KEYS.items() if field and key in entry}
        settings["splits"] = tuple(splits.split(",") if isinstance(splits, str) else splits)
        try:
            if "label_column" in entry:
                settings["pretext_kwargs"] = with_label_column(
                    settings.get("pretext_kwargs"), entry["label_column"], ("label_column", "pretext_args.label_column"))
            # An unknown objective, or an encoder with no objective of its own and none named, fails here.
            config = PretrainConfig(**{**STAGE_DEFAULTS, "loader_workers": None, **settings}).validated()
            # Found now, not when the stage starts hours into the sweep.
            check_fits(config.objective_name, create_encoder(config.encoder, **config.encoder_kwargs))
            entries[str(name)] = config
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return entries


def entry_of(encoder: str) -> str | None:
    """'av-joint@pretrained:av-joint-b8' -> 'av-joint-b8'; None for any other spec."""
    _, _, checkpoint = encoder.partition("@")
    return checkpoint[len(PRETRAINED_PREFIX):] if checkpoint.startswith(PRETRAINED_PREFIX) else None


def check_references(encoders: list[str], entries: dict[str, Any], path: Path) -> None:
    """Every NAME@pretrained:ENTRY names an entry of NAME's encoder, and every entry is used."""
    used = set()
    for encoder in encoders:
        entry = entry_of(encoder)
        if entry is None:
            continue
        if entry not in entries:
            raise ConfigError(f"{path}: encoder {encoder!r} names pretraining entry {entry!r}, which 'pretraining' "
                              f"does not declare (declared: {sorted(entries) or 'none'}).")
        if entries[entry].encoder != encoder.partition("@")[0]:
            raise ConfigError(f"{path}: encoder {encoder!r} names pretraining entry {entry!r}, which trains "
                              f"{entries[entry].encoder!r}.")
        used.add(entry)
    unused = sorted(set(entries) - used)
    if unused:
        raise ConfigError(f"{path}: pretraining entr{'y' if len(unused) == 1 else 'ies'} {unused} not used by any "
                          "encoder: evaluate each as ENCODER@pretrained:ENTRY in 'encoders', or remove it.")


@dataclass
class Stage:
    """One pretraining entry resolved against its data: the checkpoint it names and what is known of it."""

    name: str
    config: Any                     # PretrainConfig
    identity: str
    total_steps: int
    folder: Path
    complete: bool                  # the finished checkpoint is in this machine's data folder
    checkpoint_hash: str | None     # the file's, when complete here
    records: list[dict]             # earlier pretraining records of this identity (ok ones)
    problem: str | None = None      # why the entry does not resolve here (its data is missing, ...)

    @property
    def target(self) -> str:
        """The checkpoint its runs name: the identity, or the entry itself while it cannot resolve."""
        return f"{PRETRAINED_PREFIX}{self.name if self.problem else self.identity}"

    @property
    def encoder_path(self) -> Path:
        return self.folder / "encoder.pt"

    @property
    def recorded_hashes(self) -> list[str]:
        """The checkpoint hashes earlier builds of this identity recorded, latest first, each once."""
        return list(dict.fromkeys(r["checkpoint_hash"] for r in reversed(self.records) if r.get("checkpoint_hash")))

    def unlike_recorded(self, checkpoint_hash: str | None = None) -> str | None:
        """Why this machine's build (or `checkpoint_hash`, one just built) will not match the recorded
        runs: its bits differ from every recorded build's (another CPU, GPU or thread count), so the runs
        recorded on those are run again on this one. None when they match or nothing is recorded."""
        built = checkpoint_hash or self.checkpoint_hash
        recorded = self.recorded_hashes
        if not built or not recorded or built in recorded:
            return None
        return (f"checkpoint {built} differs from the recorded build{'s' if len(recorded) > 1 else ''} "
                f"{', '.join(recorded)}: the runs recorded on {'those' if len(recorded) > 1 else 'it'} are run again "
                "on this one, and until they all are the report flags the row as pooling two checkpoints")

    def label(self) -> str:
        from bench.pretrain.loop import describe_run

        return (f"pretraining {self.name}: {describe_run(self.config)} on {self.config.data}, {self.total_steps} steps of "
                f"batch {self.config.batch_size} (identity {self.identity})")

    def job(self, index: int, count: int) -> dict:
        from dataclasses import asdict

        return {"index": index, "label": f"[pretraining {index}/{count}] {self.label()}", "kind": "pretraining",
                "name": self.name, "identity": self.identity, "pretraining": {**asdict(self.config), "splits": list(self.config.splits)}}


def pretraining_records(records: str | Path) -> list[dict]:
    """The ok pretraining records beside a run records file (none when it does not exist)."""
    return [r for r in read_pretraining_records(pretraining_records_path(records)) if r["status"] == "ok"]


def resolve_stages(sweep, progress: bool = False) -> list[Stage]:
    """Resolve each entry (building its corpus if need be) and point the sweep's runs at identities."""
    from bench.files import file_sha256
    from bench.pretrain.stage import complete_summary, resolve_identity

    earlier = pretraining_records(sweep.records)
    stages = []
    for name, config in sweep.pretraining.items():
        try:
            resolved = resolve_identity(config, progress=progress)
        except Exception as exc:  # e.g. a corpus not prepared here: its runs cannot start, the others can
            stages.append(Stage(name, config, "", 0, Path(), False, None, [], f"{type(exc).__name__}: {exc}"))
            continue
        own = [r for r in earlier if r.get("identity") == resolved.identity]
        complete = complete_summary(resolved.folder, resolved.total_steps) is not None
        checkpoint_hash = file_sha256(resolved.folder / "encoder.pt")[:16] if complete else None
        stages.append(Stage(name, config, resolved.identity, resolved.total_steps, resolved.folder, complete,
                            checkpoint_hash, own))
    targets = {s.name: s.target for s in stages if not s.problem}
    sweep.runs = [replace(run, encoder=f"{run.encoder.partition('@')[0]}@{targets[entry_of(run.encoder)]}")
                  if entry_of(run.encoder) in targets else run for run in sweep.runs]
    return stages


def known_checkpoints(stages: list[Stage], placeholder: bool = False) -> dict[str, list[str]]:
    """Checkpoint path -> hashes for planning runs whose checkpoint is not built here: the recorded
    ones (latest first), or (`placeholder`, for costing) a stand-in that no record matches."""
    known = {}
    for stage in stages:
        if not stage.complete and (stage.recorded_hashes or placeholder):
            known[str(stage.encoder_path)] = stage.recorded_hashes or [f"unbuilt-{stage.identity}"]
    return known


def stage_of(encoder: str, stages: list[Stage]) -> Stage | None:
    checkpoint = encoder.partition("@")[2]
    return next((s for s in stages if s.target == checkpoint), None)
